//! From Kubernetes objects to a [`ServiceSet`]: pure functions, no I/O, so
//! they are tested on API-reference JSON directly. Objects are untrusted: a
//! malformed field drops that field (logged), never panics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use dataplane::bpf::steer::MAX_VIPS;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};

use crate::config::{unusable, HashMode, Kubernetes, Protocol, MAX_WEIGHT};
use crate::health::{HealthSpec, Probe};
use crate::sources::static_list::encap;
use crate::sources::{BackendSpec, Origin, ServiceSet, TrafficPolicy, VipSpec};

/// Label that drains a node (weight 0) for every Service, as upstream's service controller
/// excludes it from every load balancer.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Lets Services share an address, as MetalLB's `metallb.universe.tf/allow-shared-ip` and
/// Cilium's `lbipam.cilium.io/sharing-key` do: Services may be on one address only if they
/// are in one namespace, each carries the same non-empty value here and no two use one port
/// of one protocol. Without it an address is one Service's, and keys are per namespace, so
/// no namespace can put its ports on another team's address (and have them announced with
/// it) by naming the address or guessing the key.
pub const SHARING_KEY_ANNOTATION: &str = "dsrgate.io/allow-shared-ip";

/// The objects the watchers hold, keyed `namespace/name` (nodes: `name`).
#[derive(Default)]
pub struct Objects {
    pub services: BTreeMap<String, Service>,
    pub slices: BTreeMap<String, EndpointSlice>,
    pub nodes: BTreeMap<String, Node>,
}

/// The addresses of a Service to write to its status, when dsrgate gave it one (from the
/// pool or its `spec.loadBalancerIP`): kube-proxy accepts traffic only for status
/// addresses. All of them, one family or each of a dual-stack Service's in `spec.ipFamilies`
/// order, as the write replaces the whole list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
}

/// Pool choices not yet in their Service's status, by Service (`namespace/name`) and
/// family (true: IPv6).
pub type Assigned = HashMap<(String, bool), IpAddr>;

/// Something in one Service that [`compute`] refused or worked around (an address it may
/// not have, a port it cannot serve), or a Node it cannot use. Returned rather than logged:
/// `compute` runs on every watch event, and the watcher logs a problem when it appears and
/// when it is gone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `namespace/name`; for a Node, `node NAME` (no Service key has a space).
    pub service: String,
    pub what: String,
}

/// The problems one [`compute`] found.
pub type Problems = BTreeSet<Problem>;

fn note(problems: &mut Problems, service: &str, what: String) {
    problems.insert(Problem {
        service: service.to_owned(),
        what,
    });
}

/// Result of [`compute`].
pub struct Computed {
    pub set: ServiceSet,
    /// Services whose `status.loadBalancer.ingress` lacks their address: new ones (a pool
    /// address or their granted request, pool or not: kube-proxy accepts traffic only for
    /// status addresses), and those moved off refused pool addresses, whose status the
    /// write replaces.
    pub to_write: Vec<Assignment>,
    pub problems: Problems,
}

/// Whether dsrgate serves this Service: type LoadBalancer, and the class we
/// were told to serve (none configured: Services that name no class).
pub fn selected(cfg: &Kubernetes, svc: &Service) -> bool {
    let Some(spec) = &svc.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec.load_balancer_class.as_deref() == cfg.load_balancer_class.as_deref()
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

fn ingress_ips(svc: &Service) -> BTreeSet<IpAddr> {
    raw_ingress_ips(svc)
        .filter_map(|ip| unicast(ip).ok())
        .collect()
}

/// Notes the status addresses [`ingress_ips`] leaves out.
fn note_refused_ingress(svc: &Service, key: &str, problems: &mut Problems) {
    for raw in raw_ingress_ips(svc) {
        if let Err(why) = unicast(raw) {
            let what = format!("ignoring status.loadBalancer.ingress ip {raw:?}: {why}");
            note(problems, key, what);
        }
    }
}

/// The address the Service asks for in `spec.loadBalancerIP`, if it names one at all
/// (manifests often carry an empty one, which asks for nothing).
fn requested(svc: &Service) -> Option<&str> {
    let raw = svc.spec.as_ref()?.load_balancer_ip.as_deref()?;
    (!raw.trim().is_empty()).then_some(raw)
}

/// The requested address if it may be granted: unicast, of `c`'s family (kube-proxy drops
/// traffic for an address of a family the Service does not have), and inside the address
/// pool when one is configured (as MetalLB and Cilium LB-IPAM do), so a namespace that may
/// create a Service cannot have any address of its choosing announced. A family whose
/// request is refused gets no VIP (never a pool address instead of the one it asked for).
fn spec_ip(cfg: &Kubernetes, c: &Claimant, problems: &mut Problems) -> Option<IpAddr> {
    let raw = c.request?;
    let ip = unicast(raw)
        .map_err(|why| {
            let what = format!("ignoring spec.loadBalancerIP {raw:?}: {why}");
            note(problems, c.key, what)
        })
        .ok()?;
    if ip.is_ipv6() != c.v6 {
        let what = format!(
            "ignoring spec.loadBalancerIP {ip}: the Service has no {} family (spec.ipFamilies)",
            family_name(ip.is_ipv6())
        );
        note(problems, c.key, what);
        return None;
    }
    if !cfg.address_pool.is_empty() && !in_pool(cfg, ip) {
        let what = format!("ignoring spec.loadBalancerIP {ip}: outside kubernetes.address_pool");
        note(problems, c.key, what);
        return None;
    }
    Some(ip)
}

fn family_name(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// The families (true: IPv6) the Service gets an address of, in `spec.ipFamilies` order,
/// and whether it is served only with all of them. One address per family, as MetalLB and
/// Cilium LB-IPAM assign: `SingleStack` (or no policy) the first family; `PreferDualStack`
/// each listed family, serving those it can have; `RequireDualStack` each listed family, and
/// none unless it has all (see [`compute`]). The API server lists one or two distinct
/// families and accepts only these policies; anything else (an unknown family or policy, a
/// duplicate, a third entry) is left out (noted). No family listed: IPv4, as the API server
/// defaulted single-stack clusters before dual-stack.
fn families(svc: &Service, key: &str, problems: &mut Problems) -> (Vec<bool>, bool) {
    let spec = svc.spec.as_ref();
    let (dual, all_or_none) = match spec.and_then(|s| s.ip_family_policy.as_deref()) {
        None | Some("SingleStack") => (false, false),
        Some("PreferDualStack") => (true, false),
        Some("RequireDualStack") => (true, true),
        Some(other) => {
            let what = format!("unknown spec.ipFamilyPolicy {other:?}: its first family only");
            note(problems, key, what);
            (false, false)
        }
    };
    let mut fams = Vec::new();
    for f in spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
    {
        let v6 = match f.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            other => {
                note(
                    problems,
                    key,
                    format!("ignoring spec.ipFamilies entry {other:?}"),
                );
                continue;
            }
        };
        if !fams.contains(&v6) {
            fams.push(v6);
        }
    }
    if fams.is_empty() {
        fams.push(false);
    }
    fams.truncate(if dual { 2 } else { 1 });
    (fams, all_or_none)
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

/// Notes each node without a usable address of `node_address_type`, which is no Service's
/// backend: `ExternalIP` on bare metal, say, would leave every VIP without backends and
/// nothing would say why.
fn note_addressless_nodes(cfg: &Kubernetes, objs: &Objects, problems: &mut Problems) {
    for (name, node) in &objs.nodes {
        if node_addr(cfg, node, false).is_none() && node_addr(cfg, node, true).is_none() {
            let what = format!(
                "no usable {} address (kubernetes.node_address_type): no Service's backend",
                cfg.node_address_type.as_str()
            );
            note(problems, &format!("node {name}"), what);
        }
    }
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

/// The EndpointSlices of each Service, by namespace and Service name: built once per
/// [`compute`], so each Service's lookup does not scan every slice of the cluster.
struct Slices<'a>(HashMap<&'a str, HashMap<&'a str, Vec<&'a EndpointSlice>>>);

impl<'a> Slices<'a> {
    fn new(objs: &'a Objects) -> Self {
        let mut by_service: HashMap<&str, HashMap<&str, Vec<&EndpointSlice>>> = HashMap::new();
        for slice in objs.slices.values() {
            let owner = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(owner)) = (slice.metadata.namespace.as_deref(), owner) {
                let of_ns = by_service.entry(ns).or_default();
                of_ns.entry(owner.as_str()).or_default().push(slice);
            }
        }
        Slices(by_service)
    }

    /// One Service's slices of the VIP's address family (so dual-stack Services do not
    /// count each pod twice).
    fn of(&self, ns: &str, name: &str, v6: bool) -> Vec<&'a EndpointSlice> {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let of_service = self.0.get(ns).and_then(|of_ns| of_ns.get(name));
        let all = of_service.into_iter().flatten().copied();
        all.filter(|slice| slice.address_type == family).collect()
    }
}

/// Which of `slices` carry each Service port, by name and protocol, with a port number:
/// kube-proxy takes a slice's endpoints for exactly the Service ports it lists so (pods
/// whose named target port resolves otherwise, or is missing, are in other slices, or in
/// none for that port). As indexes into `slices`, in their order; built in one pass, so a
/// Service with many ports and slices costs their sum, not their product.
fn carrying<'a>(slices: &[&'a EndpointSlice]) -> HashMap<(&'a str, Protocol), Vec<usize>> {
    let mut by_port: HashMap<(&str, Protocol), Vec<usize>> = HashMap::new();
    for (i, slice) in slices.iter().enumerate() {
        for p in slice.ports.iter().flatten() {
            let (Some(name), Some(proto)) = (p.name.as_deref(), protocol(p.protocol.as_deref()))
            else {
                continue;
            };
            if p.port.is_some_and(|n| n != 0) {
                let of_port = by_port.entry((name, proto)).or_default();
                if of_port.last() != Some(&i) {
                    of_port.push(i);
                }
            }
        }
    }
    by_port
}

/// The endpoints of `slices` that `usable` accepts, as (node, address). An endpoint may
/// name no node (a manually managed slice pointing outside the cluster).
fn endpoints<'s, 'a>(
    slices: &'s [&'a EndpointSlice],
    usable: fn(Option<&EndpointConditions>) -> bool,
) -> impl Iterator<Item = (Option<&'a str>, &'a str)> + 's {
    slices
        .iter()
        .flat_map(|slice| slice.endpoints.iter().flatten())
        .filter(move |ep| usable(ep.conditions.as_ref()))
        .filter_map(|ep| Some((ep.node_name.as_deref(), ep.addresses.first()?.as_str())))
}

/// Ready: the `ready` condition alone (unset counts as true, as the API says), which is
/// what kube-proxy forwards to and its `Local` health check counts. It is usually serving
/// and not terminating, but with `publishNotReadyAddresses` the EndpointSlice controller
/// sets it for every pod, not ready and terminating ones too, and kube-proxy forwards to
/// them all.
fn ready(c: Option<&EndpointConditions>) -> bool {
    c.and_then(|c| c.ready).unwrap_or(true)
}

/// Serving: kube-proxy forwards to it, being [`ready`] or, when none is, [`draining`],
/// which it falls back to for `Cluster` traffic (a rollout's last old pod, a StatefulSet
/// pod restarting); its own health stays up meanwhile.
fn serving(c: Option<&EndpointConditions>) -> bool {
    ready(c) || draining(c)
}

/// Draining: not ready, terminating but still serving (a pod in its grace period).
/// kube-proxy keeps forwarding a `Local` Service's traffic to such endpoints while its node
/// has no ready one (KEP-1669), but its health check counts only ready endpoints, so it
/// answers 503.
fn draining(c: Option<&EndpointConditions>) -> bool {
    !ready(c)
        && c.and_then(|c| c.serving).unwrap_or(true)
        && c.and_then(|c| c.terminating).unwrap_or(false)
}

/// The weight of each node for one port of a `Local` Service, from the `slices` that carry
/// the port: its number of ready endpoints there, each address counted once even if two slices list it (slices
/// overlap while being rebalanced); 0 for a node with none ready but some [`draining`],
/// which keeps the flows pinned to it (and so the connections to its terminating pods) and
/// takes no new ones. A node with neither is not a backend. The weights come from the
/// slices alone, which every gateway sees alike.
fn local_weights<'a>(slices: &[&'a EndpointSlice]) -> BTreeMap<&'a str, u32> {
    let mut per_node: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (node, addr) in endpoints(slices, ready) {
        if let Some(node) = node {
            per_node.entry(node).or_default().insert(addr);
        }
    }
    let mut weights: BTreeMap<&str, u32> = per_node
        .into_iter()
        .map(|(n, eps)| {
            let w = u32::try_from(eps.len()).unwrap_or(MAX_WEIGHT);
            (n, w.min(MAX_WEIGHT))
        })
        .collect();
    for (node, _) in endpoints(slices, draining) {
        if let Some(node) = node {
            weights.entry(node).or_insert(0);
        }
    }
    weights
}

/// The weight of a node for `Cluster` Services: 1, or 0 (draining) while it is not Ready or
/// carries [`EXCLUDE_LABEL`] (often set before maintenance), so that the connections it
/// carries go on and new ones go elsewhere. It leaves once its probe of kube-proxy fails,
/// or once it is deleted.
fn cluster_weight(node: &Node) -> u32 {
    u32::from(node_ready(node) && !excluded(node))
}

/// Whether `ip` is in the address pool.
fn in_pool(cfg: &Kubernetes, ip: IpAddr) -> bool {
    cfg.address_pool.iter().any(|r| r.contains(ip))
}

/// The Service's [`SHARING_KEY_ANNOTATION`], unless it is empty.
fn sharing_key(svc: &Service) -> Option<&str> {
    let key = svc
        .metadata
        .annotations
        .as_ref()?
        .get(SHARING_KEY_ANNOTATION)?;
    (!key.trim().is_empty()).then_some(key.as_str())
}

/// A protocol of the API (unset: TCP, its default), if dsrgate serves it.
fn protocol(raw: Option<&str>) -> Option<Protocol> {
    match raw.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

/// A Service port dsrgate serves, with the name (empty when unnamed) and protocol that
/// EndpointSlices list it by.
struct ServedPort<'a> {
    name: &'a str,
    proto: Protocol,
    port: u16,
}

/// The Service's ports, each one dsrgate serves or why it does not.
fn service_ports(svc: &Service) -> impl Iterator<Item = Result<ServedPort<'_>, String>> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    ports.into_iter().flatten().map(|p| {
        let Some(proto) = protocol(p.protocol.as_deref()) else {
            let raw = p.protocol.as_deref().unwrap_or_default();
            return Err(format!("port {}: protocol {raw} is not served", p.port));
        };
        match u16::try_from(p.port) {
            Ok(port) if port != 0 => Ok(ServedPort {
                name: p.name.as_deref().unwrap_or_default(),
                proto,
                port,
            }),
            _ => Err(format!("ignoring out-of-range port {}", p.port)),
        }
    })
}

/// The Service's ports that dsrgate serves, per protocol.
fn served_ports(svc: &Service, key: &str, problems: &mut Problems) -> BTreeMap<Protocol, Vec<u16>> {
    let mut by_proto: BTreeMap<Protocol, Vec<u16>> = BTreeMap::new();
    for p in service_ports(svc) {
        match p {
            Ok(p) => by_proto.entry(p.proto).or_default().push(p.port),
            Err(what) => note(problems, key, what),
        }
    }
    by_proto
}

/// One family of a selected Service as address allocation sees it: each address of a
/// dual-stack Service is claimed (shared, refused, taken from the pool) on its own.
struct Claimant<'a> {
    /// `namespace/name`.
    key: &'a str,
    svc: &'a Service,
    /// Its family: true for IPv6.
    v6: bool,
    /// Whether its Service is served only with an address of each of its families
    /// (`RequireDualStack`).
    all_or_none: bool,
    share: Option<&'a str>,
    /// Its usable `status.loadBalancer.ingress` addresses of its family.
    status: BTreeSet<IpAddr>,
    /// The Service's `spec.loadBalancerIP` if it is this family's to grant or refuse: the
    /// request's own family, or every family if it has none of them (unparseable, or of a
    /// family the Service does not have), so that such a request is refused (no pool
    /// address in place of it).
    request: Option<&'a str>,
    ports: BTreeMap<Protocol, Vec<u16>>,
}

/// The claimants of one selected Service, one per family in [`families`] order. Its status
/// addresses of a family it does not have are left out (noted): kube-proxy drops their
/// traffic.
fn claimants<'a>(key: &'a str, svc: &'a Service, problems: &mut Problems) -> Vec<Claimant<'a>> {
    note_refused_ingress(svc, key, problems);
    let (fams, all_or_none) = families(svc, key, problems);
    let status = ingress_ips(svc);
    for ip in status.iter().filter(|ip| !fams.contains(&ip.is_ipv6())) {
        let what = format!(
            "ignoring status.loadBalancer.ingress ip {ip}: the Service has no {} family \
             (spec.ipFamilies)",
            family_name(ip.is_ipv6())
        );
        note(problems, key, what);
    }
    let request = requested(svc);
    let request_family = request
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(|ip| ip.is_ipv6())
        .filter(|v6| fams.contains(v6));
    let ports = served_ports(svc, key, problems);
    // Past what one gateway steers it could never be served (`ServiceSet::merge` leaves it
    // out whole), and its backends, per port, would be computed on every watch event.
    let count: usize = ports.values().map(Vec::len).sum();
    if count > MAX_VIPS {
        let what =
            format!("{count} service ports, more than one gateway steers ({MAX_VIPS}): not served");
        note(problems, key, what);
        return Vec::new();
    }
    fams.iter()
        .map(|&v6| Claimant {
            key,
            svc,
            v6,
            all_or_none,
            share: sharing_key(svc),
            status: status
                .iter()
                .copied()
                .filter(|ip| ip.is_ipv6() == v6)
                .collect(),
            request: request.filter(|_| request_family.is_none_or(|f| f == v6)),
            ports: ports.clone(),
        })
        .collect()
}

/// Why a Service may not be on one address with another.
enum Conflict {
    Unshared,
    Namespace,
    Port(Protocol, u16),
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::Unshared => write!(f, "they do not share one {SHARING_KEY_ANNOTATION} key"),
            Conflict::Namespace => write!(f, "they are in different namespaces"),
            Conflict::Port(proto, port) => write!(f, "both use {proto} port {port}"),
        }
    }
}

/// Why `c` may not be on one address with `holder`, if it may not.
///
/// Services in different namespaces never share, whatever their keys: a key is a string
/// anyone can copy, and a key that spanned namespaces would let any team join another's
/// address, where the pool would even place it unasked. (Cilium LB-IPAM also requires one
/// namespace unless both Services opt in with `lbipam.cilium.io/sharing-cross-namespace`.)
///
/// Traffic policies and selectors need not match. MetalLB requires `Local` Services on one
/// address to select the same pods because it announces the address from the nodes with
/// endpoints; dsrgate announces it from the gateways, and each (address, protocol, port)
/// has its own backends and probes, so a `Local` Service's ports still reach only the nodes
/// with its own endpoints. What the Services share is the route, announced while any of them
/// is healthy: traffic for one without a healthy node then reaches the gateway and is
/// dropped as "no backend", as for an unhealthy port of a single Service.
fn conflict(c: &Claimant, holder: &Claimant) -> Option<Conflict> {
    if c.share.is_none() || c.share != holder.share {
        return Some(Conflict::Unshared);
    }
    if c.svc.metadata.namespace != holder.svc.metadata.namespace {
        return Some(Conflict::Namespace);
    }
    c.ports.iter().find_map(|(proto, ports)| {
        let theirs = holder.ports.get(proto)?;
        let port = ports.iter().find(|p| theirs.contains(p))?;
        Some(Conflict::Port(*proto, *port))
    })
}

/// The Services given each address so far.
type Holders<'c, 'a> = BTreeMap<IpAddr, Vec<&'c Claimant<'a>>>;

/// The first Service at `ip` that `c` may not join, and why.
fn blocker<'c, 'a>(
    holders: &Holders<'c, 'a>,
    c: &Claimant,
    ip: IpAddr,
) -> Option<(&'c Claimant<'a>, Conflict)> {
    holders
        .get(&ip)?
        .iter()
        .find_map(|h| Some((*h, conflict(c, h)?)))
}

/// Gives `ip` to `c` unless a Service already there may not share it with `c`; then `c`
/// gets no VIP at `ip` (a problem that names both).
fn claim<'c, 'a>(
    holders: &mut Holders<'c, 'a>,
    c: &'c Claimant<'a>,
    ip: IpAddr,
    problems: &mut Problems,
) -> bool {
    if let Some((kept, why)) = blocker(holders, c, ip) {
        let what = format!(
            "address {ip} is taken by {} ({why}); not served there",
            kept.key
        );
        note(problems, c.key, what);
        return false;
    }
    holders.entry(ip).or_default().push(c);
    true
}

/// A pool address of `c`'s family: the lowest one held by Services that `c` may join,
/// else the lowest not in `used`.
fn pick_from_pool(
    cfg: &Kubernetes,
    used: &BTreeSet<IpAddr>,
    holders: &Holders,
    c: &Claimant,
) -> Option<IpAddr> {
    let v6 = c.v6;
    let shared = holders
        .keys()
        .copied()
        .find(|ip| ip.is_ipv6() == v6 && in_pool(cfg, *ip) && blocker(holders, c, *ip).is_none());
    shared.or_else(|| {
        cfg.address_pool
            .iter()
            .filter(|r| r.first.is_ipv6() == v6)
            .flat_map(|r| r.addresses())
            .find(|ip| !used.contains(ip))
    })
}

/// Whether status address `ip` is dsrgate's to replace: a pool address, or one the pool
/// [`lost`].
fn ours(cfg: &Kubernetes, ip: IpAddr) -> bool {
    in_pool(cfg, ip) || lost_from_pool(cfg, ip)
}

/// Whether a status address `ip` of a selected Service is one the pool lost: outside it,
/// while there is a pool and a `load_balancer_class`. No other controller serves that
/// class, so such an address is one the pool lost (shrunk on reload), as MetalLB
/// reallocates a Service whose address left every pool. Without a class a Service may show
/// another controller's address (one written by MetalLB before a migration, say), which
/// cannot be told from one the pool lost.
fn lost_from_pool(cfg: &Kubernetes, ip: IpAddr) -> bool {
    !in_pool(cfg, ip) && cfg.load_balancer_class.is_some() && !cfg.address_pool.is_empty()
}

/// How long a status address the pool lost is still served before its Service is moved:
/// long enough for a config change to reach every gateway (see [`compute_waiting`]).
pub const RECLAIM_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// The status addresses the pool lost ([`lost_from_pool`]), by Service (`namespace/name`).
/// The caller moves them only once each has been lost for [`RECLAIM_AFTER`]
/// ([`compute_waiting`]).
pub fn lost(cfg: &Kubernetes, objs: &Objects) -> BTreeSet<(String, IpAddr)> {
    let selected = objs.services.iter().filter(|(_, s)| selected(cfg, s));
    selected
        .flat_map(|(k, s)| ingress_ips(s).into_iter().map(move |ip| (k.clone(), ip)))
        .filter(|(_, ip)| lost_from_pool(cfg, *ip))
        .collect()
}

/// Whether `c`'s status address `ip` is one the pool lost and no longer `waiting`.
fn reclaimed(
    cfg: &Kubernetes,
    waiting: &BTreeSet<(String, IpAddr)>,
    c: &Claimant,
    ip: IpAddr,
) -> bool {
    lost_from_pool(cfg, ip) && !waiting.contains(&(c.key.to_owned(), ip))
}

/// Whether `c`, which kept none of its status addresses, gets an address as a new Service
/// does (a pool address or its request, written over its status): it shows none, or only
/// pool addresses and [`reclaimed`] ones, which are dsrgate's to replace. Left as it is, a
/// refused pool address would stay in its status for good, a dead address for external-dns
/// and clients. A refused address outside the pool is another controller's, and left to it.
fn reassignable(cfg: &Kubernetes, waiting: &BTreeSet<(String, IpAddr)>, c: &Claimant) -> bool {
    c.status
        .iter()
        .all(|ip| in_pool(cfg, *ip) || reclaimed(cfg, waiting, c, *ip))
}

/// Claims `c`'s status addresses, but not those [`reclaimed`], which are no longer
/// announced. Returns whether `c` kept none and goes on as a Service without an address
/// ([`reassignable`]).
fn keep_status<'c, 'a>(
    cfg: &Kubernetes,
    waiting: &BTreeSet<(String, IpAddr)>,
    holders: &mut Holders<'c, 'a>,
    c: &'c Claimant<'a>,
    problems: &mut Problems,
) -> bool {
    let (mut kept, mut refused) = (false, false);
    for ip in &c.status {
        if reclaimed(cfg, waiting, c, *ip) {
            let what = format!(
                "status address {ip} is outside kubernetes.address_pool: not served, \
                 assigning one anew"
            );
            note(problems, c.key, what);
            continue;
        }
        if lost_from_pool(cfg, *ip) {
            let what = format!(
                "status address {ip} is outside kubernetes.address_pool: still served, and \
                 moved once it has been outside for {}s (so every gateway has the new pool)",
                RECLAIM_AFTER.as_secs()
            );
            note(problems, c.key, what);
        }
        if claim(holders, c, *ip, problems) {
            kept = true;
        } else {
            refused = true;
        }
    }
    if kept || !reassignable(cfg, waiting, c) {
        return false;
    }
    if refused {
        let what = format!(
            "refused on every address in its status ({:?}), all from the pool: \
             assigning one anew",
            c.status
        );
        note(problems, c.key, what);
    }
    true
}

/// The address `c` asks for in `spec.loadBalancerIP` when its status shows others, all
/// from the pool: the request was changed after the pool address was written (as MetalLB
/// does, the Service moves, and its status is rewritten). A status address from outside
/// the pool may be another controller's, and stays (logged): without a pool that is every
/// status address, the ones dsrgate wrote for an earlier request too.
fn moving_to(
    cfg: &Kubernetes,
    waiting: &BTreeSet<(String, IpAddr)>,
    c: &Claimant,
    problems: &mut Problems,
) -> Option<IpAddr> {
    if c.status.is_empty() || c.request.is_none() {
        return None;
    }
    let ip = spec_ip(cfg, c, problems)?;
    if c.status.contains(&ip) {
        return None;
    }
    if !reassignable(cfg, waiting, c) {
        let what = format!(
            "spec.loadBalancerIP {ip} is not in its status ({:?}), which holds addresses \
             from outside kubernetes.address_pool: not moving",
            c.status
        );
        note(problems, c.key, what);
        return None;
    }
    Some(ip)
}

/// Takes `c` off `ip`.
fn release(holders: &mut Holders, c: &Claimant, ip: IpAddr) {
    if let Some(hs) = holders.get_mut(&ip) {
        hs.retain(|h| !std::ptr::eq(*h, c));
        if hs.is_empty() {
            holders.remove(&ip);
        }
    }
}

/// Whether `c` holds `ip`.
fn holds(holders: &Holders, c: &Claimant, ip: IpAddr) -> bool {
    holders
        .get(&ip)
        .is_some_and(|hs| hs.iter().any(|h| std::ptr::eq(*h, c)))
}

/// Moves `c` to `ip` off its status addresses, unless a Service that may not share it holds
/// it, or a pool choice for another Service is on its way to that Service's status.
fn move_to<'c, 'a>(
    holders: &mut Holders<'c, 'a>,
    assigned: &Assigned,
    c: &'c Claimant<'a>,
    ip: IpAddr,
    problems: &mut Problems,
) -> bool {
    // The first such Service by name, so the message is the same on every gateway and run.
    let given = assigned
        .iter()
        .filter(|((k, _), a)| **a == ip && k != c.key);
    if let Some(((other, _), _)) = given.min_by(|(a, _), (b, _)| a.cmp(b)) {
        let what = format!("address {ip} is being given to {other}; staying where it is");
        note(problems, c.key, what);
        return false;
    }
    if !claim(holders, c, ip, problems) {
        return false;
    }
    for was in &c.status {
        release(holders, c, *was);
    }
    true
}

/// Gives `c`, which has no address, its request, else a pool address: the pending choice
/// (unless a Service it may not join took that address since), else a new one, added to
/// `fresh` if no Service had it. The address, if `c` got one.
fn grant<'c, 'a>(
    cfg: &Kubernetes,
    holders: &mut Holders<'c, 'a>,
    used: &mut BTreeSet<IpAddr>,
    assigned: &mut Assigned,
    fresh: &mut Vec<IpAddr>,
    c: &'c Claimant<'a>,
    problems: &mut Problems,
) -> Option<IpAddr> {
    let ip = if c.request.is_some() {
        spec_ip(cfg, c, problems)
    } else {
        let id = (c.key.to_owned(), c.v6);
        let ip = assigned
            .get(&id)
            .copied()
            .filter(|ip| blocker(holders, c, *ip).is_none())
            .or_else(|| pick_from_pool(cfg, used, holders, c));
        match ip {
            Some(ip) => {
                if used.insert(ip) {
                    fresh.push(ip);
                }
                assigned.insert(id, ip);
            }
            None if !cfg.address_pool.is_empty() => {
                note(problems, c.key, no_pool_address(cfg, c.v6))
            }
            None => {}
        }
        ip
    };
    ip.filter(|ip| claim(holders, c, *ip, problems))
}

/// Why a Service of family `v6` got no pool address: an IPv6 Service with only IPv4 ranges
/// is a configuration gap, not a full pool.
fn no_pool_address(cfg: &Kubernetes, v6: bool) -> String {
    if cfg.address_pool.iter().any(|r| r.first.is_ipv6() == v6) {
        "address pool exhausted".into()
    } else {
        format!("kubernetes.address_pool has no {} range", family_name(v6))
    }
}

/// What a claimant does once the status addresses are claimed.
#[derive(Clone, Copy)]
enum Turn {
    /// Keeps what it holds (perhaps nothing: refused on another controller's address).
    Stay,
    /// Holds nothing, and gets an address as a new Service does ([`grant`]).
    Homeless,
    /// Moves to its changed request, holding its status address until then.
    Move(IpAddr),
}

/// Computes the VIPs of the selected Services.
///
/// Addresses: `status.loadBalancer.ingress[].ip`, else `spec.loadBalancerIP`, else a pool
/// address, one of each family the Service has ([`families`]), each claimed on its own.
/// A Service gets an address only if every Service already given it may share it
/// ([`SHARING_KEY_ANNOTATION`]); otherwise it gets no VIP there (a [`Problem`]), and that address
/// is never written to its status. Services are taken in creation order (then name), which
/// gateways with one view agree on, and the addresses in their status before any request or
/// pool choice: an address a Service was given stays its own, so an older Service cannot
/// take a newer one's by naming it in `spec.loadBalancerIP`. A Service refused on every
/// status address of a family, all of them pool addresses (its sharer dropped the key or
/// took its port, or two gateways wrote one address to two Services), then goes on as one
/// without an address of that family; a refused address outside the pool is left as it
/// is, unless the Service is of the configured class ([`ours`]). Pool addresses go to
/// Services in that order, the lowest free first (or the lowest they may share). `assigned`
/// remembers pool choices until the Service's status shows them, so a Service keeps one
/// address while its status write is in flight, even while its status still shows the
/// refused one.
/// A Service whose `spec.loadBalancerIP` names another address than its status, which
/// shows only pool addresses, moves there in its turn among the Services without an
/// address, keeping its status address until then ([`moving_to`], [`move_to`]).
///
/// A dual-stack Service that can have an address of only one family (no range of the other,
/// the pool exhausted, the address refused) is served on that one if it prefers dual-stack,
/// and if it requires it, gets no new address (so that dsrgate never writes one family of
/// a Service that must have both) but keeps those its status shows (so that one served
/// before stays so): either is a problem naming the missing family. A Service given
/// any new address has all it holds written to its status at once, in family order, as has
/// one whose status shows an address of a family it no longer has that is dsrgate's.
pub fn compute(cfg: &Kubernetes, objs: &Objects, assigned: &mut Assigned) -> Computed {
    compute_waiting(cfg, objs, assigned, &BTreeSet::new())
}

/// [`compute`], keeping the [`lost`] status addresses in `waiting` as the Services' own
/// (served, not moved): a gateway that moved a Service as soon as its address left the
/// pool would, while another gateway still has the old pool, rewrite its status back and
/// forth with that one as fast as the API server answers, each moving it out of the
/// other's pool.
pub fn compute_waiting(
    cfg: &Kubernetes,
    objs: &Objects,
    assigned: &mut Assigned,
    waiting: &BTreeSet<(String, IpAddr)>,
) -> Computed {
    let mut problems = Problems::new();
    let mut claimants: Vec<Claimant> = objs
        .services
        .iter()
        .filter(|(_, s)| selected(cfg, s))
        .flat_map(|(k, s)| claimants(k, s, &mut problems))
        .collect();
    // Stable: a Service's families keep their order, next to each other.
    claimants.sort_by(|a, b| {
        (
            a.svc.metadata.creation_timestamp.as_ref().map(|t| &t.0),
            a.key,
        )
            .cmp(&(
                b.svc.metadata.creation_timestamp.as_ref().map(|t| &t.0),
                b.key,
            ))
    });

    let mut holders = Holders::new();
    let mut turns = Vec::with_capacity(claimants.len());
    for c in &claimants {
        let target = moving_to(cfg, waiting, c, &mut problems);
        let turn = if keep_status(cfg, waiting, &mut holders, c, &mut problems) {
            Turn::Homeless
        } else {
            target.map_or(Turn::Stay, Turn::Move)
        };
        turns.push((c, turn));
    }
    assigned.retain(|(k, v6), _| {
        turns.iter().any(|(c, t)| {
            c.key == k && c.v6 == *v6 && matches!(t, Turn::Homeless) && c.request.is_none()
        })
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

    let mut to_write = Vec::new();
    for service in turns.chunk_by(|a, b| a.0.key == b.0.key) {
        let mut fresh = Vec::new();
        let mut granted = false;
        // What each family holds now.
        let mut held: Vec<Vec<IpAddr>> = Vec::with_capacity(service.len());
        for &(c, turn) in service {
            let new = match turn {
                Turn::Stay => None,
                Turn::Move(ip) => {
                    move_to(&mut holders, assigned, c, ip, &mut problems).then_some(ip)
                }
                Turn::Homeless => grant(
                    cfg,
                    &mut holders,
                    &mut used,
                    assigned,
                    &mut fresh,
                    c,
                    &mut problems,
                ),
            };
            granted |= new.is_some();
            let mut ips: Vec<IpAddr> = c
                .status
                .iter()
                .copied()
                .filter(|ip| holds(&holders, c, *ip))
                .collect();
            ips.extend(new);
            held.push(ips);
        }
        let (first, _) = service[0];
        let names = |with: bool| -> Vec<&str> {
            let fams = service
                .iter()
                .zip(&held)
                .filter(|(_, ips)| ips.is_empty() != with);
            fams.map(|((c, _), _)| family_name(c.v6)).collect()
        };
        let (have, missing) = (names(true), names(false));
        if !have.is_empty() && !missing.is_empty() {
            let (have, missing) = (have.join(", "), missing.join(", "));
            if first.all_or_none {
                // No new address then, but what its status shows stays (a Service served on
                // one family before dual-stack was asked for, or before this rule): taken
                // away, it would go dark while its status still showed the address.
                granted = false;
                for (&(c, turn), ips) in service.iter().zip(held.iter_mut()) {
                    for ip in ips.iter().filter(|ip| !c.status.contains(ip)) {
                        release(&mut holders, c, *ip);
                    }
                    if let Turn::Move(_) = turn {
                        for ip in &c.status {
                            claim(&mut holders, c, *ip, &mut problems);
                        }
                    }
                    ips.clear();
                    ips.extend(c.status.iter().filter(|ip| holds(&holders, c, **ip)));
                    assigned.remove(&(c.key.to_owned(), c.v6));
                }
                for ip in fresh.drain(..) {
                    used.remove(&ip);
                }
                let kept: Vec<String> = held.concat().iter().map(IpAddr::to_string).collect();
                let what = if kept.is_empty() {
                    format!(
                        "no {missing} address, and spec.ipFamilyPolicy is RequireDualStack: \
                         not served on {have} either"
                    )
                } else {
                    format!(
                        "no {missing} address, and spec.ipFamilyPolicy is RequireDualStack: \
                         no new address, served only on {} from its status",
                        kept.join(", ")
                    )
                };
                note(&mut problems, first.key, what);
            } else {
                let what = format!(
                    "no {missing} address: served on {have} only (spec.ipFamilyPolicy \
                     PreferDualStack)"
                );
                note(&mut problems, first.key, what);
            }
        }
        // A status address of a family the Service no longer has (dual-stack turned single),
        // if it is dsrgate's, is taken out of the status.
        let dropped = ingress_ips(first.svc)
            .into_iter()
            .any(|ip| ours(cfg, ip) && !service.iter().any(|(c, _)| c.v6 == ip.is_ipv6()));
        let ips = held.concat();
        if (granted || dropped) && !ips.is_empty() {
            let meta = &first.svc.metadata;
            to_write.push(Assignment {
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                ips,
            });
        }
    }

    note_addressless_nodes(cfg, objs, &mut problems);
    let slices = Slices::new(objs);
    let vips = holders
        .iter()
        .flat_map(|(ip, cs)| {
            cs.iter()
                .flat_map(|c| service_vips(cfg, objs, &slices, c, *ip))
        })
        .collect();
    let mut set = ServiceSet { vips };
    set.normalize();
    Computed {
        set,
        to_write,
        problems,
    }
}

/// The VIPs of one Service at one address: one per protocol and set of backends, since each
/// port has the backends of the EndpointSlices that carry it.
fn service_vips(
    cfg: &Kubernetes,
    objs: &Objects,
    slices: &Slices,
    c: &Claimant,
    addr: IpAddr,
) -> Vec<VipSpec> {
    let Some(spec) = &c.svc.spec else {
        return Vec::new();
    };
    let ns = c.svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = c.svc.metadata.name.as_deref().unwrap_or_default();
    let created = c.svc.metadata.creation_timestamp.as_ref();
    let policy = match spec.external_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let hcnp = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    let v6 = addr.is_ipv6();

    let of_family = slices.of(ns, name, v6);
    let carrying = carrying(&of_family);
    // The Cluster backends: every node with an address of the family.
    let nodes = || -> Vec<BackendSpec> {
        let nodes = objs.nodes.values();
        let with_addr = nodes.filter_map(|n| Some((n, node_addr(cfg, n, v6)?)));
        with_addr
            .map(|(n, addr)| BackendSpec {
                addr,
                weight: cluster_weight(n),
            })
            .collect()
    };
    // The backends of a port carried by the slices `idx` (indexes into `of_family`).
    let backends_of = |idx: &[usize]| -> Vec<BackendSpec> {
        let carried: Vec<&EndpointSlice> = idx.iter().map(|&i| of_family[i]).collect();
        let mut backends: Vec<BackendSpec> = match policy {
            // An excluded node drains as a `Cluster` one does, kept while it has endpoints.
            TrafficPolicy::Local => local_weights(&carried)
                .into_iter()
                .filter_map(|(node, weight)| {
                    let node = objs.nodes.get(node)?;
                    let addr = node_addr(cfg, node, v6)?;
                    let weight = if excluded(node) { 0 } else { weight };
                    Some(BackendSpec { addr, weight })
                })
                .collect(),
            // Any node forwards, but only to the port's endpoints: with none serving (scaled
            // to zero, every pod failing, a selector typo, pods without the port) every node
            // would refuse the traffic while kube-proxy's own health still passes, so there
            // is no backend, and with no other port served the address is withdrawn, where
            // another site announcing it can take over.
            TrafficPolicy::Cluster if endpoints(&carried, serving).next().is_none() => Vec::new(),
            TrafficPolicy::Cluster => nodes(),
        };
        backends.sort_unstable();
        backends
    };
    // Ports carried by the same slices have the same backends: grouped by those first, so
    // each set of slices is counted once, however many ports it carries. Then the ports of
    // each protocol with the same backends share a VIP, whatever the order of the slices
    // or of the Service's ports. A port number listed twice for one protocol (which the
    // API refuses) is served once, as the first lists it.
    let mut by_slices: BTreeMap<(Protocol, &[usize]), Vec<u16>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for port in service_ports(c.svc).filter_map(Result::ok) {
        if seen.insert((port.proto, port.port)) {
            let idx = carrying.get(&(port.name, port.proto));
            let idx = idx.map_or(&[][..], Vec::as_slice);
            by_slices
                .entry((port.proto, idx))
                .or_default()
                .push(port.port);
        }
    }
    let mut backends: HashMap<&[usize], Vec<BackendSpec>> = HashMap::new();
    let mut groups: BTreeMap<(Protocol, Vec<BackendSpec>), Vec<u16>> = BTreeMap::new();
    for ((proto, idx), ports) in by_slices {
        let b = backends.entry(idx).or_insert_with(|| backends_of(idx));
        groups.entry((proto, b.clone())).or_default().extend(ports);
    }
    // Local: kube-proxy's per-Service answer on healthCheckNodePort (200 only while the
    // node has ready local endpoints). Its endpoint-count header only has to be readable:
    // the weight is the slices' (see `local_weights`), which every gateway has within
    // moments, where each one's probe would see a new count up to an interval later.
    // Cluster: kube-proxy's own health, since any node forwards.
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
    // ClientIP affinity: every gateway sends one client to one node (the 3-tuple ignores
    // its ports), where kube-proxy's own affinity keeps it on one pod.
    let hash = match spec.session_affinity.as_deref() {
        Some("ClientIP") => HashMode::ThreeTuple,
        _ => cfg.hash,
    };

    groups
        .into_iter()
        .map(|((proto, backends), ports)| VipSpec {
            name: format!("{ns}/{name}"),
            origin: Origin::Kubernetes {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                traffic_policy: policy,
                health_check_node_port: hcnp,
                created: created.map(|t| t.0.as_second()),
            },
            addr,
            proto,
            ports,
            hash,
            encap: encap(cfg.encap, cfg.gue_port),
            min_healthy: cfg.min_healthy_backends,
            bgp: cfg.bgp.clone(),
            backends,
            health: Some(health.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServicePort;
    use k8s_openapi::api::discovery::v1::EndpointPort;
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

    /// Addresses as the tests compare them: separated by spaces.
    fn ips(ips: &[IpAddr]) -> String {
        let ips: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        ips.join(" ")
    }

    fn svc_key(svc: &Service) -> String {
        let m = &svc.metadata;
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or(""),
            m.name.as_deref().unwrap_or("")
        )
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
            .map(|a| (a.name.clone(), ips(&a.ips)))
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
            .map(|a| (a.name.clone(), ips(&a.ips)))
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

    /// `s` with `spec.ipFamilyPolicy` `policy` and `spec.ipFamilies` `fams`, as the API server
    /// returns a dual-stack Service.
    fn stack(mut s: Service, policy: &str, fams: &[&str]) -> Service {
        let spec = s.spec.as_mut().unwrap();
        spec.ip_family_policy = Some(policy.to_owned());
        spec.ip_families = Some(fams.iter().map(|f| (*f).to_owned()).collect());
        s
    }

    /// `s` with `ips` in `status.loadBalancer.ingress`.
    fn showing(mut s: Service, ips: &[&str]) -> Service {
        let ingress = ips.iter().map(|ip| json!({"ip": ip, "ipMode": "VIP"}));
        s.status = svc(json!({"metadata": {}, "status": {"loadBalancer": {
            "ingress": ingress.collect::<Vec<_>>()}}}))
        .unwrap()
        .status;
        s
    }

    /// A dual-stack Service got an address of its first family only, so it was unreachable
    /// over the other. It gets one of each family in `spec.ipFamilies` (in that order in
    /// its status, written in one go), each served with the nodes' addresses of that family,
    /// kept while the write is in flight, and nothing is written once the status shows
    /// them. A SingleStack Service still gets one.
    #[test]
    fn a_dual_stack_service_gets_an_address_of_each_family() {
        let node = |name: &str, v4: &str, v6: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": v4},
                        {"type": "InternalIP", "address": v6}],
                    "conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap()
        };
        let mut objs = objects([
            stack(
                lb("v4first", 1, &[("TCP", 80)], None, None, None),
                "PreferDualStack",
                &["IPv4", "IPv6"],
            ),
            stack(
                lb("v6first", 2, &[("TCP", 80)], None, None, None),
                "RequireDualStack",
                &["IPv6", "IPv4"],
            ),
            lb("single", 3, &[("TCP", 80)], None, None, None),
        ]);
        objs.nodes
            .insert("a".into(), node("a", "10.1.0.1", "fd00::1"));
        for name in ["v4first", "v6first", "single"] {
            let eps = json!([endpoint("10.244.1.1", "a", true, true, false)]);
            add_slice(&mut objs, slice(name, "IPv4", eps));
            let eps = json!([endpoint("fd00:244::1", "a", true, true, false)]);
            add_slice(&mut objs, slice(name, "IPv6", eps));
        }
        let mut assigned = HashMap::new();
        let c = compute(&cfg(), &objs, &mut assigned);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let backends: Vec<(String, String)> = c
            .set
            .vips
            .iter()
            .map(|v| {
                (
                    v.addr.to_string(),
                    ips(&v.backends.iter().map(|b| b.addr).collect::<Vec<_>>()),
                )
            })
            .collect();
        let (vips, written) = render(c);
        assert_eq!(
            written,
            [
                "v4first 198.51.100.0 2001:db8::",
                "v6first 2001:db8::1 198.51.100.1",
                "single 198.51.100.2"
            ]
        );
        assert_eq!(
            vips["ns/v4first"],
            ["198.51.100.0 tcp [80]", "2001:db8:: tcp [80]"]
        );
        assert_eq!(
            vips["ns/v6first"],
            ["198.51.100.1 tcp [80]", "2001:db8::1 tcp [80]"]
        );
        assert_eq!(vips["ns/single"], ["198.51.100.2 tcp [80]"]);
        // Each VIP's backends are the nodes' addresses of its family.
        for (vip, nodes) in &backends {
            let v6 = vip.contains(':');
            assert_eq!(nodes, if v6 { "fd00::1" } else { "10.1.0.1" }, "{vip}");
        }
        // While the writes are in flight, an older Service appears (one day, first by
        // name): the choices stay.
        objs.services.insert(
            "ns/early".into(),
            stack(
                lb("early", 1, &[("TCP", 80)], None, None, None),
                "PreferDualStack",
                &["IPv4", "IPv6"],
            ),
        );
        let (_, again) = render(compute(&cfg(), &objs, &mut assigned));
        assert_eq!(
            again,
            [
                "early 198.51.100.3 2001:db8::2",
                "v4first 198.51.100.0 2001:db8::",
                "v6first 2001:db8::1 198.51.100.1",
                "single 198.51.100.2"
            ]
        );
        // The statuses show them: the same VIPs, nothing left to write.
        objs.services.remove("ns/early");
        for (key, status) in [
            ("ns/v4first", &["198.51.100.0", "2001:db8::"][..]),
            ("ns/v6first", &["2001:db8::1", "198.51.100.1"]),
            ("ns/single", &["198.51.100.2"]),
        ] {
            let s = objs.services[key].clone();
            objs.services.insert(key.into(), showing(s, status));
        }
        let (done, written) = render(compute(&cfg(), &objs, &mut assigned));
        assert_eq!(done, vips);
        assert!(written.is_empty(), "{written:?}");
        assert!(assigned.is_empty(), "{assigned:?}");
    }

    /// A dual-stack Service that can have one family only (here: no IPv6 range): if it
    /// prefers dual-stack it is served on the other, and says which family is missing; if it
    /// requires it, it gets neither (nothing served, nothing written), and the address it
    /// would have had goes to the next Service.
    #[test]
    fn a_dual_stack_service_missing_a_family_is_served_on_the_other_unless_required() {
        let mut v4_only = cfg();
        v4_only.address_pool.retain(|r| r.first.is_ipv4());
        let with = |policy: &str| {
            let objs = objects([
                stack(
                    lb("dual", 1, &[("TCP", 80)], None, None, None),
                    policy,
                    &["IPv4", "IPv6"],
                ),
                lb("next", 2, &[("TCP", 80)], None, None, None),
            ]);
            let c = compute(&v4_only, &objs, &mut HashMap::new());
            let problems: Vec<String> = c
                .problems
                .iter()
                .map(|p| format!("{} {}", p.service, p.what))
                .collect();
            let (vips, written) = render(c);
            (vips, written, problems)
        };
        let (vips, written, problems) = with("PreferDualStack");
        assert_eq!(vips["ns/dual"], ["198.51.100.0 tcp [80]"]);
        assert_eq!(written, ["dual 198.51.100.0", "next 198.51.100.1"]);
        assert_eq!(
            problems,
            [
                "ns/dual kubernetes.address_pool has no IPv6 range",
                "ns/dual no IPv6 address: served on IPv4 only (spec.ipFamilyPolicy \
                 PreferDualStack)"
            ]
        );
        let (vips, written, problems) = with("RequireDualStack");
        assert!(!vips.contains_key("ns/dual"), "{vips:?}");
        assert_eq!(written, ["next 198.51.100.0"]);
        assert_eq!(
            problems,
            [
                "ns/dual kubernetes.address_pool has no IPv6 range",
                "ns/dual no IPv6 address, and spec.ipFamilyPolicy is RequireDualStack: not \
                 served on IPv4 either"
            ]
        );
        // One served on IPv4 before (before dual-stack was asked for, or an older dsrgate)
        // keeps that address: it used to go dark, its status still showing the address.
        let objs = objects([stack(
            lb("dual", 1, &[("TCP", 80)], None, None, Some("198.51.100.1")),
            "RequireDualStack",
            &["IPv4", "IPv6"],
        )]);
        let c = compute(&v4_only, &objs, &mut HashMap::new());
        let problems: Vec<String> = c.problems.iter().map(|p| p.what.clone()).collect();
        assert_eq!(
            problems,
            [
                "kubernetes.address_pool has no IPv6 range",
                "no IPv6 address, and spec.ipFamilyPolicy is RequireDualStack: no new \
                 address, served only on 198.51.100.1 from its status"
            ]
        );
        let (vips, written) = render(c);
        assert_eq!(vips["ns/dual"], ["198.51.100.1 tcp [80]"]);
        assert!(written.is_empty(), "{written:?}");
        // The IPv6 address taken by another Service: no new address either; the status's
        // IPv4 address stays.
        let mut holder = lb("holder", 1, &[("TCP", 80)], None, None, Some("2001:db8::3"));
        holder.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
        let objs = objects([
            holder,
            stack(
                lb(
                    "dual",
                    2,
                    &[("TCP", 80)],
                    None,
                    Some("2001:db8::3"),
                    Some("198.51.100.2"),
                ),
                "RequireDualStack",
                &["IPv4", "IPv6"],
            ),
        ]);
        let (vips, written) = served(&objs);
        assert_eq!(vips.keys().collect::<Vec<_>>(), ["ns/dual", "ns/holder"]);
        assert_eq!(vips["ns/dual"], ["198.51.100.2 tcp [80]"]);
        assert!(written.is_empty(), "{written:?}");
    }

    /// `spec.loadBalancerIP` names one address: it is that family's, and a dual-stack
    /// Service's other family comes from the pool. A request of a family the Service does
    /// not have (kube-proxy would drop its traffic) is refused.
    #[test]
    fn a_request_grants_its_family_and_the_pool_the_other() {
        let prefer = |request| {
            stack(
                lb("web", 1, &[("TCP", 80)], None, Some(request), None),
                "PreferDualStack",
                &["IPv4", "IPv6"],
            )
        };
        let (vips, written) = served(&objects([prefer("198.51.100.2")]));
        assert_eq!(
            vips["ns/web"],
            ["198.51.100.2 tcp [80]", "2001:db8:: tcp [80]"]
        );
        assert_eq!(written, ["web 198.51.100.2 2001:db8::"]);
        let (vips, written) = served(&objects([prefer("2001:db8::2")]));
        assert_eq!(
            vips["ns/web"],
            ["198.51.100.0 tcp [80]", "2001:db8::2 tcp [80]"]
        );
        assert_eq!(written, ["web 198.51.100.0 2001:db8::2"]);
        // A SingleStack IPv4 Service asking for an IPv6 address: refused, no pool address
        // in its place.
        let objs = objects([lb(
            "web",
            1,
            &[("TCP", 80)],
            None,
            Some("2001:db8::2"),
            None,
        )]);
        let c = compute(&cfg(), &objs, &mut HashMap::new());
        let problems: Vec<String> = c.problems.iter().map(|p| p.what.clone()).collect();
        assert_eq!(
            problems,
            [
                "ignoring spec.loadBalancerIP 2001:db8::2: the Service has no IPv6 family \
              (spec.ipFamilies)"
            ]
        );
        assert_eq!(render(c), (BTreeMap::new(), Vec::new()));
    }

    /// Each address of a dual-stack Service is shared on its own: Services with one key
    /// share an address of each family where their ports differ; where they collide the
    /// newer one gets addresses of its own, and a Service that holds only one family's
    /// address blocks that family only.
    #[test]
    fn dual_stack_addresses_are_shared_per_family() {
        let dual = |name, day, port, key| {
            stack(
                lb(name, day, &[("TCP", port)], key, None, None),
                "PreferDualStack",
                &["IPv4", "IPv6"],
            )
        };
        let mut v6 = lb("v6", 4, &[("TCP", 8080)], Some("k"), None, None);
        v6.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
        let (vips, written) = served(&objects([
            dual("a", 1, 80, Some("k")),
            dual("b", 2, 443, Some("k")),
            dual("c", 3, 80, Some("k")),
            v6,
            dual("d", 5, 8080, Some("k")),
        ]));
        assert_eq!(
            written,
            [
                "a 198.51.100.0 2001:db8::",
                "b 198.51.100.0 2001:db8::",
                "c 198.51.100.1 2001:db8::1",
                "v6 2001:db8::",
                "d 198.51.100.0 2001:db8::1"
            ]
        );
        assert_eq!(vips.len(), 5, "{vips:?}");
    }

    /// Kubernetes objects are untrusted: an unknown policy or family, duplicates and a third
    /// entry (none of which the API server accepts) never panic; what is known is used and
    /// the rest is noted.
    #[test]
    fn unknown_policies_and_families_are_noted_and_never_panic() {
        let with = |policy: &str, fams: &[&str]| {
            let objs = objects([stack(
                lb("web", 1, &[("TCP", 80)], None, None, None),
                policy,
                fams,
            )]);
            let c = compute(&cfg(), &objs, &mut HashMap::new());
            let problems: Vec<String> = c.problems.iter().map(|p| p.what.clone()).collect();
            (render(c).1, problems)
        };
        let none = Vec::<String>::new();
        assert_eq!(
            with("PreferDualStack", &["IPv6", "IPv6", "IPv4", "IPv4"]),
            (vec!["web 2001:db8:: 198.51.100.0".to_owned()], none.clone())
        );
        assert_eq!(
            with("RequireDualStack", &["IPv4", "IPv6", "IPv4"]),
            (vec!["web 198.51.100.0 2001:db8::".to_owned()], none.clone())
        );
        assert_eq!(
            with("SingleStack", &["IPv6", "IPv4"]),
            (vec!["web 2001:db8::".to_owned()], none)
        );
        assert_eq!(
            with("TripleStack", &["IPX", "IPv6", "IPv4"]),
            (
                vec!["web 2001:db8::".to_owned()],
                vec![
                    "ignoring spec.ipFamilies entry \"IPX\"".to_owned(),
                    "unknown spec.ipFamilyPolicy \"TripleStack\": its first family only".to_owned()
                ]
            )
        );
        assert_eq!(with("PreferDualStack", &[]).0, ["web 198.51.100.0"]);
    }

    /// A dual-stack Service turned single-stack (the API server lets the second family be
    /// dropped) kept its IPv6 pool address announced, and in its status for external-dns,
    /// while kube-proxy dropped its traffic. It is served on its one family, and its status
    /// is rewritten without the other.
    #[test]
    fn a_family_the_service_no_longer_has_leaves_its_status() {
        let s = showing(
            lb("web", 1, &[("TCP", 80)], None, None, None),
            &["198.51.100.1", "2001:db8::1"],
        );
        let c = compute(&cfg(), &objects([s]), &mut HashMap::new());
        let problems: Vec<String> = c.problems.iter().map(|p| p.what.clone()).collect();
        assert_eq!(
            problems,
            [
                "ignoring status.loadBalancer.ingress ip 2001:db8::1: the Service has no IPv6 \
              family (spec.ipFamilies)"
            ]
        );
        let (vips, written) = render(c);
        assert_eq!(vips["ns/web"], ["198.51.100.1 tcp [80]"]);
        assert_eq!(written, ["web 198.51.100.1"]);
        // Once written, nothing more; an IPv6 address from outside the pool (another
        // controller's) is not served, nor written away.
        for status in [&["198.51.100.1"][..], &["198.51.100.1", "2001:db8:1::1"]] {
            let s = showing(lb("web", 1, &[("TCP", 80)], None, None, None), status);
            let (vips, written) = served(&objects([s]));
            assert_eq!(vips["ns/web"], ["198.51.100.1 tcp [80]"]);
            assert!(written.is_empty(), "{written:?}");
        }
    }

    /// The pool was shrunk (on reload) to leave out a Service's pool address: the Service
    /// kept it, announced, whatever the pool said. A Service of the configured
    /// `load_balancer_class` is dsrgate's alone, so it moves to an address of the new pool
    /// (or its request there), written over its status, as MetalLB reallocates; its other
    /// family, still in the pool, stays. A Service without a class keeps it: its address
    /// cannot be told from another controller's (one MetalLB wrote before a migration), and
    /// what dsrgate wrote itself is not remembered across restarts or by other gateways,
    /// which must decide alike. So does any Service once no pool is left to move to.
    #[test]
    fn an_address_that_left_the_pool_is_reassigned_for_a_service_of_our_class() {
        const OLD: &str = "198.51.100.1";
        let shrunk = |class: Option<&str>, pool: &[&str]| {
            let text = format!(
                "[dataplane]\nupstream_interface = \"eth0\"\n[kubernetes]\n\
                 address_pool = {pool:?}\n{}",
                class.map_or(String::new(), |c| format!("load_balancer_class = {c:?}\n"))
            );
            let cfg = crate::config::parse(&text, std::path::Path::new("t.toml"));
            cfg.unwrap().kubernetes.unwrap()
        };
        let web = |class: Option<&str>, request: Option<&str>, status: &[&str]| {
            let mut s = lb("web", 1, &[("TCP", 80)], None, request, None);
            s.spec.as_mut().unwrap().load_balancer_class = class.map(str::to_owned);
            showing(s, status)
        };
        let run = |cfg: &Kubernetes, s: Service| {
            let c = compute(cfg, &objects([s]), &mut HashMap::new());
            let problems: Vec<String> = c.problems.iter().map(|p| p.what.clone()).collect();
            let (vips, written) = render(c);
            (
                vips.get("ns/web").cloned().unwrap_or_default(),
                written,
                problems,
            )
        };
        // Before: OLD is a pool address, kept.
        let (vips, written, _) = run(&shrunk(None, &["198.51.100.0/30"]), web(None, None, &[OLD]));
        assert_eq!((vips, written), (vec![format!("{OLD} tcp [80]")], vec![]));

        let class = Some("dsrgate.io/dsr");
        let new_pool = ["203.0.113.0/30", "2001:db8::/126"];
        let (vips, written, problems) = run(&shrunk(class, &new_pool), web(class, None, &[OLD]));
        assert_eq!(vips, ["203.0.113.0 tcp [80]"]);
        assert_eq!(written, ["web 203.0.113.0"]);
        let why = format!(
            "status address {OLD} is outside kubernetes.address_pool: not served, assigning \
             one anew"
        );
        assert_eq!(problems, [why]);
        // Until it has been lost for RECLAIM_AFTER (its caller's clock), it is still served
        // where it is, and nothing is written.
        let waiting = BTreeSet::from([("ns/web".to_owned(), OLD.parse().unwrap())]);
        let objs = objects([web(class, None, &[OLD])]);
        let c = compute_waiting(
            &shrunk(class, &new_pool),
            &objs,
            &mut HashMap::new(),
            &waiting,
        );
        let problems: Vec<String> = c.problems.iter().map(|p| p.what.clone()).collect();
        assert_eq!(
            problems,
            [format!(
                "status address {OLD} is outside kubernetes.address_pool: still served, and moved \
                 once it has been outside for 300s (so every gateway has the new pool)"
            )]
        );
        let (vips, written) = render(c);
        assert_eq!(vips["ns/web"], [format!("{OLD} tcp [80]")]);
        assert!(written.is_empty(), "{written:?}");
        // Asking for an address of the new pool: moved there.
        let s = web(class, Some("203.0.113.2"), &[OLD]);
        let (vips, written, _) = run(&shrunk(class, &new_pool), s);
        assert_eq!(vips, ["203.0.113.2 tcp [80]"]);
        assert_eq!(written, ["web 203.0.113.2"]);
        // Dual-stack: the IPv4 address left the pool, the IPv6 one did not.
        let s = stack(
            web(class, None, &[OLD, "2001:db8::1"]),
            "RequireDualStack",
            &["IPv4", "IPv6"],
        );
        let (vips, written, _) = run(&shrunk(class, &new_pool), s);
        assert_eq!(vips, ["203.0.113.0 tcp [80]", "2001:db8::1 tcp [80]"]);
        assert_eq!(written, ["web 203.0.113.0 2001:db8::1"]);
        // Without a class, or without a pool, the address stays.
        let (vips, written, problems) = run(&shrunk(None, &new_pool), web(None, None, &[OLD]));
        assert_eq!((vips, written), (vec![format!("{OLD} tcp [80]")], vec![]));
        assert!(problems.is_empty(), "{problems:?}");
        let (vips, written, _) = run(&shrunk(class, &[]), web(class, None, &[OLD]));
        assert_eq!((vips, written), (vec![format!("{OLD} tcp [80]")], vec![]));
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
        let node = |name: &str, addr: &str| kube_node(name, addr, true, json!({}));
        let mut objs = Objects::default();
        for s in [
            mk("m", Some("224.0.0.1"), &[]),
            mk("out", Some("192.0.2.7"), &[]),
            mk("in", Some("198.51.100.2"), &[]),
            mk("bad-status", Some(""), &["255.255.255.255", "0.0.0.0"]),
            mk("status", None, &["ff02::1", "192.0.2.9"]),
            // IPv4-mapped: the dataplane keys the IPv4 address so, and would serve this
            // Service's ports on 198.51.100.3 past the ownership checks.
            mk("mapped", Some("::ffff:198.51.100.3"), &["::ffff:192.0.2.9"]),
        ] {
            objs.services.insert(svc_key(&s), s);
        }
        objs.nodes.insert("n1".into(), node("n1", "10.1.0.1"));
        objs.nodes.insert("n2".into(), node("n2", "224.0.0.5"));
        for name in ["in", "out", "bad-status", "status", "mapped"] {
            let eps = json!([{"addresses": ["10.244.0.9"], "nodeName": "n1"}]);
            add_slice(&mut objs, slice(name, "IPv4", eps));
        }
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
        assert!(!got.contains_key("ns/mapped"), "{got:?}");
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
        assert!(!got.contains_key("ns/mapped"), "{got:?}");
    }

    /// A Service of type LoadBalancer as the API server returns it, created on day `day` of
    /// 2026-01: `ports` as (protocol, port), `key` its sharing annotation, `request` its
    /// `spec.loadBalancerIP`, `ingress` its status address.
    fn lb(
        name: &str,
        day: u32,
        ports: &[(&str, u16)],
        key: Option<&str>,
        request: Option<&str>,
        ingress: Option<&str>,
    ) -> Service {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(proto, port)| json!({"name": format!("{proto}-{port}").to_lowercase(),
                "protocol": proto, "port": port, "targetPort": port, "nodePort": 30000 + port % 2000}))
            .collect();
        let mut v = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                "creationTimestamp": format!("2026-01-{day:02}T00:00:00Z")},
            "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": ports,
                "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Cluster",
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"},
            "status": {"loadBalancer": {}}
        });
        if let Some(k) = key {
            v["metadata"]["annotations"] = json!({ SHARING_KEY_ANNOTATION: k });
        }
        if let Some(ip) = request {
            v["spec"]["loadBalancerIP"] = json!(ip);
        }
        if let Some(ip) = ingress {
            v["status"]["loadBalancer"]["ingress"] = json!([{"ip": ip, "ipMode": "VIP"}]);
        }
        svc(v).unwrap()
    }

    /// An EndpointSlice of `service` in namespace `ns` with endpoints `eps`.
    fn slice(service: &str, family: &str, eps: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-{family}"), "namespace": "ns",
                "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": family, "endpoints": eps}))
        .unwrap()
    }

    /// Adds `s`; one without `ports` gets its Service's, as the EndpointSlice controller
    /// writes them (kube-proxy uses a slice's endpoints only for the ports it lists).
    fn add_slice(objs: &mut Objects, mut s: EndpointSlice) {
        let labels = s.metadata.labels.as_ref();
        let owner = labels.and_then(|l| l.get(SERVICE_NAME_LABEL));
        let svc = owner.and_then(|name| objs.services.get(&format!("ns/{name}")));
        let ports = svc.and_then(|svc| svc.spec.as_ref()?.ports.clone());
        if s.ports.is_none() {
            s.ports = ports.map(|ports| {
                let port = |p: ServicePort| EndpointPort {
                    name: Some(p.name.unwrap_or_default()),
                    protocol: p.protocol,
                    port: Some(p.port),
                    app_protocol: None,
                };
                ports.into_iter().map(port).collect()
            });
        }
        let key = format!("ns/{}", s.metadata.name.as_deref().unwrap_or_default());
        objs.slices.insert(key, s);
    }

    fn objects(services: impl IntoIterator<Item = Service>) -> Objects {
        let mut objs = Objects::default();
        for s in services {
            objs.services.insert(svc_key(&s), s);
        }
        objs
    }

    /// `s` in namespace `ns`.
    fn in_ns(mut s: Service, ns: &str) -> Service {
        s.metadata.namespace = Some(ns.to_owned());
        s
    }

    /// Each served Service's VIPs as `address proto ports`, and the Services whose address
    /// would be written to their status, as `name address`.
    type Served = (BTreeMap<String, Vec<String>>, Vec<String>);

    fn served(objs: &Objects) -> Served {
        render(compute(&cfg(), objs, &mut HashMap::new()))
    }

    fn render(c: Computed) -> Served {
        let mut vips: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for v in &c.set.vips {
            vips.entry(v.name.clone())
                .or_default()
                .push(format!("{} {} {:?}", v.addr, v.proto, v.ports));
        }
        let written = c
            .to_write
            .iter()
            .map(|a| format!("{} {}", a.name, ips(&a.ips)));
        (vips, written.collect())
    }

    /// Any Service could put its ports on another's address by naming it in
    /// `spec.loadBalancerIP`, and have them announced with it.
    #[test]
    fn an_address_is_shared_only_by_services_with_one_key_on_distinct_ports() {
        const IP: &str = "198.51.100.1";
        // "new" comes first by name but was created second: "old" keeps the address.
        let pair = |old_key: Option<&str>, new_key: Option<&str>, new_ports: &[(&str, u16)]| {
            served(&objects([
                lb(
                    "old",
                    1,
                    &[("TCP", 80), ("UDP", 53)],
                    old_key,
                    Some(IP),
                    None,
                ),
                lb("new", 2, new_ports, new_key, Some(IP), None),
            ]))
        };
        let old = vec![format!("{IP} tcp [80]"), format!("{IP} udp [53]")];
        for (old_key, new_key) in [
            (None, None),
            (Some("k"), None),
            (None, Some("k")),
            (Some("k"), Some("j")),
            (Some(""), Some("")),
        ] {
            let (vips, written) = pair(old_key, new_key, &[("TCP", 443)]);
            assert_eq!(vips.len(), 1, "{old_key:?} {new_key:?}: {vips:?}");
            assert_eq!(vips["ns/old"], old);
            // The refused request is not written to the newer Service's status either.
            assert_eq!(written, [format!("old {IP}")]);
        }
        let (vips, written) = pair(Some("k"), Some("k"), &[("TCP", 443), ("UDP", 80)]);
        assert_eq!(vips["ns/old"], old);
        assert_eq!(
            vips["ns/new"],
            [format!("{IP} tcp [443]"), format!("{IP} udp [80]")]
        );
        assert_eq!(written, [format!("old {IP}"), format!("new {IP}")]);
        // One port in common: the newer Service gets no VIP at the address, not even on
        // its other ports, so it is not half served on an address it does not have.
        let (vips, written) = pair(Some("k"), Some("k"), &[("TCP", 443), ("UDP", 53)]);
        assert_eq!(vips.len(), 1, "{vips:?}");
        assert_eq!(vips["ns/old"], old);
        assert_eq!(written, [format!("old {IP}")]);
    }

    /// A Node as the API server returns it: Ready or not, with `labels`.
    fn kube_node(name: &str, addr: &str, ready: bool, labels: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": addr},
                    {"type": "Hostname", "address": name}],
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                    "reason": if ready { "KubeletReady" } else { "NodeStatusUnknown" }}]}
        }))
        .unwrap()
    }

    /// An endpoint of pod `ip` on `node` with its three conditions, as the EndpointSlice
    /// controller writes them (ready = serving and not terminating).
    fn endpoint(ip: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
        json!({"addresses": [ip], "nodeName": node,
            "targetRef": {"kind": "Pod", "namespace": "ns", "name": format!("web-{ip}")},
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    }

    /// Each VIP's backends as `address weight`.
    fn weights(objs: &Objects) -> Vec<Vec<String>> {
        let set = compute(&cfg(), objs, &mut HashMap::new()).set;
        set.vips
            .iter()
            .map(|v| {
                let b = v.backends.iter();
                b.map(|b| format!("{} {}", b.addr, b.weight)).collect()
            })
            .collect()
    }

    /// A `Local` Service's node whose last pod began its graceful termination (`serving`,
    /// `terminating`, not `ready`) left the backends at once, and the flows pinned to it were
    /// re-hashed to other nodes, which reset them, while kube-proxy still forwarded to that
    /// pod. It stays at weight 0 (draining) until its endpoints leave the slice; a node with
    /// a ready endpoint keeps its weight, and one whose pods neither are ready nor serve is
    /// no backend.
    #[test]
    fn a_local_node_with_only_terminating_serving_endpoints_drains_at_weight_0() {
        let mut web = lb("web", 1, &[("TCP", 80)], None, None, Some("192.0.2.9"));
        let spec = web.spec.as_mut().unwrap();
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = Some(32080);
        let mut objs = objects([web]);
        for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let n = kube_node(name, &format!("10.1.0.{}", i + 1), true, json!({}));
            objs.nodes.insert(name.into(), n);
        }
        let with = |eps: Vec<Value>| {
            let mut objs = Objects {
                services: objs.services.clone(),
                slices: BTreeMap::new(),
                nodes: objs.nodes.clone(),
            };
            add_slice(&mut objs, slice("web", "IPv4", Value::from(eps)));
            weights(&objs)
        };
        let b = [
            endpoint("10.244.2.1", "b", true, true, false),
            endpoint("10.244.2.2", "b", true, true, false),
        ];
        // a's only pod terminates, still serving; c's terminates and no longer serves; d's
        // fails its readiness probe.
        let mut eps = vec![endpoint("10.244.1.1", "a", false, true, true)];
        eps.extend(b.clone());
        eps.push(endpoint("10.244.3.1", "c", false, false, true));
        eps.push(endpoint("10.244.4.1", "d", false, false, false));
        assert_eq!(with(eps), [["10.1.0.1 0", "10.1.0.2 2"]]);
        // Terminating next to a ready one: a keeps the ready one's weight.
        let mut eps = vec![
            endpoint("10.244.1.1", "a", false, true, true),
            endpoint("10.244.1.2", "a", true, true, false),
        ];
        eps.extend(b.clone());
        assert_eq!(with(eps), [["10.1.0.1 1", "10.1.0.2 2"]]);
        // The pod is gone from the slice: so is a.
        assert_eq!(with(b.to_vec()), [["10.1.0.2 2"]]);
    }

    /// A `Cluster` Service's node that was labelled to be excluded (a usual step before
    /// maintenance) or went NotReady left the backends at once, which reset every
    /// connection through it. It drains at weight 0 instead (its probe of kube-proxy decides
    /// when it leaves, see `VipSpec::serving_backends`), is back at full weight once the
    /// label is removed, and is gone once the Node is deleted.
    #[test]
    fn an_excluded_or_not_ready_cluster_node_drains_at_weight_0() {
        let mut objs = objects([lb("web", 1, &[("TCP", 80)], None, None, Some("192.0.2.9"))]);
        let eps = json!([endpoint("10.244.1.1", "a", true, true, false)]);
        add_slice(&mut objs, slice("web", "IPv4", eps));
        let exclude = json!({ EXCLUDE_LABEL: "" });
        for (name, addr, ready, labels) in [
            ("a", "10.1.0.1", true, json!({"kubernetes.io/os": "linux"})),
            ("b", "10.1.0.2", true, exclude.clone()),
            ("c", "10.1.0.3", false, json!({})),
        ] {
            objs.nodes
                .insert(name.into(), kube_node(name, addr, ready, labels));
        }
        assert_eq!(weights(&objs), [["10.1.0.1 1", "10.1.0.2 0", "10.1.0.3 0"]]);
        // The label is removed: b is back at full weight.
        let b = kube_node("b", "10.1.0.2", true, json!({}));
        objs.nodes.insert("b".into(), b);
        assert_eq!(weights(&objs), [["10.1.0.1 1", "10.1.0.2 1", "10.1.0.3 0"]]);
        // c is deleted: gone.
        objs.nodes.remove("c");
        assert_eq!(weights(&objs), [["10.1.0.1 1", "10.1.0.2 1"]]);
    }

    /// A `Local` Service's node labelled to be excluded (before maintenance) kept its full
    /// weight, so it took new flows for every `Local` Service; upstream's service controller
    /// excludes it for every Service. It drains at weight 0, kept while it has endpoints.
    #[test]
    fn an_excluded_local_node_drains_at_weight_0() {
        let mut web = lb("web", 1, &[("TCP", 80)], None, None, Some("192.0.2.9"));
        web.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let mut objs = objects([web]);
        let eps = json!([
            endpoint("10.244.1.1", "a", true, true, false),
            endpoint("10.244.2.1", "b", true, true, false)
        ]);
        add_slice(&mut objs, slice("web", "IPv4", eps));
        let a = kube_node("a", "10.1.0.1", true, json!({ EXCLUDE_LABEL: "" }));
        objs.nodes.insert("a".into(), a);
        let b = kube_node("b", "10.1.0.2", true, json!({}));
        objs.nodes.insert("b".into(), b);
        assert_eq!(weights(&objs), [["10.1.0.1 0", "10.1.0.2 1"]]);
    }

    /// Without an `address_pool`, a granted `spec.loadBalancerIP` was served but never written
    /// to the Service's status, and kube-proxy, which accepts traffic only for status
    /// addresses, dropped what the gateway tunnelled to it (kubectl showed `<pending>`).
    #[test]
    fn a_granted_request_is_written_to_status_without_a_pool() {
        let mut no_pool = cfg();
        no_pool.address_pool.clear();
        let with = |request, ingress| {
            let mut objs = objects([lb("web", 1, &[("TCP", 80)], None, Some(request), ingress)]);
            let eps = json!([endpoint("10.244.1.1", "a", true, true, false)]);
            add_slice(&mut objs, slice("web", "IPv4", eps));
            let a = kube_node("a", "10.1.0.1", true, json!({}));
            objs.nodes.insert("a".into(), a);
            let c = compute(&no_pool, &objs, &mut HashMap::new());
            let problems: Vec<String> = c.problems.iter().map(|p| p.what.clone()).collect();
            let (vips, written) = render(c);
            (vips, written, problems)
        };
        let (vips, written, problems) = with("192.0.2.7", None);
        assert_eq!(vips["ns/web"], ["192.0.2.7 tcp [80]"]);
        assert_eq!(written, ["web 192.0.2.7"]);
        assert!(problems.is_empty(), "{problems:?}");
        // Once the status shows it, nothing more to write.
        let (vips, written, _) = with("192.0.2.7", Some("192.0.2.7"));
        assert_eq!(vips["ns/web"], ["192.0.2.7 tcp [80]"]);
        assert!(written.is_empty(), "{written:?}");
        // Without a pool a status address is not dsrgate's to replace (it may be another
        // controller's): a changed request leaves the Service where it is, and says so.
        let (vips, written, problems) = with("192.0.2.8", Some("192.0.2.7"));
        assert_eq!(vips["ns/web"], ["192.0.2.7 tcp [80]"]);
        assert!(written.is_empty(), "{written:?}");
        let why = "spec.loadBalancerIP 192.0.2.8 is not in its status ({192.0.2.7}), which \
                   holds addresses from outside kubernetes.address_pool: not moving";
        assert_eq!(problems, [why]);
    }

    /// `sessionAffinity: ClientIP` was ignored: one client's connections went to different
    /// nodes, and so to different pods. Its VIPs hash the 3-tuple, which every gateway maps
    /// alike; other Services keep the configured hash.
    #[test]
    fn client_ip_affinity_hashes_the_3_tuple() {
        let with = |affinity: Option<&str>| {
            let mut web = lb(
                "web",
                1,
                &[("TCP", 80), ("UDP", 53)],
                None,
                None,
                Some("192.0.2.9"),
            );
            web.spec.as_mut().unwrap().session_affinity = affinity.map(str::to_owned);
            let set = compute(&cfg(), &objects([web]), &mut HashMap::new()).set;
            set.vips.iter().map(|v| v.hash).collect::<Vec<_>>()
        };
        assert_eq!(cfg().hash, HashMode::FiveTuple);
        assert_eq!(with(Some("ClientIP")), [HashMode::ThreeTuple; 2]);
        assert_eq!(with(Some("None")), [HashMode::FiveTuple; 2]);
        assert_eq!(with(None), [HashMode::FiveTuple; 2]);
    }

    /// An IPv6 Service with only IPv4 pool ranges was reported "address pool exhausted",
    /// which sent the operator after a full pool instead of a missing range.
    #[test]
    fn a_family_without_pool_ranges_is_reported_as_such() {
        let mut v4_only = cfg();
        v4_only.address_pool.retain(|r| r.first.is_ipv4());
        let problems = |cfg: &Kubernetes, n: u32| -> Vec<String> {
            let services = (0..n).map(|i| {
                let mut s = lb(&format!("s{i}"), i + 1, &[("TCP", 80)], None, None, None);
                s.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
                s
            });
            let c = compute(cfg, &objects(services), &mut HashMap::new());
            c.problems
                .into_iter()
                .map(|p| format!("{} {}", p.service, p.what))
                .collect()
        };
        assert_eq!(
            problems(&v4_only, 1),
            ["ns/s0 kubernetes.address_pool has no IPv6 range"]
        );
        // A range of the family, all of it taken: exhausted.
        assert_eq!(problems(&cfg(), 5), ["ns/s4 address pool exhausted"]);
    }

    /// A node without an address of `node_address_type` (`ExternalIP` on bare metal) was
    /// dropped from every VIP without a word. It is a problem naming the node and the type.
    #[test]
    fn a_node_without_an_address_of_the_configured_type_is_reported() {
        let mut external = cfg();
        external.node_address_type = crate::config::NodeAddressType::ExternalIP;
        let mut objs = objects([lb("web", 1, &[("TCP", 80)], None, None, Some("192.0.2.9"))]);
        let eps = json!([endpoint("10.244.1.1", "a", true, true, false)]);
        add_slice(&mut objs, slice("web", "IPv4", eps));
        objs.nodes
            .insert("a".into(), kube_node("a", "10.1.0.1", true, json!({})));
        let c = compute(&external, &objs, &mut HashMap::new());
        assert!(c.set.vips[0].backends.is_empty());
        let got: Vec<(&str, &str)> = c
            .problems
            .iter()
            .map(|p| (p.service.as_str(), p.what.as_str()))
            .collect();
        assert_eq!(
            got,
            [(
                "node a",
                "no usable ExternalIP address (kubernetes.node_address_type): no Service's backend"
            )]
        );
        // With its InternalIP configured, it is a backend, and no problem.
        let c = compute(&cfg(), &objs, &mut HashMap::new());
        assert_eq!(c.set.vips[0].backends.len(), 1);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }

    /// A `Cluster` Service was served by every ready node whether or not it had a pod:
    /// scaled to zero, it stayed announced while every node refused its traffic. A pod that
    /// is terminating but still serving counts, as kube-proxy falls back to it.
    #[test]
    fn a_cluster_service_has_backends_only_while_it_has_a_serving_endpoint() {
        let node = |name: &str, addr: &str| kube_node(name, addr, true, json!({}));
        let slice = |family: &str, eps: Value| slice("web", family, eps);
        let backends = |slices: &[EndpointSlice]| -> Vec<String> {
            let mut objs = objects([lb("web", 1, &[("TCP", 80)], None, None, None)]);
            objs.nodes.insert("n1".into(), node("n1", "10.1.0.1"));
            objs.nodes.insert("n2".into(), node("n2", "10.1.0.2"));
            for s in slices {
                add_slice(&mut objs, s.clone());
            }
            let set = compute(&cfg(), &objs, &mut HashMap::new()).set;
            assert_eq!(set.vips.len(), 1, "{:?}", set.vips);
            set.vips[0]
                .backends
                .iter()
                .map(|b| b.addr.to_string())
                .collect()
        };
        let ep = |ready: bool, serving: bool, terminating: bool, node: Option<&str>| {
            let mut e = json!({"addresses": ["10.244.0.9"],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating}});
            if let Some(n) = node {
                e["nodeName"] = json!(n);
            }
            e
        };
        let both = ["10.1.0.1", "10.1.0.2"];
        assert!(backends(&[]).is_empty());
        assert!(
            backends(&[slice("IPv4", json!([ep(false, false, false, Some("n1"))]))]).is_empty()
        );
        assert!(backends(&[slice("IPv4", json!([ep(false, false, true, Some("n1"))]))]).is_empty());
        assert!(backends(&[slice("IPv6", json!([ep(true, true, false, Some("n1"))]))]).is_empty());
        // Any node forwards to a pod anywhere, or to an endpoint on no node at all, or to a
        // terminating one still serving.
        let draining = ep(false, true, true, Some("n1"));
        assert_eq!(backends(&[slice("IPv4", json!([draining]))]), both);
        assert_eq!(
            backends(&[slice("IPv4", json!([ep(true, true, false, Some("n1"))]))]),
            both
        );
        assert_eq!(
            backends(&[slice("IPv4", json!([ep(true, true, false, None)]))]),
            both
        );
    }

    /// A Service with many ports and slices cost ports × slices on every watch event (a
    /// reviewer's 20,000 ports took 69 s in a debug build): its backends are now computed
    /// once per set of slices that carry a port, and one with more ports than a gateway
    /// steers is refused outright.
    #[test]
    fn many_ports_cost_their_slices_once_and_too_many_are_refused() {
        // 4,000 named ports, in 100 slices of 40 ports with one endpoint each, 300 nodes.
        let ports: Vec<Value> = (0..4000u16)
            .map(|i| json!({"name": format!("p{i}"), "protocol": "TCP", "port": 1000 + i}))
            .collect();
        let many = |n: usize| {
            svc(json!({
                "metadata": {"name": "wide", "namespace": "ns", "uid": "uid-wide",
                    "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"type": "LoadBalancer", "ports": &ports[..n.min(4000)],
                    "externalTrafficPolicy": "Cluster"},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}
            }))
            .unwrap()
        };
        let mut objs = objects([many(4000)]);
        for i in 0..300 {
            let n = kube_node(
                &format!("n{i}"),
                &format!("10.1.{}.{}", i / 250, i % 250 + 1),
                true,
                json!({}),
            );
            objs.nodes.insert(format!("n{i}"), n);
        }
        for k in 0..100 {
            let eps = json!([endpoint(
                &format!("10.244.0.{}", k + 1),
                "n0",
                true,
                true,
                false
            )]);
            let mut s = slice("wide", "IPv4", eps);
            s.metadata.name = Some(format!("wide-{k}"));
            let of_slice: Vec<Value> = ports[k * 40..(k + 1) * 40].to_vec();
            s.ports = serde_json::from_value(Value::from(of_slice)).unwrap();
            add_slice(&mut objs, s);
        }
        let set = compute(&cfg(), &objs, &mut HashMap::new()).set;
        assert_eq!(set.vips.len(), 1);
        assert_eq!(
            (set.vips[0].ports.len(), set.vips[0].backends.len()),
            (4000, 300)
        );
        // One port more than a gateway steers: refused, with a problem, and no address.
        let too_many: Vec<Value> = (0..=MAX_VIPS as u16)
            .map(|i| json!({"name": format!("q{i}"), "protocol": "UDP", "port": 1 + i}))
            .collect();
        let mut wide = many(0);
        wide.spec.as_mut().unwrap().ports = serde_json::from_value(Value::from(too_many)).unwrap();
        let c = compute(&cfg(), &objects([wide]), &mut HashMap::new());
        assert!(c.set.vips.is_empty());
        let problems: Vec<&str> = c.problems.iter().map(|p| p.what.as_str()).collect();
        assert_eq!(
            problems,
            [format!(
                "{} service ports, more than one gateway steers ({MAX_VIPS}): not served",
                MAX_VIPS + 1
            )]
        );
    }

    /// A Service as the API server returns it with `policy`, `publishNotReadyAddresses`,
    /// and `ports` as (name, protocol, port, targetPort).
    fn kube_service(
        policy: &str,
        publish_not_ready: bool,
        ports: &[(&str, &str, u16, Value)],
    ) -> Service {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(name, proto, port, target)| {
                json!({"name": name, "protocol": proto,
                "port": port, "targetPort": target, "nodePort": 30000 + port % 2000})
            })
            .collect();
        svc(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "uid-web",
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": ports,
                "clusterIP": "10.96.0.10", "externalTrafficPolicy": policy,
                "healthCheckNodePort": 32080, "publishNotReadyAddresses": publish_not_ready,
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9", "ipMode": "VIP"}]}}
        }))
        .unwrap()
    }

    /// `objs` with nodes a..d at 10.1.0.1..4, all Ready.
    fn with_nodes(mut objs: Objects) -> Objects {
        for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let n = kube_node(name, &format!("10.1.0.{}", i + 1), true, json!({}));
            objs.nodes.insert(name.into(), n);
        }
        objs
    }

    /// Each VIP as `proto ports: address weight, ...`.
    fn vips_and_weights(objs: &Objects) -> Vec<String> {
        let set = compute(&cfg(), objs, &mut HashMap::new()).set;
        set.vips
            .iter()
            .map(|v| {
                let b: Vec<String> = v
                    .backends
                    .iter()
                    .map(|b| format!("{} {}", b.addr, b.weight))
                    .collect();
                format!("{} {:?}: {}", v.proto, v.ports, b.join(", "))
            })
            .collect()
    }

    /// With `publishNotReadyAddresses`, the EndpointSlice controller marks every pod
    /// `ready` (not ready and terminating ones too), with `serving` its real readiness;
    /// kube-proxy forwards by `ready` alone and its `Local` health check counts those. Such
    /// a Service's pods used to count as not ready: a `Local` one lost the nodes whose pods
    /// were not ready (every node, while they all start), and a `Cluster` one its backends,
    /// while kube-proxy forwarded to them. An endpoint neither ready nor terminating (a
    /// hand-written slice saying `serving`) is not forwarded to, and counts for nothing.
    #[test]
    fn endpoints_count_as_kube_proxy_forwards_to_them_with_publish_not_ready_addresses() {
        let http = [("http", "TCP", 80, json!(8080))];
        let eps = json!([
            // a: a pod not ready yet; b: a ready one and a terminating one that no longer
            // serves; c: only a terminating one; d: not ready, hand-written, no `ready`.
            endpoint("10.244.1.1", "a", true, false, false),
            endpoint("10.244.2.1", "b", true, true, false),
            endpoint("10.244.2.2", "b", true, false, true),
            endpoint("10.244.3.1", "c", true, false, true),
            endpoint("10.244.4.1", "d", false, true, false),
        ]);
        let mut objs = with_nodes(objects([kube_service("Local", true, &http)]));
        add_slice(&mut objs, slice("web", "IPv4", eps));
        assert_eq!(
            vips_and_weights(&objs),
            ["tcp [80]: 10.1.0.1 1, 10.1.0.2 2, 10.1.0.3 1"]
        );
        // Cluster: only pods that are not ready (all `ready: true` here): every node.
        let eps = json!([endpoint("10.244.1.1", "a", true, false, false)]);
        let mut objs = with_nodes(objects([kube_service("Cluster", true, &http)]));
        add_slice(&mut objs, slice("web", "IPv4", eps));
        assert_eq!(
            vips_and_weights(&objs),
            ["tcp [80]: 10.1.0.1 1, 10.1.0.2 1, 10.1.0.3 1, 10.1.0.4 1"]
        );
        // Not ready and not terminating, whatever `serving` says: no endpoint at all.
        let eps = json!([endpoint("10.244.4.1", "d", false, true, false)]);
        let mut objs = with_nodes(objects([kube_service("Cluster", false, &http)]));
        add_slice(&mut objs, slice("web", "IPv4", eps));
        assert_eq!(vips_and_weights(&objs), ["tcp [80]: "]);
    }

    /// An EndpointSlice lists the Service ports its endpoints have (by name and protocol,
    /// with the target port resolved per pod), and kube-proxy programs each Service port
    /// only with endpoints of slices that carry it. One set of nodes used to serve every
    /// port of a protocol: a `Local` port went to nodes whose pods lack it (their named
    /// target port missing or resolved otherwise), and a `Cluster` port without any
    /// endpoint to every node, all of which dropped its traffic. Ports with the same nodes
    /// share one VIP; the result does not depend on the slices' order.
    #[test]
    fn each_service_port_has_the_nodes_of_the_slices_that_carry_it() {
        let ports = [
            ("http", "TCP", 80, json!("web")),
            ("admin", "TCP", 8443, json!(8443)),
            ("metrics", "TCP", 9090, json!(9090)),
            ("dns", "UDP", 53, json!(5353)),
        ];
        let ported = |name: &str, eps: Value, ports: Value| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns",
                    "labels": {SERVICE_NAME_LABEL: "web",
                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                "addressType": "IPv4", "endpoints": eps, "ports": ports}))
            .unwrap()
        };
        // Pods on a and b name their port `web` 8080 and have admin and metrics; the one on
        // c resolves `web` to 8081 and has neither; a slice lists `dns` for TCP only.
        let slices = |names: [&str; 3]| {
            [
                ported(
                    names[0],
                    json!([
                        endpoint("10.244.1.1", "a", true, true, false),
                        endpoint("10.244.2.1", "b", true, true, false)
                    ]),
                    json!([{"name": "http", "protocol": "TCP", "port": 8080},
                        {"name": "admin", "protocol": "TCP", "port": 8443},
                        {"name": "metrics", "protocol": "TCP", "port": 9090}]),
                ),
                ported(
                    names[1],
                    json!([endpoint("10.244.3.1", "c", true, true, false)]),
                    json!([{"name": "http", "protocol": "TCP", "port": 8081}]),
                ),
                ported(
                    names[2],
                    json!([endpoint("10.244.4.1", "d", true, true, false)]),
                    json!([{"name": "dns", "protocol": "TCP", "port": 5353},
                        {"protocol": "TCP", "port": 8443}]),
                ),
            ]
        };
        let served = |policy: &str, names: [&str; 3]| {
            let mut objs = with_nodes(objects([kube_service(policy, false, &ports)]));
            for s in slices(names) {
                add_slice(&mut objs, s);
            }
            vips_and_weights(&objs)
        };
        let local = served("Local", ["web-1", "web-2", "web-3"]);
        assert_eq!(
            local,
            [
                "tcp [80]: 10.1.0.1 1, 10.1.0.2 1, 10.1.0.3 1",
                "tcp [8443, 9090]: 10.1.0.1 1, 10.1.0.2 1",
                "udp [53]: ",
            ]
        );
        assert_eq!(served("Local", ["web-c", "web-b", "web-a"]), local);
        // Cluster: every node for a port with an endpoint anywhere, none for the UDP port.
        let all = "10.1.0.1 1, 10.1.0.2 1, 10.1.0.3 1, 10.1.0.4 1";
        let cluster = served("Cluster", ["web-1", "web-2", "web-3"]);
        assert_eq!(
            cluster,
            [
                format!("tcp [80, 8443, 9090]: {all}"),
                "udp [53]: ".to_owned()
            ]
        );
        assert_eq!(served("Cluster", ["web-c", "web-b", "web-a"]), cluster);
    }

    /// Each refusal is a problem naming the Service and why, and a recompute of the same
    /// objects finds the same problems (the watcher logs only the difference; each used
    /// to be logged again on every watch event).
    #[test]
    fn problems_name_the_service_and_are_the_same_on_every_recompute() {
        let objs = objects([
            lb("old", 1, &[("TCP", 80)], None, Some("198.51.100.1"), None),
            lb("new", 2, &[("TCP", 443)], None, Some("198.51.100.1"), None),
            lb("far", 3, &[("TCP", 80)], None, Some("192.0.2.7"), None),
            lb("sctp", 4, &[("SCTP", 80), ("TCP", 81)], None, None, None),
        ]);
        let mut assigned = HashMap::new();
        let first = compute(&cfg(), &objs, &mut assigned).problems;
        let got: Vec<(&str, &str)> = first
            .iter()
            .map(|p| (p.service.as_str(), p.what.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "ns/far",
                    "ignoring spec.loadBalancerIP 192.0.2.7: outside kubernetes.address_pool"
                ),
                (
                    "ns/new",
                    "address 198.51.100.1 is taken by ns/old (they do not share one \
                     dsrgate.io/allow-shared-ip key); not served there"
                ),
                ("ns/sctp", "port 80: protocol SCTP is not served"),
            ]
        );
        for _ in 0..3 {
            assert_eq!(compute(&cfg(), &objs, &mut assigned).problems, first);
        }
        // Gone once its cause is: the newer Service asks for another address.
        let objs = objects([
            lb("old", 1, &[("TCP", 80)], None, Some("198.51.100.1"), None),
            lb("new", 2, &[("TCP", 443)], None, Some("198.51.100.2"), None),
        ]);
        assert!(compute(&cfg(), &objs, &mut assigned).problems.is_empty());
    }

    /// Status addresses written by another controller were served for every Service that
    /// showed them; and a request for an address a Service holds took it along.
    #[test]
    fn status_addresses_are_kept_by_the_older_holder_before_any_request() {
        let (vips, _) = served(&objects([
            lb("old", 1, &[("TCP", 80)], None, None, Some("192.0.2.9")),
            lb("new", 2, &[("TCP", 443)], None, None, Some("192.0.2.9")),
        ]));
        assert_eq!(vips.keys().collect::<Vec<_>>(), ["ns/old"]);
        // An older Service asking for a newer one's address does not get it.
        let (vips, written) = served(&objects([
            lb("asks", 1, &[("TCP", 80)], None, Some("198.51.100.2"), None),
            lb(
                "holds",
                2,
                &[("TCP", 443)],
                None,
                None,
                Some("198.51.100.2"),
            ),
        ]));
        assert_eq!(vips.keys().collect::<Vec<_>>(), ["ns/holds"]);
        assert!(written.is_empty(), "{written:?}");
        // With one key they share it.
        let (vips, _) = served(&objects([
            lb("old", 1, &[("TCP", 80)], Some("k"), None, Some("192.0.2.9")),
            lb(
                "new",
                2,
                &[("TCP", 443)],
                Some("k"),
                None,
                Some("192.0.2.9"),
            ),
        ]));
        assert_eq!(vips.keys().collect::<Vec<_>>(), ["ns/new", "ns/old"]);
    }

    #[test]
    fn pool_addresses_are_shared_by_key_and_family_on_distinct_ports() {
        let mut v6 = lb("f", 6, &[("TCP", 80)], Some("k"), None, None);
        v6.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
        let objs = objects([
            lb("a", 1, &[("TCP", 80)], Some("k"), None, None),
            lb("b", 2, &[("TCP", 443)], None, None, None),
            lb("c", 3, &[("TCP", 443)], Some("k"), None, None),
            lb("d", 4, &[("TCP", 80)], Some("k"), None, None),
            lb("e", 5, &[("TCP", 8080)], Some("k"), None, None),
            v6,
            lb("g", 7, &[("TCP", 9000)], Some("j"), None, None),
        ]);
        let mut assigned = HashMap::new();
        let c = compute(&cfg(), &objs, &mut assigned);
        let got: BTreeMap<&str, String> = c
            .to_write
            .iter()
            .map(|a| (a.name.as_str(), ips(&a.ips)))
            .collect();
        let want: BTreeMap<&str, String> = [
            ("a", "198.51.100.0"),
            ("b", "198.51.100.1"), // no key: an address of its own
            ("c", "198.51.100.0"), // a's, on another port
            ("d", "198.51.100.2"), // port 80 is a's
            ("e", "198.51.100.0"), // .0 and .2 would do: the lowest
            ("f", "2001:db8::"),   // the family's own
            ("g", "198.51.100.3"), // another key
        ]
        .into_iter()
        .map(|(n, ip)| (n, ip.to_owned()))
        .collect();
        assert_eq!(got, want);
        assert_eq!(c.set.vips.len(), 7);
        // The same choices while the status writes are in flight.
        let again = compute(&cfg(), &objs, &mut assigned);
        assert_eq!((again.set, again.to_write), (c.set, c.to_write));
    }

    /// A Service refused on its status address was stuck there: only Services without one
    /// got a pool address, so it had no VIP, and its status kept showing the dead address.
    #[test]
    fn a_service_refused_on_its_pool_status_address_moves_and_stays_moved() {
        const OLD: &str = "198.51.100.1";
        const NEW: &str = "198.51.100.0";
        let b = |ingress: &str| lb("b", 2, &[("TCP", 443)], Some("k"), None, Some(ingress));
        let (vips, written) = served(&objects([
            lb("a", 1, &[("TCP", 80)], Some("k"), None, Some(OLD)),
            b(OLD),
        ]));
        assert_eq!(vips["ns/b"], [format!("{OLD} tcp [443]")]);
        assert!(written.is_empty(), "{written:?}");
        // a drops its key, or takes b's port: a keeps the address, b moves.
        for a in [
            lb("a", 1, &[("TCP", 80)], None, None, Some(OLD)),
            lb(
                "a",
                1,
                &[("TCP", 80), ("TCP", 443)],
                Some("k"),
                None,
                Some(OLD),
            ),
        ] {
            let mut assigned = HashMap::new();
            let objs = objects([a.clone(), b(OLD)]);
            let (vips, written) = render(compute(&cfg(), &objs, &mut assigned));
            assert_eq!(vips["ns/b"], [format!("{NEW} tcp [443]")], "{vips:?}");
            assert!(vips["ns/a"].iter().all(|v| v.starts_with(OLD)), "{vips:?}");
            assert_eq!(written, [format!("b {NEW}")]);
            // The write is in flight, b's status still shows the old address, and an older
            // Service without one appears: b keeps the new address, neither claiming the old
            // one again nor giving the new one up to the older Service.
            let early = |ingress| lb("early", 1, &[("TCP", 22)], None, None, ingress);
            let objs = objects([a.clone(), early(None), b(OLD)]);
            let (vips, written) = render(compute(&cfg(), &objs, &mut assigned));
            assert_eq!(vips["ns/b"], [format!("{NEW} tcp [443]")], "{vips:?}");
            assert_eq!(
                written,
                ["early 198.51.100.2".to_owned(), format!("b {NEW}")]
            );
            // The statuses show the new addresses: the same VIPs, nothing left to write.
            let objs = objects([a, early(Some("198.51.100.2")), b(NEW)]);
            let done = render(compute(&cfg(), &objs, &mut assigned));
            assert_eq!(done, (vips, Vec::new()));
            assert!(assigned.is_empty(), "{assigned:?}");
        }
        // A request still stands: b gets what it asks for, or nothing if that is the
        // refused address.
        let a = lb("a", 1, &[("TCP", 80)], None, None, Some(OLD));
        let asks = |ip| lb("b", 2, &[("TCP", 443)], Some("k"), Some(ip), Some(OLD));
        let (vips, written) = served(&objects([a.clone(), asks("198.51.100.3")]));
        assert_eq!(vips["ns/b"], ["198.51.100.3 tcp [443]"]);
        assert_eq!(written, ["b 198.51.100.3"]);
        let (vips, written) = served(&objects([a, asks(OLD)]));
        assert_eq!(vips.keys().collect::<Vec<_>>(), ["ns/a"]);
        assert!(written.is_empty(), "{written:?}");
    }

    /// A `spec.loadBalancerIP` changed after a pool address was written was ignored for
    /// good: the status address won, and nothing said so.
    #[test]
    fn a_changed_request_moves_the_service_unless_the_address_is_taken() {
        const WAS: &str = "198.51.100.0";
        let moved = |request: &str, others: Vec<Service>| {
            let mut services = vec![lb("web", 5, &[("TCP", 80)], None, Some(request), Some(WAS))];
            services.extend(others);
            let objs = objects(services);
            let c = compute(&cfg(), &objs, &mut HashMap::new());
            let problems: Vec<String> = c.problems.iter().map(|p| p.what.clone()).collect();
            let (vips, written) = render(c);
            (vips["ns/web"].clone(), written, problems)
        };
        // Asked for another pool address: moved, and the status rewritten.
        let (vips, written, problems) = moved("198.51.100.2", vec![]);
        assert_eq!(vips, ["198.51.100.2 tcp [80]"]);
        assert_eq!(written, ["web 198.51.100.2"]);
        assert!(problems.is_empty(), "{problems:?}");
        // Once the status shows it, nothing more to write.
        let objs = objects([lb(
            "web",
            5,
            &[("TCP", 80)],
            None,
            Some("198.51.100.2"),
            Some("198.51.100.2"),
        )]);
        assert_eq!(
            render(compute(&cfg(), &objs, &mut HashMap::new())).1,
            Vec::<String>::new()
        );
        // Taken by another Service (even a newer one): stays, and says why.
        let holder = lb(
            "holder",
            9,
            &[("TCP", 80)],
            None,
            None,
            Some("198.51.100.1"),
        );
        let (vips, written, problems) = moved("198.51.100.1", vec![holder]);
        assert_eq!(vips, [format!("{WAS} tcp [80]")]);
        assert!(written.is_empty(), "{written:?}");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("address 198.51.100.1 is taken by ns/holder"),
            "{problems:?}"
        );
        // An older Service without an address asking for it, or given it from the pool with
        // its status write in flight, has its turn first: no move.
        let older = lb("older", 1, &[("TCP", 80)], None, Some("198.51.100.1"), None);
        let (vips, written, problems) = moved("198.51.100.1", vec![older]);
        assert_eq!(vips, [format!("{WAS} tcp [80]")]);
        assert_eq!(written, ["older 198.51.100.1"]);
        assert!(
            problems[0].starts_with("address 198.51.100.1 is taken by ns/older"),
            "{problems:?}"
        );
        let objs = objects([
            lb("older", 1, &[("TCP", 80)], None, None, None),
            lb(
                "web",
                5,
                &[("TCP", 80)],
                None,
                Some("198.51.100.1"),
                Some(WAS),
            ),
        ]);
        let mut assigned = HashMap::from([(
            ("ns/older".to_owned(), false),
            "198.51.100.1".parse().unwrap(),
        )]);
        let c = compute(&cfg(), &objs, &mut assigned);
        let problems: Vec<String> = c.problems.iter().map(|p| p.what.clone()).collect();
        assert_eq!(render(c).1, ["older 198.51.100.1"]);
        assert_eq!(
            problems,
            ["address 198.51.100.1 is being given to ns/older; staying where it is"]
        );
        // Outside the pool: refused, stays.
        let (vips, written, problems) = moved("192.0.2.7", vec![]);
        assert_eq!(vips, [format!("{WAS} tcp [80]")]);
        assert!(written.is_empty(), "{written:?}");
        assert_eq!(
            problems,
            ["ignoring spec.loadBalancerIP 192.0.2.7: outside kubernetes.address_pool"]
        );
    }

    /// An address outside the pool is another controller's: a Service refused on it keeps
    /// it in its status and gets no VIP, not even the one it requests.
    #[test]
    fn a_refused_status_address_outside_the_pool_is_left_alone() {
        let mut no_pool = cfg();
        no_pool.address_pool.clear();
        for (cfg, ip) in [(cfg(), "192.0.2.9"), (no_pool, "198.51.100.1")] {
            let objs = objects([
                lb("a", 1, &[("TCP", 80)], None, None, Some(ip)),
                lb(
                    "b",
                    2,
                    &[("TCP", 443)],
                    None,
                    Some("198.51.100.3"),
                    Some(ip),
                ),
            ]);
            let (vips, written) = render(compute(&cfg, &objs, &mut HashMap::new()));
            assert_eq!(vips.keys().collect::<Vec<_>>(), ["ns/a"], "{ip}");
            assert!(written.is_empty(), "{ip}: {written:?}");
        }
    }

    /// Keys were compared across namespaces: any team could join another's address by
    /// copying its key, and the pool placed it there unasked.
    #[test]
    fn services_in_different_namespaces_never_share() {
        const IP: &str = "198.51.100.1";
        let pair = |request, ingress| {
            served(&objects([
                lb("a", 1, &[("TCP", 80)], Some("k"), request, ingress),
                in_ns(
                    lb("b", 2, &[("TCP", 443)], Some("k"), request, ingress),
                    "other",
                ),
            ]))
        };
        let (vips, written) = pair(Some(IP), None);
        assert_eq!(vips.keys().collect::<Vec<_>>(), ["ns/a"]);
        assert_eq!(written, [format!("a {IP}")]);
        let (vips, _) = pair(None, Some("192.0.2.9"));
        assert_eq!(vips.keys().collect::<Vec<_>>(), ["ns/a"]);
        // A pool address in b's status: b moves off it.
        let (vips, written) = pair(None, Some(IP));
        assert_eq!(vips["ns/a"], [format!("{IP} tcp [80]")]);
        assert_eq!(vips["other/b"], ["198.51.100.0 tcp [443]"]);
        assert_eq!(written, ["b 198.51.100.0"]);
        // The pool puts b on an address of its own, and c with a.
        let (_, written) = served(&objects([
            lb("a", 1, &[("TCP", 80)], Some("k"), None, None),
            in_ns(lb("b", 2, &[("TCP", 443)], Some("k"), None, None), "other"),
            lb("c", 3, &[("TCP", 8080)], Some("k"), None, None),
        ]));
        assert_eq!(
            written,
            ["a 198.51.100.0", "b 198.51.100.1", "c 198.51.100.0"]
        );
    }

    /// `Local` Services on one address need not select the same pods (see [`conflict`]):
    /// each port goes to the nodes with its own Service's endpoints, probed on its own
    /// health check node port.
    #[test]
    fn local_services_sharing_an_address_keep_their_own_nodes() {
        let mut objs = objects(["web", "api"].into_iter().enumerate().map(|(i, name)| {
            let port = 80 + i as u16;
            let mut s = lb(
                name,
                1,
                &[("TCP", port)],
                Some("k"),
                None,
                Some("192.0.2.9"),
            );
            let spec = s.spec.as_mut().unwrap();
            spec.external_traffic_policy = Some("Local".into());
            spec.health_check_node_port = Some(32000 + i32::from(port));
            s
        }));
        for (i, name) in ["web", "api"].into_iter().enumerate() {
            let node = format!("n{i}");
            let sl: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-x"), "namespace": "ns",
                    "labels": {SERVICE_NAME_LABEL: name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [format!("10.244.{i}.1")], "nodeName": node,
                    "conditions": {"ready": true, "serving": true, "terminating": false}}],
                "ports": [{"name": format!("tcp-{}", 80 + i), "protocol": "TCP", "port": 80 + i}]
            }))
            .unwrap();
            objs.slices.insert(format!("ns/{name}-x"), sl);
            let n = kube_node(&node, &format!("10.1.0.{i}"), true, json!({}));
            objs.nodes.insert(node, n);
        }
        let c = compute(&cfg(), &objs, &mut HashMap::new());
        let got: Vec<(&str, u16, String, Probe)> = c
            .set
            .vips
            .iter()
            .map(|v| {
                let probe = v.health.as_ref().unwrap().probe.clone();
                (
                    v.name.as_str(),
                    v.ports[0],
                    v.backends[0].addr.to_string(),
                    probe,
                )
            })
            .collect();
        let probe = |port| Probe::Http {
            port,
            path: "/healthz".into(),
            weight_header: true,
        };
        assert_eq!(
            got,
            [
                ("ns/web", 80, "10.1.0.0".to_owned(), probe(32080)),
                ("ns/api", 81, "10.1.0.1".to_owned(), probe(32081)),
            ]
        );
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
                Just("PreferDualStack"),
                Just("RequireDualStack"),
                Just("2001:db8::1"),
                Just("1.2.3.4"),
                Just("198.51.100.1"),
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
                        Just("ipFamilies"),
                        Just("ipFamilyPolicy")
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
        /// Whatever shape the API objects take, computing never panics. The two Services
        /// may claim one address (a pool address too), with or without one sharing key, in
        /// one namespace or two. The slice lists unnamed TCP and UDP ports, so that its
        /// endpoints count for the Services' unnamed ports.
        #[test]
        fn arbitrary_objects_never_panic(spec in arb_json(), spec2 in arb_json(), status in arb_json(), keys in proptest::collection::vec(prop_oneof![Just(None), Just(Some("")), Just(Some("k")), Just(Some("j"))], 2), t_ns in prop_oneof![Just("n"), Just("m")], slice_eps in arb_json(), node_status in arb_json()) {
            let mut objs = Objects::default();
            for ((name, ns, spec), key) in [("s", "n", spec), ("t", t_ns, spec2)].into_iter().zip(keys) {
                let annotations = key.map(|k| json!({ SHARING_KEY_ANNOTATION: k }));
                if let Some(s) = svc(json!({"metadata": {"name": name, "namespace": ns, "annotations": annotations}, "spec": spec, "status": status})) {
                    objs.services.insert(format!("{ns}/{name}"), s);
                }
            }
            if let Ok(sl) = serde_json::from_value::<EndpointSlice>(json!({"metadata": {"name": "x", "namespace": "n", "labels": {"kubernetes.io/service-name": "s"}}, "addressType": "IPv4", "endpoints": slice_eps, "ports": [{"name": "", "protocol": "TCP", "port": 80}, {"name": "", "protocol": "UDP", "port": 53}]})) {
                objs.slices.insert("n/x".into(), sl);
            }
            if let Ok(n) = serde_json::from_value::<Node>(json!({"metadata": {"name": "n1"}, "status": node_status})) {
                objs.nodes.insert("n1".into(), n);
            }
            let _ = compute(&cfg(), &objs, &mut HashMap::new());
        }
    }
}
