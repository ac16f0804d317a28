//! The steering program, loaded but never attached, run on frames with BPF_PROG_TEST_RUN, and
//! the pipeline run on the same frames. What the program steers the pipeline must not pass (a
//! worker cannot hand a frame back to the kernel, so it would be lost), and what the pipeline
//! forwards the program must steer (the kernel does not own the VIP).

use super::*;
#[path = "../../../tests/common/mod.rs"]
mod common;
use crate::pipeline::{Verdict, Worker, WorkerConfig};
use crate::snapshot::{
    BackendConfig, Encap, HashMode, Proto, Snapshot, SnapshotConfig, SourcePrefix, VipConfig,
};
use aya::programs::{TestRun, TestRunOptions};
use dsrgate_tests::frames::*;
use dsrgate_tests::require_privileges;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::net::{Ipv4Addr, Ipv6Addr};

const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10);
/// A router on the path back to the client, which sends the ICMP errors.
const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
const NODE4: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 11);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x11);
const NOW: u64 = 1_000_000_000;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// IPv6 extension headers (RFC 8200 §4) and AH (RFC 4302).
const HOPOPTS: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AH: u8 = 51;
const DSTOPTS: u8 = 60;

/// The services both the program and the pipeline are configured with.
fn services() -> [(IpAddr, Proto, u16); 4] {
    [
        (VIP4.into(), Proto::Tcp, 80),
        (VIP4.into(), Proto::Udp, 53),
        (VIP6.into(), Proto::Tcp, 80),
        (VIP6.into(), Proto::Udp, 443),
    ]
}

/// What the program did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Steered {
    Steer,
    Pass,
    Drop,
}

struct Harness {
    ebpf: Ebpf,
    snap: Snapshot,
    worker: Worker,
}

impl Harness {
    fn new() -> Harness {
        let mut ebpf = load().expect("loading the steering program (the verifier accepts it)");
        let vips: Vec<Vip> = services()
            .iter()
            .map(|&(addr, proto, port)| Vip {
                addr,
                proto: proto.number(),
                port,
            })
            .collect();
        set_vips(&mut ebpf, &vips).unwrap();
        set_mac(&mut ebpf, GW_MAC).unwrap();
        let cfg = SnapshotConfig {
            generation: 1,
            vips: services()
                .iter()
                .map(|&(addr, proto, port)| VipConfig {
                    key: crate::snapshot::VipKey { addr, proto, port },
                    backends: vec![BackendConfig {
                        addr: if addr.is_ipv4() {
                            NODE4.into()
                        } else {
                            NODE6.into()
                        },
                        weight: 1,
                    }],
                    hash: HashMode::FiveTuple,
                    encap: Encap::IpIp,
                })
                .collect(),
            outer_src_v4: Some(SourcePrefix {
                addr: Ipv4Addr::new(172, 16, 0, 1),
                len: 32,
            }),
            outer_src_v6: Some(SourcePrefix {
                addr: Ipv6Addr::new(0xfd00, 0xff, 0, 0, 0, 0, 0, 1),
                len: 128,
            }),
            local_mac: GW_MAC,
            next_hops: [
                (IpAddr::from(NODE4), [2, 0, 0, 0, 0x0a, 0x0b]),
                (IpAddr::from(NODE6), [2, 0, 0, 0, 0x06, 0x11]),
            ]
            .into(),
            ..SnapshotConfig::default()
        };
        Harness {
            ebpf,
            snap: Snapshot::new(&cfg).unwrap(),
            worker: Worker::new(WorkerConfig {
                flow_capacity: 1024,
                ..WorkerConfig::default()
            }),
        }
    }

    /// Runs the program on `frame`: the return value and the one counter it bumped say what
    /// it did (no socket is bound, so a steered frame falls back to XDP_PASS as `no_socket`).
    fn steer(&mut self, frame: &[u8]) -> Steered {
        let before = counters(&self.ebpf).unwrap();
        let ret = super::super::xdp_program(&mut self.ebpf, PROGRAM)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN")
            .return_value;
        let after = counters(&self.ebpf).unwrap();
        let delta = (
            after.no_socket - before.no_socket,
            after.passed - before.passed,
            after.dropped - before.dropped,
            after.redirected + after.shed - before.redirected - before.shed,
        );
        match (ret, delta) {
            (XDP_PASS, (1, 0, 0, 0)) => Steered::Steer,
            (XDP_PASS, (0, 1, 0, 0)) => Steered::Pass,
            (XDP_DROP, (0, 0, 1, 0)) => Steered::Drop,
            other => panic!("return value and counter deltas disagree: {other:?}"),
        }
    }

    fn pipeline(&mut self, frame: &[u8]) -> Verdict {
        common::run(&mut self.worker, &self.snap, NOW, frame).0
    }

    /// Runs both on `frame`; an error if they disagree. A frame to another station's
    /// unicast MAC address never reaches a worker: the program must pass it (the kernel
    /// drops it), whatever the pipeline would make of it.
    fn both(&mut self, frame: &[u8]) -> Result<Steered, String> {
        let s = self.steer(frame);
        if frame[0] & 1 == 0 && frame[..6] != GW_MAC {
            return match s {
                Steered::Pass => Ok(s),
                _ => Err(format!(
                    "{s:?}, but it is for another station's MAC address"
                )),
            };
        }
        let v = self.pipeline(frame);
        match (s, v) {
            (Steered::Steer, Verdict::Pass) => {
                Err(format!("steered, but the pipeline passes it (lost): {v:?}"))
            }
            (Steered::Pass | Steered::Drop, Verdict::Tx { .. } | Verdict::Reply { .. }) => Err(
                format!("the pipeline forwards it ({v:?}), but the program says {s:?}"),
            ),
            _ => Ok(s),
        }
    }

    fn check(&mut self, cases: &[(&str, Vec<u8>, Steered)]) {
        let mut failures = Vec::new();
        for (name, frame, want) in cases {
            match self.both(frame) {
                Ok(got) if got == *want => {}
                Ok(got) => failures.push(format!("{name}: {got:?}, want {want:?}")),
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }
}

/// An Ethernet frame from the router with VLAN tags of the given TPIDs (outermost first).
fn tagged(tpids: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    for (i, tpid) in tpids.iter().enumerate().skip(1) {
        inner.extend(tpid.to_be_bytes());
        inner.extend((100 + i as u16).to_be_bytes());
    }
    inner.extend(ethertype.to_be_bytes());
    inner.extend(payload);
    match tpids.first() {
        None => eth(GW_MAC, ROUTER_MAC, ethertype, payload),
        Some(&outer) => {
            let mut tci = 100u16.to_be_bytes().to_vec();
            tci.extend(inner);
            eth(GW_MAC, ROUTER_MAC, outer, &tci)
        }
    }
}

fn eth4(ip: &[u8]) -> Vec<u8> {
    tagged(&[], ETH_IPV4, ip)
}

fn eth6(ip: &[u8]) -> Vec<u8> {
    tagged(&[], ETH_IPV6, ip)
}

fn tcp4(dport: u16) -> Vec<u8> {
    let t = tcp_syn(CLIENT4.into(), VIP4.into(), 40000, dport);
    ipv4(CLIENT4, VIP4, PROTO_TCP, &t)
}

fn tcp6_segment(dport: u16) -> Vec<u8> {
    tcp_syn(CLIENT6.into(), VIP6.into(), 40000, dport)
}

/// `upper` (protocol `proto`) behind the extension headers `kinds`, first to last: the first
/// header's Next Header value and the bytes.
fn ext_chain(kinds: &[u8], proto: u8, upper: &[u8]) -> (u8, Vec<u8>) {
    let (mut next, mut bytes) = (proto, upper.to_vec());
    for &kind in kinds.iter().rev() {
        let mut h = match kind {
            // Payload length 4: (4 + 2) * 4 = 24 bytes, SPI, sequence and a 12-byte ICV.
            AH => [&[next, 4, 0, 0][..], &[0, 0, 1, 0, 0, 0, 0, 7], &[0xa5; 12]].concat(),
            FRAGMENT => ipv6_frag_hdr(next, 0, false, &[]),
            // 8 bytes: PadN for options, segments left 0 for routing.
            _ => vec![next, 0, 1, 4, 0, 0, 0, 0],
        };
        h.extend(bytes);
        (next, bytes) = (kind, h);
    }
    (next, bytes)
}

/// TCP from the client to VIP6:80 behind `kinds`.
fn tcp6_behind(kinds: &[u8]) -> Vec<u8> {
    let (next, payload) = ext_chain(kinds, PROTO_TCP, &tcp6_segment(80));
    ipv6(CLIENT6, VIP6, next, &payload)
}

/// The backend's reply from VIP4:`sport` to the client, as an ICMP error quotes it (header
/// and 8 bytes); `frag` as for `ipv4_frag`.
fn quoted4(proto: u8, sport: u16, frag: (u16, bool)) -> Vec<u8> {
    let mut l4 = sport.to_be_bytes().to_vec();
    l4.extend(40000u16.to_be_bytes());
    l4.extend([0, 0, 0, 1]);
    ipv4_frag(VIP4, CLIENT4, proto, frag, &l4)
}

/// An ICMPv4 error from the router to `dst` (the VIP, normally).
fn icmp4_error_to(dst: Ipv4Addr, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    ipv4(ROUTER4, dst, PROTO_ICMP, &icmp4(kind, code, [0; 4], quoted))
}

/// The backend's reply from VIP6:`sport` to the client behind `kinds`, as quoted.
fn quoted6(kinds: &[u8], sport: u16) -> Vec<u8> {
    let mut l4 = sport.to_be_bytes().to_vec();
    l4.extend(40000u16.to_be_bytes());
    l4.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0, 0, 0, 0, 0, 0]);
    let (next, payload) = ext_chain(kinds, PROTO_TCP, &l4);
    ipv6(VIP6, CLIENT6, next, &payload)
}

fn icmp6_error(kind: u8, quoted: &[u8]) -> Vec<u8> {
    let m = icmp6(ROUTER6, VIP6, kind, 0, [0, 0, 0x05, 0x00], quoted);
    ipv6(ROUTER6, VIP6, PROTO_ICMPV6, &m)
}

#[test]
fn key_layout_matches_the_c_struct() {
    assert_eq!(std::mem::size_of::<VipKey>(), 20);
    let v = Vip::tcp("192.0.2.10".parse().unwrap(), 80);
    let k = VipKey::service(&v);
    // SAFETY: VipKey is Pod (see steer.rs), so viewing it as bytes is sound.
    let bytes: [u8; 20] = unsafe { std::mem::transmute(k) };
    assert_eq!(&bytes[10..16], &[0xff, 0xff, 192, 0, 2, 10]);
    assert_eq!(&bytes[16..20], &[0, 80, 6, 0]);
    assert_eq!(VipKey::address(&v).port_be, 0);
}

#[test]
fn steers_what_the_pipeline_handles_and_nothing_it_passes() {
    if !require_privileges("steering program test run") {
        return;
    }
    let mut h = Harness::new();
    let seg80 = tcp6_segment(80);
    let seg81 = tcp6_segment(81);
    let atomic = |seg: &[u8]| {
        let f = ipv6_frag_hdr(PROTO_TCP, 0, false, seg);
        eth6(&ipv6(CLIENT6, VIP6, FRAGMENT, &f))
    };
    let mut jumbo = tcp6_behind(&[]);
    jumbo[4..6].copy_from_slice(&[0, 0]);
    let mut bad_ihl_quote = quoted4(PROTO_TCP, 80, (185, false));
    bad_ihl_quote[0] = 0x44;
    let icmp4_in_fragment = ipv4_frag(
        ROUTER4,
        VIP4,
        PROTO_ICMP,
        (0, true),
        &icmp4(3, 4, [0, 0, 5, 0xdc], &quoted4(PROTO_TCP, 80, (0, false))),
    );
    let ptb6_in_fragment = {
        let m = icmp6(ROUTER6, VIP6, 2, 0, [0, 0, 5, 0], &quoted6(&[], 80));
        ipv6(
            ROUTER6,
            VIP6,
            FRAGMENT,
            &ipv6_frag_hdr(PROTO_ICMPV6, 0, true, &m),
        )
    };
    // One datagram whose Fragmentable Part starts with a Destination Options header (RFC 8200
    // §4.5): the later fragment's Fragment header names it too, but fragment data follows.
    let c6: IpAddr = CLIENT6.into();
    let dns = udp(c6, VIP6.into(), 5353, 443, &[0x47; 40]);
    let destopts_first = ipv6_frag_hdr(DSTOPTS, 0, true, &ipv6_dstopts(PROTO_UDP, &dns));
    // Not a header: read as one it is Next Header 0xab, 0xab * 8 + 8 bytes long.
    let destopts_later = ipv6_frag_hdr(DSTOPTS, 7, false, &[0xab; 32]);
    // What the data of a later fragment may look like: a destination options header to UDP
    // port 81 (no VIP), or one to the TCP VIP port.
    let later_data_81 = ipv6_dstopts(PROTO_UDP, &udp(c6, VIP6.into(), 5353, 81, &[]));
    let later_data_tcp80 = ipv6_dstopts(PROTO_TCP, &seg80);
    let v6frag = |f: Vec<u8>| eth6(&ipv6(CLIENT6, VIP6, FRAGMENT, &f));
    // A frame to the group MAC address `mac` (the I/G bit set).
    let to_group = |mac: [u8; 6], mut f: Vec<u8>| {
        f[..6].copy_from_slice(&mac);
        f
    };
    const BROADCAST: [u8; 6] = [0xff; 6];
    const MULTICAST4: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
    const MULTICAST6: [u8; 6] = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];
    // VIP4 as an IPv6 address, the way the VIP table keys it: ::ffff:192.0.2.10.
    let mapped_vip4 = VIP4.to_ipv6_mapped();
    let to_mapped_vip4 = {
        let t = tcp_syn(CLIENT6.into(), mapped_vip4.into(), 40000, 80);
        ipv6(CLIENT6, mapped_vip4, PROTO_TCP, &t)
    };
    let icmp6_error_to_mapped_vip4 = {
        let mut l4 = 80u16.to_be_bytes().to_vec();
        l4.extend([0x9c, 0x40, 0, 0, 0, 1]);
        let quoted = ipv6(mapped_vip4, CLIENT6, PROTO_TCP, &l4);
        let m = icmp6(ROUTER6, mapped_vip4, 1, 4, [0; 4], &quoted);
        ipv6(ROUTER6, mapped_vip4, PROTO_ICMPV6, &m)
    };
    // A frame to another station's unicast MAC address (a veth or a promiscuous NIC
    // delivers those).
    let to_other = |mut f: Vec<u8>| {
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x99]);
        f
    };
    use Steered::*;
    h.check(&[
        // Another station's MAC address: the kernel's, which drops it.
        (
            "tcp4 SYN to VIP:80, another station's MAC",
            to_other(eth4(&tcp4(80))),
            Pass,
        ),
        (
            "tcp6 SYN to VIP6:80, another station's MAC, one 802.1Q tag",
            to_other(tagged(&[0x8100], ETH_IPV6, &tcp6_behind(&[]))),
            Pass,
        ),
        (
            "malformed, to VIP:80, another station's MAC",
            to_other(eth4(&{
                let mut p = tcp4(80);
                p[0] = 0x43;
                p
            })),
            Pass,
        ),
        // A group destination MAC address (RFC 1812 §5.3.4: not forwarded), whatever it
        // carries, is the kernel's.
        (
            "tcp4 SYN to VIP:80, broadcast MAC",
            to_group(BROADCAST, eth4(&tcp4(80))),
            Pass,
        ),
        (
            "tcp4 SYN to VIP:80, IPv4 multicast MAC",
            to_group(MULTICAST4, eth4(&tcp4(80))),
            Pass,
        ),
        (
            "tcp4 SYN to VIP:80, multicast MAC, one 802.1Q tag",
            to_group(MULTICAST4, tagged(&[0x8100], ETH_IPV4, &tcp4(80))),
            Pass,
        ),
        (
            "tcp6 SYN to VIP6:80, IPv6 multicast MAC",
            to_group(MULTICAST6, eth6(&tcp6_behind(&[]))),
            Pass,
        ),
        (
            "later fragment to VIP, broadcast MAC",
            to_group(
                BROADCAST,
                eth4(&ipv4_frag(CLIENT4, VIP4, PROTO_UDP, (185, false), &[9; 24])),
            ),
            Pass,
        ),
        (
            "icmp4 error quoting VIP:80, broadcast MAC",
            to_group(
                BROADCAST,
                eth4(&icmp4_error_to(
                    VIP4,
                    3,
                    4,
                    &quoted4(PROTO_TCP, 80, (0, false)),
                )),
            ),
            Pass,
        ),
        // IPv6 to ::ffff:VIP4 (RFC 4291 §2.5.5.2: no destination on the wire) is not VIP4's.
        ("tcp6 SYN to ::ffff:VIP4:80", eth6(&to_mapped_vip4), Pass),
        (
            "later IPv6 fragment to ::ffff:VIP4",
            eth6(&ipv6(
                CLIENT6,
                mapped_vip4,
                FRAGMENT,
                &ipv6_frag_hdr(PROTO_TCP, 100, false, &[7; 16]),
            )),
            Pass,
        ),
        (
            "icmp6 error to ::ffff:VIP4 quoting a packet from it",
            eth6(&icmp6_error_to_mapped_vip4),
            Pass,
        ),
        // From an IPv4-mapped source to a real IPv6 VIP: steered, and the pipeline drops it
        // (bad_source; checked below).
        (
            "tcp6 SYN from ::ffff:CLIENT4 to VIP6:80",
            eth6(&ipv6(
                CLIENT4.to_ipv6_mapped(),
                VIP6,
                PROTO_TCP,
                &tcp_syn(CLIENT4.to_ipv6_mapped().into(), VIP6.into(), 40000, 80),
            )),
            Steer,
        ),
        (
            "first fragment, destination options in the fragmentable part",
            v6frag(destopts_first),
            Steer,
        ),
        (
            "later fragment, destination options in the fragmentable part",
            v6frag(destopts_later),
            Steer,
        ),
        (
            "later fragment, AH in the fragmentable part",
            v6frag(ipv6_frag_hdr(AH, 7, true, &[0xab; 32])),
            Steer,
        ),
        (
            "later fragment whose data looks like headers to UDP port 81",
            v6frag(ipv6_frag_hdr(DSTOPTS, 7, false, &later_data_81)),
            Steer,
        ),
        (
            "later fragment whose data looks like headers to TCP port 80",
            v6frag(ipv6_frag_hdr(DSTOPTS, 7, false, &later_data_tcp80)),
            Steer,
        ),
        (
            "later fragment to another address",
            eth6(&ipv6(
                CLIENT6,
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99),
                FRAGMENT,
                &ipv6_frag_hdr(DSTOPTS, 7, false, &[0xab; 32]),
            )),
            Pass,
        ),
        (
            "later fragment of ICMPv6",
            v6frag(ipv6_frag_hdr(PROTO_ICMPV6, 7, false, &[0xab; 32])),
            Pass,
        ),
        ("tcp4 untagged", eth4(&tcp4(80)), Steer),
        ("tcp4 to a port that is no VIP", eth4(&tcp4(81)), Pass),
        // Port 0 is no service; the pipeline keys its fragment VIP under port 0.
        ("tcp4 to port 0", eth4(&tcp4(0)), Pass),
        (
            "icmp4 error quoting VIP:0",
            eth4(&icmp4_error_to(
                VIP4,
                3,
                1,
                &quoted4(PROTO_TCP, 0, (0, false)),
            )),
            Pass,
        ),
        // VLAN: one 802.1Q tag, as the pipeline; anything else is the kernel's.
        (
            "one 802.1Q tag",
            tagged(&[0x8100], ETH_IPV4, &tcp4(80)),
            Steer,
        ),
        (
            "one 802.1ad tag",
            tagged(&[0x88a8], ETH_IPV4, &tcp4(80)),
            Pass,
        ),
        (
            "QinQ: 802.1ad then 802.1Q",
            tagged(&[0x88a8, 0x8100], ETH_IPV4, &tcp4(80)),
            Pass,
        ),
        (
            "two 802.1Q tags",
            tagged(&[0x8100, 0x8100], ETH_IPV4, &tcp4(80)),
            Pass,
        ),
        (
            "802.1Q then IPv6",
            tagged(&[0x8100], ETH_IPV6, &tcp6_behind(&[])),
            Steer,
        ),
        // IPv6 extension headers: the pipeline walks six, AH included.
        (
            "5 extension headers",
            eth6(&tcp6_behind(&[
                HOPOPTS, DSTOPTS, ROUTING, FRAGMENT, DSTOPTS,
            ])),
            Steer,
        ),
        (
            "6 extension headers",
            eth6(&tcp6_behind(&[
                HOPOPTS, DSTOPTS, ROUTING, FRAGMENT, AH, DSTOPTS,
            ])),
            Steer,
        ),
        (
            "7 extension headers (the pipeline drops them)",
            eth6(&tcp6_behind(&[DSTOPTS; 7])),
            Pass,
        ),
        ("AH", eth6(&tcp6_behind(&[AH])), Steer),
        (
            "AH to a port that is no VIP",
            eth6(&{
                let (next, p) = ext_chain(&[AH], PROTO_TCP, &seg81);
                ipv6(CLIENT6, VIP6, next, &p)
            }),
            Pass,
        ),
        // An atomic fragment (RFC 6946) is a whole datagram: it goes by its port.
        ("atomic fragment to VIP:80", atomic(&seg80), Steer),
        ("atomic fragment to VIP:81", atomic(&seg81), Pass),
        (
            "later IPv6 fragment",
            eth6(&ipv6(
                CLIENT6,
                VIP6,
                FRAGMENT,
                &ipv6_frag_hdr(PROTO_TCP, 100, false, &[7; 16]),
            )),
            Steer,
        ),
        ("IPv6 payload length 0 to a VIP", eth6(&jumbo), Drop),
        // ICMPv4 errors: destination unreachable, time exceeded, parameter problem.
        (
            "icmp4 parameter problem quoting VIP:80",
            eth4(&icmp4_error_to(
                VIP4,
                12,
                0,
                &quoted4(PROTO_TCP, 80, (0, false)),
            )),
            Steer,
        ),
        (
            "icmp4 parameter problem quoting a later fragment from the VIP",
            eth4(&icmp4_error_to(
                VIP4,
                12,
                0,
                &quoted4(PROTO_UDP, 53, (185, false)),
            )),
            Steer,
        ),
        (
            "icmp4 parameter problem quoting VIP:81",
            eth4(&icmp4_error_to(
                VIP4,
                12,
                0,
                &quoted4(PROTO_TCP, 81, (0, false)),
            )),
            Pass,
        ),
        (
            "icmp4 time exceeded quoting VIP:53",
            eth4(&icmp4_error_to(
                VIP4,
                11,
                0,
                &quoted4(PROTO_UDP, 53, (0, false)),
            )),
            Steer,
        ),
        (
            "icmp4 source quench quoting VIP:80",
            eth4(&icmp4_error_to(
                VIP4,
                4,
                0,
                &quoted4(PROTO_TCP, 80, (0, false)),
            )),
            Pass,
        ),
        (
            "icmp4 error to another address quoting VIP:80",
            eth4(&icmp4_error_to(
                Ipv4Addr::new(192, 0, 2, 99),
                3,
                4,
                &quoted4(PROTO_TCP, 80, (0, false)),
            )),
            Pass,
        ),
        (
            "icmp4 error quoting a header with IHL 4",
            eth4(&icmp4_error_to(VIP4, 3, 4, &bad_ihl_quote)),
            Pass,
        ),
        ("icmp4 error in a fragment", eth4(&icmp4_in_fragment), Pass),
        // ICMPv6 errors: every type below 128, quoted headers walked as the packet's own.
        (
            "icmp6 packet too big quoting VIP6:80",
            eth6(&icmp6_error(2, &quoted6(&[], 80))),
            Steer,
        ),
        (
            "icmp6 parameter problem quoting VIP6:80 behind AH and a fragment header",
            eth6(&icmp6_error(4, &quoted6(&[HOPOPTS, AH, FRAGMENT], 80))),
            Steer,
        ),
        (
            "icmp6 error quoting 6 extension headers",
            eth6(&icmp6_error(
                1,
                &quoted6(&[HOPOPTS, DSTOPTS, ROUTING, AH, FRAGMENT, DSTOPTS], 80),
            )),
            Steer,
        ),
        (
            "icmp6 unassigned error type quoting VIP6:80",
            eth6(&icmp6_error(100, &quoted6(&[], 80))),
            Steer,
        ),
        (
            "icmp6 echo request to the VIP",
            eth6(&icmp6_error(128, &quoted6(&[], 80))),
            Pass,
        ),
        ("icmp6 error in a fragment", eth6(&ptb6_in_fragment), Pass),
        (
            "icmp6 error quoting a later fragment, destination options in its fragmentable part",
            eth6(&icmp6_error(
                1,
                &ipv6(
                    VIP6,
                    CLIENT6,
                    FRAGMENT,
                    &ipv6_frag_hdr(DSTOPTS, 7, false, &[0xab; 24]),
                ),
            )),
            Steer,
        ),
    ]);
    let mapped_source = eth6(&ipv6(
        CLIENT4.to_ipv6_mapped(),
        VIP6,
        PROTO_TCP,
        &tcp_syn(CLIENT4.to_ipv6_mapped().into(), VIP6.into(), 40000, 80),
    ));
    assert_eq!(
        h.pipeline(&mapped_source),
        Verdict::Drop(crate::pipeline::DropReason::BadSource)
    );
}

#[test]
fn only_tcp_and_udp_services_are_accepted() {
    if !require_privileges("steering program load") {
        return;
    }
    let mut ebpf = load().unwrap();
    let sctp = Vip {
        addr: VIP4.into(),
        proto: 132,
        port: 80,
    };
    let err = set_vips(&mut ebpf, &[Vip::tcp(VIP4.into(), 80), sctp]).unwrap_err();
    assert!(err.to_string().contains("protocol 132"), "{err}");
}

/// A full set of services replaces another full set (the maps hold both while the new
/// entries go in before the stale ones leave), and one service more is refused before any
/// entry changes: a map that filled up half-way used to leave a partial set behind.
#[test]
fn a_full_set_replaces_a_full_set_and_a_larger_one_changes_nothing() {
    if !require_privileges("steering program load") {
        return;
    }
    let mut ebpf = load().unwrap();
    let set = |proto: fn(IpAddr, u16) -> Vip, n: usize| -> Vec<Vip> {
        (1..=n as u16)
            .map(|port| proto(VIP4.into(), port))
            .collect()
    };
    let steered = |ebpf: &Ebpf| -> BTreeSet<VipKey> {
        let map: HashMap<_, VipKey, u8> = HashMap::try_from(ebpf.map("vips").unwrap()).unwrap();
        map.keys().map(|k| k.unwrap()).collect()
    };
    let (tcp, udp) = (set(Vip::tcp, MAX_VIPS), set(Vip::udp, MAX_VIPS));
    set_vips(&mut ebpf, &tcp).unwrap();
    set_vips(&mut ebpf, &udp).unwrap();
    let want: BTreeSet<VipKey> = udp.iter().map(VipKey::service).collect();
    assert_eq!(steered(&ebpf), want);
    let err = set_vips(&mut ebpf, &set(Vip::tcp, MAX_VIPS + 1)).unwrap_err();
    assert!(err.to_string().contains("the limit is 4096"), "{err}");
    assert_eq!(steered(&ebpf), want);
}

/// A known-good frame to mutate: TCP, UDP, fragments and ICMP errors, both families.
fn seeds() -> Vec<(u16, Vec<u8>)> {
    let c4: IpAddr = CLIENT4.into();
    let v4: IpAddr = VIP4.into();
    let (c6, v6): (IpAddr, IpAddr) = (CLIENT6.into(), VIP6.into());
    vec![
        (ETH_IPV4, tcp4(80)),
        (ETH_IPV4, tcp4(81)),
        (
            ETH_IPV4,
            ipv4(CLIENT4, VIP4, PROTO_UDP, &udp(c4, v4, 5353, 53, b"query")),
        ),
        (
            ETH_IPV4,
            ipv4_frag(CLIENT4, VIP4, PROTO_UDP, (185, false), &[9; 24]),
        ),
        (
            ETH_IPV4,
            icmp4_error_to(VIP4, 12, 0, &quoted4(PROTO_TCP, 80, (0, false))),
        ),
        (
            ETH_IPV4,
            icmp4_error_to(VIP4, 3, 4, &quoted4(PROTO_UDP, 53, (185, false))),
        ),
        (ETH_IPV6, tcp6_behind(&[])),
        (ETH_IPV6, tcp6_behind(&[HOPOPTS, AH, FRAGMENT, DSTOPTS])),
        (
            ETH_IPV6,
            tcp6_behind(&[HOPOPTS, DSTOPTS, ROUTING, AH, FRAGMENT, DSTOPTS]),
        ),
        (
            ETH_IPV6,
            ipv6(
                CLIENT6,
                VIP6,
                FRAGMENT,
                &ipv6_frag_hdr(PROTO_UDP, 100, true, &[7; 16]),
            ),
        ),
        (ETH_IPV6, icmp6_error(2, &quoted6(&[], 80))),
        (ETH_IPV6, icmp6_error(1, &quoted6(&[AH, FRAGMENT], 80))),
        // Fragments whose Fragmentable Part starts with a destination options header.
        (
            ETH_IPV6,
            ipv6(
                CLIENT6,
                VIP6,
                FRAGMENT,
                &ipv6_frag_hdr(
                    DSTOPTS,
                    0,
                    true,
                    &ipv6_dstopts(PROTO_UDP, &udp(c6, v6, 5353, 443, &[1; 8])),
                ),
            ),
        ),
        (
            ETH_IPV6,
            ipv6(
                CLIENT6,
                VIP6,
                FRAGMENT,
                &ipv6_frag_hdr(DSTOPTS, 7, false, &[0xab; 24]),
            ),
        ),
        // IPv4-mapped addresses: to VIP4's mapped form, and from a mapped source to VIP6.
        (
            ETH_IPV6,
            ipv6(
                CLIENT6,
                VIP4.to_ipv6_mapped(),
                PROTO_TCP,
                &tcp_syn(c6, VIP4.to_ipv6_mapped().into(), 40000, 80),
            ),
        ),
        (
            ETH_IPV6,
            ipv6(
                CLIENT4.to_ipv6_mapped(),
                VIP6,
                PROTO_UDP,
                &udp(CLIENT4.to_ipv6_mapped().into(), v6, 5353, 443, b"q"),
            ),
        ),
    ]
}

/// Recomputes an IPv4 header checksum, so that mutated packets get past that check.
/// Mutated frames (a few header bytes overwritten, often with values that matter to the
/// parsers, different tags, truncated): the two sides never disagree.
#[test]
fn program_and_pipeline_agree_on_mutated_frames() {
    if !require_privileges("steering program test run") {
        return;
    }
    // TestRunner takes an `Fn`.
    let h = std::cell::RefCell::new(Harness::new());
    let seeds = seeds();
    let tags: [&[u16]; 5] = [
        &[],
        &[0x8100],
        &[0x88a8],
        &[0x88a8, 0x8100],
        &[0x8100, 0x8100],
    ];
    let interesting = prop_oneof![
        any::<u8>(),
        proptest::sample::select(vec![
            0u8,
            1,
            2,
            3,
            4,
            5,
            6,
            11,
            12,
            17,
            0x20,
            0x40,
            0x44,
            0x45,
            0x60,
            HOPOPTS,
            ROUTING,
            FRAGMENT,
            AH,
            PROTO_ICMPV6,
            DSTOPTS,
            128,
            0xff
        ]),
    ];
    let strategy = (
        0..seeds.len(),
        // Untagged more often than not.
        0..2 * tags.len(),
        proptest::collection::vec((0usize..160, interesting), 0..4),
        proptest::option::weighted(0.2, 0usize..200),
        any::<bool>(),
        // Now and then to a group (broadcast, multicast) MAC address, or to another
        // station's.
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.05),
    );
    const CASES: u32 = 4096;
    // How often each side decided each way: the mutations must reach both decisions.
    let tally = std::cell::RefCell::new([0u32; 2]);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |(seed, tag, edits, cut, fix, group, other)| {
            let (ethertype, ref ip) = seeds[seed];
            let mut ip = ip.clone();
            for (at, b) in edits {
                let n = ip.len();
                ip[at % n] = b;
            }
            if fix {
                fix_ipv4_checksum(&mut ip);
            }
            let mut frame = tagged(tags.get(tag).copied().unwrap_or(&[]), ethertype, &ip);
            if group {
                frame[0] |= 1;
            }
            if other {
                frame[5] ^= 0x80;
            }
            if let Some(len) = cut {
                frame.truncate(len.max(14));
            }
            let s = h
                .borrow_mut()
                .both(&frame)
                .map_err(|e| TestCaseError::fail(format!("{e}\nframe {frame:02x?}")))?;
            tally.borrow_mut()[usize::from(s == Steered::Steer)] += 1;
            Ok(())
        })
        .unwrap();
    let [other, steered] = *tally.borrow();
    assert!(
        steered > CASES / 10 && other > CASES / 10,
        "steered {steered}, passed or dropped {other}"
    );
}
