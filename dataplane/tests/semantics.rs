//! The pipeline's flow semantics with many backends: what the fixtures (one backend per VIP)
//! cannot show.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;

use common::*;
use dataplane::flow::FlowTimeouts;
use dataplane::pipeline::{DropReason, Frame, Verdict, Worker, WorkerConfig};
use dataplane::snapshot::{Encap, HashMode, Proto, Snapshot, SnapshotConfig};

const VIP: &str = "10.0.0.1";
const NOW: u64 = 5_000_000_000;

fn worker() -> Worker {
    Worker::new(WorkerConfig {
        flow_capacity: 1 << 14,
        ..WorkerConfig::default()
    })
}

fn set(n: usize) -> Vec<(IpAddr, u32)> {
    (0..n).map(|i| (backend_addr(i), 1)).collect()
}

fn tcp_vip() -> [(&'static str, Proto, u16, HashMode, Encap); 1] {
    [(VIP, Proto::Tcp, 80, HashMode::FiveTuple, Encap::IpIp)]
}

fn client(i: usize) -> IpAddr {
    ip(&format!("203.0.{}.{}", i / 250, 1 + i % 250))
}

fn pkt(i: usize, flags: u8) -> Vec<u8> {
    flow_frame(client(i), 10000 + i as u16, ip(VIP), 80, 6, flags)
}

#[test]
fn known_flows_keep_their_backend_and_syns_follow_the_table() {
    let mut w = worker();
    let s1 = snapshot(1, &tcp_vip(), &set(10));
    let first: Vec<IpAddr> = (0..300)
        .map(|i| sent_to(&mut w, &s1, NOW, &pkt(i, SYN)).unwrap())
        .collect();
    assert!(
        first.iter().collect::<HashSet<_>>().len() > 5,
        "flows spread"
    );

    // Ten more backends: Maglev moves about half the flows, the flow table none of them.
    let s2 = snapshot(2, &tcp_vip(), &set(20));
    let mut fresh = worker();
    let mut moved = 0;
    for (i, b) in first.iter().enumerate() {
        assert_eq!(
            sent_to(&mut w, &s2, NOW, &pkt(i, ACK)).as_ref(),
            Some(b),
            "flow {i} stays"
        );
        let table_choice = sent_to(&mut fresh, &s2, NOW, &pkt(i, SYN)).unwrap();
        moved += usize::from(table_choice != *b);
        // A SYN (a new connection on a reused tuple) takes the current table's choice.
        assert_eq!(sent_to(&mut w, &s2, NOW, &pkt(i, SYN)), Some(table_choice));
        // ... and is recorded: the next packet follows it.
        assert_eq!(sent_to(&mut w, &s2, NOW, &pkt(i, ACK)), Some(table_choice));
    }
    assert!(moved > 50, "the new table moved {moved} of 300 flows");
}

/// A 3-tuple VIP sends a client's connections to one backend, yet each connection keeps its
/// own: after a table change the client's next SYN takes the current choice, and the
/// connections it already has stay where they are (an entry shared by the client's
/// connections would follow the new SYN and reset them all).
#[test]
fn a_clients_new_connection_on_a_three_tuple_vip_moves_none_of_its_open_ones() {
    let vips = [(VIP, Proto::Tcp, 80, HashMode::ThreeTuple, Encap::IpIp)];
    let (s1, s2) = (snapshot(1, &vips, &set(10)), snapshot(2, &vips, &set(20)));
    let conn = |i, port, flags| flow_frame(client(i), port, ip(VIP), 80, 6, flags);
    let mut w = worker();
    let mut moved = 0;
    for i in 0..100 {
        // Unchanged table: every connection of the client on one backend.
        let old = sent_to(&mut w, &s1, NOW, &conn(i, 1111, SYN)).unwrap();
        for port in 1112..1120 {
            assert_eq!(sent_to(&mut w, &s1, NOW, &conn(i, port, SYN)), Some(old));
        }
        // The table changes; a new connection takes the current choice.
        let new = sent_to(&mut w, &s2, NOW, &conn(i, 2222, SYN)).unwrap();
        moved += usize::from(new != old);
        for port in 1111..1120 {
            assert_eq!(
                sent_to(&mut w, &s2, NOW, &conn(i, port, ACK)),
                Some(old),
                "client {i}: open connection from port {port} stays"
            );
        }
        assert_eq!(sent_to(&mut w, &s2, NOW, &conn(i, 2222, ACK)), Some(new));
        assert_eq!(sent_to(&mut w, &s2, NOW, &conn(i, 3333, SYN)), Some(new));
    }
    // Ten more backends move about half the clients' choices: the case above was exercised.
    assert!((25..=75).contains(&moved), "{moved} of 100 clients moved");
}

/// A 3-tuple VIP hashes addresses and protocol only: a client's connections to each of its
/// ports (one backend set) reach one backend.
#[test]
fn a_three_tuple_vip_sends_a_clients_connections_on_every_port_to_one_backend() {
    let vips = [
        (VIP, Proto::Tcp, 80, HashMode::ThreeTuple, Encap::IpIp),
        (VIP, Proto::Tcp, 443, HashMode::ThreeTuple, Encap::IpIp),
    ];
    let s = snapshot(1, &vips, &set(8));
    let mut w = worker();
    let mut seen = HashSet::new();
    for i in 0..50 {
        let syn = |sport, port| flow_frame(client(i), sport, ip(VIP), port, 6, SYN);
        let b = sent_to(&mut w, &s, NOW, &syn(10000, 80)).unwrap();
        assert_eq!(
            sent_to(&mut w, &s, NOW, &syn(20000, 443)),
            Some(b),
            "client {i}"
        );
        seen.insert(b);
    }
    assert!(seen.len() > 4, "clients spread: {} backends", seen.len());
}

/// A reload that changes the hash seed moves no recorded flow, nor its outer source: the
/// flow table keeps the seed its worker started with. What it does not know takes the new
/// seed's Maglev choice, the one a gateway started on the new seed makes.
#[test]
fn a_seed_change_keeps_established_flows() {
    let seeded = |generation, seed| {
        Snapshot::new(&SnapshotConfig {
            maglev_seed: seed,
            hash_seed: seed,
            ..snapshot_config(generation, &tcp_vip(), &set(10))
        })
        .unwrap()
    };
    let (s1, s2) = (seeded(1, 1), seeded(2, 2));
    let mut w = worker();
    let first: Vec<Decap> = (0..200)
        .map(|i| decap(&run(&mut w, &s1, NOW, &pkt(i, SYN)).1))
        .collect();
    let mut fresh = worker();
    let mut moved = 0;
    for (i, f) in first.iter().enumerate() {
        let d = decap(&run(&mut w, &s2, NOW, &pkt(i, ACK)).1);
        assert_eq!(
            (d.outer_dst, d.outer_src),
            (f.outer_dst, f.outer_src),
            "flow {i} stays"
        );
        assert_eq!(
            sent_to(&mut w, &s2, NOW, &quoting_error(i)),
            Some(f.outer_dst),
            "an error about flow {i}"
        );
        let choice = sent_to(&mut fresh, &s2, NOW, &pkt(i, SYN)).unwrap();
        moved += usize::from(choice != f.outer_dst);
        // A new connection on the tuple takes the new seed's choice, and keeps it.
        assert_eq!(sent_to(&mut w, &s2, NOW, &pkt(i, SYN)), Some(choice));
        assert_eq!(sent_to(&mut w, &s2, NOW, &pkt(i, ACK)), Some(choice));
    }
    // The new seed moves about nine in ten choices: the case above was exercised.
    assert!(moved > 150, "the new seed moved {moved} of 200 flows");
    // Flows new to this worker, met with a SYN or mid-way: the new seed's choice.
    for i in 1000..1200 {
        let flags = if i % 2 == 0 { SYN } else { ACK };
        assert_eq!(
            sent_to(&mut w, &s2, NOW, &pkt(i, flags)),
            sent_to(&mut fresh, &s2, NOW, &pkt(i, flags)),
            "new flow {i}"
        );
    }
}

#[test]
fn removed_backend_rehashes_and_draining_backend_keeps_flows() {
    let mut w = worker();
    let s1 = snapshot(1, &tcp_vip(), &set(8));
    let first: Vec<IpAddr> = (0..400)
        .map(|i| sent_to(&mut w, &s1, NOW, &pkt(i, SYN)).unwrap())
        .collect();
    let victim = first[0];

    // Draining: weight 0. Existing flows stay, including those on the victim; no new flow
    // goes to it.
    let drain: Vec<(IpAddr, u32)> = set(8)
        .into_iter()
        .map(|(a, _)| (a, u32::from(a != victim)))
        .collect();
    let s2 = snapshot(2, &tcp_vip(), &drain);
    for (i, b) in first.iter().enumerate() {
        assert_eq!(sent_to(&mut w, &s2, NOW, &pkt(i, ACK)).as_ref(), Some(b));
    }
    for i in 1000..1400 {
        assert_ne!(
            sent_to(&mut w, &s2, NOW, &pkt(i, SYN)),
            Some(victim),
            "new flow {i} on a draining backend"
        );
    }

    // Removed: flows on the victim are re-hashed through the current table; others stay.
    let gone: Vec<(IpAddr, u32)> = set(8).into_iter().filter(|(a, _)| *a != victim).collect();
    let s3 = snapshot(3, &tcp_vip(), &gone);
    let mut fresh = worker();
    for (i, b) in first.iter().enumerate() {
        let now = sent_to(&mut w, &s3, NOW, &pkt(i, ACK)).unwrap();
        if *b == victim {
            assert_eq!(
                Some(now),
                sent_to(&mut fresh, &s3, NOW, &pkt(i, ACK)),
                "flow {i} re-hashed"
            );
            // Re-recorded: stays there when the victim comes back.
            assert_eq!(sent_to(&mut w, &s1, NOW, &pkt(i, ACK)), Some(now));
        } else {
            assert_eq!(now, *b, "flow {i} not on the removed backend stays");
        }
    }
}

/// A flow's packets: seconds after `NOW`, TCP flags.
type History = &'static [(u64, u8)];

/// A flow forgotten after its idle timeout is balanced afresh: with a changed table, its
/// next packet goes to the table's current choice instead of its recorded backend. The
/// timeout is per class, which TCP flags move: unconfirmed after a SYN or a RST, established
/// once an ordinary packet follows, closing for good after a FIN; and UDP.
#[test]
fn idle_timeouts_follow_protocol_and_tcp_state() {
    const S: u64 = 1_000_000_000;
    let mut w = Worker::new(WorkerConfig {
        flow_capacity: 1 << 14,
        timeouts: FlowTimeouts {
            tcp_established_ns: 300 * S,
            tcp_closing_ns: 10 * S,
            udp_ns: 60 * S,
            tcp_unconfirmed_ns: 30 * S,
        },
        ..WorkerConfig::default()
    });
    let vips = [
        (VIP, Proto::Tcp, 80, HashMode::FiveTuple, Encap::IpIp),
        (VIP, Proto::Udp, 53, HashMode::FiveTuple, Encap::IpIp),
    ];
    let (s1, s2) = (snapshot(1, &vips, &set(10)), snapshot(2, &vips, &set(20)));
    let udp = |i: usize| flow_frame(client(i), 10000 + i as u16, ip(VIP), 53, 17, 0);
    // Flows the larger table sends elsewhere, so that forgetting one shows.
    let choice = |s, f: &[u8]| sent_to(&mut worker(), s, NOW, f).unwrap();
    let mut moved = (0..1000).filter(|&i| {
        choice(&s1, &pkt(i, SYN)) != choice(&s2, &pkt(i, SYN))
            && choice(&s1, &udp(i)) != choice(&s2, &udp(i))
    });

    // A history on the old table, and the idle timeout it leaves.
    let histories: [(&str, History, u64); 6] = [
        ("an unanswered SYN", &[(0, SYN)], 30),
        ("an open connection", &[(0, SYN), (1, ACK)], 300),
        ("a FIN", &[(0, SYN), (1, ACK), (2, FIN | ACK)], 10),
        (
            "the ACKs after a FIN",
            &[(0, SYN), (1, ACK), (2, FIN | ACK), (3, ACK)],
            10,
        ),
        ("a RST", &[(0, SYN), (1, ACK), (2, RST | ACK)], 30),
        (
            "a RST the server ignored",
            &[(0, SYN), (1, ACK), (2, RST), (3, ACK)],
            300,
        ),
    ];
    for (what, history, idle) in histories {
        // Two flows with this history: one seen again just inside the timeout, one just past.
        for (margin, remembered) in [(idle - 1, true), (idle + 1, false)] {
            let i = moved.next().unwrap();
            let mut b = None;
            for &(at, flags) in history {
                b = sent_to(&mut w, &s1, NOW + at * S, &pkt(i, flags));
            }
            let last = history.last().unwrap().0;
            let then = sent_to(&mut w, &s2, NOW + (last + margin) * S, &pkt(i, ACK));
            let expected = if remembered {
                b
            } else {
                Some(choice(&s2, &pkt(i, ACK)))
            };
            assert_eq!(then, expected, "{what}, {margin} s later");
        }
    }

    let dgram = moved.next().unwrap();
    let b = sent_to(&mut w, &s1, NOW, &udp(dgram)).unwrap();
    assert_eq!(sent_to(&mut w, &s2, NOW + 59 * S, &udp(dgram)), Some(b));
    let fresh = choice(&s2, &udp(dgram));
    assert_eq!(
        sent_to(&mut w, &s2, NOW + 120 * S, &udp(dgram)),
        Some(fresh)
    );
}

/// A full table evicts the entry nearest its timeout: a flood of SYNs that are never
/// answered (spoofed sources) replaces its own unconfirmed entries, not an established
/// connection that has been idle for a while, so a draining backend keeps its connection.
#[test]
fn a_syn_flood_does_not_evict_established_connections() {
    const S: u64 = 1_000_000_000;
    let mut w = Worker::new(WorkerConfig {
        flow_capacity: 4096,
        ..WorkerConfig::default()
    });
    let s1 = snapshot(1, &tcp_vip(), &set(8));
    // Established connections, each idle 60 s when the flood starts.
    let open: Vec<IpAddr> = (0..512)
        .map(|i| {
            sent_to(&mut w, &s1, NOW, &pkt(i, SYN)).unwrap();
            sent_to(&mut w, &s1, NOW + S, &pkt(i, ACK)).unwrap()
        })
        .collect();
    // Every backend the connections are on drains, so a forgotten one would move.
    let s2 = snapshot(
        2,
        &tcp_vip(),
        &set(8)
            .into_iter()
            .map(|(a, _)| (a, 0))
            .chain(set(16).into_iter().skip(8))
            .collect::<Vec<_>>(),
    );
    let flood_at = NOW + 61 * S;
    for i in 0..20_000 {
        let syn = flow_frame(
            ip(&format!("198.18.{}.{}", i / 200, 1 + i % 200)),
            1024 + i as u16,
            ip(VIP),
            80,
            6,
            SYN,
        );
        sent_to(&mut w, &s2, flood_at, &syn).unwrap();
    }
    assert!(w.flows().evictions() > 10_000, "the table was full");
    for (i, b) in open.iter().enumerate() {
        assert_eq!(
            sent_to(&mut w, &s2, flood_at + S, &pkt(i, ACK)).as_ref(),
            Some(b),
            "connection {i}"
        );
    }
}

#[test]
fn no_backend_at_all_drops() {
    let mut w = worker();
    let s = snapshot(1, &tcp_vip(), &[(backend_addr(0), 0)]);
    assert_eq!(
        run(&mut w, &s, NOW, &pkt(0, SYN)).0,
        Verdict::Drop(DropReason::NoBackend)
    );
    assert_eq!(w.counters().drop_count(DropReason::NoBackend), 1);
}

#[test]
fn two_gateways_agree() {
    // Same backend set in a different order on another gateway: same choice for every flow,
    // without any shared state.
    let mut rev = set(50);
    rev.reverse();
    let (a, b) = (
        snapshot(1, &tcp_vip(), &set(50)),
        snapshot(9, &tcp_vip(), &rev),
    );
    let (mut wa, mut wb) = (worker(), worker());
    for i in 0..500 {
        let flags = if i % 2 == 0 { SYN } else { ACK };
        assert_eq!(
            sent_to(&mut wa, &a, NOW, &pkt(i, flags)),
            sent_to(&mut wb, &b, NOW, &pkt(i, flags))
        );
    }
}

#[test]
fn fragments_of_a_datagram_share_a_backend() {
    let vips = [
        (VIP, Proto::Udp, 53, HashMode::FiveTuple, Encap::IpIp),
        (
            "10.0.0.2",
            Proto::Udp,
            53,
            HashMode::ThreeTuple,
            Encap::IpIp,
        ),
        (
            "10.0.0.2",
            Proto::Udp,
            5353,
            HashMode::ThreeTuple,
            Encap::IpIp,
        ),
        (
            "2001:db8::1",
            Proto::Udp,
            53,
            HashMode::FiveTuple,
            Encap::IpIp,
        ),
    ];
    let backends: Vec<(IpAddr, u32)> = (0..30)
        .map(|i| (ip(&format!("fd00:10::{}", i + 1)), 1))
        .collect();
    let s = snapshot(1, &vips, &backends);
    let mut w = worker();
    let (mut seen, mut seen6) = (HashSet::new(), HashSet::new());
    for i in 0..200usize {
        let body = l4(17, 5000 + i as u16, 53, 0, &[7u8; 64]);
        for vip in ["10.0.0.1", "10.0.0.2"] {
            let (c, d) = (client(i), ip(vip));
            let first = ether(&ipv4(c, d, 17, 0, Some((true, 0)), i as u16, &body[..24]));
            let later = ether(&ipv4(c, d, 17, 0, Some((false, 3)), i as u16, &body[24..]));
            // Later fragments may arrive first.
            let b2 = sent_to(&mut w, &s, NOW, &later).unwrap();
            let b1 = sent_to(&mut w, &s, NOW, &first).unwrap();
            assert_eq!(b1, b2, "datagram {i} to {vip}");
            seen.insert(b1);
            if vip == "10.0.0.2" {
                // 3-tuple VIP: unfragmented packets of the client go to the same backend,
                // to the fragment VIP's port and to another port with the same backends.
                for port in [53, 5353] {
                    let whole = flow_frame(c, 7777, d, port, 17, 0);
                    assert_eq!(sent_to(&mut w, &s, NOW, &whole), Some(b1), "port {port}");
                }
            }
        }
        let (c, d) = (ip(&format!("2001:db8:c::{:x}", i + 1)), ip("2001:db8::1"));
        let first = ether(&ipv6(c, d, 17, 0, Some((true, 0, i as u32)), &body[..24]));
        let later = ether(&ipv6(c, d, 17, 0, Some((false, 3, i as u32)), &body[24..]));
        assert_eq!(
            sent_to(&mut w, &s, NOW, &first),
            sent_to(&mut w, &s, NOW, &later),
            "v6 datagram {i}"
        );
        // A Fragmentable Part that opens with a Destination Options header (next header
        // UDP, 8 bytes of PadN): the later fragment cannot tell its protocol, and both go
        // as UDP to one backend (RFC 8200 §4.5; the later one was dropped as truncated).
        let mut opts = vec![17, 0, 1, 4, 0, 0, 0, 0];
        opts.extend_from_slice(&body[..24]);
        let first = ether(&ipv6(c, d, 60, 0, Some((true, 0, !(i as u32))), &opts));
        let later = ether(&ipv6(
            c,
            d,
            60,
            0,
            Some((false, 4, !(i as u32))),
            &body[24..],
        ));
        let b2 = sent_to(&mut w, &s, NOW, &later);
        let b1 = sent_to(&mut w, &s, NOW, &first);
        assert!(b1.is_some(), "v6 datagram {i} behind options");
        assert_eq!(b1, b2, "v6 datagram {i} behind options");
        seen6.insert(b1);
    }
    assert!(seen.len() > 10, "datagrams still spread over backends");
    assert!(
        seen6.len() > 10,
        "v6 datagrams behind options spread over backends too"
    );
}

/// An ICMP error from a router about the backend's reply VIP:80 -> client `i`'s port, of
/// each kind that quotes a packet (RFC 792) in turn: destination unreachable
/// (fragmentation needed), time exceeded, parameter problem (pointer 8: the TTL).
fn quoting_error(i: usize) -> Vec<u8> {
    let reply = ipv4(
        ip(VIP),
        client(i),
        6,
        0,
        None,
        1,
        &l4(6, 80, 10000 + i as u16, ACK, b""),
    );
    let (kind, code, rest) = [
        (3, 4, [0, 0, 0x05, 0x78]),
        (11, 0, [0; 4]),
        (12, 0, [8, 0, 0, 0]),
    ][i % 3];
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(&reply[..28]);
    let c = !sum16(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ether(&ipv4(ip("198.51.100.1"), ip(VIP), 1, 0, None, 1, &icmp))
}

#[test]
fn icmp_error_follows_the_flow_it_quotes() {
    let mut w = worker();
    let s1 = snapshot(1, &tcp_vip(), &set(10));
    let s2 = snapshot(2, &tcp_vip(), &set(40));
    for i in 0..100 {
        let owner = sent_to(&mut w, &s1, NOW, &pkt(i, SYN)).unwrap();
        // Under a table where Maglev would choose differently, the error still reaches the
        // flow's owner, and it does not create flows of its own.
        assert_eq!(
            sent_to(&mut w, &s2, NOW, &quoting_error(i)),
            Some(owner),
            "error of type index {} for flow {i}",
            i % 3
        );
    }
    assert_eq!(w.flows().len(), 100);
}

/// ICMP errors do not keep a flow alive: anyone who can guess a flow's tuple can send them,
/// and the flow's own packets are what say it is in use.
#[test]
fn icmp_errors_do_not_refresh_an_idle_flow() {
    let idle = FlowTimeouts::default().tcp_established_ns;
    let mut w = worker();
    let s1 = snapshot(1, &tcp_vip(), &set(10));
    let s2 = snapshot(2, &tcp_vip(), &set(40));
    let mut fresh = worker();
    let mut moved = 0;
    for i in 0..100 {
        sent_to(&mut w, &s1, NOW, &pkt(i, SYN)).unwrap();
        let owner = sent_to(&mut w, &s1, NOW, &pkt(i, ACK)).unwrap();
        // Errors through most of the idle time; the flow is still alive for each.
        for t in [idle / 2, idle * 9 / 10] {
            assert_eq!(
                sent_to(&mut w, &s2, NOW + t, &quoting_error(i)),
                Some(owner)
            );
        }
        // Past the idle timeout since the flow's last packet, it is gone: its next packet
        // takes the current table's choice.
        let now = NOW + idle + idle / 5;
        let choice = sent_to(&mut fresh, &s2, now, &pkt(i, SYN)).unwrap();
        moved += usize::from(choice != owner);
        assert_eq!(
            sent_to(&mut w, &s2, now, &pkt(i, ACK)),
            Some(choice),
            "flow {i}"
        );
    }
    // Thirty more backends move most choices: the expiry was observable.
    assert!(moved > 50, "{moved} of 100 flows moved");
}

#[test]
fn outer_header_fields() {
    let gue = [(
        VIP,
        Proto::Tcp,
        80,
        HashMode::FiveTuple,
        Encap::Gue { port: 6080 },
    )];
    let s = snapshot(1, &gue, &[(ip("192.168.10.1"), 1)]);
    let v6vip = [(
        "2001:db8::1",
        Proto::Tcp,
        80,
        HashMode::FiveTuple,
        Encap::IpIp,
    )];
    let s6 = snapshot(2, &v6vip, &[(ip("fd00:10::1"), 1)]);
    let mut w = worker();
    let (mut srcs, mut ports) = (HashSet::new(), HashSet::new());
    for i in 0..200 {
        let (_, out) = run(&mut w, &s, NOW, &pkt(i, SYN));
        let d = decap(&out);
        assert_eq!((d.ttl, d.tos, d.dst_mac), (64, 0, [2, 0, 0, 0, 1, 1]));
        assert_eq!(d.inner, pkt(i, SYN)[14..]);
        let (sport, dport) = d.gue.unwrap();
        assert_eq!(dport, 6080);
        assert!(sport >= 49152);
        ports.insert(sport);
        // Sources come from 172.16.0.0/24, never .0 or .255.
        let IpAddr::V4(src) = d.outer_src else {
            panic!()
        };
        assert_eq!(&src.octets()[..3], &[172, 16, 0]);
        assert!(!matches!(src.octets()[3], 0 | 255));
        srcs.insert(src);
    }
    assert!(
        srcs.len() > 50 && ports.len() > 100,
        "{} sources, {} ports",
        srcs.len(),
        ports.len()
    );
    // DSCP/ECN copied; IPv6 source from the /64 with hash bits below it.
    let v6 = ether(&ipv6(
        ip("2001:db8:c::1"),
        ip("2001:db8::1"),
        6,
        0xb9,
        None,
        &l4(6, 1, 80, SYN, b""),
    ));
    let d = decap(&run(&mut w, &s6, NOW, &v6).1);
    assert_eq!((d.tos, d.ttl, d.gue), (0xb9, 64, None));
    let IpAddr::V6(src) = d.outer_src else {
        panic!()
    };
    assert_eq!(
        &src.octets()[..8],
        &"fd00:ff::".parse::<std::net::Ipv6Addr>().unwrap().octets()[..8]
    );
}

#[test]
fn headroom_and_rate_limit() {
    let s = snapshot(1, &tcp_vip(), &set(3));
    let mut w = Worker::new(WorkerConfig {
        flow_capacity: 1024,
        icmp_per_sec: 10,
        icmp_burst: 3,
        ..WorkerConfig::default()
    });
    // Not enough headroom for the outer header.
    let f = pkt(1, SYN);
    let mut buf = f.clone();
    let mut frames = [Frame {
        buf: &mut buf,
        offset: 0,
        len: f.len(),
    }];
    let mut v = [Verdict::Pass];
    w.process(&s, NOW, &mut frames, &mut v);
    assert_eq!(v[0], Verdict::Drop(DropReason::NoHeadroom));
    // Too big with DF: three replies (the burst), then rate-limited, then one more token
    // after 100 ms.
    let big = ether(&ipv4(
        client(1),
        ip(VIP),
        6,
        0,
        None,
        1,
        &l4(6, 1, 80, ACK, &[0u8; 1460]),
    ));
    let verdicts: Vec<Verdict> = (0..5).map(|_| run(&mut w, &s, NOW, &big).0).collect();
    assert!(matches!(verdicts[2], Verdict::Reply { .. }));
    assert_eq!(verdicts[3], Verdict::Drop(DropReason::IcmpRateLimited));
    assert!(matches!(
        run(&mut w, &s, NOW + 100_000_000, &big).0,
        Verdict::Reply { .. }
    ));
    // The rate holds when batches come more often than a token's interval: one too-big
    // packet every 60 ms for 6 s, against a token every 100 ms, gets 60 replies, not the
    // one in two intervals a refill that restarted the interval at each batch gave (50).
    let replies = (1..=100u64)
        .filter(|k| {
            let now = NOW + 100_000_000 + k * 60_000_000;
            matches!(run(&mut w, &s, now, &big).0, Verdict::Reply { .. })
        })
        .count();
    assert_eq!(replies, 60);
}

#[test]
fn batches_and_counters() {
    let s = snapshot(1, &tcp_vip(), &set(4));
    let mut w = worker();
    // 150 frames in one call (three batches): SYNs, a non-VIP, a runt.
    let mut frames: Vec<Vec<u8>> = (0..148)
        .map(|i| {
            let mut b = vec![0u8; HEADROOM];
            b.extend_from_slice(&pkt(i, SYN));
            b
        })
        .collect();
    let mut other = vec![0u8; HEADROOM];
    other.extend_from_slice(&flow_frame(client(1), 1, ip("10.9.9.9"), 80, 6, SYN));
    frames.push(other);
    frames.push(vec![0u8; HEADROOM + 5]);
    let mut fr: Vec<Frame> = frames
        .iter_mut()
        .map(|b| {
            let len = b.len() - HEADROOM;
            Frame {
                buf: b,
                offset: HEADROOM,
                len,
            }
        })
        .collect();
    let mut v = vec![Verdict::Pass; fr.len()];
    w.process(&s, NOW, &mut fr, &mut v);
    assert!(v[..148].iter().all(|x| matches!(x, Verdict::Tx { .. })));
    assert_eq!(v[148], Verdict::Pass);
    assert_eq!(v[149], Verdict::Drop(DropReason::Truncated));
    let c = w.counters();
    assert_eq!(
        (c.tx.packets, c.pass, c.drop_count(DropReason::Truncated)),
        (148, 1, 1)
    );
    assert_eq!(c.vips[0].packets, 148);
    assert_eq!(c.backends[..4].iter().map(|b| b.packets).sum::<u64>(), 148);
    assert_eq!(
        c.backends[..4].iter().map(|b| b.bytes).sum::<u64>(),
        c.tx.bytes
    );
}
