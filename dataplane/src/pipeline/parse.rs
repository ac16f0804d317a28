//! Frame → the fields the pipeline decides on. Structural checks only; whether the frame is
//! for a VIP (and so whether its checksum and TTL matter) is decided by the caller.

use super::DropReason;
use crate::flow::FlowKey;
use crate::wire::ipv6ext::{self, WalkError};
use crate::wire::vlan::{self, VlanTag};
use crate::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, Icmpv6Packet, Ipv4Packet,
    Ipv6Packet, TcpPacket, UdpPacket, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, IPV6_HEADER_LEN,
    TCP_HEADER_LEN, UDP_HEADER_LEN,
};

pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

/// What the IP packet carries, as far as the pipeline cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Kind {
    /// TCP or UDP (or a fragment of either): balanced by its flow.
    #[default]
    Flow,
    /// An ICMP error about a packet a backend sent from a VIP; the tuple below is the
    /// embedded packet's, swapped, i.e. the client's flow the error belongs to.
    IcmpError,
    /// Any protocol other than TCP, UDP and ICMP, and fragmented ICMP.
    Other,
}

/// The parsed fields of one frame, written in place by [`parse`] (into the worker's
/// per-batch scratch, so nothing is copied between the passes).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Parsed {
    /// The flow as received: addresses (IPv4-mapped for IPv4), protocol, and ports (zero
    /// for fragments, which may not carry them). For an ICMP error, the quoted packet's flow,
    /// swapped: the client's flow the error is about.
    pub key: FlowKey,
    /// Offset of the IP header from the start of the frame (14, or 18 with a VLAN tag).
    pub l3: u16,
    /// The IP packet's length from its header (Ethernet padding excluded).
    pub ip_len: u16,
    pub v6: bool,
    /// IPv4 TOS / IPv6 traffic class: DSCP and ECN.
    pub tos: u8,
    pub ttl: u8,
    /// IPv4 DF flag; always true for IPv6, which routers never fragment.
    pub df: bool,
    pub kind: Kind,
    /// Part of a fragmented datagram (first or later fragment).
    pub fragment: bool,
    /// A fragment other than the first: RFC 1812 §4.3.2.7 sends no ICMP error for those.
    pub later_fragment: bool,
    pub tcp_flags: u8,
}

/// A decision made before any lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Early {
    Pass,
    Drop(DropReason),
}

impl From<DropReason> for Early {
    fn from(r: DropReason) -> Early {
        Early::Drop(r)
    }
}

/// `::ffff:a.b.c.d` from the 4 bytes at `b`, built in a register so that it is stored whole
/// (as a little-endian value, so the address bytes need no swap).
#[inline(always)]
fn mapped_v4(b: &[u8]) -> [u8; 16] {
    let a = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    ((u128::from(a) << 96) | (0xffffu128 << 80)).to_le_bytes()
}

/// Whether the 16 bytes at `a` are an IPv4-mapped IPv6 address, `::ffff:0:0/96` (RFC 4291
/// §2.5.5.2): how IPv4 addresses are kept in a flow key and the VIP table, and never an
/// address on the wire (RFC 6890 lists the block as not forwardable, not a valid source or
/// destination).
/// A masked compare in native byte order: no byte swap (a slice compare cost about 12
/// instructions, twice per IPv6 packet).
#[inline(always)]
pub(crate) fn is_v4_mapped(a: &[u8; 16]) -> bool {
    const PREFIX: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
    const MASK: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
    ];
    u128::from_ne_bytes(*a) & u128::from_ne_bytes(MASK) == u128::from_ne_bytes(PREFIX)
}

#[inline(always)]
fn v6_addr(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The common case, read straight from the bytes: an untagged IPv4 frame with a 20-byte
/// header, not a fragment, carrying a complete TCP or UDP header that passes every check of
/// the general parser. Anything else (including every malformed frame) is `None`, and the
/// general parser decides it, so the result is always the general parser's.
#[inline(always)]
pub(crate) fn fast_v4(frame: &[u8]) -> Option<Parsed> {
    const L3: usize = ETHERNET_HEADER_LEN;
    let h = frame.first_chunk::<{ L3 + IPV4_HEADER_LEN + UDP_HEADER_LEN }>()?;
    let ip = &h[L3..];
    // Ethertype IPv4, version 4 with IHL 5, and neither MF nor a fragment offset; a group
    // (broadcast, multicast) destination MAC goes the general way, which passes it.
    if h[12..14] != [0x08, 0x00] || ip[0] != 0x45 || be16(ip, 6) & 0x3fff != 0 || h[0] & 1 != 0 {
        return None;
    }
    let total = usize::from(be16(ip, 2));
    let l4 = frame.get(L3 + IPV4_HEADER_LEN..L3 + total)?;
    let proto = ip[9];
    let tcp_flags = match proto {
        TCP => {
            let t = l4.first_chunk::<TCP_HEADER_LEN>()?;
            let off = usize::from(t[12] >> 4) * 4;
            if off < TCP_HEADER_LEN || off > l4.len() {
                return None;
            }
            t[13]
        }
        UDP => {
            let u = l4.first_chunk::<UDP_HEADER_LEN>()?;
            let len = usize::from(be16(u, 4));
            if len < UDP_HEADER_LEN || len > l4.len() {
                return None;
            }
            0
        }
        _ => return None,
    };
    let dst_port = be16(l4, 2);
    if dst_port == NO_SERVICE_PORT {
        return None;
    }
    Some(Parsed {
        key: FlowKey {
            src: mapped_v4(&ip[12..16]),
            dst: mapped_v4(&ip[16..20]),
            src_port: be16(l4, 0),
            dst_port,
            proto,
        },
        l3: L3 as u16,
        ip_len: total as u16,
        v6: false,
        tos: ip[1],
        ttl: ip[8],
        df: ip[6] & 0x40 != 0,
        kind: Kind::Flow,
        fragment: false,
        later_fragment: false,
        tcp_flags,
    })
}

/// Parses an Ethernet frame into `p`: every frame [`fast_v4`] does not take. Non-IP frames
/// (ARP, LLDP, ...) are `Pass`: the kernel's. So is a frame to a group (broadcast or
/// multicast) MAC address, whatever it carries: a router forwards no link-layer broadcast or
/// multicast (RFC 1812 §5.3.4) and answers none with an ICMP error (RFC 1122 §3.2.2), and
/// the steering program leaves them to the kernel. On error `p` holds garbage.
#[inline(never)]
pub(crate) fn parse_general(frame: &[u8], p: &mut Parsed) -> Result<(), Early> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Truncated)?;
    // The I/G bit of the destination address: broadcast is a group address too.
    if frame[0] & 1 != 0 {
        return Err(Early::Pass);
    }
    let mut l3 = ETHERNET_HEADER_LEN;
    let mut ethertype = eth.ethertype();
    if u16::from(ethertype) == vlan::TPID_8021Q {
        let tag = VlanTag::new_checked(&frame[l3..]).ok_or(DropReason::Truncated)?;
        ethertype = tag.ethertype();
        l3 += vlan::TAG_LEN;
    }
    p.l3 = l3 as u16;
    p.kind = Kind::Flow;
    p.tcp_flags = 0;
    p.key.src_port = 0;
    p.key.dst_port = 0;
    let ip = &frame[l3..];
    match ethertype {
        EthernetProtocol::Ipv4 => parse_v4(ip, p),
        EthernetProtocol::Ipv6 => parse_v6(ip, p),
        // Stacked tags (802.1ad) and everything that is not IP belong to the kernel.
        _ => Err(Early::Pass),
    }
}

#[inline]
fn parse_v4(ip: &[u8], p: &mut Parsed) -> Result<(), Early> {
    if ip.len() < IPV4_HEADER_LEN {
        return Err(DropReason::Truncated.into());
    }
    let pkt = Ipv4Packet::new_unchecked(ip);
    if pkt.version() != 4 {
        return Err(DropReason::BadVersion.into());
    }
    let hl = usize::from(pkt.header_len());
    let total = usize::from(pkt.total_len());
    if hl < IPV4_HEADER_LEN || hl > total {
        return Err(DropReason::BadIhl.into());
    }
    if total > ip.len() {
        return Err(DropReason::BadLength.into());
    }
    // Every accessor used below is in bounds now (smoltcp's check_len conditions hold).
    let fragment = pkt.more_frags() || pkt.frag_offset() != 0;
    p.ip_len = total as u16;
    p.v6 = false;
    p.tos = ip[1];
    p.ttl = pkt.hop_limit();
    p.df = pkt.dont_frag();
    p.fragment = fragment;
    p.later_fragment = pkt.frag_offset() != 0;
    p.key.src = mapped_v4(&ip[12..16]);
    p.key.dst = mapped_v4(&ip[16..20]);
    p.key.proto = u8::from(pkt.next_header());
    let l4 = &ip[hl..total];
    match p.key.proto {
        TCP | UDP if fragment => {}
        TCP | UDP => l4_ports(p, l4)?,
        ICMP if !fragment => icmpv4(p, l4)?,
        _ => p.kind = Kind::Other,
    }
    Ok(())
}

#[inline]
fn parse_v6(ip: &[u8], p: &mut Parsed) -> Result<(), Early> {
    if ip.len() < IPV6_HEADER_LEN {
        return Err(DropReason::Truncated.into());
    }
    let pkt = Ipv6Packet::new_unchecked(ip);
    if pkt.version() != 6 {
        return Err(DropReason::BadVersion.into());
    }
    // To `::ffff:a.b.c.d`: no destination on the wire (see `is_v4_mapped`), and not for the
    // IPv4 VIP a.b.c.d, whose key it would match; encapsulated for it, it would go out as IPv6
    // in an IPv4 tunnel header that says IPv4. The kernel's (which drops it), as the steering
    // program decides.
    let dst = v6_addr(&ip[24..40]);
    if is_v4_mapped(&dst) {
        return Err(Early::Pass);
    }
    let total = pkt.total_len();
    // A zero payload length means a jumbogram (RFC 2675), which no Ethernet frame carries.
    if total > ip.len() || pkt.payload_len() == 0 {
        return Err(DropReason::BadLength.into());
    }
    let payload = &ip[IPV6_HEADER_LEN..total];
    let upper = ipv6ext::walk(payload, u8::from(pkt.next_header())).map_err(walk_error)?;
    // An atomic fragment (offset 0, no more fragments; RFC 6946) is a whole datagram.
    let (fragment, later) = match upper.fragment {
        Some(f) => (f.offset != 0 || f.more, f.offset != 0),
        None => (false, false),
    };
    p.ip_len = total as u16;
    p.v6 = true;
    p.tos = pkt.traffic_class();
    p.ttl = pkt.hop_limit();
    p.df = true;
    p.fragment = fragment;
    p.later_fragment = later;
    p.key.src = v6_addr(&ip[8..24]);
    p.key.dst = dst;
    // A fragment's protocol as every fragment of its datagram can tell it (see
    // `Upper::keyed_proto`): a later fragment carries no upper-layer header.
    p.key.proto = upper.keyed_proto();
    let l4 = payload.get(upper.offset..).ok_or(DropReason::Truncated)?;
    match p.key.proto {
        TCP | UDP if fragment => {}
        TCP | UDP => l4_ports(p, l4)?,
        ICMPV6 if !fragment => icmpv6(p, l4)?,
        _ => p.kind = Kind::Other,
    }
    Ok(())
}

fn walk_error(e: WalkError) -> DropReason {
    match e {
        WalkError::Truncated => DropReason::Truncated,
        WalkError::TooDeep => DropReason::TooManyExtHeaders,
    }
}

/// Port 0 is no service (the snapshot refuses it), and the VIP table keeps the fragment VIP
/// under port 0: a TCP or UDP header to port 0 is not ours, as the steering program sees it.
const NO_SERVICE_PORT: u16 = 0;

/// Ports and TCP flags of a complete TCP or UDP header. Shorter than the fixed header is
/// truncated; a data offset or UDP length that does not fit (smoltcp's `check_len`) is a
/// bad length.
#[inline]
fn l4_ports(p: &mut Parsed, l4: &[u8]) -> Result<(), Early> {
    let (src, dst) = if p.key.proto == TCP {
        if l4.len() < TCP_HEADER_LEN {
            return Err(DropReason::Truncated.into());
        }
        let tcp = TcpPacket::new_checked(l4).map_err(|_| DropReason::BadLength)?;
        // The flags byte whole (the view reads it bit by bit).
        p.tcp_flags = l4[13];
        (tcp.src_port(), tcp.dst_port())
    } else {
        if l4.len() < UDP_HEADER_LEN {
            return Err(DropReason::Truncated.into());
        }
        let udp = UdpPacket::new_checked(l4).map_err(|_| DropReason::BadLength)?;
        (udp.src_port(), udp.dst_port())
    };
    p.key.src_port = src;
    p.key.dst_port = dst;
    if p.key.dst_port == NO_SERVICE_PORT {
        return Err(Early::Pass);
    }
    Ok(())
}

/// ICMPv4 errors (destination unreachable, which includes fragmentation needed, time
/// exceeded, and parameter problem) carry the offending packet's header (RFC 792): take the
/// flow from it. Other ICMP (echo and so on) is the kernel's. The steering program
/// (dataplane/bpf/steer.c) steers the same types.
#[cold]
fn icmpv4(p: &mut Parsed, l4: &[u8]) -> Result<(), Early> {
    let icmp = Icmpv4Packet::new_checked(l4).map_err(|_| DropReason::Truncated)?;
    match icmp.msg_type() {
        Icmpv4Message::DstUnreachable
        | Icmpv4Message::TimeExceeded
        | Icmpv4Message::ParamProblem => {}
        _ => return Err(Early::Pass),
    }
    quoted(p, quoted_v4(icmp.data()).ok_or(DropReason::BadIcmp)?)
}

/// The IPv4 header an ICMPv4 error quotes. The quote is cut short (RFC 792 asks for the
/// header and 8 bytes), so its total length is not checked: only that the fixed header is
/// there and says IPv4.
fn quoted_v4(inner: &[u8]) -> Option<Quoted<'_>> {
    if inner.len() < IPV4_HEADER_LEN {
        return None;
    }
    let ip = Ipv4Packet::new_unchecked(inner);
    let hl = usize::from(ip.header_len());
    if ip.version() != 4 || hl < IPV4_HEADER_LEN {
        return None;
    }
    Some(Quoted {
        src: mapped_v4(&ip.src_addr().octets()),
        dst: mapped_v4(&ip.dst_addr().octets()),
        proto: u8::from(ip.next_header()),
        l4: inner.get(hl..),
        later_fragment: ip.frag_offset() != 0,
    })
}

/// ICMPv6 errors as for ICMPv4: every type below 128 (RFC 4443 §2.1: destination
/// unreachable, packet too big, time exceeded, parameter problem, and error types not yet
/// assigned, which §2.4 (b) says still go to the flow they quote), as the steering program.
/// Informational messages (echo, and neighbour discovery above all) are the kernel's.
#[cold]
fn icmpv6(p: &mut Parsed, l4: &[u8]) -> Result<(), Early> {
    if l4.len() < 8 {
        return Err(DropReason::Truncated.into());
    }
    let icmp = Icmpv6Packet::new_unchecked(l4);
    if !icmp.msg_type().is_error() {
        return Err(Early::Pass);
    }
    // Every error has 4 bytes after the checksum, types not yet assigned included (whose
    // body smoltcp's `payload` starts 4 bytes earlier).
    let inner = &l4[8..];
    if inner.len() < IPV6_HEADER_LEN {
        return Err(DropReason::BadIcmp.into());
    }
    let ip = Ipv6Packet::new_unchecked(inner);
    if ip.version() != 6 {
        return Err(DropReason::BadIcmp.into());
    }
    let upper = ipv6ext::walk(&inner[IPV6_HEADER_LEN..], u8::from(ip.next_header()))
        .map_err(|_| DropReason::BadIcmp)?;
    let later_fragment = upper.fragment.is_some_and(|f| f.offset != 0);
    let q = Quoted {
        src: ip.src_addr().octets(),
        dst: ip.dst_addr().octets(),
        // A quoted later fragment is followed without ports, keyed as its own fragments
        // are; anything else by its upper-layer protocol and ports.
        proto: if later_fragment {
            upper.keyed_proto()
        } else {
            upper.proto
        },
        l4: inner.get(IPV6_HEADER_LEN + upper.offset..),
        later_fragment,
    };
    quoted(p, q)
}

/// The header quoted in an ICMP error.
struct Quoted<'a> {
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    l4: Option<&'a [u8]>,
    later_fragment: bool,
}

/// Turns the quoted packet (a backend's reply: VIP → client) into the client's flow
/// (client → VIP) by swapping addresses and ports.
fn quoted(p: &mut Parsed, q: Quoted<'_>) -> Result<(), Early> {
    if q.proto != TCP && q.proto != UDP {
        // An error about, say, an ICMP echo reply: no flow to follow.
        return Err(Early::Pass);
    }
    // The error must be about a packet sent from the address it is addressed to.
    if q.src != p.key.dst {
        return Err(DropReason::BadIcmp.into());
    }
    p.kind = Kind::IcmpError;
    p.key.proto = q.proto;
    p.key.src = q.dst;
    if q.later_fragment {
        // No ports: follow the fragment rule (3-tuple).
        p.fragment = true;
        return Ok(());
    }
    // TCP and UDP both start with the two ports; the quote may end right after them, too
    // short for either view's checks.
    let l4 = q.l4.filter(|l| l.len() >= 4).ok_or(DropReason::BadIcmp)?;
    p.key.src_port = be16(l4, 2);
    p.key.dst_port = be16(l4, 0);
    if p.key.dst_port == NO_SERVICE_PORT {
        return Err(Early::Pass);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two parsers as the pipeline's `classify` combines them.
    fn parse(frame: &[u8], p: &mut Parsed) -> Result<(), Early> {
        match fast_v4(frame) {
            Some(q) => {
                *p = q;
                Ok(())
            }
            None => parse_general(frame, p),
        }
    }

    #[test]
    fn arp_passes_and_runts_drop() {
        let mut f = [0u8; 42];
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut p = Parsed::default();
        assert_eq!(parse(&f, &mut p), Err(Early::Pass));
        assert_eq!(
            parse(&f[..13], &mut p),
            Err(Early::Drop(DropReason::Truncated))
        );
    }

    proptest::proptest! {
        /// The fast path takes a frame only when the general parser accepts it, and then
        /// yields exactly what the general parser does. Frames start from a valid TCP or UDP
        /// one with a few bytes of the headers overwritten and a random length.
        #[test]
        fn fast_path_agrees_with_general(
            udp in proptest::bool::ANY,
            edits in proptest::collection::vec((0usize..60, proptest::num::u8::ANY), 0..4),
            len in 0usize..80,
        ) {
            let mut f = vec![0u8; 74];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            let ip = &mut f[14..];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&60u16.to_be_bytes());
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = if udp { UDP } else { TCP };
            ip[12..20].copy_from_slice(&[192, 0, 2, 1, 10, 0, 0, 1]);
            ip[20..24].copy_from_slice(&[0x04, 0x00, 0x00, 0x50]);
            if udp {
                ip[24..26].copy_from_slice(&40u16.to_be_bytes());
            } else {
                ip[32] = 0x50;
                ip[33] = TCP_SYN;
            }
            for (at, b) in edits {
                f[at] = b;
            }
            f.truncate(len);
            let mut general = Parsed::default();
            let want = parse_general(&f, &mut general);
            if let Some(fast) = fast_v4(&f) {
                proptest::prop_assert_eq!(want, Ok(()));
                proptest::prop_assert_eq!(format!("{fast:?}"), format!("{general:?}"));
            }
        }
    }

    #[test]
    fn fast_path_takes_plain_tcp() {
        let mut f = vec![0u8; 54];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        f[23] = TCP;
        f[37] = 80;
        f[46] = 0x50;
        let p = fast_v4(&f).expect("fast path");
        assert_eq!((p.ip_len, p.key.proto, p.l3), (40, TCP, 14));
        f[20] = 0x20; // MF: a fragment goes the general way
        assert!(fast_v4(&f).is_none());
    }

    /// An untagged IPv4 frame: ICMP type `kind` from a router to 10.0.0.1 quoting
    /// `quoted_ip`, a header (with `ihl`) of the reply 10.0.0.1:80 -> 192.0.2.1:40000.
    fn icmp4_error(kind: u8, ihl: u8, frag_off: u16) -> Vec<u8> {
        let mut q = vec![0x40 | ihl, 0, 0, 40, 0, 0];
        q.extend(frag_off.to_be_bytes());
        q.extend([64, TCP, 0, 0, 10, 0, 0, 1, 192, 0, 2, 1]);
        q.extend([0, 80, 0x9c, 0x40, 0, 0, 0, 1]);
        let mut f = vec![0u8; 14 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + 8 + q.len()) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = ICMP;
        f[26..34].copy_from_slice(&[198, 51, 100, 1, 10, 0, 0, 1]);
        f.extend([kind, 0, 0, 0, 8, 0, 0, 0]);
        f.extend(q);
        f
    }

    #[test]
    fn icmp4_errors_follow_the_quoted_flow() {
        let mut p = Parsed::default();
        // Destination unreachable, time exceeded, parameter problem.
        for kind in [3, 11, 12] {
            parse(&icmp4_error(kind, 5, 0), &mut p).unwrap();
            assert_eq!(p.kind, Kind::IcmpError, "type {kind}");
            assert_eq!(
                (p.key.src, p.key.src_port, p.key.dst_port, p.key.proto),
                (mapped_v4(&[192, 0, 2, 1]), 40000, 80, TCP),
                "type {kind}: the client's flow"
            );
        }
        // Source quench (4) and redirect (5) quote a packet too, but are not followed.
        for kind in [4, 5, 8] {
            assert_eq!(parse(&icmp4_error(kind, 5, 0), &mut p), Err(Early::Pass));
        }
        // A quoted header shorter than 20 bytes is malformed, fragment or not.
        for frag_off in [0, 185] {
            assert_eq!(
                parse(&icmp4_error(12, 4, frag_off), &mut p),
                Err(Early::Drop(DropReason::BadIcmp))
            );
        }
    }

    #[test]
    fn port_0_is_no_service() {
        let mut f = icmp4_error(3, 5, 0);
        let mut p = Parsed::default();
        f[14 + 20 + 8 + 20..][..2].copy_from_slice(&[0, 0]);
        assert_eq!(parse(&f, &mut p), Err(Early::Pass), "quoted from port 0");
        let mut t = vec![0u8; 54];
        t[12..14].copy_from_slice(&[0x08, 0x00]);
        t[14] = 0x45;
        t[16..18].copy_from_slice(&40u16.to_be_bytes());
        t[23] = TCP;
        t[34..36].copy_from_slice(&40000u16.to_be_bytes());
        t[46] = 0x50;
        assert_eq!(parse(&t, &mut p), Err(Early::Pass), "to port 0");
        assert!(
            fast_v4(&t).is_none(),
            "the fast path leaves it to the general parser"
        );
    }

    #[test]
    fn vlan_tag_is_skipped() {
        let mut f = vec![0u8; 18 + 20 + 8];
        f[12..14].copy_from_slice(&[0x81, 0x00]);
        f[14..16].copy_from_slice(&[0x00, 0x0a]);
        f[16..18].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[18..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = UDP;
        ip[20..28].copy_from_slice(&[0, 53, 0, 54, 0, 8, 0, 0]);
        let mut p = Parsed::default();
        parse(&f, &mut p).unwrap();
        assert_eq!(
            (p.l3, p.ip_len, p.key.src_port, p.key.dst_port),
            (18, 28, 53, 54)
        );
    }
}
