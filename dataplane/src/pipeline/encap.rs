//! DSR encapsulation, in place: the inner IP packet stays where it was received and the new
//! Ethernet header, outer IP header and (for GUE) UDP + GUE headers are written into the
//! bytes in front of it, growing into the buffer's headroom. Nothing is copied.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::snapshot::{encap_overhead, Encap};
use crate::wire::gue::GueHeader;
use crate::wire::vlan::{self, VlanTag};
use crate::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet,
    Ipv6Packet, UdpPacket, ETHERNET_HEADER_LEN, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, UDP_HEADER_LEN,
};

/// Outer TTL / hop limit (the figure; the Linux default).
pub(crate) const OUTER_TTL: u8 = 64;

/// Where and how to send one packet.
pub(crate) struct Tunnel {
    pub outer_v6: bool,
    pub encap: Encap,
    /// Outer source and destination, IPv4-mapped for IPv4.
    pub src: u128,
    pub dst: [u8; 16],
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    /// The flow hash: GUE source port (bits 8..22) and IPv6 flow label (bits 24..44) come
    /// from it, so the fabric's ECMP and the node's RSS spread flows while one flow keeps one
    /// path. Those bits avoid the high ones, which pick the Maglev slot (all flows of one
    /// backend share them), and the low ones, which pick the outer source address.
    pub hash: u64,
}

/// Folds a sum of 16-bit words into a 16-bit ones'-complement sum.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Bytes the Ethernet header (with its optional VLAN tag) takes.
pub(crate) fn l2_len(vlan: Option<u16>) -> usize {
    ETHERNET_HEADER_LEN + if vlan.is_some() { vlan::TAG_LEN } else { 0 }
}

/// Writes an Ethernet header (and VLAN tag) at the start of `b`, which must be long enough.
pub(crate) fn write_l2(
    b: &mut [u8],
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    et: EthernetProtocol,
) {
    let mut eth = EthernetFrame::new_unchecked(&mut *b);
    eth.set_dst_addr(EthernetAddress(dst));
    eth.set_src_addr(EthernetAddress(src));
    match vlan {
        Some(tci) => {
            eth.set_ethertype(EthernetProtocol::Unknown(vlan::TPID_8021Q));
            let mut tag = VlanTag::new_unchecked(&mut b[ETHERNET_HEADER_LEN..]);
            tag.set_tci(tci);
            tag.set_ethertype(et);
        }
        None => eth.set_ethertype(et),
    }
}

/// Encapsulates the inner IP packet at `buf[ip_start..ip_start + ip_len]` (of the family
/// `inner_v6`, with TOS/traffic class `tos`). Returns the new frame's (offset, length), or
/// `None` if the headroom in front of the packet is too small. (u32s: a 12-byte result comes
/// back in registers.)
#[inline]
pub(crate) fn encapsulate(
    buf: &mut [u8],
    ip_start: usize,
    ip_len: usize,
    inner_v6: bool,
    tos: u8,
    t: &Tunnel,
) -> Option<(u32, u32)> {
    let overhead = encap_overhead(t.outer_v6, t.encap);
    let l2 = l2_len(t.vlan);
    let start = ip_start.checked_sub(overhead + l2)?;
    let end = ip_start.checked_add(ip_len)?;
    let frame = buf.get_mut(start..end)?;
    let (hdr, _inner) = frame.split_at_mut(l2 + overhead);
    let et = if t.outer_v6 {
        EthernetProtocol::Ipv6
    } else {
        EthernetProtocol::Ipv4
    };
    write_l2(hdr, t.dst_mac, t.src_mac, t.vlan, et);
    let inner_proto = if inner_v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
    let (proto, udp_at) = match t.encap {
        Encap::IpIp => (inner_proto, None),
        Encap::Gue { port } => (u8::from(IpProtocol::Udp), Some(port)),
    };
    let ip_hdr = &mut hdr[l2..];
    let outer_len = overhead + ip_len;
    let ip_hlen = if t.outer_v6 {
        let h = &mut ip_hdr[..IPV6_HEADER_LEN];
        h.fill(0);
        let mut o = Ipv6Packet::new_unchecked(h);
        o.set_version(6);
        o.set_traffic_class(tos);
        o.set_flow_label((t.hash >> 24) as u32 & 0xf_ffff);
        o.set_payload_len((outer_len - IPV6_HEADER_LEN) as u16);
        o.set_next_header(IpProtocol::from(proto));
        o.set_hop_limit(OUTER_TTL);
        o.set_src_addr(Ipv6Addr::from(t.src));
        o.set_dst_addr(Ipv6Addr::from(t.dst));
        IPV6_HEADER_LEN
    } else {
        let h = &mut ip_hdr[..IPV4_HEADER_LEN];
        h.fill(0);
        let mut o = Ipv4Packet::new_unchecked(h);
        o.set_version(4);
        o.set_header_len(IPV4_HEADER_LEN as u8);
        o.set_dscp(tos >> 2);
        o.set_ecn(tos & 3);
        o.set_total_len(outer_len as u16);
        // DF always: the pipeline enforces the tunnel MTU itself (Path MTU below), so an
        // outer packet never needs fragmenting, and with DF the ID may be 0 (RFC 6864).
        o.set_dont_frag(true);
        o.set_hop_limit(OUTER_TTL);
        o.set_next_header(IpProtocol::from(proto));
        let src = t.src as u32;
        let dst = u32::from_be_bytes([t.dst[12], t.dst[13], t.dst[14], t.dst[15]]);
        o.set_src_addr(Ipv4Addr::from(src));
        o.set_dst_addr(Ipv4Addr::from(dst));
        // The checksum from the values, not by re-reading the bytes just stored (which
        // would stall on store forwarding).
        let words = [
            0x4500 | u32::from(tos),
            outer_len as u32,
            0x4000,
            u32::from(OUTER_TTL) << 8 | u32::from(proto),
            src >> 16,
            src & 0xffff,
            dst >> 16,
            dst & 0xffff,
        ];
        o.set_checksum(!fold(words.iter().sum()));
        IPV4_HEADER_LEN
    };
    if let Some(port) = udp_at {
        let udp_len = outer_len - ip_hlen;
        {
            let u = &mut ip_hdr[ip_hlen..ip_hlen + UDP_HEADER_LEN];
            let mut udp = UdpPacket::new_unchecked(u);
            // RFC 8086-style entropy: the ephemeral range (49152-65535) from the flow hash.
            udp.set_src_port(0xc000 | ((t.hash >> 8) as u16 & 0x3fff));
            udp.set_dst_port(port);
            udp.set_len(udp_len as u16);
            udp.set_checksum(0);
        }
        GueHeader::emit_data(&mut ip_hdr[ip_hlen + UDP_HEADER_LEN..], inner_proto)?;
        if t.outer_v6 {
            // IPv6 forbids a zero UDP checksum except where the receiver opts in (RFC 6936);
            // compute the real one so any node accepts it.
            let l2_ip = l2 + ip_hlen;
            let mut udp = UdpPacket::new_unchecked(&mut frame[l2_ip..]);
            udp.fill_checksum(
                &IpAddress::Ipv6(Ipv6Addr::from(t.src)),
                &IpAddress::Ipv6(Ipv6Addr::from(t.dst)),
            );
        }
    }
    Some((u32::try_from(start).ok()?, (l2 + outer_len) as u32))
}
