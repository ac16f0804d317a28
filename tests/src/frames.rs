//! Hand-built test frames (tunnels, fragments, ICMP errors, VLAN tags, deliberately broken
//! headers: shapes a normal socket cannot send) and an AF_PACKET socket to put them on
//! the wire. Test code only: the dataplane's own parsing lives in `dataplane::wire`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// The Internet checksum (RFC 1071) of `data`, starting from the partial sum `sum`.
pub fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut bytes = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            bytes.extend(s.octets());
            bytes.extend(d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            bytes.extend(s.octets());
            bytes.extend(d.octets());
        }
        _ => panic!("mixed address families"),
    }
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    sum += u32::from(proto) + len as u32;
    sum
}

/// An Ethernet frame.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend(dst);
    f.extend(src);
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

/// An Ethernet frame with one 802.1Q tag.
pub fn eth_vlan(dst: [u8; 6], src: [u8; 6], vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut inner = vid.to_be_bytes().to_vec();
    inner.extend(ethertype.to_be_bytes());
    inner.extend(payload);
    eth(dst, src, 0x8100, &inner)
}

/// An IPv4 packet (no options, TTL 64, correct header checksum). `frag` is
/// (offset in 8-byte units, more fragments).
pub fn ipv4_frag(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    frag: (u16, bool),
    payload: &[u8],
) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend(((20 + payload.len()) as u16).to_be_bytes());
    h.extend(0x1234u16.to_be_bytes());
    h.extend((frag.0 | if frag.1 { 0x2000 } else { 0 }).to_be_bytes());
    h.extend([64, proto, 0, 0]);
    h.extend(src.octets());
    h.extend(dst.octets());
    let c = checksum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend(payload);
    h
}

/// Recomputes the header checksum of the IPv4 packet `ip`, if its IHL fits.
pub fn fix_ipv4_checksum(ip: &mut [u8]) {
    let hl = usize::from(ip.first().copied().unwrap_or(0) & 0x0f) * 4;
    if hl >= 20 && hl <= ip.len() && ip[0] >> 4 == 4 {
        ip[10..12].fill(0);
        let c = checksum(&ip[..hl], 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// Sets the ECN field (RFC 3168 §5) of the IPv4 or IPv6 packet `ip`.
pub fn set_ecn(ip: &mut [u8], ecn: u8) {
    if ip[0] >> 4 == 4 {
        ip[1] = (ip[1] & !3) | ecn;
        fix_ipv4_checksum(ip);
    } else {
        ip[1] = (ip[1] & !0x30) | (ecn << 4);
    }
}

/// An unfragmented IPv4 packet.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_frag(src, dst, proto, (0, false), payload)
}

/// An IPv6 packet (hop limit 64).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend((payload.len() as u16).to_be_bytes());
    h.extend([next, 64]);
    h.extend(src.octets());
    h.extend(dst.octets());
    h.extend(payload);
    h
}

/// An IPv6 fragment header (offset in 8-byte units) followed by `payload`.
pub fn ipv6_frag_hdr(next: u8, offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend(((offset << 3) | u16::from(more)).to_be_bytes());
    h.extend(0xabcd_u32.to_be_bytes());
    h.extend(payload);
    h
}

/// An IPv6 destination-options header (8 bytes, PadN) followed by `payload`.
pub fn ipv6_dstopts(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0];
    h.extend(payload);
    h
}

/// A UDP datagram with a correct checksum for the given addresses.
pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend(sport.to_be_bytes());
    u.extend(dport.to_be_bytes());
    u.extend((len as u16).to_be_bytes());
    u.extend([0, 0]);
    u.extend(payload);
    let mut c = checksum(&u, pseudo_sum(src, dst, PROTO_UDP, len));
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// A TCP SYN with a correct checksum.
pub fn tcp_syn(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend(sport.to_be_bytes());
    t.extend(dport.to_be_bytes());
    t.extend(1u32.to_be_bytes());
    t.extend(0u32.to_be_bytes());
    t.extend([0x50, 0x02]);
    t.extend(64240u16.to_be_bytes());
    t.extend([0, 0, 0, 0]);
    let c = checksum(&t, pseudo_sum(src, dst, PROTO_TCP, t.len()));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// An ICMPv4 message; `rest` is the second 32-bit word (e.g. next-hop MTU).
pub fn icmp4(kind: u8, code: u8, rest: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend(rest);
    m.extend(payload);
    let c = checksum(&m, 0);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMPv6 message with a correct checksum.
pub fn icmp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    payload: &[u8],
) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend(rest);
    m.extend(payload);
    let c = checksum(
        &m,
        pseudo_sum(src.into(), dst.into(), PROTO_ICMPV6, m.len()),
    );
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A raw AF_PACKET socket bound to one interface (in the calling thread's namespace).
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn open(ifname: &str) -> io::Result<PacketSocket> {
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain socket(2); checked before use. Protocol 0: send only.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PacketSocket { fd, ifindex })
    }

    /// Transmits one complete Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and sll are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A non-blocking AF_PACKET socket that captures every frame (ETH_P_ALL) the kernel sees in the
/// calling thread's namespace, on one interface or on all of them. Its receive buffer is
/// raised to 32 MiB so a burst is not lost before the test reads it.
pub struct PacketCapture {
    fd: OwnedFd,
}

impl PacketCapture {
    /// Opens a capture on `ifname`, or on every interface of the namespace with `None`.
    pub fn open(ifname: Option<&str>) -> io::Result<PacketCapture> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let buf: libc::c_int = 32 << 20;
        // SAFETY: an int option of the size passed.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&buf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(ifname) = ifname {
            let name = std::ffi::CString::new(ifname)?;
            // SAFETY: valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex;
            // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(PacketCapture { fd })
    }

    /// The next captured frame, copied into `buf`; `None` when nothing is queued.
    pub fn recv<'a>(&self, buf: &'a mut [u8]) -> Option<&'a [u8]> {
        // SAFETY: receiving into a live buffer of the length given.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        (n >= 0).then(|| &buf[..n as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = ipv4(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            PROTO_UDP,
            b"xy",
        );
        assert_eq!(checksum(&p[..20], 0), 0);
        assert_eq!(p.len(), 22);
    }

    #[test]
    fn udp_checksum_verifies_over_pseudo_header() {
        let (s, d): (IpAddr, IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        let u = udp(s, d, 1000, 2000, b"hello");
        assert_eq!(checksum(&u, pseudo_sum(s, d, PROTO_UDP, u.len())), 0);
        // RFC 1071 example: the sum of these words is ddf2, so the checksum is 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0),
            0x220d
        );
    }
}
