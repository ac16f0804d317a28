//! The node-side XDP decapsulator: IP-in-IP (all four family combinations) and GUE
//! (versions 0 and 1, its UDP checksum checked) tunnel packets sent at a node reach a real
//! UDP socket on the VIP; everything else is left alone; detach really removes it.

use dataplane::bpf::{decap, BpfError, DecapConfig};
use dsrgate_tests::frames::*;
use dsrgate_tests::netns::{unique_prefix, Net, Port, Topology, VIP4, VIP6};
use dsrgate_tests::require_privileges;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

const NODE4: &str = "10.77.0.2";
const NODE6: &str = "fd77::2";
/// Outer sources: not addresses of the sender's namespace (like a real gateway's).
const OUTER_SRC4: &str = "10.77.0.100";
const OUTER_SRC6: &str = "fd77::100";
const CLIENT4: &str = "203.0.113.10";
const CLIENT6: &str = "2001:db8:c::10";
const GUE_PORT: u16 = 6080;
const APP_PORT: u16 = 7000;

fn topology() -> Net {
    let mut t = Topology::default();
    let s = t.ns("sender");
    s.addresses.push(("eth0".into(), "10.77.0.1/24".into()));
    s.addresses.push(("eth0".into(), "fd77::1/64".into()));
    let n = t.ns("node");
    n.addresses.push(("eth0".into(), format!("{NODE4}/24")));
    n.addresses.push(("eth0".into(), format!("{NODE6}/64")));
    n.addresses.push(("lo".into(), format!("{VIP4}/32")));
    n.addresses.push(("lo".into(), format!("{VIP6}/128")));
    n.routes.push("default via 10.77.0.1".into());
    n.routes.push("default via fd77::1".into());
    for conf in ["all", "default"] {
        n.sysctls
            .push((format!("net.ipv4.conf.{conf}.rp_filter"), "0".into()));
    }
    t.link(
        Port::new("sender", "eth0").tx_off(),
        Port::new("node", "eth0"),
        None,
    );
    t.build(&unique_prefix()).expect("building the topology")
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// An inner IPv4 UDP packet from the client to the VIP carrying `tag`.
fn inner4(tag: &str) -> Vec<u8> {
    let u = udp(
        v4(CLIENT4).into(),
        v4(VIP4).into(),
        40000,
        APP_PORT,
        tag.as_bytes(),
    );
    ipv4(v4(CLIENT4), v4(VIP4), PROTO_UDP, &u)
}

fn inner6(tag: &str) -> Vec<u8> {
    let u = udp(
        v6(CLIENT6).into(),
        v6(VIP6).into(),
        40000,
        APP_PORT,
        tag.as_bytes(),
    );
    ipv6(v6(CLIENT6), v6(VIP6), PROTO_UDP, &u)
}

fn outer4(dst: &str, proto: u8, payload: &[u8]) -> (u16, Vec<u8>) {
    (ETH_IPV4, ipv4(v4(OUTER_SRC4), v4(dst), proto, payload))
}

fn outer6(dst: &str, next: u8, payload: &[u8]) -> (u16, Vec<u8>) {
    (ETH_IPV6, ipv6(v6(OUTER_SRC6), v6(dst), next, payload))
}

/// UDP to the GUE port carrying a GUE header (version 0, protocol `proto`, with one
/// 4-byte option word to exercise hlen) or, with `proto` = None, version 1.
fn gue(src: IpAddr, dst: IpAddr, proto: Option<u8>, inner: &[u8]) -> Vec<u8> {
    let mut p = match proto {
        Some(proto) => vec![0x01, proto, 0, 0, 0xde, 0xad, 0xbe, 0xef],
        None => Vec::new(),
    };
    p.extend(inner);
    udp(src, dst, 5555, GUE_PORT, &p)
}

struct Node {
    net: Net,
    sock4: UdpSocket,
    sock6: UdpSocket,
    node_mac: [u8; 6],
    sender_mac: [u8; 6],
}

impl Node {
    fn new() -> Node {
        let net = topology();
        let (sock4, sock6) = net
            .ns("node")
            .enter(|| {
                let s4 = UdpSocket::bind((v4(VIP4), APP_PORT)).unwrap();
                let s6 = UdpSocket::bind((v6(VIP6), APP_PORT)).unwrap();
                for s in [&s4, &s6] {
                    s.set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                }
                (s4, s6)
            })
            .unwrap();
        let node_mac = net.ns("node").mac("eth0").unwrap();
        let sender_mac = net.ns("sender").mac("eth0").unwrap();
        Node {
            net,
            sock4,
            sock6,
            node_mac,
            sender_mac,
        }
    }

    fn attach(&self, cfg: &DecapConfig) -> Result<dataplane::bpf::AttachMode, BpfError> {
        self.net
            .ns("node")
            .enter(|| decap::attach("eth0", cfg))
            .unwrap()
    }

    fn send(&self, packets: &[(u16, Vec<u8>)]) {
        self.net
            .ns("sender")
            .enter(|| {
                let sock = PacketSocket::open("eth0").unwrap();
                for (ethertype, p) in packets {
                    sock.send(&eth(self.node_mac, self.sender_mac, *ethertype, p))
                        .unwrap();
                }
            })
            .unwrap();
    }

    /// Everything the VIP sockets receive until they stay quiet: (payload, source).
    fn received(&self) -> Vec<(String, SocketAddr)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65535];
        for s in [&self.sock4, &self.sock6] {
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                out.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
            }
        }
        out.sort();
        out
    }

    fn counters(&self) -> decap::DecapCounters {
        self.net
            .ns("node")
            .enter(|| decap::counters("eth0"))
            .unwrap()
            .unwrap()
    }

    fn xdp_shown(&self) -> bool {
        let link = self
            .net
            .ns("node")
            .ip(&["-o", "link", "show", "dev", "eth0"])
            .unwrap();
        link.contains("xdp")
    }
}

fn config() -> DecapConfig {
    DecapConfig {
        addresses: vec![NODE4.parse().unwrap(), NODE6.parse().unwrap()],
        gue_port: Some(GUE_PORT),
    }
}

#[test]
fn decapsulates_every_tunnel_kind_to_a_real_socket() {
    if !require_privileges("decap test") {
        return;
    }
    let node = Node::new();
    node.attach(&config()).unwrap();
    assert!(node.xdp_shown());

    let (n4, n6): (IpAddr, IpAddr) = (v4(NODE4).into(), v6(NODE6).into());
    let (o4, o6): (IpAddr, IpAddr) = (v4(OUTER_SRC4).into(), v6(OUTER_SRC6).into());
    node.send(&[
        outer4(NODE4, PROTO_IPIP, &inner4("ipip")),
        outer4(NODE4, PROTO_IPV6, &inner6("sit")),
        outer6(NODE6, PROTO_IPIP, &inner4("ip4in6")),
        outer6(NODE6, PROTO_IPV6, &inner6("ip6in6")),
        outer4(
            NODE4,
            PROTO_UDP,
            &gue(o4, n4, Some(PROTO_IPIP), &inner4("gue0-4")),
        ),
        outer4(NODE4, PROTO_UDP, &gue(o4, n4, None, &inner6("gue1-6in4"))),
        outer6(
            NODE6,
            PROTO_UDP,
            &gue(o6, n6, Some(PROTO_IPV6), &inner6("gue0-6")),
        ),
        outer6(NODE6, PROTO_UDP, &gue(o6, n6, None, &inner4("gue1-4in6"))),
    ]);

    let got = node.received();
    let client4: SocketAddr = (v4(CLIENT4), 40000).into();
    let client6: SocketAddr = (v6(CLIENT6), 40000).into();
    let mut want = vec![
        ("ipip", client4),
        ("sit", client6),
        ("ip4in6", client4),
        ("ip6in6", client6),
        ("gue0-4", client4),
        ("gue1-6in4", client6),
        ("gue0-6", client6),
        ("gue1-4in6", client4),
    ]
    .into_iter()
    .map(|(t, a)| (t.to_owned(), a))
    .collect::<Vec<_>>();
    want.sort();
    assert_eq!(
        got, want,
        "inner packets seen by the VIP sockets (with the client's source)"
    );
    let c = node.counters();
    assert_eq!(c.decapsulated, 8, "{c:?}");
    assert_eq!(c.dropped, 0, "{c:?}");
}

/// GUE's outer UDP checksum is checked as the kernel would before fou, up to jumbo frames
/// (a 9500-byte MTU: the program runs in generic mode, on linear frames). With a correct
/// checksum, 9000-byte packets over IPv4 and IPv6 reach the VIP sockets, and so do ones
/// with none (0), as fou takes them. With one byte changed the program passes them and the
/// kernel drops them; so it does a datagram over its 9216-byte bound. The program used to
/// decapsulate them all.
#[test]
fn gue_checksums_are_checked_up_to_jumbo_frames() {
    if !require_privileges("decap test") {
        return;
    }
    let node = Node::new();
    for ns in ["sender", "node"] {
        node.net
            .ns(ns)
            .ip(&["link", "set", "dev", "eth0", "mtu", "9500"])
            .unwrap();
    }
    node.attach(&config()).unwrap();
    let before = node.counters();

    let (n4, n6): (IpAddr, IpAddr) = (v4(NODE4).into(), v6(NODE6).into());
    let (o4, o6): (IpAddr, IpAddr) = (v4(OUTER_SRC4).into(), v6(OUTER_SRC6).into());
    // `tag` padded with dots to fill an outer packet of `total` bytes (outer IP, UDP, GUE
    // with its option word, inner IP and UDP headers: 64 bytes over IPv4, 104 over IPv6).
    let fill = |tag: &str, len: usize| format!("{tag:.<len$}");
    let gue4 = |tag: &str, total: usize| {
        let inner = inner4(&fill(tag, total - 64));
        outer4(NODE4, PROTO_UDP, &gue(o4, n4, Some(PROTO_IPIP), &inner))
    };
    let gue6 = |tag: &str, total: usize| {
        let inner = inner6(&fill(tag, total - 104));
        outer6(NODE6, PROTO_UDP, &gue(o6, n6, Some(PROTO_IPV6), &inner))
    };
    // A changed GUE option word: the inner packet stays valid, only the outer checksum
    // tells.
    let mut corrupt4 = gue4("corrupt4", 9000);
    corrupt4.1[35] ^= 1;
    let mut nocsum4 = gue4("nocsum4", 200);
    nocsum4.1[26..28].fill(0);
    let mut nocsum6 = gue6("nocsum6", 200);
    nocsum6.1[46..48].fill(0);
    node.send(&[
        gue4("jumbo4", 9000),
        gue6("jumbo6", 9000),
        corrupt4,
        nocsum4,
        nocsum6,
        gue4("over-bound4", 9300),
    ]);

    let got: Vec<(String, usize, SocketAddr)> = node
        .received()
        .into_iter()
        .map(|(t, from)| (t.trim_end_matches('.').to_owned(), t.len(), from))
        .collect();
    let client4: SocketAddr = (v4(CLIENT4), 40000).into();
    let client6: SocketAddr = (v6(CLIENT6), 40000).into();
    let want = vec![
        ("jumbo4".to_owned(), 9000 - 64, client4),
        ("jumbo6".to_owned(), 9000 - 104, client6),
        ("nocsum4".to_owned(), 200 - 64, client4),
        ("nocsum6".to_owned(), 200 - 104, client6),
    ];
    assert_eq!(got, want, "(tag, length, source) seen by the VIP sockets");
    let c = node.counters();
    assert_eq!(c.decapsulated, before.decapsulated + 4, "{c:?}");
    assert_eq!(c.dropped, before.dropped, "{c:?}");
    assert!(c.passed >= before.passed + 2, "{c:?}");
}

#[test]
fn leaves_other_traffic_alone_and_drops_lying_tunnels() {
    if !require_privileges("decap test") {
        return;
    }
    let node = Node::new();
    node.attach(&config()).unwrap();
    let before = node.counters();

    let n4: IpAddr = v4(NODE4).into();
    let o4: IpAddr = v4(OUTER_SRC4).into();
    node.send(&[
        // A tunnel to an address that is not the node's: not ours, passed unchanged (and
        // the kernel, which has no ipip module, drops it).
        outer4("10.77.0.99", PROTO_IPIP, &inner4("not-my-address")),
        // GUE on another port is plain UDP.
        outer4(
            NODE4,
            PROTO_UDP,
            &udp(o4, n4, 5555, GUE_PORT + 1, &inner4("other-port")),
        ),
        // Protocol 4 that carries an IPv6 header: dropped.
        outer4(NODE4, PROTO_IPIP, &inner6("liar")),
    ]);
    assert_eq!(node.received(), vec![]);
    let after = node.counters();
    assert_eq!(after.decapsulated, before.decapsulated);
    assert_eq!(after.dropped, before.dropped + 1, "{after:?}");
    assert!(after.passed >= before.passed + 2, "{after:?}");

    // Ordinary traffic to the node still works through the program.
    let sender = node.net.ns("sender");
    sender.exec(&["ping", "-c1", "-W2", NODE4]).unwrap();
    sender.exec(&["ping", "-c1", "-W2", NODE6]).unwrap();
}

#[test]
fn replace_then_detach_removes_it_and_tunnels_stop_working() {
    if !require_privileges("decap test") {
        return;
    }
    let node = Node::new();
    let first = node
        .attach(&DecapConfig {
            addresses: vec![NODE4.parse().unwrap()],
            gue_port: None,
        })
        .unwrap();
    // Attaching again replaces the program (new config) in the same mode.
    let second = node.attach(&config()).unwrap();
    assert_eq!(first, second);
    node.send(&[outer6(NODE6, PROTO_IPIP, &inner4("after-replace"))]);
    assert_eq!(
        node.received().len(),
        1,
        "the replacement's config (IPv6 address) is in force"
    );

    node.net
        .ns("node")
        .enter(|| decap::detach("eth0"))
        .unwrap()
        .unwrap();
    assert!(!node.xdp_shown(), "XDP still attached after detach");
    node.send(&[outer4(NODE4, PROTO_IPIP, &inner4("after-detach"))]);
    assert_eq!(
        node.received(),
        vec![],
        "without the program nothing decapsulates"
    );

    let again = node.net.ns("node").enter(|| decap::detach("eth0")).unwrap();
    assert!(matches!(again, Err(BpfError::NotAttached(_))), "{again:?}");
    let bad = node
        .net
        .ns("node")
        .enter(|| decap::detach("nosuch0"))
        .unwrap();
    assert!(matches!(bad, Err(BpfError::NoInterface(_))), "{bad:?}");
}

#[test]
fn refuses_to_touch_a_foreign_xdp_program() {
    if !require_privileges("decap test (foreign program)") {
        return;
    }
    let node = Node::new();
    let steer = node
        .net
        .ns("node")
        .enter(|| dataplane::bpf::Steer::attach("eth0"))
        .unwrap()
        .unwrap();
    let err = node.net.ns("node").enter(|| decap::detach("eth0")).unwrap();
    assert!(matches!(err, Err(BpfError::Foreign { .. })), "{err:?}");
    let err = node.attach(&config());
    assert!(matches!(err, Err(BpfError::Foreign { .. })), "{err:?}");
    drop(steer);
    assert!(!node.xdp_shown());
}

/// `dsrgate decap attach|detach` as an operator runs it on a node (`ip netns exec`, a
/// private /sys): the program outlives the command, and detach removes it.
#[test]
fn cli_attach_outlives_the_command_and_detach_cleans_up() {
    if !require_privileges("decap CLI test") {
        return;
    }
    let bin = dsrgate_tests::daemon::dsrgate_bin().expect("building dsrgate");
    let bin = bin.to_str().unwrap();
    let node = Node::new();
    let ns = node.net.ns("node");
    let out = ns
        .exec(&[
            bin,
            "decap",
            "attach",
            "--iface",
            "eth0",
            "--gue-port",
            &GUE_PORT.to_string(),
        ])
        .unwrap();
    assert!(out.contains("decap attached to eth0"), "{out}");
    assert!(
        out.contains(NODE4) && out.contains(NODE6),
        "defaults to the interface's addresses: {out}"
    );
    assert!(node.xdp_shown());

    let (n4, o4): (IpAddr, IpAddr) = (v4(NODE4).into(), v4(OUTER_SRC4).into());
    node.send(&[
        outer4(NODE4, PROTO_IPIP, &inner4("cli-ipip")),
        outer4(
            NODE4,
            PROTO_UDP,
            &gue(o4, n4, Some(PROTO_IPIP), &inner4("cli-gue")),
        ),
    ]);
    let tags: Vec<String> = node.received().into_iter().map(|(t, _)| t).collect();
    assert_eq!(tags, ["cli-gue", "cli-ipip"]);

    let out = ns
        .exec(&[bin, "decap", "detach", "--iface", "eth0"])
        .unwrap();
    assert!(out.contains("detached"), "{out}");
    assert!(!node.xdp_shown());
    let again = ns
        .output(&[bin, "decap", "detach", "--iface", "eth0"])
        .unwrap();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("no XDP program is attached to eth0"),
        "{stderr}"
    );
}
