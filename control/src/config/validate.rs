//! Checks that serde cannot express: ranges, primes, cross-field rules, and
//! duplicates. Collects every problem rather than stopping at the first.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use bgp::wire::MAX_MESSAGE_LEN;
use dataplane::bpf::steer::MAX_VIPS;

use super::{
    Config, EncapKind, HealthCheck, PoolRange, ProbeKind, Seg, Timing, Topology, Vip, VipBgp,
    MAX_WEIGHT,
};

pub(super) type Found = Vec<(Vec<Seg>, String)>;

/// Largest accepted Maglev table size (a 2^24-slot table per VIP is already
/// 64 MiB of u32 entries).
pub const MAX_MAGLEV_M: u32 = dataplane::maglev::MAX_TABLE_SIZE;

struct V {
    found: Found,
    /// Valid, but probably not what was meant: reported, never refused.
    warned: Found,
    path: Vec<Seg>,
}

impl V {
    fn at<R>(&mut self, seg: Seg, f: impl FnOnce(&mut V) -> R) -> R {
        self.path.push(seg);
        let r = f(self);
        self.path.pop();
        r
    }
    fn key<R>(&mut self, k: &str, f: impl FnOnce(&mut V) -> R) -> R {
        self.at(Seg::Key(k.to_owned()), f)
    }
    fn err(&mut self, field: &str, msg: impl Into<String>) {
        let mut path = self.path.clone();
        if !field.is_empty() {
            path.push(Seg::Key(field.to_owned()));
        }
        self.found.push((path, msg.into()));
    }
    fn warn(&mut self, field: &str, msg: impl Into<String>) {
        let mut path = self.path.clone();
        if !field.is_empty() {
            path.push(Seg::Key(field.to_owned()));
        }
        self.warned.push((path, msg.into()));
    }
    fn path_str(&self) -> String {
        super::format_path(&self.path)
    }
}

/// All problems of `c`, then its warnings, each with its field path.
pub(super) fn validate(c: &Config) -> (Found, Found) {
    let mut v = V {
        found: Vec::new(),
        warned: Vec::new(),
        path: Vec::new(),
    };
    v.key("daemon", |v| {
        if c.daemon.drain_time > Duration::from_secs(3600) {
            v.err("drain_time", "must be at most 1h");
        }
    });
    v.key("dataplane", |v| dataplane(v, c));
    if c.api.listen.port() == 0 {
        v.key("api", |v| v.err("listen", "port 0 is not a listening port"));
    }
    if let Some(bgp) = &c.bgp {
        v.key("bgp", |v| bgp_section(v, bgp));
    }
    let mut seen: HashMap<(IpAddr, super::Protocol, u16), String> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut shared = HashMap::new();
    v.key("vips", |v| {
        for (i, vip) in c.vips.iter().enumerate() {
            v.at(Seg::Index(i), |v| {
                let fits = vip_entry(v, c, vip, &mut seen, &mut names, i);
                shared_route(v, &mut shared, vip, i, fits);
            });
        }
        if seen.len() > MAX_VIPS {
            v.err(
                "",
                format!(
                    "{} service ports (address, protocol, port) in all; a gateway steers at most {MAX_VIPS}",
                    seen.len()
                ),
            );
        }
    });
    if let Some(k) = &c.kubernetes {
        v.key("kubernetes", |v| kubernetes(v, c, k));
    }
    (v.found, v.warned)
}

fn interface_name(v: &mut V, field: &str, name: &str) {
    // IFNAMSIZ is 16 including the NUL.
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ':'])
        || name.chars().any(|ch| ch.is_whitespace() || ch.is_control())
        || name == "."
        || name == ".."
    {
        v.err(
            field,
            format!(
                "`{name}` is not a valid interface name (1 to 15 bytes, no '/', ':', or spaces)"
            ),
        );
    }
}

fn dataplane(v: &mut V, c: &Config) {
    let d = &c.dataplane;
    interface_name(v, "upstream_interface", &d.upstream_interface);
    match (d.topology, &d.downstream_interface) {
        (Topology::OneArm, Some(_)) => v.err("downstream_interface", "only a two-arm topology has a downstream interface (set `topology = \"two-arm\"` or remove it)"),
        (Topology::TwoArm, None) => v.err("downstream_interface", "a two-arm topology needs a downstream interface"),
        (Topology::TwoArm, Some(down)) => {
            interface_name(v, "downstream_interface", down);
            if *down == d.upstream_interface {
                v.err("downstream_interface", "must differ from upstream_interface in a two-arm topology");
            }
        }
        (Topology::OneArm, None) => {}
    }
    let mut cores = HashSet::new();
    for (i, core) in d.worker_cores.iter().enumerate() {
        v.key("worker_cores", |v| {
            v.at(Seg::Index(i), |v| {
                if *core >= 1024 {
                    v.err("", format!("core {core} is out of range (0..=1023)"));
                } else if !cores.insert(*core) {
                    v.err(
                        "",
                        format!("core {core} is listed twice; each worker needs its own core"),
                    );
                }
            })
        });
    }
    if !d.flow_table_size.is_power_of_two() || !(1024..=1 << 26).contains(&d.flow_table_size) {
        v.err(
            "flow_table_size",
            format!(
                "{} is not a power of two between 1024 and 67108864",
                d.flow_table_size
            ),
        );
    }
    v.key("maglev", |v| {
        let m = d.maglev.m;
        if !dataplane::maglev::is_prime(m) {
            v.err(
                "m",
                format!("{m} is not a prime; Maglev needs a prime table size (e.g. 65537)"),
            );
        } else if !(7..=MAX_MAGLEV_M).contains(&m) {
            v.err("m", format!("{m} is out of range (7..={MAX_MAGLEV_M})"));
        }
    });
    let (min_mtu, why) = min_tunnel_mtu(c);
    if !(min_mtu..=9216).contains(&d.tunnel_mtu) {
        v.err(
            "tunnel_mtu",
            format!("{} is out of range ({min_mtu}..=9216){why}", d.tunnel_mtu),
        );
    }
    for p in d.outer_source_prefix.iter() {
        if p.addr() != p.network() {
            v.err(
                "outer_source_prefix",
                format!("host bits are set in {p}; did you mean {}?", p.trunc()),
            );
        }
        if unusable(p.addr()) {
            v.err(
                "outer_source_prefix",
                format!("{p} is not a unicast prefix"),
            );
        }
        if let Some(why) = outer_overlap(c, &p) {
            v.warn("outer_source_prefix", format!("{p} contains {why}: a node that decapsulates with an ipip or ip6tnl device (see Node setup) holds the VIPs on lo, and its kernel drops a tunnelled packet whose outer source is an address of its own as a martian, so the flows whose hash picks that source are lost (nodes that decapsulate in XDP do not check it); take a prefix outside the VIPs, the address pool and the backends"));
        }
    }
}

/// The first address that tunnelled packets must not come from and that the outer source
/// prefix `p` contains, said for a warning: a static VIP, a backend, or part of the
/// Kubernetes address pool (whose addresses become VIPs).
fn outer_overlap(c: &Config, p: &ipnet::IpNet) -> Option<String> {
    for (i, vip) in c.vips.iter().enumerate() {
        if p.contains(&vip.address) {
            return Some(format!("the VIP {} (vips[{i}])", vip.address));
        }
        if let Some((j, b)) =
            (vip.backends.iter().enumerate()).find(|(_, b)| p.contains(&b.address))
        {
            return Some(format!(
                "the backend {} (vips[{i}].backends[{j}])",
                b.address
            ));
        }
    }
    let block = PoolRange {
        first: p.network(),
        last: p.broadcast(),
    };
    let pool = c
        .kubernetes
        .as_ref()
        .map_or(&[][..], |k| &k.address_pool[..]);
    let (i, _) = pool.iter().enumerate().find(|(_, r)| r.overlaps(&block))?;
    Some(format!(
        "addresses of the Kubernetes address pool (kubernetes.address_pool[{i}])"
    ))
}

/// RFC 791: every IPv4 host accepts datagrams of 576 octets; no `tunnel_mtu` is
/// accepted below that.
const IPV4_MIN_DATAGRAM: u16 = 576;

/// The dataplane encapsulation of `kind`, for its size: the GUE port does not change
/// it ([`dataplane::snapshot::min_tunnel_mtu`]), so none is needed here.
fn dp_encap(kind: EncapKind) -> dataplane::snapshot::Encap {
    use dataplane::snapshot::Encap;
    match kind {
        EncapKind::Ipip => Encap::IpIp,
        EncapKind::Gue => Encap::Gue { port: 0 },
    }
}

/// The smallest `tunnel_mtu` every VIP the config may produce can use, and why.
/// An IPv6 VIP is tunnelled over IPv6 (IPv6-in-IPv4 is not supported), so it needs
/// what the dataplane's snapshot requires of it ([`dataplane::snapshot::min_tunnel_mtu`]:
/// 1280 plus its encapsulation); a `[kubernetes]` section may produce IPv6 VIPs
/// (`ipFamilies`, the status, or `loadBalancerIP` choose, not the pool), in its
/// encapsulation. IPv6 nodes need an IPv6 path, of 1280 at least. IPv4 VIPs need
/// less than the 576 every config must allow anyway.
fn min_tunnel_mtu(c: &Config) -> (u16, String) {
    use dataplane::snapshot::IPV6_MIN_MTU;
    let mut min = (IPV4_MIN_DATAGRAM, String::new());
    let mut need = |mtu: u16, why: String| {
        if mtu > min.0 {
            min = (mtu, why);
        }
    };
    let encap_name = |kind| match kind {
        EncapKind::Ipip => "IP-in-IP",
        EncapKind::Gue => "GUE",
    };
    let inner_v6 = |kind| {
        let mtu = dataplane::snapshot::min_tunnel_mtu(true, true, dp_encap(kind));
        let o = mtu - IPV6_MIN_MTU;
        (
            mtu,
            format!(
                "an IPv6 packet of {IPV6_MIN_MTU} octets plus {o} of {} encapsulation",
                encap_name(kind)
            ),
        )
    };
    for (i, vip) in c.vips.iter().enumerate() {
        if vip.address.is_ipv6() {
            let (mtu, what) = inner_v6(vip.encap);
            need(mtu, format!(": vips[{i}] is IPv6 and needs {what}"));
        }
        if let Some(b) = vip.backends.iter().find(|b| b.address.is_ipv6()) {
            need(
                IPV6_MIN_MTU,
                format!(
                    ": vips[{i}] has the IPv6 backend {}, and IPv6 links carry {IPV6_MIN_MTU} octets",
                    b.address
                ),
            );
        }
    }
    if let Some(k) = &c.kubernetes {
        let (mtu, what) = inner_v6(k.encap);
        need(
            mtu,
            format!(": [kubernetes] Services may be IPv6, which needs {what}"),
        );
    }
    min
}

fn bgp_section(v: &mut V, b: &super::Bgp) {
    if b.local_as == 0 || b.local_as == 23456 {
        v.err(
            "local_as",
            format!("{} is reserved (RFC 7607 / RFC 6793)", b.local_as),
        );
    }
    if b.router_id.is_unspecified() || b.router_id.is_multicast() || b.router_id.is_broadcast() {
        v.err(
            "router_id",
            format!("{} is not a usable BGP identifier", b.router_id),
        );
    }
    let mut seen = HashSet::new();
    for (i, p) in b.peers.iter().enumerate() {
        v.key("peers", |v| {
            v.at(Seg::Index(i), |v| {
                if link_local(p.address) {
                    v.err("address", format!("{} is link-local: a session to it needs the interface it is on, which the address does not say; peer with a global address", p.address));
                } else if unusable(p.address) {
                    v.err("address", not_unicast(p.address));
                } else if !seen.insert(p.address) {
                    v.err("address", format!("peer {} is configured twice", p.address));
                }
                if p.remote_as == 0 || p.remote_as == 23456 {
                    v.err(
                        "remote_as",
                        format!("{} is reserved (RFC 7607 / RFC 6793)", p.remote_as),
                    );
                }
                if p.port == 0 {
                    v.err("port", "port 0 is out of range (1..=65535)");
                }
                let hold_time_ok = |h: Duration| {
                    h.subsec_nanos() == 0 && (h.is_zero() || (3..=65535).contains(&h.as_secs()))
                };
                if !hold_time_ok(p.hold_time) {
                    v.err(
                        "hold_time",
                        "must be 0 or a whole number of seconds from 3s to 65535s (RFC 4271 §4.2)",
                    );
                }
                if !hold_time_ok(p.min_hold_time) {
                    v.err(
                        "min_hold_time",
                        "must be 0 (any hold time) or a whole number of seconds from 3s to 65535s (RFC 4271 §4.2)",
                    );
                } else if !p.min_hold_time.is_zero()
                    && (p.hold_time.is_zero() || p.min_hold_time > p.hold_time)
                {
                    v.err(
                        "min_hold_time",
                        format!(
                            "{}s is above hold_time ({}s): a session runs on the lower of the two proposals (RFC 4271 §4.2), so it could never have the hold time asked for",
                            p.min_hold_time.as_secs(),
                            p.hold_time.as_secs()
                        ),
                    );
                }
                if let Some(l) = p.local_address {
                    if l.is_ipv4() != p.address.is_ipv4() {
                        v.err(
                            "local_address",
                            format!("{l} is not of the peer address's family"),
                        );
                    } else if link_local(l) {
                        v.err("local_address", format!("{l} is link-local: binding to it needs the interface it is on, which the address does not say; use a global address"));
                    }
                }
                for nh in p.next_hop.iter() {
                    if link_local(nh) {
                        v.err(
                            "next_hop",
                            format!("{nh} is link-local; an IPv6 next hop must be a global address (RFC 2545 §3)"),
                        );
                    } else if unusable(nh) {
                        v.err("next_hop", not_unicast(nh));
                    }
                }
                if let Some(pw) = &p.md5_password {
                    if pw.is_empty() || pw.len() > 80 {
                        v.err(
                            "md5_password",
                            "must be 1 to 80 bytes (TCP_MD5SIG_MAXKEYLEN)",
                        );
                    }
                }
            })
        });
    }
}

/// Unless some peer can give routes of `addr`'s family a next hop (its `next_hop` has
/// one, or its session, and so its local address, is of that family), reports that
/// `what` (a VIP at `addr`, or a pool range holding it) would never be announced. The speaker offers both families on every
/// session; one without a next hop for a family announces none of its routes.
fn announceable(v: &mut V, c: &Config, field: &str, addr: IpAddr, what: &str) {
    let Some(bgp) = c.bgp.as_ref().filter(|b| !b.peers.is_empty()) else {
        return;
    };
    let v4 = addr.is_ipv4();
    // A link-local peer (refused on its own) has no session, so no local address either.
    if bgp.peers.iter().any(|p| {
        (p.address.is_ipv4() == v4 && !link_local(p.address)) || p.next_hop.for_family(v4).is_some()
    }) {
        return;
    }
    let (family, example) = match v4 {
        true => ("IPv4", "[\"2001:db8::1\", \"192.0.2.1\"]"),
        false => ("IPv6", "[\"192.0.2.1\", \"2001:db8::1\"]"),
    };
    v.err(
        field,
        format!("{what} would never be announced: no BGP peer has an {family} next hop (give the peer whose session carries {family} routes one per family, e.g. `next_hop = {example}`, or peer over {family})"),
    );
}

/// Addresses that can be neither a VIP, a node, nor a peer. Also applied to the addresses
/// Kubernetes objects name ([`crate::sources::kube`]). Besides the unspecified, loopback,
/// multicast and broadcast addresses: 0.0.0.0/8, "this network", which names no host on
/// the wire (RFC 1122 §3.2.1.3, RFC 6890); IPv4-mapped IPv6 addresses, `::ffff:0:0/96`,
/// which stand for an IPv4 address inside a host and are never on the wire (RFC 4291
/// §2.5.5.2): the dataplane keys IPv4 addresses so, and would take `::ffff:a.b.c.d` for
/// a.b.c.d (its snapshot refuses them as well); and [`link_local`] addresses, which no
/// router forwards (a VIP there is unreachable from clients) and which name a node only
/// on one link (a tunnel to one would leave by whichever interface routes fe80::/10).
pub(crate) fn unusable(a: IpAddr) -> bool {
    a.is_unspecified()
        || a.is_multicast()
        || a.is_loopback()
        || link_local(a)
        || match a {
            IpAddr::V4(a) => a.is_broadcast() || a.octets()[0] == 0,
            IpAddr::V6(a) => a.to_ipv4_mapped().is_some(),
        }
}

/// An IPv6 link-local address (fe80::/10, RFC 4291 §2.5.6): it names a host only
/// together with an interface (a scope), which a configured address does not carry.
fn link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

/// Why `a`, which [`unusable`] refuses, cannot be used: the message for its field.
fn not_unicast(a: IpAddr) -> String {
    match a {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("{a} is an IPv4-mapped IPv6 address (::ffff:0:0/96), never an address on the wire; write the IPv4 address {v4}"),
            None if link_local(a) => format!("{a} is link-local (fe80::/10): routers do not forward it and it names a host only on one link; use a global address"),
            None => format!("{a} is not a unicast address"),
        },
        IpAddr::V4(_) => format!("{a} is not a unicast address"),
    }
}

/// The blocks [`unusable`] refuses, for ranges: a pool range must avoid them all,
/// not only at its ends.
const NOT_UNICAST: [(IpAddr, IpAddr, &str); 9] = {
    use IpAddr::{V4, V6};
    [
        (
            V4(Ipv4Addr::UNSPECIFIED),
            V4(Ipv4Addr::new(0, 255, 255, 255)),
            "0.0.0.0/8 (\"this network\", the unspecified address included)",
        ),
        (
            V4(Ipv4Addr::new(127, 0, 0, 0)),
            V4(Ipv4Addr::new(127, 255, 255, 255)),
            "127.0.0.0/8 (loopback)",
        ),
        (
            V4(Ipv4Addr::new(224, 0, 0, 0)),
            V4(Ipv4Addr::new(239, 255, 255, 255)),
            "224.0.0.0/4 (multicast)",
        ),
        (
            V4(Ipv4Addr::BROADCAST),
            V4(Ipv4Addr::BROADCAST),
            "255.255.255.255 (broadcast)",
        ),
        (
            V6(Ipv6Addr::UNSPECIFIED),
            V6(Ipv6Addr::UNSPECIFIED),
            ":: (unspecified)",
        ),
        (
            V6(Ipv6Addr::LOCALHOST),
            V6(Ipv6Addr::LOCALHOST),
            "::1 (loopback)",
        ),
        (
            V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0)),
            V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xffff, 0xffff)),
            "::ffff:0:0/96 (IPv4-mapped)",
        ),
        (
            V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
            V6(Ipv6Addr::new(
                0xfebf, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
            )),
            "fe80::/10 (link-local)",
        ),
        (
            V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)),
            V6(Ipv6Addr::from_bits(u128::MAX)),
            "ff00::/8 (multicast)",
        ),
    ]
};

fn encap(v: &mut V, kind: EncapKind, gue_port: Option<u16>) {
    match (kind, gue_port) {
        (EncapKind::Ipip, Some(_)) => v.err(
            "gue_port",
            "only GUE encapsulation has a port (set `encap = \"gue\"` or remove it)",
        ),
        (EncapKind::Gue, Some(0)) => v.err("gue_port", "port 0 is out of range (1..=65535)"),
        _ => {}
    }
}

fn vip_bgp(v: &mut V, b: &VipBgp) -> bool {
    let mut seen = HashSet::new();
    for (i, c) in b.communities.iter().enumerate() {
        if !seen.insert(c) {
            v.key("bgp", |v| {
                v.key("communities", |v| {
                    v.at(Seg::Index(i), |v| {
                        v.err("", format!("community {c} is listed twice"))
                    })
                })
            });
        }
    }
    fits_one_update(v, b, "")
}

/// RFC 4271 §4: a message has at most 4096 octets, and a route's path attributes
/// travel whole in each UPDATE that announces it. Checked on the worst session the
/// speaker may have (see [`bgp::speaker::max_update_len`]), so that no accepted route
/// is refused on any. `with` says whose communities were merged into `b`.
fn fits_one_update(v: &mut V, b: &VipBgp, with: &str) -> bool {
    let len = bgp::speaker::max_update_len(&b.route_attributes());
    let excess = len.saturating_sub(MAX_MESSAGE_LEN);
    if excess == 0 {
        return true;
    }
    let (n, m) = (b.communities.len(), b.large_communities.len());
    // Each community takes 4 octets, each large one 12: removing that many saves at
    // least the excess.
    let fixes: Vec<String> = [(n, 4, "communities"), (m, 12, "large communities")]
        .into_iter()
        .map(|(have, size, what)| (have, excess.div_ceil(size), what))
        .filter(|(have, need, _)| need <= have)
        .map(|(_, need, what)| format!("{need} {what}"))
        .collect();
    let fix = if fixes.is_empty() {
        "remove communities or large communities".to_owned()
    } else {
        format!("remove at least {}", fixes.join(" or "))
    };
    // Point at the list that takes more room.
    let field = if 12 * m > 4 * n {
        "large_communities"
    } else {
        "communities"
    };
    v.key("bgp", |v| {
        v.err(
            field,
            format!(
                "{n} communities and {m} large communities{with} make an UPDATE of up to {len} octets, more than the {MAX_MESSAGE_LEN} a BGP message may have (RFC 4271 §4): {fix}"
            ),
        )
    });
    false
}

/// The static VIPs at one address so far: one route carries all their communities.
#[derive(Default)]
struct SharedRoute {
    vips: Vec<usize>,
    bgp: VipBgp,
    fits: bool,
}

/// Adds VIP `i`'s communities to its address's route and reports the VIP that makes
/// that route too large for one UPDATE (unless its own list already is: `fits`).
fn shared_route(
    v: &mut V,
    shared: &mut HashMap<IpAddr, SharedRoute>,
    vip: &Vip,
    i: usize,
    fits: bool,
) {
    let r = shared.entry(vip.address).or_insert_with(|| SharedRoute {
        fits: true,
        ..SharedRoute::default()
    });
    r.bgp.merge(&vip.bgp);
    r.fits &= fits;
    if r.fits && !r.vips.is_empty() {
        let others: Vec<String> = r.vips.iter().map(|j| format!("vips[{j}]")).collect();
        let with = format!(
            " (with those of {}, on the same address: one route carries them all)",
            others.join(", ")
        );
        r.fits = fits_one_update(v, &r.bgp, &with);
    }
    r.vips.push(i);
}

fn timing(v: &mut V, t: Timing) {
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&t.interval) {
        v.err("interval", "must be between 100ms and 1h");
    }
    if t.timeout.is_zero() || t.timeout > t.interval {
        v.err(
            "timeout",
            "must be above 0 and at most the interval (a probe ends before the next starts)",
        );
    }
    if !(1..=100).contains(&t.rise) {
        v.err(
            "rise",
            format!(
                "{} is out of range (1..=100): a backend needs at least one success to enter",
                t.rise
            ),
        );
    }
    if !(1..=100).contains(&t.fall) {
        v.err(
            "fall",
            format!(
                "{} is out of range (1..=100): a backend needs at least one failure to leave",
                t.fall
            ),
        );
    }
}

fn health(v: &mut V, h: &HealthCheck) {
    if h.port == Some(0) {
        v.err("port", "port 0 is out of range (1..=65535)");
    }
    match (h.kind, &h.path) {
        (ProbeKind::Tcp, Some(_)) => v.err(
            "path",
            "only HTTP checks have a path (set `type = \"http\"` or remove it)",
        ),
        (ProbeKind::Http, Some(p))
            if !p.starts_with('/')
                || p.len() > 1024
                || p.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            v.err(
                "path",
                format!(
                    "`{p}` is not a request path (starts with '/', no spaces, at most 1024 bytes)"
                ),
            )
        }
        _ => {}
    }
    timing(v, h.timing());
}

fn vip_entry<'a>(
    v: &mut V,
    c: &Config,
    vip: &'a Vip,
    seen: &mut HashMap<(IpAddr, super::Protocol, u16), String>,
    names: &mut HashMap<&'a str, usize>,
    i: usize,
) -> bool {
    if let Some(name) = &vip.name {
        if name.is_empty()
            || name.len() > 64
            || name
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control() || ch == '"')
        {
            v.err("name", format!("`{name}` is not a valid name (1 to 64 printable characters, no spaces or quotes)"));
        }
    }
    if let Some(name) = vip.name.as_deref() {
        if let Some(j) = names.insert(name, i) {
            v.err(
                "name",
                format!("the name `{name}` is already used by vips[{j}]"),
            );
        }
    }
    if unusable(vip.address) {
        v.err("address", not_unicast(vip.address));
    } else {
        announceable(v, c, "address", vip.address, &vip.address.to_string());
    }
    let ports = match (&vip.port, &vip.ports) {
        (Some(_), Some(_)) => {
            v.err("ports", "set either `port` or `ports`, not both");
            Vec::new()
        }
        (None, None) => {
            v.err("port", "missing: set `port = N` or `ports = [N, ...]`");
            Vec::new()
        }
        (Some(p), None) => vec![("port", None, *p)],
        (None, Some(ps)) => {
            if ps.is_empty() {
                v.err("ports", "must list at least one port");
            }
            ps.iter()
                .enumerate()
                .map(|(j, p)| ("ports", Some(j), *p))
                .collect()
        }
    };
    let here = v.path_str();
    for (field, idx, port) in ports {
        let mut check = |v: &mut V| {
            if port == 0 {
                v.err("", "port 0 is out of range (1..=65535)");
            } else if let Some(other) = seen.get(&(vip.address, vip.protocol, port)) {
                if *other == here {
                    v.err(
                        "",
                        format!("{} {}/{port} is listed twice", vip.address, vip.protocol),
                    );
                } else {
                    v.err(
                        "",
                        format!(
                            "duplicate VIP: {} {}/{port} is already defined by {other}",
                            vip.address, vip.protocol
                        ),
                    );
                }
            } else {
                seen.insert((vip.address, vip.protocol, port), here.clone());
            }
        };
        v.key(field, |v| match idx {
            Some(j) => v.at(Seg::Index(j), check),
            None => check(v),
        });
    }
    encap(v, vip.encap, vip.gue_port);
    let fits = vip_bgp(v, &vip.bgp);
    if vip.backends.is_empty() {
        v.err(
            "backends",
            "must list at least one backend (a VIP without backends is never announced)",
        );
    }
    if vip.min_healthy_backends == 0 {
        v.err(
            "min_healthy_backends",
            "must be at least 1: a VIP with no healthy backend must not be announced",
        );
    } else if !vip.backends.is_empty() && vip.min_healthy_backends as usize > vip.backends.len() {
        v.err(
            "min_healthy_backends",
            format!(
                "{} exceeds the {} configured backends: the VIP could never be announced",
                vip.min_healthy_backends,
                vip.backends.len()
            ),
        );
    }
    if vip.backends.len() >= c.dataplane.maglev.m as usize {
        v.err(
            "backends",
            format!(
                "{} backends do not fit a Maglev table of {} slots",
                vip.backends.len(),
                c.dataplane.maglev.m
            ),
        );
    }
    let outer = c.dataplane.outer_source_prefix;
    let mut addrs = HashSet::new();
    for (j, b) in vip.backends.iter().enumerate() {
        v.key("backends", |v| {
            v.at(Seg::Index(j), |v| {
                if unusable(b.address) {
                    v.err("address", not_unicast(b.address));
                } else if !addrs.insert(b.address) {
                    v.err("address", format!("backend {} is listed twice", b.address));
                }
                if vip.address.is_ipv6() && b.address.is_ipv4() {
                    v.err("address", format!("{} is IPv4 but the VIP is IPv6: no tunnel carries IPv6 in IPv4 (IPv4 VIPs may have IPv6 backends)", b.address));
                }
                if !outer.is_empty() && outer.for_family(b.address.is_ipv4()).is_none() {
                    let family = if b.address.is_ipv4() { "IPv4" } else { "IPv6" };
                    v.err("address", format!("{} cannot be reached: dataplane.outer_source_prefix has no {family} prefix (add one, or leave the option out to use the egress interface's addresses)", b.address));
                }
                if b.weight > MAX_WEIGHT {
                    v.err("weight", format!("{} is out of range (0..={MAX_WEIGHT})", b.weight));
                }
            })
        });
    }
    match &vip.health {
        Some(h) => v.key("health", |v| health(v, h)),
        None => v.warn(
            "health",
            "no health check: every backend counts as healthy, so a node that goes down keeps its share of new flows and the VIP stays announced (add `[vips.health]`)",
        ),
    }
    vip_warnings(v, c, vip);
    fits
}

/// What a valid VIP's backends leave unlikely to work as meant.
fn vip_warnings(v: &mut V, c: &Config, vip: &Vip) {
    if let Some(h) = vip.health.as_ref().filter(|h| h.port.is_none()) {
        if vip.protocol == super::Protocol::Udp {
            let port = vip.port_list().first().copied().unwrap_or_default();
            let kind = match h.kind {
                ProbeKind::Tcp => "TCP connection",
                ProbeKind::Http => "HTTP request",
            };
            v.warn(
                "health.port",
                format!("the check of this UDP VIP is a {kind} to TCP port {port} (the VIP's first port) of each backend, where a UDP service usually has no listener: every probe fails and the VIP is never announced; set `port` to a TCP port the backends serve for their health"),
            );
        }
    }
    let active = vip.backends.iter().filter(|b| b.weight > 0).count();
    let min = vip.min_healthy_backends as usize;
    if !vip.backends.is_empty() && (1..=vip.backends.len()).contains(&min) && active < min {
        v.warn(
            "backends",
            format!("{active} of {} backends have nonzero weight, fewer than min_healthy_backends ({min}): the VIP is not announced and takes no new flows until weights change (weight 0 drains a backend)", vip.backends.len()),
        );
    }
    let m = c.dataplane.maglev.m;
    if active > 1 && u64::from(m) < 100 * active as u64 && active < m as usize {
        let suggest = (100 * active as u32..=MAX_MAGLEV_M)
            .find(|&n| dataplane::maglev::is_prime(n))
            .map(|p| format!(" (e.g. {p})"))
            .unwrap_or_default();
        v.warn(
            "backends",
            format!("{active} backends share a Maglev table of {m} slots (dataplane.maglev.m): their shares may differ from an even split by more than 1%; a table of at least 100 slots per backend{suggest} keeps them within it (NSDI'16 §3.4)"),
        );
    }
}

fn kubernetes(v: &mut V, c: &Config, k: &super::Kubernetes) {
    if let Some(p) = &k.kubeconfig {
        if p.as_os_str().is_empty() {
            v.err(
                "kubeconfig",
                "must not be empty (omit it for in-cluster credentials)",
            );
        }
    }
    if k.context.is_some() && k.kubeconfig.is_none() {
        v.err("context", "a context needs a kubeconfig");
    }
    if k.load_balancer_class.as_deref() == Some("") {
        v.err(
            "load_balancer_class",
            "must not be empty (omit it to serve Services without a class)",
        );
    }
    for (i, r) in k.address_pool.iter().enumerate() {
        v.key("address_pool", |v| {
            v.at(Seg::Index(i), |v| {
                if let Some(j) = k.address_pool[..i].iter().position(|o| o.overlaps(r)) {
                    v.err("", format!("overlaps address_pool[{j}]"));
                }
                if let Some(vip) = c.vips.iter().find(|vip| r.contains(vip.address)) {
                    v.err(
                        "",
                        format!(
                            "contains the static VIP {}; keep static VIPs out of the pool",
                            vip.address
                        ),
                    );
                }
                if let Some((_, _, what)) = NOT_UNICAST.iter().find(|(first, last, _)| {
                    r.overlaps(&PoolRange {
                        first: *first,
                        last: *last,
                    })
                }) {
                    v.err(
                        "",
                        format!("contains addresses that are not unicast: {what}"),
                    );
                }
                let family = if r.first.is_ipv4() { "IPv4" } else { "IPv6" };
                announceable(v, c, "", r.first, &format!("its {family} addresses"));
            })
        });
    }
    if k.kube_proxy_health_port == 0 {
        v.err(
            "kube_proxy_health_port",
            "port 0 is out of range (1..=65535)",
        );
    }
    encap(v, k.encap, k.gue_port);
    // Services sharing an address all carry these same communities, and a static VIP's
    // address is never a Service's (`ServiceSet::merge`): no route carries both lists.
    vip_bgp(v, &k.bgp);
    if k.min_healthy_backends == 0 {
        v.err(
            "min_healthy_backends",
            "must be at least 1: a VIP with no healthy backend must not be announced",
        );
    }
    v.key("health", |v| timing(v, k.health));
}
