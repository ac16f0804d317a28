//! `dsrgate run`: the appliance. One control thread wires the parts together:
//!
//! ```text
//!  static config ─┐                         ┌─► publish ─► snapshot ─► AF_XDP workers
//!  kube watcher ──┼─► services ─► health ───┤
//!  next hops ─────┘   (control loop)        └─► policy ──► BGP speaker ─► routers
//! ```
//!
//! The loop waits on a crossbeam `select!` for signals, health transitions and Kubernetes
//! updates, with a [`TICK`] timeout; every turn it refreshes next hops (every
//! [`NEIGH_EVERY`]), checks the dataplane, publishes a new snapshot if backends changed,
//! re-evaluates the announce policy, hands the speaker its routes, and stores a fresh
//! [`Status`](crate::status::Status) for the API.
//!
//! A dataplane problem that can heal withdraws every VIP while the daemon keeps running,
//! and the policy announces them again once it clears: a stalled worker, unresolved next
//! hops, or an interface re-created under its name or stripped of the steering program (a
//! network manager re-creating a bond, VLAN or veth, a NIC re-probed, `bpftool link
//! detach`). For the last the daemon rebuilds the packet path itself
//! (`Dataplane::reattach`), and also, without withdrawing, when the uplink's RX queue
//! count changed: at most one attempt every few seconds, once the interfaces exist, are
//! up and have stopped changing for a moment; another XDP program is never replaced, and
//! health, BGP sessions and the Kubernetes view go on as they were. The egress interface
//! (index, MAC, addresses) is read again after a rebuild until it has an outer source for
//! each family it had one for, and otherwise only at start and on reload. A failed query
//! of the attach state withdraws but never rebuilds. One that cannot heal, a worker
//! thread that ended (panicked), fails the control loop: the daemon shuts down as below,
//! without the drain, and exits non-zero so that its supervisor restarts it. Any other
//! failure (a helper thread that ended) shuts down the same way, with the drain if the
//! dataplane can still forward; a worker that ends during the drain ends it, and the exit
//! is non-zero.
//!
//! A service that a reload or a Kubernetes update removes goes the same way: its prefix
//! is withdrawn (unless another service keeps the address) while its ports stay in the
//! snapshot and the steering map, as they were, for the drain time; then they go. Added
//! back within the drain, it just goes on.
//!
//! Exit order, whatever the cause: routes are withdrawn first, the dataplane keeps
//! forwarding for the drain time (unless it cannot), then the steering program is
//! detached and the workers stop and close their sockets. A panic of the control thread
//! unwinds through `Daemon`'s fields in declaration order, which is the same order: the
//! speaker (withdraw, Cease) before the dataplane (detach).

mod checks;
mod forwarding;
mod report;
mod routes;

pub use checks::host_problems;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bgp::speaker::{ReconfigureError, Routes, SpawnError, Speaker};
use crossbeam::channel::{self, Receiver};
use prometheus_client::registry::Registry;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::api::{ApiServer, Metrics};
use crate::caps::{self, Cap};
use crate::config::{self, Config};
use crate::health::{self, HealthEvent, HealthThread, State, Target, Transition, Verdict};
use crate::neigh::{Resolution, Resolver};
use crate::policy::{DataplaneProblem, Decision, Policy, ServiceHealth, WithdrawReason};
use crate::publish::{desired, Desired, Params, Publisher};
use crate::sources::kube::{self as kube_source, KubeSource, KubeUpdate};
use crate::sources::{static_list, BackendSpec, LeftOut, ServiceSet, VipSpec};
use crate::status::SharedStatus;
use dataplane::bpf::steer::MAX_VIPS;
use dataplane::snapshot::SourcePrefix;
use forwarding::{Dataplane, Fixed};

/// Longest wait of the control loop between two turns.
pub const TICK: Duration = Duration::from_millis(200);
/// How often next hops are re-read from the kernel.
pub const NEIGH_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for the speaker to confirm that every route is withdrawn.
const WITHDRAW_WAIT: Duration = Duration::from_secs(2);

/// Starts a Kubernetes watcher with a channel of its own: dropping the watcher with its
/// receiver discards whatever it had queued.
fn watcher(k: config::Kubernetes) -> Result<(Option<KubeSource>, Receiver<KubeUpdate>)> {
    let (tx, rx) = channel::unbounded();
    let source = kube_source::spawn(k, tx).context("starting the Kubernetes watcher")?;
    Ok((Some(source), rx))
}

/// [`watcher`] for a reload: the new section's client is built and the API server checked
/// before its thread starts ([`kube_source::spawn_checked`]), so a section that cannot
/// work (a kubeconfig missing or unparsable, an unknown context, a certificate that does
/// not verify, credentials or RBAC refused, no answer) fails the reload, and the running
/// watcher goes on.
fn checked_watcher(k: config::Kubernetes) -> Result<(Option<KubeSource>, Receiver<KubeUpdate>)> {
    let (tx, rx) = channel::unbounded();
    let source = kube_source::spawn_checked(k, tx, kube_source::CHECK_TIMEOUT)
        .map_err(anyhow::Error::msg)
        .context("the new [kubernetes] section")?;
    Ok((Some(source), rx))
}

/// The capabilities `config` needs: the dataplane's, plus binding a port below 1024 for a
/// BGP listener (passive peers; 179 by default) or the API.
pub fn required_caps(config: &Config) -> Vec<Cap> {
    let mut caps = caps::DATAPLANE.to_vec();
    let low_bgp_port = config.bgp.as_ref().is_some_and(|b| {
        routes::speaker_config(b)
            .listen
            .iter()
            .any(|l| l.port() < 1024)
    });
    if low_bgp_port || config.api.listen.port() < 1024 {
        caps.push(Cap::NetBindService);
    }
    caps
}

/// A probed target's last known state.
#[derive(Clone, Debug)]
struct TargetState {
    up: bool,
    /// Down, and its node does not answer ([`HealthEvent::silent`]).
    silent: bool,
    /// Why it is down ([`HealthEvent::why`]).
    reason: String,
    /// It has its first verdict of this run ([`HealthEvent::settled`]).
    settled: bool,
}

/// Logs what a loaded config accepted but an operator probably did not mean.
fn log_warnings(path: &Path, c: &Config) {
    for w in &c.warnings {
        let w = config::Problems(path, std::slice::from_ref(w));
        tracing::warn!("config warning: {w}");
    }
}

/// Runs the daemon until SIGTERM or SIGINT. Errors at startup name what failed.
pub fn run(path: &Path) -> Result<()> {
    let config = config::load(path)?;
    log_warnings(path, &config);
    let problems = checks::host_problems(path, &config);
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    let signals = signals()?;
    let mut daemon = Daemon::start(path.to_owned(), config)?;
    let outcome = daemon.control_loop(&signals);
    if let Err(e) = &outcome {
        tracing::error!(
            error = format!("{e:#}"),
            "control loop failed; shutting down"
        );
    }
    // After a failure, drain only if the workers can still forward.
    let drain = outcome.is_ok() || daemon.can_forward();
    let drained = daemon.shutdown(&signals, drain);
    outcome.and(drained)
}

/// SIGHUP, SIGTERM and SIGINT as a channel, fed by signal-hook's handler thread.
fn signals() -> Result<Receiver<i32>> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    let (tx, rx) = channel::unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if tx.send(s).is_err() {
                    return;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(rx)
}

/// The running daemon. Field order is drop order: see the module docs.
struct Daemon {
    speaker: Option<Speaker>,
    dataplane: Option<Dataplane>,
    api: Option<ApiServer>,
    health: HealthThread,
    health_rx: Receiver<HealthEvent>,
    kube: Option<KubeSource>,
    /// The running watcher's updates ([`channel::never`] without one).
    kube_rx: Receiver<KubeUpdate>,
    /// Whether the watcher's view was in sync at the last report, to log when that changes.
    kube_synced: bool,

    path: PathBuf,
    config: Config,
    statics: ServiceSet,
    kube_set: ServiceSet,
    /// The Kubernetes VIPs the last merge left out, each logged once (see [`LeftOut::news`]).
    left_out: Vec<LeftOut>,
    /// The static and Kubernetes services merged: what should be served and announced.
    desired: ServiceSet,
    /// Service ports removed from `desired` that are still served until their drain ends.
    draining: Vec<Draining>,
    /// What is served: `desired` and the draining ports ([`served`]).
    services: ServiceSet,
    /// Per service of `services`: whether it is draining, so not announced.
    removed: Vec<bool>,
    targets: HashMap<Target, TargetState>,

    resolver: Resolver,
    egress_ifindex: u32,
    local_mac: [u8; 6],
    /// From a rebuild or a new egress index on, until the egress has an outer source again
    /// for each family (IPv4, IPv6) it had one for: the egress is read again with every
    /// next-hop refresh.
    egress_pending: Option<[bool; 2]>,
    next_hops: HashMap<IpAddr, Resolution>,
    macs: HashMap<IpAddr, [u8; 6]>,
    next_neigh: Instant,
    last_neigh: Instant,

    params: Params,
    publisher: Publisher,
    /// The earliest backend change not yet published (for the publish latency).
    dirty_since: Option<Instant>,
    /// The last published generation and its change's time (CLOCK_MONOTONIC ns), until a
    /// worker has run a batch on it.
    unobserved: Option<(u64, u64)>,
    /// Why the last snapshot failed to build, until one builds.
    rejected: Option<String>,
    /// The address families whose serving backends had no outer source at the last
    /// publish (see [`crate::publish::unsourced`]): logged when this changes.
    unsourced: Vec<&'static str>,
    vips_dirty: bool,

    policy: Policy,
    routes: Routes,
    problem: Option<DataplaneProblem>,

    registry: Arc<Registry>,
    metrics: Metrics,
    status: SharedStatus,
    started: Instant,
}

impl Daemon {
    fn start(path: PathBuf, config: Config) -> Result<Daemon> {
        let started = Instant::now();
        let fixed = Fixed::of(&config);
        let mut resolver = Resolver::new().context("opening an rtnetlink socket")?;
        let egress = fixed.egress().to_owned();
        let (egress_ifindex, local_mac, params) = read_egress(&mut resolver, &config, &fixed)?;

        let statics = static_list::service_set(&config);
        let (health, health_rx) = health::spawn().context("starting the health checker")?;
        health.set_targets(statics.health_targets());
        let status = crate::status::shared(Default::default());
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry, status.clone());

        let mut d = Daemon {
            speaker: None,
            dataplane: None,
            api: None,
            health,
            health_rx,
            kube: None,
            kube_rx: channel::never(),
            kube_synced: false,
            path,
            statics: statics.clone(),
            kube_set: ServiceSet::default(),
            left_out: Vec::new(),
            desired: statics.clone(),
            draining: Vec::new(),
            removed: vec![false; statics.vips.len()],
            services: statics,
            targets: HashMap::new(),
            resolver,
            egress_ifindex,
            local_mac,
            egress_pending: None,
            next_hops: HashMap::new(),
            macs: HashMap::new(),
            next_neigh: started,
            last_neigh: started,
            publisher: Publisher::new(Desired {
                config: Default::default(),
                origins: Vec::new(),
            })?,
            params,
            dirty_since: Some(started),
            unobserved: None,
            rejected: None,
            unsourced: Vec::new(),
            vips_dirty: true,
            policy: Policy::default(),
            routes: Routes::new(),
            problem: None,
            registry: Arc::new(registry),
            metrics,
            status,
            started,
            config,
        };

        d.refresh_next_hops(started);
        d.publish(started);
        d.dataplane = Some(Dataplane::start(&fixed, d.publisher.handle())?);
        d.sync_vips()?;
        if let Some(bgp) = &d.config.bgp {
            let speaker = Speaker::spawn(routes::speaker_config(bgp))
                .map_err(|e| spawn_error(&d.path, bgp, e))
                .context("starting the BGP speaker")?;
            d.speaker = Some(speaker);
        }
        if let Some(k) = d.config.kubernetes.clone() {
            (d.kube, d.kube_rx) = watcher(k)?;
        }
        d.api = Some(
            ApiServer::start(d.config.api.listen, d.registry.clone(), d.status.clone())
                .with_context(|| format!("starting the API on {}", d.config.api.listen))?,
        );
        let xdp_mode = d.dataplane().xdp_mode();
        let workers = d.dataplane().stats().len();
        tracing::info!(
            config = %d.path.display(),
            uplink = %fixed.uplink,
            egress = %egress,
            %xdp_mode,
            workers,
            vips = d.services.vips.len(),
            "dsrgate running"
        );
        Ok(d)
    }

    fn dataplane(&mut self) -> &mut Dataplane {
        self.dataplane
            .as_mut()
            .expect("the dataplane runs until shutdown")
    }

    /// Until SIGTERM or SIGINT (Ok) or a failure (Err): a helper thread that ended (the BGP
    /// speaker's among them, or no speaker running while `[bgp]` is configured), or an
    /// AF_XDP worker that did.
    fn control_loop(&mut self, signals: &Receiver<i32>) -> Result<()> {
        loop {
            channel::select! {
                recv(signals) -> s => match s {
                    Ok(SIGHUP) => self.reload(),
                    Ok(s) => {
                        tracing::info!(signal = s, "shutting down");
                        return Ok(());
                    }
                    Err(_) => anyhow::bail!("the signal thread ended"),
                },
                recv(self.health_rx) -> ev => match ev {
                    Ok(ev) => self.on_health(ev, Instant::now()),
                    Err(_) => anyhow::bail!("the health checker thread ended"),
                },
                recv(self.kube_rx) -> up => match up {
                    Ok(up) => self.on_kube(up, Instant::now()),
                    // It holds the sender and runs until dropped.
                    Err(_) => anyhow::bail!("the Kubernetes watcher thread ended"),
                },
                default(TICK) => {}
            }
            // Take every transition that arrived together before publishing once.
            while let Ok(ev) = self.health_rx.try_recv() {
                self.on_health(ev, Instant::now());
            }
            checks::speaker(self.speaker.as_ref(), self.config.bgp.is_some())?;
            self.turn(Instant::now(), false)?;
        }
    }

    /// One turn of the loop after its events.
    fn turn(&mut self, now: Instant, shutting_down: bool) -> Result<()> {
        self.dataplane().check_workers()?;
        // Removed services whose drain is over stop being forwarded (their prefixes were
        // withdrawn by an earlier turn).
        if self.draining.iter().any(|d| d.until <= now) {
            self.draining.retain(|d| {
                let keep = d.until > now;
                if !keep {
                    tracing::info!(vip = %d.vip.addr, service = %d.vip.name, ports = ?d.vip.ports,
                        "removed service drained; no longer forwarded");
                }
                keep
            });
            self.serve(now);
        }
        // A health change goes live before anything slower is looked at.
        if self.dirty_since.is_some() {
            self.publish(now);
        }
        // A backend that just became healthy may have a next hop that only resolved since
        // the last refresh (its own probes made the kernel resolve it): look again now
        // rather than report the dataplane unable to forward.
        let stale = now.saturating_duration_since(self.last_neigh) >= TICK;
        if now >= self.next_neigh || (stale && self.next_hop_problem().is_some()) {
            self.refresh_egress(now);
            self.refresh_next_hops(now);
        }
        let stats = self.dataplane().stats();
        let problem = self
            .dataplane()
            .problem(&stats, now)
            .or_else(|| self.next_hop_problem())
            .or_else(|| {
                let error = self.rejected.clone()?;
                Some(DataplaneProblem::SnapshotRejected { error })
            });
        if problem != self.problem {
            match &problem {
                Some(p) => {
                    tracing::error!(problem = %p, "dataplane unhealthy: withdrawing every VIP")
                }
                None => tracing::info!("dataplane healthy again"),
            }
            self.problem = problem;
        }
        if self.dirty_since.is_some() {
            self.publish(now);
        }
        if self.vips_dirty {
            self.sync_vips()?;
        }
        self.check_observed();
        self.evaluate(shutting_down);
        self.report(&stats, now);
        // Last, once a withdrawal has gone to the speaker: a rebuild takes a while (the
        // verifier runs). The routes stay withdrawn until the next turn finds the new path
        // healthy. A drain ends soon and detaches anyway.
        if !shutting_down && self.dataplane().reattach(now)? {
            // A re-created interface has a new index and maybe a new MAC and addresses, and
            // its neighbours are to be resolved again.
            self.egress_pending
                .get_or_insert(outer_families(&self.params));
            self.refresh_egress(now);
            self.refresh_next_hops(now);
        }
        Ok(())
    }

    fn on_health(&mut self, ev: HealthEvent, now: Instant) {
        // Only the current run of a current target: a queued event from before the
        // target was removed and added again would leave it up here while the checker,
        // which started it afresh, holds it down. Nor is it counted as a transition.
        if !self.health.is_current(&ev) {
            return;
        }
        let up = ev.state == State::Up;
        if matches!(ev.transition, Transition::Up | Transition::Down) {
            self.metrics
                .health_transition(ev.target.addr, up, ev.reason.label());
        }
        // A target still down only tells why (for the status), or that it has its first
        // verdict (for the policy, evaluated every turn): nothing to republish, unless its
        // node stopped or started answering (a draining node leaves or stays).
        let was_silent = self.targets.get(&ev.target).is_some_and(|s| s.silent);
        let news_only = ev.transition == Transition::StillDown && ev.silent == was_silent;
        let reason = ev.why();
        self.targets.insert(
            ev.target,
            TargetState {
                up,
                silent: ev.silent,
                reason,
                settled: ev.settled,
            },
        );
        if !news_only {
            self.dirty_since.get_or_insert(now);
        }
    }

    fn on_kube(&mut self, up: KubeUpdate, now: Instant) {
        match up {
            KubeUpdate::Services(set) => {
                tracing::info!(vips = set.vips.len(), "Kubernetes services updated");
                self.kube_set = set;
                self.services_changed(now);
            }
            KubeUpdate::Assigned {
                namespace,
                name,
                ip,
            } => {
                tracing::info!(service = %format!("{namespace}/{name}"), %ip, "address written to the Service's status")
            }
            KubeUpdate::Error(e) => {
                tracing::warn!(error = %e, "Kubernetes API error; keeping the last good services")
            }
        }
    }

    /// Logs when the Kubernetes view falls out of sync (each error is logged as it comes)
    /// and when it is in sync again.
    fn log_kube_sync(&mut self, k: &crate::status::KubernetesStatus) {
        if k.synced == self.kube_synced {
            return;
        }
        match &k.error {
            _ if k.synced => tracing::info!("Kubernetes view in sync"),
            Some(e) => tracing::warn!(
                error = %e,
                "Kubernetes view out of sync; keeping the last good services"
            ),
            // A new watcher, listing.
            None => {}
        }
        self.kube_synced = k.synced;
    }

    /// After the static or Kubernetes set changed: merge, start draining the service
    /// ports no longer there, and serve the result.
    fn services_changed(&mut self, now: Instant) {
        let (desired, left_out) = ServiceSet::merge(&self.statics, &self.kube_set);
        for l in LeftOut::news(&mut self.left_out, left_out) {
            l.log();
        }
        if desired == self.desired {
            return;
        }
        let drain = self.config.daemon.drain_time;
        for gone in drains(&self.desired, &desired, now + drain) {
            tracing::info!(vip = %gone.vip.addr, service = %gone.vip.name, ports = ?gone.vip.ports,
                ?drain, "service removed: withdrawn, still forwarded for the drain time");
            self.draining.push(gone);
        }
        self.desired = desired;
        self.serve(now);
    }

    /// Serves the desired services and the draining ones: re-targets the probes and
    /// republishes if that changed anything.
    fn serve(&mut self, now: Instant) {
        let (services, removed) = served(&self.desired, &mut self.draining);
        // A service removed and added back, or drained, changes only this.
        self.removed = removed;
        if services == self.services {
            return;
        }
        self.services = services;
        let targets = self.services.health_targets();
        // Targets compare by what is probed, not timing: a retimed target keeps its
        // state here, as its counter does in the checker.
        let keep: HashSet<&Target> = targets.iter().collect();
        self.targets.retain(|t, _| keep.contains(t));
        self.health.set_targets(targets);
        self.next_neigh = now;
        self.dirty_since.get_or_insert(now);
        self.vips_dirty = true;
    }

    /// A backend's verdict as [`crate::sources::VipSpec::healthy_backends`] wants it.
    fn target_state(&self, t: &Target) -> Option<Verdict> {
        self.targets.get(t).map(|s| {
            let state = if s.up { State::Up } else { State::Down };
            Verdict::new(state, s.silent)
        })
    }

    /// Healthy backends (with their effective weight) of service `i`: those that count
    /// toward announcing it.
    fn healthy(&self, i: usize) -> Vec<BackendSpec> {
        self.services.vips[i].healthy_backends(|t| self.target_state(t))
    }

    /// The backends service `i`'s table lists: the healthy ones and, at weight 0, healthy
    /// ones draining, whose recorded flows stay on them.
    fn serving(&self, i: usize) -> Vec<BackendSpec> {
        self.services.vips[i].serving_backends(|t| self.target_state(t))
    }

    /// Reads the egress interface again once it was re-created, its MAC changed, or after a
    /// rebuild (see `egress_pending`): re-created under its name, or configured in steps by
    /// a network manager, it may have a new index, MAC or addresses (the outer source, unless
    /// configured). Not in steady state: an address briefly gone (a DHCP renew) would
    /// withdraw every VIP, and a new first address (IPv6 temporary addresses) would move
    /// the tunnels' source. What was read before stays while it cannot be read (it is
    /// gone).
    fn refresh_egress(&mut self, now: Instant) {
        let fixed = self.dataplane().fixed().clone();
        // Re-created under its name, it is read from then on, before the rebuild: the
        // backends' routes already name its new index.
        // So is one whose MAC changed (`ip link set address`, a bond's failover): every
        // tunnelled frame carries it as its source, and the steering program follows it
        // too.
        let moved = ifindex(fixed.egress()).ok() != Some(self.egress_ifindex)
            || self
                .resolver
                .local_mac(self.egress_ifindex)
                .is_ok_and(|mac| mac != self.params.local_mac);
        if moved {
            self.egress_pending
                .get_or_insert(outer_families(&self.params));
        }
        let Some(wanted) = self.egress_pending else {
            return;
        };
        let (ifindex, mac, params) = match read_egress(&mut self.resolver, &self.config, &fixed) {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(error = format!("{e:#}"), "egress interface unreadable");
                return;
            }
        };
        if ifindex != self.egress_ifindex {
            tracing::info!(egress = %fixed.egress(), ifindex, "egress interface re-created");
            self.egress_ifindex = ifindex;
        }
        self.local_mac = mac;
        let has = outer_families(&params);
        if wanted.iter().zip(has).all(|(&want, has)| has || !want) {
            self.egress_pending = None;
        }
        self.set_params(params, now);
    }

    /// Takes new snapshot parameters (a reload, the egress read again), logging a change
    /// of the egress MAC or of a tunnel outer source, which every tunnelled packet carries.
    fn set_params(&mut self, params: Params, now: Instant) {
        if params == self.params {
            return;
        }
        let old = &self.params;
        if params.local_mac != old.local_mac {
            tracing::info!(
                old = %crate::status::format_mac(old.local_mac),
                new = %crate::status::format_mac(params.local_mac),
                "egress MAC changed"
            );
        }
        if (params.outer_src_v4, params.outer_src_v6) != (old.outer_src_v4, old.outer_src_v6) {
            tracing::info!(
                v4 = %source(params.outer_src_v4),
                v6 = %source(params.outer_src_v6),
                old_v4 = %source(old.outer_src_v4),
                old_v6 = %source(old.outer_src_v6),
                "tunnel outer source changed"
            );
        }
        self.params = params;
        self.dirty_since.get_or_insert(now);
    }

    fn refresh_next_hops(&mut self, now: Instant) {
        self.next_neigh = now + NEIGH_EVERY;
        self.last_neigh = now;
        let mut addrs: Vec<IpAddr> = self
            .services
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.addr))
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        let resolved = match self.resolver.resolve(&addrs) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading next hops failed; keeping the last ones");
                return;
            }
        };
        let mut macs = HashMap::new();
        for (addr, res) in &resolved {
            match res {
                Ok(hop) if hop.ifindex != self.egress_ifindex => {
                    if self.next_hops.get(addr) != Some(res) {
                        tracing::warn!(backend = %addr, ifindex = hop.ifindex,
                            egress = self.egress_ifindex,
                            "backend is routed through another interface than the egress one; unusable");
                    }
                }
                Ok(hop) => {
                    if let Some(mac) = hop.mac {
                        macs.insert(*addr, mac);
                    }
                }
                Err(e) => {
                    if self.next_hops.get(addr) != Some(res) {
                        tracing::warn!(backend = %addr, error = %e, "no next hop toward backend");
                    }
                }
            }
        }
        for addr in &addrs {
            match (self.macs.get(addr), macs.get(addr)) {
                (None, Some(mac)) => tracing::info!(backend = %addr,
                    mac = %crate::status::format_mac(*mac), "next hop resolved"),
                (Some(_), None) => tracing::warn!(backend = %addr, "next hop unresolved"),
                _ => {}
            }
        }
        self.next_hops = resolved.into_iter().collect();
        if macs != self.macs {
            self.macs = macs;
            self.dirty_since.get_or_insert(now);
        }
    }

    /// With healthy backends but a next hop for none of them, nothing can be forwarded.
    fn next_hop_problem(&self) -> Option<DataplaneProblem> {
        let mut healthy = 0;
        for i in 0..self.services.vips.len() {
            for b in self.healthy(i) {
                if self.macs.contains_key(&b.addr) {
                    return None;
                }
                healthy += 1;
            }
        }
        (healthy > 0).then_some(DataplaneProblem::NextHopUnresolved)
    }

    /// Logs when the families this gateway cannot tunnel to (`unsourced`, from
    /// [`crate::publish::unsourced`]) change: their backends look healthy and keep their
    /// slots, and only this says why their share of the traffic is dropped.
    fn report_unsourced(&mut self, unsourced: Vec<(&'static str, usize)>) {
        let families: Vec<&'static str> = unsourced.iter().map(|(f, _)| *f).collect();
        if families == self.unsourced {
            return;
        }
        for (family, backends) in &unsourced {
            if !self.unsourced.contains(family) {
                tracing::warn!(
                    family,
                    backends,
                    "no outer source address of this family: its backends keep their Maglev \
                     slots, but their packets are dropped (no_tunnel_source); set \
                     dataplane.outer_source_prefix, or give the egress interface a global \
                     address of this family"
                );
            }
        }
        for family in self.unsourced.iter().filter(|f| !families.contains(f)) {
            tracing::info!(
                family,
                "backends of this family are tunnelled again (or none is left)"
            );
        }
        self.unsourced = families;
    }

    fn publish(&mut self, now: Instant) {
        let since = self.dirty_since.take().unwrap_or(now);
        let next = desired(
            &self.services,
            |i| self.serving(i),
            &self.macs,
            &self.params,
        );
        self.report_unsourced(crate::publish::unsourced(&next.config));
        match self.publisher.publish(next) {
            Ok(Some(p)) => {
                self.rejected = None;
                let latency = p.live_at.saturating_duration_since(since);
                self.metrics.snapshot_published(latency);
                let change_ns = dataplane::xsk::monotonic_ns()
                    .saturating_sub(Instant::now().duration_since(since).as_nanos() as u64);
                self.unobserved = Some((p.generation, change_ns));
                tracing::info!(
                    generation = p.generation,
                    build_us = p.build.as_micros() as u64,
                    change_to_live_us = latency.as_micros() as u64,
                    "snapshot published"
                );
                for c in &p.maglev {
                    self.metrics.maglev_rebuilt(c.key, c.changed_slots);
                    tracing::info!(
                        vip = %c.key,
                        changed_slots = c.changed_slots,
                        table_size = c.table_size,
                        "maglev table rebuilt"
                    );
                }
            }
            Ok(None) => self.rejected = None,
            // The next change of services, health or next hops tries again.
            Err(e) => {
                tracing::error!(error = %e,
                    "cannot build a snapshot; the previous one stays live");
                self.rejected = Some(e.to_string());
            }
        }
    }

    /// Logs when the first worker ran a batch on the last published snapshot, counted from
    /// the change that caused it (workers without traffic never do; nothing is logged then).
    fn check_observed(&mut self) {
        let Some((generation, change_ns)) = self.unobserved else {
            return;
        };
        let first = self
            .dataplane()
            .pipelines()
            .iter()
            .map(|p| p.generation())
            .filter(|(g, _)| *g == generation)
            .map(|(_, at)| at)
            .min();
        if let Some(at) = first {
            self.unobserved = None;
            tracing::info!(
                generation,
                change_to_worker_us = at.saturating_sub(change_ns) / 1000,
                "first worker batch on the new snapshot"
            );
        }
    }

    fn sync_vips(&mut self) -> Result<()> {
        let services = self.services.clone();
        self.dataplane().set_vips(&services)?;
        self.vips_dirty = false;
        Ok(())
    }

    /// Decides every prefix, logs and counts the changes, and gives the speaker the
    /// announced set.
    fn evaluate(&mut self, shutting_down: bool) {
        let health: Vec<ServiceHealth> = (0..self.services.vips.len())
            .map(|i| {
                let v = &self.services.vips[i];
                let usable = self
                    .healthy(i)
                    .iter()
                    .filter(|b| self.macs.contains_key(&b.addr))
                    .filter(|b| self.params.can_tunnel(v.addr, b.addr))
                    .count();
                // A target with no entry has not been probed in this run; one failure is
                // no verdict either: the checker settles it up, or down as it would take
                // an up target down.
                let (mut checked, mut pending) = (0, 0);
                for t in v.backends.iter().filter_map(|b| v.target(b)) {
                    checked += 1;
                    pending += usize::from(!self.targets.get(&t).is_some_and(|s| s.settled));
                }
                let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                ServiceHealth {
                    addr: v.addr,
                    healthy_backends: count(usable),
                    min_healthy: v.min_healthy,
                    pending_backends: count(pending),
                    checked_backends: count(checked),
                    removed: self.removed[i],
                }
            })
            .collect();
        let held =
            |d: &Decision| matches!(d, Decision::Withdraw(WithdrawReason::HealthPending { .. }));
        for t in self
            .policy
            .evaluate(&health, self.problem.as_ref(), shutting_down)
        {
            let (announce, label) = match &t.to {
                Decision::Announce => (true, "healthy"),
                Decision::Withdraw(WithdrawReason::TooFewHealthyBackends { .. }) => {
                    (false, "too_few_healthy_backends")
                }
                Decision::Withdraw(WithdrawReason::Dataplane(_)) => (false, "dataplane"),
                Decision::Withdraw(WithdrawReason::ShuttingDown) => (false, "shutting_down"),
                Decision::Withdraw(WithdrawReason::Removed) => (false, "removed"),
                Decision::Withdraw(WithdrawReason::HealthPending { .. }) => {
                    (false, "health_pending")
                }
            };
            let from_held = t.from.as_ref().is_some_and(held);
            if from_held && held(&t.to) {
                // Only the counts changed: the status shows them, the log need not.
                continue;
            }
            if announce && from_held {
                tracing::info!(vip = %t.addr, "first health verdicts in: announcing");
            } else if announce || t.to == Decision::Withdraw(WithdrawReason::Removed) || held(&t.to)
            {
                tracing::info!(vip = %t.addr, "{}", t.to);
            } else {
                tracing::warn!(vip = %t.addr, "{}", t.to);
            }
            self.metrics.announce_transition(t.addr, announce, label);
        }
        // Attributes from the services that keep the address, not from draining ones.
        let routes = routes::routes(self.policy.announced(), &self.desired);
        if routes != self.routes {
            if let Some(s) = &self.speaker {
                s.set_routes(routes.clone());
            }
            self.routes = routes;
        }
    }

    fn report(&mut self, stats: &[::dataplane::xsk::WorkerStats], now: Instant) {
        let services = &self.services;
        let health = |si: usize, addr: IpAddr| {
            let v = &services.vips[si];
            let Some(b) = v.backends.iter().find(|b| b.addr == addr) else {
                return report::BackendHealth {
                    up: false,
                    reason: None,
                };
            };
            match v.target(b) {
                None => report::BackendHealth {
                    up: true,
                    reason: None,
                },
                Some(t) => match self.targets.get(&t) {
                    Some(s) => report::BackendHealth {
                        up: s.up,
                        reason: (!s.up).then(|| s.reason.clone()),
                    },
                    None => report::BackendHealth {
                        up: false,
                        reason: Some("not probed yet".into()),
                    },
                },
            }
        };
        let serving: Vec<Vec<BackendSpec>> =
            (0..services.vips.len()).map(|i| self.serving(i)).collect();
        let weights = |si: usize, addr: IpAddr| {
            serving[si]
                .iter()
                .find(|b| b.addr == addr)
                .map(|b| b.weight)
        };
        let peers = self.speaker.as_ref().map(|s| s.peers()).unwrap_or_default();
        let kubernetes = self.kube.as_ref().map(KubeSource::state);
        let dp = self
            .dataplane
            .as_ref()
            .expect("the dataplane runs until shutdown");
        let status = report::build(&report::Inputs {
            uptime: now.saturating_duration_since(self.started),
            generation: self.publisher.generation(),
            dataplane_problem: self.problem.as_ref().map(ToString::to_string),
            uplink_mtu: dp.uplink_mtu(),
            services,
            health: &health,
            weights: &weights,
            next_hops: &self.next_hops,
            tunnel: &|vip, backend| self.params.can_tunnel(vip, backend),
            live: self.publisher.vips(),
            policy: &self.policy,
            peers: &peers,
            workers: stats,
            pipelines: dp.pipelines(),
            xdp_mode: dp.xdp_mode(),
            flow_capacity: u64::from(dp.fixed().flow_table_size),
            steering: dp.steering(),
            kubernetes: kubernetes.clone(),
        });
        self.status.store(Arc::new(status));
        if let Some(k) = kubernetes {
            self.log_kube_sync(&k);
        }
    }

    /// SIGHUP: load the file again. An invalid file changes nothing; a valid one is applied
    /// without stopping the workers.
    fn reload(&mut self) {
        let new = match config::load(&self.path) {
            Ok(c) => {
                log_warnings(&self.path, &c);
                c
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the running config stays");
                self.metrics.config_reload(false);
                return;
            }
        };
        match self.apply(new) {
            Ok(()) => {
                tracing::info!(config = %self.path.display(), "config reloaded");
                self.metrics.config_reload(true);
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "config reload rejected; the running config stays"
                );
                self.metrics.config_reload(false);
            }
        }
    }

    /// Applies a valid config, or changes nothing and says why. What can fail (starting the
    /// new watcher on a client built and checked against the API, binding the new API
    /// address, changing the BGP peers) happens before anything is given up, except for an
    /// API address that overlaps the running one on its port: that one moves at once, and
    /// back if the BGP change fails ([`Daemon::start_api`]). BGP peers and listeners
    /// change in place ([`Daemon::reconfigure_bgp`]), and only a change the running
    /// speaker cannot take (a `[bgp]` section added or removed, a listener refusing a TCP
    /// MD5 key) restarts it: the speaker must stop before its successor starts (their
    /// listeners share a port), so a successor that fails brings the previous speaker
    /// back.
    fn apply(&mut self, new: Config) -> Result<()> {
        caps::require(&required_caps(&new))?;
        let now = Instant::now();
        let fixed = self.dataplane().fixed().clone();
        // A reload is applied or refused whole: one that changes what only a restart
        // applies is refused, rather than applied in part with the config then claiming
        // values that are not in effect.
        let restart = checks::restart_only_changes(&self.path, &self.config, &new);
        if !restart.is_empty() {
            anyhow::bail!("{}", restart.join("; "));
        }
        let params = forwarding::params(&new, &fixed, self.local_mac)?;
        // The watcher to switch to, if the section changed (no watcher if it is gone). Its
        // client is built and the API checked first, so a section that cannot work fails
        // the reload here with the old watcher still running. It starts before the old one
        // stops; its own channel keeps the old one's last updates from arriving after its
        // first.
        let kube = match (new.kubernetes != self.config.kubernetes, &new.kubernetes) {
            (true, Some(k)) => Some(checked_watcher(k.clone())?),
            (true, None) => Some((None, channel::never())),
            (false, _) => None,
        };
        let api_runs_there = self.api.as_ref().is_some_and(|a| {
            let at = a.local_addr();
            let port = new.api.listen.port();
            at.ip() == new.api.listen.ip() && (at.port() == port || port == 0)
        });
        let (api, moved) = if new.api.listen != self.config.api.listen {
            self.start_api(new.api.listen)?
        } else if !api_runs_there {
            // A reload that moved the API failed and could not bind its address again
            // (logged as "no API until the next reload"): any later reload tries again,
            // but one that keeps the address is not refused if it still cannot bind.
            self.start_api(new.api.listen).unwrap_or_else(|e| {
                tracing::error!(error = format!("{e:#}"), "the API is still not running");
                (None, None)
            })
        } else {
            (None, None)
        };
        if new.bgp != self.config.bgp {
            if let Err(e) = self.change_bgp(new.bgp.as_ref()) {
                if let Some(running) = moved {
                    self.move_api(running);
                }
                return Err(e);
            }
        }
        if let Some(api) = api {
            if let Some(old) = self.api.replace(api) {
                old.shutdown();
            }
        }
        if let Some((source, rx)) = kube {
            // The new watcher's first complete list replaces the Kubernetes VIPs; until
            // then the old ones stay (none if the section is gone).
            if source.is_none() {
                self.kube_set = ServiceSet::default();
            }
            (self.kube, self.kube_rx) = (source, rx);
        }
        self.set_params(params, now);
        self.statics = static_list::service_set(&new);
        self.config = new;
        self.services_changed(now);
        Ok(())
    }

    /// The API on `listen`, a reload's new address: started beside the running one (the
    /// first of the pair, to replace it on commit), or, when the two addresses overlap on
    /// one port (`127.0.0.1:9180` and `0.0.0.0:9180`, which Linux does not bind at once),
    /// moved: the running one stops, then the new one binds, and it serves from now on
    /// (the second of the pair is then the running address, to move back to if the reload
    /// fails later). If the move fails, the running address is bound again.
    fn start_api(
        &mut self,
        listen: std::net::SocketAddr,
    ) -> Result<(Option<ApiServer>, Option<std::net::SocketAddr>)> {
        let context = || format!("starting the API on {listen}");
        let err = match ApiServer::start(listen, self.registry.clone(), self.status.clone()) {
            Ok(api) => return Ok((Some(api), None)),
            Err(e) => e,
        };
        let Some(running) = self.api.take_if(|a| a.overlaps(listen, &err)) else {
            return Err(err).with_context(context);
        };
        let from = running.local_addr();
        match running.move_to(listen) {
            Ok(api) => {
                self.api = Some(api);
                Ok((None, Some(from)))
            }
            Err((e, back)) => {
                self.api = back;
                Err(e).with_context(context)
            }
        }
    }

    /// Moves the API back to `running` after a reload that moved it failed (logged if it
    /// cannot).
    fn move_api(&mut self, running: std::net::SocketAddr) {
        let Some(api) = self.api.take() else { return };
        match api.move_to(running) {
            Ok(api) => self.api = Some(api),
            Err((e, back)) => {
                tracing::error!(addr = %running, error = %e, "cannot bind the API's running address again");
                self.api = back;
            }
        }
    }

    /// Applies a changed `[bgp]` section: in place ([`Daemon::reconfigure_bgp`]), or by
    /// restarting the speaker, which gives way to the running settings if it fails.
    fn change_bgp(&mut self, bgp: Option<&config::Bgp>) -> Result<()> {
        if self.reconfigure_bgp(bgp)? {
            return Ok(());
        }
        if let Err(e) = self.restart_speaker(bgp) {
            let running = self.config.bgp.clone();
            if let Err(again) = self.restart_speaker(running.as_ref()) {
                tracing::error!(
                    error = format!("{again:#}"),
                    "cannot start the BGP speaker with the running settings either; \
                     no routes are announced, and the daemon stops"
                );
            }
            return Err(e);
        }
        Ok(())
    }

    /// Changes the running speaker's peers and listeners to `bgp`'s: sessions whose
    /// settings stay go on, changed and removed ones are closed with the Cease subcode
    /// that says so. False when the speaker must restart instead (logged with the
    /// reason); an error when a new listening address cannot be bound, which a restart
    /// would not mend.
    fn reconfigure_bgp(&self, bgp: Option<&config::Bgp>) -> Result<bool> {
        let (result, bgp) = match (&self.speaker, bgp) {
            (Some(speaker), Some(bgp)) => (speaker.reconfigure(routes::speaker_config(bgp)), bgp),
            (_, None) => {
                tracing::info!("BGP section removed: stopping the speaker");
                return Ok(false);
            }
            (None, Some(_)) => {
                tracing::info!("no BGP speaker runs: starting one");
                return Ok(false);
            }
        };
        match result {
            Ok(r) => {
                tracing::info!(
                    kept = ?r.kept,
                    changed = ?r.changed,
                    added = ?r.added,
                    removed = ?r.removed,
                    "BGP peers reconfigured; unchanged sessions stay up"
                );
                Ok(true)
            }
            Err(ReconfigureError::Listen { addr, error }) => Err(spawn_error(
                &self.path,
                bgp,
                SpawnError::Listen { addr, error },
            )),
            Err(e) => {
                tracing::info!(reason = %e, "BGP settings changed: restarting the speaker");
                Ok(false)
            }
        }
    }

    /// Stops the speaker, then starts one for `bgp` (none without a `[bgp]` section) with
    /// the current routes. Without one, the peers are told Cease / Peer De-configured
    /// (RFC 4486), as a peer removed from the section is.
    fn restart_speaker(&mut self, bgp: Option<&config::Bgp>) -> Result<()> {
        if let Some(mut old) = self.speaker.take() {
            match bgp {
                Some(_) => old.shutdown("dsrgate configuration changed"),
                None => old.deconfigure(),
            }
        }
        if let Some(bgp) = bgp {
            let s = Speaker::spawn(routes::speaker_config(bgp))
                .map_err(|e| spawn_error(&self.path, bgp, e))
                .context("restarting the BGP speaker")?;
            s.set_routes(self.routes.clone());
            self.speaker = Some(s);
        }
        Ok(())
    }

    /// Whether every worker runs and the dataplane has no problem (as of the last turn,
    /// and the workers and the steering program now): a drain would still forward.
    fn can_forward(&mut self) -> bool {
        if self.problem.is_some() || self.dataplane().check_workers().is_err() {
            return false;
        }
        let stats = self.dataplane().stats();
        self.dataplane().problem(&stats, Instant::now()).is_none()
    }

    /// Withdraw, drain while forwarding (if `drain`), detach, stop. An error if the
    /// dataplane failed during the drain (a worker ended), which ends it early.
    fn shutdown(mut self, signals: &Receiver<i32>, drain: bool) -> Result<()> {
        self.evaluate(true);
        self.wait_withdrawn();
        let drain_time = self.config.daemon.drain_time;
        let mut failed = Ok(());
        if drain && !drain_time.is_zero() {
            tracing::info!(drain = ?drain_time, "routes withdrawn; draining while still forwarding");
            let deadline = Instant::now() + drain_time;
            // A channel whose thread ended (the failure that led here) is always ready:
            // wait on it no longer.
            let (mut signals, mut health_rx) = (signals.clone(), self.health_rx.clone());
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                // Health checks go on while the drain's flows finish: a backend that fails
                // now leaves the tables as it would before.
                let second = channel::select! {
                    recv(signals) -> s => match s {
                        Ok(s) => Some(s).filter(|&s| s != SIGHUP),
                        Err(_) => {
                            signals = channel::never();
                            None
                        }
                    },
                    recv(health_rx) -> ev => {
                        match ev {
                            Ok(ev) => self.on_health(ev, Instant::now()),
                            Err(_) => health_rx = channel::never(),
                        }
                        None
                    },
                    default(left.min(TICK)) => None,
                };
                if let Some(s) = second {
                    tracing::info!(signal = s, "second signal: ending the drain early");
                    break;
                }
                if let Err(e) = self.turn(Instant::now(), true) {
                    tracing::error!(error = format!("{e:#}"), "ending the drain early");
                    failed = Err(e.context("during the drain"));
                    break;
                }
            }
        }
        if let Some(mut s) = self.speaker.take() {
            s.shutdown("dsrgate shutting down");
        }
        if let Some(dp) = self.dataplane.take() {
            dp.stop();
        }
        if let Some(api) = self.api.take() {
            api.shutdown();
        }
        tracing::info!("dsrgate stopped");
        failed
    }

    /// Waits (bounded by [`WITHDRAW_WAIT`]) until no established session has a prefix in
    /// its Adj-RIB-Out or output its peer's TCP has not acknowledged
    /// (`PeerStatus::unacked_bytes`): the withdrawals have reached every router, not only
    /// been queued behind a slow or stalled reader. Only a snapshot that shows the
    /// speaker's last command (the withdrawal; [`routes::unwithdrawn`]) counts.
    fn wait_withdrawn(&self) {
        let Some(s) = &self.speaker else { return };
        if s.ended() {
            // Its sessions are closed: the routers dropped its routes with them.
            tracing::warn!("the BGP speaker has ended: nothing left to withdraw");
            return;
        }
        let generation = s.generation();
        let deadline = Instant::now() + WITHDRAW_WAIT;
        loop {
            if s.ended() {
                tracing::warn!(
                    "the BGP speaker ended during the withdraw wait; its sessions closed with it"
                );
                return;
            }
            let snapshot = s.snapshot();
            let pending = routes::unwithdrawn(&snapshot, generation);
            if pending.as_ref().is_some_and(Vec::is_empty) {
                tracing::info!("every route withdrawn, and acknowledged by the peers");
                return;
            }
            if Instant::now() >= deadline {
                let Some(pending) = pending else {
                    tracing::warn!("the BGP speaker has not carried out the withdrawal after the withdraw wait");
                    return;
                };
                for p in pending {
                    let (peer, prefixes, unacked_bytes) =
                        (p.address, p.prefixes_advertised, p.unacked_bytes);
                    if prefixes > 0 {
                        tracing::warn!(%peer, prefixes, unacked_bytes, "routes still advertised after the withdraw wait");
                    } else {
                        tracing::warn!(%peer, unacked_bytes, "withdrawal sent but not acknowledged by the peer after the withdraw wait");
                    }
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Ports of a removed service, still served (not announced) until `until`.
#[derive(Clone, Debug)]
struct Draining {
    vip: VipSpec,
    until: Instant,
}

/// The service ports of `old` that `new` no longer serves, to drain until `until`.
fn drains(old: &ServiceSet, new: &ServiceSet, until: Instant) -> Vec<Draining> {
    old.vips
        .iter()
        .filter_map(|v| uncovered(v, new))
        .map(|vip| Draining { vip, until })
        .collect()
}

/// The ports of `v` that no service of `set` on its address and protocol serves: `v`
/// with only those, or `None` if every port is still served.
fn uncovered(v: &VipSpec, set: &ServiceSet) -> Option<VipSpec> {
    let ports: Vec<u16> = v
        .ports
        .iter()
        .copied()
        .filter(|&p| !serves(set, v.addr, v.proto, p))
        .collect();
    (!ports.is_empty()).then(|| VipSpec { ports, ..v.clone() })
}

/// Whether a service of `set` takes `port` on `addr` and `proto`.
fn serves(set: &ServiceSet, addr: IpAddr, proto: config::Protocol, port: u16) -> bool {
    set.vips
        .iter()
        .any(|s| s.addr == addr && s.proto == proto && s.ports.contains(&port))
}

/// What is served: `desired`, and the draining ports that no desired service took back
/// (a service added back during its drain just goes on) within the [`MAX_VIPS`] ports
/// the steering program holds, in [`ServiceSet::normalize`]'s order; and per service,
/// whether it is draining. Draining entries taken back or without room are dropped.
fn served(desired: &ServiceSet, draining: &mut Vec<Draining>) -> (ServiceSet, Vec<bool>) {
    let used: usize = desired.vips.iter().map(|v| v.ports.len()).sum();
    let mut room = MAX_VIPS.saturating_sub(used);
    draining.retain_mut(|d| {
        let before = d.vip.ports.len();
        let (addr, proto) = (d.vip.addr, d.vip.proto);
        d.vip.ports.retain(|&p| !serves(desired, addr, proto, p));
        if d.vip.ports.len() < before {
            tracing::info!(vip = %d.vip.addr, service = %d.vip.name,
                "removed service added back during its drain");
        }
        if d.vip.ports.is_empty() {
            return false;
        }
        if d.vip.ports.len() > room {
            tracing::warn!(vip = %d.vip.addr, service = %d.vip.name, ports = ?d.vip.ports,
                "drain cut short: the steering program holds at most {MAX_VIPS} service ports");
            return false;
        }
        room -= d.vip.ports.len();
        true
    });
    let mut all: Vec<(VipSpec, bool)> = desired
        .vips
        .iter()
        .map(|v| (v.clone(), false))
        .chain(draining.iter().map(|d| (d.vip.clone(), true)))
        .collect();
    all.sort_by(|(a, _), (b, _)| a.order().cmp(&b.order()));
    let (vips, removed) = all.into_iter().unzip();
    (ServiceSet { vips }, removed)
}

/// The egress interface's index and MAC, and the snapshot parameters that take them.
fn read_egress(
    resolver: &mut Resolver,
    config: &Config,
    fixed: &Fixed,
) -> Result<(u32, [u8; 6], Params)> {
    let egress = fixed.egress();
    let ifindex = ifindex(egress)?;
    let mac = resolver
        .local_mac(ifindex)
        .with_context(|| format!("reading the MAC address of {egress}"))?;
    let params = forwarding::params(config, fixed, mac)?;
    Ok((ifindex, mac, params))
}

/// A speaker that could not start, its listener named with the fields of `bgp` (in `file`)
/// that asked for it.
fn spawn_error(file: &Path, bgp: &config::Bgp, e: SpawnError) -> anyhow::Error {
    match e {
        SpawnError::Listen { addr, .. } => {
            checks::field_error(file, &checks::listen_fields(bgp, addr), e)
        }
        SpawnError::Io(e) => e.into(),
    }
}

/// Whether `params` has an outer source for IPv4 and for IPv6.
fn outer_families(params: &Params) -> [bool; 2] {
    [params.outer_src_v4.is_some(), params.outer_src_v6.is_some()]
}

/// An outer source for the log: `ADDR/LEN`, or `none`.
fn source<A: std::fmt::Display>(s: Option<SourcePrefix<A>>) -> String {
    s.map_or_else(|| "none".to_owned(), |s| format!("{}/{}", s.addr, s.len))
}

fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: `c` is a valid NUL-terminated string; if_nametoindex only reads it.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => anyhow::bail!("no network interface {iface:?} in this namespace"),
        i => Ok(i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_listening_port_needs_net_bind_service() {
        let example = include_str!("../../../dsrgate.example.toml");
        let needs_bind = |text: &str| {
            let c = config::parse(text, Path::new("dsrgate.toml")).unwrap();
            required_caps(&c).contains(&Cap::NetBindService)
        };
        assert!(!needs_bind(example), "an active peer listens nowhere");
        let passive = example.replace("passive = false", "passive = true");
        assert!(needs_bind(&passive), "a passive peer on 179");
        assert!(!needs_bind(&passive.replace("# port = 179", "port = 1179")));
        assert!(needs_bind(
            &example.replace("127.0.0.1:9180", "127.0.0.1:80")
        ));
    }

    /// Static services from `vips`: (address, ports) with one backend each.
    fn set(vips: &[(&str, &[u16])]) -> ServiceSet {
        let mut text = "[dataplane]\nupstream_interface = \"eth0\"\n".to_owned();
        for (addr, ports) in vips {
            text += &format!(
                "\n[[vips]]\naddress = \"{addr}\"\nports = {ports:?}\n\n\
                 [[vips.backends]]\naddress = \"10.0.0.1\"\n"
            );
        }
        static_list::service_set(&config::parse(&text, Path::new("t.toml")).unwrap())
    }

    /// Ports (address, port, draining) of what is served.
    fn ports(s: &(ServiceSet, Vec<bool>)) -> Vec<(String, u16, bool)> {
        s.0.vips
            .iter()
            .zip(&s.1)
            .flat_map(|(v, &r)| v.ports.iter().map(move |&p| (v.addr.to_string(), p, r)))
            .collect()
    }

    #[test]
    fn removed_service_ports_are_served_until_their_drain_ends() {
        let old = set(&[("192.0.2.10", &[7, 80]), ("192.0.2.20", &[443])]);
        let new = set(&[("192.0.2.10", &[80])]);
        let mut draining = drains(&old, &new, Instant::now());
        let served_now = served(&new, &mut draining);
        assert_eq!(
            ports(&served_now),
            [
                ("192.0.2.10".into(), 7, true),
                ("192.0.2.10".into(), 80, false),
                ("192.0.2.20".into(), 443, true),
            ]
        );
        // The draining services are the removed ones as they were: same backends.
        assert!(served_now.0.vips.iter().all(|v| v.backends.len() == 1));
        // Drained: only the desired ones remain.
        draining.clear();
        assert_eq!(served(&new, &mut draining), (new.clone(), vec![false]));
    }

    #[test]
    fn a_service_added_back_during_its_drain_just_goes_on() {
        let old = set(&[("192.0.2.10", &[80]), ("192.0.2.20", &[443])]);
        let new = set(&[("192.0.2.10", &[80])]);
        let mut draining = drains(&old, &new, Instant::now());
        let (during, removed) = served(&new, &mut draining);
        assert_eq!(during, old, "nothing changes for the dataplane");
        assert_eq!(removed, [false, true]);
        assert_eq!(
            served(&old, &mut draining),
            (old.clone(), vec![false, false])
        );
        assert!(draining.is_empty(), "the drain is over once added back");
    }

    #[test]
    fn draining_ports_fit_the_steering_map_or_end() {
        let many: Vec<u16> = (1..=MAX_VIPS as u16).collect();
        let old = set(&[("192.0.2.20", &many[..10])]);
        let new = set(&[("192.0.2.10", &many[..MAX_VIPS - 5])]);
        let mut draining = drains(&old, &new, Instant::now());
        assert_eq!(served(&new, &mut draining), (new.clone(), vec![false]));
        assert!(draining.is_empty());
    }
}
