//! The dsrgate pipeline as a worker's [`Processor`]: the per-worker pipeline state plus the
//! shared, atomically swapped configuration snapshot.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Processor;
use crate::pipeline::{Frame, Verdict, Worker, WorkerConfig};
use crate::snapshot::{Proto, Snapshot, VipKey};

/// The flow table is swept for idle entries ([`crate::flow::FlowTable::expire`]) once per
/// this period, a few buckets after each batch in proportion to the time since the last, so
/// the sweep's cost per packet falls as the packet rate rises (a fixed number of buckets per
/// batch cost a 1M-flow table's sweep about 15 cycles per frame at 0.9 Mpps). Lookups and
/// inserts already treat an idle entry as absent; the sweep keeps the occupancy count honest
/// and stamps from wrapping, for which the shortest default timeout (10 s) is ample.
const SWEEP_NS: u64 = 5_000_000_000;

/// Most buckets swept after one batch, and by one housekeeping call of an idle worker. Credit
/// beyond that is dropped: after a long gap between calls the sweep resumes its pace instead
/// of pausing the worker to catch up. So the sweep runs slower than its period only while
/// batches come further apart than the time in which 256 buckets fall due (about 5 ms for
/// the default 1M-slot table), i.e. at a trickle of traffic.
const SWEEP_MAX_BATCH: u64 = 256;
const SWEEP_MAX_IDLE: u64 = 65_536;

/// Paces the sweep: bucket credit accrues with time, and each call spends what it may.
#[derive(Default)]
struct Sweep {
    last_ns: u64,
    /// Buckets due, times `SWEEP_NS`.
    credit: u64,
}

impl Sweep {
    /// Buckets to sweep now, for a table of `buckets` buckets, at most `max`.
    fn due(&mut self, now_ns: u64, buckets: u64, max: u64) -> usize {
        let dt = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.credit = self
            .credit
            .saturating_add(dt.saturating_mul(buckets))
            .min(max * SWEEP_NS);
        let n = self.credit / SWEEP_NS;
        self.credit -= n * SWEEP_NS;
        n as usize
    }
}

/// How often a busy worker copies its flow-table and per-VIP counters to [`PipelineStats`].
const PUBLISH_NS: u64 = 100_000_000;

/// What a pipeline worker shows the control side, beside the loop counters of
/// [`super::WorkerStats`]: which snapshot it runs and since when, flow-table occupancy, and
/// per-VIP and per-backend traffic. One writer (the worker), any number of readers; each
/// value is independent, so `Relaxed` is enough except for the generation/time pair (see
/// [`PipelineStats::generation`]) and a backend entry's key (see `BackendEntry`).
pub struct PipelineStats {
    generation: AtomicU64,
    generation_at_ns: AtomicU64,
    flows: AtomicU64,
    evictions: AtomicU64,
    /// Per VIP, by snapshot index: frames and bytes received.
    vip_packets: Box<[AtomicU64]>,
    vip_bytes: Box<[AtomicU64]>,
    /// Per (VIP, backend address): frames and bytes sent. Entries are claimed in order and
    /// never reused (see [`PipelineStats::backends`]).
    backends: Box<[BackendEntry]>,
    /// Entries claimed so far (only the worker reads or writes it).
    claimed: AtomicU64,
    /// Backend slots of the current snapshot whose traffic is not counted per backend,
    /// because the table (`WorkerConfig::max_backends` entries for the worker's lifetime)
    /// is full or the slot is past the worker's per-slot counters.
    untracked_backends: AtomicU64,
}

/// One (VIP, backend) pair's counters. The worker writes `key` once, then sets `ready` with
/// Release; a reader loads `ready` with Acquire before `key`, so it never sees a half-written
/// key. The key never changes afterwards, so the counts under it are always that pair's.
struct BackendEntry {
    key: [AtomicU64; KEY_WORDS],
    ready: AtomicBool,
    packets: AtomicU64,
    bytes: AtomicU64,
}

const KEY_WORDS: usize = 5;

/// A (VIP, backend) pair as plain words: VIP address (v4-mapped), backend address
/// (v4-mapped), then port, protocol and the two is-IPv4 flags.
fn encode_key(vip: &VipKey, backend: &[u8; 16], backend_v4: bool) -> [u64; KEY_WORDS] {
    let v = match vip.addr {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
    .to_bits();
    let b = u128::from_be_bytes(*backend);
    let flags = u64::from(vip.port)
        | u64::from(vip.proto.number()) << 16
        | u64::from(vip.addr.is_ipv4()) << 24
        | u64::from(backend_v4) << 25;
    [
        (v >> 64) as u64,
        v as u64,
        (b >> 64) as u64,
        b as u64,
        flags,
    ]
}

fn decode_key(k: [u64; KEY_WORDS]) -> (VipKey, IpAddr) {
    let addr = |hi: u64, lo: u64, v4: bool| {
        let a = Ipv6Addr::from_bits(u128::from(hi) << 64 | u128::from(lo));
        if v4 {
            IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() as u32))
        } else {
            IpAddr::V6(a)
        }
    };
    let vip = VipKey {
        addr: addr(k[0], k[1], k[4] >> 24 & 1 == 1),
        proto: if (k[4] >> 16) as u8 == Proto::Udp.number() {
            Proto::Udp
        } else {
            Proto::Tcp
        },
        port: k[4] as u16,
    };
    (vip, addr(k[2], k[3], k[4] >> 25 & 1 == 1))
}

impl PipelineStats {
    fn new(max_vips: usize, max_backends: usize) -> Self {
        let zeros = || (0..max_vips).map(|_| AtomicU64::new(0)).collect();
        PipelineStats {
            generation: AtomicU64::new(0),
            generation_at_ns: AtomicU64::new(0),
            flows: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            vip_packets: zeros(),
            vip_bytes: zeros(),
            backends: (0..max_backends)
                .map(|_| BackendEntry {
                    key: Default::default(),
                    ready: AtomicBool::new(false),
                    packets: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                })
                .collect(),
            claimed: AtomicU64::new(0),
            untracked_backends: AtomicU64::new(0),
        }
    }

    /// True if entry `i` is claimed for `key`. Worker only.
    fn holds(&self, i: u32, key: &[u64; KEY_WORDS]) -> bool {
        self.backends.get(i as usize).is_some_and(|e| {
            e.key
                .iter()
                .zip(key)
                .all(|(a, &b)| a.load(Ordering::Relaxed) == b)
        })
    }

    /// Claims the next entry for `key`; `None` if the table is full. Worker only.
    fn claim(&self, key: [u64; KEY_WORDS]) -> Option<u32> {
        let claimed = self.claimed.load(Ordering::Relaxed) as usize;
        let e = self.backends.get(claimed)?;
        for (a, b) in e.key.iter().zip(key) {
            a.store(b, Ordering::Relaxed);
        }
        // Release: see `BackendEntry`.
        e.ready.store(true, Ordering::Release);
        self.claimed.store(claimed as u64 + 1, Ordering::Relaxed);
        Some(claimed as u32)
    }

    /// The snapshot generation the worker last ran a batch on, and when (CLOCK_MONOTONIC
    /// ns) it first did. 0 before the first batch.
    pub fn generation(&self) -> (u64, u64) {
        // Acquire pairs with the Release store of the generation, which follows the store
        // of its time: a reader that sees a generation sees its time (or a later one's).
        let g = self.generation.load(Ordering::Acquire);
        (g, self.generation_at_ns.load(Ordering::Relaxed))
    }

    /// Flows in the worker's table and live flows it evicted for lack of room.
    pub fn flows(&self) -> (u64, u64) {
        (
            self.flows.load(Ordering::Relaxed),
            self.evictions.load(Ordering::Relaxed),
        )
    }

    /// Frames and bytes received for VIP `index` of the current snapshot order.
    pub fn vip(&self, index: usize) -> Option<(u64, u64)> {
        Some((
            self.vip_packets.get(index)?.load(Ordering::Relaxed),
            self.vip_bytes.get(index)?.load(Ordering::Relaxed),
        ))
    }

    /// Frames and bytes this worker sent to each (VIP, backend address) pair it has seen in
    /// a snapshot, over its lifetime (bytes after encapsulation). Keyed by address, not by
    /// snapshot slot, so the counts survive snapshot changes and only ever grow; a pair
    /// that left the configuration keeps its last totals.
    pub fn backends(&self) -> impl Iterator<Item = (VipKey, IpAddr, u64, u64)> + '_ {
        self.backends
            .iter()
            // Acquire: see `BackendEntry`.
            .take_while(|e| e.ready.load(Ordering::Acquire))
            .map(|e| {
                let (vip, addr) =
                    decode_key(std::array::from_fn(|i| e.key[i].load(Ordering::Relaxed)));
                (
                    vip,
                    addr,
                    e.packets.load(Ordering::Relaxed),
                    e.bytes.load(Ordering::Relaxed),
                )
            })
    }

    /// Backend slots of the current snapshot not counted per backend (the table is full).
    pub fn untracked_backends(&self) -> u64 {
        self.untracked_backends.load(Ordering::Relaxed)
    }
}

/// Runs [`crate::pipeline::Worker`] against the current snapshot.
///
/// The control side publishes a new snapshot with `ArcSwap::store`; the worker loads the
/// current one once per batch (a wait-free read), so a swap never blocks the worker and loses
/// no packet: the batch in progress finishes on the snapshot it started with, the next batch
/// sees the new one, and the flow table carries established flows across.
pub struct PipelineProcessor {
    worker: Worker,
    snapshot: Arc<ArcSwap<Snapshot>>,
    stats: Arc<PipelineStats>,
    generation: u64,
    next_publish: u64,
    /// VIPs in the snapshot the worker last ran a batch on.
    vips: usize,
    /// Per backend slot of the current snapshot: its entry in `stats.backends`, or
    /// [`UNTRACKED`]. Capacity `max_backends`, so rebuilding it never allocates.
    map: Vec<u32>,
    /// Per backend slot: the worker's (packets, bytes) counters as of the last publish.
    last: Vec<(u64, u64)>,
    /// Where each claimed (VIP, backend) pair is in `stats.backends`: open addressing with
    /// linear probing over entry indices ([`UNTRACKED`] when empty), keyed by [`key_hash`],
    /// twice as many slots as entries so it is at most half full. Entries are never freed,
    /// so neither are its slots.
    index: Box<[u32]>,
    sweep: Sweep,
}

const UNTRACKED: u32 = u32::MAX;

/// The hash of a (VIP, backend) key that places it in `PipelineProcessor::index`.
fn key_hash(k: &[u64; KEY_WORDS]) -> u64 {
    k.iter().fold(0x243f_6a88_85a3_08d3, |h, &w| {
        crate::flow::fold_mul(h ^ w, 0x9e37_79b9_7f4a_7c15)
    })
}

impl PipelineProcessor {
    pub fn new(cfg: WorkerConfig, snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        PipelineProcessor {
            worker: Worker::new(cfg),
            snapshot,
            stats: Arc::new(PipelineStats::new(cfg.max_vips, cfg.max_backends)),
            generation: 0,
            next_publish: 0,
            vips: 0,
            map: Vec::with_capacity(cfg.max_backends),
            last: Vec::with_capacity(cfg.max_backends),
            index: vec![UNTRACKED; (cfg.max_backends * 2).next_power_of_two().max(2)]
                .into_boxed_slice(),
            sweep: Sweep::default(),
        }
    }

    /// Sweeps the buckets due at `now_ns` (see [`SWEEP_NS`]), at most `max`.
    fn sweep(&mut self, now_ns: u64, max: u64) {
        let buckets = (self.worker.flows().capacity() / crate::flow::WAYS) as u64;
        let n = self.sweep.due(now_ns, buckets, max);
        if n > 0 {
            self.worker.expire_flows(now_ns, n);
        }
    }

    /// The entry in `stats.backends` for `key`, claiming a new one if it has none; `None` if
    /// the table is full. Once per backend slot on a snapshot change: a few probes of
    /// `index`, however many entries the worker has claimed. (A scan of the claimed
    /// entries cost ~1 ns each here, twice per new backend: one new node under 16 VIPs with
    /// 60,000 entries claimed held the worker 2.3 ms, a full 2048-entry RX ring at 1 Mpps.)
    fn entry(&mut self, key: [u64; KEY_WORDS]) -> Option<u32> {
        let mask = self.index.len() - 1;
        let mut i = key_hash(&key) as usize & mask;
        // At most half full, so an empty slot ends every probe sequence.
        loop {
            match *self.index.get(i)? {
                UNTRACKED => break,
                e if self.stats.holds(e, &key) => return Some(e),
                _ => i = (i + 1) & mask,
            }
        }
        let e = self.stats.claim(key)?;
        *self.index.get_mut(i)? = e;
        Some(e)
    }

    /// The counters this processor publishes (take it before handing the processor over).
    pub fn stats(&self) -> Arc<PipelineStats> {
        self.stats.clone()
    }

    fn publish(&mut self, vips: usize) {
        let s = &self.stats;
        s.flows
            .store(self.worker.flows().len() as u64, Ordering::Relaxed);
        s.evictions
            .store(self.worker.flows().evictions(), Ordering::Relaxed);
        let c = self.worker.counters();
        for (i, v) in c.vips.iter().take(vips).enumerate() {
            s.vip_packets[i].store(v.packets, Ordering::Relaxed);
            s.vip_bytes[i].store(v.bytes, Ordering::Relaxed);
        }
        self.publish_backends();
    }

    /// Adds what each slot sent since the last publish to its entry. The worker's per-slot
    /// counters are never reset (a slot just means another backend after a snapshot
    /// change), so deltas against `last` are what the slot sent under the current `map`.
    fn publish_backends(&mut self) {
        let counted = &self.worker.counters().backends;
        for ((&entry, last), c) in self.map.iter().zip(&mut self.last).zip(counted.iter()) {
            let (dp, db) = (c.packets - last.0, c.bytes - last.1);
            *last = (c.packets, c.bytes);
            if let Some(e) = self.stats.backends.get(entry as usize) {
                // Relaxed: one writer, and each counter is read on its own.
                e.packets.fetch_add(dp, Ordering::Relaxed);
                e.bytes.fetch_add(db, Ordering::Relaxed);
            }
        }
    }

    /// Points each backend slot of `snap` at its (VIP, address) entry, and starts its deltas
    /// from the worker's counters now. Call after publishing under the old map.
    fn remap(&mut self, snap: &Snapshot) {
        let counted = &self.worker.counters().backends;
        // Slots past the worker's counters are not counted at all; `counted.len()` is the
        // vectors' capacity, so neither resize allocates.
        let n = snap.backends().len().min(counted.len());
        self.map.clear();
        self.map.resize(n, UNTRACKED);
        self.last.clear();
        self.last
            .extend(counted[..n].iter().map(|c| (c.packets, c.bytes)));
        let mut untracked = 0;
        for vip in snap.vips() {
            for slot in vip.backends() {
                let slot = slot as usize;
                let entry = snap
                    .backends()
                    .get(slot)
                    .filter(|_| slot < n)
                    .and_then(|b| self.entry(encode_key(&vip.key, &b.addr, b.is_v4)));
                match entry {
                    Some(e) => self.map[slot] = e,
                    None => untracked += 1,
                }
            }
        }
        self.stats
            .untracked_backends
            .store(untracked, Ordering::Relaxed);
    }
}

impl Processor for PipelineProcessor {
    /// The largest encapsulation fits in the UMEM's extra headroom.
    fn headroom_written(&self) -> usize {
        super::ENCAP_HEADROOM as usize
    }

    fn process(&mut self, now_ns: u64, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        let snap = self.snapshot.load();
        if snap.generation() != self.generation {
            // Counts so far were made under the old slot layout: attribute them first.
            self.publish_backends();
            self.remap(&snap);
            self.vips = snap.vips().len();
            self.generation = snap.generation();
            self.stats.generation_at_ns.store(now_ns, Ordering::Relaxed);
            // Release: see `PipelineStats::generation`.
            self.stats
                .generation
                .store(self.generation, Ordering::Release);
        }
        self.worker.process(&snap, now_ns, frames, verdicts);
        self.sweep(now_ns, SWEEP_MAX_BATCH);
        if now_ns >= self.next_publish {
            self.next_publish = now_ns + PUBLISH_NS;
            self.publish(snap.vips().len());
        }
    }

    /// An idle worker publishes too, so the last traffic before a quiet spell shows up. It
    /// publishes under the layout of the snapshot it last ran a batch on, which is the one
    /// its counts were made under.
    fn housekeeping(&mut self, now_ns: u64) {
        self.sweep(now_ns, SWEEP_MAX_IDLE);
        if now_ns >= self.next_publish {
            self.next_publish = now_ns + PUBLISH_NS;
            self.publish(self.vips);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_again_in_any_order_and_never_claimed_twice() {
        let cfg = WorkerConfig {
            flow_capacity: 1 << 12,
            max_backends: 1000,
            ..WorkerConfig::default()
        };
        let snap = Arc::new(ArcSwap::from_pointee(
            Snapshot::new(&Default::default()).unwrap(),
        ));
        let mut p = PipelineProcessor::new(cfg, snap);
        let key = |i: u64| [0, 0xffff_0a00_0001, 0, 0xffff_c0a8_0000 + i, 80 | 6 << 16];
        for i in 0..1000 {
            assert_eq!(p.entry(key(i)), Some(i as u32));
        }
        // Found again (a backend that comes back), however the keys arrive.
        for i in (0..1000).rev().step_by(7) {
            assert_eq!(p.entry(key(i)), Some(i as u32));
        }
        // Full: a new pair has no entry, and the known ones keep theirs.
        assert_eq!(p.entry(key(1000)), None);
        assert_eq!(p.entry(key(999)), Some(999));
        assert_eq!(p.stats.claimed.load(Ordering::Relaxed), 1000);
        assert_eq!(p.stats.backends().count(), 1000);
    }

    #[test]
    fn sweep_covers_the_table_once_per_period_in_bounded_steps() {
        let buckets = 262_144;
        let mut s = Sweep::default();
        let mut t = 1_000_000_000;
        // The first call has a long history: it sweeps its cap, not the whole table.
        assert_eq!(s.due(t, buckets, SWEEP_MAX_BATCH), SWEEP_MAX_BATCH as usize);
        // Batches every 64 µs for one period sweep the table once, a few buckets each.
        let (mut total, mut most) = (0, 0);
        let end = t + SWEEP_NS;
        while t < end {
            t += 64_000;
            let n = s.due(t, buckets, SWEEP_MAX_BATCH);
            (total, most) = (total + n, most.max(n));
        }
        assert!(total.abs_diff(buckets as usize) <= 1, "swept {total}");
        assert!(most <= 4, "{most} buckets after one batch");
        // After an idle minute: the cap, then nothing more is owed.
        t += 60_000_000_000;
        assert_eq!(s.due(t, buckets, SWEEP_MAX_BATCH), SWEEP_MAX_BATCH as usize);
        assert_eq!(s.due(t, buckets, SWEEP_MAX_BATCH), 0);
        // A clock that steps back owes nothing.
        assert_eq!(s.due(t - 1_000_000, buckets, SWEEP_MAX_BATCH), 0);
    }
}
