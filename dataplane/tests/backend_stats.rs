//! Per-backend counters across snapshot changes: `PipelineStats::backends` attributes what a
//! worker sent to the backend address that received it, even when a new snapshot reorders,
//! removes or adds backends (and so gives the same slot to another address).

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::*;
use dataplane::pipeline::Verdict;
use dataplane::snapshot::{Encap, HashMode, Proto, Snapshot, VipKey};
use dataplane::xsk::{PipelineProcessor, PipelineStats, Processor};

const VIP: &str = "10.0.0.1";
const SECOND: u64 = 1_000_000_000;

fn snap(generation: u64, backends: &[IpAddr]) -> Snapshot {
    let b: Vec<_> = backends.iter().map(|&a| (a, 1)).collect();
    snapshot(
        generation,
        &[
            (VIP, Proto::Tcp, 80, HashMode::FiveTuple, Encap::IpIp),
            (VIP, Proto::Tcp, 443, HashMode::FiveTuple, Encap::IpIp),
        ],
        &b,
    )
}

/// Sends `n` frames of distinct flows to `port` as one batch each; returns the backend
/// each went to with its transmitted length.
fn send(p: &mut PipelineProcessor, now: u64, port: u16, n: u16) -> Vec<(IpAddr, u64)> {
    (0..n)
        .map(|i| {
            let frame = flow_frame(ip("198.18.0.1"), 1000 + i, ip(VIP), port, 6, 0x02);
            let (v, out) = run_with(&frame, |f, v| p.process(now, f, v));
            assert!(matches!(v, Verdict::Tx { .. }), "not sent: {v:?}");
            (decap(&out).outer_dst, out.len() as u64)
        })
        .collect()
}

/// (packets, bytes) per (port, backend) as the stats report them.
fn reported(s: &PipelineStats, port: u16, addr: IpAddr) -> (u64, u64) {
    let key = VipKey {
        addr: ip(VIP),
        proto: Proto::Tcp,
        port,
    };
    let mut hits = s.backends().filter(|&(k, a, _, _)| k == key && a == addr);
    let (_, _, p, b) = hits.next().unwrap_or((key, addr, 0, 0));
    assert!(hits.next().is_none(), "{key} {addr} listed twice");
    (p, b)
}

fn sum(sent: &[(IpAddr, u64)], addr: IpAddr) -> (u64, u64) {
    sent.iter()
        .filter(|s| s.0 == addr)
        .fold((0, 0), |(p, b), s| (p + 1, b + s.1))
}

#[test]
fn backend_counts_follow_addresses_across_snapshots() {
    let (a, b, c) = (backend_addr(0), backend_addr(1), backend_addr(2));
    let (current, mut p) = processor(snap(1, &[a, c]), |_| {});
    let stats = p.stats();
    let now = 10 * SECOND;
    // Generation 1: slots are [80→a, 80→c, 443→a, 443→c]. Only the first batch publishes
    // (the cadence is 100 ms), so generation 1's counts reach the stats only through the
    // publish on the snapshot change.
    let mut g1 = send(&mut p, now, 80, 40);
    g1.extend(send(&mut p, now, 443, 10));
    assert!(sum(&g1, a).0 > 0 && sum(&g1, c).0 > 0, "{g1:?}");

    // Generation 2 removes a and puts b first: 80→b takes a's old slot 0, 443's slots move.
    current.store(Arc::new(snap(2, &[b, c])));
    let g2_80 = send(&mut p, now + 1, 80, 30);
    let g2_443 = send(&mut p, now + 1, 443, 20);
    assert!(sum(&g2_80, b).0 > 0, "{g2_80:?}");
    // Past the publish interval, with no more traffic: the idle worker's housekeeping
    // publishes generation 2's counts.
    p.housekeeping(now + SECOND);

    let g1_80: Vec<_> = g1[..40].to_vec();
    let g1_443: Vec<_> = g1[40..].to_vec();
    for (port, g1, g2) in [(80, &g1_80, &g2_80), (443, &g1_443, &g2_443)] {
        for addr in [a, b, c] {
            let (p1, b1) = sum(g1, addr);
            let (p2, b2) = sum(g2, addr);
            assert_eq!(
                reported(&stats, port, addr),
                (p1 + p2, b1 + b2),
                "port {port} backend {addr}"
            );
        }
    }
    // a left the configuration but keeps its totals; every pair is tracked.
    assert_eq!(stats.backends().count(), 6);
    assert_eq!(stats.untracked_backends(), 0);
}

#[test]
fn a_full_table_counts_into_nothing_and_says_so() {
    let (a, b, c) = (backend_addr(0), backend_addr(1), backend_addr(2));
    let (current, mut p) = processor(snap(1, &[a]), |cfg| cfg.max_backends = 3);
    let stats = p.stats();
    send(&mut p, SECOND, 80, 5);
    // 2 pairs known; generation 2 brings 4 new ones, of which one fits.
    current.store(Arc::new(snap(2, &[b, c])));
    let sent = send(&mut p, SECOND, 80, 20);
    p.process(2 * SECOND, &mut [], &mut []);
    assert_eq!(stats.backends().count(), 3);
    assert_eq!(stats.untracked_backends(), 3);
    // The one new entry is 80→b (slot 0 of generation 2), with exactly b's traffic.
    assert_eq!(reported(&stats, 80, b), sum(&sent, b));
    assert_eq!(reported(&stats, 80, c), (0, 0));
}
