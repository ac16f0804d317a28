//! One [`Status`] per control-loop tick, from the daemon's state: what `/status` serves,
//! what `/metrics` samples, and what `dsrgate status` prints.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use bgp::fsm::State as FsmState;
use bgp::wire::Prefix;
use dataplane::bpf::{AttachMode, SteerCounters};
use dataplane::pipeline::DropReason;
use dataplane::snapshot::VipKey;
use dataplane::xsk::{PipelineStats, WorkerStats, XskMode};

use crate::neigh::Resolution;
use crate::policy::{Decision, Policy};
use crate::publish::{proto, LiveVip};
use crate::sources::ServiceSet;
use crate::status::{
    BackendStatus, BindMode, Health, KubernetesStatus, NextHopStatus, PeerState, PeerStatus,
    Status, SteeringStatus, UplinkMtu, VipStatus, WorkerStatus, XdpMode,
};

/// A backend's health as the control loop tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendHealth {
    pub up: bool,
    /// The last failure, while down ("not probed yet" before the first result).
    pub reason: Option<String>,
}

/// Everything one report reads.
pub struct Inputs<'a> {
    pub uptime: Duration,
    pub generation: u64,
    pub dataplane_problem: Option<String>,
    /// The uplink's MTU against the workers' limit (`None` until it is first read).
    pub uplink_mtu: Option<UplinkMtu>,
    pub services: &'a ServiceSet,
    /// Health of `(spec index, backend)`.
    pub health: &'a dyn Fn(usize, IpAddr) -> BackendHealth,
    /// Effective weight of `(spec index, backend)` while it is usable.
    pub weights: &'a dyn Fn(usize, IpAddr) -> Option<u32>,
    pub next_hops: &'a HashMap<IpAddr, Resolution>,
    /// Whether this gateway can tunnel `(VIP address, backend)` ([`crate::publish::Params::can_tunnel`]).
    pub tunnel: &'a dyn Fn(IpAddr, IpAddr) -> bool,
    pub live: &'a [LiveVip],
    pub policy: &'a Policy,
    pub peers: &'a [bgp::speaker::PeerStatus],
    pub workers: &'a [WorkerStats],
    /// The workers' pipeline counters, in worker order.
    pub pipelines: &'a [std::sync::Arc<PipelineStats>],
    pub xdp_mode: AttachMode,
    pub flow_capacity: u64,
    /// The steering program's counters and the uplink it is attached to (`None` when they
    /// could not be read).
    pub steering: Option<(&'a str, SteerCounters)>,
    /// The Kubernetes watch's state (`None` without `[kubernetes]`).
    pub kubernetes: Option<KubernetesStatus>,
}

pub fn build(i: &Inputs<'_>) -> Status {
    // Per (VIP, backend address), summed over workers. Each worker keys these by address
    // and keeps them for its lifetime, so they only grow, whatever snapshots came and went.
    let mut sent: HashMap<(VipKey, IpAddr), (u64, u64)> = HashMap::new();
    for (vip, addr, packets, bytes) in i.pipelines.iter().flat_map(|p| p.backends()) {
        let e = sent.entry((vip, addr)).or_default();
        *e = (e.0 + packets, e.1 + bytes);
    }
    // Per VIP, summed over workers, keyed and kept the same way: a VIP's counts stay its
    // own when VIPs that sort before it come or go.
    let mut received: HashMap<VipKey, (u64, u64)> = HashMap::new();
    for (vip, packets, bytes) in i.pipelines.iter().flat_map(|p| p.vips()) {
        let e = received.entry(vip).or_default();
        *e = (e.0 + packets, e.1 + bytes);
    }
    let mut vips = Vec::new();
    for (si, spec) in i.services.vips.iter().enumerate() {
        let (announced, reason) =
            announcement(i.policy.decisions().get(&spec.addr), spec.addr, i.peers);
        for &port in &spec.ports {
            let key = VipKey {
                addr: spec.addr,
                proto: proto(spec.proto),
                port,
            };
            let live = i.live.iter().find(|l| l.key == key);
            let (packets, bytes) = received.get(&key).copied().unwrap_or_default();
            let backends = spec
                .backends
                .iter()
                .map(|b| {
                    let h = (i.health)(si, b.addr);
                    let (packets, bytes) = sent.get(&(key, b.addr)).copied().unwrap_or_default();
                    BackendStatus {
                        address: b.addr,
                        health: if h.up { Health::Up } else { Health::Down },
                        health_reason: h.reason,
                        weight: (i.weights)(si, b.addr).unwrap_or(b.weight),
                        slots: live
                            .and_then(|l| l.slots.get(&b.addr).copied())
                            .unwrap_or(0),
                        next_hop: i
                            .next_hops
                            .get(&b.addr)
                            .map(NextHopStatus::from)
                            .unwrap_or_default(),
                        tunnel_source: (i.tunnel)(spec.addr, b.addr),
                        packets,
                        bytes,
                    }
                })
                .collect();
            vips.push(VipStatus {
                name: spec.name.clone(),
                address: spec.addr,
                protocol: spec.proto,
                port,
                announced,
                reason: reason.clone(),
                generation: live.map_or(0, |l| l.generation),
                table_size: live.map_or(0, |l| l.table_size),
                packets,
                bytes,
                backends,
            });
        }
    }
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: i.uptime.as_secs(),
        generation: i.generation,
        dataplane_problem: i.dataplane_problem.clone(),
        uplink_mtu: i.uplink_mtu.clone(),
        vips,
        untracked_backends: most_on_any_worker(i.pipelines, PipelineStats::untracked_backends),
        untracked_vips: most_on_any_worker(i.pipelines, PipelineStats::untracked_vips),
        peers: i.peers.iter().map(peer).collect(),
        steering: i
            .steering
            .iter()
            .map(|(iface, c)| steering(iface, c))
            .collect(),
        workers: i
            .workers
            .iter()
            .enumerate()
            .map(|(n, w)| {
                let flows = i.pipelines.get(n).map_or((0, 0), |p| p.flows());
                worker(w, i.xdp_mode, i.flow_capacity, flows)
            })
            .collect(),
        kubernetes: i.kubernetes.clone(),
    }
}

/// Whether a VIP address is announced, i.e. some Established BGP session has been
/// sent its host route, and why: the policy's decision says what is wanted, the
/// speaker's Adj-RIB-Outs what the routers were told. They differ while no session
/// is up, when a session cannot carry the route (no next hop for its family, or
/// attributes too large), and for the moment a change is in flight.
fn announcement(
    decision: Option<&Decision>,
    addr: IpAddr,
    peers: &[bgp::speaker::PeerStatus],
) -> (bool, String) {
    let host = Prefix::host(addr);
    let up: Vec<_> = peers
        .iter()
        .filter(|p| p.state == FsmState::Established)
        .collect();
    let carrying = up
        .iter()
        .filter(|p| p.advertised.binary_search(&host).is_ok())
        .count();
    let policy = decision.map_or_else(|| "not evaluated yet".to_owned(), ToString::to_string);
    let reason = match decision {
        Some(Decision::Announce) if carrying > 0 => {
            format!("announced ({carrying} of {})", sessions(peers.len()))
        }
        Some(Decision::Announce) if peers.is_empty() => "wanted; no BGP peer configured".into(),
        Some(Decision::Announce) if up.is_empty() => "wanted; no BGP session up".into(),
        Some(Decision::Announce) => format!(
            "wanted; sent on none of the {} up (see the log for why)",
            sessions(up.len())
        ),
        _ if carrying > 0 => {
            format!(
                "{policy}; still on {} until the withdrawal is sent",
                sessions(carrying)
            )
        }
        _ => policy,
    };
    (carrying > 0, reason)
}

fn sessions(n: usize) -> String {
    format!("{n} session{}", if n == 1 { "" } else { "s" })
}

/// Slots some worker cannot count (per backend, or per VIP): the most on any one worker
/// (each worker fills its own tables, so they can differ).
fn most_on_any_worker(
    pipelines: &[std::sync::Arc<PipelineStats>],
    untracked: impl Fn(&PipelineStats) -> u64,
) -> u64 {
    pipelines.iter().map(|p| untracked(p)).max().unwrap_or(0)
}

fn steering(interface: &str, c: &SteerCounters) -> SteeringStatus {
    SteeringStatus {
        interface: interface.to_owned(),
        redirected: c.redirected,
        no_socket: c.no_socket,
        passed: c.passed,
        dropped: c.dropped,
        shed: c.shed,
    }
}

fn peer(p: &bgp::speaker::PeerStatus) -> PeerStatus {
    let s = &p.stats;
    let total = |c: &bgp::fsm::MessageCounts| {
        c.open + c.update + c.notification + c.keepalive + c.route_refresh
    };
    PeerStatus {
        address: p.address,
        remote_as: p.remote_as,
        state: match p.state {
            FsmState::Idle => PeerState::Idle,
            FsmState::Connect => PeerState::Connect,
            FsmState::Active => PeerState::Active,
            FsmState::OpenSent => PeerState::OpenSent,
            FsmState::OpenConfirm => PeerState::OpenConfirm,
            FsmState::Established => PeerState::Established,
        },
        uptime_secs: p.uptime.map(|d| d.as_secs()),
        last_error: p.last_error.as_ref().map(ToString::to_string),
        prefixes_announced: u32::try_from(p.prefixes_advertised).unwrap_or(u32::MAX),
        messages_in: total(&s.received),
        messages_out: total(&s.sent),
    }
}

fn worker(
    w: &WorkerStats,
    xdp: AttachMode,
    flow_capacity: u64,
    (flow_entries, flow_evictions): (u64, u64),
) -> WorkerStatus {
    let mut drops: BTreeMap<String, u64> = DropReason::ALL
        .iter()
        .map(|r| (r.name().to_owned(), w.drops[*r as usize]))
        .collect();
    // Frames the worker loop itself dropped, beside the pipeline's reasons.
    drops.insert("not_for_a_vip".into(), w.pass_dropped);
    drops.insert("tx_ring_full".into(), w.tx_ring_full);
    drops.insert("bad_verdict".into(), w.bad_verdicts);
    // Frames the kernel could not deliver to the socket: they never reached the worker.
    drops.insert("rx_ring_full".into(), w.kernel.rx_ring_full);
    drops.insert("rx_dropped".into(), w.kernel.rx_dropped);
    WorkerStatus {
        interface: w.iface.clone(),
        queue: w.queue,
        core: w.core,
        xdp_mode: match xdp {
            AttachMode::Driver => XdpMode::Native,
            AttachMode::Skb => XdpMode::Generic,
        },
        bind_mode: match w.mode {
            Some(XskMode::ZeroCopy) => BindMode::ZeroCopy,
            _ => BindMode::Copy,
        },
        rx_packets: w.rx,
        tx_packets: w.tx + w.reply,
        completed_packets: w.completed,
        drops,
        flow_entries,
        flow_capacity,
        flow_evictions,
        shed_starts: w.shed_starts,
        fill_ring_empty: w.kernel.rx_fill_ring_empty_descs,
    }
}

/// The dataplane's test helpers (snapshots, frames, a processor), included as its benches
/// include them.
#[cfg(test)]
#[path = "../../../dataplane/tests/common/mod.rs"]
mod common;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dataplane::snapshot::{Encap, HashMode, Proto, Snapshot};
    use dataplane::xsk::{PipelineProcessor, Processor};

    use super::*;

    /// A TCP VIP on port 80 at each of `vips`, IP-in-IP to `backends`.
    fn snapshot(generation: u64, vips: &[&str], backends: &[IpAddr]) -> Snapshot {
        let vips: Vec<_> = vips
            .iter()
            .map(|&a| (a, Proto::Tcp, 80, HashMode::FiveTuple, Encap::IpIp))
            .collect();
        let backends: Vec<_> = backends.iter().map(|&b| (b, 1)).collect();
        common::snapshot(generation, &vips, &backends)
    }

    /// The stats of a worker with room for `max_backends` (VIP, backend) pairs, after it
    /// has taken up a snapshot of one VIP with three backends.
    fn worker_on_three_backends(max_backends: usize) -> Arc<PipelineStats> {
        let backends: Vec<IpAddr> = (11..14).map(|n| IpAddr::from([198, 51, 100, n])).collect();
        let (_, mut p) = common::processor(snapshot(1, &["192.0.2.10"], &backends), |cfg| {
            cfg.max_backends = max_backends
        });
        // A batch, even an empty one, makes the worker take up the snapshot.
        p.process(1, &mut [], &mut []);
        p.stats()
    }

    /// Inputs with everything these tests do not look at left empty or healthy; `policy`
    /// and `next_hops` are the caller's, to borrow.
    fn inputs<'a>(
        services: &'a ServiceSet,
        policy: &'a Policy,
        next_hops: &'a HashMap<IpAddr, Resolution>,
    ) -> Inputs<'a> {
        Inputs {
            uptime: Duration::from_secs(1),
            generation: 1,
            dataplane_problem: None,
            uplink_mtu: None,
            services,
            health: &|_, _| BackendHealth {
                up: true,
                reason: None,
            },
            weights: &|_, _| None,
            next_hops,
            tunnel: &|_, _| true,
            live: &[],
            policy,
            peers: &[],
            workers: &[],
            pipelines: &[],
            xdp_mode: AttachMode::Driver,
            flow_capacity: 1024,
            steering: None,
            kubernetes: None,
        }
    }

    /// The steering program's verdicts become the uplink's steering counters, and the
    /// kernel's socket counters become the worker's: RX ring full and frames the kernel
    /// dropped count among its drops, shedding, fill-ring misses and completed frames on
    /// their own. The uplink's MTU is reported as read.
    #[test]
    fn steering_and_kernel_counters_reach_the_status() {
        let services = ServiceSet::default();
        let policy = Policy::default();
        let next_hops = HashMap::new();
        let workers = [WorkerStats {
            iface: "eth0".into(),
            queue: 1,
            rx: 1000,
            tx: 990,
            reply: 6,
            completed: 993,
            tx_ring_full: 2,
            shed_starts: 3,
            kernel: dataplane::xsk::XdpStats {
                rx_dropped: 5,
                rx_ring_full: 17,
                rx_fill_ring_empty_descs: 4,
                ..Default::default()
            },
            ..WorkerStats::default()
        }];
        let counters = SteerCounters {
            redirected: 1000,
            no_socket: 1,
            passed: 40,
            dropped: 2,
            shed: 300,
        };
        let mtu = UplinkMtu {
            interface: "eth0".into(),
            mtu: 4000,
            limit: 3758,
        };
        let report = |steering| {
            build(&Inputs {
                uplink_mtu: Some(mtu.clone()),
                workers: &workers,
                steering,
                ..inputs(&services, &policy, &next_hops)
            })
        };
        let s = report(Some(("eth0", counters)));
        assert_eq!(
            s.steering,
            vec![SteeringStatus {
                interface: "eth0".into(),
                redirected: 1000,
                no_socket: 1,
                passed: 40,
                dropped: 2,
                shed: 300,
            }]
        );
        let w = &s.workers[0];
        assert_eq!(w.drops["rx_ring_full"], 17);
        assert_eq!(w.drops["rx_dropped"], 5);
        assert_eq!(w.drops["tx_ring_full"], 2);
        assert_eq!(w.total_drops(), 17 + 5 + 2);
        assert_eq!(w.shed_starts, 3);
        assert_eq!(w.fill_ring_empty, 4);
        assert_eq!((w.tx_packets, w.completed_packets), (996, 993));
        assert_eq!(s.uplink_mtu, Some(mtu.clone()));
        // Counters that could not be read are left out, not reported as zeros.
        assert!(report(None).steering.is_empty());
    }

    fn session(state: FsmState, advertised: &[&str]) -> bgp::speaker::PeerStatus {
        let advertised: Vec<Prefix> = advertised.iter().map(|p| p.parse().unwrap()).collect();
        bgp::speaker::PeerStatus {
            address: "10.0.0.1".parse().unwrap(),
            remote_as: 65000,
            state,
            uptime: None,
            last_error: None,
            stats: Default::default(),
            prefixes_advertised: advertised.len(),
            unacked_bytes: 0,
            advertised,
            negotiated: None,
        }
    }

    /// `announced` and the reason say what the BGP sessions carry, not only what the
    /// policy wants.
    #[test]
    fn announced_means_a_session_carries_the_route() {
        use crate::policy::WithdrawReason;
        use FsmState::{Active, Established};
        let vip: IpAddr = "192.0.2.10".parse().unwrap();
        let host = "192.0.2.10/32";
        let want = Some(&Decision::Announce);
        let check = |decision, peers: &[_], expected: (bool, &str)| {
            let (announced, reason) = announcement(decision, vip, peers);
            assert_eq!((announced, reason.as_str()), expected, "{peers:?}");
        };
        check(
            want,
            &[session(Established, &[host]), session(Established, &[host])],
            (true, "announced (2 of 2 sessions)"),
        );
        check(
            want,
            &[
                session(Established, &[host]),
                session(Established, &["192.0.2.11/32"]),
                session(Active, &[]),
            ],
            (true, "announced (1 of 3 sessions)"),
        );
        check(
            want,
            &[session(Active, &[]), session(Active, &[])],
            (false, "wanted; no BGP session up"),
        );
        check(want, &[], (false, "wanted; no BGP peer configured"));
        check(
            want,
            &[session(Established, &[])],
            (
                false,
                "wanted; sent on none of the 1 session up (see the log for why)",
            ),
        );
        let withdraw = Decision::Withdraw(WithdrawReason::TooFewHealthyBackends {
            healthy: 0,
            required: 1,
        });
        check(
            Some(&withdraw),
            &[session(Established, &[])],
            (false, "withdrawn: 0 healthy backends, 1 required"),
        );
        check(
            Some(&withdraw),
            &[session(Established, &[host])],
            (
                true,
                "withdrawn: 0 healthy backends, 1 required; still on 1 session until the withdrawal is sent",
            ),
        );
        check(None, &[], (false, "not evaluated yet"));
    }

    /// A VIP's counters are its own, not those of whichever VIP had its snapshot index
    /// before: adding a VIP that sorts first moves the others, and their counts with them.
    #[test]
    fn vip_counters_follow_the_vip_when_an_earlier_one_is_added() {
        use dataplane::pipeline::Verdict;

        use crate::config::{HashMode as SpecHash, Protocol, VipBgp};
        use crate::sources::{Encap as SpecEncap, Origin, VipSpec};

        const EARLY: &str = "10.0.0.10";
        const LATE: &str = "10.0.0.20";
        let (early, late) = (common::ip(EARLY), common::ip(LATE));
        let node = IpAddr::from([198, 51, 100, 11]);
        let key = |addr| VipKey {
            addr,
            proto: Proto::Tcp,
            port: 80,
        };
        let (current, mut p) = common::processor(snapshot(1, &[LATE], &[node]), |_| {});
        let stats = p.stats();
        let mut len = 0;
        // SYNs of distinct flows to `late`:80.
        let mut syn = |p: &mut PipelineProcessor, now, sport| {
            let src = IpAddr::from([198, 18, 0, 1]);
            let frame = common::flow_frame(src, sport, late, 80, 6, common::SYN);
            len = frame.len() as u64;
            let (v, _) = common::run_with(&frame, |f, v| p.process(now, f, v));
            assert!(matches!(v, Verdict::Tx { .. }), "{v:?}");
        };
        const SECOND: u64 = 1_000_000_000;
        for sport in 0..50 {
            syn(&mut p, SECOND, 1000 + sport);
        }
        current.store(Arc::new(snapshot(2, &[EARLY, LATE], &[node])));
        syn(&mut p, 2 * SECOND, 2000);
        p.housekeeping(4 * SECOND);

        let spec = |addr: IpAddr| VipSpec {
            name: addr.to_string(),
            origin: Origin::Static,
            addr,
            proto: Protocol::Tcp,
            ports: vec![80],
            hash: SpecHash::FiveTuple,
            encap: SpecEncap::Ipip,
            min_healthy: 1,
            bgp: VipBgp::default(),
            backends: vec![],
            health: None,
        };
        let services = ServiceSet {
            vips: vec![spec(early), spec(late)],
        };
        let live: Vec<LiveVip> = [early, late]
            .iter()
            .enumerate()
            .map(|(n, &a)| LiveVip {
                key: key(a),
                origin: crate::publish::Origin { spec: n, port: 80 },
                generation: 2,
                table_size: 0,
                slots: HashMap::new(),
            })
            .collect();
        let (policy, next_hops) = (Policy::default(), HashMap::new());
        let s = build(&Inputs {
            generation: 2,
            live: &live,
            pipelines: &[stats.clone(), stats],
            ..inputs(&services, &policy, &next_hops)
        });
        let counts: Vec<_> = s
            .vips
            .iter()
            .map(|v| (v.address, v.packets, v.bytes))
            .collect();
        // Summed over the two (identical) workers.
        assert_eq!(counts, [(early, 0, 0), (late, 2 * 51, 2 * 51 * len)]);
    }

    #[test]
    fn untracked_backends_is_the_most_on_any_worker() {
        let workers = [
            worker_on_three_backends(3),
            worker_on_three_backends(1),
            worker_on_three_backends(2),
        ];
        assert_eq!(workers[1].untracked_backends(), 2);
        let most = |w: &[std::sync::Arc<PipelineStats>]| {
            most_on_any_worker(w, PipelineStats::untracked_backends)
        };
        assert_eq!(most(&workers), 2);
        assert_eq!(most(&workers[..1]), 0);
        assert_eq!(most(&[]), 0);
    }
}
