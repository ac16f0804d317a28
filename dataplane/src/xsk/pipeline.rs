//! The dsrgate pipeline as a worker's [`Processor`]: the per-worker pipeline state plus the
//! shared, atomically swapped configuration snapshot.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Processor;
use crate::pipeline::{Frame, Verdict, Worker, WorkerConfig};
use crate::snapshot::Snapshot;

/// Flow-table buckets scanned for idle entries after each batch: spreads expiry over time so
/// no batch pays for a full sweep.
const EXPIRE_BUCKETS: usize = 64;

/// Runs [`crate::pipeline::Worker`] against the current snapshot.
///
/// The control side publishes a new snapshot with `ArcSwap::store`; the worker loads the
/// current one once per batch (a wait-free read), so a swap never blocks the worker and loses
/// no packet: the batch in progress finishes on the snapshot it started with, the next batch
/// sees the new one, and the flow table carries established flows across.
pub struct PipelineProcessor {
    worker: Worker,
    snapshot: Arc<ArcSwap<Snapshot>>,
}

impl PipelineProcessor {
    pub fn new(cfg: WorkerConfig, snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        PipelineProcessor {
            worker: Worker::new(cfg),
            snapshot,
        }
    }
}

impl Processor for PipelineProcessor {
    fn process(&mut self, now_ns: u64, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        let snap = self.snapshot.load();
        self.worker.process(&snap, now_ns, frames, verdicts);
        self.worker.expire_flows(now_ns, EXPIRE_BUCKETS);
    }
}
