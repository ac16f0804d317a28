//! Per-VIP counters across snapshot changes: `PipelineStats::vips` credits what a worker
//! received to the VIP that received it, even when a new snapshot adds or removes a VIP that
//! sorts earlier (and so moves every later VIP to another index).

mod common;

use std::sync::Arc;

use common::*;
use dataplane::pipeline::Verdict;
use dataplane::snapshot::{Encap, HashMode, Proto, Snapshot, VipKey};
use dataplane::xsk::{PipelineProcessor, PipelineStats, Processor};

const SECOND: u64 = 1_000_000_000;

fn snap(generation: u64, vips: &[&str]) -> Snapshot {
    let v: Vec<_> = vips
        .iter()
        .map(|&a| (a, Proto::Tcp, 80, HashMode::FiveTuple, Encap::IpIp))
        .collect();
    snapshot(generation, &v, &[(backend_addr(0), 1)])
}

/// Sends `n` SYNs of distinct flows to `vip`:80, one batch each; returns the bytes received.
fn send(p: &mut PipelineProcessor, now: u64, vip: &str, n: u16) -> u64 {
    (0..n)
        .map(|i| {
            let frame = flow_frame(ip("198.18.0.1"), 1000 + i, ip(vip), 80, 6, SYN);
            let (v, _) = run_with(&frame, |f, v| p.process(now, f, v));
            assert!(matches!(v, Verdict::Tx { .. }), "not sent: {v:?}");
            frame.len() as u64
        })
        .sum()
}

/// (packets, bytes) for `vip`:80 as the stats report them.
fn reported(s: &PipelineStats, vip: &str) -> (u64, u64) {
    let key = VipKey {
        addr: ip(vip),
        proto: Proto::Tcp,
        port: 80,
    };
    let mut hits = s.vips().filter(|&(k, _, _)| k == key);
    let (_, p, b) = hits.next().unwrap_or((key, 0, 0));
    assert!(hits.next().is_none(), "{key} listed twice");
    (p, b)
}

#[test]
fn vip_counts_follow_the_vip_across_snapshots() {
    let (early, late) = ("10.0.0.10", "10.0.0.20");
    let (current, mut p) = processor(snap(1, &[late]), |_| {});
    let stats = p.stats();
    let mut now = 10 * SECOND;

    // Generation 1: `late` is VIP 0.
    let late1 = send(&mut p, now, late, 50);
    p.housekeeping(now + SECOND);
    assert_eq!(reported(&stats, late), (50, late1));
    assert_eq!(reported(&stats, early), (0, 0));

    // Generation 2 adds `early`, which sorts first: `late` moves to index 1, and `early`
    // takes index 0, whose worker counter already holds `late`'s 50 frames.
    now += 2 * SECOND;
    current.store(Arc::new(snap(2, &[early, late])));
    let late2 = send(&mut p, now, late, 1);
    p.housekeeping(now + SECOND);
    assert_eq!(reported(&stats, early), (0, 0));
    assert_eq!(reported(&stats, late), (51, late1 + late2));
    let early2 = send(&mut p, now + SECOND, early, 5);
    p.housekeeping(now + 2 * SECOND);
    assert_eq!(reported(&stats, early), (5, early2));
    assert_eq!(reported(&stats, late), (51, late1 + late2));

    // Generation 3 removes `early`: `late` is back at index 0. `early` keeps its totals,
    // and neither count goes down.
    now += 4 * SECOND;
    current.store(Arc::new(snap(3, &[late])));
    let late3 = send(&mut p, now, late, 2);
    p.housekeeping(now + SECOND);
    assert_eq!(reported(&stats, late), (53, late1 + late2 + late3));
    assert_eq!(reported(&stats, early), (5, early2));
    assert_eq!(stats.vips().count(), 2);
    assert_eq!(stats.untracked_vips(), 0);
}

#[test]
fn vips_past_the_counters_are_untracked_and_say_so() {
    let (current, mut p) = processor(snap(1, &["10.0.0.1", "10.0.0.2", "10.0.0.3"]), |cfg| {
        cfg.max_vips = 2
    });
    let stats = p.stats();
    let sent = send(&mut p, SECOND, "10.0.0.2", 3);
    send(&mut p, SECOND, "10.0.0.3", 3);
    p.housekeeping(3 * SECOND);
    assert_eq!(stats.untracked_vips(), 1);
    assert_eq!(reported(&stats, "10.0.0.2"), (3, sent));
    assert_eq!(reported(&stats, "10.0.0.3"), (0, 0));
    // The table holds twice `max_vips` over the worker's life: two more fit, then it is
    // full, and a VIP already known keeps its entry.
    current.store(Arc::new(snap(2, &["10.0.0.4", "10.0.0.5"])));
    p.process(4 * SECOND, &mut [], &mut []);
    assert_eq!(stats.untracked_vips(), 0);
    current.store(Arc::new(snap(3, &["10.0.0.1", "10.0.0.6"])));
    p.process(5 * SECOND, &mut [], &mut []);
    assert_eq!(stats.untracked_vips(), 1);
    assert_eq!(stats.vips().count(), 4);
}
