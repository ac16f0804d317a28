//! Worker counters. Each worker counts in plain integers and publishes them once per batch
//! with relaxed stores into its own `SharedStats`; readers take a snapshot whenever they like.
//! One writer per counter and no cross-counter consistency promised, so `Relaxed` is enough:
//! each value is a monotonic total that a reader may see a batch late.

use std::sync::atomic::{AtomicU64, Ordering};

use super::socket::{XdpStats, XskMode};
use crate::pipeline::DropReason;

/// Drop counters, one per [`DropReason`], indexed by `DropReason as usize`.
pub const DROP_SLOTS: usize = DropReason::COUNT;

/// A worker's own counters (not shared).
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) rx: u64,
    pub(crate) tx: u64,
    pub(crate) reply: u64,
    pub(crate) completed: u64,
    pub(crate) pass_dropped: u64,
    pub(crate) drops: [u64; DROP_SLOTS],
    pub(crate) bad_verdicts: u64,
    pub(crate) bad_descs: u64,
    pub(crate) tx_ring_full: u64,
    pub(crate) tx_ring_stalls: u64,
    pub(crate) kick_again: u64,
    pub(crate) kick_busy: u64,
    pub(crate) kick_errors: u64,
    pub(crate) idle_polls: u64,
    pub(crate) shed_starts: u64,
    pub(crate) kernel: XdpStats,
}

impl Counters {
    pub(crate) fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }
}

/// A snapshot of one worker's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub iface: String,
    pub queue: u32,
    /// The AF_XDP mode the kernel granted.
    pub mode: Option<XskMode>,
    /// The core the worker is pinned to, if any.
    pub core: Option<usize>,
    /// Frames taken from the RX ring.
    pub rx: u64,
    /// Frames queued toward the nodes (`Verdict::Tx`): put in a TX ring.
    pub tx: u64,
    /// Frames queued back out of the uplink (`Verdict::Reply`): put in a TX ring.
    pub reply: u64,
    /// Frames the kernel has finished transmitting (taken from the completion rings).
    pub completed: u64,
    /// `Verdict::Pass` frames, which an AF_XDP socket cannot return to the kernel: dropped.
    pub pass_dropped: u64,
    /// Drops by pipeline reason, indexed by `DropReason as usize` (names: `DropReason::ALL`).
    pub drops: [u64; DROP_SLOTS],
    /// Verdicts naming bytes outside the frame's chunk (a pipeline bug): dropped.
    pub bad_verdicts: u64,
    /// RX descriptors outside the UMEM (never expected from the kernel): skipped.
    pub bad_descs: u64,
    /// Frames that found no TX slot after processing: dropped.
    pub tx_ring_full: u64,
    /// Iterations that received nothing because the TX ring had no room.
    pub tx_ring_stalls: u64,
    /// `sendto` returned EAGAIN (copy-mode budget spent with frames still queued).
    pub kick_again: u64,
    /// `sendto` returned EBUSY (the peer's queue was full).
    pub kick_busy: u64,
    /// `sendto` failed otherwise (device down or gone).
    pub kick_errors: u64,
    /// Times the worker slept in `poll` for lack of traffic, with nothing left to send (a
    /// worker whose TX does not drain is not idle: it is stalled).
    pub idle_polls: u64,
    /// Times the worker fell behind and had the steering program shed its queue's traffic
    /// (the packets shed are counted by the program).
    pub shed_starts: u64,
    /// The kernel's `XDP_STATISTICS` for the uplink socket, refreshed once a second.
    pub kernel: XdpStats,
}

impl WorkerStats {
    /// Every frame the worker dropped itself, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum::<u64>() + self.pass_dropped + self.bad_verdicts + self.tx_ring_full
    }
}

macro_rules! shared {
    ($($f:ident),*) => {
        /// The published copy of a worker's counters.
        #[derive(Default)]
        pub(crate) struct SharedStats {
            $($f: AtomicU64,)*
            drops: [AtomicU64; DROP_SLOTS],
            kernel: [AtomicU64; 6],
        }

        impl SharedStats {
            pub(crate) fn publish(&self, c: &Counters) {
                $(self.$f.store(c.$f, Ordering::Relaxed);)*
                for (a, v) in self.drops.iter().zip(c.drops) {
                    a.store(v, Ordering::Relaxed);
                }
                let k = c.kernel;
                let kv = [
                    k.rx_dropped,
                    k.rx_invalid_descs,
                    k.tx_invalid_descs,
                    k.rx_ring_full,
                    k.rx_fill_ring_empty_descs,
                    k.tx_ring_empty_descs,
                ];
                for (a, v) in self.kernel.iter().zip(kv) {
                    a.store(v, Ordering::Relaxed);
                }
            }

            pub(crate) fn read(&self, into: &mut WorkerStats) {
                $(into.$f = self.$f.load(Ordering::Relaxed);)*
                for (d, a) in into.drops.iter_mut().zip(&self.drops) {
                    *d = a.load(Ordering::Relaxed);
                }
                let k: [u64; 6] = std::array::from_fn(|i| self.kernel[i].load(Ordering::Relaxed));
                into.kernel = XdpStats {
                    rx_dropped: k[0],
                    rx_invalid_descs: k[1],
                    tx_invalid_descs: k[2],
                    rx_ring_full: k[3],
                    rx_fill_ring_empty_descs: k[4],
                    tx_ring_empty_descs: k[5],
                };
            }
        }
    };
}

shared!(
    rx,
    tx,
    reply,
    completed,
    pass_dropped,
    bad_verdicts,
    bad_descs,
    tx_ring_full,
    tx_ring_stalls,
    kick_again,
    kick_busy,
    kick_errors,
    idle_polls,
    shed_starts
);
