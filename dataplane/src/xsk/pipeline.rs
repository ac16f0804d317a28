//! The dsrgate pipeline as a worker's [`Processor`]: the per-worker pipeline state plus the
//! shared, atomically swapped configuration snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Processor;
use crate::pipeline::{Frame, Verdict, Worker, WorkerConfig};
use crate::snapshot::Snapshot;

/// Flow-table buckets scanned for idle entries after each batch: spreads expiry over time so
/// no batch pays for a full sweep.
const EXPIRE_BUCKETS: usize = 64;

/// How often a busy worker copies its flow-table and per-VIP counters to [`PipelineStats`].
const PUBLISH_NS: u64 = 100_000_000;

/// What a pipeline worker shows the control side, beside the loop counters of
/// [`super::WorkerStats`]: which snapshot it runs and since when, flow-table occupancy, and
/// per-VIP traffic. One writer (the worker), any number of readers; each value is
/// independent, so `Relaxed` is enough except for the generation/time pair (see
/// [`PipelineStats::generation`]).
pub struct PipelineStats {
    generation: AtomicU64,
    generation_at_ns: AtomicU64,
    flows: AtomicU64,
    evictions: AtomicU64,
    /// Per VIP, by snapshot index: frames and bytes received.
    vip_packets: Box<[AtomicU64]>,
    vip_bytes: Box<[AtomicU64]>,
}

impl PipelineStats {
    fn new(max_vips: usize) -> Self {
        let zeros = || (0..max_vips).map(|_| AtomicU64::new(0)).collect();
        PipelineStats {
            generation: AtomicU64::new(0),
            generation_at_ns: AtomicU64::new(0),
            flows: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            vip_packets: zeros(),
            vip_bytes: zeros(),
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
}

impl PipelineProcessor {
    pub fn new(cfg: WorkerConfig, snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        PipelineProcessor {
            worker: Worker::new(cfg),
            snapshot,
            stats: Arc::new(PipelineStats::new(cfg.max_vips)),
            generation: 0,
            next_publish: 0,
        }
    }

    /// The counters this processor publishes (take it before handing the processor over).
    pub fn stats(&self) -> Arc<PipelineStats> {
        self.stats.clone()
    }

    fn publish(&self, vips: usize) {
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
    }
}

impl Processor for PipelineProcessor {
    fn process(&mut self, now_ns: u64, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        let snap = self.snapshot.load();
        if snap.generation() != self.generation {
            self.generation = snap.generation();
            self.stats.generation_at_ns.store(now_ns, Ordering::Relaxed);
            // Release: see `PipelineStats::generation`.
            self.stats
                .generation
                .store(self.generation, Ordering::Release);
        }
        self.worker.process(&snap, now_ns, frames, verdicts);
        self.worker.expire_flows(now_ns, EXPIRE_BUCKETS);
        if now_ns >= self.next_publish {
            self.next_publish = now_ns + PUBLISH_NS;
            self.publish(snap.vips().len());
        }
    }
}
