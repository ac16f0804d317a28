//! Packet views. Knows headers, nothing else.
//!
//! smoltcp's `wire` module supplies the Ethernet, IPv4, IPv6 (and its extension headers), TCP,
//! UDP, ICMPv4 and ICMPv6 views; they are re-exported here so the rest of the crate has one
//! place to import them from. This module adds only what smoltcp lacks: the 802.1Q tag
//! ([`vlan`]), a bounded walk over IPv6 extension headers ([`ipv6ext`]), and GUE ([`gue`]).
//! The pipeline's general parser reads every header through these views, except where a
//! view's checks do not apply: a quoted header in an ICMP error, which is cut short. Its fast
//! path, for the commonest frame (untagged IPv4, 20-byte header, TCP or UDP), reads the same
//! fields by offset after the same checks, since a view per header cost instructions on every
//! packet; a property test holds it to the general parser's results. The views also build
//! the "too big" replies and the GUE header.

pub mod gue;
pub mod ipv6ext;
pub mod vlan;

pub use smoltcp::wire::{
    checksum, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, Icmpv6Message,
    Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Packet,
    TcpPacket, UdpPacket, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, IPV6_HEADER_LEN, TCP_HEADER_LEN,
    UDP_HEADER_LEN,
};

/// IP protocol number of IPv4-in-IP encapsulation (RFC 2003).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6-in-IP encapsulation (RFC 2473).
pub const IPPROTO_IPV6: u8 = 41;

/// Whether `data` (an IPv4 header) carries a correct RFC 1071 checksum: its ones'-complement
/// sum is `0xffff`. smoltcp's `checksum::data` computes the sum but is not inlined; this is
/// a few adds and one remainder by a constant.
///
/// The folded ones'-complement sum of data that is not all zero equals the integer sum of
/// its 16-bit words modulo `0xffff`, taken in `1..=0xffff`; so it is `0xffff` exactly when
/// that integer sum is a nonzero multiple of `0xffff`. Summing little-endian 32-bit words
/// keeps that test and needs no byte swaps: a word's two halves count the same modulo
/// `0xffff` (2^16 ≡ 1), and a byte-swapped 16-bit word is 256 times the word modulo
/// `0xffff`, where 256 is invertible.
#[inline(always)]
pub fn checksum_ok(data: &[u8]) -> bool {
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
    acc != 0 && acc.is_multiple_of(0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_ok_agrees_with_smoltcp() {
        // The IPv4 header example from RFC 1071's era: a valid header sums to 0xffff.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert!(checksum_ok(&hdr));
        assert!(!checksum_ok(&[0; 20]) && checksum_ok(&[0xff; 20]));
        let valid = |d: &[u8]| checksum::data(d) == 0xffff;
        for len in 0..61 {
            let mut d: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(checksum_ok(&d), valid(&d), "len {len}");
            if len >= 12 {
                // Made valid the way a sender does (checksum field at 10..12), then broken
                // by one flipped bit anywhere.
                d[10..12].fill(0);
                let c = !checksum::data(&d);
                d[10..12].copy_from_slice(&c.to_be_bytes());
                assert!(valid(&d) && checksum_ok(&d), "len {len}");
                for bit in 0..len * 8 {
                    d[bit / 8] ^= 1 << (bit % 8);
                    assert_eq!(checksum_ok(&d), valid(&d), "len {len} bit {bit}");
                    d[bit / 8] ^= 1 << (bit % 8);
                }
            }
        }
    }
}
