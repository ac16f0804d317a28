//! The Kubernetes source against a fake API server that serves real API
//! objects with list/watch semantics (see `fake_apiserver`).

mod fake_apiserver;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use control::config::{Kubernetes, Protocol};
use control::health::Probe;
use control::sources::kube::{self, KubeUpdate};
use control::sources::{Origin, ServiceSet, TrafficPolicy, VipSpec};
use crossbeam::channel::Receiver;
use fake_apiserver::{endpoint_slice, Endpoint, FakeApiServer, Kind};
use serde_json::{json, Value};

const BOUND: Duration = Duration::from_secs(30);

fn node(name: &str, ip: &str, ready: bool, labels: Value) -> Value {
    json!({
        "metadata": {
            "name": name,
            "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": labels,
        },
        "spec": {"podCIDR": "10.244.0.0/24", "providerID": format!("metal://{name}")},
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"},
                {"type": "Ready", "status": if ready { "True" } else { "Unknown" }, "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": if ready { "KubeletReady" } else { "NodeStatusUnknown" }, "message": "kubelet is posting ready status"}
            ],
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "InternalIP", "address": "fd00::1"},
                {"type": "Hostname", "address": name}
            ],
            "nodeInfo": {"kubeletVersion": "v1.34.1", "kubeProxyVersion": "", "architecture": "amd64", "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.18.0", "containerRuntimeVersion": "containerd://1.7.24", "bootID": "b", "machineID": "m", "systemUUID": "s"}
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn service(
    ns: &str,
    name: &str,
    created: &str,
    policy: &str,
    hcnp: Option<u16>,
    ports: Value,
    class: Option<&str>,
    ingress: Option<&str>,
) -> Value {
    let mut spec = json!({
        "type": "LoadBalancer",
        "selector": {"app": name},
        "ports": ports,
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "externalTrafficPolicy": policy,
        "internalTrafficPolicy": "Cluster",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "sessionAffinity": "None",
        "allocateLoadBalancerNodePorts": true
    });
    if let Some(p) = hcnp {
        spec["healthCheckNodePort"] = json!(p);
    }
    if let Some(c) = class {
        spec["loadBalancerClass"] = json!(c);
    }
    let status = match ingress {
        Some(ip) => json!({"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}),
        None => json!({"loadBalancer": {}}),
    };
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "creationTimestamp": created, "labels": {"app": name}},
        "spec": spec,
        "status": status
    })
}

fn port(name: &str, proto: &str, port: u16, node_port: u16) -> Value {
    json!({"name": name, "protocol": proto, "port": port, "targetPort": port, "nodePort": node_port})
}

/// `service`'s slice in `ns`, with the ports [`slice_ports`] gives it.
fn slice(ns: &str, name: &str, service: &str, family: &str, eps: &[Endpoint]) -> Value {
    endpoint_slice(ns, name, service, family, eps, slice_ports(service))
}

/// The ports the EndpointSlice controller lists in `service`'s slices: the names and
/// protocols of the ports these tests give it, which kube-proxy (and dsrgate) match to
/// the Service's ports.
fn slice_ports(service: &str) -> Value {
    let ports: &[(&str, &str, u16)] = match service {
        "web" => &[
            ("http", "TCP", 80),
            ("https", "TCP", 443),
            ("alt", "TCP", 8443),
        ],
        "dns" => &[("dns-udp", "UDP", 53), ("dns-tcp", "TCP", 53)],
        "first" => &[("a", "TCP", 8080)],
        "second" => &[("b", "TCP", 8081)],
        "dual" => &[("http", "TCP", 80)],
        _ => &[],
    };
    let ports = ports
        .iter()
        .map(|(name, proto, port)| json!({"name": name, "protocol": proto, "port": port}));
    Value::from(ports.collect::<Vec<_>>())
}

struct Harness {
    server: FakeApiServer,
    rx: Receiver<KubeUpdate>,
    _source: kube::KubeSource,
    _dir: TempDir,
    /// Every set received, to check none was emptied by an error.
    seen: Vec<ServiceSet>,
    errors: Vec<String>,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "dsrgate-kube-test-{}-{}",
        std::process::id(),
        // Only uniqueness matters; any ordering would do.
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

/// The `[kubernetes]` section for `kubeconfig`, or for in-cluster credentials without one.
fn kube_config(kubeconfig: Option<PathBuf>, pool: &[&str]) -> Kubernetes {
    let mut text = "[dataplane]\nupstream_interface = \"eth0\"\n[kubernetes]\n".to_owned();
    if let Some(k) = kubeconfig {
        text.push_str(&format!("kubeconfig = {:?}\n", k.display().to_string()));
    }
    if !pool.is_empty() {
        text.push_str(&format!("address_pool = {pool:?}\n"));
    }
    text.push_str(
        "[kubernetes.health]\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 1\nfall = 2\n",
    );
    control::config::parse(&text, std::path::Path::new("kube-test.toml"))
        .unwrap()
        .kubernetes
        .unwrap()
}

impl Harness {
    fn start(server: FakeApiServer, pool: &[&str]) -> Harness {
        let dir = temp_dir();
        let (source, rx) = spawn(kube_config(Some(server.kubeconfig(&dir.0)), pool));
        Harness {
            server,
            rx,
            _source: source,
            _dir: dir,
            seen: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Waits for a set satisfying `pred`; collects errors on the way.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&ServiceSet) -> bool) -> ServiceSet {
        let deadline = Instant::now() + BOUND;
        if let Some(last) = self.seen.last() {
            if pred(last) {
                return last.clone();
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(KubeUpdate::Services(set)) => {
                    self.seen.push(set.clone());
                    if pred(&set) {
                        return set;
                    }
                }
                Ok(KubeUpdate::Error(e)) => self.errors.push(e),
                Ok(KubeUpdate::Assigned { .. }) => {}
                Err(_) => panic!(
                    "timed out waiting for {what}; last set: {:#?}",
                    self.seen.last()
                ),
            }
        }
    }

    /// The status patches the server received, once there is one (or after [`BOUND`]).
    fn patches(&self) -> Vec<(String, String, Value)> {
        let deadline = Instant::now() + BOUND;
        while self.server.patches().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.server.patches()
    }

    /// Waits until an API error has been reported.
    fn wait_for_error(&mut self) {
        let deadline = Instant::now() + BOUND;
        while self.errors.is_empty() {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(KubeUpdate::Services(set)) => self.seen.push(set),
                Ok(KubeUpdate::Error(e)) => self.errors.push(e),
                Ok(KubeUpdate::Assigned { .. }) => {}
                Err(_) => panic!("no error reported"),
            }
        }
    }
}

/// Starts the source; its updates arrive on the receiver.
fn spawn(cfg: Kubernetes) -> (kube::KubeSource, Receiver<KubeUpdate>) {
    let (tx, rx) = crossbeam::channel::unbounded();
    (kube::spawn(cfg, tx).unwrap(), rx)
}

/// The first update, which must be an error.
fn first_error(rx: &Receiver<KubeUpdate>) -> String {
    match rx.recv_timeout(BOUND) {
        Ok(KubeUpdate::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn find<'a>(set: &'a ServiceSet, name: &str, proto: Protocol) -> Option<&'a VipSpec> {
    set.vips.iter().find(|v| v.name == name && v.proto == proto)
}

fn backends(v: &VipSpec) -> BTreeMap<IpAddr, u32> {
    v.backends.iter().map(|b| (b.addr, b.weight)).collect()
}

fn weights(pairs: &[(&str, u32)]) -> BTreeMap<IpAddr, u32> {
    pairs.iter().map(|(a, w)| (ip(a), *w)).collect()
}

/// `default/web`'s backends in [`base_cluster`]: a with its two ready endpoints, b at weight
/// 0 (its only endpoint terminates, still serving: draining), c at weight 0 too (excluded
/// from external load balancers, for `Local` Services as for `Cluster` ones).
fn base_web() -> BTreeMap<IpAddr, u32> {
    weights(&[("10.0.0.1", 2), ("10.0.0.2", 0), ("10.0.0.3", 0)])
}

/// Nodes a..d: c is excluded from external load balancers, d is not Ready.
/// `default/web`: `Local`, health node port 32000, address 203.0.113.10.
fn web_service(ports: Value) -> Value {
    service(
        "default",
        "web",
        "2026-01-02T00:00:00Z",
        "Local",
        Some(32000),
        ports,
        None,
        Some("203.0.113.10"),
    )
}

/// `default/web`'s IPv4 slice.
fn web_v4_slice(eps: &[Endpoint]) -> Value {
    slice("default", "web-abc12", "web", "IPv4", eps)
}

fn base_cluster(server: &FakeApiServer) {
    server.apply(
        Kind::Node,
        node(
            "node-a",
            "10.0.0.1",
            true,
            json!({"kubernetes.io/hostname": "node-a"}),
        ),
    );
    server.apply(
        Kind::Node,
        node(
            "node-b",
            "10.0.0.2",
            true,
            json!({"kubernetes.io/hostname": "node-b"}),
        ),
    );
    server.apply(
        Kind::Node,
        node(
            "node-c",
            "10.0.0.3",
            true,
            json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""}),
        ),
    );
    server.apply(Kind::Node, node("node-d", "10.0.0.4", false, json!({})));
    // Local: two ready endpoints on a (one listed in two slices), one
    // terminating on b, one ready on c; an IPv6 slice of the same pods.
    server.apply(
        Kind::Service,
        web_service(json!([
            port("http", "TCP", 80, 30080),
            port("https", "TCP", 443, 30443)
        ])),
    );
    server.apply(
        Kind::EndpointSlice,
        web_v4_slice(&[
            ("10.244.1.1", "node-a", true, true, false),
            ("10.244.1.2", "node-a", true, true, false),
            ("10.244.2.1", "node-b", false, true, true),
            ("10.244.3.1", "node-c", true, true, false),
        ]),
    );
    server.apply(
        Kind::EndpointSlice,
        slice(
            "default",
            "web-def34",
            "web",
            "IPv4",
            &[("10.244.1.1", "node-a", true, true, false)],
        ),
    );
    server.apply(
        Kind::EndpointSlice,
        slice(
            "default",
            "web-v6xyz",
            "web",
            "IPv6",
            &[("fd00:244::1", "node-b", true, true, false)],
        ),
    );
    // One ready pod each for the Cluster Services the tests add: a Cluster Service without
    // a ready endpoint has no backends.
    for (svc, pod) in [
        ("dns", "10.244.1.5"),
        ("first", "10.244.1.6"),
        ("second", "10.244.1.7"),
    ] {
        let name = format!("{svc}-x1");
        let eps = [(pod, "node-a", true, true, false)];
        server.apply(
            Kind::EndpointSlice,
            slice("default", &name, svc, "IPv4", &eps),
        );
    }
}

#[test]
fn local_and_cluster_backends_weights_and_pool_assignment() {
    let server = FakeApiServer::start();
    base_cluster(&server);
    // Cluster, TCP and UDP, no address yet: gets one from the pool. The
    // first pool address is taken by an older Service.
    server.apply(
        Kind::Service,
        service(
            "kube-system",
            "old",
            "2026-01-01T00:00:00Z",
            "Cluster",
            None,
            json!([port("alt", "TCP", 8080, 31080)]),
            None,
            Some("198.51.100.10"),
        ),
    );
    server.apply(
        Kind::Service,
        service(
            "default",
            "dns",
            "2026-01-03T00:00:00Z",
            "Cluster",
            None,
            json!([
                port("dns-udp", "UDP", 53, 30053),
                port("dns-tcp", "TCP", 53, 30053)
            ]),
            None,
            None,
        ),
    );
    // Not ours: another class, and a ClusterIP Service.
    server.apply(
        Kind::Service,
        service(
            "default",
            "other",
            "2026-01-01T00:00:00Z",
            "Cluster",
            None,
            json!([port("x", "TCP", 81, 30081)]),
            Some("example.com/other"),
            Some("203.0.113.99"),
        ),
    );
    let mut cip = service(
        "default",
        "internal",
        "2026-01-01T00:00:00Z",
        "Cluster",
        None,
        json!([port("x", "TCP", 82, 30082)]),
        None,
        None,
    );
    cip["spec"]["type"] = json!("ClusterIP");
    server.apply(Kind::Service, cip);

    let mut h = Harness::start(server, &["198.51.100.10-198.51.100.12"]);
    let set = h.wait_for("dns to get a pool address", |s| {
        find(s, "default/dns", Protocol::Udp).is_some()
    });

    let names: Vec<(&str, Protocol)> = set
        .vips
        .iter()
        .map(|v| (v.name.as_str(), v.proto))
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");

    let web = find(&set, "default/web", Protocol::Tcp).unwrap();
    assert_eq!(web.addr, ip("203.0.113.10"));
    assert_eq!(web.ports, [80, 443]);
    // a: 2 unique ready endpoints; b: only a terminating one that still
    // serves, so it drains at weight 0 (and an IPv6 slice that does not count
    // for an IPv4 VIP); c: a ready one, but excluded, so at weight 0; d: none.
    assert_eq!(backends(web), base_web());
    let web_health = web.health.as_ref().unwrap();
    assert_eq!(
        web_health.probe,
        Probe::Http {
            port: 32000,
            path: "/healthz".into(),
            weight_header: true
        }
    );
    assert_eq!((web_health.timing.rise, web_health.timing.fall), (1, 2));
    assert!(matches!(
        &web.origin,
        Origin::Kubernetes {
            traffic_policy: TrafficPolicy::Local,
            health_check_node_port: Some(32000),
            ..
        }
    ));

    for proto in [Protocol::Udp, Protocol::Tcp] {
        let dns = find(&set, "default/dns", proto).unwrap();
        assert_eq!(
            dns.addr,
            ip("198.51.100.11"),
            "the lowest free pool address"
        );
        assert_eq!(dns.ports, [53]);
        // Ready and not excluded: a and b; the excluded c and the NotReady d
        // drain at weight 0.
        assert_eq!(
            backends(dns),
            weights(&[
                ("10.0.0.1", 1),
                ("10.0.0.2", 1),
                ("10.0.0.3", 0),
                ("10.0.0.4", 0)
            ])
        );
        assert_eq!(
            dns.health.as_ref().unwrap().probe,
            Probe::Http {
                port: 10256,
                path: "/healthz".into(),
                weight_header: false
            }
        );
    }
    let old = find(&set, "kube-system/old", Protocol::Tcp).unwrap();
    assert_eq!(old.addr, ip("198.51.100.10"));
    // Cluster, but no pod at all: every node would refuse its traffic.
    assert!(old.backends.is_empty(), "{:?}", old.backends);

    // The assignment was written to the status subresource.
    let patches = h.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    let (path, ctype, body) = &patches[0];
    assert_eq!(path, "/api/v1/namespaces/default/services/dns/status");
    assert_eq!(ctype, "application/merge-patch+json");
    assert_eq!(
        body["status"]["loadBalancer"]["ingress"],
        json!([{"ip": "198.51.100.11", "ipMode": "VIP"}])
    );
    let stored = h.server.object(Kind::Service, "default/dns").unwrap();
    assert_eq!(
        stored["status"]["loadBalancer"]["ingress"][0]["ip"],
        "198.51.100.11"
    );

    // Changes flow through the watch: b's endpoint is gone, c's terminates and
    // no longer serves, a new Ready node joins, the excluded node loses its
    // label (back to full weight).
    h.server.apply(
        Kind::EndpointSlice,
        web_v4_slice(&[
            ("10.244.1.1", "node-a", true, true, false),
            ("10.244.1.2", "node-a", true, true, false),
            ("10.244.3.1", "node-c", false, false, true),
        ]),
    );
    h.server
        .apply(Kind::Node, node("node-e", "10.0.0.5", true, json!({})));
    h.server
        .apply(Kind::Node, node("node-c", "10.0.0.3", true, json!({})));
    let dns = weights(&[
        ("10.0.0.1", 1),
        ("10.0.0.2", 1),
        ("10.0.0.3", 1),
        ("10.0.0.4", 0),
        ("10.0.0.5", 1),
    ]);
    let set = h.wait_for("the watch changes", |s| {
        find(s, "default/web", Protocol::Tcp).is_some_and(|w| w.backends.len() == 1)
            && find(s, "default/dns", Protocol::Tcp).is_some_and(|d| backends(d) == dns)
    });
    assert_eq!(
        backends(find(&set, "default/web", Protocol::Tcp).unwrap()),
        weights(&[("10.0.0.1", 2)])
    );
    assert_eq!(
        backends(find(&set, "default/dns", Protocol::Udp).unwrap()),
        dns
    );
    // The status write is not repeated once the watch shows it.
    assert_eq!(h.server.patches().len(), 1);

    // A deleted Service disappears; its VIP is not left behind.
    h.server.delete(Kind::Service, "kube-system/old");
    h.wait_for("old to go", |s| {
        find(s, "kube-system/old", Protocol::Tcp).is_none()
    });

    // Every watch asked for bookmarks.
    let reqs = h.server.requests();
    let watches: Vec<&String> = reqs.iter().filter(|r| r.contains("watch=true")).collect();
    assert!(watches.len() >= 3, "{reqs:#?}");
    assert!(
        watches
            .iter()
            .all(|r| r.contains("allowWatchBookmarks=true")),
        "{watches:#?}"
    );
    assert!(
        reqs.iter().any(
            |r| r.starts_with("GET /apis/discovery.k8s.io/v1/endpointslices?")
                && r.contains("labelSelector=kubernetes.io")
        ),
        "{reqs:#?}"
    );
    assert!(h.errors.is_empty(), "{:?}", h.errors);
}

/// A Service whose sharer dropped the key was refused on the pool address in its status, and
/// stayed there for good: no VIP, and its status kept showing the dead address. Now it moves to
/// a free pool address, written over its status once (a merge patch replaces the list, so
/// the old address is gone), and stays there.
#[test]
fn a_service_refused_on_its_pool_status_address_moves_and_its_status_is_rewritten() {
    const OLD: &str = "198.51.100.10";
    const NEW: &str = "198.51.100.11";
    let server = FakeApiServer::start();
    base_cluster(&server);
    let sharer = |name: &str, created: &str, p: Value, keyed: bool| {
        let mut s = service(
            "default",
            name,
            created,
            "Cluster",
            None,
            json!([p]),
            None,
            Some(OLD),
        );
        if keyed {
            s["metadata"]["annotations"] = json!({"dsrgate.io/allow-shared-ip": "k"});
        }
        s
    };
    let first = |keyed| {
        sharer(
            "first",
            "2026-01-03T00:00:00Z",
            port("a", "TCP", 8080, 31080),
            keyed,
        )
    };
    server.apply(Kind::Service, first(true));
    server.apply(
        Kind::Service,
        sharer(
            "second",
            "2026-01-04T00:00:00Z",
            port("b", "TCP", 8081, 31081),
            true,
        ),
    );
    let mut h = Harness::start(server, &["198.51.100.10-198.51.100.12"]);
    let addr = |s: &ServiceSet, name: &str| find(s, name, Protocol::Tcp).map(|v| v.addr);
    h.wait_for("both on the shared address", |s| {
        addr(s, "default/first") == Some(ip(OLD)) && addr(s, "default/second") == Some(ip(OLD))
    });
    assert!(h.server.patches().is_empty());

    h.server.apply(Kind::Service, first(false));
    h.wait_for("second to move", |s| {
        addr(s, "default/second") == Some(ip(NEW))
    });
    let moved = h.seen.len() - 1;
    let patches = h.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(
        patches[0].0,
        "/api/v1/namespaces/default/services/second/status"
    );
    let written = json!([{"ip": NEW, "ipMode": "VIP"}]);
    assert_eq!(patches[0].2["status"]["loadBalancer"]["ingress"], written);
    let stored = h.server.object(Kind::Service, "default/second").unwrap();
    assert_eq!(stored["status"]["loadBalancer"]["ingress"], written);

    // Later changes neither write again nor move it back.
    h.server
        .apply(Kind::Node, node("node-e", "10.0.0.5", true, json!({})));
    h.wait_for("node-e", |s| {
        find(s, "default/second", Protocol::Tcp).is_some_and(|v| v.backends.len() == 5)
    });
    assert_eq!(h.server.patches().len(), 1);
    for s in &h.seen[moved..] {
        assert_eq!(addr(s, "default/second"), Some(ip(NEW)), "{s:#?}");
        assert_eq!(addr(s, "default/first"), Some(ip(OLD)), "{s:#?}");
    }
    // Never without an address on the way.
    assert!(h.seen.iter().all(|s| addr(s, "default/second").is_some()));
    assert!(h.errors.is_empty(), "{:?}", h.errors);
}

/// Without an `address_pool`, a granted `spec.loadBalancerIP` was served but never written to
/// the Service's status, the only address kube-proxy accepts traffic for (`ipMode: VIP`): the
/// nodes dropped what the gateway tunnelled to them, and kubectl showed `<pending>`.
#[test]
fn a_requested_address_is_written_to_status_without_a_pool() {
    let server = FakeApiServer::start();
    base_cluster(&server);
    let mut dns = service(
        "default",
        "dns",
        "2026-01-03T00:00:00Z",
        "Cluster",
        None,
        json!([port("dns-udp", "UDP", 53, 30053)]),
        None,
        None,
    );
    dns["spec"]["loadBalancerIP"] = json!("192.0.2.7");
    server.apply(Kind::Service, dns);
    let mut h = Harness::start(server, &[]);
    h.wait_for("dns at its requested address", |s| {
        find(s, "default/dns", Protocol::Udp).is_some_and(|v| v.addr == ip("192.0.2.7"))
    });
    let patches = h.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(
        patches[0].0,
        "/api/v1/namespaces/default/services/dns/status"
    );
    let written = json!([{"ip": "192.0.2.7", "ipMode": "VIP"}]);
    assert_eq!(patches[0].2["status"]["loadBalancer"]["ingress"], written);
    let stored = h.server.object(Kind::Service, "default/dns").unwrap();
    assert_eq!(stored["status"]["loadBalancer"]["ingress"], written);
    assert!(h.errors.is_empty(), "{:?}", h.errors);
}

/// The sets the test checks against: web has backends throughout.
fn web_backends(s: &ServiceSet) -> BTreeMap<IpAddr, u32> {
    find(s, "default/web", Protocol::Tcp)
        .map(backends)
        .unwrap_or_default()
}

#[test]
fn dropped_watches_410_and_api_errors_keep_the_last_state() {
    let server = FakeApiServer::start();
    base_cluster(&server);
    let mut h = Harness::start(server, &[]);
    h.wait_for("initial sync", |s| web_backends(s) == base_web());

    // 1. A bookmark, then every watch is dropped; while they are down, b's
    // endpoint becomes ready. The re-watch resumes from the bookmark and
    // delivers the change without a re-list.
    let bookmark = h.server.bookmark(Kind::EndpointSlice);
    std::thread::sleep(Duration::from_millis(300));
    let lists_before = h
        .server
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    h.server.drop_watches();
    h.server.apply(
        Kind::EndpointSlice,
        web_v4_slice(&[
            ("10.244.1.1", "node-a", true, true, false),
            ("10.244.1.2", "node-a", true, true, false),
            ("10.244.2.1", "node-b", true, true, false),
            ("10.244.3.1", "node-c", true, true, false),
        ]),
    );
    h.wait_for("the change after a dropped watch", |s| {
        web_backends(s).get(&ip("10.0.0.2")) == Some(&1)
    });
    let reqs = h.server.requests();
    assert!(
        reqs.iter().any(|r| r.contains("/endpointslices?")
            && r.contains("watch=true")
            && r.contains(&format!("resourceVersion={bookmark}"))),
        "no re-watch from the bookmark {bookmark}: {reqs:#?}"
    );
    assert_eq!(
        reqs.iter().filter(|r| !r.contains("watch=true")).count(),
        lists_before,
        "a dropped watch must not re-list"
    );

    // 2. History is compacted: re-watches get 410 Gone and the watchers
    // re-list. The Service gains a port meanwhile; the re-list shows it.
    h.server.compact();
    h.server.apply(
        Kind::Service,
        web_service(json!([
            port("http", "TCP", 80, 30080),
            port("https", "TCP", 443, 30443),
            port("alt", "TCP", 8443, 30843)
        ])),
    );
    let set = h.wait_for("the re-list after 410", |s| {
        find(s, "default/web", Protocol::Tcp).is_some_and(|w| w.ports.len() == 3)
    });
    assert_eq!(
        web_backends(&set),
        weights(&[("10.0.0.1", 2), ("10.0.0.2", 1), ("10.0.0.3", 0)])
    );
    let lists = |h: &Harness| {
        h.server
            .requests()
            .iter()
            .filter(|r| !r.contains("watch=true"))
            .count()
    };
    let deadline = Instant::now() + BOUND;
    while lists(&h) < lists_before + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lists_after = lists(&h);
    assert!(
        lists_after >= lists_before + 3,
        "410 must trigger a re-list of each resource ({lists_before} -> {lists_after})"
    );

    // 3. The API server fails every request for a while: errors are reported,
    // nothing is emptied, and sync resumes when it heals.
    let sets_before = h.seen.len();
    h.server.set_failing(true);
    h.wait_for_error();
    std::thread::sleep(Duration::from_millis(1500));
    h.server.delete(Kind::Node, "node-d");
    h.server.set_failing(false);
    h.server
        .apply(Kind::Node, node("node-b", "10.0.0.22", true, json!({})));
    let set = h.wait_for("recovery after errors", |s| {
        web_backends(s).contains_key(&ip("10.0.0.22"))
    });
    assert_eq!(
        web_backends(&set),
        weights(&[("10.0.0.1", 2), ("10.0.0.22", 1), ("10.0.0.3", 0)])
    );
    assert!(h.seen.len() > sets_before);

    // Invariant over the whole run: no set ever lost web or its backends.
    for (i, s) in h.seen.iter().enumerate() {
        assert!(
            web_backends(s).len() >= 2,
            "set {i} was emptied by an error or re-list: {s:#?}"
        );
    }
    assert!(!h.errors.is_empty());
}

#[test]
fn unreachable_api_server_reports_errors_and_sends_no_set() {
    // A port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = temp_dir();
    let path = fake_apiserver::write_kubeconfig(&dir.0, &format!("http://127.0.0.1:{port}"), None);
    errors_only(path, "Connection refused");
}

/// Runs the source on `kubeconfig` until it reports an error, which must name the watch
/// and `cause`, and checks it sent nothing but errors: no empty set replaced anything.
fn errors_only(kubeconfig: PathBuf, cause: &str) {
    let (source, rx) = spawn(kube_config(Some(kubeconfig), &[]));
    let e = first_error(&rx);
    assert!(e.contains("watching") && e.contains(cause), "{e}");
    drop(source);
    assert!(rx.try_iter().all(|u| matches!(u, KubeUpdate::Error(_))));
}

#[test]
fn missing_kubeconfig_is_an_error_naming_the_file() {
    let (_source, rx) = spawn(kube_config(
        Some(PathBuf::from("/nonexistent/kubeconfig")),
        &[],
    ));
    let e = first_error(&rx);
    assert!(e.contains("/nonexistent/kubeconfig"), "{e}");
}

/// Runs `f` on a thread of its own and returns what it returns, failing the test if it has
/// not returned within [`BOUND`]: for a call that must not wait for a credential plugin.
fn within_bound<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = crossbeam::channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("{what} has not returned after {BOUND:?}"))
}

/// A kubeconfig in a new directory for `server` whose user's credentials come from a
/// plugin running `script`; the directory is returned to be kept while the plugin runs.
fn exec_kubeconfig(server: &FakeApiServer, script: &str) -> (PathBuf, TempDir) {
    let dir = temp_dir();
    let url = format!("http://{}", server.addr);
    (
        fake_apiserver::write_exec_kubeconfig(&dir.0, &url, script),
        dir,
    )
}

/// A user whose credentials a plugin (`users[].user.exec`) gives: its token is what the
/// watcher sends, whether started at once or after a reload's check.
#[test]
fn an_exec_credential_plugins_token_is_sent() {
    let server = FakeApiServer::start();
    base_cluster(&server);
    let (path, _dir) = exec_kubeconfig(&server, &fake_apiserver::exec_token("exec-token"));
    let (source, rx) = spawn(kube_config(Some(path.clone()), &[]));
    web_from_base_cluster(&rx).expect("the set, with the plugin's token");
    drop(source);
    let (tx, rx) = crossbeam::channel::unbounded();
    let cfg = kube_config(Some(path), &[]);
    let _source = kube::spawn_checked(cfg, tx, kube::CHECK_TIMEOUT).expect("the check");
    web_from_base_cluster(&rx).expect("the set after the check, with the plugin's token");
    // Every request (not a connection the pool opened and closed unused) had the token.
    let requests = server.requests();
    let auth: Vec<_> = requests
        .iter()
        .zip(server.authorizations())
        .filter(|(r, _)| !r.trim().is_empty())
        .map(|(_, a)| a)
        .collect();
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a == "Bearer exec-token"),
        "{requests:?} {auth:?}"
    );
}

/// A role that may list but not watch used to pass the check, and its watcher failed only
/// once it had replaced the running one: the check opens a watch of each resource too.
#[test]
fn a_check_refuses_credentials_that_may_list_but_not_watch() {
    let server = FakeApiServer::start();
    base_cluster(&server);
    let dir = temp_dir();
    let cfg = || kube_config(Some(server.kubeconfig(&dir.0)), &[]);
    server.set_forbid_watch(true);
    let (tx, rx) = crossbeam::channel::unbounded();
    let e = kube::spawn_checked(cfg(), tx, kube::CHECK_TIMEOUT)
        .map(drop)
        .expect_err("the check passed without the watch verb");
    assert!(e.contains("watching") && e.contains("403"), "{e}");
    assert_eq!(rx.try_iter().count(), 0, "a refused check starts nothing");
    // With the verb, the same check passes and the watcher runs.
    server.set_forbid_watch(false);
    let (tx, rx) = crossbeam::channel::unbounded();
    let _source = kube::spawn_checked(cfg(), tx, kube::CHECK_TIMEOUT).expect("the check");
    web_from_base_cluster(&rx).expect("the set after the check");
}

/// A reload's check of a kubeconfig whose credential plugin does not answer fails within
/// its timeout, naming the kubeconfig and the plugin, rather than waiting for the plugin
/// (it runs on the caller's thread: the daemon's control loop), and starts nothing.
#[test]
fn a_credential_plugin_that_does_not_answer_fails_the_check_in_time() {
    let server = FakeApiServer::start();
    base_cluster(&server);
    let (path, _dir) = exec_kubeconfig(&server, &fake_apiserver::exec_hung());
    let cfg = kube_config(Some(path.clone()), &[]);
    let (tx, rx) = crossbeam::channel::unbounded();
    let checked = within_bound("the check", move || {
        kube::spawn_checked(cfg, tx, kube::CHECK_TIMEOUT).map(drop)
    });
    let e = checked.expect_err("the check passed without credentials");
    assert!(
        e.contains(&path.display().to_string())
            && e.contains("credential plugin")
            && e.contains("did not answer in time"),
        "{e}"
    );
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), []);
    assert_eq!(server.requests(), Vec::<String>::new());
}

/// A watcher whose credential plugin does not answer reports it (the static VIPs are
/// served meanwhile, and the credentials may come later), and stops when dropped without
/// waiting for the plugin: the daemon drops it on a reload that changes the section, and
/// on exit.
#[test]
fn a_watcher_waiting_for_its_credential_plugin_reports_it_and_stops_when_dropped() {
    let server = FakeApiServer::start();
    base_cluster(&server);
    let (path, _dir) = exec_kubeconfig(&server, &fake_apiserver::exec_hung());
    let (source, rx) = spawn(kube_config(Some(path.clone()), &[]));
    let e = first_error(&rx);
    assert!(
        e.contains(&path.display().to_string()) && e.contains("credential plugin"),
        "{e}"
    );
    within_bound("dropping the watcher", move || drop(source));
    assert!(rx.try_iter().all(|u| matches!(u, KubeUpdate::Error(_))));
    assert_eq!(server.requests(), Vec::<String>::new());
}

/// Waits for the first set in which `default/web` has its backends from [`base_cluster`].
fn web_from_base_cluster(rx: &Receiver<KubeUpdate>) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + BOUND;
    let mut errors = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(KubeUpdate::Services(set)) => {
                if find(&set, "default/web", Protocol::Tcp)
                    .is_some_and(|web| backends(web) == base_web())
                {
                    return Ok(());
                }
            }
            Ok(KubeUpdate::Error(e)) => errors.push(e),
            Ok(KubeUpdate::Assigned { .. }) => {}
            Err(_) => return Err(errors),
        }
    }
}

/// A kubeconfig in `dir` for `server` over HTTPS, trusting the CA `ca_pem`.
fn https_kubeconfig(server: &FakeApiServer, ca_pem: &str, dir: &TempDir) -> PathBuf {
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let url = format!("https://{}", server.addr);
    fake_apiserver::write_kubeconfig(&dir.0, &url, Some(&ca))
}

#[test]
fn kubeconfig_over_https_verifies_the_server_and_sends_the_token() {
    let (ca_pem, tls) = fake_apiserver::test_pki();
    let server = FakeApiServer::start_tls(tls);
    base_cluster(&server);
    let dir = temp_dir();
    let path = https_kubeconfig(&server, &ca_pem, &dir);
    let (_source, rx) = spawn(kube_config(Some(path), &[]));
    web_from_base_cluster(&rx).expect("the set, over HTTPS");
    let auth = server.authorizations();
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a == "Bearer test-token"),
        "{auth:?}"
    );
}

#[test]
fn a_server_the_ca_did_not_sign_gets_no_request() {
    let (_, tls) = fake_apiserver::test_pki();
    let server = FakeApiServer::start_tls(tls);
    base_cluster(&server);
    // The CA of another cluster (kubeadm names every cluster's CA alike, as here).
    let (other_ca, _) = fake_apiserver::test_pki();
    let dir = temp_dir();
    let path = https_kubeconfig(&server, &other_ca, &dir);
    // The error names the cause, not only the layer ("client error (Connect)").
    errors_only(path, "invalid peer certificate");
    // The handshake failed before any request, so the token never left the client.
    assert_eq!(server.requests(), Vec::<String>::new());
}

/// Where the child test finds the service-account files to mount.
const SERVICE_ACCOUNT_ENV: &str = "DSRGATE_TEST_SERVICE_ACCOUNT";

/// In-cluster credentials, as a Pod gets them: no kubeconfig; the API server from
/// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`; the token, the cluster's CA and
/// the namespace in `/var/run/secrets/kubernetes.io/serviceaccount`. The source runs in a
/// child process (this test binary, [`in_cluster_child`]) in a mount namespace of its own,
/// with a tmpfs on `/var/run` that holds those files, so the host's `/run` is not touched.
#[test]
fn in_cluster_credentials_are_used_over_https() {
    if !dsrgate_tests::require_privileges_with(
        "in-cluster credentials (a private mount namespace)",
        &["unshare", "mount", "sh"],
    ) {
        return;
    }
    let (ca_pem, tls) = fake_apiserver::test_pki();
    let server = FakeApiServer::start_tls(tls);
    base_cluster(&server);
    let dir = temp_dir();
    std::fs::write(dir.0.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(dir.0.join("token"), "in-cluster-token").unwrap();
    std::fs::write(dir.0.join("namespace"), "dsrgate-system").unwrap();
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(
            "sa=/var/run/secrets/kubernetes.io/serviceaccount; mount -t tmpfs tmpfs /var/run; \
             mkdir -p $sa; cp \"$DSRGATE_TEST_SERVICE_ACCOUNT\"/* $sa/; exec \"$@\"",
        )
        .arg("sh")
        .arg(std::env::current_exe().unwrap())
        .args(["in_cluster_child", "--exact", "--ignored", "--nocapture"])
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", server.addr.port().to_string())
        .env(SERVICE_ACCOUNT_ENV, &dir.0)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child: {}\n{stdout}\n{stderr}",
        out.status
    );
    let auth = server.authorizations();
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a == "Bearer in-cluster-token"),
        "{auth:?}"
    );
    assert!(
        !std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
            || std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/token")
                .is_ok_and(|t| t != "in-cluster-token"),
        "the child's files leaked into the host's /var/run"
    );
}

#[test]
#[ignore = "the child of in_cluster_credentials_are_used_over_https, in its mount namespace"]
fn in_cluster_child() {
    assert!(
        std::env::var_os(SERVICE_ACCOUNT_ENV).is_some(),
        "run by in_cluster_credentials_are_used_over_https"
    );
    let (_source, rx) = spawn(kube_config(None, &[]));
    if let Err(errors) = web_from_base_cluster(&rx) {
        panic!("no set with in-cluster credentials; errors: {errors:?}");
    }
}

/// A dual-stack Service (`PreferDualStack`, IPv4 and IPv6) got a pool address of its first
/// family only, and was unreachable over IPv6. It gets one of each family, each served with
/// the nodes' addresses of that family, and both reach its status in one merge patch, in
/// `spec.ipFamilies` order, written once.
#[test]
fn a_dual_stack_service_gets_and_writes_an_address_of_each_family() {
    let server = FakeApiServer::start();
    for (name, v4, v6) in [
        ("node-a", "10.0.0.1", "fd00::a"),
        ("node-b", "10.0.0.2", "fd00::b"),
    ] {
        let mut n = node(name, v4, true, json!({}));
        n["status"]["addresses"][1]["address"] = json!(v6);
        server.apply(Kind::Node, n);
    }
    let mut dual = service(
        "default",
        "dual",
        "2026-01-03T00:00:00Z",
        "Cluster",
        None,
        json!([port("http", "TCP", 80, 30080)]),
        None,
        None,
    );
    dual["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
    dual["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    dual["spec"]["clusterIPs"] = json!(["10.96.0.10", "fd00:96::10"]);
    server.apply(Kind::Service, dual);
    for (family, pod) in [("IPv4", "10.244.1.9"), ("IPv6", "fd00:244::9")] {
        let eps = [(pod, "node-a", true, true, false)];
        let name = format!("dual-{}", family.to_lowercase());
        server.apply(
            Kind::EndpointSlice,
            slice("default", &name, "dual", family, &eps),
        );
    }
    let mut h = Harness::start(server, &["198.51.100.10-198.51.100.12", "2001:db8::/126"]);
    let addrs = |s: &ServiceSet| -> Vec<IpAddr> {
        let vips = s.vips.iter().filter(|v| v.name == "default/dual");
        vips.map(|v| v.addr).collect()
    };
    let set = h.wait_for("an address of each family", |s| addrs(s).len() == 2);
    assert_eq!(addrs(&set), [ip("198.51.100.10"), ip("2001:db8::")]);
    for v in &set.vips {
        let want = if v.addr.is_ipv6() {
            weights(&[("fd00::a", 1), ("fd00::b", 1)])
        } else {
            weights(&[("10.0.0.1", 1), ("10.0.0.2", 1)])
        };
        assert_eq!(backends(v), want, "{}", v.addr);
    }
    let patches = h.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    let (path, ctype, body) = &patches[0];
    assert_eq!(path, "/api/v1/namespaces/default/services/dual/status");
    assert_eq!(ctype, "application/merge-patch+json");
    let written = json!([
        {"ip": "198.51.100.10", "ipMode": "VIP"},
        {"ip": "2001:db8::", "ipMode": "VIP"}
    ]);
    assert_eq!(body["status"]["loadBalancer"]["ingress"], written);
    let stored = h.server.object(Kind::Service, "default/dual").unwrap();
    assert_eq!(stored["status"]["loadBalancer"]["ingress"], written);
    // Later changes neither write again nor move it.
    h.server
        .apply(Kind::Node, node("node-c", "10.0.0.3", true, json!({})));
    let set = h.wait_for("node-c", |s| {
        s.vips
            .iter()
            .any(|v| v.addr.is_ipv4() && v.backends.len() == 3)
    });
    assert_eq!(addrs(&set), [ip("198.51.100.10"), ip("2001:db8::")]);
    assert_eq!(h.server.patches().len(), 1);
    assert!(h.errors.is_empty(), "{:?}", h.errors);
}
