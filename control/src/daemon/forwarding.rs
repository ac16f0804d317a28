//! The daemon's hold on the packet path: the steering program on the upstream interface,
//! the AF_XDP workers behind it, and the checks that tell the announce policy whether they
//! still forward.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use dataplane::bpf::{self, Steer, SteerCounters};
use dataplane::pipeline::WorkerConfig;
use dataplane::snapshot::{Snapshot, SourcePrefix};
use dataplane::xsk::{PipelineProcessor, PipelineStats, WorkerStats, Workers, XskConfig};

use crate::config::{Config, Topology};
use crate::policy::DataplaneProblem;
use crate::publish::{proto, Params};
use crate::sources::ServiceSet;

/// A worker whose loop has made no visible progress for this long is stalled. An idle
/// worker still counts a `poll` every 20 ms, a busy one counts frames.
const STALL_AFTER: Duration = Duration::from_secs(2);

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

/// The running packet path. Dropping it detaches the steering program, then stops the
/// workers (see [`Workers`]).
pub struct Dataplane {
    workers: Workers<Steer>,
    fixed: Fixed,
    uplink_ifindex: u32,
    xdp_mode: bpf::AttachMode,
    beats: Heartbeats,
    /// Each worker's pipeline counters, in worker order.
    pipelines: Vec<Arc<PipelineStats>>,
}

impl Dataplane {
    /// Attaches steering to the upstream interface and starts one worker per RX queue,
    /// each reading `snapshot`.
    pub fn start(fixed: &Fixed, snapshot: Arc<ArcSwap<Snapshot>>) -> Result<Dataplane> {
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
        let workers = Workers::start(&xsk, steer, |_| {
            let p = PipelineProcessor::new(wc, snapshot.clone());
            pipelines.push(p.stats());
            p
        })
        .with_context(|| format!("starting the AF_XDP workers on {}", fixed.uplink))?;
        let beats = Heartbeats::new(workers.stats().iter().map(progress), Instant::now());
        Ok(Dataplane {
            workers,
            fixed: fixed.clone(),
            uplink_ifindex,
            xdp_mode,
            beats,
            pipelines,
        })
    }

    pub fn fixed(&self) -> &Fixed {
        &self.fixed
    }

    pub fn xdp_mode(&self) -> bpf::AttachMode {
        self.xdp_mode
    }

    /// Steers exactly the services of `services` to the workers.
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
        let vips: Vec<bpf::Vip> = vips.into_iter().collect();
        self.workers
            .steering_mut()
            .set_vips(&vips)
            .context("updating the steering program's VIP map")
    }

    pub fn stats(&self) -> Vec<WorkerStats> {
        self.workers.stats()
    }

    /// The steering program's counters and the uplink it runs on; `None` (logged) if its
    /// maps cannot be read, which [`Dataplane::problem`] reports as a detached program.
    pub fn steering(&self) -> Option<(&str, SteerCounters)> {
        match self.workers.steering().counters() {
            Ok(c) => Some((&self.fixed.uplink, c)),
            Err(e) => {
                tracing::debug!(error = %e, "reading the steering program's counters");
                None
            }
        }
    }

    /// Each worker's pipeline counters (flow table, per-VIP traffic, snapshot generation).
    pub fn pipelines(&self) -> &[Arc<PipelineStats>] {
        &self.pipelines
    }

    /// Fails if a worker's thread has ended. A worker only returns when stopped, so it
    /// panicked (the panic hook logged the message under the thread's name), and its RX
    /// queue's VIP traffic is steered into a closed socket. Unlike a [`DataplaneProblem`]
    /// this does not heal: only a restart brings the worker back.
    pub fn check_workers(&self) -> Result<()> {
        match self.workers.ended() {
            Some(ended) => anyhow::bail!("{ended}: it panicked; see the panic logged before"),
            None => Ok(()),
        }
    }

    /// Why the packet path cannot forward, if it cannot: a worker that stopped making
    /// progress, or the steering program gone from the interface.
    pub fn problem(&mut self, stats: &[WorkerStats], now: Instant) -> Option<DataplaneProblem> {
        if let Some(worker) = self
            .beats
            .stalled(stats.iter().map(progress), now, STALL_AFTER)
        {
            return Some(DataplaneProblem::WorkerStalled { worker });
        }
        // The interface must be the one the program was attached to (not one re-created
        // under its name), and still run our program: a `bpftool link detach` or another
        // loader may have taken it away.
        let iface = &self.fixed.uplink;
        let attached = ifindex_of(iface) == Some(self.uplink_ifindex)
            && self.workers.steering().attached().unwrap_or(false);
        (!attached).then(|| DataplaneProblem::XdpDetached {
            iface: iface.clone(),
        })
    }

    /// Detaches steering (VIP traffic falls back to the kernel), then stops the workers.
    pub fn stop(self) {
        let iface = self.fixed.uplink.clone();
        match self.workers.stop() {
            Ok(census) => {
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
            }
            Err(e) => tracing::error!(iface, error = %e, "stopping the workers"),
        }
    }
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
