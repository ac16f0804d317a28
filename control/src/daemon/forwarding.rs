//! The daemon's hold on the packet path: the steering program on the upstream interface,
//! the AF_XDP workers behind it, the checks that tell the announce policy whether they
//! still forward, and the rebuild when an interface under them was re-created.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use dataplane::bpf::{self, Steer, SteerCounters};
use dataplane::pipeline::WorkerConfig;
use dataplane::snapshot::{Snapshot, SourcePrefix};
use dataplane::xsk::{
    rx_queues, PipelineProcessor, PipelineStats, WorkerStats, Workers, XskConfig, XskError,
};

use crate::config::{Config, Topology};
use crate::policy::DataplaneProblem;
use crate::publish::{proto, Live, Params};
use crate::sources::ServiceSet;
use crate::status::UplinkMtu;

/// A worker that has made no progress ([`progress`]) for this long is stalled. An idle
/// worker still counts a `poll` every 20 ms, a busy one counts frames.
const STALL_AFTER: Duration = Duration::from_secs(2);
/// The least time between two attempts to rebuild the packet path: each loads the
/// steering program (the verifier runs) and opens every socket again.
const REATTACH_EVERY: Duration = Duration::from_secs(5);
/// How long the configured interfaces must look the same (index, link up, RX queues)
/// before a rebuild: a network manager or udev may still be configuring one that
/// reappeared (channels, link up, bond ports), and the queue count and native or generic
/// mode that a rebuild finds stay until the next one.
const SETTLE: Duration = Duration::from_secs(2);

/// The settings of `[dataplane]` that only a restart can change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixed {
    pub uplink: String,
    pub downlink: Option<String>,
    pub cores: Vec<usize>,
    pub flow_table_size: u32,
}

impl Fixed {
    pub fn of(config: &Config) -> Fixed {
        let d = &config.dataplane;
        Fixed {
            uplink: d.upstream_interface.clone(),
            downlink: match d.topology {
                Topology::OneArm => None,
                Topology::TwoArm => d.downstream_interface.clone(),
            },
            cores: d.worker_cores.clone(),
            flow_table_size: d.flow_table_size,
        }
    }

    /// The interface tunnelled frames leave on.
    pub fn egress(&self) -> &str {
        self.downlink.as_deref().unwrap_or(&self.uplink)
    }
}

/// Stall detection: the last progress count of each worker and when it last changed.
struct Heartbeats {
    beats: Vec<(u64, Instant)>,
}

impl Heartbeats {
    fn new(progress: impl Iterator<Item = u64>, now: Instant) -> Heartbeats {
        Heartbeats {
            beats: progress.map(|p| (p, now)).collect(),
        }
    }

    /// Records each worker's progress count; returns the first worker whose count has not
    /// moved for longer than `after`.
    fn stalled(
        &mut self,
        progress: impl Iterator<Item = u64>,
        now: Instant,
        after: Duration,
    ) -> Option<usize> {
        let mut stalled = None;
        for (i, ((last, since), p)) in self.beats.iter_mut().zip(progress).enumerate() {
            if p != *last {
                (*last, *since) = (p, now);
            } else if now.duration_since(*since) > after && stalled.is_none() {
                stalled = Some(i);
            }
        }
        stalled
    }
}

/// The packet path, rebuilt in place when its interfaces are re-created or changed (see
/// [`Dataplane::reattach`]). Dropping it detaches the steering program, then stops the
/// workers (see [`Workers`]).
pub struct Dataplane {
    fixed: Fixed,
    /// The live snapshot the workers read, and the ones it replaced that a worker may still
    /// hold, released each turn once every worker is past them.
    snapshot: Live,
    /// The steered service ports, applied again to a rebuilt path.
    vips: Vec<bpf::Vip>,
    /// `None` between a failed rebuild and the next one that succeeds.
    path: Option<Path>,
    /// The interface the last rebuild was for, named as detached while no path runs.
    lost: String,
    /// The mode of the last attach, for the status while no path runs.
    xdp_mode: bpf::AttachMode,
    /// The configured interfaces as last read, and since when they have looked so.
    look: Look,
    look_since: Instant,
    /// The last check found a fault that a rebuild mends.
    due: bool,
    /// No rebuild is tried before this.
    next_attempt: Instant,
    /// Why a rebuild waits (an interface absent or down), logged once.
    waiting: Option<String>,
    /// The last error reading whether the uplink runs the steering program.
    unreadable: LastError,
    /// The last failed rebuild's error.
    failed: LastError,
    /// Successful rebuilds, for the log.
    restarts: u64,
    /// Whether the uplink's MTU still fits the workers' frames.
    mtu: MtuWatch,
}

/// Follows the uplink's MTU against the largest the workers receive whole
/// ([`XskConfig::max_mtu`]), which the daemon checks at start (`checks::uplink_mtu`). A
/// change past it at runtime is logged at error level and shown in the status
/// ([`MtuWatch::status`]), not made a [`DataplaneProblem`]: only VIP packets larger than
/// the limit are lost (dropped by the kernel, counted in the workers' `rx_dropped`), while
/// every smaller one is still forwarded, and withdrawing would move all of the traffic
/// away, or stop it altogether where every gateway got the same change.
struct MtuWatch {
    limit: u32,
    /// The uplink's MTU as last read (`None` until it first is).
    mtu: Option<u32>,
}

/// What [`MtuWatch::update`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MtuChange {
    /// The MTU is now this, over the limit (first seen so, or changed while so).
    TooLarge(u32),
    /// The MTU fits again.
    Fits(u32),
}

impl MtuWatch {
    fn new(limit: u32) -> MtuWatch {
        MtuWatch { limit, mtu: None }
    }

    /// The MTU while it is over the limit.
    fn over(&self) -> Option<u32> {
        self.mtu.filter(|&m| m > self.limit)
    }

    /// Takes the uplink's MTU as read now (`None` if it cannot be read: nothing changes).
    fn update(&mut self, mtu: Option<u32>) -> Option<MtuChange> {
        let mtu = mtu?;
        let was = self.over();
        self.mtu = Some(mtu);
        match self.over() {
            over if over == was => None,
            Some(m) => Some(MtuChange::TooLarge(m)),
            None => Some(MtuChange::Fits(mtu)),
        }
    }

    /// The MTU as last read against the limit, for `iface` (the uplink).
    fn status(&self, iface: &str) -> Option<UplinkMtu> {
        Some(UplinkMtu {
            interface: iface.to_owned(),
            mtu: self.mtu?,
            limit: self.limit,
        })
    }

    /// Reads `iface`'s MTU and logs a change past the limit or back.
    fn check(&mut self, iface: &str) {
        let limit = self.limit;
        match self.update(dataplane::iface::mtu(iface).ok()) {
            Some(MtuChange::TooLarge(mtu)) => tracing::error!(
                iface,
                mtu,
                limit,
                "{iface} has MTU {mtu}, more than the {limit} the AF_XDP workers can \
                 receive: the kernel drops larger VIP packets before any worker sees them \
                 (counted in the workers' rx_dropped), with no \"too big\" reply; set the \
                 MTU of {iface} to {limit} or less"
            ),
            Some(MtuChange::Fits(mtu)) => tracing::info!(
                iface,
                mtu,
                limit,
                "{iface}'s MTU fits the AF_XDP workers' frames again"
            ),
            None => {}
        }
    }
}

/// One attach: the steering program on the uplink and the workers behind it, on the
/// interfaces that had the configured names then.
struct Path {
    workers: Workers<Steer>,
    started: Started,
    xdp_mode: bpf::AttachMode,
    beats: Heartbeats,
    /// Each worker's pipeline counters, in worker order.
    pipelines: Vec<Arc<PipelineStats>>,
}

/// What a path was started on: the interfaces' indexes, and one worker per RX queue the
/// uplink had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Started {
    uplink: u32,
    downlink: Option<u32>,
    workers: u32,
}

/// One configured interface as it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Link {
    index: u32,
    /// Up and running (see [`dataplane::iface::link_up`]).
    up: bool,
}

/// The configured interfaces as they are now: each `None` while it does not exist (and the
/// downlink in one-arm), and the uplink's RX queues as [`rx_queues`] counts them, up to the
/// steering program's limit, which is how [`Workers::start`] counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Look {
    uplink: Option<Link>,
    downlink: Option<Link>,
    rx_queues: u32,
}

impl Look {
    fn read(fixed: &Fixed) -> Look {
        let link = |iface: &str| {
            ifindex_of(iface).map(|index| Link {
                index,
                up: dataplane::iface::link_up(iface),
            })
        };
        let uplink = link(&fixed.uplink);
        Look {
            uplink,
            downlink: fixed.downlink.as_deref().and_then(link),
            rx_queues: uplink.map_or(0, |_| {
                rx_queues(&fixed.uplink).min(bpf::steer::MAX_QUEUES as u32)
            }),
        }
    }
}

/// Which configured interface a fault is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    Uplink,
    Downlink,
}

/// Why a path is out of step with its interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fault {
    /// No path runs: the last rebuild failed.
    Unbuilt,
    /// The interface under the configured name is not the one the path runs on: gone, or
    /// re-created with a new index.
    Recreated(Arm),
    /// The uplink no longer runs our program (`bpftool link detach`, another loader).
    Detached,
    /// Whether the uplink runs our program cannot be read (a netlink error: ENOBUFS, EINTR).
    Unreadable(String),
    /// The uplink's RX queues are not the workers' (an `ethtool -L` since): a queue without
    /// a worker has no socket, so its VIP traffic goes to the kernel.
    Queues { workers: u32, now: u32 },
}

impl Fault {
    /// The problem that withdraws the VIPs for it, on `iface`. None for a queue change:
    /// every worker still forwards its queue's traffic until the rebuild.
    fn problem(&self, iface: &str) -> Option<DataplaneProblem> {
        let iface = iface.to_owned();
        match self {
            Fault::Queues { .. } => None,
            Fault::Unreadable(error) => Some(DataplaneProblem::SteeringUnreadable {
                iface,
                error: error.clone(),
            }),
            _ => Some(DataplaneProblem::XdpDetached { iface }),
        }
    }

    /// Whether a rebuild mends it. Not an unreadable state: the path most likely still
    /// forwards, and a rebuild would drop every flow table for one failed query.
    fn rebuilds(&self) -> bool {
        !matches!(self, Fault::Unreadable(_))
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Unbuilt => f.write_str("the last rebuild failed"),
            Fault::Recreated(_) => f.write_str("re-created under its name, or gone"),
            Fault::Detached => f.write_str("the steering program is no longer attached"),
            Fault::Unreadable(e) => write!(f, "whether the steering program runs: {e}"),
            Fault::Queues { workers, now } => {
                write!(f, "{now} RX queues, the workers were started for {workers}")
            }
        }
    }
}

impl Started {
    /// The fault of a path started thus when the interfaces look like `look`. `attached`
    /// answers whether the uplink still runs the steering program; it is only asked when
    /// the uplink is the one the path runs on.
    fn fault(&self, look: &Look, attached: impl FnOnce() -> Result<bool, String>) -> Option<Fault> {
        if look.uplink.map(|l| l.index) != Some(self.uplink) {
            return Some(Fault::Recreated(Arm::Uplink));
        }
        match attached() {
            Ok(true) => {}
            Ok(false) => return Some(Fault::Detached),
            Err(e) => return Some(Fault::Unreadable(e)),
        }
        if look.downlink.map(|l| l.index) != self.downlink {
            return Some(Fault::Recreated(Arm::Downlink));
        }
        (look.rx_queues != self.workers).then_some(Fault::Queues {
            workers: self.workers,
            now: look.rx_queues,
        })
    }
}

/// Why a rebuild must wait, if it must.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Unready<'a> {
    Absent(&'a str),
    Down(&'a str),
    /// The interfaces changed less than [`SETTLE`] ago.
    Settling,
}

impl Unready<'_> {
    /// What is logged (once) while a rebuild waits; nothing while the interfaces settle.
    fn message(&self) -> Option<String> {
        match self {
            Unready::Absent(i) => Some(format!("{i} does not exist: waiting for it to re-attach")),
            Unready::Down(i) => Some(format!(
                "{i} is down: waiting for it to come up to re-attach"
            )),
            Unready::Settling => None,
        }
    }
}

/// Whether the interfaces of `fixed`, looking like `look` for `stable`, can be rebuilt on:
/// each exists and is up, and they have stopped changing.
fn unready<'a>(fixed: &'a Fixed, look: &Look, stable: Duration) -> Option<Unready<'a>> {
    let arms = [Some((fixed.uplink.as_str(), look.uplink))]
        .into_iter()
        .chain([fixed.downlink.as_deref().map(|d| (d, look.downlink))]);
    for (iface, link) in arms.flatten() {
        match link {
            None => return Some(Unready::Absent(iface)),
            Some(l) if !l.up => return Some(Unready::Down(iface)),
            Some(_) => {}
        }
    }
    (stable < SETTLE).then_some(Unready::Settling)
}

/// The last of a repeating error, so that a repeat can be logged lower than a new one.
#[derive(Default)]
struct LastError(Option<String>);

impl LastError {
    /// Records `error`; true if it is not the last one.
    fn is_new(&mut self, error: &str) -> bool {
        let new = self.0.as_deref() != Some(error);
        if new {
            self.0 = Some(error.to_owned());
        }
        new
    }

    fn clear(&mut self) {
        self.0 = None;
    }
}

impl Path {
    /// Attaches steering to the uplink, starts one worker per RX queue, each reading
    /// `snapshot`, and steers `vips` to them. The attach never replaces another XDP
    /// program: it is a bpf_link, which the kernel refuses (EBUSY) on an interface that
    /// runs one (aya's netlink fallback for old kernels sets `XDP_FLAGS_UPDATE_IF_NOEXIST`).
    fn start(fixed: &Fixed, snapshot: &Arc<ArcSwap<Snapshot>>, vips: &[bpf::Vip]) -> Result<Path> {
        // Read before the sockets bind: a downlink re-created in between is then seen as
        // such (and rebuilt again) rather than missed.
        let downlink = fixed.downlink.as_deref().and_then(ifindex_of);
        let steer = Steer::attach(&fixed.uplink)
            .with_context(|| format!("attaching the steering program to {}", fixed.uplink))?;
        let uplink = steer.ifindex();
        let xdp_mode = steer.mode();
        let mut xsk = XskConfig::new(&fixed.uplink);
        xsk.downlink = fixed.downlink.clone();
        xsk.cores = fixed.cores.clone();
        let wc = WorkerConfig {
            flow_capacity: fixed.flow_table_size as usize,
            ..WorkerConfig::default()
        };
        let mut pipelines = Vec::new();
        let mut workers = Workers::start(&xsk, steer, |_| {
            let p = PipelineProcessor::new(wc, snapshot.clone());
            pipelines.push(p.stats());
            p
        })
        .with_context(|| format!("starting the AF_XDP workers on {}", fixed.uplink))?;
        set_vips(&mut workers, vips)?;
        let beats = Heartbeats::new(workers.stats().iter().map(progress), Instant::now());
        Ok(Path {
            started: Started {
                uplink,
                downlink,
                workers: u32::try_from(pipelines.len()).unwrap_or(u32::MAX),
            },
            workers,
            xdp_mode,
            beats,
            pipelines,
        })
    }

    /// Detaches steering (VIP traffic falls back to the kernel), then stops the workers;
    /// an error if one had panicked.
    fn stop(self, iface: &str) -> Result<(), XskError> {
        let census = self.workers.stop()?;
        let lost: i64 = census
            .iter()
            .map(|c| i64::from(c.total) - i64::from(c.accounted()))
            .sum();
        tracing::info!(
            iface,
            workers = census.len(),
            frames_in_kernel = lost,
            "workers stopped"
        );
        Ok(())
    }
}

impl Dataplane {
    /// Attaches steering to the upstream interface and starts one worker per RX queue,
    /// each reading `snapshot`.
    pub fn start(fixed: &Fixed, snapshot: Live) -> Result<Dataplane> {
        let path = Path::start(fixed, snapshot.cell(), &[])?;
        let now = Instant::now();
        Ok(Dataplane {
            fixed: fixed.clone(),
            snapshot,
            vips: Vec::new(),
            lost: fixed.uplink.clone(),
            xdp_mode: path.xdp_mode,
            path: Some(path),
            look: Look::read(fixed),
            look_since: now,
            due: false,
            next_attempt: now,
            waiting: None,
            unreadable: LastError::default(),
            failed: LastError::default(),
            restarts: 0,
            mtu: MtuWatch::new(XskConfig::new(&fixed.uplink).max_mtu()),
        })
    }

    pub fn fixed(&self) -> &Fixed {
        &self.fixed
    }

    pub fn xdp_mode(&self) -> bpf::AttachMode {
        self.xdp_mode
    }

    /// Steers exactly the services of `services` to the workers, now and after a rebuild.
    pub fn set_vips(&mut self, services: &ServiceSet) -> Result<()> {
        let vips: BTreeSet<bpf::Vip> = services
            .vips
            .iter()
            .flat_map(|v| {
                v.ports.iter().map(move |&port| bpf::Vip {
                    addr: v.addr,
                    proto: proto(v.proto).number(),
                    port,
                })
            })
            .collect();
        self.vips = vips.into_iter().collect();
        match &mut self.path {
            Some(path) => set_vips(&mut path.workers, &self.vips),
            None => Ok(()),
        }
    }

    /// Every worker's counters (none while no path runs).
    pub fn stats(&self) -> Vec<WorkerStats> {
        self.path
            .as_ref()
            .map_or_else(Vec::new, |p| p.workers.stats())
    }

    /// The steering program's counters and the uplink it runs on; `None` (logged) if its
    /// maps cannot be read, which [`Dataplane::problem`] reports as a detached program.
    pub fn steering(&self) -> Option<(&str, SteerCounters)> {
        match self.path.as_ref()?.workers.steering().counters() {
            Ok(c) => Some((&self.fixed.uplink, c)),
            Err(e) => {
                tracing::debug!(error = %e, "reading the steering program's counters");
                None
            }
        }
    }

    /// The uplink's MTU as [`Dataplane::problem`] last read it, against the workers' limit.
    pub fn uplink_mtu(&self) -> Option<UplinkMtu> {
        self.mtu.status(&self.fixed.uplink)
    }

    /// Each worker's pipeline counters (flow table, per-VIP traffic, snapshot generation).
    pub fn pipelines(&self) -> &[Arc<PipelineStats>] {
        self.path.as_ref().map_or(&[], |p| &p.pipelines)
    }

    /// Fails if a worker's thread has ended. A worker only returns when stopped, so it
    /// panicked (the panic hook logged the message under the thread's name), its socket is
    /// closed, and its RX queue's VIP traffic goes to the kernel (`no_socket`), which does
    /// not own the VIPs. Unlike a [`DataplaneProblem`]
    /// this does not heal: only a restart brings the worker back.
    pub fn check_workers(&self) -> Result<()> {
        match self.path.as_ref().and_then(|p| p.workers.ended()) {
            Some(ended) => anyhow::bail!("{ended}: it panicked; see the panic logged before"),
            None => Ok(()),
        }
    }

    /// Why the packet path cannot forward, if it cannot: an interface it no longer runs on
    /// or whose state cannot be read (first: the workers of a vanished interface also
    /// stall, and only this cause is healed by [`Dataplane::reattach`]), or a worker that
    /// stopped making progress. Also notes whether a rebuild is due, which a change of the
    /// uplink's RX queues calls for without withdrawing.
    pub fn problem(&mut self, stats: &[WorkerStats], now: Instant) -> Option<DataplaneProblem> {
        self.observe(now);
        self.mtu.check(&self.fixed.uplink);
        self.follow_mac();
        self.release_snapshots();
        let fault = self.fault();
        self.due = fault.as_ref().is_some_and(Fault::rebuilds);
        if let Some(problem) = fault.as_ref().and_then(|f| f.problem(self.iface(f))) {
            return Some(problem);
        }
        let path = self.path.as_mut()?;
        let worker = path
            .beats
            .stalled(stats.iter().map(progress), now, STALL_AFTER)?;
        Some(DataplaneProblem::WorkerStalled { worker })
    }

    /// Frees, here on the control thread, the replaced snapshots every worker is past
    /// (see [`Live`]); all of them while no worker runs.
    fn release_snapshots(&mut self) {
        let oldest = self
            .pipelines()
            .iter()
            .map(|p| p.oldest_held())
            .min()
            .unwrap_or(u64::MAX);
        self.snapshot.release(oldest);
    }

    /// Gives the steering program the uplink's MAC address again if it changed (`ip link
    /// set address`, a bond failing over to a port with its own MAC): it steers only frames
    /// to that address. One ioctl a turn; a change is seen within a turn, and VIP frames to
    /// the new address reach the kernel until then. An interface that cannot be read is
    /// left to [`Dataplane::problem`]'s checks (gone, or re-created: rebuilt).
    fn follow_mac(&mut self) {
        let Some(path) = self.path.as_mut() else {
            return;
        };
        let iface = &self.fixed.uplink;
        match path.workers.steering_mut().refresh_mac() {
            Ok(Some(mac)) => tracing::info!(
                iface,
                mac = %crate::status::format_mac(mac),
                "uplink MAC address changed: the steering program follows it"
            ),
            Ok(None) => {}
            Err(error) => tracing::debug!(iface, %error, "reading the uplink's MAC address"),
        }
    }

    /// Reads the configured interfaces; a change restarts the settle time.
    fn observe(&mut self, now: Instant) {
        let look = Look::read(&self.fixed);
        if look != self.look {
            (self.look, self.look_since) = (look, now);
        }
    }

    /// The path's fault as of the last [`Dataplane::observe`], asking the kernel whether
    /// the uplink still runs the steering program. An unreadable answer is logged when it
    /// differs from the last.
    fn fault(&mut self) -> Option<Fault> {
        let Some(path) = &self.path else {
            return Some(Fault::Unbuilt);
        };
        let fault = path.started.fault(&self.look, || {
            path.workers
                .steering()
                .attached()
                .map_err(|e| e.to_string())
        });
        match &fault {
            Some(Fault::Unreadable(error)) => {
                if self.unreadable.is_new(error) {
                    tracing::warn!(%error, iface = %self.fixed.uplink,
                        "cannot read whether the steering program is attached; withdrawing, not rebuilding");
                }
            }
            _ => self.unreadable.clear(),
        }
        fault
    }

    /// The interface `fault` is about.
    fn iface(&self, fault: &Fault) -> &str {
        match fault {
            Fault::Unbuilt => &self.lost,
            Fault::Recreated(Arm::Downlink) => self.fixed.downlink.as_deref().unwrap_or_default(),
            _ => &self.fixed.uplink,
        }
    }

    /// Rebuilds the packet path when [`Dataplane::problem`] found a fault that a rebuild
    /// mends: an interface re-created under its name, the steering program gone, the
    /// uplink's RX queues changed, or no path after a failed rebuild. It stops the old path
    /// (detaching steering if still attached, stopping the workers, closing their sockets),
    /// then attaches to the interfaces now under the configured names with the same
    /// settings, snapshot and VIPs. True if a new path runs.
    ///
    /// The fault is checked again first, so one failed netlink query never tears a working
    /// path down. At most one attempt per [`REATTACH_EVERY`], and none while a configured
    /// interface does not exist or is down, nor until the interfaces have looked the same
    /// for [`SETTLE`]. An attach that fails (another XDP program there, which is never
    /// replaced: see [`Path::start`]) is tried again; its error is logged at error level
    /// when it is new, at debug when it repeats. An error only if a worker of the old path
    /// had panicked, which does not heal.
    ///
    /// The new workers start with empty flow tables, so an open flow's next packet takes
    /// the current Maglev choice (same snapshot, same tables): it keeps its backend only if
    /// that is still the choice. A flow pinned across an earlier backend change (its
    /// recorded backend is no longer the choice for its hash: a backend added or back up, a
    /// weight changed) moves, as does one whose backend set changed meanwhile. New flows
    /// get the same choices as before. The workers' counters start again from zero, as
    /// after a restart.
    pub fn reattach(&mut self, now: Instant) -> Result<bool> {
        if !self.due || now < self.next_attempt {
            return Ok(false);
        }
        self.observe(now);
        let stable = now.saturating_duration_since(self.look_since);
        if let Some(unready) = unready(&self.fixed, &self.look, stable) {
            let wait = unready.message();
            if wait.is_some() && wait != self.waiting {
                tracing::warn!("{}", wait.as_deref().unwrap_or_default());
            }
            self.waiting = wait;
            return Ok(false);
        }
        self.waiting = None;
        let Some(fault) = self.fault().filter(Fault::rebuilds) else {
            self.due = false;
            return Ok(false);
        };
        let iface = self.iface(&fault).to_owned();
        self.next_attempt = now + REATTACH_EVERY;
        self.lost = iface.clone();
        if let Some(old) = self.path.take() {
            tracing::info!(reason = %fault, "re-attaching to {iface}: rebuilding the packet path");
            old.stop(&self.fixed.uplink)
                .context("stopping the workers to re-attach")?;
        } else {
            tracing::debug!(reason = %fault, "re-attaching to {iface}: rebuilding the packet path");
        }
        match Path::start(&self.fixed, self.snapshot.cell(), &self.vips) {
            Ok(path) => {
                self.restarts += 1;
                self.xdp_mode = path.xdp_mode;
                tracing::info!(
                    restarts = self.restarts,
                    xdp_mode = %path.xdp_mode,
                    workers = path.pipelines.len(),
                    "re-attached to {iface}"
                );
                self.path = Some(path);
                self.due = false;
                self.failed.clear();
                Ok(true)
            }
            Err(e) => {
                let error = format!("{e:#}");
                let message =
                    format!("re-attaching to {iface} failed; retrying every {REATTACH_EVERY:?}");
                if self.failed.is_new(&error) {
                    tracing::error!(error, "{message}");
                } else {
                    tracing::debug!(error, "{message}");
                }
                Ok(false)
            }
        }
    }

    /// Detaches steering (VIP traffic falls back to the kernel), then stops the workers.
    pub fn stop(self) {
        let Some(path) = self.path else { return };
        if let Err(e) = path.stop(&self.fixed.uplink) {
            tracing::error!(iface = %self.fixed.uplink, error = %e, "stopping the workers");
        }
    }
}

fn set_vips(workers: &mut Workers<Steer>, vips: &[bpf::Vip]) -> Result<()> {
    workers
        .steering_mut()
        .set_vips(vips)
        .context("updating the steering program's VIP map")
}

/// A number that grows while the worker does its job: frames received, frames the kernel
/// finished sending, and idle polls (which the worker counts only with nothing left to
/// send). Not the turns of its loop: a worker whose kicks fail or whose TX ring stays full
/// turns without forwarding anything, and must be found stalled.
fn progress(s: &WorkerStats) -> u64 {
    s.rx + s.completed + s.idle_polls
}

fn ifindex_of(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string; if_nametoindex only reads it.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}

/// The snapshot parameters from the config and the egress interface: outer source
/// addresses from `outer_source_prefix` (one prefix per family), else the interface's first
/// global address of each family, and the interface's MAC.
pub fn params(config: &Config, fixed: &Fixed, local_mac: [u8; 6]) -> Result<Params> {
    let d = &config.dataplane;
    let mut v4 = d.outer_source_prefix.v4.map(|n| SourcePrefix {
        addr: n.addr(),
        len: n.prefix_len(),
    });
    let mut v6 = d.outer_source_prefix.v6.map(|n| SourcePrefix {
        addr: n.addr(),
        len: n.prefix_len(),
    });
    if v4.is_none() || v6.is_none() {
        let egress = fixed.egress();
        let addrs = bpf::decap::interface_addresses(egress)
            .with_context(|| format!("listing the addresses of {egress}"))?;
        for a in addrs {
            match a {
                IpAddr::V4(a) if v4.is_none() => v4 = Some(SourcePrefix { addr: a, len: 32 }),
                IpAddr::V6(a) if v6.is_none() => v6 = Some(SourcePrefix { addr: a, len: 128 }),
                _ => {}
            }
        }
    }
    Ok(Params {
        maglev_size: d.maglev.m,
        maglev_seed: d.maglev.seed,
        tunnel_mtu: d.tunnel_mtu,
        outer_src_v4: v4,
        outer_src_v6: v6,
        local_mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_whose_loop_stops_turning_is_stalled() {
        let t0 = Instant::now();
        let after = Duration::from_secs(2);
        let mut h = Heartbeats::new([10, 20].into_iter(), t0);
        let at = |s: u64| t0 + Duration::from_millis(s);
        assert_eq!(h.stalled([11, 20].into_iter(), at(1500), after), None);
        // Worker 1 has not moved for 2.5 s; worker 0 moved 1 s ago.
        assert_eq!(h.stalled([11, 20].into_iter(), at(2500), after), Some(1));
        // It moves again: healthy.
        assert_eq!(h.stalled([12, 21].into_iter(), at(2600), after), None);
        assert_eq!(h.stalled([13, 21].into_iter(), at(4000), after), None);
        assert_eq!(h.stalled([13, 21].into_iter(), at(4700), after), Some(1));
    }

    /// Failed kicks and a full TX ring are the loop turning, not the worker forwarding:
    /// only received frames, completed ones and idle polls keep it from being stalled.
    #[test]
    fn failed_kicks_and_tx_stalls_are_not_progress() {
        let t0 = Instant::now();
        let after = Duration::from_secs(2);
        let base = WorkerStats {
            rx: 100,
            completed: 90,
            idle_polls: 7,
            ..WorkerStats::default()
        };
        let mut h = Heartbeats::new([progress(&base)].into_iter(), t0);
        let stuck = WorkerStats {
            tx_ring_stalls: 5000,
            kick_errors: 4000,
            kick_again: 30,
            kick_busy: 20,
            ..base.clone()
        };
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(
            h.stalled([progress(&stuck)].into_iter(), at(1000), after),
            None
        );
        assert_eq!(
            h.stalled([progress(&stuck)].into_iter(), at(2500), after),
            Some(0)
        );
        for moved in [
            WorkerStats {
                rx: 101,
                ..stuck.clone()
            },
            WorkerStats {
                completed: 91,
                ..stuck.clone()
            },
            WorkerStats {
                idle_polls: 8,
                ..stuck.clone()
            },
        ] {
            let mut h = Heartbeats::new([progress(&stuck)].into_iter(), t0);
            assert_eq!(
                h.stalled([progress(&moved)].into_iter(), at(2500), after),
                None,
                "{moved:?}"
            );
        }
    }

    const STARTED: Started = Started {
        uplink: 7,
        downlink: None,
        workers: 2,
    };

    fn up(index: u32) -> Option<Link> {
        Some(Link { index, up: true })
    }

    fn look(uplink: Option<Link>, rx_queues: u32) -> Look {
        Look {
            uplink,
            downlink: None,
            rx_queues,
        }
    }

    #[test]
    fn a_failed_query_withdraws_but_only_a_change_rebuilds() {
        let same = look(up(7), 2);
        assert_eq!(STARTED.fault(&same, || Ok(true)), None);
        // ENOBUFS once: withdrawn, but the path, which most likely still forwards, stays.
        let unreadable = STARTED.fault(&same, || Err("ENOBUFS".into())).unwrap();
        assert!(!unreadable.rebuilds());
        // ... and said as what it is, not as a detached program.
        assert_eq!(
            unreadable.problem("eth0").map(|p| p.to_string()).as_deref(),
            Some("cannot read whether eth0 runs the steering program: ENOBUFS")
        );
        let detached = STARTED.fault(&same, || Ok(false)).unwrap();
        assert_eq!(detached, Fault::Detached);
        assert!(detached.rebuilds());
        assert_eq!(
            detached.problem("eth0"),
            Some(DataplaneProblem::XdpDetached {
                iface: "eth0".into()
            })
        );
        // Another uplink under the name, or none: the old one's program is not asked about.
        for uplink in [up(8), None] {
            let f = STARTED.fault(&look(uplink, 2), || panic!("asked")).unwrap();
            assert_eq!(f, Fault::Recreated(Arm::Uplink));
            assert!(f.problem("eth0").is_some() && f.rebuilds());
        }
        let two_arm = Started {
            downlink: Some(9),
            ..STARTED
        };
        let mut recreated = same;
        recreated.downlink = up(10);
        assert_eq!(
            two_arm.fault(&recreated, || Ok(true)),
            Some(Fault::Recreated(Arm::Downlink))
        );
        // `ethtool -L` since the start: rebuilt, while the workers go on forwarding.
        let queues = STARTED.fault(&look(up(7), 3), || Ok(true)).unwrap();
        assert_eq!(queues, Fault::Queues { workers: 2, now: 3 });
        assert!(queues.problem("eth0").is_none() && queues.rebuilds());
    }

    #[test]
    fn an_uplink_mtu_raised_past_the_limit_is_reported_once_and_again_when_it_fits() {
        let mut w = MtuWatch::new(3758);
        let shown = |w: &MtuWatch| w.status("eth0").map(|s| (s.mtu, s.over_limit()));
        assert_eq!(shown(&w), None, "not read yet");
        assert_eq!(w.update(Some(1500)), None);
        assert_eq!(shown(&w), Some((1500, false)));
        assert_eq!(w.update(Some(3758)), None, "at the limit");
        assert_eq!(w.update(Some(9000)), Some(MtuChange::TooLarge(9000)));
        assert_eq!(
            w.status("eth0"),
            Some(UplinkMtu {
                interface: "eth0".into(),
                mtu: 9000,
                limit: 3758
            })
        );
        assert_eq!(w.update(Some(9000)), None, "said once");
        assert_eq!(w.update(None), None, "unreadable: nothing changes");
        assert_eq!(shown(&w), Some((9000, true)), "shown as last read");
        assert_eq!(w.update(Some(4000)), Some(MtuChange::TooLarge(4000)));
        assert_eq!(w.update(Some(1500)), Some(MtuChange::Fits(1500)));
        assert_eq!(shown(&w), Some((1500, false)));
        assert_eq!(w.update(Some(1400)), None);
    }

    #[test]
    fn a_rebuild_waits_until_its_interfaces_exist_are_up_and_settled() {
        let fixed = Fixed {
            uplink: "eth0".into(),
            downlink: Some("eth1".into()),
            cores: Vec::new(),
            flow_table_size: 1,
        };
        let mut look = Look {
            uplink: up(7),
            downlink: up(9),
            rx_queues: 1,
        };
        assert_eq!(unready(&fixed, &look, SETTLE), None);
        let early = SETTLE - Duration::from_millis(1);
        assert_eq!(unready(&fixed, &look, early), Some(Unready::Settling));
        look.downlink = Some(Link {
            index: 9,
            up: false,
        });
        assert_eq!(unready(&fixed, &look, SETTLE), Some(Unready::Down("eth1")));
        look.uplink = None;
        assert_eq!(
            unready(&fixed, &look, SETTLE),
            Some(Unready::Absent("eth0"))
        );
    }
}
