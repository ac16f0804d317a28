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
