//! AF_XDP poll-mode workers: the only place in dsrgate that does packet I/O.
//!
//! One socket per RX queue of the uplink, one worker thread per socket, pinned to a configured
//! core (unpinned if none is configured). Each worker owns its UMEM (page-aligned, with
//! [`ENCAP_HEADROOM`] in front of every frame), its fill, completion, RX and TX rings, its
//! processor state, and its counters. In a two-arm topology the worker also opens a TX socket
//! on the downlink that shares its UMEM, so forwarding hands a descriptor from one device to
//! the other without a copy.
//!
//! Socket library: xdpilone, not xsk-rs. xsk-rs builds libxdp and libbpf from source through
//! `libxdp-sys`, and that build writes into cargo's registry copy of the crate, while dsrgate's
//! build must never write outside `target/`. xdpilone is pure Rust over the kernel's uapi
//! (no C build at all), and it has been verified here with aya 0.14. It reserves ring slots
//! in a way that can return fewer than are free, which the worker loop handles.

mod bare;
mod pipeline;
mod socket;
mod stats;
#[cfg(test)]
mod tests;
mod worker;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The cell [`PipelineProcessor`] reads snapshots from (re-exported for its callers).
pub use arc_swap::ArcSwap;
pub use bare::{BareForwarder, TunnelForwarder};
pub use pipeline::{PipelineProcessor, PipelineStats};
pub use socket::{max_rx_frame, rx_queues, XdpStats, XskMode, ENCAP_HEADROOM, XDP_PACKET_HEADROOM};
pub use stats::{WorkerStats, DROP_SLOTS};

use crate::bpf::ShedFlags;
use crate::pipeline::{Frame, Verdict};
use stats::SharedStats;
use worker::{Shedding, Worker};

/// CLOCK_MONOTONIC in nanoseconds: the clock the workers stamp their batches (and so their
/// flow entries) with. Served by the vDSO, so reading it once per batch costs no syscall.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Turns a batch of received frames into verdicts. Implemented by the pipeline adapter and by
/// [`BareForwarder`]; one instance per worker, so it may keep per-worker state freely.
pub trait Processor: Send {
    /// `frames` and `verdicts` have the same length (at most [`crate::pipeline::BATCH`]);
    /// `now_ns` is read once per batch (CLOCK_MONOTONIC).
    fn process(&mut self, now_ns: u64, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]);

    /// Bytes in front of each frame that `process` may write (an encapsulation's headroom):
    /// the worker prefetches them for writing along with the frame's headers.
    fn headroom_written(&self) -> usize {
        0
    }

    /// Called about once a second whether or not traffic flows, so that a processor can
    /// publish what an idle worker would otherwise hold back until its next batch.
    fn housekeeping(&mut self, _now_ns: u64) {}
}

/// The XDP program that steers traffic into the workers' sockets. [`Workers`] registers each
/// uplink socket under its RX queue, and drops the steering handle first on stop, which
/// detaches the program so traffic falls back to the kernel before the sockets close.
pub trait Steering: Send {
    /// Point the XSKMAP slot of RX queue `queue` at the socket `fd`.
    fn insert_xsk(&mut self, queue: u32, fd: RawFd) -> std::io::Result<()>;

    /// How many RX queues, from queue 0, the program can steer to a socket (its XSKMAP's
    /// size). [`Workers::start`] serves no more than this.
    fn max_queues(&self) -> u32 {
        u32::MAX
    }

    /// The program's per-queue overload flags, if it has them: an overloaded worker sets
    /// its queue's flag so that the program drops its traffic before the kernel copies it.
    fn shed_flags(&self) -> Option<Arc<ShedFlags>> {
        None
    }
}

impl Steering for crate::bpf::Steer {
    fn insert_xsk(&mut self, queue: u32, fd: RawFd) -> std::io::Result<()> {
        self.set_socket(queue, &fd).map_err(std::io::Error::other)
    }

    fn max_queues(&self) -> u32 {
        crate::bpf::steer::MAX_QUEUES as u32
    }

    fn shed_flags(&self) -> Option<Arc<ShedFlags>> {
        self.shed_flags()
            .map_err(|error| tracing::warn!(%error, "no overload shedding in XDP"))
            .ok()
    }
}

/// Where and how the workers run.
#[derive(Clone, Debug)]
pub struct XskConfig {
    /// Interface toward the router. Steered VIP traffic arrives here; `Reply` frames leave here,
    /// and so do `Tx` frames in a one-arm topology.
    pub uplink: String,
    /// Interface toward the nodes in a two-arm topology: `Tx` frames leave here. It needs at
    /// least as many queues as the uplink has workers. `None` means one-arm. Two-arm
    /// sockets are bound in copy mode, even on NICs with zero-copy (see
    /// `socket::uplink_bind_flags`).
    pub downlink: Option<String>,
    /// Cores to pin workers to: worker `i` runs on `cores[i % cores.len()]`. Empty: unpinned.
    pub cores: Vec<usize>,
    /// Number of uplink RX queues to serve, from queue 0. `None`: all of them
    /// (`ETHTOOL_GCHANNELS`).
    pub queues: Option<u32>,
    /// UMEM frames per worker (each `frame_size` bytes); at least twice `ring_size`.
    pub frames: u32,
    /// Bytes per frame: a power of two, at least 2048.
    pub frame_size: u32,
    /// Entries in each of the fill, completion, RX and TX rings: a power of two.
    pub ring_size: u32,
    /// `XDP_MAX_TX_SKB_BUDGET`: frames one copy-mode `sendto` may send (kernel default 32).
    pub tx_skb_budget: u32,
}

impl XskConfig {
    /// One-arm defaults for `uplink`: all queues, unpinned, 4096 frames of 4 KiB, 2048-entry
    /// rings, TX budget 256 (measured here: +30% in copy mode; more did not help).
    pub fn new(uplink: &str) -> Self {
        XskConfig {
            uplink: uplink.to_string(),
            downlink: None,
            cores: Vec::new(),
            queues: None,
            frames: 4096,
            frame_size: 4096,
            ring_size: 2048,
            tx_skb_budget: 256,
        }
    }

    /// The largest uplink MTU whose frames the workers receive whole: [`max_rx_frame`] less
    /// an Ethernet header and one 802.1Q tag (3758 with 4 KiB frames). A VIP packet larger
    /// than this is dropped by the kernel before any worker sees it, so it gets no "too big"
    /// reply either.
    pub fn max_mtu(&self) -> u32 {
        max_rx_frame(self.frame_size).saturating_sub(ETH_VLAN_HEADER)
    }
}

/// An Ethernet header (14 bytes) and one 802.1Q tag (4), the most L2 header the workers
/// handle in front of an IP packet.
const ETH_VLAN_HEADER: u32 = 18;

/// Frames of one worker by location. The difference from `total` is what the kernel holds:
/// frames in transit and, in copy mode, frames it took from the fill ring but then dropped
/// because the RX ring was full (it keeps those for its next receive). With no overload
/// since start, `accounted() == total` once traffic stops. While frames move, a count is
/// only an estimate, and may even exceed `total`: the kernel publishes a received frame on
/// RX before it releases its fill entry, and in copy mode a send that fails with EBUSY
/// completes a frame before it releases its TX entry, so one frame can be seen in two
/// rings at once, whatever order they are read in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub total: u32,
    pub fill: u32,
    pub rx: u32,
    pub tx: u32,
    pub completion: u32,
    pub stash: u32,
}

impl Census {
    pub fn accounted(&self) -> u32 {
        self.fill + self.rx + self.tx + self.completion + self.stash
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    #[error("interface {iface}: {source}")]
    Iface {
        iface: String,
        source: std::io::Error,
    },
    #[error("UMEM setup: {0}")]
    Umem(std::io::Error),
    #[error("AF_XDP socket on {iface} queue {queue}: {op}: {source}")]
    Socket {
        iface: String,
        queue: u32,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("steering: inserting the socket for queue {queue} into the XSKMAP: {source}")]
    Steering { queue: u32, source: std::io::Error },
    #[error("worker thread: {0}")]
    Thread(std::io::Error),
    #[error("worker {worker} panicked: {message}")]
    Panicked { worker: usize, message: String },
}

/// A worker thread that ended while the workers were meant to run. A worker returns only
/// when stopped, so it panicked: the panic hook has printed its message under the thread's
/// name, and its sockets are closed, which takes the uplink one out of the XSKMAP: its RX
/// queue's VIP traffic goes to the kernel (the program counts it as `no_socket`), which
/// does not own the VIPs, until [`Workers::stop`] detaches steering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The worker's index, which is also its uplink RX queue.
    pub worker: usize,
    /// The thread's name (`xsk-<uplink>-q<queue>`), as the panic message shows it.
    pub thread: String,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AF_XDP worker {} (thread {}) ended while running",
            self.worker, self.thread
        )
    }
}

struct Handle {
    thread: JoinHandle<Census>,
    stats: Arc<SharedStats>,
    info: WorkerStats,
}

/// The running workers. [`Workers::stop`] (or drop) detaches steering, stops and joins the
/// threads, and closes the sockets, in that order.
pub struct Workers<S: Steering> {
    handles: Vec<Handle>,
    stop: Arc<AtomicBool>,
    steering: Option<S>,
}

impl<S: Steering> Workers<S> {
    /// Open one socket per uplink RX queue (plus a downlink TX socket each in two-arm), register
    /// them with `steering`, and start one worker per socket running `make(i)`, pinned when
    /// cores are configured.
    ///
    /// Sockets are created in the calling thread's network namespace.
    pub fn start<P, F>(
        cfg: &XskConfig,
        mut steering: S,
        mut make: F,
    ) -> Result<Workers<S>, XskError>
    where
        P: Processor + 'static,
        F: FnMut(usize) -> P,
    {
        let queues = cfg.queues.unwrap_or_else(|| socket::rx_queues(&cfg.uplink));
        if queues == 0 {
            return Err(XskError::Config("zero queues".into()));
        }
        let queues = served_queues(&cfg.uplink, queues, steering.max_queues());
        let mut ios = Vec::with_capacity(queues as usize);
        for q in 0..queues {
            let io = socket::open(&socket::Placement {
                uplink: &cfg.uplink,
                downlink: cfg.downlink.as_deref(),
                queue: q,
                frames: cfg.frames,
                frame_size: cfg.frame_size,
                ring_size: cfg.ring_size,
                tx_skb_budget: cfg.tx_skb_budget,
            })?;
            tracing::info!(
                iface = %cfg.uplink,
                downlink = cfg.downlink.as_deref().unwrap_or("-"),
                queue = q,
                mode = %io.mode,
                "AF_XDP socket bound"
            );
            ios.push(io);
        }

        warn_shared_cores(&cfg.cores, ios.len());
        let shed = steering.shed_flags();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Workers {
            handles: Vec::with_capacity(ios.len()),
            stop: stop.clone(),
            steering: None,
        };
        for (i, io) in ios.into_iter().enumerate() {
            let core = (!cfg.cores.is_empty()).then(|| cfg.cores[i % cfg.cores.len()]);
            let mut info = WorkerStats {
                iface: cfg.uplink.clone(),
                queue: i as u32,
                mode: Some(io.mode),
                ..WorkerStats::default()
            };
            let stats = Arc::new(SharedStats::default());
            // `new` fills the fill ring, so the socket can receive as soon as it is steered to.
            let shedding = shed.clone().map(|flags| Shedding::new(flags, i as u32));
            let worker = Worker::new(io, make(i), stats.clone(), stop.clone(), shedding);
            steering
                .insert_xsk(i as u32, worker.io.up.fd())
                .map_err(|source| XskError::Steering {
                    queue: i as u32,
                    source,
                })?;
            let (pinned_tx, pinned_rx) = std::sync::mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name(format!("xsk-{}-q{i}", cfg.uplink))
                .spawn(move || {
                    let pinned = core.filter(|&id| {
                        let ok = core_affinity::set_for_current(core_affinity::CoreId { id });
                        if !ok {
                            tracing::warn!(
                                core = id,
                                queue = i,
                                "could not pin worker; it runs unpinned"
                            );
                        }
                        ok
                    });
                    // The receiver waits for this before the worker is counted as started.
                    let _ = pinned_tx.send(pinned);
                    worker.run()
                })
                .map_err(XskError::Thread)?;
            // The core the worker runs on, only once it is pinned there. A thread that
            // ended before saying is unpinned here (and found ended by [`Workers::ended`]).
            info.core = pinned_rx.recv().unwrap_or(None);
            workers.handles.push(Handle {
                thread,
                stats,
                info,
            });
        }
        workers.steering = Some(steering);
        Ok(workers)
    }

    /// The steering program, e.g. to read its counters while running.
    pub fn steering(&self) -> &S {
        self.steering
            .as_ref()
            .expect("steering is only taken on stop")
    }

    /// The steering program, e.g. to change its VIPs while running.
    pub fn steering_mut(&mut self) -> &mut S {
        self.steering
            .as_mut()
            .expect("steering is only taken on stop")
    }

    /// A snapshot of every worker's counters.
    pub fn stats(&self) -> Vec<WorkerStats> {
        self.handles
            .iter()
            .map(|h| {
                let mut s = h.info.clone();
                h.stats.read(&mut s);
                s
            })
            .collect()
    }

    /// The first worker whose thread has ended, if any. Stop is only ever requested by
    /// [`Workers::stop`] or drop, which consume the workers, so any thread found ended here
    /// ended on its own. Cheap (an atomic load per worker): meant to be polled.
    pub fn ended(&self) -> Option<Ended> {
        self.handles
            .iter()
            .enumerate()
            .find(|(_, h)| h.thread.is_finished())
            .map(|(worker, h)| Ended {
                worker,
                thread: h.thread.thread().name().unwrap_or("?").to_string(),
            })
    }

    /// Detach steering, stop and join the workers, and close their sockets. Returns each
    /// worker's final frame census (every frame accounted for, or a leak).
    pub fn stop(mut self) -> Result<Vec<Census>, XskError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<Vec<Census>, XskError> {
        drop(self.steering.take());
        // Relaxed: the flag carries no data; each worker's results come back through `join`,
        // which synchronises.
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::with_capacity(self.handles.len());
        let mut err = None;
        for (worker, h) in self.handles.drain(..).enumerate() {
            match h.thread.join() {
                Ok(c) => out.push(c),
                Err(payload) => {
                    let message = panic_message(payload.as_ref());
                    err.get_or_insert(XskError::Panicked { worker, message });
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// How many of `queues` RX queues of `iface` get a worker: all of them, or the first
/// `max` the steering program can steer to (warned: the others' VIP traffic goes to the
/// kernel, counted by the program as `no_socket`).
pub(crate) fn served_queues(iface: &str, queues: u32, max: u32) -> u32 {
    if queues <= max {
        return queues;
    }
    tracing::warn!(
        iface,
        queues,
        served = max,
        "more RX queues than the steering program serves: queues {max} and above get no \
         worker, and their VIP traffic goes to the kernel (counted as no_socket); reduce \
         the channels (ethtool -L) or spread RSS over the first {max} queues \
         (ethtool -X {iface} equal {max})"
    );
    max
}

/// Warns when `workers` workers share the configured `cores` (more RX queues than cores:
/// worker `i` runs on `cores[i % cores.len()]`), naming the workers on each core. Legitimate,
/// but each shared core then polls several queues.
fn warn_shared_cores(cores: &[usize], workers: usize) {
    if cores.is_empty() || workers <= cores.len() {
        return;
    }
    let sharing: Vec<String> = cores
        .iter()
        .enumerate()
        .map(|(c, core)| {
            let on: Vec<String> = (c..workers)
                .step_by(cores.len())
                .map(|w| w.to_string())
                .collect();
            format!("core {core}: workers {}", on.join(", "))
        })
        .collect();
    tracing::warn!(
        workers,
        cores = cores.len(),
        sharing = %sharing.join("; "),
        "more RX queues than worker_cores: workers share cores"
    );
}

/// The text of a panic payload: `panic!` makes a `&str` or a `String`.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

impl<S: Steering> Drop for Workers<S> {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "stopping AF_XDP workers");
        }
    }
}
