//! DSR encapsulation, in place: the inner IP packet stays where it was received and the new
//! Ethernet header, outer IP header and (for GUE) UDP + GUE headers are written into the
//! bytes in front of it, growing into the buffer's headroom. The inner packet is not copied.
//! For IP-in-IP the outer headers come from a per-backend [`OuterTemplate`] built with the
//! snapshot, so a packet costs a fixed-size copy and a few field stores.

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
    /// backend share them). The outer source's host bits come from the low bits (an IPv6
    /// prefix's from all of them), so a source prefix wider than /24 (IPv4) shares bits with
    /// these; each field still spreads flows.
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

/// A backend's IP-in-IP outer headers, precomputed when the snapshot is built: Ethernet (and
/// VLAN tag) and the outer IPv4 or IPv6 header with the per-packet fields (TOS / traffic
/// class, length, flow label, source host bits, checksum) zero. Encapsulating is then a
/// fixed-size copy and a few field stores, with the IPv4 checksum finished from `sum`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OuterTemplate {
    /// The headers at the end, so that they end where the inner packet starts.
    bytes: [u8; TEMPLATE_LEN],
    /// Bytes of `bytes` in use (the last `len`): Ethernet (+ tag) + outer IP header.
    len: u8,
    v6: bool,
    /// IPv4: the ones'-complement sum of the header's constant words (all but TOS, total
    /// length, checksum and source).
    sum: u32,
}

/// Size of [`OuterTemplate::bytes`]: at least the largest header set (58 bytes), and two
/// 32-byte vector moves.
const TEMPLATE_LEN: usize = 64;

impl OuterTemplate {
    /// The headers toward `dst` (IPv4-mapped if `!outer_v6`) for inner packets of family
    /// `inner_v6`.
    pub(crate) fn new(
        outer_v6: bool,
        inner_v6: bool,
        dst: [u8; 16],
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        vlan: Option<u16>,
    ) -> Self {
        let mut bytes = [0u8; 64];
        let l2 = l2_len(vlan);
        let et = if outer_v6 {
            EthernetProtocol::Ipv6
        } else {
            EthernetProtocol::Ipv4
        };
        write_l2(&mut bytes, dst_mac, src_mac, vlan, et);
        let proto = if inner_v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
        let (ip_len, sum) = if outer_v6 {
            let h = ipv6_header(0, 0, 0, proto, 0, dst);
            bytes[l2..l2 + IPV6_HEADER_LEN].copy_from_slice(&h);
            (IPV6_HEADER_LEN, 0)
        } else {
            let d = u32::from_be_bytes([dst[12], dst[13], dst[14], dst[15]]);
            let mut h = ipv4_header(0, 0, proto, 0, d);
            h[10..12].fill(0);
            bytes[l2..l2 + IPV4_HEADER_LEN].copy_from_slice(&h);
            let sum = h
                .chunks_exact(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])));
            (IPV4_HEADER_LEN, sum.sum())
        };
        let len = l2 + ip_len;
        bytes.rotate_right(TEMPLATE_LEN - len);
        OuterTemplate {
            bytes,
            len: len as u8,
            v6: outer_v6,
            sum,
        }
    }
}

/// IP-in-IP encapsulation from a backend's [`OuterTemplate`]: the same bytes as
/// [`encapsulate`] with [`Encap::IpIp`], for the outer source `src` (IPv4-mapped for IPv4).
#[inline]
pub(crate) fn encapsulate_ipip(
    buf: &mut [u8],
    ip_start: usize,
    ip_len: usize,
    tos: u8,
    t: &OuterTemplate,
    src: u128,
    hash: u64,
) -> Option<(u32, u32)> {
    let hl = usize::from(t.len);
    let start = ip_start.checked_sub(hl)?;
    if ip_start.checked_add(ip_len)? > buf.len() {
        return None;
    }
    // The whole template in one fixed-size copy that ends where the inner packet starts:
    // the bytes it writes in front of `start` land in headroom nobody reads. With less than
    // 64 bytes in front of the packet (the AF_XDP workers always have more), only the
    // headers are copied.
    let head = match ip_start.checked_sub(TEMPLATE_LEN) {
        Some(at) => {
            let h = buf
                .get_mut(at..ip_start)?
                .first_chunk_mut::<TEMPLATE_LEN>()?;
            *h = t.bytes;
            &mut h[..]
        }
        None => {
            let h = buf.get_mut(start..ip_start)?;
            h.copy_from_slice(t.bytes.get(TEMPLATE_LEN - hl..)?);
            h
        }
    };
    // Fixed-size views of the outer IP header (the last bytes of `head`): one bounds check
    // instead of one per field.
    if t.v6 {
        let ip = head.last_chunk_mut::<IPV6_HEADER_LEN>()?;
        let first = 6u32 << 28 | u32::from(tos) << 20 | ((hash >> 24) as u32 & 0xf_ffff);
        ip[..4].copy_from_slice(&first.to_be_bytes());
        ip[4..6].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[8..24].copy_from_slice(&src.to_be_bytes());
    } else {
        let ip = head.last_chunk_mut::<IPV4_HEADER_LEN>()?;
        let total = (ip_len + IPV4_HEADER_LEN) as u16;
        let s = src as u32;
        let sum = t.sum + u32::from(tos) + u32::from(total) + (s >> 16) + (s & 0xffff);
        ip[1] = tos;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[10..12].copy_from_slice(&(!fold(sum)).to_be_bytes());
        ip[12..16].copy_from_slice(&s.to_be_bytes());
    }
    Some((u32::try_from(start).ok()?, (hl + ip_len) as u32))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The template path writes exactly the bytes the general one does, for every outer and
    /// inner family, with and without a VLAN tag, for sources, TOS and lengths across their
    /// ranges.
    #[test]
    fn template_matches_general_encapsulation() {
        let dsts: [([u8; 16], bool); 2] = [
            (
                std::net::Ipv4Addr::new(192, 168, 10, 11)
                    .to_ipv6_mapped()
                    .octets(),
                false,
            ),
            ("fd00:10::11".parse::<Ipv6Addr>().unwrap().octets(), true),
        ];
        let mut x = 0x1234_5678_9abc_def1u64;
        for (dst, outer_v6) in dsts {
            for inner_v6 in [false, true] {
                if inner_v6 && !outer_v6 {
                    continue;
                }
                for vlan in [None, Some(200)] {
                    let mac = [2, 0, 0, 0, 0x0a, 0x0b];
                    let local = [2, 0, 0, 0, 0, 1];
                    let o = OuterTemplate::new(outer_v6, inner_v6, dst, mac, local, vlan);
                    for _ in 0..200 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let src = if outer_v6 {
                            0xfd00_00ff_u128 << 96 | u128::from(x)
                        } else {
                            0xffff_u128 << 32 | u128::from(x as u32)
                        };
                        let (tos, ip_len) = ((x >> 40) as u8, 20 + (x >> 48) as usize % 1400);
                        let t = Tunnel {
                            outer_v6,
                            encap: Encap::IpIp,
                            src,
                            dst,
                            dst_mac: mac,
                            src_mac: local,
                            vlan,
                            hash: x.rotate_left(17),
                        };
                        // Room for the whole template (the workers' case), less, and
                        // exactly the headers.
                        let room = [128, 63, usize::from(o.len)][(x >> 60) as usize % 3];
                        let mut a = vec![0x55u8; room + ip_len];
                        let mut b = a.clone();
                        let ra = encapsulate(&mut a, room, ip_len, inner_v6, tos, &t);
                        let rb = encapsulate_ipip(&mut b, room, ip_len, tos, &o, src, t.hash);
                        assert_eq!(ra, rb);
                        let start = ra.expect("room for the headers").0 as usize;
                        assert_eq!(
                            a[start..],
                            b[start..],
                            "outer_v6 {outer_v6} inner_v6 {inner_v6} vlan {vlan:?} room {room}"
                        );
                    }
                }
            }
        }
    }
}
