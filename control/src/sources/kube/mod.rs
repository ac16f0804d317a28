//! The Kubernetes source: watches Services, EndpointSlices, and Nodes with
//! kube's watcher and turns them into a [`ServiceSet`] (see [`model`]).
//!
//! It runs on its own thread with its own current-thread tokio runtime and
//! feeds the control loop through a crossbeam channel of [`KubeUpdate`]s.
//! Nothing is sent until all three resources have been listed once. A re-list
//! (after a 410 Gone, or a restarted watch) is buffered and swapped in whole
//! when complete, and API errors change nothing: the last good set stays in
//! force, so errors never empty the backend sets. How current the view is (listed, the
//! last event, the last error) is kept beside it for the status ([`KubeSource::state`]).
//! A watch that delivers nothing for longer than the API server keeps it open (plus a
//! margin) is an error too, and is started again ([`WATCH_TIMEOUT`]).

pub mod model;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::Sender;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, WatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use tokio::task::JoinSet;

use crate::config::Kubernetes;
use crate::sources::ServiceSet;
use crate::status::KubernetesStatus;
use model::{Assigned, Assignment, Objects, Problems};

/// What the Kubernetes source tells the control loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeUpdate {
    /// The complete set of Kubernetes VIPs; replaces the previous one.
    Services(ServiceSet),
    /// A granted address (pool or requested) was written to a Service's status; the
    /// daemon logs it. One for each address of a dual-stack Service.
    Assigned {
        namespace: String,
        name: String,
        ip: IpAddr,
    },
    /// An API error. The previous set stays in force.
    Error(String),
}

/// The running watcher thread; dropping it stops the thread.
pub struct KubeSource {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
    watch: Shared,
}

impl KubeSource {
    /// How current the watcher's view is, now.
    pub fn state(&self) -> KubernetesStatus {
        lock(&self.watch).state(Instant::now())
    }
}

/// How long the API server keeps a watch open (`timeoutSeconds`) before it ends it, and the
/// watcher resumes it: a watch that works delivers something (an event, a bookmark, or its
/// end) at least this often. client-go asks for 5 to 10 minutes; one minute bounds how
/// long a hung watch goes unnoticed, for three cheap resumed watches a minute.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// How much longer than the watch timeout a watch (or any answer) may deliver nothing
/// before it counts as hung: the client's read timeout then fails it, which is reported, and
/// the watcher starts it again. It must stay under the 5 s that kube's watcher waits past
/// the watch timeout before it drops a silent watch by itself, without a word, and starts
/// another that may hang as well: kube sets no read timeout of its own, so an API server
/// that accepts the watch and then sends nothing was never an error.
const HUNG_MARGIN: Duration = Duration::from_secs(3);

/// How long a watch error counts as current without another. The watcher retries a
/// failed watch after at most 30 s (plus as much again of jitter), a retried watch
/// connects within kube's connect timeout (30 s), and one that hangs fails again after the
/// watch timeout and [`HUNG_MARGIN`]; a retry that succeeds is silent, as a resumed watch
/// brings nothing until the next change (a quiet Service watch can go hours without one).
/// So a resource with no event since its last error is taken to be watched again once
/// all of these have passed, and a few seconds more.
pub const QUIET: Duration = WATCH_TIMEOUT
    .saturating_add(HUNG_MARGIN)
    .saturating_add(Duration::from_secs(60 + 30 + 7));

/// The watch's state, written by the watcher thread and read for the status.
type Shared = Arc<Mutex<Watch>>;

fn lock(w: &Shared) -> std::sync::MutexGuard<'_, Watch> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The resources watched, in [`Watch`]'s order.
#[derive(Clone, Copy)]
enum Watched {
    Services = 0,
    Slices = 1,
    Nodes = 2,
}

/// What is known of the watch: per resource (services, endpointslices, nodes) whether it
/// has been listed, and when it last failed with no event since; the last event and error.
#[derive(Default)]
struct Watch {
    listed: [bool; 3],
    failed: [Option<Instant>; 3],
    last_event: Option<SystemTime>,
    /// The last error, and when the errors it ends began.
    error: Option<(String, SystemTime)>,
    errors: u64,
}

impl Watch {
    fn synced(&self, now: Instant) -> bool {
        self.listed.iter().all(|&l| l)
            && self
                .failed
                .iter()
                .flatten()
                .all(|&t| now.saturating_duration_since(t) >= QUIET)
    }

    /// `r` brought objects (a list page, its end, a change), and has been listed if `listed`.
    fn event(&mut self, r: Watched, listed: bool) {
        self.listed[r as usize] |= listed;
        self.failed[r as usize] = None;
        self.last_event = Some(SystemTime::now());
    }

    /// An error of `r`'s watch, or (`None`) of building the client.
    fn failed(&mut self, r: Option<Watched>, e: &str) {
        let now = Instant::now();
        let since = match &self.error {
            Some((_, since)) if !self.synced(now) => *since,
            _ => SystemTime::now(),
        };
        if let Some(r) = r {
            self.failed[r as usize] = Some(now);
        }
        self.error = Some((e.to_owned(), since));
        self.errors += 1;
    }

    fn state(&self, now: Instant) -> KubernetesStatus {
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let synced = self.synced(now);
        let error = self.error.as_ref().filter(|_| !synced);
        KubernetesStatus {
            synced,
            last_event_unix: self.last_event.map(unix),
            error: error.map(|(e, _)| e.clone()),
            error_since_unix: error.map(|&(_, since)| unix(since)),
            errors: self.errors,
        }
    }
}

/// Dropping it does not wait for a credential plugin: the watcher thread leaves any that
/// runs (to build the client or refresh its token) behind, and ends.
impl Drop for KubeSource {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// How long [`spawn_checked`] waits for the client to be built and the API server to answer
/// its check; also how long the watcher waits for a client before it reports that none is
/// coming.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the watcher thread. A client that cannot be built (the kubeconfig missing or
/// unparsable, no in-cluster credentials) is reported as an error and retried every few
/// seconds, as the API server is: at startup the credentials or the API may come later,
/// and the static VIPs are served meanwhile. A client whose credential plugin has not
/// finished after [`CHECK_TIMEOUT`] is reported too, and waited for (not started again).
/// The caller's thread never waits for the client.
pub fn spawn(cfg: Kubernetes, tx: Sender<KubeUpdate>) -> std::io::Result<KubeSource> {
    spawn_watching(cfg, tx, WATCH_TIMEOUT)
}

/// [`spawn`], with watches that the API server ends after `watch_timeout` (whole seconds,
/// at least one) instead of [`WATCH_TIMEOUT`], and that count as hung after it and
/// [`HUNG_MARGIN`] without a byte: tests wait for that a few seconds, not a minute.
pub fn spawn_watching(
    cfg: Kubernetes,
    tx: Sender<KubeUpdate>,
    watch_timeout: Duration,
) -> std::io::Result<KubeSource> {
    start(runtime()?, cfg, tx, None, watch_timeout)
}

/// Starts the watcher thread for a reload, on a client built and checked first, or says
/// why it cannot work and starts nothing, so that the reload fails and the running
/// watcher goes on. Built: the kubeconfig must exist and parse, and name a known context
/// (or the in-cluster credentials must be there), and its user's credential plugin (an
/// `exec` command), if it has one, must give credentials. Checked: Services,
/// EndpointSlices and Nodes must each be listed (one item) and watched: an API server that cannot be
/// reached, whose certificate does not verify, or that refuses the credentials (401) or
/// the RBAC (403) fails the check. Both must be done within `timeout`, which bounds this
/// call: a credential plugin or an API server that does not answer fails it, and a plugin
/// still running is left behind, not waited for.
///
/// Why a check, rather than running the old watcher until the new one has listed
/// everything: the reload's result (its log line and `dsrgate_config_reloads_total`) then
/// says whether the new section works, as for any other rejected reload, and only one
/// watcher ever feeds the Kubernetes view. With a hand-over, a section that never works
/// would be reported as applied, and the old watcher would have to run on, unbounded, for
/// a config that is no longer the file's. The cost is that a reload waits up to `timeout`
/// for a credential plugin or an API server that does not answer; the dataplane forwards
/// meanwhile.
pub fn spawn_checked(
    cfg: Kubernetes,
    tx: Sender<KubeUpdate>,
    timeout: Duration,
) -> Result<KubeSource, String> {
    let rt = runtime().map_err(|e| format!("starting the Kubernetes runtime: {e}"))?;
    // The client's tasks (its request buffer, its pooled connections) are spawned on `rt`
    // here and go on running on the watcher thread, which drives `rt` from then on.
    let checked = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + timeout;
        let built = build(&cfg, WATCH_TIMEOUT);
        let (client, url) = match tokio::time::timeout_at(deadline, built).await {
            Ok(built) => built.map_err(|e| panicked(&cfg, &e))??,
            Err(_) => return Err(not_built(&cfg, timeout)),
        };
        match tokio::time::timeout_at(deadline, check(&client)).await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(format!("Kubernetes API {url}: {e}")),
            Err(_) => Err(format!(
                "Kubernetes API {url}: no answer within {timeout:?}"
            )),
        }
    });
    match checked {
        Ok(client) => start(rt, cfg, tx, Some(client), WATCH_TIMEOUT)
            .map_err(|e| format!("starting the Kubernetes watcher: {e}")),
        Err(e) => {
            // A credential plugin that has not finished holds a thread of `rt`'s blocking
            // pool, which dropping `rt` would wait for: leave it behind instead.
            rt.shutdown_background();
            Err(e)
        }
    }
}

/// Where the client comes from, for messages: the kubeconfig, or in-cluster credentials.
fn origin(cfg: &Kubernetes) -> String {
    match &cfg.kubeconfig {
        Some(path) => format!("kubeconfig {}", path.display()),
        None => "in-cluster credentials".to_owned(),
    }
}

/// Why no client was built within `timeout`. Reading the kubeconfig is quick; what takes
/// time is the credentials its user names, when a plugin (an `exec` command) makes them.
fn not_built(cfg: &Kubernetes, timeout: Duration) -> String {
    format!(
        "{}: no client within {timeout:?}: the user's credential plugin (its `exec` command) \
         did not answer in time",
        origin(cfg)
    )
}

fn panicked(cfg: &Kubernetes, e: &tokio::task::JoinError) -> String {
    format!("{}: building the client failed: {e}", origin(cfg))
}

/// Builds the client, and says which API server it is for, on the blocking pool of the
/// current runtime: making the client runs the kubeconfig user's credential plugin (an
/// `exec` command), if it has one, and waits for it, for as long as it runs. Off the
/// runtime's thread, that wait can be bounded, and the thread goes on answering a stop.
fn build(
    cfg: &Kubernetes,
    watch_timeout: Duration,
) -> tokio::task::JoinHandle<Result<(Client, String), String>> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        // Reading the configuration is file reading that kube writes as async; it needs no
        // runtime of its own. The client's tasks are spawned on the runtime this blocking
        // task belongs to (its context is entered here).
        let config = futures::executor::block_on(config(&cfg))?;
        let url = config.cluster_url.to_string();
        Ok((client_of(config, watch_timeout)?, url))
    })
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs the watcher on its own thread, on `client` if there is one.
fn start(
    rt: tokio::runtime::Runtime,
    cfg: Kubernetes,
    tx: Sender<KubeUpdate>,
    client: Option<Client>,
    watch_timeout: Duration,
) -> std::io::Result<KubeSource> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let watch = Shared::default();
    let shared = watch.clone();
    let join = std::thread::Builder::new()
        .name("dsrgate-kube".into())
        .spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    _ = stop_rx => {}
                    _ = run(cfg, tx, client, shared, watch_timeout) => {}
                }
            });
            // Dropping `rt` would wait for its blocking tasks: a credential plugin that does
            // not finish, run to build the client or to refresh its token, would hold this
            // thread, and whoever joins it. It is left behind instead.
            rt.shutdown_background();
        })?;
    Ok(KubeSource {
        stop: Some(stop_tx),
        join: Some(join),
        watch,
    })
}

/// Lists one of each resource the watchers need, as they will (EndpointSlices with their
/// label selector), and opens a watch of each: the credentials, the certificate and the
/// RBAC (both verbs) work.
async fn check(client: &Client) -> Result<(), String> {
    futures::try_join!(
        may_list_and_watch(Api::<Service>::all(client.clone()), "services", None),
        may_list_and_watch(
            Api::<EndpointSlice>::all(client.clone()),
            "endpointslices",
            Some(model::SERVICE_NAME_LABEL),
        ),
        may_list_and_watch(Api::<Node>::all(client.clone()), "nodes", None),
    )?;
    Ok(())
}

/// Lists one item of `api` (with `labels`, as its watcher selects), then opens a watch
/// from the list's version. `watch` is a verb of its own in RBAC: a role that may list but
/// not watch passes the list, and its watcher would fail only once it had replaced the
/// running one. A watch is refused (403) or answered (200) at once; the stream is then
/// dropped unread.
async fn may_list_and_watch<K>(api: Api<K>, what: &str, labels: Option<&str>) -> Result<(), String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let why =
        |verb: &'static str| move |e: kube::Error| format!("{verb} {what}: {}", with_causes(&e));
    let mut list = ListParams::default().limit(1);
    let mut watch = WatchParams::default().timeout(1);
    if let Some(l) = labels {
        (list, watch) = (list.labels(l), watch.labels(l));
    }
    let listed = api.list(&list).await.map_err(why("listing"))?;
    let version = listed.metadata.resource_version.unwrap_or_default();
    api.watch(&watch, &version)
        .await
        .map(drop)
        .map_err(why("watching"))
}

/// Whether `e` is, or comes of, a read that timed out: the client's read timeout (see
/// [`client_of`]) ends a watch that delivers nothing.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// `e` and its sources, joined by ": ". kube's own message often names only the layer that
/// failed ("client error (Connect)"); the cause an operator can act on (a certificate from
/// an unknown issuer, a refused connection) is further down the chain.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        // Some layers repeat their source's message in their own.
        if !text.contains(&m) {
            text.push_str(": ");
            text.push_str(&m);
        }
        cause = c.source();
    }
    text
}

/// The client configuration from the configured kubeconfig, or in-cluster credentials;
/// an error names the file.
async fn config(cfg: &Kubernetes) -> Result<kube::Config, String> {
    Ok(match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {}", path.display(), with_causes(&e)))?;
            let opts = kube::config::KubeConfigOptions {
                context: cfg.context.clone(),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| format!("kubeconfig {}: {}", path.display(), with_causes(&e)))?
        }
        None => kube::Config::incluster()
            .map_err(|e| format!("in-cluster credentials: {}", with_causes(&e)))?,
    })
}

/// The client, whose reads time out after the watch timeout and [`HUNG_MARGIN`] without a
/// byte, counted from the request (not from when its pooled connection went idle).
fn client_of(mut config: kube::Config, watch_timeout: Duration) -> Result<Client, String> {
    config.read_timeout = Some(watch_timeout + HUNG_MARGIN);
    config.reset_reader_on_write = true;
    Client::try_from(config).map_err(|e| format!("Kubernetes client: {}", with_causes(&e)))
}

/// How long to wait before retrying a failed client setup or status write.
const RETRY: Duration = Duration::from_secs(5);
/// How long one status write may take before it counts as failed (and is retried): the
/// client's read timeout, made for watches, is over a minute, and a hung connection or a
/// slow admission webhook would hold the write, and its retries, that long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client, retried every [`RETRY`] until one is built; `None` once the receiver is gone.
/// One that is not built within [`CHECK_TIMEOUT`] (a credential plugin that does not
/// finish) is reported, and waited for rather than started again beside it.
async fn connect(
    cfg: &Kubernetes,
    tx: &Sender<KubeUpdate>,
    watch: &Shared,
    watch_timeout: Duration,
) -> Option<Client> {
    loop {
        let mut built = build(cfg, watch_timeout);
        let result = match tokio::time::timeout(CHECK_TIMEOUT, &mut built).await {
            Ok(result) => result,
            Err(_) => {
                let e = not_built(cfg, CHECK_TIMEOUT);
                tracing::error!(error = %e, "no Kubernetes client yet; waiting for it");
                lock(watch).failed(None, &e);
                tx.send(KubeUpdate::Error(e)).ok()?;
                built.await
            }
        };
        match result.map_err(|e| panicked(cfg, &e)).and_then(|r| r) {
            Ok((c, _)) => return Some(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot reach the Kubernetes API; retrying");
                lock(watch).failed(None, &e);
                tx.send(KubeUpdate::Error(e)).ok()?;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn run(
    cfg: Kubernetes,
    tx: Sender<KubeUpdate>,
    client: Option<Client>,
    watch: Shared,
    watch_timeout: Duration,
) {
    let client = match client {
        Some(c) => c,
        None => match connect(&cfg, &tx, &watch, watch_timeout).await {
            Some(c) => c,
            None => return,
        },
    };
    let mut sync = Sync::new(cfg, tx, watch, watch_timeout + HUNG_MARGIN);
    let secs = u32::try_from(watch_timeout.as_secs())
        .unwrap_or(u32::MAX)
        .max(1);
    let wc = watcher::Config::default().timeout(secs);
    let services = watcher(Api::<Service>::all(client.clone()), wc.clone())
        .default_backoff()
        .map(|r| Change::Service(Box::new(r)));
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        wc.clone().labels(model::SERVICE_NAME_LABEL),
    )
    .default_backoff()
    .map(|r| Change::Slice(Box::new(r)));
    let nodes = watcher(Api::<Node>::all(client.clone()), wc)
        .default_backoff()
        .map(|r| Change::Node(Box::new(r)));
    let mut changes = std::pin::pin!(futures::stream::select(
        futures::stream::select(services, slices),
        nodes
    ));
    let mut retry = tokio::time::interval(RETRY);
    // Status writes run as tasks of their own, so that a slow one delays no watch event.
    let mut writes = JoinSet::new();
    loop {
        tokio::select! {
            change = changes.next() => {
                let Some(change) = change else { return };
                sync.apply(change);
                // Take whatever else is ready before recomputing once.
                while let Some(Some(change)) = futures::FutureExt::now_or_never(changes.next()) {
                    sync.apply(change);
                }
            }
            Some(done) = writes.join_next() => {
                // A write task neither panics nor is aborted while `writes` lives.
                if let Ok(w) = done {
                    sync.written(w);
                }
            }
            _ = retry.tick() => {}
        }
        if !sync.publish() {
            return;
        }
        sync.write_status(&client, &mut writes);
    }
}

fn watcher<K>(
    api: Api<K>,
    wc: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, wc)
}

/// One watcher item. Boxed: the three object types differ a lot in size.
enum Change {
    Service(Box<Result<Event<Service>, watcher::Error>>),
    Slice(Box<Result<Event<EndpointSlice>, watcher::Error>>),
    Node(Box<Result<Event<Node>, watcher::Error>>),
}

/// One resource's objects. A re-list fills `buffer` and replaces `live` only
/// when complete, so a half-finished re-list is never seen.
struct Store<K> {
    live: BTreeMap<String, K>,
    buffer: Option<BTreeMap<String, K>>,
    synced: bool,
}

impl<K: Resource> Store<K> {
    fn new() -> Self {
        Store {
            live: BTreeMap::new(),
            buffer: None,
            synced: false,
        }
    }

    fn key(obj: &K) -> String {
        match obj.meta().namespace.as_deref() {
            Some(ns) => format!("{ns}/{}", obj.meta().name.as_deref().unwrap_or("")),
            None => obj.meta().name.clone().unwrap_or_default(),
        }
    }

    /// Applies one event; true if the live objects changed.
    fn apply(&mut self, ev: Event<K>) -> bool {
        match ev {
            Event::Init => {
                self.buffer = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                self.buffer
                    .get_or_insert_with(BTreeMap::new)
                    .insert(Self::key(&obj), obj);
                false
            }
            Event::InitDone => {
                self.live = self.buffer.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(obj) => {
                self.live.insert(Self::key(&obj), obj);
                true
            }
            Event::Delete(obj) => self.live.remove(&Self::key(&obj)).is_some(),
        }
    }
}

/// The watchers' state and what was last sent.
struct Sync {
    cfg: Kubernetes,
    tx: Sender<KubeUpdate>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    dirty: bool,
    last: Option<ServiceSet>,
    assigned: Assigned,
    pending: Vec<Assignment>,
    /// Per Service (namespace, name): the addresses last written and when the write ended
    /// (or began, while it runs).
    attempts: HashMap<(String, String), (Vec<IpAddr>, Instant)>,
    /// The Services whose status write runs now.
    writing: HashSet<(String, String)>,
    /// The last computation's problems, so each is logged once.
    problems: Problems,
    /// The status addresses the pool lost ([`model::lost`]), and when each was first seen.
    lost_since: HashMap<(String, IpAddr), Instant>,
    /// When the first of them is to be moved: a recompute is due then, event or not.
    next_reclaim: Option<Instant>,
    watch: Shared,
    /// How long a watch may deliver nothing before the client's read timeout ends it.
    hung_after: Duration,
}

impl Sync {
    fn new(cfg: Kubernetes, tx: Sender<KubeUpdate>, watch: Shared, hung_after: Duration) -> Sync {
        Sync {
            cfg,
            tx,
            watch,
            hung_after,
            services: Store::new(),
            slices: Store::new(),
            nodes: Store::new(),
            dirty: false,
            last: None,
            assigned: Assigned::new(),
            pending: Vec::new(),
            attempts: HashMap::new(),
            writing: HashSet::new(),
            problems: Problems::new(),
            lost_since: HashMap::new(),
            next_reclaim: None,
        }
    }

    fn apply(&mut self, change: Change) {
        use Watched::*;
        // `Init` only says that a list begins; the others bring objects.
        let (r, what, result) = match change {
            Change::Service(r) => (
                Services,
                "services",
                (*r).map(|ev| seen(&mut self.services, ev)),
            ),
            Change::Slice(r) => (
                Slices,
                "endpointslices",
                (*r).map(|ev| seen(&mut self.slices, ev)),
            ),
            Change::Node(r) => (Nodes, "nodes", (*r).map(|ev| seen(&mut self.nodes, ev))),
        };
        match result {
            Ok((changed, brought, listed)) => {
                self.dirty |= changed;
                if brought {
                    lock(&self.watch).event(r, listed);
                }
            }
            Err(e) => {
                let msg = if timed_out(&e) {
                    format!(
                        "watching {what}: nothing from the API server for {:?}, longer than it \
                         keeps a watch open; watching again ({})",
                        self.hung_after,
                        with_causes(&e)
                    )
                } else {
                    format!("watching {what}: {}", with_causes(&e))
                };
                tracing::warn!(error = %msg, "Kubernetes watch error; keeping the last state");
                lock(&self.watch).failed(Some(r), &msg);
                let _ = self.tx.send(KubeUpdate::Error(msg));
            }
        }
    }

    /// Recomputes and sends the set if it changed; false once the receiver is gone.
    fn publish(&mut self) -> bool {
        self.publish_at(Instant::now())
    }

    /// [`Self::publish`] at `now`. A status address the pool lost is still the Service's
    /// until it has been lost for [`model::RECLAIM_AFTER`], so that gateways whose pools
    /// differ while a config change rolls out do not move the Service back and forth.
    fn publish_at(&mut self, now: Instant) -> bool {
        self.dirty |= self.next_reclaim.is_some_and(|t| now >= t);
        if !(self.dirty && self.services.synced && self.slices.synced && self.nodes.synced) {
            return true;
        }
        self.dirty = false;
        let objs = Objects {
            services: std::mem::take(&mut self.services.live),
            slices: std::mem::take(&mut self.slices.live),
            nodes: std::mem::take(&mut self.nodes.live),
        };
        let lost = model::lost(&self.cfg, &objs);
        self.lost_since.retain(|k, _| lost.contains(k));
        for k in lost {
            self.lost_since.entry(k).or_insert(now);
        }
        let due = |since: &Instant| *since + model::RECLAIM_AFTER;
        let waiting = self.lost_since.iter().filter(|(_, t)| due(t) > now);
        let waiting = waiting.map(|(k, _)| k.clone()).collect();
        self.next_reclaim = self.lost_since.values().map(due).filter(|t| *t > now).min();
        let computed = model::compute_waiting(&self.cfg, &objs, &mut self.assigned, &waiting);
        (self.services.live, self.slices.live, self.nodes.live) =
            (objs.services, objs.slices, objs.nodes);
        self.pending = computed.to_write;
        self.report(computed.problems);
        if self.last.as_ref() == Some(&computed.set) {
            return true;
        }
        tracing::info!(
            vips = computed.set.vips.len(),
            "Kubernetes services changed"
        );
        self.last = Some(computed.set.clone());
        self.tx.send(KubeUpdate::Services(computed.set)).is_ok()
    }

    /// Logs the problems that are new since the last computation, and those gone: a
    /// recompute runs on every watch event (endpoints change all the time in a large
    /// cluster), and an unchanged problem is not news.
    fn report(&mut self, now: Problems) {
        for p in now.difference(&self.problems) {
            tracing::warn!(service = %p.service, "{}", p.what);
        }
        for p in self.problems.difference(&now) {
            tracing::info!(service = %p.service, "no longer: {}", p.what);
        }
        self.problems = now;
    }

    /// Writes granted addresses (pool or requested) to Service status (merge patch of the status
    /// subresource, `ipMode: VIP` so kube-proxy accepts the decapsulated
    /// packets addressed to it on every node). A merge patch replaces the
    /// whole `ingress` list (RFC 7386), so a refused address it moves a
    /// Service off is gone from its status, not kept next to the new one, and a
    /// dual-stack Service's addresses are written together, in one patch.
    /// Retried every few seconds until the watch shows the status.
    ///
    /// Each write is a task in `writes`, bounded by [`WRITE_TIMEOUT`], whose outcome
    /// comes back through [`Sync::written`]: a hung API connection or a slow admission
    /// webhook delays neither the watch events nor the other Services' writes. One write
    /// per Service runs at a time.
    fn write_status(&mut self, client: &Client, writes: &mut JoinSet<Written>) {
        for a in &self.pending {
            let id = (a.namespace.clone(), a.name.clone());
            if self.writing.contains(&id)
                || self
                    .attempts
                    .get(&id)
                    .is_some_and(|(ips, t)| *ips == a.ips && t.elapsed() < RETRY)
            {
                continue;
            }
            self.attempts
                .insert(id.clone(), (a.ips.clone(), Instant::now()));
            self.writing.insert(id);
            let key = format!("{}/{}", a.namespace, a.name);
            let version = self
                .services
                .live
                .get(&key)
                .and_then(|s| s.meta().resource_version.clone());
            let api: Api<Service> = Api::namespaced(client.clone(), &a.namespace);
            let a = a.clone();
            writes.spawn(async move {
                let ingress: Vec<_> = a
                    .ips
                    .iter()
                    .map(|ip| serde_json::json!({"ip": ip.to_string(), "ipMode": "VIP"}))
                    .collect();
                let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
                let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
                let write = api.patch_status(&a.name, &params, &patch);
                let result = match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                    Ok(Ok(svc)) => Ok(svc),
                    Ok(Err(e)) => Err(with_causes(&e)),
                    Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
                };
                Written { a, version, result }
            });
        }
        self.attempts.retain(|id, _| {
            self.writing.contains(id)
                || self
                    .pending
                    .iter()
                    .any(|a| a.namespace == id.0 && a.name == id.1)
        });
    }

    /// Takes the outcome of a status write. A failed one (an error or no answer in time) is
    /// logged and retried [`RETRY`] after it ended.
    fn written(&mut self, w: Written) {
        let Written { a, version, result } = w;
        let id = (a.namespace.clone(), a.name.clone());
        self.writing.remove(&id);
        match result {
            Ok(svc) => {
                // Apply the answer at once instead of waiting for the watch, unless the
                // watch has shown a change since the write began (it will show the write).
                let key = Store::<Service>::key(&svc);
                if let Some(slot) = self.services.live.get_mut(&key) {
                    if slot.meta().resource_version == version {
                        *slot = svc;
                        self.dirty = true;
                    }
                }
                for ip in a.ips {
                    let _ = self.tx.send(KubeUpdate::Assigned {
                        namespace: a.namespace.clone(),
                        name: a.name.clone(),
                        ip,
                    });
                }
            }
            Err(e) => {
                let msg = format!("writing {}/{} status: {e}", a.namespace, a.name);
                tracing::warn!(error = %msg, "status write failed; will retry");
                self.attempts.insert(id, (a.ips, Instant::now()));
                let _ = self.tx.send(KubeUpdate::Error(msg));
            }
        }
    }
}

/// Applies `ev` to `store`: whether its live objects changed, whether the event brought
/// objects (anything but the start of a list), and whether the store has been listed.
fn seen<K: Resource>(store: &mut Store<K>, ev: Event<K>) -> (bool, bool, bool) {
    let brought = !matches!(ev, Event::Init);
    (store.apply(ev), brought, store.synced)
}

/// The outcome of one status write: the assignment, its Service's resourceVersion when
/// the write began, and the Service as written or why not.
struct Written {
    a: Assignment,
    version: Option<String>,
    result: Result<Service, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_relist_is_swapped_in_whole() {
        let mut st = Store::<Node>::new();
        assert!(!st.apply(Event::Init));
        assert!(!st.apply(Event::InitApply(node("a"))));
        assert!(!st.synced);
        assert!(st.apply(Event::InitDone));
        assert!(st.synced);
        assert!(st.apply(Event::Apply(node("b"))));
        // A re-list (after 410 Gone) starts: the live view is untouched
        // until it completes, then replaced (b is gone, c is new).
        assert!(!st.apply(Event::Init));
        assert!(!st.apply(Event::InitApply(node("a"))));
        assert!(!st.apply(Event::InitApply(node("c"))));
        assert_eq!(st.live.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(st.apply(Event::InitDone));
        assert_eq!(st.live.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert!(st.apply(Event::Delete(node("a"))));
        assert!(!st.apply(Event::Delete(node("a"))));
    }

    /// A `[kubernetes]` section with every default.
    fn kube_cfg() -> Kubernetes {
        let text = "[dataplane]\nupstream_interface = \"eth0\"\n[kubernetes]\n";
        let cfg = crate::config::parse(text, std::path::Path::new("t.toml")).unwrap();
        cfg.kubernetes.unwrap()
    }

    /// A problem is logged when it appears and when it is gone, not on every recompute.
    #[test]
    fn each_problem_is_logged_when_it_appears_and_when_it_is_gone() {
        use std::sync::{Arc, Mutex};
        let cfg = kube_cfg();
        let (tx, _rx) = crossbeam::channel::unbounded();
        let mut sync = Sync::new(cfg, tx, Shared::default(), WATCH_TIMEOUT);
        let problem = |service: &str, what: &str| model::Problem {
            service: service.into(),
            what: what.into(),
        };
        let a = Problems::from([problem("ns/a", "address pool exhausted")]);
        let ab = Problems::from([
            problem("ns/a", "address pool exhausted"),
            problem("ns/b", "ignoring out-of-range port 70000"),
        ]);
        let log = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(move || WriteTo(writer.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for now in [a.clone(), a.clone(), ab.clone(), ab, a.clone(), a] {
                sync.report(now);
            }
        });
        let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains("WARN")
                && lines[0].contains("ns/a")
                && lines[0].contains("address pool exhausted"),
            "{text}"
        );
        assert!(
            lines[1].contains("WARN") && lines[1].contains("ns/b") && lines[1].contains("70000"),
            "{text}"
        );
        assert!(
            lines[2].contains("INFO")
                && lines[2].contains("no longer: ignoring out-of-range port 70000"),
            "{text}"
        );
    }

    /// Appends what is logged to a shared buffer.
    struct WriteTo(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for WriteTo {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn nothing_is_sent_before_every_resource_has_synced() {
        let cfg = kube_cfg();
        let (tx, rx) = crossbeam::channel::unbounded();
        let mut sync = Sync::new(cfg, tx, Shared::default(), WATCH_TIMEOUT);
        sync.apply(Change::Node(Box::new(Ok(Event::Init))));
        sync.apply(Change::Node(Box::new(Ok(Event::InitDone))));
        sync.apply(Change::Service(Box::new(Ok(Event::Init))));
        sync.apply(Change::Service(Box::new(Ok(Event::InitDone))));
        assert!(sync.publish());
        assert!(rx.try_recv().is_err());
        sync.apply(Change::Slice(Box::new(Ok(Event::Init))));
        sync.apply(Change::Slice(Box::new(Ok(Event::InitDone))));
        assert!(sync.publish());
        assert_eq!(
            rx.try_recv(),
            Ok(KubeUpdate::Services(ServiceSet::default()))
        );
        // Unchanged: not sent again.
        sync.apply(Change::Node(Box::new(Ok(Event::Apply(node("x"))))));
        assert!(sync.publish());
        assert!(rx.try_recv().is_err());
    }

    /// A status address the pool lost is served, and its Service left where it is, until it
    /// has been lost for [`model::RECLAIM_AFTER`]; then, with no event, the Service moves
    /// to a pool address (written to its status). It moved at once: while a pool change
    /// rolled out, a gateway with the new pool and one with the old moved each Service back
    /// and forth, each out of the other's pool, as fast as the API server answered.
    #[test]
    fn a_service_moves_off_an_address_the_pool_lost_only_after_a_while() {
        let text = "[dataplane]\nupstream_interface = \"eth0\"\n[kubernetes]\n\
                    load_balancer_class = \"example.com/dsrgate\"\n\
                    address_pool = [\"198.51.100.0/30\"]\n";
        let cfg = crate::config::parse(text, std::path::Path::new("t.toml"))
            .unwrap()
            .kubernetes
            .unwrap();
        let (tx, rx) = crossbeam::channel::unbounded();
        let mut sync = Sync::new(cfg, tx, Shared::default(), WATCH_TIMEOUT);
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1",
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/dsrgate",
                "ports": [{"name": "http", "protocol": "TCP", "port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7", "ipMode": "VIP"}]}}
        }))
        .unwrap();
        sync.apply(Change::Node(Box::new(Ok(Event::Init))));
        sync.apply(Change::Node(Box::new(Ok(Event::InitDone))));
        sync.apply(Change::Slice(Box::new(Ok(Event::Init))));
        sync.apply(Change::Slice(Box::new(Ok(Event::InitDone))));
        sync.apply(Change::Service(Box::new(Ok(Event::Init))));
        sync.apply(Change::Service(Box::new(Ok(Event::InitApply(svc)))));
        sync.apply(Change::Service(Box::new(Ok(Event::InitDone))));
        let addrs = |rx: &crossbeam::channel::Receiver<KubeUpdate>| -> Vec<String> {
            match rx.try_recv() {
                Ok(KubeUpdate::Services(set)) => {
                    set.vips.iter().map(|v| v.addr.to_string()).collect()
                }
                other => panic!("{other:?}"),
            }
        };
        let start = Instant::now();
        assert!(sync.publish_at(start));
        assert_eq!(addrs(&rx), ["203.0.113.7"]);
        assert!(sync.pending.is_empty(), "{:?}", sync.pending);
        // Nothing happens meanwhile.
        assert!(sync.publish_at(start + model::RECLAIM_AFTER / 2));
        assert!(rx.try_recv().is_err());
        assert!(sync.publish_at(start + model::RECLAIM_AFTER));
        assert_eq!(addrs(&rx), ["198.51.100.0"]);
        let written: Vec<_> = sync.pending.iter().map(|a| a.ips.clone()).collect();
        assert_eq!(written, [vec!["198.51.100.0".parse::<IpAddr>().unwrap()]]);
    }

    /// The watch's state: synced once all three resources are listed; a failing watch
    /// unsyncs it, with its error and since when, until the resource brings objects again
    /// or [`QUIET`] passes without another error; errors are counted throughout.
    #[test]
    fn the_watch_state_follows_lists_errors_and_events() {
        let (tx, _rx) = crossbeam::channel::unbounded();
        let watch = Shared::default();
        let mut sync = Sync::new(kube_cfg(), tx, watch.clone(), WATCH_TIMEOUT);
        let state = |at: Instant| lock(&watch).state(at);
        let now = Instant::now;
        // No client yet.
        lock(&watch).failed(None, "kubeconfig /k: missing");
        let s = state(now());
        assert!(!s.synced && s.last_event_unix.is_none() && s.errors == 1);
        assert_eq!(s.error.as_deref(), Some("kubeconfig /k: missing"));
        // A list that begins brings nothing yet.
        sync.apply(Change::Node(Box::new(Ok(Event::Init))));
        assert!(state(now()).last_event_unix.is_none());
        sync.apply(Change::Node(Box::new(Ok(Event::InitDone))));
        sync.apply(Change::Service(Box::new(Ok(Event::Init))));
        sync.apply(Change::Service(Box::new(Ok(Event::InitDone))));
        assert!(!state(now()).synced);
        sync.apply(Change::Slice(Box::new(Ok(Event::Init))));
        sync.apply(Change::Slice(Box::new(Ok(Event::InitDone))));
        let s = state(now());
        assert!(s.synced && s.last_event_unix.is_some(), "{s:?}");
        assert_eq!((s.error, s.error_since_unix, s.errors), (None, None, 1));

        let fail = || Change::Service(Box::new(Err(watcher::Error::NoResourceVersion)));
        sync.apply(fail());
        let s = state(now());
        assert!(!s.synced, "{s:?}");
        assert!(s
            .error
            .as_deref()
            .unwrap()
            .starts_with("watching services: "));
        let since = s.error_since_unix;
        assert!(since.is_some());
        assert_eq!(s.errors, 2);
        sync.apply(fail());
        let s = state(now());
        assert_eq!((s.synced, s.error_since_unix, s.errors), (false, since, 3));
        // Another resource's event does not end it; its own does.
        sync.apply(Change::Node(Box::new(Ok(Event::Apply(node("x"))))));
        assert!(!state(now()).synced);
        sync.apply(Change::Service(Box::new(Ok(Event::Delete(
            Service::default(),
        )))));
        let s = state(now());
        assert_eq!((s.synced, s.error, s.errors), (true, None, 3));
        // A retried watch that works is silent: without another error, it counts as
        // watched again after QUIET.
        sync.apply(fail());
        let s = state(now() + QUIET);
        assert_eq!((s.synced, s.error, s.errors), (true, None, 4));
    }
}
