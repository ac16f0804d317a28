//! Where VIPs and their backends come from: the static config
//! ([`static_list`]) or the Kubernetes API ([`kube`]). Both produce the same
//! [`ServiceSet`], which the control loop combines with health state
//! ([`VipSpec::serving_backends`]) before Maglev tables are built.

pub mod kube;
pub mod static_list;

use std::net::IpAddr;

use dataplane::bpf::steer::MAX_VIPS;

use crate::config::{HashMode, Protocol, VipBgp};
use crate::health::{HealthSpec, Target, Targets, Verdict};

/// Every VIP the gateway should serve, sorted by address, protocol, ports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceSet {
    pub vips: Vec<VipSpec>,
}

/// Tunnel encapsulation of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encap {
    Ipip,
    Gue { port: u16 },
}

/// `spec.externalTrafficPolicy` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

/// Where a VIP was defined.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    Static,
    Kubernetes {
        namespace: String,
        name: String,
        traffic_policy: TrafficPolicy,
        /// `spec.healthCheckNodePort` (Local Services).
        health_check_node_port: Option<u16>,
        /// `metadata.creationTimestamp`, in Unix seconds: the older Service's VIPs are
        /// admitted first when not all fit ([`ServiceSet::merge`]).
        created: Option<i64>,
    },
}

/// One VIP (address and protocol) with its ports and backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSpec {
    /// `web` (static) or `namespace/name` (Kubernetes), for logs and metrics.
    pub name: String,
    pub origin: Origin,
    pub addr: IpAddr,
    pub proto: Protocol,
    /// Sorted, no duplicates.
    pub ports: Vec<u16>,
    pub hash: HashMode,
    pub encap: Encap,
    /// Announce only while at least this many backends are healthy.
    pub min_healthy: u32,
    pub bgp: VipBgp,
    /// Sorted by address, no duplicates.
    pub backends: Vec<BackendSpec>,
    /// `None`: backends are not probed and count as healthy.
    pub health: Option<HealthSpec>,
}

/// A node that receives a VIP's traffic, and its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendSpec {
    pub addr: IpAddr,
    pub weight: u32,
}

impl VipSpec {
    /// The health target probing `backend` for this VIP, if it is checked.
    pub fn target(&self, backend: &BackendSpec) -> Option<Target> {
        self.health.as_ref().map(|spec| Target {
            addr: backend.addr,
            spec: spec.clone(),
        })
    }

    /// The backends the snapshot carries now: unchecked VIPs keep every backend; checked
    /// ones keep those whose target is up (a down one is left out, and its flows re-hashed),
    /// and a `Local` Service's nodes at weight 0 while their node answers, or has no verdict
    /// yet ([`Self::drains_while_down`]). The weight is always the source's: a weight a probe
    /// reports (kube-proxy's endpoint count) is ignored, as each gateway's probe sees a
    /// change at its own moment, up to an interval after the EndpointSlice that every
    /// gateway has within moments, and their Maglev tables would differ meanwhile. A backend
    /// at weight 0 stays, draining: the dataplane gives it no Maglev slot, so no new flow
    /// goes to it, but the flows recorded to it stay there. Left out, each of them would be
    /// re-hashed to another node, which resets its TCP connection.
    pub fn serving_backends(
        &self,
        verdict: impl Fn(&Target) -> Option<Verdict>,
    ) -> Vec<BackendSpec> {
        self.backends
            .iter()
            .filter(|b| match self.target(b) {
                None => true,
                Some(t) => match verdict(&t) {
                    Some(Verdict::Up) => true,
                    Some(Verdict::Silent) => false,
                    Some(Verdict::Down) | None => b.weight == 0 && self.drains_while_down(),
                },
            })
            .copied()
            .collect()
    }

    /// Whether a backend at weight 0 stays while its probe fails but its node answers: a
    /// `Local` Service's node at weight 0 has only terminating endpoints that still serve
    /// (see [`kube::model`]), and kube-proxy answers its health check with 503 precisely
    /// then, so that load balancers send it no new connections; it still forwards the open
    /// ones. It leaves once those endpoints leave the EndpointSlice, or once its probe is
    /// [`Verdict::Silent`] (`fall` probes in a row without an answer: a node that died, or
    /// whose kube-proxy did, and whose EndpointSlice lists its endpoints until the node
    /// controller evicts them; kept, every flow to it would be black-holed meanwhile, where
    /// re-hashed its clients get a reset). A static or `Cluster` backend at weight 0 drains
    /// only while its probe passes.
    ///
    /// Each gateway decides from its own probes, as for any down backend: one that cannot
    /// reach a node drops it while another keeps it. Their Maglev tables still agree, as a
    /// node at weight 0 holds no slot: only the flows this gateway recorded to the node
    /// move.
    fn drains_while_down(&self) -> bool {
        matches!(
            self.origin,
            Origin::Kubernetes {
                traffic_policy: TrafficPolicy::Local,
                ..
            }
        )
    }

    /// The [`serving_backends`](Self::serving_backends) that take new flows (nonzero
    /// weight): the ones that count toward announcing (`min_healthy`). A VIP whose
    /// backends are all draining has none, and is withdrawn.
    pub fn healthy_backends(
        &self,
        verdict: impl Fn(&Target) -> Option<Verdict>,
    ) -> Vec<BackendSpec> {
        let mut out = self.serving_backends(verdict);
        out.retain(|b| b.weight > 0);
        out
    }

    /// Who a health target probes for ([`ServiceSet::health_targets`]): the VIP, by name,
    /// address and protocol, which a change of its probe, ports or backends keeps.
    pub fn user(&self) -> String {
        format!("{} {} {:?}", self.name, self.addr, self.proto)
    }

    /// The canonical order of a set's services ([`ServiceSet::normalize`]).
    pub fn order(&self) -> (IpAddr, Protocol, &[u16], &str) {
        (self.addr, self.proto, &self.ports, &self.name)
    }
}

impl ServiceSet {
    /// Sorts VIPs and backends into their canonical order, so equal sets compare equal.
    pub fn normalize(&mut self) {
        for v in &mut self.vips {
            v.ports.sort_unstable();
            v.ports.dedup();
            v.backends.sort_unstable();
            v.backends.dedup_by_key(|b| b.addr);
        }
        self.vips.sort_by(|a, b| a.order().cmp(&b.order()));
    }

    /// Every distinct health target, for [`crate::health::HealthChecker::set_targets`].
    /// Services that probe one node the same way share one probe (a target is what is
    /// probed, not how often); if they ask for different timings it runs at
    /// [`Timing::strictest`](crate::config::Timing::strictest) of them, whatever their
    /// order. Each target's users are its VIPs ([`VipSpec::user`]): a VIP's new probe of a
    /// node starts with the verdict of its old one ([`Targets`]).
    pub fn health_targets(&self) -> Targets {
        let mut out = Targets::default();
        for v in &self.vips {
            let user = v.user();
            for t in v.backends.iter().filter_map(|b| v.target(b)) {
                let timing = t.spec.timing;
                let kept = out.insert(t, &user);
                kept.spec.timing = kept.spec.timing.strictest(timing);
            }
        }
        out
    }

    /// The static set plus the Kubernetes VIPs that fit within the [`MAX_VIPS`] service
    /// ports a gateway steers (the config check holds the static ones to it) and are not on
    /// a static VIP's address, whatever their ports: the operator's addresses are not the
    /// Services' to share, as another Service's are not without its consent
    /// ([`kube::model::SHARING_KEY_ANNOTATION`]). Kubernetes Services are taken whole, the
    /// oldest first (then by name), so that a new Service never pushes out one already
    /// served, and gateways with one view keep the same ones. A Service is several VIPs
    /// (one per address family, protocol and set of backends, which differ by port), and
    /// past the limit it is left out with all of them: served on some of its ports or one
    /// of its families only, it would fail its users in ways its status cannot show. Also
    /// the VIPs left out, for the caller to log ([`LeftOut::news`]: each once, not on
    /// every Kubernetes update).
    pub fn merge(statics: &ServiceSet, kube: &ServiceSet) -> (ServiceSet, Vec<LeftOut>) {
        let mut out = statics.clone();
        let mut left_out = Vec::new();
        let mut ports: usize = statics.vips.iter().map(|v| v.ports.len()).sum();
        let mut admission: Vec<&VipSpec> = kube.vips.iter().collect();
        let service = |v: &VipSpec| match &v.origin {
            Origin::Kubernetes { created, .. } => (*created, v.name.clone()),
            Origin::Static => (None, v.name.clone()),
        };
        // Stable: the VIPs of one Service stay together, in the set's order.
        admission.sort_by_key(|v| service(v));
        let mut leave = |v: &VipSpec, why: LeftOutWhy| {
            left_out.push(LeftOut {
                service: v.name.clone(),
                addr: v.addr,
                ports: v.ports.len(),
                why,
            })
        };
        for vips in admission.chunk_by(|a, b| service(a) == service(b)) {
            let mut fits = Vec::new();
            for v in vips {
                match statics.vips.iter().find(|s| s.addr == v.addr) {
                    Some(s) => leave(v, LeftOutWhy::StaticAddress(s.name.clone())),
                    None => fits.push(*v),
                }
            }
            let needs: usize = fits.iter().map(|v| v.ports.len()).sum();
            if ports + needs > MAX_VIPS {
                for v in fits {
                    leave(v, LeftOutWhy::SteeringLimit { steered: ports });
                }
            } else {
                ports += needs;
                out.vips.extend(fits.into_iter().cloned());
            }
        }
        out.normalize();
        (out, left_out)
    }
}

/// A Kubernetes VIP that [`ServiceSet::merge`] left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub service: String,
    pub addr: IpAddr,
    /// Its service ports.
    pub ports: usize,
    pub why: LeftOutWhy,
}

/// Why a Kubernetes VIP was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftOutWhy {
    /// Its address is the static VIP of this name's.
    StaticAddress(String),
    /// The gateway already steered this many of at most [`MAX_VIPS`] service ports.
    SteeringLimit { steered: usize },
}

impl LeftOut {
    /// Logs the VIPs of `now` that `before` did not leave out for the same reason (the
    /// count of steered ports aside, which moves with every other Service), so a VIP left
    /// out is logged when that starts, not on every Kubernetes update; `now` becomes
    /// `before`.
    pub fn news(before: &mut Vec<LeftOut>, now: Vec<LeftOut>) -> Vec<&LeftOut> {
        let same = |a: &LeftOut, b: &LeftOut| {
            a.service == b.service
                && a.addr == b.addr
                && std::mem::discriminant(&a.why) == std::mem::discriminant(&b.why)
        };
        let new: Vec<usize> = (0..now.len())
            .filter(|&i| !before.iter().any(|b| same(b, &now[i])))
            .collect();
        *before = now;
        new.into_iter().map(|i| &before[i]).collect()
    }

    pub fn log(&self) {
        match &self.why {
            LeftOutWhy::StaticAddress(s) => {
                tracing::warn!(service = %self.service, vip = %self.addr, conflicts_with = %s, "Kubernetes VIP on a static VIP's address; ignored")
            }
            LeftOutWhy::SteeringLimit { steered } => {
                tracing::warn!(service = %self.service, vip = %self.addr, ports = self.ports, "Kubernetes VIP ignored: the gateway already steers {steered} of at most {MAX_VIPS} service ports")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Timing;
    use crate::health::Probe;
    use k8s_openapi::api::core::v1::Service;
    use std::collections::HashMap;
    use std::time::Duration;

    fn vip(
        addr: &str,
        ports: &[u16],
        backends: &[(&str, u32)],
        health: Option<HealthSpec>,
    ) -> VipSpec {
        VipSpec {
            name: addr.into(),
            origin: Origin::Static,
            addr: addr.parse().unwrap(),
            proto: Protocol::Tcp,
            ports: ports.to_vec(),
            hash: HashMode::FiveTuple,
            encap: Encap::Ipip,
            min_healthy: 1,
            bgp: VipBgp::default(),
            backends: backends
                .iter()
                .map(|(a, w)| BackendSpec {
                    addr: a.parse().unwrap(),
                    weight: *w,
                })
                .collect(),
            health,
        }
    }

    /// The weight kube-proxy's header reported used to replace the source's (the
    /// EndpointSlice's count): each gateway's probe sees a scale event at its own moment, up
    /// to an interval after the slice, so the gateways' Maglev tables differed meanwhile,
    /// and a stale header overrode a fresher slice. The probe now says only up or down (the
    /// state passed in carries no weight), and the weight is the source's.
    #[test]
    fn healthy_backends_follow_the_probe_state_with_the_sources_weight() {
        let unchecked = vip(
            "203.0.113.1",
            &[80],
            &[("10.0.0.1", 2), ("10.0.0.2", 0)],
            None,
        );
        assert_eq!(
            unchecked.healthy_backends(|_| None),
            [BackendSpec {
                addr: "10.0.0.1".parse().unwrap(),
                weight: 2
            }]
        );

        let spec = kube_proxy_probe();
        let checked = vip(
            "203.0.113.1",
            &[80],
            &[("10.0.0.1", 3), ("10.0.0.2", 1), ("10.0.0.3", 1)],
            Some(spec),
        );
        let up: IpAddr = "10.0.0.1".parse().unwrap();
        let unreported: IpAddr = "10.0.0.2".parse().unwrap();
        let got = checked.healthy_backends(|t| match t.addr {
            a if a == up || a == unreported => Some(Verdict::Up),
            _ => Some(Verdict::Down),
        });
        assert_eq!(
            got,
            [
                BackendSpec {
                    addr: up,
                    weight: 3
                },
                BackendSpec {
                    addr: unreported,
                    weight: 1
                }
            ]
        );
    }

    /// An HTTP probe with the weight header, as Kubernetes `Local` Services get.
    fn kube_proxy_probe() -> HealthSpec {
        HealthSpec {
            probe: Probe::Http {
                port: 30000,
                path: "/healthz".into(),
                weight_header: true,
            },
            timing: Timing::default(),
        }
    }

    /// Weight 0 drains: a healthy backend at weight 0 used to be left out of the snapshot, so
    /// every flow recorded to it was re-hashed to another node (a TCP reset). It stays at
    /// weight 0, does not count toward announcing, and leaves once it is down.
    #[test]
    fn a_weight_zero_backend_drains_until_it_is_down() {
        let spec = kube_proxy_probe();
        let b = |a: &str, weight| BackendSpec {
            addr: a.parse().unwrap(),
            weight,
        };
        let checked = vip(
            "203.0.113.1",
            &[80],
            &[
                ("10.0.0.1", 1),
                ("10.0.0.2", 0),
                ("10.0.0.3", 0),
                ("10.0.0.4", 1),
            ],
            Some(spec),
        );
        let state = |t: &Target| match t.addr.to_string().as_str() {
            "10.0.0.1" | "10.0.0.2" => Some(Verdict::Up),
            "10.0.0.3" => Some(Verdict::Down),
            // Up, whatever count it reports: its own weight.
            _ => Some(Verdict::Up),
        };
        assert_eq!(
            checked.serving_backends(state),
            [b("10.0.0.1", 1), b("10.0.0.2", 0), b("10.0.0.4", 1)]
        );
        assert_eq!(
            checked.healthy_backends(state),
            [b("10.0.0.1", 1), b("10.0.0.4", 1)]
        );

        let unchecked = vip("203.0.113.1", &[80], &[("10.0.0.1", 0)], None);
        assert_eq!(unchecked.serving_backends(|_| None), [b("10.0.0.1", 0)]);
        assert_eq!(unchecked.healthy_backends(|_| None), []);
    }

    /// A `Local` Service's node whose endpoints are all terminating (but still serving) is
    /// at weight 0, and kube-proxy's health check answers 503 for it on purpose: it used to
    /// leave with its probe, which re-hashed (reset) every connection to its pods. It stays
    /// at weight 0 whatever the probe says; a weight-0 `Cluster` node (excluded, NotReady)
    /// leaves once its probe fails, as does a `Local` node with ready endpoints.
    #[test]
    fn a_draining_local_node_stays_while_its_probe_fails() {
        let b = |a: &str, weight| BackendSpec {
            addr: a.parse().unwrap(),
            weight,
        };
        let kube = |traffic_policy| {
            let mut v = vip(
                "203.0.113.1",
                &[80],
                &[("10.0.0.1", 2), ("10.0.0.2", 0), ("10.0.0.3", 0)],
                Some(kube_proxy_probe()),
            );
            v.origin = Origin::Kubernetes {
                namespace: "ns".into(),
                name: "web".into(),
                traffic_policy,
                health_check_node_port: Some(30000),
                created: None,
            };
            v
        };
        // 10.0.0.2 answers 503; 10.0.0.3 has no verdict yet.
        let state = |t: &Target| match t.addr.to_string().as_str() {
            "10.0.0.1" => Some(Verdict::Up),
            "10.0.0.2" => Some(Verdict::Down),
            _ => None,
        };
        let local = kube(TrafficPolicy::Local);
        assert_eq!(
            local.serving_backends(state),
            [b("10.0.0.1", 2), b("10.0.0.2", 0), b("10.0.0.3", 0)]
        );
        assert_eq!(local.healthy_backends(state), [b("10.0.0.1", 2)]);
        let all_down = |_: &Target| Some(Verdict::Down);
        assert_eq!(
            local.serving_backends(all_down),
            [b("10.0.0.2", 0), b("10.0.0.3", 0)]
        );
        assert_eq!(local.healthy_backends(all_down), []);

        let cluster = kube(TrafficPolicy::Cluster);
        assert_eq!(cluster.serving_backends(state), [b("10.0.0.1", 2)]);
        assert_eq!(cluster.serving_backends(all_down), []);
    }

    /// A draining `Local` node that died (no answer to `fall` probes in a row: power, kernel,
    /// cable) used to stay like one answering 503, its EndpointSlice unchanged until the
    /// node controller evicts its pods, and every flow to it was black-holed meanwhile. It
    /// leaves: its flows are re-hashed to live nodes (a reset, not a hang). A node answering
    /// 503, or down but not yet silent, or not yet probed, stays.
    #[test]
    fn a_silent_draining_local_node_leaves() {
        let b = |a: &str, weight| BackendSpec {
            addr: a.parse().unwrap(),
            weight,
        };
        let mut local = vip(
            "203.0.113.1",
            &[80],
            &[
                ("10.0.0.1", 2),
                ("10.0.0.2", 0),
                ("10.0.0.3", 0),
                ("10.0.0.4", 0),
                ("10.0.0.5", 1),
            ],
            Some(kube_proxy_probe()),
        );
        local.origin = Origin::Kubernetes {
            namespace: "ns".into(),
            name: "web".into(),
            traffic_policy: TrafficPolicy::Local,
            health_check_node_port: Some(30000),
            created: None,
        };
        // .2 answers 503, .3 has stopped answering, .4 has no verdict, .5 is dead too.
        let verdict = |t: &Target| match t.addr.to_string().as_str() {
            "10.0.0.1" => Some(Verdict::Up),
            "10.0.0.2" => Some(Verdict::Down),
            "10.0.0.3" | "10.0.0.5" => Some(Verdict::Silent),
            _ => None,
        };
        assert_eq!(
            local.serving_backends(verdict),
            [b("10.0.0.1", 2), b("10.0.0.2", 0), b("10.0.0.4", 0)]
        );
        assert_eq!(local.healthy_backends(verdict), [b("10.0.0.1", 2)]);
    }

    /// More service ports than the steering map holds used to fail the map update after a
    /// partial write, which ended the daemon (and a restart met the same Services).
    #[test]
    fn merge_keeps_kubernetes_vips_within_the_steering_limit() {
        let statics = ServiceSet {
            vips: vec![vip("192.0.2.1", &[80], &[("10.0.0.1", 1)], None)],
        };
        let many: Vec<u16> = (1..=(MAX_VIPS - 10) as u16).collect();
        let kube = ServiceSet {
            vips: vec![
                vip("203.0.113.1", &many, &[("10.0.0.1", 1)], None),
                // Would make MAX_VIPS + 1: left out whole, not cut to the ports that fit.
                vip("203.0.113.2", &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[], None),
                vip("203.0.113.3", &[1, 2, 3, 4, 5, 6, 7, 8, 9], &[], None),
            ],
        };
        let (merged, _) = ServiceSet::merge(&statics, &kube);
        let addrs: Vec<String> = merged.vips.iter().map(|v| v.addr.to_string()).collect();
        assert_eq!(addrs, ["192.0.2.1", "203.0.113.1", "203.0.113.3"]);
        let ports: usize = merged.vips.iter().map(|v| v.ports.len()).sum();
        assert_eq!(ports, MAX_VIPS);
    }

    /// Past the steering limit, the newest Service is the one left out: admitted in address
    /// order, a new Service with a low address pushed out an older one already served.
    #[test]
    fn the_newest_services_are_left_out_past_the_steering_limit() {
        let service = |addr: &str, ports: usize, created: i64| {
            let ports: Vec<u16> = (1..=ports as u16).collect();
            let mut v = vip(addr, &ports, &[], None);
            v.origin = Origin::Kubernetes {
                namespace: "ns".into(),
                name: format!("svc-{created}"),
                traffic_policy: TrafficPolicy::Cluster,
                health_check_node_port: None,
                created: Some(created),
            };
            v
        };
        let old = [
            service("203.0.113.50", 5, 100),
            service("203.0.113.60", MAX_VIPS - 5, 200),
        ];
        let kube = ServiceSet {
            vips: [service("203.0.113.1", 1, 300)]
                .into_iter()
                .chain(old.clone())
                .collect(),
        };
        let (merged, left_out) = ServiceSet::merge(&ServiceSet::default(), &kube);
        let addrs: Vec<String> = merged.vips.iter().map(|v| v.addr.to_string()).collect();
        assert_eq!(addrs, ["203.0.113.50", "203.0.113.60"]);
        assert_eq!(left_out.len(), 1);
        assert_eq!(left_out[0].addr.to_string(), "203.0.113.1");
    }

    /// Past the steering limit a Service is left out whole: its VIPs (one per family,
    /// protocol and set of backends) were admitted one at a time, so it could be served on
    /// some of its ports or on one family only.
    #[test]
    fn a_service_past_the_steering_limit_is_left_out_whole() {
        let kube = |addr: &str, ports: std::ops::RangeInclusive<u16>, name: &str, created| {
            let ports: Vec<u16> = ports.collect();
            let mut v = vip(addr, &ports, &[], None);
            v.name = format!("ns/{name}");
            v.origin = Origin::Kubernetes {
                namespace: "ns".into(),
                name: name.into(),
                traffic_policy: TrafficPolicy::Cluster,
                health_check_node_port: None,
                created: Some(created),
            };
            v
        };
        let last = MAX_VIPS as u16;
        let set = ServiceSet {
            vips: vec![
                kube("203.0.113.1", 1..=last - 4, "old", 100),
                // `web`: three VIPs, 6 ports in all, where 4 are left.
                kube("203.0.113.2", 80..=81, "web", 200),
                kube("203.0.113.2", 443..=444, "web", 200),
                kube("2001:db8::2", 80..=81, "web", 200),
                // A newer Service that fits.
                kube("203.0.113.3", 53..=53, "dns", 300),
            ],
        };
        let (merged, left_out) = ServiceSet::merge(&ServiceSet::default(), &set);
        let served: Vec<&str> = merged.vips.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(served, ["ns/old", "ns/dns"]);
        let left: Vec<String> = left_out
            .iter()
            .map(|l| format!("{} {} {:?}", l.service, l.addr, l.why))
            .collect();
        let why = format!("SteeringLimit {{ steered: {} }}", MAX_VIPS - 4);
        assert_eq!(
            left,
            [
                format!("ns/web 203.0.113.2 {why}"),
                format!("ns/web 203.0.113.2 {why}"),
                format!("ns/web 2001:db8::2 {why}"),
            ]
        );
    }

    /// What merge leaves out is logged when it starts, not on every Kubernetes update (each
    /// one merges again, and used to log every VIP left out again).
    #[test]
    fn a_vip_left_out_is_reported_once() {
        let statics = ServiceSet {
            vips: vec![vip("192.0.2.1", &[80], &[("10.0.0.1", 1)], None)],
        };
        let many: Vec<u16> = (1..=(MAX_VIPS - 10) as u16).collect();
        let kube = |extra: &[&str]| ServiceSet {
            vips: [
                vip("192.0.2.1", &[443], &[], None),
                vip("203.0.113.1", &many, &[], None),
            ]
            .into_iter()
            .chain(
                extra
                    .iter()
                    .map(|a| vip(a, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[], None)),
            )
            .collect(),
        };
        let said = |set: &ServiceSet, before: &mut Vec<LeftOut>| {
            let (_, left_out) = ServiceSet::merge(&statics, set);
            let news = LeftOut::news(before, left_out);
            news.iter()
                .map(|l| format!("{} {:?}", l.addr, l.why))
                .collect::<Vec<_>>()
        };
        let mut before = Vec::new();
        assert_eq!(
            said(&kube(&["203.0.113.2"]), &mut before),
            [
                "192.0.2.1 StaticAddress(\"192.0.2.1\")",
                &format!("203.0.113.2 SteeringLimit {{ steered: {} }}", MAX_VIPS - 9)
            ]
        );
        // The same again, and with one more left out: only the new one.
        assert!(said(&kube(&["203.0.113.2"]), &mut before).is_empty());
        assert_eq!(
            said(&kube(&["203.0.113.2", "203.0.113.3"]), &mut before),
            [format!(
                "203.0.113.3 SteeringLimit {{ steered: {} }}",
                MAX_VIPS - 9
            )]
        );
        // Served again, then left out again: said again.
        assert!(said(&kube(&[]), &mut before).is_empty());
        assert_eq!(said(&kube(&["203.0.113.2"]), &mut before).len(), 1);
    }

    #[test]
    fn merge_prefers_static_and_dedups_targets() {
        let spec = HealthSpec {
            probe: Probe::Tcp { port: 80 },
            timing: Timing::default(),
        };
        let statics = ServiceSet {
            vips: vec![vip(
                "203.0.113.1",
                &[80],
                &[("10.0.0.1", 1)],
                Some(spec.clone()),
            )],
        };
        let kube = ServiceSet {
            vips: vec![
                vip("203.0.113.1", &[443, 80], &[("10.0.0.9", 1)], None),
                vip(
                    "203.0.113.2",
                    &[443],
                    &[("10.0.0.1", 1)],
                    Some(spec.clone()),
                ),
            ],
        };
        let (merged, _) = ServiceSet::merge(&statics, &kube);
        assert_eq!(merged.vips.len(), 2);
        assert_eq!(merged.vips[0].ports, [80]);
        assert_eq!(merged.vips[0].backends[0].addr.to_string(), "10.0.0.1");
        assert_eq!(merged.vips[1].ports, [443]);
        assert_eq!(
            merged.health_targets()[..],
            [Target {
                addr: "10.0.0.1".parse().unwrap(),
                spec
            }]
        );
    }

    /// Two services probing one node the same way share one probe at the strictest of
    /// their timings, in either order (it used to run at the timing of whichever came
    /// first); another probe of the same node stays its own.
    #[test]
    fn one_probe_shared_by_services_runs_at_their_strictest_timing() {
        let timed = |probe, interval_ms, timeout_ms, rise, fall| HealthSpec {
            probe,
            timing: Timing {
                interval: Duration::from_millis(interval_ms),
                timeout: Duration::from_millis(timeout_ms),
                rise,
                fall,
            },
        };
        let tcp = Probe::Tcp { port: 80 };
        let slow = vip(
            "203.0.113.1",
            &[80],
            &[("10.0.0.1", 1)],
            Some(timed(tcp.clone(), 10_000, 5_000, 2, 5)),
        );
        let quick = vip(
            "203.0.113.2",
            &[80],
            &[("10.0.0.1", 1), ("10.0.0.2", 1)],
            Some(timed(tcp.clone(), 1_000, 800, 3, 2)),
        );
        let other = vip(
            "203.0.113.3",
            &[80],
            &[("10.0.0.1", 1)],
            Some(timed(Probe::Tcp { port: 81 }, 20_000, 1_000, 1, 9)),
        );
        let want = timed(tcp.clone(), 1_000, 800, 3, 2).timing;
        for vips in [
            vec![slow.clone(), quick.clone(), other.clone()],
            vec![other.clone(), quick.clone(), slow.clone()],
        ] {
            let targets = ServiceSet { vips }.health_targets();
            let timing = |addr: &str, probe: &Probe| {
                let t: Vec<&Target> = targets
                    .iter()
                    .filter(|t| t.addr.to_string() == addr && t.spec.probe == *probe)
                    .collect();
                assert_eq!(t.len(), 1, "{targets:?}");
                t[0].spec.timing
            };
            assert_eq!(targets.len(), 3, "{targets:?}");
            assert_eq!(timing("10.0.0.1", &tcp), want);
            assert_eq!(timing("10.0.0.2", &tcp), want);
            assert_eq!(
                timing("10.0.0.1", &Probe::Tcp { port: 81 }),
                other.health.as_ref().unwrap().timing
            );
        }
    }

    /// A Service could put its ports on a static VIP's address (through its status, or
    /// `spec.loadBalancerIP` without a pool) where they differed from the static ones, and
    /// be announced with the operator's VIP.
    #[test]
    fn merge_refuses_services_on_a_static_address_whatever_the_port() {
        let text = include_str!("../../../dsrgate.example.toml");
        let c = crate::config::parse(text, std::path::Path::new("dsrgate.example.toml")).unwrap();
        // Static: web 203.0.113.10 tcp 80, 443; dns 203.0.113.53 udp 53.
        let svc = |name: &str, ip: &str, proto: &str, port: u16| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "team", "uid": format!("uid-{name}"),
                    "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"type": "LoadBalancer", "loadBalancerClass": "dsrgate.io/dsr",
                    "externalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"],
                    "ports": [{"name": "p", "protocol": proto, "port": port, "targetPort": port,
                        "nodePort": 30080}]},
                "status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}
            }))
            .unwrap()
        };
        let mut objs = kube::model::Objects::default();
        for s in [
            svc("web-alt", "203.0.113.10", "TCP", 8080),
            svc("dns-tcp", "203.0.113.53", "TCP", 53),
            svc("own", "203.0.113.130", "TCP", 8080),
        ] {
            objs.services
                .insert(format!("team/{}", s.metadata.name.as_deref().unwrap()), s);
        }
        // Without a pool: with one, a Service of the class is moved off a status address
        // outside it before the merge sees it.
        let mut cfg = c.kubernetes.clone().unwrap();
        cfg.address_pool.clear();
        let kube = kube::model::compute(&cfg, &objs, &mut HashMap::new()).set;
        assert_eq!(kube.vips.len(), 3);
        let (merged, _) = ServiceSet::merge(&static_list::service_set(&c), &kube);
        let got: Vec<(&str, String)> = merged
            .vips
            .iter()
            .map(|v| (v.name.as_str(), v.addr.to_string()))
            .collect();
        let want = [
            ("web", "203.0.113.10"),
            ("dns", "203.0.113.53"),
            ("team/own", "203.0.113.130"),
        ];
        assert_eq!(got, want.map(|(n, a)| (n, a.to_owned())));
    }
}
