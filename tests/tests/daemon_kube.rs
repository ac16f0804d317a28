//! The daemon's `[kubernetes]` section against the fake API server of control's tests
//! (`control/tests/fake_apiserver`), run in the gateway's namespace.
//!
//! Topology: [`Lab::new`] with one gateway; no BIRD (the Kubernetes VIP is looked at in
//! `GET /status`, where a removed one is gone once its drain is over), except in the
//! draining-node tests, whose `Local` Service is the lab's VIP4, announced to BIRD and
//! reached from the client, with kube-proxy's health check played on each node. The
//! status-write test runs the Kubernetes source alone, on the channel that feeds the daemon.

#[path = "../../control/tests/fake_apiserver/mod.rs"]
#[allow(dead_code)]
mod fake_apiserver;

mod api;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use control::sources::kube::KubeUpdate;
use control::sources::ServiceSet;
use control::status::{BackendStatus, Health, KubernetesStatus, Status};
use dsrgate_tests::bird::Bird;
use dsrgate_tests::daemon::{Daemon, GatewayConfig, Lab, PREFIX4};
use dsrgate_tests::netns::{fabric4, node_host, Netns, VIP4};
use dsrgate_tests::{require_privileges, require_privileges_with, TempDir};
use fake_apiserver::{FakeApiServer, Kind};
use serde_json::{json, Value};

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");
/// The Kubernetes Service's address (its status), apart from the static VIP.
const KUBE_VIP: &str = "203.0.113.10";
const WAIT: Duration = Duration::from_secs(30);

fn node(n: u8) -> Value {
    let name = format!("node{n}");
    json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": fabric4(node_host(n))}]
        }
    })
}

/// `default/web`: LoadBalancer, `Cluster`, TCP 8080, at [`KUBE_VIP`].
fn web_service() -> Value {
    service("web", json!([http(8080)]), Some(KUBE_VIP))
}

fn http(port: u16) -> Value {
    json!({"name": format!("http-{port}"), "protocol": "TCP", "port": port, "targetPort": port, "nodePort": 30000 + port % 1000})
}

/// A LoadBalancer Service in `default`, `Cluster`, with `ports`, at `ip` if it has one.
fn service(name: &str, ports: Value, ip: Option<&str>) -> Value {
    let ingress = match ip {
        Some(ip) => json!([{"ip": ip, "ipMode": "VIP"}]),
        None => json!([]),
    };
    json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "LoadBalancer", "ports": ports, "externalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {"ingress": ingress}}
    })
}

/// `web`'s slice: one ready pod on node1, with both ports `web` ever has (8080, and 8443
/// once [`a_hung_status_write_delays_no_watch_event`] adds it), which dsrgate, as
/// kube-proxy, matches to the Service's ports by name and protocol.
fn web_slice() -> Value {
    json!({
        "metadata": {"name": "web-1", "namespace": "default", "uid": "uid-web-1",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.1"], "conditions": {"ready": true}, "nodeName": "node1"}],
        "ports": [{"name": "http-8080", "protocol": "TCP", "port": 8080},
                  {"name": "http-8443", "protocol": "TCP", "port": 8443}]
    })
}

/// Nodes 1-3 and the `web` Service with its one endpoint on node1.
fn serve_web(server: &FakeApiServer) {
    for n in 1..=3 {
        server.apply(Kind::Node, node(n));
    }
    server.apply(Kind::Service, web_service());
    server.apply(Kind::EndpointSlice, web_slice());
}

/// The gateway's config with a `[kubernetes]` section on `kubeconfig`.
fn config(kubeconfig: &Path) -> String {
    format!(
        "{}\n[kubernetes]\nkubeconfig = {:?}\n",
        GatewayConfig::new(1).toml(),
        kubeconfig.display().to_string()
    )
}

/// Whether `status` lists [`KUBE_VIP`].
fn kube_vip_served(status: &Status) -> bool {
    status
        .vips
        .iter()
        .any(|v| v.address.to_string() == KUBE_VIP)
}

fn wait_kube_vip(gw: &Netns, served: bool) -> Result<()> {
    let what = format!("{KUBE_VIP} {}", if served { "served" } else { "gone" });
    api::wait_status(gw, &what, WAIT, |s| kube_vip_served(s) == served)?;
    Ok(())
}

/// The fake API server in `gw` with [`serve_web`]'s objects, and the daemon watching it
/// through a kubeconfig in `dir`, once it serves [`KUBE_VIP`].
fn watching_web(gw: &Netns, dir: &TempDir) -> Result<(FakeApiServer, Daemon)> {
    let server = gw.enter(FakeApiServer::start)?;
    serve_web(&server);
    let daemon = Daemon::start(gw, &config(&server.kubeconfig(dir.path())), &[])?;
    daemon.wait_log(&["dsrgate running"], WAIT)?;
    wait_kube_vip(gw, true)?;
    Ok((server, daemon))
}

/// Rewrites the config for `kubeconfig`, sends SIGHUP, and returns the log line of the
/// reload's result.
fn reload(daemon: &Daemon, kubeconfig: &Path) -> Result<String> {
    daemon.reload(&config(kubeconfig), WAIT)
}

/// The reloads with `result` (`ok` or `error`) that `/metrics` counts.
fn reloads(gw: &Netns, result: &str) -> Result<u64> {
    Ok(api::reloads(&api::metrics(gw)?, result))
}

/// A reload whose `[kubernetes]` section cannot work (its kubeconfig missing, or naming an
/// API server nothing answers on) is rejected and counted as failed, and the running
/// watcher goes on: a Service deleted afterwards on the running server is removed. A reload
/// to a section that works then switches watchers.
#[test]
fn a_reload_to_a_kubernetes_section_that_cannot_work_fails_and_the_old_watcher_goes_on(
) -> Result<()> {
    if !require_privileges(
        "daemon_kube::a_reload_to_a_kubernetes_section_that_cannot_work_fails_and_the_old_watcher_goes_on",
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let gw = lab.ns("gw1");
    let dir = TempDir::new("daemon-kube");
    let (server, mut daemon) = watching_web(gw, &dir)?;

    // A kubeconfig that is not there: rejected, naming the file.
    let line = reload(&daemon, Path::new("/nonexistent/dsrgate/kubeconfig"))?;
    ensure!(
        line.contains("config reload rejected") && line.contains("/nonexistent/dsrgate/kubeconfig"),
        "{line}"
    );
    // One that names an API server nothing answers on (a port just closed, in the
    // gateway's namespace): rejected, naming the cause.
    let port = gw.enter(|| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
    })??;
    let nowhere = dir.path().join("nowhere");
    std::fs::create_dir_all(&nowhere)?;
    let unreachable =
        fake_apiserver::write_kubeconfig(&nowhere, &format!("http://127.0.0.1:{port}"), None);
    let line = reload(&daemon, &unreachable)?;
    ensure!(
        line.contains("config reload rejected") && line.contains("Connection refused"),
        "{line}"
    );
    ensure!(reloads(gw, "error")? == 2 && reloads(gw, "ok")? == 0);

    // The running watcher still follows the server.
    server.delete(Kind::Service, "default/web");
    wait_kube_vip(gw, false)?;

    // A section that works (the same server, through another file) is applied.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again)?;
    let line = reload(&daemon, &server.kubeconfig(&again))?;
    ensure!(line.contains("config reloaded"), "{line}");
    ensure!(reloads(gw, "ok")? == 1);
    server.apply(Kind::Service, web_service());
    wait_kube_vip(gw, true)?;

    daemon.signal(libc::SIGTERM)?;
    daemon
        .wait_clean_exit(Duration::from_secs(15))
        .context("clean exit")
}

/// Waits until the `kubernetes` object of `/status` satisfies `pred`; returns it.
fn wait_kube_state(
    gw: &Netns,
    what: &str,
    pred: impl Fn(&KubernetesStatus) -> bool,
) -> Result<KubernetesStatus> {
    let s = api::wait_status(gw, what, WAIT, |s| s.kubernetes.as_ref().is_some_and(&pred))?;
    s.kubernetes.context("no kubernetes in /status")
}

/// The value of the unlabelled series `name` in `/metrics`.
fn metric(gw: &Netns, name: &str) -> Result<f64> {
    let metrics = api::metrics(gw)?;
    let series = format!("{name} ");
    let value = api::samples(&metrics, &series).next();
    value.with_context(|| format!("no {name} in:\n{metrics}"))
}

/// A gateway whose Kubernetes API fails says so: `/status` and `/metrics` show it synced
/// once listed, then, while the API server answers every request with 500, not synced,
/// with the error, since when, and a growing error count, while the Kubernetes VIP stays
/// served (the last good services); once the server answers again and each resource
/// changes, synced again.
#[test]
fn a_failing_kubernetes_api_shows_in_status_and_metrics_while_the_vips_stay() -> Result<()> {
    if !require_privileges(
        "daemon_kube::a_failing_kubernetes_api_shows_in_status_and_metrics_while_the_vips_stay",
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let gw = lab.ns("gw1");
    let dir = TempDir::new("daemon-kube-sync");
    let (server, mut daemon) = watching_web(gw, &dir)?;
    let k = wait_kube_state(gw, "synced", |k| k.synced)?;
    ensure!(k.error.is_none() && k.last_event_unix.is_some(), "{k:?}");
    ensure!(metric(gw, "dsrgate_kubernetes_synced")? == 1.0);
    ensure!(metric(gw, "dsrgate_kubernetes_last_event_timestamp_seconds")? > 0.0);

    server.set_failing(true);
    let failing = wait_kube_state(gw, "failing", |k| !k.synced && k.errors > 0)?;
    ensure!(
        failing
            .error
            .as_deref()
            .is_some_and(|e| e.contains("watching"))
            && failing.error_since_unix.is_some(),
        "{failing:?}"
    );
    // The watcher retries, and each failure counts; the errors began when they did.
    let more = wait_kube_state(gw, "counting errors", |k| k.errors > failing.errors)?;
    ensure!(
        !more.synced && more.error_since_unix == failing.error_since_unix,
        "{more:?}"
    );
    ensure!(metric(gw, "dsrgate_kubernetes_synced")? == 0.0);
    ensure!(metric(gw, "dsrgate_kubernetes_errors_total")? >= more.errors as f64);
    daemon.wait_log(&["Kubernetes view out of sync", "watching"], WAIT)?;
    ensure!(
        kube_vip_served(&api::status(gw)?),
        "{KUBE_VIP} gone while the API fails"
    );

    // Answering again, each resource brings a change once its watch is back.
    server.set_failing(false);
    server.apply(Kind::Node, node(1));
    server.apply(Kind::Service, web_service());
    server.apply(Kind::EndpointSlice, web_slice());
    let k = wait_kube_state(gw, "synced again", |k| k.synced)?;
    ensure!(k.error.is_none() && k.errors >= more.errors, "{k:?}");
    ensure!(metric(gw, "dsrgate_kubernetes_synced")? == 1.0);
    daemon.wait_log(&["Kubernetes view in sync"], WAIT)?;
    ensure!(kube_vip_served(&api::status(gw)?), "{KUBE_VIP} gone");

    daemon.signal(libc::SIGTERM)?;
    daemon
        .wait_clean_exit(Duration::from_secs(15))
        .context("clean exit")
}

/// A kubeconfig in `dir/name` for `server` whose user's credential plugin
/// (`users[].user.exec`) does not answer: it sleeps a minute before it gives a token.
fn hung_plugin_kubeconfig(server: &FakeApiServer, dir: &Path, name: &str) -> Result<PathBuf> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let url = format!("http://{}", server.addr);
    Ok(fake_apiserver::write_exec_kubeconfig(
        &dir,
        &url,
        &fake_apiserver::exec_hung(),
    ))
}

/// A reload to a `[kubernetes]` section whose kubeconfig's credential plugin does not
/// answer is refused within the check's timeout, naming the kubeconfig and the plugin,
/// rather than holding the control loop for as long as the plugin runs: the old watcher
/// goes on (a Service deleted afterwards is removed), the API answers, and SIGTERM stops
/// the daemon cleanly, without waiting for the plugin left running.
#[test]
fn a_reload_whose_credential_plugin_does_not_answer_is_refused_and_the_daemon_goes_on() -> Result<()>
{
    if !require_privileges(
        "daemon_kube::a_reload_whose_credential_plugin_does_not_answer_is_refused_and_the_daemon_goes_on",
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let gw = lab.ns("gw1");
    let dir = TempDir::new("daemon-kube-hung");
    let (server, mut daemon) = watching_web(gw, &dir)?;

    let hung = hung_plugin_kubeconfig(&server, dir.path(), "hung")?;
    let line = reload(&daemon, &hung)?;
    ensure!(
        line.contains("config reload rejected")
            && line.contains("[kubernetes]")
            && line.contains(&hung.display().to_string())
            && line.contains("credential plugin")
            && line.contains("did not answer in time"),
        "{line}"
    );
    ensure!(reloads(gw, "error")? == 1 && reloads(gw, "ok")? == 0);
    // The old config is kept: its watcher still follows the server.
    ensure!(
        kube_vip_served(&api::status(gw)?),
        "{KUBE_VIP} gone after a refused reload"
    );
    server.delete(Kind::Service, "default/web");
    wait_kube_vip(gw, false)?;

    daemon.signal(libc::SIGTERM)?;
    daemon
        .wait_clean_exit(Duration::from_secs(15))
        .context("clean exit")
}

/// A daemon started on a kubeconfig whose credential plugin does not answer runs (the
/// static VIPs are served; the credentials may come later), says that the plugin did not
/// answer, and stops cleanly on SIGTERM without waiting for the plugin.
#[test]
fn a_daemon_started_on_a_credential_plugin_that_does_not_answer_runs_and_stops_cleanly(
) -> Result<()> {
    if !require_privileges(
        "daemon_kube::a_daemon_started_on_a_credential_plugin_that_does_not_answer_runs_and_stops_cleanly",
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let gw = lab.ns("gw1");
    let server = gw.enter(FakeApiServer::start)?;
    let dir = TempDir::new("daemon-kube-hung-start");
    let hung = hung_plugin_kubeconfig(&server, dir.path(), "hung")?;
    let mut daemon = Daemon::start(gw, &config(&hung), &[])?;
    daemon.wait_log(&["dsrgate running"], WAIT)?;
    let line = daemon.wait_log(&["credential plugin", "did not answer in time"], WAIT)?;
    ensure!(line.contains(&hung.display().to_string()), "{line}");
    let status = api::status(gw)?;
    ensure!(!status.vips.is_empty(), "no static VIP served: {status:?}");
    ensure!(server.requests().is_empty(), "{:?}", server.requests());

    daemon.signal(libc::SIGTERM)?;
    daemon
        .wait_clean_exit(Duration::from_secs(15))
        .context("clean exit")
}

/// A status write that the API server holds unanswered (a hung connection, a slow
/// admission webhook) delays no watch event: a Service changed meanwhile still reaches the
/// daemon. Unanswered for long, the write fails and is tried again; once the server answers
/// again, it is carried out.
#[test]
fn a_hung_status_write_delays_no_watch_event() -> Result<()> {
    const POOL_IP: &str = "198.51.100.10";
    let server = FakeApiServer::start();
    serve_web(&server);
    // Without an address: gets one from the pool, written to its status.
    server.apply(Kind::Service, service("dns", json!([http(53)]), None));
    server.set_hang_patches(true);
    let dir = TempDir::new("kube-status-write");
    let text = format!(
        "[dataplane]\nupstream_interface = \"eth0\"\n[kubernetes]\nkubeconfig = {:?}\n\
         address_pool = [\"{POOL_IP}-198.51.100.12\"]\n",
        server.kubeconfig(dir.path()).display().to_string()
    );
    let cfg = control::config::parse(&text, Path::new("kube.toml"))?
        .kubernetes
        .context("no [kubernetes]")?;
    let (tx, rx) = crossbeam::channel::unbounded();
    let _source = control::sources::kube::spawn(cfg, tx)?;
    let wait_set = |what: &str, pred: &dyn Fn(&ServiceSet) -> bool| -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(KubeUpdate::Services(set)) if pred(&set) => return Ok(()),
                Ok(_) => {}
                Err(_) => bail!("no set with {what} after {WAIT:?}"),
            }
        }
    };
    let vip = |set: &ServiceSet, name: &str| {
        set.vips
            .iter()
            .find(|v| v.name == format!("default/{name}"))
            .cloned()
    };
    wait_set("dns on its pool address", &|s| {
        vip(s, "dns").is_some_and(|v| v.addr.to_string() == POOL_IP)
    })?;
    let deadline = Instant::now() + WAIT;
    while !server.requests().iter().any(|r| r.starts_with("PATCH ")) {
        ensure!(Instant::now() < deadline, "no status write");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The write hangs; web gains a port.
    server.apply(
        Kind::Service,
        service("web", json!([http(8080), http(8443)]), Some(KUBE_VIP)),
    );
    wait_set("web's new port while the write hangs", &|s| {
        vip(s, "web").is_some_and(|v| v.ports == [8080, 8443])
    })?;

    // Unanswered for long enough, the write fails, is reported, and is tried again.
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(KubeUpdate::Error(e)) if e.contains("default/dns") => {
                ensure!(e.contains("no answer within"), "{e}");
                break;
            }
            Ok(_) => {}
            Err(_) => bail!("the hung write was not reported after {WAIT:?}"),
        }
    }
    let patches = |server: &FakeApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("PATCH "))
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while patches(&server) < 2 {
        ensure!(
            Instant::now() < deadline,
            "the hung write was not tried again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    server.set_hang_patches(false);
    let written = |server: &FakeApiServer| {
        server
            .object(Kind::Service, "default/dns")
            .is_some_and(|o| o["status"]["loadBalancer"]["ingress"][0]["ip"] == POOL_IP)
    };
    let deadline = Instant::now() + WAIT;
    while !written(&server) {
        ensure!(Instant::now() < deadline, "dns's status never written");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The `healthCheckNodePort` kube-proxy opens on a node for one `Local` Service: 200 while the
/// node has a ready endpoint of it, else 503, with the count in
/// `X-Load-Balancing-Endpoint-Weight` (kube-proxy's `pkg/proxy/healthcheck/service_health.go`;
/// terminating endpoints are not counted, so that load balancers send no new connections).
struct ServiceHealth {
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServiceHealth {
    fn start(ns: &Netns, port: u16) -> Result<ServiceHealth> {
        let listener = ns.enter(|| TcpListener::bind(("0.0.0.0", port)))??;
        listener.set_nonblocking(true)?;
        let ready = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (ready.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = answer_health(conn, r.load(Ordering::Relaxed));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(ServiceHealth {
            ready,
            stop,
            thread: Some(thread),
        })
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

impl Drop for ServiceHealth {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one probe as kube-proxy does, once its request head is in.
fn answer_health(mut conn: TcpStream, ready: bool) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let (status, count) = if ready {
        ("200 OK", 1)
    } else {
        ("503 Service Unavailable", 0)
    };
    let body = format!("{{\"localEndpoints\": {count}, \"serviceProxyHealthy\": true}}");
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
         X-Load-Balancing-Endpoint-Weight: {count}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The `healthCheckNodePort` of [`local_web_service`].
const HEALTH_NODE_PORT: u16 = 32080;

/// `default/web` at the lab's VIP4, TCP 80, `externalTrafficPolicy: Local`, probed on
/// [`HEALTH_NODE_PORT`].
fn local_web_service() -> Value {
    let mut svc = service("web", json!([http(80)]), Some(VIP4));
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    svc["spec"]["healthCheckNodePort"] = json!(HEALTH_NODE_PORT);
    svc
}

/// `web`'s EndpointSlice: one pod on each of `nodes`, ready, or terminating but still
/// serving (in its grace period) on `terminating`.
fn local_web_slice(nodes: &[u8], terminating: Option<u8>) -> Value {
    let eps: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let (ready, t) = if terminating == Some(*n) {
                (false, true)
            } else {
                (true, false)
            };
            json!({"addresses": [format!("10.244.{n}.1")], "nodeName": format!("node{n}"),
                "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("web-{n}")},
                "conditions": {"ready": ready, "serving": true, "terminating": t}})
        })
        .collect();
    json!({
        "metadata": {"name": "web-1", "namespace": "default", "uid": "uid-web-1",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http-80", "protocol": "TCP", "port": 80}]
    })
}

/// Waits until VIP4:80 is listed with its backend at `addr` (`None`: not listed)
/// satisfying `pred`.
fn wait_backend(
    gw: &Netns,
    addr: &str,
    what: &str,
    pred: impl Fn(Option<&BackendStatus>) -> bool,
) -> Result<()> {
    let what = format!("VIP4:80 with backend {addr} {what}");
    api::wait_status(gw, &what, WAIT, |s| {
        s.vips
            .iter()
            .find(|v| v.address.to_string() == VIP4 && v.port == 80)
            .is_some_and(|vip| pred(vip.backends.iter().find(|b| b.address.to_string() == addr)))
    })?;
    Ok(())
}

/// What a draining-node test works with, from [`with_a_draining_local_node`].
struct Draining<'a> {
    lab: &'a Lab,
    server: &'a FakeApiServer,
    bird: &'a Bird<'a>,
    /// A long-lived connection, pinned to the draining node, which still serves it.
    flow: TcpStream,
    node_name: String,
    n: u8,
    /// The draining node's address.
    addr: String,
}

/// Runs `then` on the lab with BIRD and the daemon serving [`local_web_service`] (VIP4, a
/// pod on each node, kube-proxy's health check played on each), once the pod of the node
/// that took a long-lived connection began terminating (`serving`, `terminating`, not
/// `ready`; its health check answers 503), its node is at weight 0 and down, and the
/// connection goes on with it while new ones go elsewhere, the VIP announced. Then stops
/// the daemon, which must exit cleanly. Returns `Ok` at once when `test` is skipped.
fn with_a_draining_local_node(test: &str, then: impl FnOnce(Draining) -> Result<()>) -> Result<()> {
    if !require_privileges_with(test, &["bird", "birdc"]) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let gw = lab.ns("gw1");
    let health: Vec<ServiceHealth> = (1..=3)
        .map(|n| ServiceHealth::start(lab.ns(&format!("node{n}")), HEALTH_NODE_PORT))
        .collect::<Result<_>>()?;
    let server = gw.enter(FakeApiServer::start)?;
    for n in 1..=3 {
        server.apply(Kind::Node, node(n));
    }
    server.apply(Kind::Service, local_web_service());
    server.apply(Kind::EndpointSlice, local_web_slice(&[1, 2, 3], None));
    let dir = TempDir::new("daemon-kube-draining");
    // The lab's gateway without its static VIP: VIP4 is the Service's.
    let text = GatewayConfig::new(1).toml();
    let (base, _) = text.split_once("[[vips]]").context("no [[vips]]")?;
    let text = format!(
        "{base}[kubernetes]\nkubeconfig = {:?}\n\n[kubernetes.health]\ninterval = \"300ms\"\n\
         timeout = \"200ms\"\nrise = 2\nfall = 2\n",
        server.kubeconfig(dir.path()).display().to_string()
    );
    let bird = Bird::start(lab.ns("router"), &[lab.bird_neighbor(1, 65001)], "")?;
    let mut daemon = Daemon::start(gw, &text, &[])?;
    lab.wait_routed_via(&bird, &[1])?;
    lab.get_many(3)?;

    let (mut flow, node_name, n) = lab.pinned_connection()?;
    let addr = fabric4(node_host(n));

    // Its pod starts terminating: kube-proxy's health check on its node fails, as it does
    // when the node has no ready endpoint.
    server.apply(Kind::EndpointSlice, local_web_slice(&[1, 2, 3], Some(n)));
    health[usize::from(n) - 1].set_ready(false);
    wait_backend(gw, &addr, "draining and down", |b| match b {
        Some(b) => b.weight == 0 && b.health == Health::Down,
        // Gone: the connection is re-hashed (the old behaviour, which the requests below
        // find out).
        None => true,
    })?;
    // The open connection goes on with its node, several times over; new connections go
    // elsewhere, and the VIP stays announced.
    lab.drains(&mut flow, &node_name, "after its pod began terminating")?;
    bird.wait_route(PREFIX4, true, Duration::from_secs(1))?;

    then(Draining {
        lab: &lab,
        server: &server,
        bird: &bird,
        flow,
        node_name,
        n,
        addr,
    })?;
    daemon.signal(libc::SIGTERM)?;
    daemon
        .wait_clean_exit(Duration::from_secs(15))
        .context("clean exit")
}

/// A `Local` Service's pod that begins its graceful termination keeps its open connection:
/// its node stays at weight 0 while kube-proxy's health check on it answers 503, and new
/// connections go to the other nodes ([`with_a_draining_local_node`]). The node used to
/// leave the backends at once, and the connection was re-hashed to another node, which
/// reset it. It leaves once the pod leaves the EndpointSlice.
#[test]
fn a_terminating_local_pod_keeps_its_connection_and_new_ones_go_elsewhere() -> Result<()> {
    with_a_draining_local_node(
        "daemon_kube::a_terminating_local_pod_keeps_its_connection_and_new_ones_go_elsewhere",
        |d| {
            drop(d.flow);
            // The pod is gone from the slice: so is its node.
            let others: Vec<u8> = (1..=3).filter(|m| *m != d.n).collect();
            d.server
                .apply(Kind::EndpointSlice, local_web_slice(&others, None));
            wait_backend(d.lab.ns("gw1"), &d.addr, "gone", |b| b.is_none())
        },
    )
}

/// A draining `Local` node that dies (its link down: no answer to any probe) used to stay
/// as one answering 503 does, until its pods left the EndpointSlice: its open connection
/// hung, every packet black-holed at the gateway. Once `fall` probes in a row go
/// unanswered it leaves, and the connection is re-hashed to a live node, which resets it.
#[test]
fn a_draining_local_node_that_dies_loses_its_connection_to_a_reset() -> Result<()> {
    with_a_draining_local_node(
        "daemon_kube::a_draining_local_node_that_dies_loses_its_connection_to_a_reset",
        |mut d| {
            let node_name = &d.node_name;
            // The node dies; its EndpointSlice does not change (the node controller is slow).
            d.lab.ns(node_name).ip(&["link", "set", "eth0", "down"])?;
            wait_backend(d.lab.ns("gw1"), &d.addr, "silent", |b| {
                b.and_then(|b| b.health_reason.as_deref())
                    .is_some_and(|r| r.contains("no answer to 2 probes in a row"))
            })?;
            // The open connection is re-hashed to a live node, which resets it: the client
            // learns at once (its retransmissions would reach the node that left, too), not
            // after a hang.
            d.flow.set_read_timeout(Some(Duration::from_secs(10)))?;
            d.flow.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
            let mut buf = [0u8; 512];
            match d.flow.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    bail!("the connection to the dead {node_name} hangs")
                }
                other => bail!("the connection to the dead {node_name}: {other:?}, not a reset"),
            }
            // New connections go to the live nodes, and the VIP stays announced.
            let nodes = d.lab.get_many(6)?;
            ensure!(!nodes.contains(node_name), "{nodes:?}");
            d.bird.wait_route(PREFIX4, true, Duration::from_secs(1))?;
            Ok(())
        },
    )
}
