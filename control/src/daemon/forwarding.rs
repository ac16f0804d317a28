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
use dataplane::xsk::{PipelineProcessor, PipelineStats, WorkerStats, Workers, XskConfig, XskError};

use crate::config::{Config, Topology};
use crate::policy::DataplaneProblem;
use crate::publish::{proto, Params};
use crate::sources::ServiceSet;

/// A worker whose loop has made no visible progress for this long is stalled. An idle
/// worker still counts a `poll` every 20 ms, a busy one counts frames.
const STALL_AFTER: Duration = Duration::from_secs(2);
/// The least time between two attempts to rebuild the packet path: each loads the
/// steering program (the verifier runs) and opens every socket again.
const REATTACH_EVERY: Duration = Duration::from_secs(5);

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

/// The packet path, rebuilt in place when its interfaces are re-created (see
/// [`Dataplane::reattach`]). Dropping it detaches the steering program, then stops the
/// workers (see [`Workers`]).
pub struct Dataplane {
    fixed: Fixed,
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// The steered service ports, applied again to a rebuilt path.
    vips: Vec<bpf::Vip>,
    /// `None` between a failed rebuild and the next one that succeeds.
    path: Option<Path>,
    /// The interface the last rebuild was for, named as detached while no path runs.
    lost: String,
    /// The mode of the last attach, for the status while no path runs.
    xdp_mode: bpf::AttachMode,
    /// No rebuild is tried before this.
    next_attempt: Instant,
    /// The interface a rebuild waits for to exist again (logged once).
    waiting: Option<String>,
    /// Successful rebuilds, for the log.
    restarts: u64,
}

/// One attach: the steering program on the uplink and the workers behind it, on the
/// interfaces that had the configured names then.
struct Path {
    workers: Workers<Steer>,
    uplink_ifindex: u32,
    downlink_ifindex: Option<u32>,
    xdp_mode: bpf::AttachMode,
    beats: Heartbeats,
    /// Each worker's pipeline counters, in worker order.
    pipelines: Vec<Arc<PipelineStats>>,
}

impl Path {
    /// Attaches steering to the uplink, starts one worker per RX queue, each reading
    /// `snapshot`, and steers `vips` to them. The attach never replaces another XDP
    /// program: it is a bpf_link, which the kernel refuses (EBUSY) on an interface that
    /// runs one (aya's netlink fallback for old kernels sets `XDP_FLAGS_UPDATE_IF_NOEXIST`).
    fn start(fixed: &Fixed, snapshot: &Arc<ArcSwap<Snapshot>>, vips: &[bpf::Vip]) -> Result<Path> {
        // Read before the sockets bind: a downlink re-created in between is then seen as
        // such (and rebuilt again) rather than missed.
        let downlink_ifindex = fixed.downlink.as_deref().and_then(ifindex_of);
        let steer = Steer::attach(&fixed.uplink)
            .with_context(|| format!("attaching the steering program to {}", fixed.uplink))?;
        let uplink_ifindex = steer.ifindex();
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
            workers,
            uplink_ifindex,
            downlink_ifindex,
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
    pub fn start(fixed: &Fixed, snapshot: Arc<ArcSwap<Snapshot>>) -> Result<Dataplane> {
        let path = Path::start(fixed, &snapshot, &[])?;
        Ok(Dataplane {
            fixed: fixed.clone(),
            snapshot,
            vips: Vec::new(),
            lost: fixed.uplink.clone(),
            xdp_mode: path.xdp_mode,
            path: Some(path),
            next_attempt: Instant::now(),
            waiting: None,
            restarts: 0,
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

    /// Each worker's pipeline counters (flow table, per-VIP traffic, snapshot generation).
    pub fn pipelines(&self) -> &[Arc<PipelineStats>] {
        self.path.as_ref().map_or(&[], |p| &p.pipelines)
    }

    /// Fails if a worker's thread has ended. A worker only returns when stopped, so it
    /// panicked (the panic hook logged the message under the thread's name), and its RX
    /// queue's VIP traffic is steered into a closed socket. Unlike a [`DataplaneProblem`]
    /// this does not heal: only a restart brings the worker back.
    pub fn check_workers(&self) -> Result<()> {
        match self.path.as_ref().and_then(|p| p.workers.ended()) {
            Some(ended) => anyhow::bail!("{ended}: it panicked; see the panic logged before"),
            None => Ok(()),
        }
    }

    /// Why the packet path cannot forward, if it cannot: an interface it no longer runs on
    /// (first: the workers of a vanished interface also stall, and only this cause is
    /// healed by [`Dataplane::reattach`]), or a worker that stopped making progress.
    pub fn problem(&mut self, stats: &[WorkerStats], now: Instant) -> Option<DataplaneProblem> {
        if let Some(iface) = self.detached() {
            return Some(DataplaneProblem::XdpDetached {
                iface: iface.to_owned(),
            });
        }
        let path = self.path.as_mut()?;
        let worker = path
            .beats
            .stalled(stats.iter().map(progress), now, STALL_AFTER)?;
        Some(DataplaneProblem::WorkerStalled { worker })
    }

    /// The interface the path no longer runs on: the uplink re-created under its name (a
    /// new index) or no longer running our program (a `bpftool link detach`, another
    /// loader), or in two-arm the downlink re-created; the last one rebuilt for while no
    /// path runs.
    fn detached(&self) -> Option<&str> {
        let Some(path) = &self.path else {
            return Some(&self.lost);
        };
        let uplink = self.fixed.uplink.as_str();
        let attached = ifindex_of(uplink) == Some(path.uplink_ifindex)
            && path.workers.steering().attached().unwrap_or(false);
        if !attached {
            return Some(uplink);
        }
        let downlink = self.fixed.downlink.as_deref()?;
        (ifindex_of(downlink) != path.downlink_ifindex).then_some(downlink)
    }

    /// Rebuilds the packet path after [`Dataplane::problem`] found `iface` detached: stops
    /// the old path (detaching steering if still attached, stopping the workers, closing
    /// their sockets), then attaches to the interfaces now under the configured names with
    /// the same settings, snapshot and VIPs. True if a new path runs. At most one attempt
    /// per [`REATTACH_EVERY`]; while a configured interface does not exist there is none,
    /// it is waited for. An attach that fails (another XDP program there, which is never
    /// replaced: see [`Path::start`]) is logged and tried again. An error only if a worker
    /// of the old path had panicked, which does not heal.
    ///
    /// The new workers start with empty flow tables. That loses nothing that still worked:
    /// the flows arrived on an interface that is gone or no longer steered to them. Their
    /// next packets are hashed again on the same Maglev tables (same snapshot), so they
    /// reach the backend they had unless the backend set changed meanwhile, and new flows
    /// get the same choices as before. The workers' counters start again from zero, as
    /// after a restart.
    pub fn reattach(&mut self, iface: &str, now: Instant) -> Result<bool> {
        if now < self.next_attempt {
            return Ok(false);
        }
        let absent = [Some(&self.fixed.uplink), self.fixed.downlink.as_ref()]
            .into_iter()
            .flatten()
            .find(|i| ifindex_of(i).is_none());
        if let Some(absent) = absent {
            if self.waiting.as_ref() != Some(absent) {
                tracing::warn!("{absent} does not exist: waiting for it to re-attach");
                self.waiting = Some(absent.clone());
            }
            return Ok(false);
        }
        self.waiting = None;
        self.next_attempt = now + REATTACH_EVERY;
        self.lost = iface.to_owned();
        tracing::info!("re-attaching to {iface}: rebuilding the packet path");
        if let Some(old) = self.path.take() {
            old.stop(&self.fixed.uplink)
                .context("stopping the workers to re-attach")?;
        }
        match Path::start(&self.fixed, &self.snapshot, &self.vips) {
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
                Ok(true)
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    retry_in = ?REATTACH_EVERY,
                    "re-attaching to {iface} failed"
                );
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

/// A number that grows whenever the worker's loop turns.
fn progress(s: &WorkerStats) -> u64 {
    s.rx + s.idle_polls + s.tx_ring_stalls + s.kick_again + s.kick_busy + s.kick_errors
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
}
