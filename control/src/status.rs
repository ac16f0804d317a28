//! What the daemon reports about itself: the [`Status`] data model that `GET /status`
//! serves as JSON and the `/metrics` collector reads, the client that fetches it, and the
//! tables `dsrgate status` prints.
//!
//! The control loop builds one [`Status`] per tick and stores it in a [`SharedStatus`];
//! readers (the API's threads) only ever see whole, consistent values. Counters in it
//! (packets, bytes, drops, messages) are running totals that never decrease while the
//! daemon runs, since they become Prometheus counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use comfy_table::{CellAlignment, Table};
use serde::{Deserialize, Serialize};

pub use crate::config::Protocol;
use crate::neigh::{NextHop, Resolution};

/// The latest [`Status`], replaced whole by the control loop.
pub type SharedStatus = Arc<ArcSwap<Status>>;

/// A new [`SharedStatus`] holding `status`.
pub fn shared(status: Status) -> SharedStatus {
    Arc::new(ArcSwap::from_pointee(status))
}

/// Everything `dsrgate status` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    pub uptime_secs: u64,
    /// Generation of the snapshot the workers run.
    pub generation: u64,
    /// Why the dataplane cannot forward (which withdraws every VIP), if it cannot.
    pub dataplane_problem: Option<String>,
    /// The uplink's MTU against what the workers receive (`None` from a daemon older than
    /// the field, or before the MTU was first read). Over the limit is a fault that
    /// withdraws nothing: only the larger VIP packets are lost.
    #[serde(default)]
    pub uplink_mtu: Option<UplinkMtu>,
    pub vips: Vec<VipStatus>,
    /// Backend slots of the running snapshot that the backends' `packets` and `bytes`
    /// leave out, because a worker's table of (VIP, backend) pairs is full (it holds a
    /// fixed number of pairs for the worker's lifetime); the most on any one worker.
    /// Above 0, per-backend counts under-count.
    #[serde(default)]
    pub untracked_backends: u64,
    /// Service ports of the running snapshot that the VIPs' `packets` and `bytes` leave out,
    /// because a worker's table of VIPs it has counted is full (it holds twice the
    /// steering limit over the worker's lifetime); the most on any one worker.
    #[serde(default)]
    pub untracked_vips: u64,
    pub peers: Vec<PeerStatus>,
    /// The XDP steering program's verdicts, one entry per uplink it is attached to (empty
    /// from a daemon older than the field, or while its counters cannot be read).
    #[serde(default)]
    pub steering: Vec<SteeringStatus>,
    pub workers: Vec<WorkerStatus>,
    /// How current the Kubernetes view is; absent without `[kubernetes]` (and from a daemon
    /// older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesStatus>,
}

/// The Kubernetes watch: whether this gateway's Kubernetes VIPs follow the API, or are
/// the last good ones kept while it fails (a gateway whose view is stale can choose other
/// backends than its peers). Times are Unix seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesStatus {
    /// Services, EndpointSlices and Nodes have each been listed, and none of their watches
    /// is failing.
    pub synced: bool,
    /// When a list or watch last brought objects, of any of them.
    #[serde(default)]
    pub last_event_unix: Option<u64>,
    /// While not synced: the last error (of a watch, or of building the client).
    #[serde(default)]
    pub error: Option<String>,
    /// When the errors that `error` ends began.
    #[serde(default)]
    pub error_since_unix: Option<u64>,
    /// Errors since the watcher started (a reload that changes `[kubernetes]` starts a new
    /// one).
    #[serde(default)]
    pub errors: u64,
}

/// The uplink's MTU as last read, and the largest the AF_XDP workers receive whole
/// (`XskConfig::max_mtu`). The daemon refuses to start over it; raised past it while
/// running, the kernel drops VIP packets larger than `limit` before any worker sees them
/// (counted in the workers' `rx_dropped`), with no "too big" reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkMtu {
    pub interface: String,
    pub mtu: u32,
    pub limit: u32,
}

impl UplinkMtu {
    pub fn over_limit(&self) -> bool {
        self.mtu > self.limit
    }
}

/// What the XDP steering program on one uplink did with the packets it saw, summed over
/// CPUs since it was attached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SteeringStatus {
    pub interface: String,
    /// VIP traffic handed to a worker's AF_XDP socket.
    pub redirected: u64,
    /// VIP traffic whose RX queue had no socket bound: passed to the kernel.
    pub no_socket: u64,
    /// Traffic not for a VIP service (ARP/ND, BGP, SSH, ...): passed to the kernel.
    pub passed: u64,
    /// Addressed to a VIP but with truncated or inconsistent headers: dropped.
    pub dropped: u64,
    /// VIP traffic dropped because its queue's worker was overloaded (shedding).
    pub shed: u64,
}

impl SteeringStatus {
    /// `(verdict, packets)` in a fixed order: the `verdict` label of
    /// `dsrgate_steering_packets_total`.
    pub fn verdicts(&self) -> [(&'static str, u64); 5] {
        [
            ("redirected", self.redirected),
            ("no_socket", self.no_socket),
            ("passed", self.passed),
            ("dropped", self.dropped),
            ("shed", self.shed),
        ]
    }
}

/// One service: a VIP address, protocol and port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    /// The configured label (default: the address).
    pub name: String,
    pub address: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    /// Whether at least one Established BGP session has been sent the address's host
    /// route (not merely whether the announce policy wants it).
    pub announced: bool,
    /// Why: "announced (2 of 2 sessions)", "wanted; no BGP session up", or the
    /// policy's decision, e.g. "withdrawn: 0 healthy backends, 1 required".
    pub reason: String,
    /// Snapshot generation in which this service's Maglev table last changed.
    pub generation: u64,
    /// Maglev table size M (the denominator of each backend's share).
    pub table_size: u32,
    /// Frames received for this service, and their bytes.
    pub packets: u64,
    pub bytes: u64,
    pub backends: Vec<BackendStatus>,
}

/// Whether a backend passes its health checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

/// One backend (node) of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub health: Health,
    /// The last probe failure, while down.
    pub health_reason: Option<String>,
    pub weight: u32,
    /// Maglev slots this backend holds (of the service's `table_size`).
    pub slots: u32,
    pub next_hop: NextHopStatus,
    /// This gateway has an outer source address of the backend's family. Without one the
    /// backend keeps its Maglev slots (so the tables match the other gateways'), but its
    /// packets are dropped as `no_tunnel_source` and it does not count toward announcing.
    pub tunnel_source: bool,
    /// Frames sent to this backend, and their bytes (after encapsulation).
    pub packets: u64,
    pub bytes: u64,
}

/// The next hop toward a backend, as [`crate::neigh::Resolver`] found it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopStatus {
    /// A MAC address is known: packets to this backend can be sent.
    pub resolved: bool,
    /// The neighbour frames go to (the backend, or its gateway).
    pub via: Option<IpAddr>,
    pub ifindex: Option<u32>,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// Why there is no next hop at all (no route, local address, ...).
    pub error: Option<String>,
}

impl From<&Resolution> for NextHopStatus {
    fn from(r: &Resolution) -> Self {
        match r {
            Ok(NextHop { ifindex, via, mac }) => NextHopStatus {
                resolved: mac.is_some(),
                via: Some(*via),
                ifindex: Some(*ifindex),
                mac: mac.map(format_mac),
                error: None,
            },
            Err(e) => NextHopStatus {
                error: Some(e.to_string()),
                ..NextHopStatus::default()
            },
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// BGP session states (RFC 4271 §8.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl PeerState {
    /// The BGP4-MIB `bgpPeerState` number (idle 1 .. established 6), the value of the
    /// `dsrgate_bgp_session_state` gauge.
    pub fn code(self) -> i64 {
        match self {
            PeerState::Idle => 1,
            PeerState::Connect => 2,
            PeerState::Active => 3,
            PeerState::OpenSent => 4,
            PeerState::OpenConfirm => 5,
            PeerState::Established => 6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PeerState::Idle => "Idle",
            PeerState::Connect => "Connect",
            PeerState::Active => "Active",
            PeerState::OpenSent => "OpenSent",
            PeerState::OpenConfirm => "OpenConfirm",
            PeerState::Established => "Established",
        }
    }
}

/// One BGP neighbour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub remote_as: u32,
    pub state: PeerState,
    /// Seconds since the session was established (`None` while it is not).
    pub uptime_secs: Option<u64>,
    /// The last error, e.g. a NOTIFICATION decoded to text ("received NOTIFICATION:
    /// Cease / Administrative Shutdown") or a connect failure.
    pub last_error: Option<String>,
    pub prefixes_announced: u32,
    pub messages_in: u64,
    pub messages_out: u64,
}

/// XDP attach mode obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver (native) XDP.
    Native,
    /// Generic (SKB) XDP.
    Generic,
}

/// AF_XDP bind mode obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BindMode {
    Copy,
    ZeroCopy,
}

/// One AF_XDP worker (one RX queue).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub interface: String,
    pub queue: u32,
    /// The core it is pinned to, if any.
    pub core: Option<usize>,
    pub xdp_mode: XdpMode,
    pub bind_mode: BindMode,
    pub rx_packets: u64,
    /// Frames put in a TX ring, toward the nodes or back out of the uplink.
    pub tx_packets: u64,
    /// Frames the kernel finished transmitting (from the completion rings): `tx_packets`
    /// less this is frames still queued in the kernel, or lost there.
    #[serde(default)]
    pub completed_packets: u64,
    /// Drops by reason: the dataplane's `DropReason` names, the worker loop's own
    /// (`not_for_a_vip`, `tx_ring_full`, `bad_verdict`), and the kernel's for the socket:
    /// `rx_ring_full` (the worker's RX ring was full) and `rx_dropped` (no free frame in
    /// the fill ring, or a frame larger than a chunk).
    pub drops: BTreeMap<String, u64>,
    pub flow_entries: u64,
    pub flow_capacity: u64,
    pub flow_evictions: u64,
    /// Times the worker fell behind and had the steering program shed its queue's VIP
    /// traffic (the packets shed are in [`SteeringStatus::shed`]).
    #[serde(default)]
    pub shed_starts: u64,
    /// Times the kernel found the fill ring empty when it needed a frame for this socket
    /// (the kernel's `rx_fill_ring_empty_descs`; in copy mode each also drops a frame,
    /// counted under `rx_dropped`).
    #[serde(default)]
    pub fill_ring_empty: u64,
}

impl WorkerStatus {
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// Fetches `/status` from a running daemon's API.
pub fn fetch(api: SocketAddr, timeout: Duration) -> anyhow::Result<Status> {
    let response = crate::api::get(api, "/status", timeout).map_err(|e| {
        if e.get_ref().is_some_and(|e| e.is::<crate::api::NoAnswer>()) {
            anyhow::anyhow!("the dsrgate API at {api}: {e}")
        } else {
            anyhow::anyhow!("cannot reach the dsrgate API at {api}: {e}")
        }
    })?;
    decode(&response).map_err(|e| anyhow::anyhow!("GET http://{api}/status {e}"))
}

/// The status in an answer to `GET /status`, or what is wrong with the answer. Public for
/// the fuzz target: the answer comes from whatever listens at the address given.
pub fn decode(response: &crate::api::HttpResponse) -> anyhow::Result<Status> {
    anyhow::ensure!(
        response.status == 200,
        "answered {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body).trim()
    );
    serde_json::from_slice(&response.body).map_err(|e| anyhow::anyhow!("gave bad JSON: {e}"))
}

/// The tables `dsrgate status` prints.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let dataplane = match &s.dataplane_problem {
        None => "ok".to_owned(),
        Some(p) => format!("DOWN ({p})"),
    };
    let _ = writeln!(
        out,
        "dsrgate {}, up {}, snapshot generation {}, dataplane {}",
        s.version,
        duration(s.uptime_secs),
        s.generation,
        dataplane
    );
    if let Some(k) = &s.kubernetes {
        let _ = writeln!(out, "  {}", kubernetes(k, unix_now()));
    }
    if let Some(m) = s.uplink_mtu.as_ref().filter(|m| m.over_limit()) {
        let _ = writeln!(
            out,
            "  uplink {} has MTU {}, over the {} the AF_XDP workers receive: the kernel drops larger VIP packets (rx_dropped), with no \"too big\" reply",
            m.interface, m.mtu, m.limit
        );
    }

    section(&mut out, "VIPs", vips_table(s));
    if s.untracked_vips > 0 {
        let _ = writeln!(
            out,
            "  {} service ports not counted per VIP (per-VIP table full): PACKETS and BYTES under-count",
            s.untracked_vips
        );
    }
    section(&mut out, "Backends", backends_table(s));
    if s.untracked_backends > 0 {
        let _ = writeln!(
            out,
            "  {} backend slots not counted per backend (per-backend table full): PACKETS and BYTES under-count",
            s.untracked_backends
        );
    }
    section(&mut out, "BGP peers", peers_table(s));
    section(&mut out, "Steering", steering_table(s));
    section(&mut out, "Workers", workers_table(s));
    out
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The status line of the Kubernetes watch, its ages counted to `now` (Unix seconds).
fn kubernetes(k: &KubernetesStatus, now: u64) -> String {
    let ago = |t: u64| format!("{} ago", duration(now.saturating_sub(t)));
    let last = k.last_event_unix.map_or_else(|| "none yet".to_owned(), ago);
    let state = match (k.synced, &k.error) {
        (true, _) => "synced".to_owned(),
        (false, None) => "not synced yet (listing)".to_owned(),
        (false, Some(e)) => {
            let since = k
                .error_since_unix
                .map(|t| format!(" for {}", duration(now.saturating_sub(t))))
                .unwrap_or_default();
            format!("FAILING{since} ({e}), keeping the last good services")
        }
    };
    format!("kubernetes {state}; last event {last}; {} errors", k.errors)
}

fn section(out: &mut String, title: &str, table: Option<Table>) {
    let _ = write!(out, "\n{title}\n");
    match table {
        Some(t) => {
            for line in t.lines() {
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
        None => out.push_str("  (none)\n"),
    }
}

fn table(header: &[&str], right_aligned: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.to_vec());
    for &i in right_aligned {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

fn service(v: &VipStatus) -> String {
    match v.address {
        IpAddr::V4(a) => format!("{a}:{}/{}", v.port, v.protocol),
        IpAddr::V6(a) => format!("[{a}]:{}/{}", v.port, v.protocol),
    }
}

fn vips_table(s: &Status) -> Option<Table> {
    if s.vips.is_empty() {
        return None;
    }
    let mut t = table(
        &[
            "SERVICE",
            "NAME",
            "ANNOUNCED",
            "UP",
            "GEN",
            "PACKETS",
            "BYTES",
            "REASON",
        ],
        &[3, 4, 5, 6],
    );
    for v in &s.vips {
        let up = v.backends.iter().filter(|b| b.health == Health::Up).count();
        t.add_row(vec![
            service(v),
            v.name.clone(),
            yes_no(v.announced).to_owned(),
            format!("{up}/{}", v.backends.len()),
            v.generation.to_string(),
            v.packets.to_string(),
            bytes(v.bytes),
            v.reason.clone(),
        ]);
    }
    Some(t)
}

fn backends_table(s: &Status) -> Option<Table> {
    if s.vips.iter().all(|v| v.backends.is_empty()) {
        return None;
    }
    let mut t = table(
        &[
            "SERVICE", "BACKEND", "HEALTH", "WEIGHT", "SHARE", "NEXT HOP", "PACKETS", "BYTES",
        ],
        &[3, 4, 6, 7],
    );
    for v in &s.vips {
        for b in &v.backends {
            let health = match (&b.health, &b.health_reason) {
                (Health::Up, _) => "up".to_owned(),
                (Health::Down, None) => "down".to_owned(),
                (Health::Down, Some(why)) => format!("down ({why})"),
            };
            t.add_row(vec![
                service(v),
                b.address.to_string(),
                health,
                b.weight.to_string(),
                share(b.slots, v.table_size),
                if b.tunnel_source {
                    next_hop(&b.next_hop)
                } else {
                    no_source(b.address)
                },
                b.packets.to_string(),
                bytes(b.bytes),
            ]);
        }
    }
    Some(t)
}

fn peers_table(s: &Status) -> Option<Table> {
    if s.peers.is_empty() {
        return None;
    }
    let mut t = table(
        &[
            "PEER",
            "AS",
            "STATE",
            "UPTIME",
            "PREFIXES",
            "MSGS IN",
            "MSGS OUT",
            "LAST ERROR",
        ],
        &[1, 3, 4, 5, 6],
    );
    for p in &s.peers {
        t.add_row(vec![
            p.address.to_string(),
            p.remote_as.to_string(),
            p.state.name().to_owned(),
            p.uptime_secs.map(duration).unwrap_or_else(|| "-".into()),
            p.prefixes_announced.to_string(),
            p.messages_in.to_string(),
            p.messages_out.to_string(),
            p.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    Some(t)
}

fn steering_table(s: &Status) -> Option<Table> {
    if s.steering.is_empty() {
        return None;
    }
    let mut t = table(
        &[
            "INTERFACE",
            "REDIRECTED",
            "NO SOCKET",
            "PASSED",
            "DROPPED",
            "SHED",
        ],
        &[1, 2, 3, 4, 5],
    );
    for st in &s.steering {
        let mut row = vec![st.interface.clone()];
        row.extend(st.verdicts().iter().map(|(_, n)| n.to_string()));
        t.add_row(row);
    }
    Some(t)
}

fn workers_table(s: &Status) -> Option<Table> {
    if s.workers.is_empty() {
        return None;
    }
    let mut t = table(
        &[
            "INTERFACE",
            "QUEUE",
            "CORE",
            "MODE",
            "RX",
            "TX",
            "COMPLETED",
            "DROPS",
            "SHED STARTS",
            "FLOWS",
        ],
        &[1, 2, 4, 5, 6, 7, 8, 9],
    );
    for w in &s.workers {
        let xdp = match w.xdp_mode {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        };
        let bind = match w.bind_mode {
            BindMode::Copy => "copy",
            BindMode::ZeroCopy => "zero-copy",
        };
        t.add_row(vec![
            w.interface.clone(),
            w.queue.to_string(),
            w.core.map_or_else(|| "-".into(), |c| c.to_string()),
            format!("{xdp}/{bind}"),
            w.rx_packets.to_string(),
            w.tx_packets.to_string(),
            w.completed_packets.to_string(),
            w.total_drops().to_string(),
            w.shed_starts.to_string(),
            format!("{}/{}", w.flow_entries, w.flow_capacity),
        ]);
    }
    Some(t)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn next_hop(n: &NextHopStatus) -> String {
    match (&n.error, n.via, &n.mac) {
        (Some(e), _, _) => e.clone(),
        (None, Some(via), Some(mac)) => format!("{via} {mac}"),
        (None, Some(via), None) => format!("{via} unresolved"),
        (None, None, _) => "unresolved".into(),
    }
}

/// Said instead of the next hop of a backend this gateway has no outer source for.
fn no_source(backend: IpAddr) -> String {
    let family = if backend.is_ipv4() { "IPv4" } else { "IPv6" };
    format!("no outer {family} source: dropped")
}

/// `33.3%` of the table.
fn share(slots: u32, table_size: u32) -> String {
    if table_size == 0 {
        return "-".into();
    }
    format!("{:.1}%", f64::from(slots) * 100.0 / f64::from(table_size))
}

/// `3d04h`, `2h05m`, `4m07s`, `9s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Binary units with one decimal: `512 B`, `1.5 KiB`, `3.2 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A listener that accepts and never answers was "cannot reach ...: Resource
    /// temporarily unavailable (os error 11)", about an address it did reach.
    #[test]
    fn an_api_that_never_answers_is_told_from_one_that_cannot_be_reached() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = std::thread::spawn(move || listener.accept().map(|(conn, _)| conn));
        let err = fetch(addr, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("the dsrgate API at {addr}: connected, but no complete answer within 300ms")
        );
        drop(held.join());
        // Nothing listening: not reached.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let err = fetch(addr, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot reach the dsrgate API at {addr}: ")),
            "{err}"
        );
    }

    /// A status with every kind of row: two services (one withdrawn), an unresolved next
    /// hop, an established and a failed BGP session, two workers, an uplink MTU over the
    /// limit.
    pub(crate) fn sample() -> Status {
        let hop = |via: &str, mac: Option<&str>| NextHopStatus {
            resolved: mac.is_some(),
            via: Some(via.parse().unwrap()),
            ifindex: Some(2),
            mac: mac.map(str::to_owned),
            error: None,
        };
        Status {
            version: "0.1.0".into(),
            uptime_secs: 3723,
            generation: 42,
            dataplane_problem: None,
            uplink_mtu: Some(UplinkMtu {
                interface: "eth0".into(),
                mtu: 4000,
                limit: 3758,
            }),
            vips: vec![
                VipStatus {
                    name: "web".into(),
                    address: "192.0.2.10".parse().unwrap(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    announced: true,
                    reason: "announced".into(),
                    generation: 41,
                    table_size: 65537,
                    packets: 123456,
                    bytes: 98765432,
                    backends: vec![
                        BackendStatus {
                            address: "198.51.100.11".parse().unwrap(),
                            health: Health::Up,
                            health_reason: None,
                            weight: 1,
                            slots: 32769,
                            next_hop: hop("198.51.100.11", Some("02:00:00:00:00:0b")),
                            tunnel_source: true,
                            packets: 61728,
                            bytes: 50000000,
                        },
                        BackendStatus {
                            address: "198.51.100.12".parse().unwrap(),
                            health: Health::Up,
                            health_reason: None,
                            weight: 1,
                            slots: 32768,
                            next_hop: hop("198.51.100.1", None),
                            tunnel_source: true,
                            packets: 0,
                            bytes: 0,
                        },
                        BackendStatus {
                            address: "198.51.100.13".parse().unwrap(),
                            health: Health::Down,
                            health_reason: Some("connection refused".into()),
                            weight: 1,
                            slots: 0,
                            next_hop: NextHopStatus {
                                error: Some(
                                    "no route: Network is unreachable (os error 101)".into(),
                                ),
                                ..NextHopStatus::default()
                            },
                            tunnel_source: true,
                            packets: 7,
                            bytes: 700,
                        },
                    ],
                },
                VipStatus {
                    name: "dns6".into(),
                    address: "2001:db8:100::10".parse().unwrap(),
                    protocol: Protocol::Udp,
                    port: 53,
                    announced: false,
                    reason: "withdrawn: 0 healthy backends, 1 required".into(),
                    generation: 40,
                    table_size: 65537,
                    packets: 0,
                    bytes: 0,
                    backends: vec![BackendStatus {
                        address: "2001:db8::13".parse().unwrap(),
                        health: Health::Up,
                        health_reason: None,
                        weight: 1,
                        slots: 65537,
                        next_hop: hop("2001:db8::13", Some("02:00:00:00:00:0d")),
                        tunnel_source: false,
                        packets: 0,
                        bytes: 0,
                    }],
                },
            ],
            untracked_backends: 3,
            untracked_vips: 2,
            peers: vec![
                PeerStatus {
                    address: "198.51.100.1".parse().unwrap(),
                    remote_as: 64512,
                    state: PeerState::Established,
                    uptime_secs: Some(3600),
                    last_error: None,
                    prefixes_announced: 1,
                    messages_in: 130,
                    messages_out: 128,
                },
                PeerStatus {
                    address: "2001:db8:f::1".parse().unwrap(),
                    remote_as: 64512,
                    state: PeerState::Active,
                    uptime_secs: None,
                    last_error: Some(
                        "received NOTIFICATION: Cease / Administrative Shutdown".into(),
                    ),
                    prefixes_announced: 0,
                    messages_in: 3,
                    messages_out: 4,
                },
            ],
            steering: vec![SteeringStatus {
                interface: "eth0".into(),
                redirected: 123463,
                no_socket: 2,
                passed: 5012,
                dropped: 1,
                shed: 640,
            }],
            workers: vec![
                WorkerStatus {
                    interface: "eth0".into(),
                    queue: 0,
                    core: Some(1),
                    xdp_mode: XdpMode::Native,
                    bind_mode: BindMode::Copy,
                    rx_packets: 100000,
                    tx_packets: 99990,
                    completed_packets: 99982,
                    drops: [
                        ("no_next_hop".to_owned(), 7),
                        ("truncated".to_owned(), 3),
                        ("rx_ring_full".to_owned(), 11),
                    ]
                    .into(),
                    flow_entries: 812,
                    flow_capacity: 65536,
                    flow_evictions: 2,
                    shed_starts: 4,
                    fill_ring_empty: 9,
                },
                WorkerStatus {
                    interface: "eth0".into(),
                    queue: 1,
                    core: None,
                    xdp_mode: XdpMode::Generic,
                    bind_mode: BindMode::ZeroCopy,
                    rx_packets: 23456,
                    tx_packets: 23456,
                    completed_packets: 23456,
                    drops: BTreeMap::new(),
                    flow_entries: 0,
                    flow_capacity: 65536,
                    flow_evictions: 0,
                    shed_starts: 0,
                    fill_ring_empty: 0,
                },
            ],
            kubernetes: None,
        }
    }

    #[test]
    fn renders_aligned_tables() {
        let golden = "\
dsrgate 0.1.0, up 1h02m, snapshot generation 42, dataplane ok
  uplink eth0 has MTU 4000, over the 3758 the AF_XDP workers receive: the kernel drops larger VIP packets (rx_dropped), with no \"too big\" reply

VIPs
 SERVICE                    NAME  ANNOUNCED   UP  GEN  PACKETS     BYTES  REASON
 192.0.2.10:80/tcp          web   yes        2/3   41   123456  94.2 MiB  announced
 [2001:db8:100::10]:53/udp  dns6  no         1/1   40        0       0 B  withdrawn: 0 healthy backends, 1 required
  2 service ports not counted per VIP (per-VIP table full): PACKETS and BYTES under-count

Backends
 SERVICE                    BACKEND        HEALTH                     WEIGHT   SHARE  NEXT HOP                                         PACKETS     BYTES
 192.0.2.10:80/tcp          198.51.100.11  up                              1   50.0%  198.51.100.11 02:00:00:00:00:0b                    61728  47.7 MiB
 192.0.2.10:80/tcp          198.51.100.12  up                              1   50.0%  198.51.100.1 unresolved                                0       0 B
 192.0.2.10:80/tcp          198.51.100.13  down (connection refused)       1    0.0%  no route: Network is unreachable (os error 101)        7     700 B
 [2001:db8:100::10]:53/udp  2001:db8::13   up                              1  100.0%  no outer IPv6 source: dropped                          0       0 B
  3 backend slots not counted per backend (per-backend table full): PACKETS and BYTES under-count

BGP peers
 PEER              AS  STATE        UPTIME  PREFIXES  MSGS IN  MSGS OUT  LAST ERROR
 198.51.100.1   64512  Established   1h00m         1      130       128  -
 2001:db8:f::1  64512  Active            -         0        3         4  received NOTIFICATION: Cease / Administrative Shutdown

Steering
 INTERFACE  REDIRECTED  NO SOCKET  PASSED  DROPPED  SHED
 eth0           123463          2    5012        1   640

Workers
 INTERFACE  QUEUE  CORE  MODE                   RX     TX  COMPLETED  DROPS  SHED STARTS      FLOWS
 eth0           0     1  native/copy        100000  99990      99982     21            4  812/65536
 eth0           1     -  generic/zero-copy   23456  23456      23456      0            0    0/65536
";
        let got = render(&sample());
        assert_eq!(got, golden, "got:\n{got}");
    }

    #[test]
    fn renders_an_empty_daemon() {
        let s = Status {
            version: "0.1.0".into(),
            dataplane_problem: Some("XDP program detached from eth0".into()),
            // At the limit: fits, so not mentioned.
            uplink_mtu: Some(UplinkMtu {
                interface: "eth0".into(),
                mtu: 3758,
                limit: 3758,
            }),
            ..Status::default()
        };
        assert_eq!(
            render(&s),
            "dsrgate 0.1.0, up 0s, snapshot generation 0, dataplane DOWN (XDP program detached from eth0)\n\
             \nVIPs\n  (none)\n\nBackends\n  (none)\n\nBGP peers\n  (none)\n\nSteering\n  (none)\n\nWorkers\n  (none)\n"
        );
    }

    #[test]
    fn json_round_trip_and_field_names() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["vips"][0]["protocol"], "tcp");
        assert_eq!(v["vips"][0]["backends"][2]["health"], "down");
        assert_eq!(v["peers"][0]["state"], "established");
        assert_eq!(v["workers"][1]["bind_mode"], "zero-copy");
        assert_eq!(v["workers"][0]["drops"]["no_next_hop"], 7);
        assert_eq!(v["untracked_backends"], 3);
        assert_eq!(v["untracked_vips"], 2);
        assert_eq!(v["steering"][0]["interface"], "eth0");
        assert_eq!(v["steering"][0]["shed"], 640);
        assert_eq!(v["steering"][0]["no_socket"], 2);
        assert_eq!(v["workers"][0]["shed_starts"], 4);
        assert_eq!(v["workers"][0]["fill_ring_empty"], 9);
        assert_eq!(v["workers"][0]["drops"]["rx_ring_full"], 11);
        assert_eq!(v["workers"][0]["completed_packets"], 99982);
        assert_eq!(
            v["uplink_mtu"],
            serde_json::json!({"interface": "eth0", "mtu": 4000, "limit": 3758})
        );
        // A daemon from before these fields existed: they read as 0 or empty.
        let mut old = v.clone();
        let o = old.as_object_mut().unwrap();
        o.remove("untracked_backends");
        o.remove("steering");
        o.remove("uplink_mtu");
        for w in o["workers"].as_array_mut().unwrap() {
            let w = w.as_object_mut().unwrap();
            w.remove("shed_starts");
            w.remove("fill_ring_empty");
            w.remove("completed_packets");
        }
        let old: Status = serde_json::from_value(old).unwrap();
        assert_eq!(old.untracked_backends, 0);
        assert!(old.steering.is_empty());
        assert_eq!(old.uplink_mtu, None);
        assert!(old
            .workers
            .iter()
            .all(|w| w.shed_starts == 0 && w.fill_ring_empty == 0 && w.completed_packets == 0));
        // Rendered without a Steering table or an MTU line, and without failing.
        let text = render(&old);
        assert!(text.contains("\nSteering\n  (none)\n"), "{text}");
        assert!(!text.contains("has MTU"), "{text}");
    }

    /// A gateway whose Kubernetes watch fails says so in its status line, with the error and
    /// since when, as one that is still listing or synced does.
    #[test]
    fn renders_the_kubernetes_watch() {
        let now = 1_800_000_000;
        let failing = KubernetesStatus {
            synced: false,
            last_event_unix: Some(now - 3723),
            error: Some("watching services: 403 Forbidden".into()),
            error_since_unix: Some(now - 125),
            errors: 7,
        };
        assert_eq!(
            kubernetes(&failing, now),
            "kubernetes FAILING for 2m05s (watching services: 403 Forbidden), keeping the last \
             good services; last event 1h02m ago; 7 errors"
        );
        let listing = KubernetesStatus::default();
        assert_eq!(
            kubernetes(&listing, now),
            "kubernetes not synced yet (listing); last event none yet; 0 errors"
        );
        let synced = KubernetesStatus {
            synced: true,
            last_event_unix: Some(now - 4),
            errors: 7,
            ..failing.clone()
        };
        assert_eq!(
            kubernetes(&synced, now),
            "kubernetes synced; last event 4s ago; 7 errors"
        );
        // The line goes under the first, only with `[kubernetes]`.
        let mut s = sample();
        assert!(!render(&s).contains("kubernetes"));
        s.kubernetes = Some(failing);
        let text = render(&s);
        let second = text.lines().nth(1).unwrap();
        assert!(
            second.starts_with("  kubernetes FAILING for ") && second.contains("403 Forbidden"),
            "{text}"
        );
    }

    /// `kubernetes` is absent without `[kubernetes]`, and reads as absent from a daemon
    /// older than it.
    #[test]
    fn kubernetes_json() {
        let mut s = sample();
        let v = serde_json::to_value(&s).unwrap();
        assert!(v.get("kubernetes").is_none(), "{v}");
        assert_eq!(serde_json::from_value::<Status>(v).unwrap(), s);
        s.kubernetes = Some(KubernetesStatus {
            synced: false,
            last_event_unix: Some(1_800_000_000),
            error: Some("watching nodes: 500".into()),
            error_since_unix: Some(1_800_000_100),
            errors: 3,
        });
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v["kubernetes"],
            serde_json::json!({"synced": false, "last_event_unix": 1_800_000_000u64,
                "error": "watching nodes: 500", "error_since_unix": 1_800_000_100u64, "errors": 3})
        );
        assert_eq!(serde_json::from_value::<Status>(v).unwrap(), s);
        let minimal = serde_json::json!({"synced": true});
        assert_eq!(
            serde_json::from_value::<KubernetesStatus>(minimal).unwrap(),
            KubernetesStatus {
                synced: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn next_hop_status_from_resolution() {
        use crate::neigh::RouteError;
        let ok: Resolution = Ok(NextHop {
            ifindex: 3,
            via: "10.0.0.1".parse().unwrap(),
            mac: Some([2, 0, 0, 0, 0, 0xab]),
        });
        let n = NextHopStatus::from(&ok);
        assert!(n.resolved);
        assert_eq!(n.mac.as_deref(), Some("02:00:00:00:00:ab"));
        assert_eq!(n.ifindex, Some(3));
        let none: Resolution = Ok(NextHop {
            mac: None,
            ..ok.clone().unwrap()
        });
        assert!(!NextHopStatus::from(&none).resolved);
        let err: Resolution = Err(RouteError::Local);
        let n = NextHopStatus::from(&err);
        assert!(!n.resolved);
        assert_eq!(
            n.error.as_deref(),
            Some("the address is local to the gateway")
        );
    }

    #[test]
    fn units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m01s");
        assert_eq!(duration(90061), "1d01h");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(share(1, 3), "33.3%");
        assert_eq!(share(1, 0), "-");
    }
}
