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
/// [`PipelineStats::generation`]) and an entry's key (see `Entry`).
pub struct PipelineStats {
    generation: AtomicU64,
    generation_at_ns: AtomicU64,
    /// The generation live when the worker last looked between batches, holding no
    /// snapshot (see [`PipelineStats::oldest_held`]).
    idle_generation: AtomicU64,
    flows: AtomicU64,
    evictions: AtomicU64,
    /// Per VIP key: frames and bytes received (see [`PipelineStats::vips`]).
    vips: Entries,
    /// VIPs of the current snapshot whose traffic is not counted, because the VIP table
    /// ([`vip_entries`] entries for the worker's lifetime) is full or the VIP is past the
    /// worker's per-VIP counters.
    untracked_vips: AtomicU64,
    /// Per (VIP, backend address): frames and bytes sent (see [`PipelineStats::backends`]).
    backends: Entries,
    /// Backend slots of the current snapshot whose traffic is not counted per backend,
    /// because the table (`WorkerConfig::max_backends` entries for the worker's lifetime)
    /// is full or the slot is past the worker's per-slot counters.
    untracked_backends: AtomicU64,
}

/// Entries of the per-VIP table: twice the VIPs one snapshot can count, so VIPs that come
/// and go over the worker's life have room beside a full snapshot's.
fn vip_entries(max_vips: usize) -> usize {
    max_vips.saturating_mul(2)
}

/// One key's counters. The worker writes `key` once, then sets `ready` with Release; a
/// reader loads `ready` with Acquire before `key`, so it never sees a half-written key. The
/// key never changes afterwards, so the counts under it are always that key's.
struct Entry {
    key: [AtomicU64; KEY_WORDS],
    ready: AtomicBool,
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// A fixed table of counters by key: entries are claimed in order and never reused, so a
/// key's counts only ever grow, whatever snapshots come and go.
struct Entries {
    entries: Box<[Entry]>,
    /// Entries claimed so far (only the worker reads or writes it).
    claimed: AtomicU64,
}

impl Entries {
    fn new(n: usize) -> Self {
        Entries {
            entries: (0..n)
                .map(|_| Entry {
                    key: Default::default(),
                    ready: AtomicBool::new(false),
                    packets: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                })
                .collect(),
            claimed: AtomicU64::new(0),
        }
    }

    /// True if entry `i` is claimed for `key`. Worker only.
    fn holds(&self, i: u32, key: &[u64; KEY_WORDS]) -> bool {
        self.entries.get(i as usize).is_some_and(|e| {
            e.key
                .iter()
                .zip(key)
                .all(|(a, &b)| a.load(Ordering::Relaxed) == b)
        })
    }

    /// Claims the next entry for `key`; `None` if the table is full. Worker only.
    fn claim(&self, key: [u64; KEY_WORDS]) -> Option<u32> {
        let claimed = self.claimed.load(Ordering::Relaxed) as usize;
        let e = self.entries.get(claimed)?;
        for (a, b) in e.key.iter().zip(key) {
            a.store(b, Ordering::Relaxed);
        }
        // Release: see `Entry`.
        e.ready.store(true, Ordering::Release);
        self.claimed.store(claimed as u64 + 1, Ordering::Relaxed);
        Some(claimed as u32)
    }

    /// Adds to entry `i` (if there is one). Worker only.
    fn add(&self, i: u32, packets: u64, bytes: u64) {
        if let Some(e) = self.entries.get(i as usize) {
            // Relaxed: one writer, and each counter is read on its own.
            e.packets.fetch_add(packets, Ordering::Relaxed);
            e.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// The claimed entries: key, packets, bytes.
    fn iter(&self) -> impl Iterator<Item = ([u64; KEY_WORDS], u64, u64)> + '_ {
        self.entries
            .iter()
            // Acquire: see `Entry`.
            .take_while(|e| e.ready.load(Ordering::Acquire))
            .map(|e| {
                (
                    std::array::from_fn(|i| e.key[i].load(Ordering::Relaxed)),
                    e.packets.load(Ordering::Relaxed),
                    e.bytes.load(Ordering::Relaxed),
                )
            })
    }
}

/// Where each claimed key is in an [`Entries`] table: open addressing with linear probing
/// over entry indices ([`UNTRACKED`] when empty), keyed by [`key_hash`], twice as many slots
/// as entries so it is at most half full. Entries are never freed, so neither are its
/// slots. Worker only.
struct Index(Box<[u32]>);

impl Index {
    fn new(entries: usize) -> Self {
        Index(vec![UNTRACKED; (entries * 2).next_power_of_two().max(2)].into_boxed_slice())
    }

    /// The entry in `table` for `key`, claiming a new one if it has none; `None` if the
    /// table is full. A few probes, however many entries are claimed. (A scan of the
    /// claimed entries cost ~1 ns each here, twice per new backend: one new node under 16
    /// VIPs with 60,000 entries claimed held the worker 2.3 ms, a full 2048-entry RX ring
    /// at 1 Mpps.)
    fn entry(&mut self, table: &Entries, key: [u64; KEY_WORDS]) -> Option<u32> {
        let mask = self.0.len() - 1;
        let mut i = key_hash(&key) as usize & mask;
        // At most half full, so an empty slot ends every probe sequence.
        loop {
            match *self.0.get(i)? {
                UNTRACKED => break,
                e if table.holds(e, &key) => return Some(e),
                _ => i = (i + 1) & mask,
            }
        }
        let e = table.claim(key)?;
        *self.0.get_mut(i)? = e;
        Some(e)
    }
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
        PipelineStats {
            generation: AtomicU64::new(0),
            generation_at_ns: AtomicU64::new(0),
            idle_generation: AtomicU64::new(0),
            flows: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            vips: Entries::new(vip_entries(max_vips)),
            untracked_vips: AtomicU64::new(0),
            backends: Entries::new(max_backends),
            untracked_backends: AtomicU64::new(0),
        }
    }

    /// The snapshot generation the worker last ran a batch on, and when (CLOCK_MONOTONIC
    /// ns) it first did. 0 before the first batch.
    pub fn generation(&self) -> (u64, u64) {
        // Acquire pairs with the Release store of the generation, which follows the store
        // of its time: a reader that sees a generation sees its time (or a later one's).
        let g = self.generation.load(Ordering::Acquire);
        (g, self.generation_at_ns.load(Ordering::Relaxed))
    }

    /// No snapshot older than this generation is held by the worker, now or later: it
    /// holds the one a batch loaded until the batch ends, and reports the batch's
    /// generation (once a batch on it has started, every older one is let go), and between
    /// batches, about once a second, the generation then live (it holds none then). 0
    /// until it has reported either. The control side keeps the snapshots it replaced until
    /// every worker is past them, so that the last reference to one is never dropped (and
    /// the snapshot freed) on a worker.
    pub fn oldest_held(&self) -> u64 {
        // Acquire pairs with the Release stores of both, each made after the worker dropped
        // its hold on every older snapshot: a reader that sees a generation here sees those
        // references gone, so its own drop of an older snapshot is the last.
        let batch = self.generation.load(Ordering::Acquire);
        batch.max(self.idle_generation.load(Ordering::Acquire))
    }

    /// Flows in the worker's table and live flows it evicted for lack of room.
    pub fn flows(&self) -> (u64, u64) {
        (
            self.flows.load(Ordering::Relaxed),
            self.evictions.load(Ordering::Relaxed),
        )
    }

    /// Frames and bytes this worker received for each VIP it has seen in a snapshot, over
    /// its lifetime. Keyed by VIP, not by snapshot index (which shifts whenever a VIP that
    /// sorts earlier comes or goes), so the counts survive snapshot changes and only ever
    /// grow; a VIP that left the configuration keeps its last totals.
    pub fn vips(&self) -> impl Iterator<Item = (VipKey, u64, u64)> + '_ {
        self.vips
            .iter()
            .map(|(k, packets, bytes)| (decode_key(k).0, packets, bytes))
    }

    /// VIPs of the current snapshot not counted (the table is full, or the VIP is past the
    /// worker's per-VIP counters).
    pub fn untracked_vips(&self) -> u64 {
        self.untracked_vips.load(Ordering::Relaxed)
    }

    /// Frames and bytes this worker sent to each (VIP, backend address) pair it has seen in
    /// a snapshot, over its lifetime (bytes after encapsulation). Keyed by address, not by
    /// snapshot slot, so the counts survive snapshot changes and only ever grow; a pair
    /// that left the configuration keeps its last totals.
    pub fn backends(&self) -> impl Iterator<Item = (VipKey, IpAddr, u64, u64)> + '_ {
        self.backends.iter().map(|(k, packets, bytes)| {
            let (vip, addr) = decode_key(k);
            (vip, addr, packets, bytes)
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
    /// Per VIP of the snapshot the worker last ran a batch on: its entry in `stats.vips`,
    /// or [`UNTRACKED`]. Capacity `max_vips`, so rebuilding it never allocates.
    vip_map: Vec<u32>,
    /// Per VIP: the worker's (packets, bytes) counters as of the last publish.
    vip_last: Vec<(u64, u64)>,
    /// Where each claimed VIP is in `stats.vips`.
    vip_index: Index,
    /// Per backend slot of the current snapshot: its entry in `stats.backends`, or
    /// [`UNTRACKED`]. Capacity `max_backends`, so rebuilding it never allocates.
    map: Vec<u32>,
    /// Per backend slot: the worker's (packets, bytes) counters as of the last publish.
    last: Vec<(u64, u64)>,
    /// Where each claimed (VIP, backend) pair is in `stats.backends`.
    index: Index,
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
            // No snapshot has it: the first batch maps the counters of whichever it runs on.
            generation: u64::MAX,
            next_publish: 0,
            vip_map: Vec::with_capacity(cfg.max_vips),
            vip_last: Vec::with_capacity(cfg.max_vips),
            vip_index: Index::new(vip_entries(cfg.max_vips)),
            map: Vec::with_capacity(cfg.max_backends),
            last: Vec::with_capacity(cfg.max_backends),
            index: Index::new(cfg.max_backends),
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
    /// the table is full. Once per backend slot on a snapshot change.
    fn entry(&mut self, key: [u64; KEY_WORDS]) -> Option<u32> {
        self.index.entry(&self.stats.backends, key)
    }

    /// The counters this processor publishes (take it before handing the processor over).
    pub fn stats(&self) -> Arc<PipelineStats> {
        self.stats.clone()
    }

    fn publish(&mut self) {
        let s = &self.stats;
        s.flows
            .store(self.worker.flows().len() as u64, Ordering::Relaxed);
        s.evictions
            .store(self.worker.flows().evictions(), Ordering::Relaxed);
        self.publish_vips();
        self.publish_backends();
    }

    /// Adds what each VIP received since the last publish to its entry. Like the per-slot
    /// counters (see [`Self::publish_backends`]), the worker's per-VIP counters are by
    /// snapshot index and never reset, so deltas against `vip_last` are what the VIP at
    /// that index under the current `vip_map` received.
    fn publish_vips(&mut self) {
        let counted = &self.worker.counters().vips;
        for ((&entry, last), c) in self
            .vip_map
            .iter()
            .zip(&mut self.vip_last)
            .zip(counted.iter())
        {
            self.stats
                .vips
                .add(entry, c.packets - last.0, c.bytes - last.1);
            *last = (c.packets, c.bytes);
        }
    }

    /// Points each VIP index of `snap` at its entry, and starts its deltas from the
    /// worker's counters now. Call after publishing under the old map.
    fn remap_vips(&mut self, snap: &Snapshot) {
        let counted = &self.worker.counters().vips;
        // VIPs past the worker's counters are not counted at all; `counted.len()` is the
        // vectors' capacity, so neither grows.
        let n = snap.vips().len().min(counted.len());
        self.vip_last.clear();
        self.vip_last
            .extend(counted[..n].iter().map(|c| (c.packets, c.bytes)));
        self.vip_map.clear();
        let mut untracked = snap.vips().len() - n;
        for vip in &snap.vips()[..n] {
            let key = encode_key(&vip.key, &[0; 16], false);
            let entry = self.vip_index.entry(&self.stats.vips, key);
            untracked += usize::from(entry.is_none());
            self.vip_map.push(entry.unwrap_or(UNTRACKED));
        }
        self.stats
            .untracked_vips
            .store(untracked as u64, Ordering::Relaxed);
    }

    /// Adds what each slot sent since the last publish to its entry. The worker's per-slot
    /// counters are never reset (a slot just means another backend after a snapshot
    /// change), so deltas against `last` are what the slot sent under the current `map`.
    fn publish_backends(&mut self) {
        let counted = &self.worker.counters().backends;
        for ((&entry, last), c) in self.map.iter().zip(&mut self.last).zip(counted.iter()) {
            self.stats
                .backends
                .add(entry, c.packets - last.0, c.bytes - last.1);
            *last = (c.packets, c.bytes);
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
            // Counts so far were made under the old VIP and slot layout: attribute them
            // first.
            self.publish_vips();
            self.publish_backends();
            self.remap_vips(&snap);
            self.remap(&snap);
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
            self.publish();
        }
    }

    /// An idle worker publishes too, so the last traffic before a quiet spell shows up. It
    /// publishes under the layout of the snapshot it last ran a batch on, which is the one
    /// its counts were made under.
    fn housekeeping(&mut self, now_ns: u64) {
        // Between batches the worker holds no snapshot: the load's guard is dropped at the
        // end of the statement, before the store. Release: see `oldest_held`.
        let live = self.snapshot.load().generation();
        self.stats.idle_generation.store(live, Ordering::Release);
        self.sweep(now_ns, SWEEP_MAX_IDLE);
        if now_ns >= self.next_publish {
            self.next_publish = now_ns + PUBLISH_NS;
            self.publish();
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
        assert_eq!(p.stats.backends.claimed.load(Ordering::Relaxed), 1000);
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
