//! Next-hop resolution against real kernel tables, in network namespaces:
//!
//! ```text
//!   node eth0 ──────── eth0 gw eth1 ──────── eth0 rtr
//!   198.51.100.11/24   .1        10.1.0.1/24   10.1.0.2/24
//!   2001:db8:f::b/64   ::1       fd01::1/64    fd01::2/64
//!   (+ .12, ::c never contacted)
//!                      gw routes: 172.16.0.0/24 via 10.1.0.2, fd02::/64 via fd01::2,
//!                                 172.17.0.0/24 via inet6 fd01::2
//! ```
//!
//! The resolver's netlink socket is opened inside `gw` (on a thread that entered it), and
//! stays bound to that namespace when the test thread uses it, so tests run in parallel.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use control::neigh::{NextHop, Resolution, Resolver, RouteError};
use dsrgate_tests::netns::{unique_prefix, Net, Port, Topology};

fn topology() -> Net {
    let mut t = Topology::default();
    let gw = t.ns("gw");
    gw.addresses = vec![
        ("eth0".into(), "198.51.100.1/24".into()),
        ("eth0".into(), "2001:db8:f::1/64".into()),
        ("eth1".into(), "10.1.0.1/24".into()),
        ("eth1".into(), "fd01::1/64".into()),
    ];
    gw.routes = vec![
        "172.16.0.0/24 via 10.1.0.2".into(),
        "fd02::/64 via fd01::2".into(),
    ];
    let node = t.ns("node");
    node.addresses = vec![
        ("eth0".into(), "198.51.100.11/24".into()),
        ("eth0".into(), "198.51.100.12/24".into()),
        ("eth0".into(), "2001:db8:f::b/64".into()),
        ("eth0".into(), "2001:db8:f::c/64".into()),
    ];
    let rtr = t.ns("rtr");
    rtr.addresses = vec![
        ("eth0".into(), "10.1.0.2/24".into()),
        ("eth0".into(), "fd01::2/64".into()),
    ];
    t.link(Port::new("gw", "eth0"), Port::new("node", "eth0"), None);
    t.link(Port::new("gw", "eth1"), Port::new("rtr", "eth0"), None);
    let net = t.build(&unique_prefix()).expect("building the topology");
    // An IPv4 prefix through an IPv6 gateway (RFC 5549, RTA_VIA). Added by hand: the
    // builder would pass `-6` for a route that mentions an IPv6 address.
    net.ns("gw")
        .ip(&["route", "add", "172.17.0.0/24", "via", "inet6", "fd01::2"])
        .expect("adding the RFC 5549 route");
    net
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn resolver_in(net: &Net, ns: &str) -> Resolver {
    net.ns(ns)
        .enter(Resolver::new)
        .expect("entering the namespace")
        .expect("opening the netlink socket")
}

fn one(resolver: &mut Resolver, backend: &str) -> Resolution {
    let got = resolver.resolve(&[ip(backend)]).expect("netlink");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, ip(backend));
    got[0].1.clone()
}

/// Resolves until the next hop has a MAC (the kernel resolves in the background).
fn resolved(resolver: &mut Resolver, backend: &str) -> NextHop {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hop = one(resolver, backend).expect("a route");
        if hop.is_resolved() || Instant::now() > deadline {
            return hop;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The state word of `ip neigh show ADDR` in namespace `ns` (empty if there is no entry).
fn neigh_state(net: &Net, ns: &str, addr: &str) -> String {
    let out = net.ns(ns).ip(&["neigh", "show", "to", addr]).unwrap();
    out.split_whitespace().last().unwrap_or_default().to_owned()
}

#[test]
fn known_neighbour_gives_the_peers_mac() {
    if !dsrgate_tests::require_privileges_with("neighbour resolution", &["ping"]) {
        return;
    }
    let net = topology();
    let gw = net.ns("gw");
    gw.exec(&["ping", "-c1", "-W2", "198.51.100.11"]).unwrap();
    gw.exec(&["ping", "-c1", "-W2", "2001:db8:f::b"]).unwrap();
    let node_mac = net.ns("node").mac("eth0").unwrap();
    let eth0 = gw.ifindex("eth0").unwrap();

    let mut r = resolver_in(&net, "gw");
    let got = r
        .resolve(&[ip("198.51.100.11"), ip("2001:db8:f::b")])
        .unwrap();
    assert_eq!(
        got,
        vec![
            (
                ip("198.51.100.11"),
                Ok(NextHop {
                    ifindex: eth0,
                    via: ip("198.51.100.11"),
                    mac: Some(node_mac)
                })
            ),
            (
                ip("2001:db8:f::b"),
                Ok(NextHop {
                    ifindex: eth0,
                    via: ip("2001:db8:f::b"),
                    mac: Some(node_mac)
                })
            ),
        ]
    );
    // The kernel's own view agrees.
    let shown = gw.ip(&["neigh", "show", "to", "198.51.100.11"]).unwrap();
    let mac_text = node_mac.map(|b| format!("{b:02x}")).join(":");
    assert!(shown.contains(&mac_text), "{shown} lacks {mac_text}");

    assert_eq!(r.local_mac(eth0).unwrap(), gw.mac("eth0").unwrap());
}

#[test]
fn unknown_neighbour_is_unresolved_then_resolved_by_the_kernel() {
    if !dsrgate_tests::require_privileges("neighbour resolution") {
        return;
    }
    let net = topology();
    let node_mac = net.ns("node").mac("eth0").unwrap();
    let mut r = resolver_in(&net, "gw");
    for addr in ["198.51.100.12", "2001:db8:f::c"] {
        assert_eq!(neigh_state(&net, "gw", addr), "", "{addr} already known");
        let first = one(&mut r, addr).unwrap();
        assert_eq!(first.via, ip(addr));
        // Nothing was sent to it yet, so there is no MAC to give, and no wrong one either.
        assert_eq!(first.mac, None, "{addr}");
        // The resolver asked the kernel to resolve it.
        assert_ne!(
            neigh_state(&net, "gw", addr),
            "",
            "{addr} not being resolved"
        );
        assert_eq!(resolved(&mut r, addr).mac, Some(node_mac), "{addr}");
    }
}

#[test]
fn absent_neighbour_stays_unresolved() {
    if !dsrgate_tests::require_privileges("neighbour resolution") {
        return;
    }
    let net = topology();
    let mut r = resolver_in(&net, "gw");
    let hop = one(&mut r, "198.51.100.99").unwrap();
    assert_eq!(hop.mac, None);
    let state = neigh_state(&net, "gw", "198.51.100.99");
    assert!(
        state == "INCOMPLETE" || state == "FAILED",
        "state {state:?}"
    );
    // Asked again while resolution runs or after it failed: still no MAC.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(one(&mut r, "198.51.100.99").unwrap().mac, None);
}

#[test]
fn routed_backend_resolves_to_the_gateways_mac() {
    if !dsrgate_tests::require_privileges("neighbour resolution") {
        return;
    }
    let net = topology();
    let rtr_mac = net.ns("rtr").mac("eth0").unwrap();
    let eth1 = net.ns("gw").ifindex("eth1").unwrap();
    let mut r = resolver_in(&net, "gw");
    for (backend, gateway) in [
        ("172.16.0.5", "10.1.0.2"),
        ("fd02::5", "fd01::2"),
        ("172.17.0.5", "fd01::2"),
    ] {
        let hop = resolved(&mut r, backend);
        assert_eq!(
            hop,
            NextHop {
                ifindex: eth1,
                via: ip(gateway),
                mac: Some(rtr_mac)
            },
            "{backend}"
        );
    }
    // Two backends behind one gateway share its entry.
    let both = r.resolve(&[ip("172.16.0.5"), ip("172.16.0.6")]).unwrap();
    assert_eq!(both[0].1, both[1].1);
    assert_eq!(both[1].1.as_ref().unwrap().via, ip("10.1.0.2"));
}

#[test]
fn unroutable_and_local_backends_have_no_next_hop() {
    if !dsrgate_tests::require_privileges("neighbour resolution") {
        return;
    }
    let net = topology();
    let mut r = resolver_in(&net, "gw");
    // gw has no default route.
    match one(&mut r, "203.0.113.7") {
        Err(RouteError::NoRoute(errno)) => assert_eq!(errno, libc::ENETUNREACH),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        one(&mut r, "2001:db8:99::1"),
        Err(RouteError::NoRoute(_))
    ));
    assert_eq!(one(&mut r, "198.51.100.1"), Err(RouteError::Local));
    // One bad backend does not spoil the others' answers in the same call.
    let got = r
        .resolve(&[ip("203.0.113.7"), ip("198.51.100.11")])
        .unwrap();
    assert!(got[0].1.is_err());
    assert!(got[1].1.is_ok());
}
