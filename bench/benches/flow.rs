//! Criterion benches for the per-worker flow table, used the way the pipeline uses it: a
//! batch of 64 flow hashes is prefetched first, then looked up. "hot" is a few hundred
//! flows (all in cache); "1m" is 1,048,576 active flows in a 2,097,152-slot table (128 MiB,
//! far beyond the caches), visited in random order.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::flow::{FlowKey, FlowTable, FlowTimeouts, SlotHint, TimeoutClass};

const SEED: u64 = 0x5eed;
const BATCH: usize = 64;

/// The pipeline's per-flow value is 24 bytes: a backend address and two u32s.
#[derive(Clone, Copy)]
struct Value {
    _addr: [u8; 16],
    slot: u32,
    _gen: u32,
}

fn key(i: u32) -> FlowKey {
    let mut src = [0u8; 16];
    src[10] = 0xff;
    src[11] = 0xff;
    src[12..].copy_from_slice(&(0x0a00_0000 | i >> 8).to_be_bytes());
    let mut dst = [0u8; 16];
    dst[10..].copy_from_slice(&[0xff, 0xff, 198, 51, 100, 1]);
    FlowKey {
        src,
        dst,
        src_port: 1024 + (i & 0xff) as u16,
        dst_port: 443,
        proto: 6,
    }
}

/// `n` keys of flows `first..first + flows`, in a fixed pseudo-random order.
fn visits(first: u32, flows: u32, n: usize) -> Vec<(FlowKey, u64)> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = key(first + (x % flows as u64) as u32);
            (k, k.hash(SEED))
        })
        .collect()
}

fn filled(flows: u32, capacity: usize) -> FlowTable<Value> {
    let mut t = FlowTable::new(capacity, FlowTimeouts::default());
    for i in 0..flows {
        let k = key(i);
        let v = Value {
            _addr: [0; 16],
            slot: i,
            _gen: 0,
        };
        t.insert(&k, k.hash(SEED), v, TimeoutClass::TcpEstablished, 0);
    }
    t
}

/// Prefetches (in two stages) then looks up one batch, as the pipeline does on a table larger
/// than the caches; returns a checksum so nothing is optimised away.
fn batch(t: &mut FlowTable<Value>, keys: &[(FlowKey, u64)], now: u64) -> u32 {
    for (_, h) in keys {
        t.prefetch_tags(*h);
    }
    let mut hints = [SlotHint::UNPROBED; BATCH];
    for ((_, h), hint) in keys.iter().zip(hints.iter_mut()) {
        *hint = t.prefetch_slot(*h);
    }
    let mut acc = 0u32;
    for ((k, h), hint) in keys.iter().zip(hints) {
        if let Some(e) = t.lookup_at(black_box(k), *h, hint, now, true) {
            acc = acc.wrapping_add(e.value.slot);
        }
    }
    acc
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_lookup_hit");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, flows, capacity) in [("hot_256", 256u32, 1024usize), ("1m", 1 << 20, 1 << 21)] {
        let mut t = filled(flows, capacity);
        let keys = visits(0, flows, 1 << 16);
        let mut at = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                let s = batch(&mut t, &keys[at..at + BATCH], 1);
                at = (at + BATCH) % keys.len();
                s
            })
        });
    }
    g.finish();
}

fn insert(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_insert");
    g.throughput(Throughput::Elements(BATCH as u64));
    // New flows into a full 1M-flow table: each insert reads both candidate buckets' tags and
    // takes a free slot, or (both full) scans their entries and evicts one (the SYN path). The keys are 65,536 other flows.
    let mut t = filled(1 << 20, 1 << 21);
    let fresh = visits(1 << 20, 1 << 22, 1 << 16);
    let mut at = 0;
    let mut now = 0u64;
    g.bench_function("new_flow_1m", |b| {
        b.iter(|| {
            now += 1_000;
            for (_, h) in &fresh[at..at + BATCH] {
                t.prefetch_tags(*h);
            }
            for (_, h) in &fresh[at..at + BATCH] {
                t.prefetch_slot(*h);
            }
            for (k, h) in &fresh[at..at + BATCH] {
                let v = Value {
                    _addr: [0; 16],
                    slot: 1,
                    _gen: 0,
                };
                t.insert(black_box(k), *h, v, TimeoutClass::TcpEstablished, now);
            }
            at = (at + BATCH) % fresh.len();
        })
    });
    g.finish();
}

criterion_group!(benches, lookup, insert);
criterion_main!(benches);
