//! TCP sockets for BGP: non-blocking connect from a chosen local address, listeners,
//! and TCP MD5 signatures (RFC 2385) through the Linux TCP_MD5SIG socket option.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, TcpKeepalive, Type};

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

/// A non-blocking listener; `md5` lists the peers that must sign their segments.
pub fn listen(addr: SocketAddr, md5: &[(IpAddr, &str)]) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(domain(&addr.ip()), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    for (peer, password) in md5 {
        listener_md5(&socket, addr, *peer, Some(*password))?;
    }
    socket.bind(&addr.into())?;
    socket.listen(16)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// Sets (or with `None` deletes) `peer`'s TCP MD5 key on a listener bound to `addr`.
/// An IPv4 listener skips IPv6 peers: they can never connect to it, and Linux refuses a
/// key whose address is not IPv4 on an IPv4 socket (EINVAL).
pub fn listener_md5(
    listener: &impl AsRawFd,
    addr: SocketAddr,
    peer: IpAddr,
    password: Option<&str>,
) -> io::Result<()> {
    let peer = match (addr, peer) {
        (SocketAddr::V4(_), IpAddr::V6(_)) => return Ok(()),
        // A dual-stack listener sees IPv4 peers as mapped addresses.
        (SocketAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        _ => peer,
    };
    set_md5(listener, peer, password.unwrap_or(""))
}

/// An IPv4 peer reaching a dual-stack listener shows up as `::ffff:a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
