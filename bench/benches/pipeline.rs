//! Criterion benches for `Worker::process`, one batch of 64 frames per iteration, for the
//! issue's cases: flow hits with a few hundred flows (`tcp4_hit_hot`, `udp6_hit_hot`) and with
//! 1,048,576 flows (`tcp4_hit_1m`), new flows (`tcp4_syn`: Maglev lookup and insert, at a
//! steady state of 1M live flows as `dsrgate-bench pipeline` runs it) and
//! non-VIP traffic (`pass`). Only `process` is timed: rewriting the frames to their
//! as-received bytes before each batch (as the NIC would deliver them) is not.
//!
//! The frames and the snapshot come from the dataplane's test helpers (one packet builder,
//! written from the RFC layouts independently of the pipeline), included by path.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::flow::FlowTimeouts;
use dataplane::pipeline::{Frame, Verdict, Worker, WorkerConfig, BATCH};
use dataplane::snapshot::{Encap, HashMode, Proto, Snapshot};

#[path = "../../dataplane/tests/common/mod.rs"]
mod common;
use common::{backend_addr, flow_frame, snapshot, ACK, HEADROOM, SYN};

const VIP4: &str = "10.0.0.1";
const VIP6: &str = "2001:db8::1";
const CHUNK: usize = 2048;

/// The VIP of `frame`'s family with 100 backends of that family (the snapshot refuses to
/// mix families: there is no IPv6-in-IPv4).
fn snap(v6: bool) -> Snapshot {
    let backends: Vec<(IpAddr, u32)> = (0..100)
        .map(|i| match v6 {
            false => (backend_addr(i), 1),
            true => (
                IpAddr::V6((0xfd00_0010_u128 << 96 | (i as u128 + 1)).into()),
                1,
            ),
        })
        .collect();
    let vip = match v6 {
        false => (VIP4, Proto::Tcp, 80, HashMode::FiveTuple, Encap::IpIp),
        true => (VIP6, Proto::Udp, 443, HashMode::FiveTuple, Encap::IpIp),
    };
    snapshot(1, &[vip], &backends)
}

/// Client `i`: 1024 source ports on each of up to 2^22 addresses.
fn tcp4(i: usize, flags: u8) -> Vec<u8> {
    let src = IpAddr::V4((0x0b00_0000 + (i >> 10) as u32).into());
    flow_frame(
        src,
        1024 + (i & 1023) as u16,
        VIP4.parse().unwrap(),
        80,
        6,
        flags,
    )
}

fn udp6(i: usize, _flags: u8) -> Vec<u8> {
    let src = IpAddr::V6((0x2001_0db8_00c0_u128 << 80 | i as u128 >> 10).into());
    flow_frame(
        src,
        1024 + (i & 1023) as u16,
        VIP6.parse().unwrap(),
        443,
        17,
        0,
    )
}

fn pass_frame(i: usize, _flags: u8) -> Vec<u8> {
    let src = IpAddr::V4((0x0b00_0000 + i as u32).into());
    flow_frame(src, 1024, "10.9.9.9".parse().unwrap(), 80, 6, ACK)
}

/// A worker, its snapshot, and 64 UMEM-like buffers.
struct Rig {
    worker: Worker,
    snap: Snapshot,
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    verdicts: [Verdict; BATCH],
}

impl Rig {
    fn new(flow_capacity: usize, snap: Snapshot) -> Rig {
        Rig {
            worker: Worker::new(WorkerConfig {
                flow_capacity,
                ..WorkerConfig::default()
            }),
            snap,
            bufs: vec![vec![0u8; CHUNK]; BATCH],
            lens: [0; BATCH],
            verdicts: [Verdict::Pass; BATCH],
        }
    }

    fn load(&mut self, frames: &[Vec<u8>]) {
        for (i, f) in frames.iter().enumerate() {
            self.bufs[i][HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
            self.lens[i] = f.len();
        }
    }

    /// Processes the loaded batch; returns how long `process` took.
    fn process(&mut self, now: u64) -> Duration {
        let lens = self.lens;
        let mut it = self.bufs.iter_mut().zip(lens);
        let mut frames: [Frame<'_>; BATCH] = std::array::from_fn(|_| {
            let (buf, len) = it.next().expect("BATCH buffers");
            Frame {
                buf,
                offset: HEADROOM,
                len,
            }
        });
        let t = Instant::now();
        self.worker
            .process(&self.snap, black_box(now), &mut frames, &mut self.verdicts);
        t.elapsed()
    }

    fn expect(&self, case: &str, want: fn(&Verdict) -> bool) {
        if let Some(v) = self.verdicts.iter().find(|v| !want(v)) {
            panic!("{case}: unexpected verdict {v:?}");
        }
    }
}

fn is_tx(v: &Verdict) -> bool {
    matches!(v, Verdict::Tx { .. })
}

/// splitmix64 over flow numbers: the order a busy gateway sees its flows in.
fn shuffled(flows: usize, n: usize) -> impl Iterator<Item = usize> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..n).map(move |_| {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as usize % flows
    })
}

/// Times `process` over the batches of `pool` in turn (loading each batch is not timed).
fn bench_case(
    c: &mut Criterion,
    name: &str,
    rig: Rig,
    pool: Vec<Vec<u8>>,
    want: fn(&Verdict) -> bool,
) {
    let batches = pool.len() / BATCH;
    let clock = Clock {
        batch: 0,
        step_ns: 1,
    };
    bench_batches(c, name, rig, clock, want, move |n| {
        let at = n % batches * BATCH;
        pool[at..at + BATCH].to_vec()
    });
}

/// The batch clock: `now` is 1 s plus `step_ns` per batch processed so far.
#[derive(Clone, Copy)]
struct Clock {
    batch: usize,
    step_ns: u64,
}

impl Clock {
    fn now(&self) -> u64 {
        1_000_000_000 + self.batch as u64 * self.step_ns
    }
}

/// Times `process` over batches `frames(n)` for n = 0, 1, ... (building and loading a batch
/// is not timed), running the worker's expiry sweep after each batch as the AF_XDP worker
/// does (not timed either).
fn bench_batches(
    c: &mut Criterion,
    name: &str,
    mut rig: Rig,
    mut clock: Clock,
    want: fn(&Verdict) -> bool,
    mut frames: impl FnMut(usize) -> Vec<Vec<u8>>,
) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut n = 0usize;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rig.load(&frames(n));
                total += rig.process(clock.now());
                rig.worker.expire_flows(clock.now(), 64);
                n += 1;
                clock.batch += 1;
            }
            rig.expect(name, want);
            total
        })
    });
    g.finish();
}

/// A rig whose flows `0..flows` are established (one SYN each).
fn established(flows: usize, capacity: usize, v6: bool, frame: fn(usize, u8) -> Vec<u8>) -> Rig {
    let mut rig = Rig::new(capacity, snap(v6));
    let all: Vec<usize> = (0..flows).collect();
    for chunk in all.chunks(BATCH) {
        let frames: Vec<Vec<u8>> = chunk.iter().map(|&i| frame(i, SYN)).collect();
        rig.load(&frames);
        rig.process(1_000_000_000);
        rig.expect("establish", is_tx);
    }
    rig
}

fn pipeline(c: &mut Criterion) {
    let hot = |v6: bool, frame: fn(usize, u8) -> Vec<u8>| {
        let rig = established(256, 1 << 16, v6, frame);
        (rig, (0..256).map(|i| frame(i, ACK)).collect::<Vec<_>>())
    };
    let (rig, pool) = hot(false, tcp4);
    bench_case(c, "tcp4_hit_hot", rig, pool, is_tx);
    let (rig, pool) = hot(true, udp6);
    bench_case(c, "udp6_hit_hot", rig, pool, is_tx);

    // 1M flows in 2M slots (128 MiB), hit in random order.
    let flows = 1 << 20;
    let rig = established(flows, 2 * flows, false, tcp4);
    let pool = shuffled(flows, 1 << 16).map(|i| tcp4(i, ACK)).collect();
    bench_case(c, "tcp4_hit_1m", rig, pool, is_tx);

    // SYNs, each from a client never seen before, at a busy gateway's steady state: 1M live
    // flows in 2M slots, as many going idle as arriving (the clock advances so that the
    // timeout of a flow only a SYN was seen on spans 1M SYNs; the table is filled that way
    // first).
    let mut rig = Rig::new(2 * flows, snap(false));
    let mut clock = Clock {
        batch: 0,
        step_ns: FlowTimeouts::default().tcp_unconfirmed_ns * BATCH as u64 / flows as u64,
    };
    let syns =
        |n: usize| -> Vec<Vec<u8>> { (n * BATCH..(n + 1) * BATCH).map(|i| tcp4(i, SYN)).collect() };
    while clock.batch < flows / BATCH {
        rig.load(&syns(clock.batch));
        rig.process(clock.now());
        rig.worker.expire_flows(clock.now(), 64);
        clock.batch += 1;
    }
    rig.expect("fill", is_tx);
    let first = clock.batch;
    bench_batches(c, "tcp4_syn", rig, clock, is_tx, move |n| syns(first + n));

    let rig = Rig::new(1 << 16, snap(false));
    let pool = (0..BATCH).map(|i| pass_frame(i, ACK)).collect();
    bench_case(c, "pass", rig, pool, |v| *v == Verdict::Pass);
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
