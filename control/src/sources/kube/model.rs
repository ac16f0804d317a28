//! From Kubernetes objects to a [`ServiceSet`]: pure functions, no I/O, so
//! they are tested on API-reference JSON directly. Objects are untrusted: a
//! malformed field drops that field (logged), never panics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::{unusable, Kubernetes, Protocol, MAX_WEIGHT};
use crate::health::{HealthSpec, Probe};
use crate::sources::static_list::encap;
use crate::sources::{BackendSpec, Origin, ServiceSet, TrafficPolicy, VipSpec};

/// Label that excludes a node from `Cluster` Services' backends.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The objects the watchers hold, keyed `namespace/name` (nodes: `name`).
#[derive(Default)]
pub struct Objects {
    pub services: BTreeMap<String, Service>,
    pub slices: BTreeMap<String, EndpointSlice>,
    pub nodes: BTreeMap<String, Node>,
}

/// A pool address that must be written to a Service's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
}

/// Result of [`compute`].
pub struct Computed {
    pub set: ServiceSet,
    /// Services whose `status.loadBalancer.ingress` lacks their address.
    pub to_write: Vec<Assignment>,
}

fn key(ns: Option<&str>, name: Option<&str>) -> String {
    format!("{}/{}", ns.unwrap_or(""), name.unwrap_or(""))
}

/// Whether dsrgate serves this Service: type LoadBalancer, and the class we
/// were told to serve (none configured: Services that name no class).
pub fn selected(cfg: &Kubernetes, svc: &Service) -> bool {
    let Some(spec) = &svc.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec.load_balancer_class.as_deref() == cfg.load_balancer_class.as_deref()
}

fn svc_key(svc: &Service) -> String {
    key(
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
    )
}

/// `raw` as a unicast address: a multicast, broadcast or unspecified address in one Service
/// must not become a VIP, which the dataplane would refuse (and with it the whole snapshot)
/// and BGP must never carry.
fn unicast(raw: &str) -> Result<IpAddr, &'static str> {
    match raw.parse() {
        Ok(ip) if !unusable(ip) => Ok(ip),
        Ok(_) => Err("not a unicast address"),
        Err(_) => Err("unparseable"),
    }
}

fn raw_ingress_ips(svc: &Service) -> impl Iterator<Item = &str> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    ingress
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref())
}

fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    raw_ingress_ips(svc)
        .filter_map(|ip| unicast(ip).ok())
        .collect()
}

/// Logs the status addresses [`ingress_ips`] leaves out.
fn warn_refused_ingress(svc: &Service) {
    for raw in raw_ingress_ips(svc) {
        if let Err(why) = unicast(raw) {
            tracing::warn!(service = %svc_key(svc), value = raw, "ignoring status.loadBalancer.ingress ip: {why}");
        }
    }
}

/// The address the Service asks for in `spec.loadBalancerIP`, if it names one at all
/// (manifests often carry an empty one, which asks for nothing).
fn requested(svc: &Service) -> Option<&str> {
    let raw = svc.spec.as_ref()?.load_balancer_ip.as_deref()?;
    (!raw.trim().is_empty()).then_some(raw)
}

/// The requested address if it may be granted: unicast, and inside the address pool when
/// one is configured (as MetalLB and Cilium LB-IPAM do), so a namespace that may create a
/// Service cannot have any address of its choosing announced. A Service whose request is
/// refused gets no VIP (never a pool address instead of the one it asked for).
fn spec_ip(cfg: &Kubernetes, svc: &Service) -> Option<IpAddr> {
    let raw = requested(svc)?;
    let ip = unicast(raw)
        .map_err(|why| tracing::warn!(service = %svc_key(svc), value = raw, "ignoring spec.loadBalancerIP: {why}"))
        .ok()?;
    if !cfg.address_pool.is_empty() && !cfg.address_pool.iter().any(|r| r.contains(ip)) {
        tracing::warn!(service = %svc_key(svc), value = %ip, "ignoring spec.loadBalancerIP outside kubernetes.address_pool");
        return None;
    }
    Some(ip)
}

fn wants_ipv6(svc: &Service) -> bool {
    let fams = svc.spec.as_ref().and_then(|s| s.ip_families.as_ref());
    fams.and_then(|f| f.first()).map(String::as_str) == Some("IPv6")
}

/// The address of `node` of the configured type and of the VIP's family.
fn node_addr(cfg: &Kubernetes, node: &Node, v6: bool) -> Option<IpAddr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    addrs
        .iter()
        .filter(|a| a.type_ == cfg.node_address_type.as_str())
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv6() == v6 && !unusable(*ip))
}

fn node_ready(node: &Node) -> bool {
    let conds = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conds
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn excluded(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_LABEL))
}

/// Ready endpoints of one Service per node: ready and serving (unset counts
/// as true, as the API says) and not terminating. Each endpoint address counts
/// once even if two slices list it (slices overlap while being rebalanced);
/// only slices of the VIP's address family count, so dual-stack Services do
/// not count each pod twice.
fn ready_endpoints_per_node<'a>(
    objs: &'a Objects,
    ns: &str,
    name: &str,
    v6: bool,
) -> BTreeMap<&'a str, usize> {
    let family = if v6 { "IPv6" } else { "IPv4" };
    let mut per_node: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for slice in objs.slices.values() {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if slice.metadata.namespace.as_deref() != Some(ns)
            || owner.map(String::as_str) != Some(name)
            || slice.address_type != family
        {
            continue;
        }
        for ep in slice.endpoints.iter().flatten() {
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true)
                && c.and_then(|c| c.serving).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false);
            let (Some(node), Some(addr)) = (ep.node_name.as_deref(), ep.addresses.first()) else {
                continue;
            };
            if ready {
                per_node.entry(node).or_default().insert(addr.as_str());
            }
        }
    }
    per_node
        .into_iter()
        .map(|(n, eps)| (n, eps.len()))
        .collect()
}

/// The first pool address not in `used`, of the wanted family.
fn pick_from_pool(cfg: &Kubernetes, used: &BTreeSet<IpAddr>, v6: bool) -> Option<IpAddr> {
    cfg.address_pool
        .iter()
        .filter(|r| r.first.is_ipv6() == v6)
        .flat_map(|r| r.addresses())
        .find(|ip| !used.contains(ip))
}

/// Computes the VIPs of the selected Services.
///
/// Addresses: `status.loadBalancer.ingress[].ip`, else `spec.loadBalancerIP`,
/// else a pool address. `assigned` remembers pool choices until the Service's
/// status shows them, so a Service keeps one address while its status write is
/// in flight. Pool addresses go to Services in creation order (then name), the
/// lowest free first: gateways sharing a pool and a view choose alike.
pub fn compute(
    cfg: &Kubernetes,
    objs: &Objects,
    assigned: &mut HashMap<String, IpAddr>,
) -> Computed {
    let mut selected_svcs: Vec<(&String, &Service)> = objs
        .services
        .iter()
        .filter(|(_, s)| selected(cfg, s))
        .collect();
    selected_svcs.sort_by(|a, b| {
        (a.1.metadata.creation_timestamp.as_ref().map(|t| &t.0), a.0)
            .cmp(&(b.1.metadata.creation_timestamp.as_ref().map(|t| &t.0), b.0))
    });
    assigned.retain(|k, _| {
        selected_svcs
            .iter()
            .any(|(key, s)| *key == k && ingress_ips(s).is_empty() && requested(s).is_none())
    });

    let mut used: BTreeSet<IpAddr> = objs
        .services
        .values()
        .flat_map(|s| {
            ingress_ips(s)
                .into_iter()
                .chain(requested(s).and_then(|r| r.parse().ok()))
        })
        .collect();
    used.extend(assigned.values().copied());

    let mut vips: Vec<VipSpec> = Vec::new();
    let mut to_write = Vec::new();
    for (k, svc) in selected_svcs {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        warn_refused_ingress(svc);
        let mut addrs = ingress_ips(svc);
        if addrs.is_empty() {
            let ip = if requested(svc).is_some() {
                spec_ip(cfg, svc)
            } else if let Some(ip) = assigned.get(k) {
                Some(*ip)
            } else {
                let ip = pick_from_pool(cfg, &used, wants_ipv6(svc));
                match ip {
                    Some(ip) => {
                        used.insert(ip);
                        assigned.insert(k.clone(), ip);
                    }
                    None if !cfg.address_pool.is_empty() => {
                        tracing::warn!(service = %k, "address pool exhausted")
                    }
                    None => {}
                }
                ip
            };
            if let Some(ip) = ip {
                if !cfg.address_pool.is_empty() {
                    to_write.push(Assignment {
                        namespace: ns.clone(),
                        name: name.clone(),
                        ip,
                    });
                }
                addrs.push(ip);
            }
        }
        for addr in addrs {
            vips.extend(service_vips(cfg, objs, svc, &ns, &name, addr));
        }
    }

    // Two Services may claim one address and port; the older one keeps it.
    let mut kept: Vec<VipSpec> = Vec::new();
    for v in vips {
        if let Some(first) = kept.iter().find(|k| k.overlaps(&v)) {
            tracing::warn!(service = %v.name, vip = %v.addr, kept = %first.name, "VIP port already used by another Service; ignored");
            continue;
        }
        kept.push(v);
    }
    let mut set = ServiceSet { vips: kept };
    set.normalize();
    Computed { set, to_write }
}

/// The VIPs (one per protocol) of one Service at one address.
fn service_vips(
    cfg: &Kubernetes,
    objs: &Objects,
    svc: &Service,
    ns: &str,
    name: &str,
    addr: IpAddr,
) -> Vec<VipSpec> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let policy = match spec.external_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let hcnp = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    let v6 = addr.is_ipv6();

    let backends: Vec<BackendSpec> = match policy {
        TrafficPolicy::Local => ready_endpoints_per_node(objs, ns, name, v6)
            .into_iter()
            .filter_map(|(node, count)| {
                let addr = node_addr(cfg, objs.nodes.get(node)?, v6)?;
                Some(BackendSpec {
                    addr,
                    weight: u32::try_from(count).unwrap_or(MAX_WEIGHT).min(MAX_WEIGHT),
                })
            })
            .collect(),
        TrafficPolicy::Cluster => objs
            .nodes
            .values()
            .filter(|n| node_ready(n) && !excluded(n))
            .filter_map(|n| node_addr(cfg, n, v6))
            .map(|addr| BackendSpec { addr, weight: 1 })
            .collect(),
    };
    // Local: kube-proxy's per-Service answer on healthCheckNodePort (200 only
    // while the node has local endpoints, with their count). Cluster: kube-proxy's
    // own health, since any node forwards.
    let probe = match (policy, hcnp) {
        (TrafficPolicy::Local, Some(port)) => Probe::Http {
            port,
            path: "/healthz".into(),
            weight_header: true,
        },
        _ => Probe::Http {
            port: cfg.kube_proxy_health_port,
            path: "/healthz".into(),
            weight_header: false,
        },
    };
    let health = HealthSpec {
        probe,
        timing: cfg.health,
    };

    let mut by_proto: BTreeMap<Protocol, Vec<u16>> = BTreeMap::new();
    for p in spec.ports.iter().flatten() {
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                tracing::debug!(service = %format!("{ns}/{name}"), protocol = other, "port protocol not served");
                continue;
            }
        };
        match u16::try_from(p.port) {
            Ok(port) if port != 0 => by_proto.entry(proto).or_default().push(port),
            _ => {
                tracing::warn!(service = %format!("{ns}/{name}"), port = p.port, "ignoring out-of-range port")
            }
        }
    }
    by_proto
        .into_iter()
        .map(|(proto, ports)| VipSpec {
            name: format!("{ns}/{name}"),
            origin: Origin::Kubernetes {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                traffic_policy: policy,
                health_check_node_port: hcnp,
            },
            addr,
            proto,
            ports,
            hash: cfg.hash,
            encap: encap(cfg.encap, cfg.gue_port),
            min_healthy: cfg.min_healthy_backends,
            bgp: cfg.bgp.clone(),
            backends: backends.clone(),
            health: Some(health.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn cfg() -> Kubernetes {
        let text = "[dataplane]\nupstream_interface = \"eth0\"\n[kubernetes]\naddress_pool = [\"198.51.100.0/30\", \"2001:db8::/126\"]\n";
        crate::config::parse(text, std::path::Path::new("t.toml"))
            .unwrap()
            .kubernetes
            .unwrap()
    }

    fn svc(v: Value) -> Option<Service> {
        serde_json::from_value(v).ok()
    }

    #[test]
    fn pool_assignment_is_in_creation_order_and_per_family() {
        let mk = |name: &str, created: &str, fam: &str| {
            svc(json!({"metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
                "spec": {"type": "LoadBalancer", "ipFamilies": [fam], "ports": [{"port": 80, "protocol": "TCP"}]}}))
            .unwrap()
        };
        let mut objs = Objects::default();
        objs.services
            .insert("ns/b".into(), mk("b", "2026-01-01T00:00:00Z", "IPv4"));
        objs.services
            .insert("ns/a".into(), mk("a", "2026-01-02T00:00:00Z", "IPv4"));
        objs.services
            .insert("ns/c".into(), mk("c", "2026-01-03T00:00:00Z", "IPv6"));
        let mut assigned = HashMap::new();
        let c = compute(&cfg(), &objs, &mut assigned);
        let got: BTreeMap<String, String> = c
            .to_write
            .iter()
            .map(|a| (a.name.clone(), a.ip.to_string()))
            .collect();
        assert_eq!(got["b"], "198.51.100.0");
        assert_eq!(got["a"], "198.51.100.1");
        assert_eq!(got["c"], "2001:db8::");
        // Stable across recomputation while the status write is pending.
        objs.services
            .insert("ns/d".into(), mk("d", "2025-01-01T00:00:00Z", "IPv4"));
        let c2 = compute(&cfg(), &objs, &mut assigned);
        let got2: BTreeMap<String, String> = c2
            .to_write
            .iter()
            .map(|a| (a.name.clone(), a.ip.to_string()))
            .collect();
        assert_eq!(
            (got2["a"].as_str(), got2["b"].as_str(), got2["d"].as_str()),
            ("198.51.100.1", "198.51.100.0", "198.51.100.2")
        );
        // Exhausted: 4 IPv4 addresses, the fifth Service waits.
        objs.services
            .insert("ns/e".into(), mk("e", "2026-02-01T00:00:00Z", "IPv4"));
        objs.services
            .insert("ns/f".into(), mk("f", "2026-03-01T00:00:00Z", "IPv4"));
        let c3 = compute(&cfg(), &objs, &mut assigned);
        assert_eq!(c3.to_write.len(), 6 - 1);
        assert!(!c3.set.vips.iter().any(|v| v.name == "ns/f"));
    }

    /// One Service's address that is not unicast used to reach the snapshot builder, which
    /// refused the whole snapshot, and the policy then withdrew every VIP of the gateway.
    #[test]
    fn addresses_must_be_unicast_and_requests_inside_the_pool() {
        let mk = |name: &str, spec_ip: Option<&str>, ingress: &[&str]| {
            let ingress: Vec<Value> = ingress.iter().map(|ip| json!({ "ip": ip })).collect();
            let mut spec =
                json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]});
            if let Some(ip) = spec_ip {
                spec["loadBalancerIP"] = json!(ip);
            }
            svc(json!({"metadata": {"name": name, "namespace": "ns",
                    "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": spec, "status": {"loadBalancer": {"ingress": ingress}}}))
            .unwrap()
        };
        let node = |name: &str, addr: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": addr}],
                    "conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap()
        };
        let mut objs = Objects::default();
        for s in [
            mk("m", Some("224.0.0.1"), &[]),
            mk("out", Some("192.0.2.7"), &[]),
            mk("in", Some("198.51.100.2"), &[]),
            mk("bad-status", Some(""), &["255.255.255.255", "0.0.0.0"]),
            mk("status", None, &["ff02::1", "192.0.2.9"]),
        ] {
            objs.services.insert(svc_key(&s), s);
        }
        objs.nodes.insert("n1".into(), node("n1", "10.1.0.1"));
        objs.nodes.insert("n2".into(), node("n2", "224.0.0.5"));
        let vips = |cfg: &Kubernetes, objs: &Objects| -> BTreeMap<String, Vec<String>> {
            let c = compute(cfg, objs, &mut HashMap::new());
            let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for v in &c.set.vips {
                assert_eq!(v.backends.len(), 1, "the multicast node is no backend");
                assert_eq!(v.backends[0].addr.to_string(), "10.1.0.1");
                out.entry(v.name.clone())
                    .or_default()
                    .push(v.addr.to_string());
            }
            out
        };
        let got = vips(&cfg(), &objs);
        // Refused requests get no VIP, and no pool address in place of the one asked for.
        assert!(
            !got.contains_key("ns/m") && !got.contains_key("ns/out"),
            "{got:?}"
        );
        assert_eq!(got["ns/in"], ["198.51.100.2"]);
        // A status of nothing usable counts as none, as does an empty request: the Service
        // gets a pool address.
        assert_eq!(got["ns/bad-status"], ["198.51.100.0"]);
        assert_eq!(got["ns/status"], ["192.0.2.9"]);
        // Without a pool any unicast request is granted; multicast still is not.
        let mut open = cfg();
        open.address_pool.clear();
        let got = vips(&open, &objs);
        assert_eq!(got["ns/out"], ["192.0.2.7"]);
        assert!(!got.contains_key("ns/m") && !got.contains_key("ns/bad-status"));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop_oneof![
                Just("LoadBalancer"),
                Just("Local"),
                Just("TCP"),
                Just("UDP"),
                Just("IPv4"),
                Just("IPv6"),
                Just("1.2.3.4"),
                Just("::1"),
                Just("Ready"),
                Just("True"),
                Just("InternalIP"),
                Just("n1"),
                Just("kubernetes.io/service-name"),
                Just("")
            ]
            .prop_map(|s| Value::from(s.to_owned())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("type"),
                        Just("ports"),
                        Just("port"),
                        Just("protocol"),
                        Just("externalTrafficPolicy"),
                        Just("healthCheckNodePort"),
                        Just("loadBalancerIP"),
                        Just("status"),
                        Just("loadBalancer"),
                        Just("ingress"),
                        Just("ip"),
                        Just("addresses"),
                        Just("address"),
                        Just("conditions"),
                        Just("ready"),
                        Just("terminating"),
                        Just("nodeName"),
                        Just("labels"),
                        Just("ipFamilies")
                    ]
                    .prop_map(str::to_owned),
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever shape the API objects take, computing never panics.
        #[test]
        fn arbitrary_objects_never_panic(spec in arb_json(), status in arb_json(), slice_eps in arb_json(), node_status in arb_json()) {
            let mut objs = Objects::default();
            if let Some(s) = svc(json!({"metadata": {"name": "s", "namespace": "n"}, "spec": spec, "status": status})) {
                objs.services.insert("n/s".into(), s);
            }
            if let Ok(sl) = serde_json::from_value::<EndpointSlice>(json!({"metadata": {"name": "x", "namespace": "n", "labels": {"kubernetes.io/service-name": "s"}}, "addressType": "IPv4", "endpoints": slice_eps})) {
                objs.slices.insert("n/x".into(), sl);
            }
            if let Ok(n) = serde_json::from_value::<Node>(json!({"metadata": {"name": "n1"}, "status": node_status})) {
                objs.nodes.insert("n1".into(), n);
            }
            let _ = compute(&cfg(), &objs, &mut HashMap::new());
        }
    }
}
