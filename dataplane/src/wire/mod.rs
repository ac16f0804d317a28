//! Packet views. Knows headers, nothing else.
//!
//! smoltcp's `wire` module supplies the Ethernet, IPv4, IPv6 (and its extension headers), TCP,
//! UDP, ICMPv4 and ICMPv6 views; they are re-exported here so the rest of the crate has one
//! place to import them from. This module adds only what smoltcp lacks: the 802.1Q tag
//! ([`vlan`]), a bounded walk over IPv6 extension headers ([`ipv6ext`]), and GUE ([`gue`]).

pub mod gue;
pub mod ipv6ext;
pub mod vlan;

pub use smoltcp::wire::{
    checksum, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet,
    Icmpv6Message, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv6Address,
    Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Packet, TcpPacket, UdpPacket, ETHERNET_HEADER_LEN,
    IPV4_HEADER_LEN, IPV6_HEADER_LEN, TCP_HEADER_LEN, UDP_HEADER_LEN,
};

/// IP protocol number of IPv4-in-IP encapsulation (RFC 2003).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6-in-IP encapsulation (RFC 2473).
pub const IPPROTO_IPV6: u8 = 41;

/// The RFC 1071 ones'-complement sum of `data` (even length), folded to 16 bits and not
/// complemented: `!sum` is the checksum to store, and a header whose stored checksum is right
/// sums to `0xffff`. smoltcp's `checksum::data` computes the same but is not inlined; this
/// one is, so for a fixed 20-byte header it compiles to a handful of adds.
#[inline(always)]
pub fn ones_sum(data: &[u8]) -> u16 {
    // Summed in little-endian words, which loads without byte swaps: the ones'-complement
    // sum of byte-swapped words is the byte-swapped sum (RFC 1071 §2(B)), so one swap of
    // the folded result gives the big-endian sum.
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    if rest.len() >= 2 {
        acc += u64::from(u16::from_le_bytes([rest[0], rest[1]]));
    }
    if rest.len() % 2 == 1 {
        acc += u64::from(rest[rest.len() - 1]);
    }
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    (acc as u16).swap_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ones_sum_matches_smoltcp() {
        // The IPv4 header example from RFC 1071's era: a valid header sums to 0xffff.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ones_sum(&hdr), 0xffff);
        for len in 0..40 {
            let d: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(ones_sum(&d), checksum::data(&d), "len {len}");
        }
    }
}
