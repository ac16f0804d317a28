//! "Too big" replies to the client: ICMPv4 fragmentation needed (RFC 792, RFC 1191 §4) and
//! ICMPv6 Packet Too Big (RFC 4443 §3.2), built in place in front of the offending packet,
//! which becomes the quoted data.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::parse::Parsed;
use crate::wire::{
    Icmpv4Message, Icmpv4Packet, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6Packet,
    IPV4_HEADER_LEN, IPV6_HEADER_LEN,
};

const ICMP_HEADER_LEN: usize = 8;
/// RFC 1812 §4.3.2.3: an ICMPv4 error is at most 576 bytes.
const ICMPV4_MAX: usize = 576;
/// RFC 4443 §2.4(c): an ICMPv6 error is at most the IPv6 minimum MTU.
const ICMPV6_MAX: usize = 1280;
/// ICMPv4 destination unreachable code 4: fragmentation needed and DF set.
const FRAG_NEEDED: u8 = 4;
/// TTL / hop limit of the replies.
const REPLY_TTL: u8 = 64;

/// Rewrites the frame at `buf[start..]` (parsed as `p`) into a reply telling its sender that
/// `mtu` is the largest packet that fits. The reply goes back the way the frame came: MACs
/// swapped, VLAN tag kept, from the VIP it was sent to. Returns (offset, length), or `None`
/// if the headroom is too small.
pub(crate) fn too_big(
    buf: &mut [u8],
    start: usize,
    p: &Parsed,
    mtu: u16,
) -> Option<(usize, usize)> {
    let l2 = usize::from(p.l3);
    let ip_start = start.checked_add(l2)?;
    let (hdr_len, max) = if p.v6 {
        (IPV6_HEADER_LEN + ICMP_HEADER_LEN, ICMPV6_MAX)
    } else {
        (IPV4_HEADER_LEN + ICMP_HEADER_LEN, ICMPV4_MAX)
    };
    let quote = usize::from(p.ip_len).min(max - hdr_len);
    let new_start = start.checked_sub(hdr_len)?;
    let frame = buf.get_mut(new_start..ip_start.checked_add(quote)?)?;

    // The old Ethernet header (and tag) overlaps the new IP header: save it first.
    let mut old_l2 = [0u8; 18];
    old_l2
        .get_mut(..l2)?
        .copy_from_slice(frame.get(hdr_len..hdr_len + l2)?);
    frame[..6].copy_from_slice(&old_l2[6..12]);
    frame[6..12].copy_from_slice(&old_l2[..6]);
    frame[12..l2].copy_from_slice(&old_l2[12..l2]);

    let (ip, icmp) = frame[l2..].split_at_mut(hdr_len - ICMP_HEADER_LEN);
    if p.v6 {
        let src = Ipv6Addr::from(p.key.dst);
        let dst = Ipv6Addr::from(p.key.src);
        ip.fill(0);
        let mut h = Ipv6Packet::new_unchecked(ip);
        h.set_version(6);
        h.set_payload_len((ICMP_HEADER_LEN + quote) as u16);
        h.set_next_header(IpProtocol::Icmpv6);
        h.set_hop_limit(REPLY_TTL);
        h.set_src_addr(src);
        h.set_dst_addr(dst);
        icmp[..ICMP_HEADER_LEN].fill(0);
        let mut m = Icmpv6Packet::new_unchecked(icmp);
        m.set_msg_type(Icmpv6Message::PktTooBig);
        m.set_msg_code(0);
        m.set_pkt_too_big_mtu(u32::from(mtu));
        m.fill_checksum(&src, &dst);
    } else {
        ip.fill(0);
        let mut h = Ipv4Packet::new_unchecked(ip);
        h.set_version(4);
        h.set_header_len(IPV4_HEADER_LEN as u8);
        h.set_total_len((hdr_len + quote) as u16);
        h.set_hop_limit(REPLY_TTL);
        h.set_next_header(IpProtocol::Icmp);
        // Internetwork control (CS6), as RFC 1812 §4.3.2.5 asks of errors a router sends
        // and Linux does: QoS that drops low classes first keeps these.
        h.set_dscp(48);
        h.set_src_addr(v4(&p.key.dst));
        h.set_dst_addr(v4(&p.key.src));
        h.fill_checksum();
        icmp[..ICMP_HEADER_LEN].fill(0);
        icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
        let mut m = Icmpv4Packet::new_unchecked(icmp);
        m.set_msg_type(Icmpv4Message::DstUnreachable);
        m.set_msg_code(FRAG_NEEDED);
        m.fill_checksum();
    }
    Some((new_start, l2 + hdr_len + quote))
}

fn v4(mapped: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(mapped[12], mapped[13], mapped[14], mapped[15])
}
