//! DSR encapsulation, in place: the inner IP packet stays where it was received and the new
//! Ethernet header, outer IP header and (for GUE) UDP + GUE headers are written into the
//! bytes in front of it, growing into the buffer's headroom. Nothing is copied.

use std::net::Ipv6Addr;

use crate::snapshot::{encap_overhead, Encap};
use crate::wire::gue::GueHeader;
use crate::wire::vlan;
use crate::wire::{
    EthernetProtocol, IpAddress, IpProtocol, UdpPacket, ETHERNET_HEADER_LEN, IPPROTO_IPIP,
    IPPROTO_IPV6, IPV4_HEADER_LEN, IPV6_HEADER_LEN, UDP_HEADER_LEN,
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
/// Built as one array and stored whole (fixed sizes, so no call to `memcpy`).
#[inline(always)]
fn write_l2(b: &mut [u8], dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, et: EthernetProtocol) {
    let mut h = [0u8; ETHERNET_HEADER_LEN + vlan::TAG_LEN];
    h[..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    let et = u16::from(et).to_be_bytes();
    match vlan {
        Some(tci) => {
            h[12..14].copy_from_slice(&vlan::TPID_8021Q.to_be_bytes());
            h[14..16].copy_from_slice(&tci.to_be_bytes());
            h[16..18].copy_from_slice(&et);
            b[..ETHERNET_HEADER_LEN + vlan::TAG_LEN].copy_from_slice(&h);
        }
        None => {
            h[12..14].copy_from_slice(&et);
            b[..ETHERNET_HEADER_LEN].copy_from_slice(&h[..ETHERNET_HEADER_LEN]);
        }
    }
}

/// The outer IPv4 header (RFC 791): no options, DF set, ID 0, TTL [`OUTER_TTL`]. The checksum
/// comes from the values, not from re-reading stored bytes (which would stall on store
/// forwarding); the array is built in registers and stored whole.
#[inline(always)]
fn ipv4_header(tos: u8, total_len: u16, proto: u8, src: u32, dst: u32) -> [u8; IPV4_HEADER_LEN] {
    let words = [
        0x4500 | u32::from(tos),
        u32::from(total_len),
        0x4000,
        u32::from(OUTER_TTL) << 8 | u32::from(proto),
        src >> 16,
        src & 0xffff,
        dst >> 16,
        dst & 0xffff,
    ];
    let csum = !fold(words.iter().sum());
    let mut h = [0u8; IPV4_HEADER_LEN];
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    // DF always: the pipeline enforces the tunnel MTU itself (Path MTU), so an outer packet
    // never needs fragmenting, and with DF the ID may be 0 (RFC 6864).
    h[6] = 0x40;
    h[8] = OUTER_TTL;
    h[9] = proto;
    h[10..12].copy_from_slice(&csum.to_be_bytes());
    h[12..16].copy_from_slice(&src.to_be_bytes());
    h[16..20].copy_from_slice(&dst.to_be_bytes());
    h
}

/// The outer IPv6 header (RFC 8200): traffic class, flow label, hop limit [`OUTER_TTL`].
#[inline(always)]
fn ipv6_header(
    tc: u8,
    flow_label: u32,
    payload_len: u16,
    next_header: u8,
    src: u128,
    dst: [u8; 16],
) -> [u8; IPV6_HEADER_LEN] {
    let first = 6u32 << 28 | u32::from(tc) << 20 | (flow_label & 0xf_ffff);
    let mut h = [0u8; IPV6_HEADER_LEN];
    h[..4].copy_from_slice(&first.to_be_bytes());
    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
    h[6] = next_header;
    h[7] = OUTER_TTL;
    h[8..24].copy_from_slice(&src.to_be_bytes());
    h[24..40].copy_from_slice(&dst);
    h
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
        let h = ipv6_header(
            tos,
            (t.hash >> 24) as u32,
            (outer_len - IPV6_HEADER_LEN) as u16,
            proto,
            t.src,
            t.dst,
        );
        ip_hdr[..IPV6_HEADER_LEN].copy_from_slice(&h);
        IPV6_HEADER_LEN
    } else {
        let dst = u32::from_be_bytes([t.dst[12], t.dst[13], t.dst[14], t.dst[15]]);
        let h = ipv4_header(tos, outer_len as u16, proto, t.src as u32, dst);
        ip_hdr[..IPV4_HEADER_LEN].copy_from_slice(&h);
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
