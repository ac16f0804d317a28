//! A bounded walk over IPv6 extension headers (RFC 8200 §4), built on smoltcp's views.
//!
//! smoltcp parses one extension header at a time; this finds the upper-layer header behind a
//! chain of them, stopping after [`MAX_EXT_HEADERS`] so that a hostile chain costs bounded work.
//!
//! # Fragments
//! In every fragment the Fragment header's Next Header names the first header of the original
//! packet's Fragmentable Part (RFC 8200 §4.5). In the first fragment (offset 0) that header
//! follows, and the walk goes on through it to the upper-layer header. In a later fragment
//! what follows is fragment data, not headers: the walk stops there and reports the Fragment
//! header's Next Header as [`Upper::proto`]. When that is an extension header (a Destination
//! Options header or AH in the Fragmentable Part), a later fragment cannot tell its upper-layer
//! protocol; [`Upper::keyed_proto`] says which protocol such a fragment is attributed by.

use super::{IpProtocol, Ipv6ExtHeader, Ipv6FragmentHeader};

/// Most extension headers walked before giving up. RFC 8200 §4.1 recommends at most one of
/// each kind (Destination Options twice), so six covers every well-formed chain. The steering
/// program (dataplane/bpf/steer.c, `MAX_EXT_HDRS`) walks the same number.
pub const MAX_EXT_HEADERS: usize = 6;

/// Protocol number of the Authentication Header (RFC 4302), whose length is counted in
/// 4-byte units rather than 8.
const IPPROTO_AH: u8 = 51;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The headers [`walk`] steps over: hop-by-hop (0), routing (43), fragment (44), AH (51) and
/// destination options (60).
pub fn is_walked(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | IPPROTO_AH | 60)
}

/// Fragment header fields (RFC 8200 §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of this fragment's data, in 8-byte units (as on the wire).
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
    /// The datagram's identification.
    pub ident: u32,
    /// The Fragment header's Next Header: the first header of the Fragmentable Part, the
    /// same in every fragment of the datagram.
    pub next: u8,
}

impl Fragment {
    /// Part of a fragmented datagram: not an atomic fragment (offset 0 and no more
    /// fragments; RFC 6946), which is a whole datagram.
    pub fn is_fragment(&self) -> bool {
        self.offset != 0 || self.more
    }
}

/// Where the upper-layer header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upper {
    /// The upper-layer protocol (not an extension header), or, in a later fragment (offset
    /// not 0), the Fragment header's Next Header, which may name an extension header.
    pub proto: u8,
    /// Offset of the upper-layer header from the start of the IPv6 payload; in a later
    /// fragment, of the fragment data.
    pub offset: usize,
    /// The fragment header, if there was one.
    pub fragment: Option<Fragment>,
}

impl Upper {
    /// The protocol a fragment is keyed by where its ports are not used (the packet's own
    /// fragments, first and later, and a later fragment quoted in an ICMP error): the
    /// upper-layer protocol, except in a fragment whose Fragmentable Part starts with an
    /// extension header the walk steps over. A later fragment of such a datagram cannot tell
    /// its upper-layer protocol, so every fragment of it, the first one included when it is
    /// TCP or UDP, is keyed as UDP: the first and later fragments compute the same key and
    /// reach the same backend. Fragmented datagrams are UDP in practice (TCP avoids
    /// fragmentation with Path MTU discovery); a TCP datagram of this shape still stays
    /// whole, on the backend of the UDP fragment VIP of its address (or is passed, with all
    /// its fragments, if the address has no UDP VIP). The steering program applies the same
    /// rule (dataplane/bpf/steer.c, `skip_ext6`).
    pub fn keyed_proto(&self) -> u8 {
        match self.fragment {
            Some(f) if f.is_fragment() && is_walked(f.next) => {
                if f.offset != 0 || matches!(self.proto, IPPROTO_TCP | IPPROTO_UDP) {
                    IPPROTO_UDP
                } else {
                    self.proto
                }
            }
            _ => self.proto,
        }
    }
}

/// Why a walk failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// A header runs past the end of the payload.
    Truncated,
    /// More than [`MAX_EXT_HEADERS`] extension headers.
    TooDeep,
}

/// Walks the extension headers at the start of `payload` (an IPv6 packet's payload), given the
/// IPv6 header's Next Header value. Stops after the Fragment header of a later fragment (see
/// the module docs). Always inlined: most packets have no extension header, and left to the
/// compiler it became a call once the later-fragment stop was added (callgrind,
/// `udp6_hit_hot`: 713 instructions a packet before, 747 as a call, 702 inlined).
#[inline(always)]
pub fn walk(payload: &[u8], mut next: u8) -> Result<Upper, WalkError> {
    let mut offset = 0usize;
    let mut fragment = None;
    for _ in 0..MAX_EXT_HEADERS {
        let rest = payload.get(offset..).ok_or(WalkError::Truncated)?;
        let len = match IpProtocol::from(next) {
            IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts => {
                let h = Ipv6ExtHeader::new_checked(rest).map_err(|_| WalkError::Truncated)?;
                next = u8::from(h.next_header());
                8 + usize::from(h.header_len()) * 8
            }
            IpProtocol::Ipv6Frag => {
                // Fixed 8 bytes; the second byte is reserved, not a length.
                let fixed = rest.get(..8).ok_or(WalkError::Truncated)?;
                let f = Ipv6FragmentHeader::new_checked(&fixed[2..])
                    .map_err(|_| WalkError::Truncated)?;
                next = fixed[0];
                let f = Fragment {
                    offset: f.frag_offset(),
                    more: f.more_frags(),
                    ident: f.ident(),
                    next,
                };
                fragment = Some(f);
                if f.offset != 0 {
                    // Fragment data follows, not the header `next` names.
                    return Ok(Upper {
                        proto: next,
                        offset: offset + 8,
                        fragment,
                    });
                }
                8
            }
            _ if next == IPPROTO_AH => {
                let h = rest.get(..2).ok_or(WalkError::Truncated)?;
                next = h[0];
                let len = (usize::from(h[1]) + 2) * 4;
                if rest.len() < len {
                    return Err(WalkError::Truncated);
                }
                len
            }
            _ => {
                return Ok(Upper {
                    proto: next,
                    offset,
                    fragment,
                })
            }
        };
        offset += len;
    }
    // As many headers as walked, and still one more: a later fragment's Fragment header
    // counts too, as in the steering program.
    if is_walked(next) {
        return Err(WalkError::TooDeep);
    }
    Ok(Upper {
        proto: next,
        offset,
        fragment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_extension_headers() {
        let u = walk(&[0u8; 8], 6).unwrap();
        assert_eq!((u.proto, u.offset, u.fragment), (6, 0, None));
    }

    #[test]
    fn hop_by_hop_then_fragment_then_udp() {
        let mut p = Vec::new();
        // Hop-by-hop: next = Fragment (44), length 0 (8 bytes), PadN option filling 6 bytes.
        p.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]);
        // Fragment: next = UDP, reserved, offset 185 (1480 bytes) with M set, ident 0x01020304.
        p.extend_from_slice(&[17, 0, 0x05, 0xc9, 1, 2, 3, 4]);
        p.extend_from_slice(&[0u8; 8]);
        let u = walk(&p, 0).unwrap();
        assert_eq!((u.proto, u.offset), (17, 16));
        assert_eq!(
            u.fragment,
            Some(Fragment {
                offset: 185,
                more: true,
                ident: 0x0102_0304,
                next: 17,
            })
        );
    }

    /// One datagram whose Fragmentable Part starts with a Destination Options header: the
    /// first fragment's headers and the start of the later fragment (RFC 8200 §4.5).
    fn destopts_fragments(upper: u8) -> (Vec<u8>, Vec<u8>) {
        let mut first = Vec::new();
        // Fragment: next = Destination Options (60), reserved, offset 0 with M set, ident 9.
        first.extend_from_slice(&[60, 0, 0x00, 0x01, 0, 0, 0, 9]);
        // Destination Options: next = `upper`, length 0 (8 bytes), PadN filling 6 bytes.
        first.extend_from_slice(&[upper, 0, 1, 4, 0, 0, 0, 0]);
        first.extend_from_slice(&[0u8; 8]); // the UDP or TCP header's first 8 bytes
        let mut later = Vec::new();
        // Fragment: next = 60 again, offset 7 (56 bytes), M clear, ident 9.
        later.extend_from_slice(&[60, 0, 0x00, 0x38, 0, 0, 0, 9]);
        // Fragment data: 0xab read as a header would be next 171, length 171 * 8 + 8.
        later.extend_from_slice(&[0xab; 24]);
        (first, later)
    }

    #[test]
    fn later_fragment_stops_at_the_fragment_header() {
        let (first, later) = destopts_fragments(17);
        let u = walk(&first, 44).unwrap();
        assert_eq!((u.proto, u.offset, u.keyed_proto()), (17, 16, 17));
        // The later fragment's data is not walked: its protocol is the Fragment header's
        // Next Header, an extension header, so it is keyed as UDP like the first fragment.
        let u = walk(&later, 44).unwrap();
        assert_eq!((u.proto, u.offset, u.keyed_proto()), (60, 8, 17));
        assert_eq!(
            u.fragment,
            Some(Fragment {
                offset: 7,
                more: false,
                ident: 9,
                next: 60,
            })
        );
        // Behind a hop-by-hop header (Per-Fragment headers) too.
        let mut p = vec![44, 0, 1, 4, 0, 0, 0, 0];
        p.extend_from_slice(&later);
        let u = walk(&p, 0).unwrap();
        assert_eq!((u.proto, u.offset, u.keyed_proto()), (60, 16, 17));
    }

    #[test]
    fn fragments_keyed_by_a_protocol_every_fragment_knows() {
        // A TCP first fragment with Destination Options in its Fragmentable Part is keyed as
        // UDP, as its later fragments must be.
        let (first, _) = destopts_fragments(6);
        let u = walk(&first, 44).unwrap();
        assert_eq!((u.proto, u.offset, u.keyed_proto()), (6, 16, 17));
        // ICMPv6 there stays ICMPv6 (fragmented ICMPv6 is not balanced anyway).
        let (first, _) = destopts_fragments(58);
        assert_eq!(walk(&first, 44).unwrap().keyed_proto(), 58);
        // A later fragment whose Fragmentable Part starts with TCP says so.
        let later = [6, 0, 0x00, 0x38, 0, 0, 0, 9, 0xab, 0xab];
        let u = walk(&later, 44).unwrap();
        assert_eq!((u.proto, u.offset, u.keyed_proto()), (6, 8, 6));
        // An atomic fragment (offset 0, M clear) is a whole datagram: its own protocol.
        let mut atomic = vec![60, 0, 0, 0, 0, 0, 0, 9];
        atomic.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        atomic.extend_from_slice(&[0u8; 20]);
        assert_eq!(walk(&atomic, 44).unwrap().keyed_proto(), 6);
        // No fragment header: the protocol as walked.
        assert_eq!(walk(&[0u8; 8], 17).unwrap().keyed_proto(), 17);
    }

    #[test]
    fn a_later_fragment_header_counts_toward_the_bound() {
        let later = [60u8, 0, 0x00, 0x38, 0, 0, 0, 9, 0xab, 0xab, 0xab, 0xab];
        // Five destination options headers, then the later fragment's header: six, walked.
        let mut p = [60u8, 0, 1, 4, 0, 0, 0, 0].repeat(4);
        p.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]);
        p.extend_from_slice(&later);
        let u = walk(&p, 60).unwrap();
        assert_eq!((u.proto, u.offset), (60, 48));
        // Six before it: the Fragment header is a seventh.
        let mut p = [60u8, 0, 1, 4, 0, 0, 0, 0].repeat(5);
        p.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]);
        p.extend_from_slice(&later);
        assert_eq!(walk(&p, 60), Err(WalkError::TooDeep));
    }

    #[test]
    fn truncated_header() {
        assert_eq!(
            walk(&[6, 1, 0, 0, 0, 0, 0, 0], 60),
            Err(WalkError::Truncated)
        );
        assert_eq!(walk(&[6, 0, 0], 44), Err(WalkError::Truncated));
        assert_eq!(walk(&[6, 4, 0, 0], IPPROTO_AH), Err(WalkError::Truncated));
    }

    #[test]
    fn chain_is_bounded() {
        // Destination-options headers pointing at themselves forever.
        let p = [60u8, 0, 1, 4, 0, 0, 0, 0].repeat(MAX_EXT_HEADERS + 2);
        assert_eq!(walk(&p, 60), Err(WalkError::TooDeep));
    }
}
