//! The daemon's configuration: a TOML file, parsed with serde, then validated.
//!
//! [`load`] reads and checks a file; `dsrgate check --config FILE` calls it and
//! nothing else. Every problem is reported with the file, the line and column,
//! and the field path (`vips[1].port`). Checking has two stages, and only the
//! second reports all its problems at once: TOML syntax and the shape serde
//! reads (unknown fields, wrong types, values out of a type's range such as a
//! port of 70000) stop at the first problem, since serde cannot go on past one;
//! a file of the right shape then gets every rule broken (ranges,
//! cross-field rules, duplicates) in one report. Parsing never panics on any
//! input.
//!
//! The commented example `dsrgate.example.toml` at the repository root
//! documents every field and is parsed by this module's tests.

mod validate;
pub(crate) use validate::unusable;
pub mod values;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use values::duration;
pub use values::{Community, LargeCommunity, NextHops, OuterPrefixes, PoolRange};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub daemon: Daemon,
    /// Interfaces, workers, and forwarding options.
    pub dataplane: Dataplane,
    /// The metrics and status listener.
    #[serde(default)]
    pub api: Api,
    /// The BGP speaker; without it nothing is announced.
    #[serde(default)]
    pub bgp: Option<Bgp>,
    /// Service discovery from the Kubernetes API; without it only `vips` exist.
    #[serde(default)]
    pub kubernetes: Option<Kubernetes>,
    /// Statically configured VIPs.
    #[serde(default)]
    pub vips: Vec<Vip>,
    /// What validation accepted but an operator probably did not mean (a VIP without a
    /// health check, ...): `dsrgate check` prints them and the daemon logs them.
    #[serde(skip)]
    pub warnings: Vec<Problem>,
}

/// Process-wide settings; a field left out keeps its [`Default`] value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Daemon {
    /// After SIGTERM: routes are withdrawn first, then the dataplane keeps
    /// forwarding this long so the router converges, then it detaches.
    #[serde(with = "duration")]
    pub drain_time: Duration,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            drain_time: Duration::from_secs(5),
        }
    }
}

/// How the gateway is cabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// One interface: VIP traffic arrives and tunnelled packets leave on it.
    #[default]
    OneArm,
    /// VIP traffic arrives on `upstream_interface`, tunnelled packets leave on
    /// `downstream_interface`.
    TwoArm,
}

/// Interfaces, workers, and forwarding options.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    #[serde(default)]
    pub topology: Topology,
    /// Where VIP traffic arrives (and, one-arm, where encapsulated packets leave).
    pub upstream_interface: String,
    /// Two-arm only: where encapsulated packets leave towards the nodes.
    #[serde(default)]
    pub downstream_interface: Option<String>,
    /// CPU cores for the workers, one worker per RX queue. Empty: one worker
    /// per RX queue, not pinned.
    #[serde(default)]
    pub worker_cores: Vec<usize>,
    /// Entries in each worker's flow table (a power of two). 66 bytes each (a one-line
    /// entry and a 2-byte tag), allocated at start: the default 1,048,576 takes 66 MiB per
    /// worker.
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    #[serde(default)]
    pub maglev: Maglev,
    /// MTU of the path to the nodes; larger inner packets get ICMP
    /// "fragmentation needed" / "packet too big" back.
    #[serde(default = "default_tunnel_mtu")]
    pub tunnel_mtu: u16,
    /// Outer source addresses are taken from these prefixes, one per address
    /// family (hashed from the client), so the nodes' NICs spread tunnelled flows
    /// over their RX queues. Without any, the egress interface's addresses are
    /// used; with some, every backend's family needs one.
    #[serde(default)]
    pub outer_source_prefix: OuterPrefixes,
}

fn default_flow_table_size() -> u32 {
    dataplane::flow::DEFAULT_CAPACITY as u32
}

fn default_tunnel_mtu() -> u16 {
    1500
}

/// Maglev lookup-table parameters. Every gateway announcing a VIP must use the
/// same values, or flows break when the router moves them between gateways. A
/// field left out keeps its [`Default`] value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Maglev {
    /// Table size; a prime, much larger than the number of backends.
    pub m: u32,
    /// Seed of the permutation hashes.
    pub seed: u64,
}

impl Default for Maglev {
    fn default() -> Self {
        Maglev { m: 65537, seed: 0 }
    }
}

/// The HTTP listener for `/metrics` and `/status`; a field left out keeps its
/// [`Default`] value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Api {
    pub listen: SocketAddr,
}

/// The default API address: loopback only.
pub const DEFAULT_API_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9180);

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: DEFAULT_API_LISTEN,
        }
    }
}

/// The BGP speaker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    #[serde(default)]
    pub peers: Vec<Peer>,
}

/// One BGP neighbour.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub address: IpAddr,
    pub remote_as: u32,
    /// The peer's port, or for a passive peer the port it connects to.
    #[serde(default = "default_bgp_port")]
    pub port: u16,
    /// Proposed hold time (RFC 4271 §4.2): 0, or at least 3 s.
    #[serde(default = "default_hold_time", with = "duration")]
    pub hold_time: Duration,
    /// The lowest hold time accepted from the peer (RFC 4271 §4.2 allows refusing on
    /// it): 0 for any, or 3 s up to `hold_time`. A lower proposal, 0 included, is
    /// refused with NOTIFICATION Unacceptable Hold Time.
    #[serde(default, with = "duration")]
    pub min_hold_time: Duration,
    /// Source address of the session, or for a passive peer the address it connects
    /// to; default: chosen by the kernel (passive: every address).
    #[serde(default)]
    pub local_address: Option<IpAddr>,
    /// Wait for the peer to connect instead of connecting.
    #[serde(default)]
    pub passive: bool,
    /// NEXT_HOP of announced VIPs: one address, or one per family for a session that
    /// carries both (MP-BGP). A family without one uses the session's local address
    /// when that is of its family.
    #[serde(default)]
    pub next_hop: NextHops,
    /// TCP MD5 signature key (RFC 2385), at most 80 bytes.
    #[serde(default)]
    pub md5_password: Option<String>,
}

fn default_bgp_port() -> u16 {
    179
}

fn default_hold_time() -> Duration {
    Duration::from_secs(90)
}

/// L4 protocol of a VIP.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Which packet fields pick the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
pub enum HashMode {
    /// Addresses, protocol, and ports.
    #[default]
    #[serde(rename = "5-tuple")]
    FiveTuple,
    /// Addresses and protocol only: all flows of one client go to one node (after a backend
    /// change, its new flows take the new choice; its open ones stay).
    #[serde(rename = "3-tuple")]
    ThreeTuple,
}

/// How packets are tunnelled to the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EncapKind {
    /// IP-in-IP (IPv4 protocol 4 / IPv6 next header 41).
    #[default]
    Ipip,
    /// Generic UDP Encapsulation to `gue_port`.
    Gue,
}

/// The default GUE destination port, as Katran uses.
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// BGP path attributes of one VIP's route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VipBgp {
    pub med: Option<u32>,
    pub communities: Vec<Community>,
    pub large_communities: Vec<LargeCommunity>,
}

impl VipBgp {
    /// Adds `other`'s settings, for services that share one address and so one route: the
    /// lowest MED either sets, and every community of both, each once, in order of first
    /// appearance.
    pub fn merge(&mut self, other: &VipBgp) {
        self.med = match (self.med, other.med) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for c in &other.communities {
            if !self.communities.contains(c) {
                self.communities.push(*c);
            }
        }
        for c in &other.large_communities {
            if !self.large_communities.contains(c) {
                self.large_communities.push(*c);
            }
        }
    }

    /// The attributes of the route for one VIP address with these settings.
    pub fn route_attributes(&self) -> bgp::speaker::RouteAttributes {
        bgp::speaker::RouteAttributes {
            med: self.med,
            communities: self.communities.iter().map(|c| c.0).collect(),
            large_communities: self
                .large_communities
                .iter()
                .map(|l| bgp::wire::LargeCommunity {
                    global: l.0,
                    local1: l.1,
                    local2: l.2,
                })
                .collect(),
        }
    }
}

/// A statically configured VIP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    /// A label for logs and metrics; default: `ADDRESS`.
    #[serde(default)]
    pub name: Option<String>,
    pub address: IpAddr,
    #[serde(default)]
    pub protocol: Protocol,
    /// One port (`port = 80`) ...
    #[serde(default)]
    pub port: Option<u16>,
    /// ... or several (`ports = [80, 443]`); exactly one of the two.
    #[serde(default)]
    pub ports: Option<Vec<u16>>,
    #[serde(default)]
    pub hash: HashMode,
    #[serde(default)]
    pub encap: EncapKind,
    /// GUE only; default 6080.
    #[serde(default)]
    pub gue_port: Option<u16>,
    /// Announce the VIP only while at least this many backends are healthy.
    #[serde(default = "one")]
    pub min_healthy_backends: u32,
    #[serde(default)]
    pub bgp: VipBgp,
    pub backends: Vec<Backend>,
    /// Without a health check every backend counts as healthy.
    #[serde(default)]
    pub health: Option<HealthCheck>,
}

fn one() -> u32 {
    1
}

impl Vip {
    /// The VIP's ports, whichever of `port`/`ports` was written.
    pub fn port_list(&self) -> Vec<u16> {
        match (&self.port, &self.ports) {
            (Some(p), _) => vec![*p],
            (None, Some(ps)) => ps.clone(),
            (None, None) => Vec::new(),
        }
    }
}

/// A node that receives a VIP's traffic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub address: IpAddr,
    /// Relative share of the Maglev table; 0 drains the backend.
    #[serde(default = "one")]
    pub weight: u32,
}

/// Largest accepted backend weight.
pub const MAX_WEIGHT: u32 = 65_535;

/// Probe type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// A TCP connect that completes.
    Tcp,
    /// An HTTP/1.1 GET answered with a 2xx or 3xx status.
    Http,
}

/// An active health check of a static VIP's backends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: ProbeKind,
    /// Default: the VIP's first port.
    #[serde(default)]
    pub port: Option<u16>,
    /// HTTP only; default `/`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
}

impl HealthCheck {
    /// The timing fields as one value.
    pub fn timing(&self) -> Timing {
        Timing {
            interval: self.interval,
            timeout: self.timeout,
            rise: self.rise,
            fall: self.fall,
        }
    }
}

/// When and how often probes run, and how many results flip a state. A field left
/// out keeps its [`Default`] value, the same as [`HealthCheck`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    #[serde(with = "duration")]
    pub interval: Duration,
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Consecutive successes before a backend enters the set.
    pub rise: u32,
    /// Consecutive failures before a backend leaves the set.
    pub fall: u32,
}

impl Timing {
    /// The timing of one probe shared by services that ask for different ones: the
    /// shortest interval and timeout, the most successes to rise, the fewest failures to
    /// fall. It takes a failing node out as soon as the quickest of them would, and the
    /// result does not depend on the order of the services.
    pub fn strictest(self, other: Timing) -> Timing {
        Timing {
            interval: self.interval.min(other.interval),
            timeout: self.timeout.min(other.timeout),
            rise: self.rise.max(other.rise),
            fall: self.fall.min(other.fall),
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            interval: default_interval(),
            timeout: default_timeout(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// Which of a Node's `status.addresses` is the tunnel endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum NodeAddressType {
    #[default]
    InternalIP,
    ExternalIP,
}

impl NodeAddressType {
    /// The `type` string in the Node API object.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAddressType::InternalIP => "InternalIP",
            NodeAddressType::ExternalIP => "ExternalIP",
        }
    }
}

/// Service discovery from the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// A kubeconfig file; without it, in-cluster service-account credentials.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; default: its current context.
    #[serde(default)]
    pub context: Option<String>,
    /// Serve only Services with this `spec.loadBalancerClass`. Without it,
    /// only Services that name no class (those of the default implementation).
    #[serde(default)]
    pub load_balancer_class: Option<String>,
    /// Addresses to assign to Services that have none.
    #[serde(default)]
    pub address_pool: Vec<PoolRange>,
    #[serde(default)]
    pub node_address_type: NodeAddressType,
    /// kube-proxy's health port, probed (`/healthz`) for `Cluster` Services.
    #[serde(default = "default_kube_proxy_health_port")]
    pub kube_proxy_health_port: u16,
    #[serde(default)]
    pub hash: HashMode,
    #[serde(default)]
    pub encap: EncapKind,
    #[serde(default)]
    pub gue_port: Option<u16>,
    #[serde(default = "one")]
    pub min_healthy_backends: u32,
    #[serde(default)]
    pub bgp: VipBgp,
    /// Timing of the node probes.
    #[serde(default)]
    pub health: Timing,
}

fn default_kube_proxy_health_port() -> u16 {
    10256
}

/// Everything that can be wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is in the message and is not a `source`: `{e:#}` (main) would print it
    // twice, and `{e}` (the reload log) not at all.
    #[error("{}: cannot read: {error}", file.display())]
    Io {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{}", Problems(file, problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The individual problems (empty for I/O errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

/// One thing wrong in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column, where known.
    pub location: Option<(usize, usize)>,
    /// Field path such as `vips[1].port`; empty at the document level.
    pub path: String,
    pub message: String,
}

/// Problems (or warnings) of `file`, one per line: `file:line:col: `path`: message`.
pub struct Problems<'a>(pub &'a Path, pub &'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.0.display())?;
            if let Some((line, col)) = p.location {
                write!(f, ":{line}:{col}")?;
            }
            if p.path.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": `{}`: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

/// Reads, parses, and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
        file: path.to_owned(),
        error,
    })?;
    parse(&text, path)
}

/// Parses and validates config text; `file` only names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        file: file.to_owned(),
        problems,
    };
    let doc = match toml::de::DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let location = e.span().map(|s| line_col(text, s.start));
            return Err(invalid(vec![Problem {
                location,
                path: e
                    .span()
                    .map(|s| syntax_path(text, s.start))
                    .unwrap_or_default(),
                message: e.message().trim().to_owned(),
            }]));
        }
    };
    let de = toml::de::Deserializer::from(doc.clone());
    let config: Config = match serde_path_to_error::deserialize(de) {
        Ok(c) => c,
        Err(e) => {
            let path = path_segments(e.path());
            let inner = e.into_inner();
            let span = inner.span().or_else(|| locate(&doc, &path));
            let problem = Problem {
                location: span.map(|s| line_col(text, s.start)),
                path: format_path(&path),
                message: inner.message().trim().to_owned(),
            };
            return Err(invalid(vec![problem]));
        }
    };
    let (found, warned) = validate::validate(&config);
    let problems = |found: validate::Found| {
        found
            .into_iter()
            .map(|(path, message)| Problem {
                location: locate(&doc, &path).map(|s| line_col(text, s.start)),
                path: format_path(&path),
                message,
            })
            .collect()
    };
    if found.is_empty() {
        Ok(Config {
            warnings: problems(warned),
            ..config
        })
    } else {
        Err(invalid(problems(found)))
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

fn path_segments(p: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    p.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

pub(crate) fn format_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The span of the deepest value along `path` that exists in the document
/// (a missing field points at its table).
fn locate(
    doc: &serde_spanned::Spanned<toml::de::DeTable<'_>>,
    path: &[Seg],
) -> Option<std::ops::Range<usize>> {
    use toml::de::DeValue;
    let mut span = doc.span();
    let mut table = Some(doc.get_ref());
    let mut array: Option<&toml::de::DeArray<'_>> = None;
    for seg in path {
        let next = match (seg, table, array) {
            (Seg::Key(k), Some(t), _) => t.get(k.as_str()),
            (Seg::Index(i), _, Some(a)) => a.get(*i),
            _ => None,
        };
        let Some(v) = next else { break };
        span = v.span();
        (table, array) = match v.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(a)),
            _ => (None, None),
        };
    }
    Some(span)
}

/// Best-effort key path of a syntax error at `offset`, read from the table
/// headers above it and the key on its line (the document did not parse, so
/// there is no tree to ask): `vips[1].backends[0].weight`.
fn syntax_path(text: &str, offset: usize) -> String {
    let offset = char_boundary(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let mut table: Vec<String> = Vec::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    let render = |parts: &[String], arrays: &HashMap<String, usize>| {
        let mut out = String::new();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            out.push_str(part);
            if let Some(n) = arrays.get(&parts[..=i].join(".")) {
                out.push_str(&format!("[{}]", n.saturating_sub(1)));
            }
        }
        out
    };
    for line in text[..line_start].lines() {
        let l = line.trim();
        let (array, inner) =
            if let Some(x) = l.strip_prefix("[[").and_then(|x| x.split("]]").next()) {
                (true, x)
            } else if let Some(x) = l.strip_prefix('[').and_then(|x| x.split(']').next()) {
                (false, x)
            } else {
                continue;
            };
        let parts: Vec<String> = inner
            .split('.')
            .map(|p| p.trim().trim_matches('"').to_owned())
            .collect();
        let joined = parts.join(".");
        if array {
            *arrays.entry(joined.clone()).or_insert(0) += 1;
            let nested = format!("{joined}.");
            arrays.retain(|k, _| !k.starts_with(&nested));
        }
        table = parts;
    }
    let mut path = render(&table, &arrays);
    let this_line = text[line_start..].lines().next().unwrap_or("");
    if let Some((key, _)) = this_line.split_once('=') {
        let key = key.trim().trim_matches('"');
        if !key.is_empty() && !key.starts_with('[') && !key.contains(char::is_whitespace) {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
        }
    }
    path
}

/// The char boundary at or before byte `offset` of `text` (parser spans may point
/// anywhere, even past the end).
fn char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests;
