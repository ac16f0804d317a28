//! IP prefixes as carried in NLRI (RFC 4271 §4.3, RFC 4760 §5) and the address
//! families this speaker handles.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::error::{ErrorAction, UpdateError, UpdateErrorKind};
use super::Reader;

/// An address family and subsequent address family (RFC 4760 §1): only unicast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

    /// AFI (IANA address family numbers) and SAFI 1, unicast.
    pub fn afi_safi(self) -> (u16, u8) {
        match self {
            Family::Ipv4Unicast => (1, 1),
            Family::Ipv6Unicast => (2, 1),
        }
    }

    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (1, 1) => Some(Family::Ipv4Unicast),
            (2, 1) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    fn max_len(self) -> u8 {
        match self {
            Family::Ipv4Unicast => 32,
            Family::Ipv6Unicast => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4Unicast => "ipv4-unicast",
            Family::Ipv6Unicast => "ipv6-unicast",
        })
    }
}

/// An IPv4 or IPv6 prefix with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix string or value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("prefix length {0} is too long for the address family")]
    Length(u8),
    #[error("cannot parse prefix {0:?}: expected ADDRESS/LENGTH or ADDRESS")]
    Syntax(String),
}

impl Prefix {
    /// A prefix; host bits beyond `len` are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        let addr = match addr {
            IpAddr::V4(a) => {
                if len > 32 {
                    return Err(PrefixError::Length(len));
                }
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                if len > 128 {
                    return Err(PrefixError::Length(len));
                }
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Prefix { addr, len })
    }

    /// The host route for one address (/32 or /128).
    pub fn host(addr: IpAddr) -> Prefix {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Prefix { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for the default route, the only prefix with no significant bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::Ipv4Unicast,
            IpAddr::V6(_) => Family::Ipv6Unicast,
        }
    }

    /// Octets this prefix takes in NLRI: a length octet and the significant bytes.
    pub fn encoded_len(&self) -> usize {
        1 + usize::from(self.len).div_ceil(8)
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.len);
        let n = usize::from(self.len).div_ceil(8);
        match self.addr {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..n]),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..n]),
        }
    }

    /// Parses a whole NLRI field (RFC 4271 §4.3, RFC 4760 §5). A length beyond the
    /// family's maximum or a truncated prefix is an Invalid Network Field, and since
    /// the field can then not be parsed, a session reset (RFC 7606 §5.3).
    pub(crate) fn parse_all(buf: &[u8], family: Family) -> Result<Vec<Prefix>, UpdateError> {
        let invalid = || {
            UpdateError::new(
                UpdateErrorKind::InvalidNetworkField,
                &[],
                ErrorAction::SessionReset,
            )
        };
        let mut r = Reader::new(buf);
        let mut out = Vec::new();
        while !r.is_empty() {
            let len = r.u8().ok_or_else(invalid)?;
            if len > family.max_len() {
                return Err(invalid());
            }
            let bytes = r.take(usize::from(len).div_ceil(8)).ok_or_else(invalid)?;
            let addr = match family {
                Family::Ipv4Unicast => {
                    let mut o = [0u8; 4];
                    o[..bytes.len()].copy_from_slice(bytes);
                    IpAddr::V4(Ipv4Addr::from(o))
                }
                Family::Ipv6Unicast => {
                    let mut o = [0u8; 16];
                    o[..bytes.len()].copy_from_slice(bytes);
                    IpAddr::V6(Ipv6Addr::from(o))
                }
            };
            // Trailing bits are irrelevant (RFC 4271 §4.3); new() clears them.
            out.push(Prefix::new(addr, len).map_err(|_| invalid())?);
        }
        Ok(out)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// `ADDRESS/LENGTH`, or a bare address for a host route.
    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let syntax = || PrefixError::Syntax(s.to_string());
        match s.split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
                let len: u8 = len.parse().map_err(|_| syntax())?;
                Prefix::new(addr, len)
            }
            None => Ok(Prefix::host(s.parse().map_err(|_| syntax())?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_mask() {
        let p: Prefix = "192.0.2.77/24".parse().unwrap();
        assert_eq!(p.to_string(), "192.0.2.0/24");
        let h: Prefix = "2001:db8:100::10".parse().unwrap();
        assert_eq!(h.to_string(), "2001:db8:100::10/128");
        assert_eq!("0.0.0.0/0".parse::<Prefix>().unwrap().encoded_len(), 1);
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("nonsense".parse::<Prefix>().is_err());
    }

    #[test]
    fn nlri_rejects_overlong_and_truncated() {
        assert!(Prefix::parse_all(&[33, 1, 2, 3, 4, 5], Family::Ipv4Unicast).is_err());
        assert!(Prefix::parse_all(&[24, 1, 2], Family::Ipv4Unicast).is_err());
        let ok = Prefix::parse_all(&[24, 192, 0, 2], Family::Ipv4Unicast).unwrap();
        assert_eq!(ok, vec!["192.0.2.0/24".parse().unwrap()]);
    }
}
