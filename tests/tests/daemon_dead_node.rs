//! A `Local` Service's node that drains (its pod terminating, kube-proxy's health check
//! answering 503) and then dies: the daemon, watching the fake API server of control's
//! tests, keeps the node's open connection while the node answers 503, and moves it off
//! once the node stops answering, so the client gets a reset instead of a hang.
//!
//! Topology: [`Lab::new`] with one gateway, BIRD on the router, the Service at the lab's
//! VIP4; kube-proxy's `healthCheckNodePort` is played on each node (as in
//! `daemon_kube.rs`, whose terminating-pod test this one continues).

#[path = "../../control/tests/fake_apiserver/mod.rs"]
#[allow(dead_code)]
mod fake_apiserver;

mod api;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use control::status::Health;
use dsrgate_tests::bird::Bird;
use dsrgate_tests::daemon::{Daemon, GatewayConfig, Lab, PREFIX4};
use dsrgate_tests::netns::{fabric4, node_host, Netns, VIP4};
use dsrgate_tests::{require_privileges_with, TempDir};
use fake_apiserver::{FakeApiServer, Kind};
use serde_json::{json, Value};

const NODE_BIN: &str = env!("CARGO_BIN_EXE_dsrgate-node");
const WAIT: Duration = Duration::from_secs(30);
/// The Service's `healthCheckNodePort`.
const HEALTH_NODE_PORT: u16 = 32080;

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

/// `default/web` at VIP4, TCP 80, `externalTrafficPolicy: Local`.
fn local_web_service() -> Value {
    json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-web",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                 "healthCheckNodePort": HEALTH_NODE_PORT,
                 "ports": [{"name": "http-80", "protocol": "TCP", "port": 80, "targetPort": 80,
                            "nodePort": 30080}]},
        "status": {"loadBalancer": {"ingress": [{"ip": VIP4, "ipMode": "VIP"}]}}
    })
}

/// `web`'s EndpointSlice: a pod on each node, ready, or terminating but still serving on
/// `terminating`.
fn local_web_slice(terminating: Option<u8>) -> Value {
    let eps: Vec<Value> = (1..=3u8)
        .map(|n| {
            let t = terminating == Some(n);
            json!({"addresses": [format!("10.244.{n}.1")], "nodeName": format!("node{n}"),
                "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("web-{n}")},
                "conditions": {"ready": !t, "serving": true, "terminating": t}})
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

/// kube-proxy's `healthCheckNodePort` on one node: 200 while `ready`, else 503, with the
/// local endpoint count in `X-Load-Balancing-Endpoint-Weight`.
struct KubeProxyHealth {
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeProxyHealth {
    fn start(ns: &Netns) -> Result<KubeProxyHealth> {
        let listener = ns.enter(|| TcpListener::bind(("0.0.0.0", HEALTH_NODE_PORT)))??;
        listener.set_nonblocking(true)?;
        let ready = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (ready.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = answer(conn, r.load(Ordering::Relaxed));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(KubeProxyHealth {
            ready,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for KubeProxyHealth {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(mut conn: TcpStream, ready: bool) -> std::io::Result<()> {
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
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
         X-Load-Balancing-Endpoint-Weight: {count}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Waits until VIP4:80's backend `addr` is at weight 0 and down, its health reason
/// satisfying `reason`.
fn wait_down(gw: &Netns, addr: &str, what: &str, reason: impl Fn(&str) -> bool) -> Result<()> {
    let what = format!("VIP4:80's backend {addr} {what}");
    api::wait_status(gw, &what, WAIT, |s| {
        s.vips
            .iter()
            .filter(|v| v.address.to_string() == VIP4 && v.port == 80)
            .flat_map(|v| &v.backends)
            .find(|b| b.address.to_string() == addr)
            .is_some_and(|b| {
                b.weight == 0
                    && b.health == Health::Down
                    && b.health_reason.as_deref().is_some_and(&reason)
            })
    })?;
    Ok(())
}

/// A draining `Local` node that dies (its link down: no answer to any probe) used to stay
/// as one answering 503 does, until its pods left the EndpointSlice: its open connection
/// hung, every packet black-holed at the gateway. Once `fall` probes in a row go
/// unanswered it leaves, and the connection is re-hashed to a live node, which resets it;
/// while it answered 503 the connection stayed with it.
#[test]
fn a_draining_local_node_that_dies_loses_its_connection_to_a_reset() -> Result<()> {
    if !require_privileges_with(
        "daemon_dead_node::a_draining_local_node_that_dies_loses_its_connection_to_a_reset",
        &["bird", "birdc"],
    ) {
        return Ok(());
    }
    let lab = Lab::new(1, NODE_BIN)?;
    let gw = lab.ns("gw1");
    let health: Vec<KubeProxyHealth> = (1..=3)
        .map(|n| KubeProxyHealth::start(lab.ns(&format!("node{n}"))))
        .collect::<Result<_>>()?;
    let server = gw.enter(FakeApiServer::start)?;
    for n in 1..=3 {
        server.apply(Kind::Node, node(n));
    }
    server.apply(Kind::Service, local_web_service());
    server.apply(Kind::EndpointSlice, local_web_slice(None));
    let dir = TempDir::new("daemon-dead-node");
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

    // Its pod terminates: kube-proxy answers 503, the node drains and keeps the connection.
    server.apply(Kind::EndpointSlice, local_web_slice(Some(n)));
    health[usize::from(n) - 1]
        .ready
        .store(false, Ordering::Relaxed);
    wait_down(gw, &addr, "draining, answering 503", |r| {
        r == "HTTP status 503"
    })?;
    lab.drains(&mut flow, &node_name, "after its pod began terminating")?;

    // The node dies; its EndpointSlice does not change (the node controller is slow).
    lab.ns(&node_name).ip(&["link", "set", "eth0", "down"])?;
    wait_down(gw, &addr, "silent", |r| {
        r.contains("no answer to 2 probes in a row")
    })?;

    // The open connection is re-hashed to a live node, which resets it: the client learns
    // at once (its retransmissions would reach the node that left, too), not after a hang.
    flow.set_read_timeout(Some(Duration::from_secs(10)))?;
    flow.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
    let mut buf = [0u8; 512];
    match flow.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            bail!("the connection to the dead {node_name} hangs")
        }
        other => bail!("the connection to the dead {node_name}: {other:?}, not a reset"),
    }
    // New connections go to the live nodes, and the VIP stays announced.
    let nodes = lab.get_many(6)?;
    ensure!(!nodes.contains(&node_name), "{nodes:?}");
    bird.wait_route(PREFIX4, true, Duration::from_secs(1))?;

    daemon.signal(libc::SIGTERM)?;
    daemon
        .wait_clean_exit(Duration::from_secs(15))
        .context("clean exit")
}
