//! Next hops toward the backends, read from the kernel's routing and neighbour tables
//! over rtnetlink.
//!
//! The workers write whole Ethernet frames, so for every backend (node) address they need
//! the output interface and the MAC address of the next hop: the node itself when it is
//! on-link, otherwise the gateway the kernel's route names. [`Resolver::resolve`] asks the
//! kernel exactly what `ip route get ADDR` asks (`RTM_GETROUTE`), then reads the
//! neighbour table once (`RTM_GETNEIGH` dump) and matches each next hop by interface and
//! address. The control loop calls it about once a second and publishes the result.
//!
//! # Keeping entries resolved
//! Traffic the workers send bypasses the kernel, so the kernel never learns that a
//! neighbour is in use: an entry it has not confirmed decays to `STALE`, and a missing one
//! is never created. For every next hop that is missing, `INCOMPLETE`, `FAILED` or `STALE`
//! the resolver sends `RTM_NEWNEIGH` with `NTF_USE` (what `ip neigh replace ADDR dev IF
//! use` does): the kernel creates the entry if needed and starts ARP/ND for it as if a
//! packet had been queued, or, for a `STALE` one, re-confirms it with a unicast probe.
//! Checked on Linux 6.18 for IPv4 and IPv6: an absent entry goes `INCOMPLETE`, then
//! `REACHABLE` when the peer answers and `FAILED` when it does not. This was chosen over
//! the other common trick, a zero-byte UDP send to the backend's discard port, because it
//! sends nothing to the backend, resolves the gateway itself (not whatever the route for
//! a probe packet picks), and re-confirms `STALE` entries. It needs `CAP_NET_ADMIN`,
//! which the daemon holds anyway.
//!
//! A next hop without a usable MAC is reported as unresolved (`mac: None`); the dataplane
//! drops and counts those packets rather than sending them with a wrong MAC.
//!
//! The netlink socket belongs to the network namespace that was current when
//! [`Resolver::new`] ran, whichever thread uses it later.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How long one netlink request may wait for the kernel's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Receive buffer: larger than any datagram the kernel builds for a dump.
const RECV_BUF: usize = 1 << 16;

/// Where packets for one backend go next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// Output interface.
    pub ifindex: u32,
    /// The neighbour the frame is addressed to: the backend itself when on-link,
    /// otherwise the route's gateway.
    pub via: IpAddr,
    /// The neighbour's MAC address, `None` while the kernel has no usable entry.
    pub mac: Option<[u8; 6]>,
}

impl NextHop {
    pub fn is_resolved(&self) -> bool {
        self.mac.is_some()
    }
}

/// Why a backend has no next hop at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// The kernel found no route (its errno, e.g. `ENETUNREACH`).
    NoRoute(i32),
    /// The address belongs to this host.
    Local,
    /// The route does not forward (blackhole, prohibit, broadcast, ...).
    NotUnicast(RouteType),
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::NoRoute(errno) => {
                write!(f, "no route: {}", io::Error::from_raw_os_error(*errno))
            }
            RouteError::Local => f.write_str("the address is local to the gateway"),
            RouteError::NotUnicast(kind) => write!(f, "route of type {kind:?} does not forward"),
        }
    }
}

impl std::error::Error for RouteError {}

/// The result for one backend.
pub type Resolution = Result<NextHop, RouteError>;

/// Usable neighbour states (the kernel's `NUD_VALID` set minus `NUD_INCOMPLETE`).
fn usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

/// States for which the kernel should be asked to (re)resolve the neighbour. `STALE` is
/// included because nothing else would ever re-confirm it (see the module docs); `DELAY`
/// and `PROBE` are already being confirmed, `PERMANENT` and `NOARP` never are.
fn needs_poke(state: Option<NeighbourState>) -> bool {
    match state {
        None => true,
        Some(s) => matches!(
            s,
            NeighbourState::None
                | NeighbourState::Incomplete
                | NeighbourState::Failed
                | NeighbourState::Stale
        ),
    }
}

/// One neighbour table entry, as far as next hops care.
#[derive(Clone, Copy, Debug)]
struct Neighbour {
    state: NeighbourState,
    mac: Option<[u8; 6]>,
}

/// A route lookup's answer: interface and neighbour.
#[derive(Clone, Copy, Debug)]
struct Route {
    ifindex: u32,
    via: IpAddr,
}

/// Resolves backends to next hops over one rtnetlink socket.
pub struct Resolver {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("fd", &self.socket.as_raw_fd())
            .finish()
    }
}

impl Resolver {
    /// Opens an rtnetlink socket in the current thread's network namespace.
    pub fn new() -> io::Result<Resolver> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        set_recv_timeout(&socket, REPLY_TIMEOUT)?;
        Ok(Resolver {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// The next hop of every backend: one route query per backend and one neighbour dump.
    /// Unresolved next hops are handed to the kernel for resolution before returning, so
    /// a later call finds them resolved. Errors are transport failures only; a backend
    /// without a route gets its own [`RouteError`].
    pub fn resolve(&mut self, backends: &[IpAddr]) -> io::Result<Vec<(IpAddr, Resolution)>> {
        let mut routes = Vec::with_capacity(backends.len());
        for &backend in backends {
            routes.push((backend, self.route(backend)?));
        }
        let neighbours = self.neighbours()?;
        let mut poked = HashSet::new();
        let mut out = Vec::with_capacity(routes.len());
        for (backend, route) in routes {
            let resolution = route.map(|r| {
                let entry = neighbours.get(&(r.ifindex, r.via));
                if needs_poke(entry.map(|n| n.state)) && poked.insert((r.ifindex, r.via)) {
                    if let Err(e) = self.poke(r.ifindex, r.via) {
                        tracing::warn!(neighbour = %r.via, ifindex = r.ifindex, error = %e,
                            "cannot ask the kernel to resolve a next hop");
                    }
                }
                NextHop {
                    ifindex: r.ifindex,
                    via: r.via,
                    mac: entry.filter(|n| usable(n.state)).and_then(|n| n.mac),
                }
            });
            out.push((backend, resolution));
        }
        Ok(out)
    }

    /// The MAC address of interface `ifindex` (the source MAC of frames sent on it).
    pub fn local_mac(&mut self, ifindex: u32) -> io::Result<[u8; 6]> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        let mut mac = None;
        self.request(RouteNetlinkMessage::GetLink(msg), 0, |reply| {
            if let RouteNetlinkMessage::NewLink(link) = reply {
                mac = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                    _ => None,
                });
            }
        })?;
        mac.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("interface {ifindex} has no Ethernet address"),
            )
        })
    }

    /// `ip route get ADDR`.
    fn route(&mut self, dst: IpAddr) -> io::Result<Result<Route, RouteError>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst);
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes.push(RouteAttribute::Destination(dst.into()));
        let mut answer = None;
        let result = self.request(RouteNetlinkMessage::GetRoute(msg), 0, |reply| {
            if let RouteNetlinkMessage::NewRoute(route) = reply {
                answer = Some(route);
            }
        });
        match result {
            Ok(()) => {}
            Err(Failure::Kernel(errno)) => return Ok(Err(RouteError::NoRoute(errno))),
            Err(Failure::Io(e)) => return Err(e),
        }
        let route = answer.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "RTM_GETROUTE got no route back")
        })?;
        match route.header.kind {
            RouteType::Unicast => {}
            RouteType::Local => return Ok(Err(RouteError::Local)),
            kind => return Ok(Err(RouteError::NotUnicast(kind))),
        }
        let mut ifindex = None;
        let mut via = dst;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(i) => ifindex = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = IpAddr::V4(*a),
                RouteAttribute::Gateway(RouteAddress::Inet6(a)) => via = IpAddr::V6(*a),
                // An IPv4 route through an IPv6 gateway (RFC 5549).
                RouteAttribute::Via(RouteVia::Inet(a)) => via = IpAddr::V4(*a),
                RouteAttribute::Via(RouteVia::Inet6(a)) => via = IpAddr::V6(*a),
                _ => {}
            }
        }
        let ifindex = ifindex.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("route to {dst} has no interface"),
            )
        })?;
        Ok(Ok(Route { ifindex, via }))
    }

    /// The whole neighbour table (IPv4 and IPv6), keyed by interface and address.
    fn neighbours(&mut self) -> io::Result<HashMap<(u32, IpAddr), Neighbour>> {
        let mut table = HashMap::new();
        self.request(
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            NLM_F_DUMP,
            |reply| {
                let RouteNetlinkMessage::NewNeighbour(n) = reply else {
                    return;
                };
                if n.header.flags.contains(NeighbourFlags::Proxy) {
                    return;
                }
                let mut addr = None;
                let mut mac = None;
                for attr in &n.attributes {
                    match attr {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                            addr = Some(IpAddr::V4(*a))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                            addr = Some(IpAddr::V6(*a))
                        }
                        NeighbourAttribute::LinkLayerAddress(l) => {
                            mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                        }
                        _ => {}
                    }
                }
                if let Some(addr) = addr {
                    let entry = Neighbour {
                        state: n.header.state,
                        mac,
                    };
                    table.insert((n.header.ifindex, addr), entry);
                }
            },
        )?;
        Ok(table)
    }

    /// Asks the kernel to resolve (or re-confirm) `addr` on `ifindex`: `RTM_NEWNEIGH` with
    /// `NTF_USE`, which creates the entry if missing and starts ARP/ND without changing a
    /// valid entry's address.
    fn poke(&mut self, ifindex: u32, addr: IpAddr) -> io::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(addr);
        msg.header.ifindex = ifindex;
        msg.header.flags = NeighbourFlags::Use;
        msg.attributes
            .push(NeighbourAttribute::Destination(match addr {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_ACK,
            |_| {},
        )
        .map_err(io::Error::from)
    }

    /// Sends one request and feeds every reply message to `on_reply` until the request is
    /// answered: `NLMSG_DONE` for a dump, an ACK or error, or a single non-multipart reply.
    /// Replies to earlier requests (left over after an error) are skipped by sequence number.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        mut on_reply: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), Failure> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut out = vec![0; req.header.length as usize];
        req.serialize(&mut out);
        self.socket.send(&out, 0)?;

        loop {
            let len = self.socket.recv(&mut &mut self.buf[..], 0)?;
            if len > self.buf.len() {
                return Err(invalid("netlink reply truncated").into());
            }
            let mut rest = &self.buf[..len];
            while rest.len() >= 16 {
                // nlmsg_len is the first field, in host order.
                let msg_len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if msg_len < 16 || msg_len > rest.len() {
                    return Err(invalid("malformed netlink message length").into());
                }
                let bytes = &rest[..msg_len];
                // Netlink messages are 4-byte aligned.
                rest = &rest[msg_len.next_multiple_of(4).min(rest.len())..];
                let msg_seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
                if msg_seq != seq {
                    continue;
                }
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| invalid(&format!("undecodable netlink reply: {e}")))?;
                let multipart = parsed.header.flags & NLM_F_MULTIPART != 0;
                match parsed.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(()),
                            Some(code) => Err(Failure::Kernel(-code.get())),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        on_reply(inner);
                        if !multipart && flags & NLM_F_ACK == 0 {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// How a request failed: the kernel refused it (an errno), or the socket failed.
#[derive(Debug)]
enum Failure {
    Kernel(i32),
    Io(io::Error),
}

impl From<Failure> for io::Error {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Kernel(errno) => io::Error::from_raw_os_error(errno),
            Failure::Io(e) => e,
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// Bounds every wait for the kernel, so a lost reply cannot hang the control loop.
fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: the fd is a live socket owned by `socket`; `tv` is a valid timeval and its
    // exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_states_are_the_valid_ones() {
        for s in [
            NeighbourState::Reachable,
            NeighbourState::Stale,
            NeighbourState::Delay,
            NeighbourState::Probe,
            NeighbourState::Permanent,
            NeighbourState::Noarp,
        ] {
            assert!(usable(s), "{s:?}");
        }
        for s in [
            NeighbourState::Incomplete,
            NeighbourState::Failed,
            NeighbourState::None,
        ] {
            assert!(!usable(s), "{s:?}");
        }
    }

    #[test]
    fn pokes_missing_failed_and_stale_entries_only() {
        assert!(needs_poke(None));
        assert!(needs_poke(Some(NeighbourState::Failed)));
        assert!(needs_poke(Some(NeighbourState::Stale)));
        assert!(needs_poke(Some(NeighbourState::Incomplete)));
        assert!(!needs_poke(Some(NeighbourState::Reachable)));
        assert!(!needs_poke(Some(NeighbourState::Permanent)));
        assert!(!needs_poke(Some(NeighbourState::Probe)));
    }

    #[test]
    fn route_errors_explain_themselves() {
        assert!(RouteError::NoRoute(libc::ENETUNREACH)
            .to_string()
            .contains("unreachable"));
        assert_eq!(
            RouteError::Local.to_string(),
            "the address is local to the gateway"
        );
    }
}
