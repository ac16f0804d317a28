//! TCP sockets for BGP: non-blocking connect from a chosen local address, listeners,
//! and TCP MD5 signatures (RFC 2385) through the Linux TCP_MD5SIG socket option.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, TcpKeepalive, Type};
use tracing::warn;

/// `TCP_MD5SIG_MAXKEYLEN` in linux/tcp.h.
const MD5_MAX_KEY: usize = 80;

/// `struct tcp_md5sig` from linux/tcp.h. socket2's storage type is a
/// `repr(transparent)` wrapper of `struct sockaddr_storage`, so the layout matches.
#[repr(C)]
struct TcpMd5Sig {
    addr: socket2::SockAddrStorage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MD5_MAX_KEY],
}

/// Signs (and requires signatures on) segments to and from `peer` (RFC 2385). On a
/// listener this admits that peer's connections. An empty password deletes the key
/// (the kernel reads a zero key length so).
pub fn set_md5(socket: &impl AsRawFd, peer: IpAddr, password: &str) -> io::Result<()> {
    let key = password.as_bytes();
    if key.len() > MD5_MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TCP MD5 password longer than {MD5_MAX_KEY} octets"),
        ));
    }
    let addr = SockAddr::from(SocketAddr::new(peer, 0));
    let mut sig = TcpMd5Sig {
        addr: addr.as_storage(),
        flags: 0,
        prefixlen: 0,
        keylen: key.len() as u16,
        ifindex: 0,
        key: [0; MD5_MAX_KEY],
    };
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: `sig` is a live, fully initialised `struct tcp_md5sig` and the length
    // passed is its size; the kernel only reads from it during the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&sig as *const TcpMd5Sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes written to a connected TCP socket that the peer has not acknowledged, sent
/// or not: `SIOCOUTQ` (tcp(7); linux/sockios.h defines it as `TIOCOUTQ`).
pub fn unacked(socket: &impl AsRawFd) -> io::Result<usize> {
    let mut bytes: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through its argument, which points at `bytes`,
    // alive for the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &raw mut bytes) };
    if rc == 0 {
        // The kernel reports a count, never negative.
        Ok(usize::try_from(bytes).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// TCP keepalive on every BGP connection (tcp(7)): after [`KEEPALIVE_IDLE`] without a
/// segment from the peer, a probe every [`KEEPALIVE_INTERVAL`], and after
/// [`KEEPALIVE_PROBES`] unanswered the connection fails (ETIMEDOUT): a minute in all. A
/// peer that restarted answers the first probe with a reset. This is what finds a lost
/// session on hold time 0, which sends nothing at all (RFC 4271 §4.4); on a nonzero hold
/// time the hold timer usually finds it first. A live peer's TCP answers the probes even
/// while its BGP process is frozen (the hold timer's and RFC 9687's case).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_PROBES: u32 = 3;

/// Turns on keepalive probing for `socket`, timed as [`KEEPALIVE_IDLE`] says.
pub fn keep_alive(socket: &impl AsFd) -> io::Result<()> {
    let params = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    SockRef::from(socket).set_tcp_keepalive(&params)
}

fn domain(addr: &IpAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

/// Starts a non-blocking connect; completion shows up as writability.
pub fn connect(
    peer: SocketAddr,
    local: Option<IpAddr>,
    md5: Option<&str>,
) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(domain(&peer.ip()), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    keep_alive(&socket)?;
    if let Some(password) = md5 {
        set_md5(&socket, peer.ip(), password)?;
    }
    if let Some(local) = local {
        socket.bind(&SocketAddr::new(local, 0).into())?;
    }
    match socket.connect(&peer.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

/// Connections a listener holds, their handshake done, until they are accepted
/// (listen(2)): a speaker has a few peers, each connecting once at a time (twice in a
/// collision).
pub const BACKLOG: u16 = 16;

/// A non-blocking listener; `md5` lists the peers that must sign their segments.
/// Every address, `[::]`, on a host without IPv6 (booted with `ipv6.disable=1`, where
/// an IPv6 socket cannot even be made) is every IPv4 address, `0.0.0.0`, instead: the
/// dual-stack socket would only have served IPv4 peers there anyway.
pub fn listen(addr: SocketAddr, md5: &[(IpAddr, &str)]) -> io::Result<mio::net::TcpListener> {
    listen_with(addr, md5, |domain| {
        Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
    })
}

/// [`listen`], making its socket with `new_socket` (which the tests make fail as a host
/// without IPv6 does).
fn listen_with(
    addr: SocketAddr,
    md5: &[(IpAddr, &str)],
    new_socket: impl Fn(Domain) -> io::Result<Socket>,
) -> io::Result<mio::net::TcpListener> {
    let socket = match new_socket(domain(&addr.ip())) {
        Err(e)
            if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                && addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) =>
        {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            warn!("no IPv6 on this host ({e}): BGP peers are awaited on {v4}, IPv4 only, instead of {addr}");
            return listen_with(v4, md5, new_socket);
        }
        result => result?,
    };
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    for (peer, password) in md5 {
        listener_md5(&socket, *peer, Some(*password))?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::from(BACKLOG))?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// Sets (or with `None` deletes) `peer`'s TCP MD5 key on a listener. An IPv4 listener
/// skips IPv6 peers: they can never connect to it, and Linux refuses a key whose
/// address is not IPv4 on an IPv4 socket (EINVAL). The listener's own family decides,
/// not the address it was asked for: `[::]` may be served by `0.0.0.0` ([`listen`]).
pub fn listener_md5(listener: &impl AsFd, peer: IpAddr, password: Option<&str>) -> io::Result<()> {
    let ipv4_socket = SockRef::from(listener).local_addr()?.is_ipv4();
    let peer = match (ipv4_socket, peer) {
        (true, IpAddr::V6(_)) => return Ok(()),
        // A dual-stack listener sees IPv4 peers as mapped addresses.
        (false, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        _ => peer,
    };
    set_md5(&listener.as_fd(), peer, password.unwrap_or(""))
}

/// One IPv6 address of an interface, as getifaddrs(3) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub addr: Ipv6Addr,
    pub prefix_len: u32,
}

/// The IPv6 addresses of every interface (getifaddrs(3)).
pub fn ipv6_addresses() -> io::Result<Vec<InterfaceAddress>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list it allocates through the pointer it is given,
    // which is live for the call; the list is freed below, once.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is an entry of the list getifaddrs made, not freed yet.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a non-null ifa_addr points at a socket address whose family field
        // says how long it is; only an AF_INET6 one is read as a sockaddr_in6, and its
        // netmask has that family too (getifaddrs(3)). ifa_name is a C string.
        let (addr, mask, name) = unsafe {
            if i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET6 {
                continue;
            }
            (
                (*ifa.ifa_addr.cast::<libc::sockaddr_in6>())
                    .sin6_addr
                    .s6_addr,
                (*ifa.ifa_netmask.cast::<libc::sockaddr_in6>())
                    .sin6_addr
                    .s6_addr,
                std::ffi::CStr::from_ptr(ifa.ifa_name),
            )
        };
        out.push(InterfaceAddress {
            interface: name.to_string_lossy().into_owned(),
            addr: Ipv6Addr::from(addr),
            prefix_len: u128::from_be_bytes(mask).count_ones(),
        });
    }
    // SAFETY: `list` came from getifaddrs and is freed once; nothing points into it
    // any more (everything kept was copied).
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// RFC 2545 §3: the link-local address to send after global next hop `next_hop` to
/// `peer`, on a session from `local`: "if and only if the BGP speaker shares a common
/// subnet with the entity identified by the global IPv6 address ... and the peer the
/// route is being advertised to". That is the link-local address of the interface that
/// has `local`, when `next_hop` is an address of that interface too (the next hop is
/// this host, on that link) and `peer` is inside one of its global prefixes (on that
/// link as well). None otherwise: the link-local address of a next hop that is another
/// host is not ours to know, and a peer elsewhere could not reach one.
pub fn link_local_next_hop(
    addresses: &[InterfaceAddress],
    local: Ipv6Addr,
    peer: Ipv6Addr,
    next_hop: Ipv6Addr,
) -> Option<Ipv6Addr> {
    let within = |a: &InterfaceAddress, ip: Ipv6Addr| {
        let mask = u128::MAX
            .checked_shl(128 - a.prefix_len.min(128))
            .unwrap_or(0);
        u128::from(a.addr) & mask == u128::from(ip) & mask
    };
    addresses
        .iter()
        .filter(|a| a.addr == local)
        .map(|a| &a.interface)
        .find_map(|interface| {
            let on = || addresses.iter().filter(|a| &a.interface == interface);
            let here = on().any(|a| a.addr == next_hop);
            let peer_on_link = on()
                .filter(|a| !a.addr.is_unicast_link_local())
                .any(|a| within(a, peer));
            if !(here && peer_on_link) {
                return None;
            }
            on().map(|a| a.addr).find(Ipv6Addr::is_unicast_link_local)
        })
}

/// An IPv4 peer reaching a dual-stack listener shows up as `::ffff:a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(interface: &str, cidr: &str) -> InterfaceAddress {
        let (addr, len) = cidr.split_once('/').unwrap();
        InterfaceAddress {
            interface: interface.into(),
            addr: addr.parse().unwrap(),
            prefix_len: len.parse().unwrap(),
        }
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// RFC 2545 §3: the link-local address goes with the next hop when, and only when,
    /// the next hop is this host on the link that has the session and the peer.
    #[test]
    fn the_link_local_next_hop_is_sent_only_on_the_peers_link() {
        let host = [
            on("lo", "::1/128"),
            on("eth0", "2001:db8:f::2/64"),
            on("eth0", "2001:db8:f::12/64"),
            on("eth0", "fe80::2/64"),
            on("eth1", "2001:db8:e::2/64"),
            on("eth1", "fe80::1:2/64"),
            on("eth2", "2001:db8:d::2/64"),
        ];
        let ll = |local: &str, peer: &str, nh: &str| {
            link_local_next_hop(&host, ip(local), ip(peer), ip(nh))
        };
        // The session's own address, or another of its interface's.
        assert_eq!(
            ll("2001:db8:f::2", "2001:db8:f::1", "2001:db8:f::2"),
            Some(ip("fe80::2"))
        );
        assert_eq!(
            ll("2001:db8:f::2", "2001:db8:f::1", "2001:db8:f::12"),
            Some(ip("fe80::2"))
        );
        assert_eq!(
            ll("2001:db8:e::2", "2001:db8:e::1", "2001:db8:e::2"),
            Some(ip("fe80::1:2"))
        );
        // A next hop on another link, or another host's: its link-local is not ours.
        assert_eq!(ll("2001:db8:f::2", "2001:db8:f::1", "2001:db8:e::2"), None);
        assert_eq!(ll("2001:db8:f::2", "2001:db8:f::1", "2001:db8:f::3"), None);
        // A peer off the link (multihop).
        assert_eq!(ll("2001:db8:f::2", "2001:db8:99::1", "2001:db8:f::2"), None);
        // An interface without a link-local address, or a local address on none.
        assert_eq!(ll("2001:db8:d::2", "2001:db8:d::1", "2001:db8:d::2"), None);
        assert_eq!(ll("2001:db8:c::2", "2001:db8:f::1", "2001:db8:c::2"), None);
    }

    /// A listener on every address, `[::]`, on a host without IPv6 (no IPv6 socket can be
    /// made there: EAFNOSUPPORT) listens on `0.0.0.0` instead, takes IPv4 peers, and sets
    /// and changes their TCP MD5 keys as an IPv4 listener does. The speaker used to fail
    /// to start there, though nothing it was asked for needed IPv6.
    #[test]
    fn without_ipv6_every_address_is_every_ipv4_address() {
        let no_ipv6 = |domain| match domain {
            Domain::IPV6 => Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
            _ => Socket::new(domain, Type::STREAM, Some(Protocol::TCP)),
        };
        let v4_peer = IpAddr::from([192, 0, 2, 1]);
        let v6_peer: IpAddr = "2001:db8::1".parse().unwrap();
        let keys = [(v4_peer, "four"), (v6_peer, "six")];
        let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
        let listener = listen_with(any6, &keys, no_ipv6).unwrap();
        let bound = listener.local_addr().unwrap();
        assert!(bound.is_ipv4() && bound.ip().is_unspecified(), "{bound}");
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, bound.port())).unwrap();
        // A reload's new keys: the IPv4 peer's is set, the IPv6 one's skipped.
        listener_md5(&listener, v4_peer, Some("new")).unwrap();
        listener_md5(&listener, v6_peer, None).unwrap();
        // A specific IPv6 address, or another error, is not taken for that.
        let one6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
        let e = listen_with(one6, &[], no_ipv6).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAFNOSUPPORT));
        let no_files = |_| Err(io::Error::from_raw_os_error(libc::EMFILE));
        let e = listen_with(any6, &[], no_files).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
    }
}
