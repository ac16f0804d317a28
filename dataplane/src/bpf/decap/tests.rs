//! decap.c loaded but never attached, run on frames with BPF_PROG_TEST_RUN: what it hands
//! the kernel, byte for byte, where a socket test (tests/tests/decap.rs) cannot look.

use super::*;
use aya::programs::{TestRun, TestRunOptions};
use dsrgate_tests::frames::*;
use dsrgate_tests::require_privileges;
use std::net::{Ipv4Addr, Ipv6Addr};

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

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const NOT_ECT: u8 = 0;
const ECT1: u8 = 1;
const ECT0: u8 = 2;
const CE: u8 = 3;

fn program() -> Ebpf {
    load(&DecapConfig {
        addresses: vec![NODE4.into(), NODE6.into()],
        gue_port: None,
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
    let mut p = if v6 {
        let u = udp(CLIENT6.into(), VIP6.into(), 40000, 80, b"inner");
        ipv6(CLIENT6, VIP6, PROTO_UDP, &u)
    } else {
        let u = udp(CLIENT4.into(), VIP4.into(), 40000, 80, b"inner");
        ipv4(CLIENT4, VIP4, PROTO_UDP, &u)
    };
    set_ecn(&mut p, ecn);
    p
}

/// `payload` in an outer header of the family `v6` to the node, with ECN field `ecn`, in a
/// frame to the node.
fn tunnelled(v6: bool, ecn: u8, payload: &[u8]) -> Vec<u8> {
    let next = if payload[0] >> 4 == 6 {
        PROTO_IPV6
    } else {
        PROTO_IPIP
    };
    let (ethertype, mut outer) = if v6 {
        (ETH_IPV6, ipv6(GW6, NODE6, next, payload))
    } else {
        (ETH_IPV4, ipv4(GW4, NODE4, next, payload))
    };
    set_ecn(&mut outer, ecn);
    eth(NODE_MAC, GW_MAC, ethertype, &outer)
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
