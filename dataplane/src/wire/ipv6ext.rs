//! A bounded walk over IPv6 extension headers (RFC 8200 §4), built on smoltcp's views.
//!
//! smoltcp parses one extension header at a time; this finds the upper-layer header behind a
//! chain of them, stopping after [`MAX_EXT_HEADERS`] so that a hostile chain costs bounded work.

use super::{IpProtocol, Ipv6ExtHeader, Ipv6FragmentHeader};

/// Most extension headers walked before giving up. RFC 8200 §4.1 recommends at most one of
/// each kind (Destination Options twice), so six covers every well-formed chain.
pub const MAX_EXT_HEADERS: usize = 6;

/// Protocol number of the Authentication Header (RFC 4302), whose length is counted in
/// 4-byte units rather than 8.
const IPPROTO_AH: u8 = 51;

/// Fragment header fields (RFC 8200 §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of this fragment's data, in 8-byte units (as on the wire).
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
    /// The datagram's identification.
    pub ident: u32,
}

/// Where the upper-layer header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upper {
    /// The upper-layer protocol (not an extension header).
    pub proto: u8,
    /// Offset of the upper-layer header from the start of the IPv6 payload.
    pub offset: usize,
    /// The fragment header, if there was one.
    pub fragment: Option<Fragment>,
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
/// IPv6 header's Next Header value.
pub fn walk(payload: &[u8], mut next: u8) -> Result<Upper, WalkError> {
    let mut offset = 0usize;
    let mut fragment = None;
    for _ in 0..=MAX_EXT_HEADERS {
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
                fragment = Some(Fragment {
                    offset: f.frag_offset(),
                    more: f.more_frags(),
                    ident: f.ident(),
                });
                next = fixed[0];
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
    Err(WalkError::TooDeep)
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
                ident: 0x0102_0304
            })
        );
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
