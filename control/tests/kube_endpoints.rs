//! The endpoint side of the Kubernetes source against the fake API server (see
//! `fake_apiserver`): which nodes serve each port of a Service, from EndpointSlices as the
//! EndpointSlice controller writes them, and a watch that hangs.

#[allow(dead_code)] // The module serves several test crates; this one uses part of it.
mod fake_apiserver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use control::config::Kubernetes;
use control::sources::kube::{self, KubeSource, KubeUpdate};
use control::sources::ServiceSet;
use crossbeam::channel::Receiver;
use fake_apiserver::{endpoint_slice, Endpoint, FakeApiServer, Kind};
use serde_json::{json, Value};

const BOUND: Duration = Duration::from_secs(30);

/// A Ready node at `ip`.
fn node(name: &str, ip: &str) -> Value {
    json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "addresses": [{"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name}]
        }
    })
}

/// `default/web`: `Local`, `publishNotReadyAddresses` (a StatefulSet's Service often sets
/// it), port 80 to the pods' named port `http` and 9100 to their metrics, at 203.0.113.10.
fn web() -> Value {
    json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-web",
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "type": "LoadBalancer", "selector": {"app": "web"},
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 30080},
                {"name": "metrics", "protocol": "TCP", "port": 9100, "targetPort": 9100, "nodePort": 30910}
            ],
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
            "publishNotReadyAddresses": true, "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None"
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10", "ipMode": "VIP"}]}}
    })
}

/// One of `web`'s EndpointSlices with `eps` and `ports` (name, target port resolved).
fn web_slice(name: &str, eps: &[Endpoint], ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, port)| json!({"name": name, "protocol": "TCP", "port": port}))
        .collect();
    endpoint_slice("default", name, "web", "IPv4", eps, ports.into())
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The source watching `server`, with watches the server ends after `watch_timeout`.
fn watch(
    server: &FakeApiServer,
    name: &str,
    watch_timeout: Duration,
) -> (KubeSource, Receiver<KubeUpdate>, TempDir) {
    let dir = std::env::temp_dir().join(format!("dsrgate-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "[dataplane]\nupstream_interface = \"eth0\"\n[kubernetes]\nkubeconfig = {:?}\n",
        server.kubeconfig(&dir).display().to_string()
    );
    let cfg: Kubernetes = control::config::parse(&text, std::path::Path::new("kube.toml"))
        .unwrap()
        .kubernetes
        .unwrap();
    let (tx, rx) = crossbeam::channel::unbounded();
    let source = kube::spawn_watching(cfg, tx, watch_timeout).unwrap();
    (source, rx, TempDir(dir))
}

/// `web`'s VIPs as `ports: node weight, ...`.
fn served(set: &ServiceSet) -> Vec<String> {
    set.vips
        .iter()
        .filter(|v| v.name == "default/web")
        .map(|v| {
            let b: Vec<String> = v
                .backends
                .iter()
                .map(|b| format!("{} {}", b.addr, b.weight))
                .collect();
            format!("{:?}: {}", v.ports, b.join(", "))
        })
        .collect()
}

/// Waits for a set in which `web` is served as `want`.
fn wait_for(rx: &Receiver<KubeUpdate>, want: &[&str]) {
    let deadline = Instant::now() + BOUND;
    let mut last = None;
    while let Ok(update) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let KubeUpdate::Services(set) = update {
            if served(&set) == want {
                return;
            }
            last = Some(served(&set));
        }
    }
    panic!("web never served as {want:?}; last: {last:?}");
}

/// A `Local` Service with `publishNotReadyAddresses` lost every node whose pods were not
/// ready (all of them while its pods started), though kube-proxy forwards to them: the
/// EndpointSlice controller marks them `ready`, with `serving: false`. And its ports shared
/// one set of nodes, though a pod whose named port `http` resolves otherwise, and which has
/// no metrics port, is in a slice of its own that lists only `http`: the metrics port went
/// to its node too, which dropped that traffic.
#[test]
fn a_local_service_is_served_per_port_by_the_nodes_kube_proxy_forwards_to() {
    let server = FakeApiServer::start();
    for (name, ip) in [
        ("node-a", "10.0.0.1"),
        ("node-b", "10.0.0.2"),
        ("node-c", "10.0.0.3"),
    ] {
        server.apply(Kind::Node, node(name, ip));
    }
    server.apply(Kind::Service, web());
    // a's pod is starting (not ready, published anyway), b's is ready; c's pod names port
    // 8081 `http` and has no metrics.
    let ab = [
        ("10.244.1.1", "node-a", true, false, false),
        ("10.244.2.1", "node-b", true, true, false),
    ];
    let both = [("http", 8080), ("metrics", 9100)];
    server.apply(Kind::EndpointSlice, web_slice("web-7xk2p", &ab, &both));
    let c = [("10.244.3.1", "node-c", true, true, false)];
    server.apply(
        Kind::EndpointSlice,
        web_slice("web-q9d4m", &c, &[("http", 8081)]),
    );
    let (_source, rx, _dir) = watch(&server, "endpoints", kube::WATCH_TIMEOUT);
    wait_for(
        &rx,
        &[
            "[80]: 10.0.0.1 1, 10.0.0.2 1, 10.0.0.3 1",
            "[9100]: 10.0.0.1 1, 10.0.0.2 1",
        ],
    );
    // b's pod terminates, and no longer serves: still `ready`, so kube-proxy still forwards
    // to it. c's pod gains the metrics port, and is in the first slice now.
    let abc = [
        ("10.244.1.1", "node-a", true, false, false),
        ("10.244.2.1", "node-b", true, false, true),
        ("10.244.3.1", "node-c", true, true, false),
    ];
    server.apply(Kind::EndpointSlice, web_slice("web-7xk2p", &abc, &both));
    server.delete(Kind::EndpointSlice, "default/web-q9d4m");
    wait_for(&rx, &["[80, 9100]: 10.0.0.1 1, 10.0.0.2 1, 10.0.0.3 1"]);
}

/// Waits until `pred` holds for the source's state, or panics saying `what`.
fn wait_state(
    source: &KubeSource,
    what: &str,
    within: Duration,
    pred: impl Fn(&control::status::KubernetesStatus) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let state = source.state();
        if pred(&state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {within:?}: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An API server that accepted a watch and then sent nothing (no event, no bookmark, not
/// the watch's end) showed only as the age of the last event: kube's client has no read
/// timeout, and its watcher gives up on such a watch silently, to start another. A watch
/// silent for longer than its timeout and a margin is now an error: not synced, and
/// watched again. Watches that the server ends in time are not.
#[test]
fn a_watch_that_delivers_nothing_is_an_error_and_is_started_again() {
    const WATCH_TIMEOUT: Duration = Duration::from_secs(1);
    let server = FakeApiServer::start();
    server.apply(Kind::Node, node("node-a", "10.0.0.1"));
    let (source, _rx, _dir) = watch(&server, "hung-watch", WATCH_TIMEOUT);
    wait_state(&source, "synced", BOUND, |s| s.synced);
    // Quiet watches that end after their second come back, without an error.
    std::thread::sleep(WATCH_TIMEOUT * 5);
    let s = source.state();
    assert!(s.synced && s.errors == 0, "{s:?}");

    server.set_hang_watches(true);
    let watches = || {
        server
            .requests()
            .iter()
            .filter(|r| r.contains("watch=true"))
            .count()
    };
    let before = watches();
    // The watches in flight end within a second, the next ones hang, and are found out
    // after the timeout and a few seconds more.
    wait_state(&source, "not synced", WATCH_TIMEOUT * 10, |s| !s.synced);
    let s = source.state();
    let error = s.error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("watching ") && error.contains(": nothing from the API server for 4s, "),
        "{s:?}"
    );
    assert!(s.errors >= 1, "{s:?}");
    // And started again.
    let deadline = Instant::now() + BOUND;
    while watches() <= before + 3 {
        assert!(
            Instant::now() < deadline,
            "no new watch: {:#?}",
            server.requests()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Hanging on, it stays not synced.
    std::thread::sleep(WATCH_TIMEOUT * 6);
    assert!(!source.state().synced, "{:?}", source.state());

    // The server answers again: each resource bringing objects is synced again.
    server.set_hang_watches(false);
    server.apply(Kind::Node, node("node-b", "10.0.0.2"));
    server.apply(Kind::Service, web());
    server.apply(Kind::EndpointSlice, web_slice("web-7xk2p", &[], &[]));
    wait_state(&source, "synced again", BOUND, |s| {
        s.synced && s.error.is_none()
    });
}
