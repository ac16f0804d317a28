//! decap.c loaded but never attached, run on frames with BPF_PROG_TEST_RUN: what it hands
//! the kernel, byte for byte, where a socket test (tests/tests/decap.rs) cannot look.

use super::*;
use crate::pipeline::{Frame, Verdict, Worker, WorkerConfig};
use crate::snapshot::{
    BackendConfig, Encap, Proto, Snapshot, SnapshotConfig, SourcePrefix, VipConfig, VipKey,
};
use aya::programs::{TestRun, TestRunOptions};
use dsrgate_tests::frames::*;
use dsrgate_tests::require_privileges;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NODE4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
const GW4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const GW6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x100);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10);
const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const GUE_PORT: u16 = 6080;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const NOT_ECT: u8 = 0;
const ECT1: u8 = 1;
const ECT0: u8 = 2;
const CE: u8 = 3;

fn program() -> Ebpf {
    load(&DecapConfig {
        addresses: vec![NODE4.into(), NODE6.into()],
        gue_port: Some(GUE_PORT),
    })
    .expect("loading the decap program (the verifier accepts it)")
}

/// The program's verdict on `frame` and the frame it leaves behind.
fn run(ebpf: &mut Ebpf, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let r = super::super::xdp_program(ebpf, PROGRAM)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// A UDP packet from the client to the VIP of the family `v6`, with ECN field `ecn`.
fn inner(v6: bool, ecn: u8) -> Vec<u8> {
    let mut p = inner_carrying(v6, b"inner");
    set_ecn(&mut p, ecn);
    p
}

/// A UDP packet from the client to the VIP of the family `v6` carrying `payload`.
fn inner_carrying(v6: bool, payload: &[u8]) -> Vec<u8> {
    if v6 {
        let u = udp(CLIENT6.into(), VIP6.into(), 40000, 80, payload);
        ipv6(CLIENT6, VIP6, PROTO_UDP, &u)
    } else {
        let u = udp(CLIENT4.into(), VIP4.into(), 40000, 80, payload);
        ipv4(CLIENT4, VIP4, PROTO_UDP, &u)
    }
}

/// `payload` in an outer header of the family `v6` to the node, with ECN field `ecn`, in a
/// frame to the node.
fn tunnelled(v6: bool, ecn: u8, payload: &[u8]) -> Vec<u8> {
    let next = if payload[0] >> 4 == 6 {
        PROTO_IPV6
    } else {
        PROTO_IPIP
    };
    outer(v6, next, ecn, payload)
}

/// `payload`, of protocol `next`, in an outer header of the family `v6` from the gateway to
/// the node, with ECN field `ecn`, in a frame to the node.
fn outer(v6: bool, next: u8, ecn: u8, payload: &[u8]) -> Vec<u8> {
    let (ethertype, mut outer) = if v6 {
        (ETH_IPV6, ipv6(GW6, NODE6, next, payload))
    } else {
        (ETH_IPV4, ipv4(GW4, NODE4, next, payload))
    };
    set_ecn(&mut outer, ecn);
    eth(NODE_MAC, GW_MAC, ethertype, &outer)
}

/// `packet` in GUE version 1 (its IP header right after the UDP header) over an outer header
/// of the family `v6`, in a frame to the node. The UDP checksum is the one `frames::udp`
/// computes, apart from the program; never 0 (RFC 768 sends a computed 0 as 0xffff).
fn gue(v6: bool, packet: &[u8]) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (GW6.into(), NODE6.into())
    } else {
        (GW4.into(), NODE4.into())
    };
    outer(
        v6,
        PROTO_UDP,
        NOT_ECT,
        &udp(src, dst, 5555, GUE_PORT, packet),
    )
}

/// Where the outer UDP header starts in a frame from [`gue`].
fn udp_at(v6: bool) -> usize {
    14 + if v6 { 40 } else { 20 }
}

fn inner_frame(packet: &[u8]) -> Vec<u8> {
    let ethertype = if packet[0] >> 4 == 6 {
        ETH_IPV6
    } else {
        ETH_IPV4
    };
    eth(NODE_MAC, GW_MAC, ethertype, packet)
}

/// RFC 6040 §4.2 (normal mode), for every outer and inner family: an outer CE marks an
/// ECN-capable inner packet CE (with a correct IPv4 checksum) and drops a Not-ECT one;
/// any other outer field leaves the inner packet as it was. The program used to ignore
/// the outer field, so a congestion mark on the way to the node was lost.
#[test]
fn congestion_marks_reach_the_inner_packet() {
    if !require_privileges("decap program load") {
        return;
    }
    let mut ebpf = program();
    let mut failures = Vec::new();
    for (outer_v6, inner_v6) in [(false, false), (false, true), (true, false), (true, true)] {
        for outer_ecn in [NOT_ECT, ECT1, ECT0, CE] {
            for inner_ecn in [NOT_ECT, ECT1, ECT0, CE] {
                let frame = tunnelled(outer_v6, outer_ecn, &inner(inner_v6, inner_ecn));
                let want = match (outer_ecn, inner_ecn) {
                    (CE, NOT_ECT) => (XDP_DROP, None),
                    (CE, _) => (XDP_PASS, Some(inner_frame(&inner(inner_v6, CE)))),
                    _ => (XDP_PASS, Some(inner_frame(&inner(inner_v6, inner_ecn)))),
                };
                let (ret, out) = run(&mut ebpf, &frame);
                let got = (ret, (ret == XDP_PASS).then_some(out));
                if got != want {
                    failures.push(format!(
                        "outer v6 {outer_v6} ecn {outer_ecn}, inner v6 {inner_v6} ecn {inner_ecn}: got {got:?}, want {want:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// An outer IPv4 header whose checksum is wrong is not decapsulated: the kernel drops it,
/// as it would before its own tunnel saw it. Decapsulating it would launder the
/// corruption into a valid inner packet.
#[test]
fn a_corrupt_outer_ipv4_header_goes_to_the_kernel_as_it_is() {
    if !require_privileges("decap program load") {
        return;
    }
    let mut ebpf = program();
    let good = tunnelled(false, NOT_ECT, &inner(false, NOT_ECT));
    assert_eq!(
        run(&mut ebpf, &good),
        (XDP_PASS, inner_frame(&inner(false, NOT_ECT)))
    );
    let mut bad = good.clone();
    bad[14 + 10] ^= 0x40;
    assert_eq!(run(&mut ebpf, &bad), (XDP_PASS, bad.clone()));
    // With IPv4 options the checksum covers them too.
    let mut opts = ipv4(GW4, NODE4, PROTO_IPIP, &inner(false, NOT_ECT));
    opts[0] = 0x46;
    opts.splice(20..20, [1, 1, 1, 0]);
    let len = opts.len() as u16;
    opts[2..4].copy_from_slice(&len.to_be_bytes());
    fix_ipv4_checksum(&mut opts);
    let frame = eth(NODE_MAC, GW_MAC, ETH_IPV4, &opts);
    assert_eq!(
        run(&mut ebpf, &frame),
        (XDP_PASS, inner_frame(&inner(false, NOT_ECT)))
    );
    let mut bad = frame.clone();
    bad[14 + 21] ^= 1;
    assert_eq!(run(&mut ebpf, &bad), (XDP_PASS, bad.clone()));
}

/// The outer UDP checksum is verified as the kernel's udp_rcv would before fou saw the
/// packet, over the pseudo-header and the whole datagram: for every datagram length from
/// a bare GUE packet to past two bpf_csum_diff chunks (every odd tail, every piece below
/// 512 bytes), and a 1400-byte frame, a correct checksum is decapsulated and one byte
/// changed at the datagram's end or middle is passed to the kernel unchanged. The program
/// used to decapsulate them all, turning a corrupt datagram into a valid inner packet.
#[test]
fn gue_checksums_are_verified_over_every_length() {
    if !require_privileges("decap program load") {
        return;
    }
    let mut ebpf = program();
    let mut failures = Vec::new();
    for v6 in [false, true] {
        let bare = inner_carrying(v6, b"").len();
        let fill = (0..1100).chain([1400 - udp_at(v6) - 8 - bare]);
        for n in fill {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let packet = inner_carrying(v6, &payload);
            let good = gue(v6, &packet);
            let at = udp_at(v6);
            assert_ne!(good[at + 6..at + 8], [0, 0]);
            let mut cases = vec![("correct", good.clone(), inner_frame(&packet))];
            for (what, i) in [("last", good.len() - 1), ("middle", (at + good.len()) / 2)] {
                let mut bad = good.clone();
                bad[i] ^= 1;
                cases.push((what, bad.clone(), bad));
            }
            for (what, frame, want) in cases {
                let (ret, out) = run(&mut ebpf, &frame);
                if (ret, &out) != (XDP_PASS, &want) {
                    failures.push(format!(
                        "outer v6 {v6}, {} bytes, {what}: got {ret} and {} bytes, want {} bytes",
                        frame.len(),
                        out.len(),
                        want.len(),
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A zero UDP checksum means none: decapsulated over IPv4 (RFC 768), as dsrgate's
/// encapsulator sends it, and over IPv6 too, where a tunnel port may opt in to it
/// (RFC 6936) and the kernel's fou does. A UDP length beyond
/// the IP packet or the frame, or too short for a GUE header, is not GUE to decapsulate
/// either. Bytes after the IP packet (Ethernet padding) are not summed.
#[test]
fn gue_zero_checksums_and_udp_lengths() {
    if !require_privileges("decap program load") {
        return;
    }
    let mut ebpf = program();
    let mut cases = Vec::new();
    for v6 in [false, true] {
        let packet = inner(v6, NOT_ECT);
        let at = udp_at(v6);
        let mut zero = gue(v6, &packet);
        zero[at + 6..at + 8].fill(0);
        cases.push((
            format!("zero checksum, outer v6 {v6}"),
            zero,
            inner_frame(&packet),
        ));
        let mut padded = gue(v6, &packet);
        padded.extend([0xa5; 4]);
        let mut want = inner_frame(&packet);
        want.extend([0xa5; 4]);
        cases.push((format!("padding, outer v6 {v6}"), padded, want));
    }
    // Over IPv4 with no checksum, so that only the length is wrong.
    let packet = inner(false, NOT_ECT);
    let at = udp_at(false);
    let mut zero = gue(false, &packet);
    zero[at + 6..at + 8].fill(0);
    let ulen = zero.len() - at;
    let mut padded = zero.clone();
    padded.extend([0; 4]);
    for (what, mut frame, ulen) in [
        ("beyond the frame", zero.clone(), ulen + 2),
        ("beyond the IP packet, into padding", padded, ulen + 4),
        ("no room for a GUE header", zero.clone(), 11),
        ("shorter than its header", zero, 4),
    ] {
        frame[at + 4..at + 6].copy_from_slice(&(ulen as u16).to_be_bytes());
        cases.push((format!("UDP length {ulen}: {what}"), frame.clone(), frame));
    }
    let mut failures = Vec::new();
    for (what, frame, want) in cases {
        let got = run(&mut ebpf, &frame);
        if got != (XDP_PASS, want.clone()) {
            failures.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// GUE as dsrgate's own encapsulator writes it (pipeline::encap: UDP checksum 0 over IPv4,
/// a real one over IPv6) decapsulates to the client's packet.
#[test]
fn gue_from_our_encapsulator_decapsulates() {
    if !require_privileges("decap program load") {
        return;
    }
    let vip = |addr: IpAddr, node: IpAddr| VipConfig {
        key: VipKey {
            addr,
            proto: Proto::Udp,
            port: 80,
        },
        backends: vec![BackendConfig {
            addr: node,
            weight: 1,
        }],
        hash: Default::default(),
        encap: Encap::Gue { port: GUE_PORT },
    };
    let snap = Snapshot::new(&SnapshotConfig {
        vips: vec![
            vip(VIP4.into(), NODE4.into()),
            vip(VIP6.into(), NODE6.into()),
        ],
        outer_src_v4: Some(SourcePrefix { addr: GW4, len: 32 }),
        outer_src_v6: Some(SourcePrefix {
            addr: GW6,
            len: 128,
        }),
        local_mac: GW_MAC,
        next_hops: [(NODE4.into(), NODE_MAC), (NODE6.into(), NODE_MAC)].into(),
        ..SnapshotConfig::default()
    })
    .unwrap();
    let mut worker = Worker::new(WorkerConfig::default());
    let mut ebpf = program();
    for v6 in [false, true] {
        // An odd length, over two bpf_csum_diff chunks.
        let packet = inner_carrying(v6, &[0x5a; 1001]);
        let frame = inner_frame(&packet);
        let mut buf = vec![0u8; 256 + frame.len()];
        buf[256..].copy_from_slice(&frame);
        let mut frames = [Frame {
            buf: &mut buf,
            offset: 256,
            len: frame.len(),
        }];
        let mut verdicts = [Verdict::Pass];
        worker.process(&snap, 0, &mut frames, &mut verdicts);
        let Verdict::Tx { offset, len } = verdicts[0] else {
            panic!("outer v6 {v6}: the pipeline did not encapsulate: {verdicts:?}");
        };
        let tunnelled = &buf[offset..offset + len];
        let at = udp_at(v6);
        assert_eq!(
            tunnelled[at + 6..at + 8] == [0, 0],
            !v6,
            "outer v6 {v6}: UDP checksum 0 exactly over IPv4"
        );
        let (ret, out) = run(&mut ebpf, tunnelled);
        assert_eq!((ret, &out[14..]), (XDP_PASS, &packet[..]), "outer v6 {v6}");
    }
}

/// `packet` in GUE version 0 (proto 4 or 41 by its version) with `hlen` words of options
/// (zeros), UDP length `ulen` (None: the datagram's own) and no UDP checksum, over an outer
/// header of the family `v6`, in a frame to the node. The IP packet holds it all, whatever
/// the UDP length says.
fn gue0(v6: bool, hlen: u8, packet: &[u8], ulen: Option<u16>) -> Vec<u8> {
    let proto = if packet[0] >> 4 == 6 {
        PROTO_IPV6
    } else {
        PROTO_IPIP
    };
    // Version 0, C 0, Hlen; Proto/ctype; flags 0 (draft-ietf-intarea-gue §3.1).
    let mut body = vec![hlen & 0x1f, proto, 0, 0];
    body.extend(vec![0u8; 4 * usize::from(hlen)]);
    body.extend(packet);
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (GW6.into(), NODE6.into())
    } else {
        (GW4.into(), NODE4.into())
    };
    let mut u = udp(src, dst, 5555, GUE_PORT, &body);
    if let Some(len) = ulen {
        u[4..6].copy_from_slice(&len.to_be_bytes());
    }
    u[6..8].fill(0);
    outer(v6, PROTO_UDP, NOT_ECT, &u)
}

/// The outer packet's own length bounds what is decapsulated: where the inner packet would
/// start at or beyond the end of the outer IP packet or of the GUE datagram, or the outer
/// packet runs past the frame, the kernel (which trims a packet to its length, then reads
/// the inner header) would drop it, so the program passes it unchanged for the kernel to
/// drop and count. The program used to decapsulate the bytes after the outer packet as if
/// they were inside it. So is an outer IPv6 header that says version 4, and one to the
/// IPv4-mapped form of the node's IPv4 address (RFC 4291 §2.5.5.2), which the address map
/// keys the same as the IPv4 address.
#[test]
fn what_lies_beyond_the_outer_packet_is_not_decapsulated() {
    if !require_privileges("decap program load") {
        return;
    }
    let mut ebpf = program();
    let mut cases = Vec::new();
    for v6 in [false, true] {
        for inner_v6 in [false, true] {
            let packet = inner(inner_v6, NOT_ECT);
            let at = format!("outer v6 {v6}, inner v6 {inner_v6}");
            // Controls: decapsulated with options inside the datagram, and with padding.
            cases.push((
                format!("{at}: GUE Hlen 2 inside the datagram"),
                gue0(v6, 2, &packet, None),
                Some(inner_frame(&packet)),
            ));
            let mut padded = tunnelled(v6, NOT_ECT, &packet);
            padded.extend([0xa5; 6]);
            let mut want = inner_frame(&packet);
            want.extend([0xa5; 6]);
            cases.push((format!("{at}: IP-in-IP, padding"), padded, Some(want)));
            // A: UDP length 12 holds the GUE header and nothing else; the inner packet
            // follows it inside the IP packet.
            cases.push((
                format!("{at}: GUE, UDP length 12"),
                gue0(v6, 0, &packet, Some(12)),
                None,
            ));
            // B: Hlen 2 (8 bytes of options) in a datagram with room for 4 of them, and one
            // that ends exactly after them.
            cases.push((
                format!("{at}: GUE Hlen 2 beyond the datagram"),
                gue0(v6, 2, &packet, Some(8 + 4 + 4)),
                None,
            ));
            cases.push((
                format!("{at}: GUE Hlen 2 ending the datagram"),
                gue0(v6, 2, &packet, Some(8 + 4 + 8)),
                None,
            ));
            // The outer packet's length leaves no room for the inner one.
            let frame = tunnelled(v6, NOT_ECT, &packet);
            let mut short = frame.clone();
            if v6 {
                short[14 + 4..14 + 6].fill(0);
            } else {
                // C: IPv4 total length 20.
                short[14 + 2..14 + 4].copy_from_slice(&20u16.to_be_bytes());
                fix_ipv4_checksum(&mut short[14..]);
            }
            cases.push((
                format!("{at}: IP-in-IP, outer length ends at the inner header"),
                short,
                None,
            ));
            // The outer length runs 1 byte past the frame.
            let mut long = frame.clone();
            let (len_at, len) = if v6 {
                (14 + 4, frame.len() - 14 - 40 + 1)
            } else {
                (14 + 2, frame.len() - 14 + 1)
            };
            long[len_at..len_at + 2].copy_from_slice(&(len as u16).to_be_bytes());
            if !v6 {
                fix_ipv4_checksum(&mut long[14..]);
            }
            cases.push((
                format!("{at}: IP-in-IP, outer length past the frame"),
                long,
                None,
            ));
        }
        // An outer IPv6 header that says version 4 (EtherType IPv6).
        let mut v4_nibble = tunnelled(true, NOT_ECT, &inner(v6, NOT_ECT));
        v4_nibble[14] = 0x40 | (v4_nibble[14] & 0x0f);
        cases.push((
            format!("outer IPv6 with version 4, inner v6 {v6}"),
            v4_nibble,
            None,
        ));
        // IPv6 to ::ffff:10.77.0.2, NODE4 as IPv4-mapped.
        let p = inner(v6, NOT_ECT);
        let next = if v6 { PROTO_IPV6 } else { PROTO_IPIP };
        cases.push((
            format!("outer IPv6 to ::ffff:NODE4, inner v6 {v6}"),
            eth(
                NODE_MAC,
                GW_MAC,
                ETH_IPV6,
                &ipv6(GW6, NODE4.to_ipv6_mapped(), next, &p),
            ),
            None,
        ));
    }
    // An IPv4 total length below its header's (19) is passed too.
    let mut under = tunnelled(false, NOT_ECT, &inner(false, NOT_ECT));
    under[14 + 2..14 + 4].copy_from_slice(&19u16.to_be_bytes());
    fix_ipv4_checksum(&mut under[14..]);
    cases.push(("IPv4 total length 19".into(), under, None));
    let mut failures = Vec::new();
    for (what, frame, want) in cases {
        // None: passed unchanged.
        let want = (XDP_PASS, want.unwrap_or_else(|| frame.clone()));
        let got = run(&mut ebpf, &frame);
        if got != want {
            failures.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
