//! The service a test or lab node runs behind the VIPs: an HTTP server that answers
//! `node=<name> client=<ip>:<port>` (so a test sees which node served it and that the
//! client's real address arrived), and TCP and UDP echo. Replies leave through the node's
//! own routes, straight to the client (DSR).
//!
//! Usage: `dsrgate-node --name node1 [--http PORT] [--echo PORT]` (defaults 80 and 7);
//! it listens on every IPv4 and IPv6 address, so the VIPs on `lo` are covered.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    bind, recvmsg, sendmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn6, SockaddrStorage,
};

/// Connections served at once; more are closed at accept so a flood cannot exhaust threads.
const MAX_CONNECTIONS: usize = 1024;
/// Largest HTTP request head read before answering 400.
const MAX_REQUEST: usize = 8192;

fn main() -> Result<()> {
    let mut name = None;
    let (mut http, mut echo) = (80u16, 7u16);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--name" => name = Some(value()?),
            "--http" => http = value()?.parse().context("--http")?,
            "--echo" => echo = value()?.parse().context("--echo")?,
            _ => bail!("usage: dsrgate-node --name NAME [--http PORT] [--echo PORT]"),
        }
    }
    let name: Arc<str> = name.context("--name is required")?.into();
    let live = Arc::new(AtomicUsize::new(0));

    // One dual-stack socket per service: IPv4 clients appear as v4-mapped addresses,
    // which `client_addr` folds back.
    let any = |port| SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let http_listener =
        TcpListener::bind(any(http)).with_context(|| format!("bind HTTP port {http}"))?;
    let echo_listener =
        TcpListener::bind(any(echo)).with_context(|| format!("bind TCP echo port {echo}"))?;
    let udp4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, echo))
        .with_context(|| format!("bind UDP echo port {echo}"))?;
    let udp6 = udp6_only(echo).with_context(|| format!("bind UDP echo port {echo} (IPv6)"))?;

    let (n, l) = (name.clone(), live.clone());
    thread::spawn(move || serve(http_listener, l, move |s| http_reply(s, &n)));
    let l = live.clone();
    thread::spawn(move || serve(echo_listener, l, tcp_echo));
    eprintln!("dsrgate-node {name}: HTTP on {http}, TCP and UDP echo on {echo}");
    thread::spawn(move || udp_echo(udp6, false));
    udp_echo(udp4, true)
}

fn serve(
    listener: TcpListener,
    live: Arc<AtomicUsize>,
    handler: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    let handler = Arc::new(handler);
    for stream in listener.incoming().flatten() {
        // Relaxed: a bare count that guards nothing but its own bound.
        if live.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            live.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let (live, handler) = (live.clone(), handler.clone());
        thread::spawn(move || {
            handler(stream);
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn client_addr(s: &TcpStream) -> String {
    match s.peer_addr() {
        Ok(SocketAddr::V6(a)) => match a.ip().to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", a.port()),
            None => format!("[{}]:{}", a.ip(), a.port()),
        },
        Ok(a) => a.to_string(),
        Err(_) => "unknown".into(),
    }
}

/// Answers every request on the connection (keep-alive) until the client closes it.
fn http_reply(mut s: TcpStream, name: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_REQUEST {
                let _ = s.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let close = String::from_utf8_lossy(&buf[..head_end])
            .to_ascii_lowercase()
            .contains("connection: close");
        buf.drain(..head_end);
        let body = format!("node={name} client={}\n", client_addr(&s));
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if s.write_all(reply.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn tcp_echo(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// An IPv6-only UDP socket, so that IPv4 datagrams arrive on the IPv4 socket with IPv4
/// packet info.
fn udp6_only(port: u16) -> Result<UdpSocket> {
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)),
    )?;
    Ok(UdpSocket::from(fd))
}

/// Echoes datagrams with the source address the client sent to. An unbound socket would
/// otherwise answer from the node's own address, and the client, which talked to the VIP,
/// would drop the reply.
fn udp_echo(sock: UdpSocket, v4: bool) -> Result<()> {
    if v4 {
        setsockopt(&sock, sockopt::Ipv4PacketInfo, &true)?;
    } else {
        setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true)?;
    }
    let mut buf = vec![0u8; 65536];
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    loop {
        let (n, from, dst4, dst6) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<SockaddrStorage>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .context("UDP echo receive")?;
            let (mut dst4, mut dst6) = (None, None);
            for c in msg.cmsgs().into_iter().flatten() {
                match c {
                    ControlMessageOwned::Ipv4PacketInfo(i) => dst4 = Some(i.ipi_addr),
                    ControlMessageOwned::Ipv6PacketInfo(i) => dst6 = Some(i.ipi6_addr),
                    _ => {}
                }
            }
            (msg.bytes, msg.address, dst4, dst6)
        };
        let Some(from) = from else { continue };
        let iov = [IoSlice::new(&buf[..n])];
        let info4 = dst4.map(|a| libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: a,
            ipi_addr: a,
        });
        let info6 = dst6.map(|a| libc::in6_pktinfo {
            ipi6_addr: a,
            ipi6_ifindex: 0,
        });
        let mut cmsgs = Vec::with_capacity(1);
        if let Some(i) = &info4 {
            cmsgs.push(ControlMessage::Ipv4PacketInfo(i));
        }
        if let Some(i) = &info6 {
            cmsgs.push(ControlMessage::Ipv6PacketInfo(i));
        }
        // A failed reply (no route yet, buffer full) loses one datagram, as UDP may.
        let _ = sendmsg(
            sock.as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::empty(),
            Some(&from),
        );
    }
}
