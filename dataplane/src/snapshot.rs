//! The immutable configuration the workers read: VIPs, their Maglev tables, next hops, MTU.
//!
//! The control plane builds a [`Snapshot`] from a [`SnapshotConfig`] off the hot path
//! ([`Snapshot::new`] does every expensive step: validation, Maglev builds, the VIP hash
//! table) and publishes it; a worker loads it once per batch and only reads it.
//!
//! Indices: VIP `i` is `config.vips[i]`; its backends occupy the flat slots
//! `vip(i).backends()`, in the order of [`MaglevTable::backends`] (sorted by address). The
//! workers' per-VIP and per-backend counters use these indices, so a publisher that wants
//! counters to stay comparable across generations keeps the VIP order stable.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use crate::maglev::{self, Backend, MaglevTable};
use crate::pipeline::OuterTemplate;

/// Transport protocol of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// `tcp` or `udp`, as in config files and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A virtual service: address, protocol, port (never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: IpAddr,
    pub proto: Proto,
    pub port: u16,
}

impl fmt::Display for VipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.proto.name();
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}/{p}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{p}", self.port),
        }
    }
}

/// Which fields of a packet pick its backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HashMode {
    /// Source and destination address and port, and protocol: connections spread.
    #[default]
    FiveTuple,
    /// Source and destination address and protocol (both ports are ignored): all of a
    /// client's connections to this VIP go to one backend, and to the same one on the
    /// address's other 3-tuple ports with the same backends (they have the same table). Only
    /// the Maglev pick ignores the ports: each connection keeps its own flow entry, so when
    /// the table changes the client's open connections stay where they are and its new ones
    /// take the new choice.
    ThreeTuple,
}

/// How packets for a VIP are carried to the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encap {
    /// Plain IP-in-IP: IPv4-in-IPv4, IPv6-in-IPv6 or IPv4-in-IPv6 by the backend's family.
    #[default]
    IpIp,
    /// IP in GUE (UDP to `port`, then the 4-byte GUE header), for networks that only ECMP
    /// or pass UDP.
    Gue { port: u16 },
}

/// One backend of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub addr: IpAddr,
    /// Relative share of new flows; 0 means draining (no new flows, existing flows stay).
    pub weight: u32,
}

/// One VIP and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipConfig {
    pub key: VipKey,
    pub backends: Vec<BackendConfig>,
    pub hash: HashMode,
    pub encap: Encap,
}

/// An outer-source prefix: the high `len` bits come from `addr`, the rest from the flow hash,
/// so a backend's RSS spreads flows over its queues. `len` 32 (or 128) is a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePrefix<A> {
    pub addr: A,
    pub len: u8,
}

/// Everything a snapshot is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Identifies this snapshot; the publisher increments it on every change.
    pub generation: u64,
    pub vips: Vec<VipConfig>,
    /// Maglev table size M (a prime); [`maglev::DEFAULT_TABLE_SIZE`] by default.
    pub maglev_size: u32,
    /// Seed of the Maglev permutations. Every gateway announcing the same VIPs must use the
    /// same value, or they pick different backends for one flow.
    pub maglev_seed: u64,
    /// Seed of the flow hash that picks the Maglev slot. Same rule as `maglev_seed`. A worker
    /// keys its flow table by the first snapshot's, for its life, so a change moves no
    /// recorded flow (see [`crate::pipeline`]'s "Hash and fragments").
    pub hash_seed: u64,
    /// Largest outer packet (IP header included) the path to the nodes carries.
    pub tunnel_mtu: u16,
    /// Outer source for IPv4 tunnels. Without it, IPv4 backends keep their places in the
    /// Maglev tables (every gateway must build the same ones, and whether this one has a
    /// source is its own matter) but their packets are dropped as `no_tunnel_source`.
    pub outer_src_v4: Option<SourcePrefix<Ipv4Addr>>,
    /// Outer source for IPv6 tunnels; the same rule for IPv6 backends.
    pub outer_src_v6: Option<SourcePrefix<Ipv6Addr>>,
    /// Source MAC of frames sent toward the nodes.
    pub local_mac: [u8; 6],
    /// Next-hop MAC per backend address, as resolved by the control side. A backend with no
    /// entry is unresolved: packets for it are dropped and counted.
    pub next_hops: HashMap<IpAddr, [u8; 6]>,
    /// 802.1Q VLAN ID of frames sent toward the nodes; `None` sends them untagged.
    pub egress_vlan: Option<u16>,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            generation: 0,
            vips: Vec::new(),
            maglev_size: maglev::DEFAULT_TABLE_SIZE,
            maglev_seed: 0,
            hash_seed: 0,
            tunnel_mtu: 1500,
            outer_src_v4: None,
            outer_src_v6: None,
            local_mac: [0; 6],
            next_hops: HashMap::new(),
            egress_vlan: None,
        }
    }
}

/// Why a configuration cannot become a snapshot. Each names the offending field or VIP.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("vip {0}: port 0 is not a valid service port")]
    PortZero(VipKey),
    #[error("vip {0}: address must be unicast")]
    BadVipAddr(VipKey),
    #[error("vip {0}: an IPv4-mapped IPv6 address (::ffff:0:0/96) is never a destination on the wire; write the IPv4 address")]
    MappedVipAddr(VipKey),
    #[error("vip {vip}: backend {addr} is an IPv4-mapped IPv6 address (::ffff:0:0/96), never a destination on the wire; write the IPv4 address")]
    MappedBackend { vip: VipKey, addr: IpAddr },
    #[error("vip {0} is configured twice")]
    DuplicateVip(VipKey),
    #[error("vip {vip}: backend {addr} is listed twice")]
    DuplicateBackend { vip: VipKey, addr: IpAddr },
    #[error(
        "vip {vip}: backend {addr} is IPv4 but the vip is IPv6 (IPv6-in-IPv4 is not supported)"
    )]
    FamilyMismatch { vip: VipKey, addr: IpAddr },
    #[error("vip {vip}: maglev: {msg}")]
    Maglev { vip: VipKey, msg: String },
    #[error("outer_src_{family}: prefix length {len} is out of range")]
    BadPrefix { family: &'static str, len: u8 },
    #[error("tunnel_mtu {mtu}: after {overhead} bytes of encapsulation an inner {family} packet would be below its minimum MTU {min}")]
    MtuTooSmall {
        mtu: u16,
        overhead: u16,
        family: &'static str,
        min: u16,
    },
    #[error("egress_vlan {0}: must be 1..=4094")]
    BadVlan(u16),
    #[error("gue port 0 on vip {0}")]
    GuePortZero(VipKey),
    #[error("too many vips or backends ({0}); the limit is 2^31")]
    TooMany(usize),
}

/// A backend slot, flat over all VIPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSlot {
    /// The node address, IPv4-mapped if IPv4.
    pub addr: [u8; 16],
    pub is_v4: bool,
    pub weight: u32,
    /// Resolved next-hop MAC, or `None` while unresolved, and always `None` when there is no
    /// outer source of its family (`sourced` false), so that the hot path checks one field.
    pub mac: Option<[u8; 6]>,
    /// Whether an outer source address of its family is configured.
    pub sourced: bool,
    /// The IP-in-IP outer headers toward it, when its VIP uses IP-in-IP and `mac` is known.
    pub(crate) outer: Option<OuterTemplate>,
}

/// One VIP inside a snapshot.
pub struct Vip {
    pub key: VipKey,
    pub hash: HashMode,
    pub encap: Encap,
    maglev: MaglevTable,
    backends: Range<u32>,
}

impl Vip {
    /// Its flat backend slots in the snapshot, in Maglev index order.
    pub fn backends(&self) -> Range<u32> {
        self.backends.clone()
    }

    pub fn maglev(&self) -> &MaglevTable {
        &self.maglev
    }
}

/// An outer source prefix as masks over the address bits.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SrcBits {
    pub(crate) base: u128,
    pub(crate) host_mask: u128,
}

impl SrcBits {
    /// The source address for a flow hash. For IPv4 prefixes with more than two addresses
    /// the all-zeros and all-ones host parts (network and broadcast) are avoided, since
    /// receivers drop those as martians.
    #[inline]
    pub(crate) fn pick(&self, hash: u64, v4: bool) -> u128 {
        if v4 {
            // An IPv4 host part fits in 32 bits: the low half of the hash, clamped off the
            // two reserved values, in 32-bit arithmetic (this runs once per packet).
            let mask = self.host_mask as u32;
            let mut host = hash as u32 & mask;
            if mask > 1 {
                host = host.max(1).min(mask - 1);
            }
            return self.base | u128::from(host);
        }
        let spread = (hash as u128) | ((hash.rotate_left(32) as u128) << 64);
        self.base | (spread & self.host_mask)
    }
}

/// The VIP lookup table: open addressing over (address, protocol, port).
#[derive(Clone, Copy, Default)]
struct VipSlot {
    addr: [u8; 16],
    port: u16,
    proto: u8,
    used: bool,
    vip: u32,
}

/// Protocol value marking an "address is a VIP address" entry (port 0).
const ANY_PROTO: u8 = 0;

/// The immutable configuration a worker reads. See the module docs.
pub struct Snapshot {
    generation: u64,
    vips: Vec<Vip>,
    backends: Vec<BackendSlot>,
    table: Box<[VipSlot]>,
    table_mask: usize,
    pub(crate) hash_seed: u64,
    maglev_seed: u64,
    /// VIP key → index in `vips`.
    index: HashMap<VipKey, usize>,
    pub(crate) tunnel_mtu: u16,
    pub(crate) src_v4: SrcBits,
    pub(crate) src_v6: SrcBits,
    pub(crate) local_mac: [u8; 6],
    pub(crate) egress_vlan: Option<u16>,
}

/// Bytes one encapsulation adds in front of the inner IP packet, not counting Ethernet.
pub fn encap_overhead(outer_v6: bool, encap: Encap) -> usize {
    let ip = if outer_v6 {
        crate::wire::IPV6_HEADER_LEN
    } else {
        crate::wire::IPV4_HEADER_LEN
    };
    match encap {
        Encap::IpIp => ip,
        Encap::Gue { .. } => ip + crate::wire::UDP_HEADER_LEN + crate::wire::gue::HEADER_LEN,
    }
}

/// RFC 791: the smallest MTU of an IPv4 link (every IPv4 module forwards 68-octet datagrams
/// unfragmented).
pub const IPV4_MIN_MTU: u16 = 68;
/// RFC 8200 §5: the smallest MTU of an IPv6 link.
pub const IPV6_MIN_MTU: u16 = 1280;

/// The smallest `tunnel_mtu` a VIP of the inner family can use toward a backend of the outer
/// family with `encap` ([`Snapshot::new`] refuses less): the inner family's minimum MTU
/// ([`IPV4_MIN_MTU`], [`IPV6_MIN_MTU`]) plus [`encap_overhead`]. A GUE port does not count.
pub fn min_tunnel_mtu(inner_v6: bool, outer_v6: bool, encap: Encap) -> u16 {
    let min = if inner_v6 { IPV6_MIN_MTU } else { IPV4_MIN_MTU };
    min.saturating_add(encap_overhead(outer_v6, encap) as u16)
}

/// An IPv6 address in `::ffff:0:0/96`, the IPv4-mapped block (RFC 4291 §2.5.5.2).
fn is_mapped_v6(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

pub(crate) fn mapped(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[inline]
fn slot_hash(addr: &[u8; 16], proto: u8, port: u16) -> u64 {
    let a = u64::from_le_bytes(addr[0..8].try_into().unwrap_or_default());
    let b = u64::from_le_bytes(addr[8..16].try_into().unwrap_or_default());
    let x = a ^ b.rotate_left(23) ^ (u64::from(port) << 8 | u64::from(proto)).rotate_left(47);
    crate::flow::fold_mul(x ^ 0x9e37_79b9_7f4a_7c15, 0xbf58_476d_1ce4_e5b9)
}

fn src_bits<const BITS: u32>(
    p: Option<(u128, u8)>,
    family: &'static str,
) -> Result<SrcBits, SnapshotError> {
    let Some((addr, len)) = p else {
        return Ok(SrcBits::default());
    };
    if u32::from(len) > BITS || len == 0 {
        return Err(SnapshotError::BadPrefix { family, len });
    }
    let host_bits = BITS - u32::from(len);
    let host_mask = if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    };
    let base = if BITS == 32 {
        // IPv4 is stored v4-mapped: ::ffff:a.b.c.d.
        (0xffffu128 << 32) | (addr & !host_mask)
    } else {
        addr & !host_mask
    };
    Ok(SrcBits { base, host_mask })
}

impl Snapshot {
    /// Validates `cfg` and builds everything the workers need. Errors name the field or VIP.
    pub fn new(cfg: &SnapshotConfig) -> Result<Snapshot, SnapshotError> {
        Snapshot::rebuild(cfg, None)
    }

    /// As [`Snapshot::new`], but a VIP whose backends (addresses and weights), table size and
    /// seed are unchanged since `prev` shares `prev`'s Maglev table ([`MaglevTable::shares`])
    /// instead of building or copying it: a publisher with many VIPs pays only for the ones
    /// that changed.
    pub fn rebuild(
        cfg: &SnapshotConfig,
        prev: Option<&Snapshot>,
    ) -> Result<Snapshot, SnapshotError> {
        if let Some(v) = cfg.egress_vlan {
            if v == 0 || v >= 4095 {
                return Err(SnapshotError::BadVlan(v));
            }
        }
        let src_v4 = src_bits::<32>(
            cfg.outer_src_v4
                .map(|p| (u128::from(u32::from(p.addr)), p.len)),
            "v4",
        )?;
        let src_v6 = src_bits::<128>(cfg.outer_src_v6.map(|p| (u128::from(p.addr), p.len)), "v6")?;
        let total_backends: usize = cfg.vips.iter().map(|v| v.backends.len()).sum();
        for n in [cfg.vips.len(), total_backends] {
            if n > i32::MAX as usize {
                return Err(SnapshotError::TooMany(n));
            }
        }

        let mut vips = Vec::with_capacity(cfg.vips.len());
        let mut backends = Vec::with_capacity(total_backends);
        let mut seen = HashMap::new();
        // One VIP's backend addresses so far: a set, as a service may have thousands of
        // backends and many ports (a scan of the list per backend was quadratic, about a
        // second a publish for 5,000 nodes on 40 ports). Reused from VIP to VIP.
        let mut vip_backends = HashSet::new();
        for (i, v) in cfg.vips.iter().enumerate() {
            let key = v.key;
            if key.port == 0 {
                return Err(SnapshotError::PortZero(key));
            }
            let unicast = match key.addr {
                IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
                IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
            };
            if !unicast {
                return Err(SnapshotError::BadVipAddr(key));
            }
            // IPv4 addresses are keyed IPv4-mapped, so `::ffff:a.b.c.d` would be the IPv4
            // VIP's key; and no packet is addressed to one (RFC 4291 §2.5.5.2): refused
            // rather than taken as either.
            if is_mapped_v6(key.addr) {
                return Err(SnapshotError::MappedVipAddr(key));
            }
            if seen.insert(key, i).is_some() {
                return Err(SnapshotError::DuplicateVip(key));
            }
            if let Encap::Gue { port: 0 } = v.encap {
                return Err(SnapshotError::GuePortZero(key));
            }
            let mut list = Vec::with_capacity(v.backends.len());
            vip_backends.clear();
            for b in &v.backends {
                // A tunnel to it would be IPv6 to an address no router forwards.
                if is_mapped_v6(b.addr) {
                    return Err(SnapshotError::MappedBackend {
                        vip: key,
                        addr: b.addr,
                    });
                }
                if key.addr.is_ipv6() && b.addr.is_ipv4() {
                    return Err(SnapshotError::FamilyMismatch {
                        vip: key,
                        addr: b.addr,
                    });
                }
                if !vip_backends.insert(b.addr) {
                    return Err(SnapshotError::DuplicateBackend {
                        vip: key,
                        addr: b.addr,
                    });
                }
                list.push(Backend {
                    addr: b.addr,
                    weight: b.weight,
                });
                check_mtu(
                    cfg.tunnel_mtu,
                    key.addr.is_ipv6(),
                    b.addr.is_ipv6(),
                    v.encap,
                )?;
            }
            // The live table of this VIP, else the one just built for the VIP before it (the
            // ports of one service come in a row and usually share their backends): a
            // service with many ports pays for one table, in time and memory.
            let reusable = prev
                .filter(|p| p.maglev_seed == cfg.maglev_seed)
                .and_then(|p| p.vip(&key))
                .map(|pv| pv.maglev())
                .filter(|t| t.size() == cfg.maglev_size && t.holds(&list))
                .or_else(|| vips.last().map(Vip::maglev).filter(|t| t.holds(&list)));
            let table = match reusable {
                // Shared, not copied: see `MaglevTable`.
                Some(t) => Ok(t.clone()),
                None => MaglevTable::build(&list, cfg.maglev_size, cfg.maglev_seed),
            }
            .map_err(|e| SnapshotError::Maglev {
                vip: key,
                msg: e.to_string(),
            })?;
            let start = backends.len() as u32;
            for b in table.backends() {
                let sourced = match b.addr {
                    IpAddr::V4(_) => cfg.outer_src_v4.is_some(),
                    IpAddr::V6(_) => cfg.outer_src_v6.is_some(),
                };
                let mac = cfg.next_hops.get(&b.addr).copied().filter(|_| sourced);
                let outer = match (v.encap, mac) {
                    (Encap::IpIp, Some(m)) => Some(OuterTemplate::new(
                        b.addr.is_ipv6(),
                        key.addr.is_ipv6(),
                        mapped(b.addr),
                        m,
                        cfg.local_mac,
                        cfg.egress_vlan,
                    )),
                    _ => None,
                };
                backends.push(BackendSlot {
                    addr: mapped(b.addr),
                    is_v4: b.addr.is_ipv4(),
                    weight: b.weight,
                    mac,
                    sourced,
                    outer,
                });
            }
            vips.push(Vip {
                key,
                hash: v.hash,
                encap: v.encap,
                maglev: table,
                backends: start..backends.len() as u32,
            });
        }

        // Entries: every VIP; per (address, protocol) the lowest-port VIP under port 0, the
        // "fragment VIP" that all fragments use (they carry no ports); per address one
        // ANY_PROTO entry that marks it a VIP address.
        let mut entries: Vec<([u8; 16], u8, u16, u32)> = Vec::new();
        let mut frag: HashMap<([u8; 16], u8), (u16, u32)> = HashMap::new();
        let mut addrs: HashMap<[u8; 16], u32> = HashMap::new();
        for (i, v) in vips.iter().enumerate() {
            let a = mapped(v.key.addr);
            let p = v.key.proto.number();
            entries.push((a, p, v.key.port, i as u32));
            let f = frag.entry((a, p)).or_insert((v.key.port, i as u32));
            if v.key.port < f.0 {
                *f = (v.key.port, i as u32);
            }
            addrs.entry(a).or_insert(i as u32);
        }
        entries.extend(frag.into_iter().map(|((a, p), (_, i))| (a, p, 0, i)));
        entries.extend(addrs.into_iter().map(|(a, i)| (a, ANY_PROTO, 0, i)));
        let size = (entries.len() * 2).next_power_of_two().max(16);
        let mut table = vec![VipSlot::default(); size].into_boxed_slice();
        let mask = size - 1;
        for (addr, proto, port, vip) in entries {
            let mut i = slot_hash(&addr, proto, port) as usize & mask;
            while table[i].used {
                i = (i + 1) & mask;
            }
            table[i] = VipSlot {
                addr,
                port,
                proto,
                used: true,
                vip,
            };
        }

        Ok(Snapshot {
            generation: cfg.generation,
            vips,
            backends,
            table,
            table_mask: mask,
            hash_seed: cfg.hash_seed,
            maglev_seed: cfg.maglev_seed,
            index: seen,
            tunnel_mtu: cfg.tunnel_mtu,
            src_v4,
            src_v6,
            local_mac: cfg.local_mac,
            egress_vlan: cfg.egress_vlan,
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The VIP with this key, if configured.
    pub fn vip(&self, key: &VipKey) -> Option<&Vip> {
        self.vips.get(*self.index.get(key)?)
    }

    /// The index of the VIP with this key (its per-VIP counter).
    pub fn vip_index(&self, key: &VipKey) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// VIPs in configuration order (the index used by per-VIP counters).
    pub fn vips(&self) -> &[Vip] {
        &self.vips
    }

    /// Backend slots, flat over all VIPs (the index used by per-backend counters).
    pub fn backends(&self) -> &[BackendSlot] {
        &self.backends
    }

    /// The index of the VIP for (address, protocol number, port). Port 0 asks for the VIP
    /// that fragments to (address, protocol) use: the one with the lowest port.
    #[inline]
    pub fn lookup_vip(&self, addr: &[u8; 16], proto: u8, port: u16) -> Option<u32> {
        let mut i = slot_hash(addr, proto, port) as usize & self.table_mask;
        loop {
            let s = self.table.get(i)?;
            if !s.used {
                return None;
            }
            if s.port == port && s.proto == proto && s.addr == *addr {
                return Some(s.vip);
            }
            i = (i + 1) & self.table_mask;
        }
    }

    /// True if `addr` is the address of any VIP.
    pub fn is_vip_addr(&self, addr: &[u8; 16]) -> bool {
        self.lookup_vip(addr, ANY_PROTO, 0).is_some()
    }
}

/// True if `table`'s backends (sorted) are exactly `list` (any order).
/// Checks that an inner packet still has its family's minimum MTU after encapsulation
/// ([`min_tunnel_mtu`]).
fn check_mtu(mtu: u16, inner_v6: bool, outer_v6: bool, encap: Encap) -> Result<(), SnapshotError> {
    if mtu < min_tunnel_mtu(inner_v6, outer_v6, encap) {
        let (family, min) = if inner_v6 {
            ("IPv6", IPV6_MIN_MTU)
        } else {
            ("IPv4", IPV4_MIN_MTU)
        };
        return Err(SnapshotError::MtuTooSmall {
            mtu,
            overhead: encap_overhead(outer_v6, encap) as u16,
            family,
            min,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    fn cfg() -> SnapshotConfig {
        let b = |a: &str, w| BackendConfig {
            addr: v4(a),
            weight: w,
        };
        SnapshotConfig {
            vips: vec![
                VipConfig {
                    key: VipKey {
                        addr: v4("10.0.0.1"),
                        proto: Proto::Tcp,
                        port: 443,
                    },
                    backends: vec![b("192.168.1.3", 1), b("192.168.1.2", 1)],
                    hash: HashMode::FiveTuple,
                    encap: Encap::IpIp,
                },
                VipConfig {
                    key: VipKey {
                        addr: v4("10.0.0.1"),
                        proto: Proto::Tcp,
                        port: 80,
                    },
                    backends: vec![b("192.168.1.2", 0)],
                    hash: HashMode::ThreeTuple,
                    encap: Encap::Gue { port: 6080 },
                },
            ],
            outer_src_v4: Some(SourcePrefix {
                addr: "172.16.0.0".parse().unwrap(),
                len: 24,
            }),
            next_hops: [(v4("192.168.1.2"), [2, 0, 0, 0, 0, 2])]
                .into_iter()
                .collect(),
            ..SnapshotConfig::default()
        }
    }

    #[test]
    fn lookups() {
        let s = Snapshot::new(&cfg()).unwrap();
        let a = mapped(v4("10.0.0.1"));
        assert_eq!(s.lookup_vip(&a, 6, 443), Some(0));
        assert_eq!(s.lookup_vip(&a, 6, 80), Some(1));
        assert_eq!(
            s.lookup_vip(&a, 6, 0),
            Some(1),
            "fragments use the lowest port"
        );
        assert_eq!(s.lookup_vip(&a, 17, 443), None);
        assert!(s.is_vip_addr(&a));
        assert!(!s.is_vip_addr(&mapped(v4("10.0.0.2"))));
        // Backends are in Maglev order (sorted by address) with their MACs.
        let r = s.vips()[0].backends();
        let slots = &s.backends()[r.start as usize..r.end as usize];
        assert_eq!(slots[0].addr, mapped(v4("192.168.1.2")));
        assert_eq!(slots[0].mac, Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(slots[1].mac, None);
    }

    #[test]
    fn rebuild_reuses_unchanged_tables() {
        let a = Snapshot::new(&cfg()).unwrap();
        let mut c = cfg();
        c.generation = 1;
        c.vips[0].backends.reverse();
        c.vips[1].backends[0].weight = 1;
        let b = Snapshot::rebuild(&c, Some(&a)).unwrap();
        assert!(b.vips()[0].maglev().shares(a.vips()[0].maglev()));
        assert!(!b.vips()[1].maglev().shares(a.vips()[1].maglev()));
        assert_eq!(
            b.vips()[1].maglev(),
            Snapshot::new(&c).unwrap().vips()[1].maglev()
        );
        assert_ne!(b.vips()[1].maglev(), a.vips()[1].maglev());
        assert_eq!(b.vip_index(&c.vips[1].key), Some(1));
    }

    #[test]
    fn ports_with_the_same_backends_share_one_table() {
        let mut c = cfg();
        let mut other_port = c.vips[0].clone();
        other_port.key.port = 8080;
        other_port.backends.reverse();
        c.vips.insert(1, other_port);
        let s = Snapshot::new(&c).unwrap();
        let t = |i: usize| s.vips()[i].maglev();
        assert!(t(1).shares(t(0)));
        assert!(!t(2).shares(t(1)), "another backend set builds its own");
        assert_eq!(*t(1), *Snapshot::new(&cfg()).unwrap().vips()[0].maglev());
    }

    /// Whether this gateway has an outer source of a family is its own matter: without one,
    /// the backends of that family keep their Maglev slots (the table every gateway builds)
    /// and are marked unsourced, with no MAC, so their packets drop.
    #[test]
    fn backends_without_an_outer_source_keep_their_slots() {
        let with = Snapshot::new(&cfg()).unwrap();
        let mut c = cfg();
        c.outer_src_v4 = None;
        let without = Snapshot::new(&c).unwrap();
        for (a, b) in with.vips().iter().zip(without.vips()) {
            assert_eq!(a.maglev(), b.maglev());
        }
        assert!(with.backends().iter().all(|b| b.sourced));
        assert!(without
            .backends()
            .iter()
            .all(|b| !b.sourced && b.mac.is_none()));
    }

    #[test]
    fn errors_name_the_vip() {
        let mut c = cfg();
        c.vips[1].key.port = 443;
        let e = Snapshot::new(&c).err().unwrap();
        assert_eq!(e.to_string(), "vip 10.0.0.1:443/tcp is configured twice");
        let mut c = cfg();
        c.tunnel_mtu = 80;
        assert!(matches!(
            Snapshot::new(&c),
            Err(SnapshotError::MtuTooSmall { .. })
        ));
        let mut c = cfg();
        c.vips[0].backends[1].addr = c.vips[0].backends[0].addr;
        assert!(matches!(
            Snapshot::new(&c),
            Err(SnapshotError::DuplicateBackend { .. })
        ));
    }

    /// A backend listed twice for one VIP is refused and named, wherever the two are in a
    /// long list; one address in several VIPs is not a duplicate.
    #[test]
    fn duplicate_backends_are_named() {
        let mut c = cfg();
        c.vips[1].backends = (0..5000)
            .map(|i| BackendConfig {
                addr: IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + i)),
                weight: 1,
            })
            .collect();
        // Also the first VIP's.
        c.vips[1].backends[4999].addr = v4("192.168.1.2");
        assert!(Snapshot::new(&c).is_ok());
        c.vips[1].backends[4321].addr = v4("10.128.0.17");
        assert_eq!(
            Snapshot::new(&c).err(),
            Some(SnapshotError::DuplicateBackend {
                vip: c.vips[1].key,
                addr: v4("10.128.0.17"),
            })
        );
        assert_eq!(
            Snapshot::new(&c).err().unwrap().to_string(),
            format!("vip {}: backend 10.128.0.17 is listed twice", c.vips[1].key)
        );
    }

    /// `::ffff:a.b.c.d` as a VIP would be keyed as the IPv4 VIP a.b.c.d, and as a backend
    /// would be tunnelled to over IPv6 to an address no packet carries: both refused, named.
    #[test]
    fn ipv4_mapped_vips_and_backends_are_refused() {
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let mut c = cfg();
        c.vips[0].key.addr = m;
        assert_eq!(
            Snapshot::new(&c).err().unwrap().to_string(),
            "vip [::ffff:10.0.0.1]:443/tcp: an IPv4-mapped IPv6 address (::ffff:0:0/96) is never a destination on the wire; write the IPv4 address"
        );
        let mut c = cfg();
        let b: IpAddr = "::ffff:192.168.1.2".parse().unwrap();
        c.vips[0].backends[0].addr = b;
        c.outer_src_v6 = Some(SourcePrefix {
            addr: "2001:db8:1::".parse().unwrap(),
            len: 64,
        });
        assert_eq!(
            Snapshot::new(&c).err(),
            Some(SnapshotError::MappedBackend {
                vip: c.vips[0].key,
                addr: b
            })
        );
        // The same backend for an IPv6 VIP, whose family it matches.
        c.vips[0].key.addr = "2001:db8::10".parse().unwrap();
        c.vips[0].backends.truncate(1);
        assert!(matches!(
            Snapshot::new(&c),
            Err(SnapshotError::MappedBackend { .. })
        ));
        // Neighbours of the block are fine.
        let mut c = cfg();
        c.vips[0].key.addr = "::fffe:10.0.0.1".parse().unwrap();
        c.vips[0].backends = vec![BackendConfig {
            addr: "::1:ffff:192.168.1.2".parse().unwrap(),
            weight: 1,
        }];
        c.outer_src_v6 = Some(SourcePrefix {
            addr: "2001:db8:1::".parse().unwrap(),
            len: 64,
        });
        assert!(Snapshot::new(&c).is_ok());
    }

    #[test]
    fn min_tunnel_mtu_is_the_bound_new_checks() {
        let gue = Encap::Gue { port: 6080 };
        for (inner_v6, outer_v6, encap, want) in [
            (false, false, Encap::IpIp, 88),
            (false, false, gue, 100),
            (false, true, Encap::IpIp, 108),
            (false, true, gue, 120),
            (true, true, Encap::IpIp, 1320),
            (true, true, gue, 1332),
        ] {
            let min = min_tunnel_mtu(inner_v6, outer_v6, encap);
            assert_eq!(min, want, "{inner_v6} {outer_v6} {encap:?}");
            let addr = |v6, a: &str| match v6 {
                true => IpAddr::V6(format!("2001:db8::{a}").parse().unwrap()),
                false => v4(&format!("10.0.0.{a}")),
            };
            let mut c = SnapshotConfig {
                vips: vec![VipConfig {
                    key: VipKey {
                        addr: addr(inner_v6, "1"),
                        proto: Proto::Udp,
                        port: 53,
                    },
                    backends: vec![BackendConfig {
                        addr: addr(outer_v6, "2"),
                        weight: 1,
                    }],
                    hash: HashMode::FiveTuple,
                    encap,
                }],
                outer_src_v4: cfg().outer_src_v4,
                outer_src_v6: Some(SourcePrefix {
                    addr: "2001:db8:1::".parse().unwrap(),
                    len: 64,
                }),
                tunnel_mtu: min,
                ..SnapshotConfig::default()
            };
            assert!(Snapshot::new(&c).is_ok(), "{c:?}");
            c.tunnel_mtu = min - 1;
            assert!(matches!(
                Snapshot::new(&c),
                Err(SnapshotError::MtuTooSmall { .. })
            ));
        }
    }

    #[test]
    fn source_prefix_spreads_and_avoids_network_and_broadcast() {
        let s = Snapshot::new(&cfg()).unwrap();
        let base = (0xffffu128 << 32) | u128::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)));
        assert_eq!(s.src_v4.pick(0, true), base | 1);
        assert_eq!(s.src_v4.pick(0xff, true), base | 0xfe);
        assert_eq!(s.src_v4.pick(0x1234_5677, true), base | 0x77);
        let single = src_bits::<32>(Some((0x0a00_0001, 32)), "v4").unwrap();
        assert_eq!(single.pick(u64::MAX, true) as u32, 0x0a00_0001);
    }
}
