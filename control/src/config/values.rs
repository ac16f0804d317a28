//! Small value types of the config file that TOML has no native form for:
//! durations, BGP communities, address-pool ranges, and options given once per
//! address family (the outer source prefixes, a peer's next hops). Each parses from a string (or a list of them) and says what a good
//! value looks like when it refuses one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Deserializes a `FromStr` type from a TOML string, turning the parse error
/// into a serde error (which then carries the field path and span).
fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// A duration written as an integer and a unit: `"500ms"`, `"2s"`, `"1m"`, `"1h"`.
///
/// Plain integers are refused on purpose: `interval = 2` is ambiguous.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration `{s}`: expected an integer and a unit (ms, s, m or h), e.g. \"500ms\" or \"2s\"")
    };
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = s[..digits].parse().map_err(|_| bad())?;
    let unit_ms: u64 = match &s[digits..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

/// Serde adapter for [`parse_duration`] (`#[serde(with = "duration")]`).
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// A standard BGP community (RFC 1997): `"ASN:VALUE"` with two 16-bit halves,
/// or one of the well-known names `no-export`, `no-advertise`,
/// `no-export-subconfed`, `blackhole` (RFC 7999).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community(pub u32);

impl FromStr for Community {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let known = match s {
            "no-export" => Some(0xFFFF_FF01),
            "no-advertise" => Some(0xFFFF_FF02),
            "no-export-subconfed" => Some(0xFFFF_FF03),
            "blackhole" => Some(0xFFFF_029A),
            _ => None,
        };
        if let Some(v) = known {
            return Ok(Community(v));
        }
        let bad = || {
            format!("invalid community `{s}`: expected \"ASN:VALUE\" with both parts in 0..=65535, or a well-known name such as \"no-export\"")
        };
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let a: u16 = a.parse().map_err(|_| bad())?;
        let b: u16 = b.parse().map_err(|_| bad())?;
        Ok(Community((u32::from(a) << 16) | u32::from(b)))
    }
}

impl<'de> Deserialize<'de> for Community {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 16, self.0 & 0xFFFF)
    }
}

/// A large BGP community (RFC 8092): `"GLOBAL:LOCAL1:LOCAL2"`, three 32-bit parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity(pub u32, pub u32, pub u32);

impl FromStr for LargeCommunity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid large community `{s}`: expected \"GLOBAL:LOCAL1:LOCAL2\" with each part in 0..=4294967295")
        };
        let mut it = s.split(':').map(|p| p.parse::<u32>().map_err(|_| bad()));
        let (a, b, c) = (it.next(), it.next(), it.next());
        match (a, b, c, it.next()) {
            (Some(a), Some(b), Some(c), None) => Ok(LargeCommunity(a?, b?, c?)),
            _ => Err(bad()),
        }
    }
}

impl<'de> Deserialize<'de> for LargeCommunity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.0, self.1, self.2)
    }
}

/// One block of an address pool: a CIDR prefix (`"203.0.113.0/28"`) or an
/// inclusive range (`"198.51.100.10-198.51.100.20"`), as MetalLB writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn u128_to_ip(like: IpAddr, v: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(v.into()),
    }
}

impl PoolRange {
    /// Whether `ip` lies inside this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.first.is_ipv4()
            && (ip_to_u128(self.first)..=ip_to_u128(self.last)).contains(&ip_to_u128(ip))
    }

    /// Whether two blocks share an address.
    pub fn overlaps(&self, other: &PoolRange) -> bool {
        self.first.is_ipv4() == other.first.is_ipv4()
            && ip_to_u128(self.first) <= ip_to_u128(other.last)
            && ip_to_u128(other.first) <= ip_to_u128(self.last)
    }

    /// The block's addresses in ascending order.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        (ip_to_u128(self.first)..=ip_to_u128(self.last)).map(|v| u128_to_ip(self.first, v))
    }
}

impl FromStr for PoolRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("invalid pool range `{s}`: {why} (expected \"203.0.113.0/28\" or \"198.51.100.10-198.51.100.20\")")
        };
        if let Some((a, b)) = s.split_once('-') {
            let first: IpAddr = a.trim().parse().map_err(|_| bad("bad first address"))?;
            let last: IpAddr = b.trim().parse().map_err(|_| bad("bad last address"))?;
            if first.is_ipv4() != last.is_ipv4() {
                return Err(bad("the two ends are of different address families"));
            }
            if ip_to_u128(first) > ip_to_u128(last) {
                return Err(bad("the first address is above the last"));
            }
            return Ok(PoolRange { first, last });
        }
        let net: ipnet::IpNet = s.parse().map_err(|_| bad("not a prefix or a range"))?;
        if net.network() != net.addr() {
            return Err(bad(&format!(
                "host bits are set; did you mean {}?",
                net.trunc()
            )));
        }
        Ok(PoolRange {
            first: net.network(),
            last: net.broadcast(),
        })
    }
}

impl<'de> Deserialize<'de> for PoolRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

/// A value of one address family, as written in the config: a prefix or an address.
/// [`PerFamily`] keeps at most one of each family.
pub trait OfFamily: FromStr + Copy + fmt::Display {
    type V4: Copy + fmt::Display + Into<Self>;
    type V6: Copy + fmt::Display + Into<Self>;
    /// What one value is, and what several are, for error messages.
    const WHAT: (&'static str, &'static str);
    /// A good value, for error messages.
    const EXAMPLE: &'static str;
    fn split(self) -> Split<Self::V4, Self::V6>;
}

/// An [`OfFamily`] value by family.
pub enum Split<A, B> {
    V4(A),
    V6(B),
}

impl OfFamily for ipnet::IpNet {
    type V4 = ipnet::Ipv4Net;
    type V6 = ipnet::Ipv6Net;
    const WHAT: (&'static str, &'static str) = ("prefix", "prefixes");
    const EXAMPLE: &'static str = "\"192.0.2.128/28\"";
    fn split(self) -> Split<ipnet::Ipv4Net, ipnet::Ipv6Net> {
        match self {
            ipnet::IpNet::V4(n) => Split::V4(n),
            ipnet::IpNet::V6(n) => Split::V6(n),
        }
    }
}

impl OfFamily for IpAddr {
    type V4 = Ipv4Addr;
    type V6 = Ipv6Addr;
    const WHAT: (&'static str, &'static str) = ("address", "addresses");
    const EXAMPLE: &'static str = "\"192.0.2.1\"";
    fn split(self) -> Split<Ipv4Addr, Ipv6Addr> {
        match self {
            IpAddr::V4(a) => Split::V4(a),
            IpAddr::V6(a) => Split::V6(a),
        }
    }
}

/// One value, or a list of at most one per address family (`"192.0.2.1"` or
/// `["192.0.2.1", "2001:db8::1"]`), for options that IPv4 and IPv6 each need their own
/// of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerFamily<T: OfFamily> {
    pub v4: Option<T::V4>,
    pub v6: Option<T::V6>,
}

/// `dataplane.outer_source_prefix`: the prefixes outer source addresses are hashed
/// from, so IPv4 and IPv6 backends both get sources spread by client.
pub type OuterPrefixes = PerFamily<ipnet::IpNet>;

/// `bgp.peers[].next_hop`: the NEXT_HOP of each family's routes, so one session can
/// carry IPv4 and IPv6 VIPs (MP-BGP, RFC 4760).
pub type NextHops = PerFamily<IpAddr>;

impl<T: OfFamily> Default for PerFamily<T> {
    fn default() -> Self {
        PerFamily { v4: None, v6: None }
    }
}

impl<T: OfFamily> PerFamily<T> {
    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }

    /// The values given, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = T> {
        let v4 = self.v4.map(Into::into);
        v4.into_iter().chain(self.v6.map(Into::into))
    }

    /// The value for this family.
    pub fn for_family(&self, v4: bool) -> Option<T> {
        match v4 {
            true => self.v4.map(Into::into),
            false => self.v6.map(Into::into),
        }
    }

    fn add(&mut self, s: &str) -> Result<(), String> {
        let (what, whats) = T::WHAT;
        let value: T = s
            .parse()
            .map_err(|_| format!("invalid {what} `{s}`: expected e.g. {}", T::EXAMPLE))?;
        let twice = |prev: &dyn fmt::Display| {
            format!("two {whats} of one family ({prev} and {value}): give at most one IPv4 and one IPv6 {what}")
        };
        match value.split() {
            Split::V4(n) => match self.v4.replace(n) {
                Some(prev) => Err(twice(&prev)),
                None => Ok(()),
            },
            Split::V6(n) => match self.v6.replace(n) {
                Some(prev) => Err(twice(&prev)),
                None => Ok(()),
            },
        }
    }
}

impl<'de, T: OfFamily> Deserialize<'de> for PerFamily<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: OfFamily> serde::de::Visitor<'de> for V<T> {
            type Value = PerFamily<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                let (what, _) = T::WHAT;
                write!(
                    f,
                    "one {what}, or a list of at most one IPv4 and one IPv6 {what}"
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PerFamily<T>, E> {
                let mut p = PerFamily::default();
                p.add(s).map_err(E::custom)?;
                Ok(p)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PerFamily<T>, A::Error> {
                let mut p = PerFamily::default();
                while let Some(s) = seq.next_element::<String>()? {
                    p.add(&s).map_err(serde::de::Error::custom)?;
                }
                Ok(p)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `s` as the TOML value of one field of type `T`.
    fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
        #[derive(Deserialize)]
        struct Field<T> {
            p: T,
        }
        toml::from_str::<Field<T>>(&format!("p = {s}"))
            .map(|t| t.p)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn outer_prefixes_one_or_one_per_family() {
        let parse = parse::<OuterPrefixes>;
        let one = parse("\"192.0.2.128/28\"").unwrap();
        assert_eq!(one.v4, Some("192.0.2.128/28".parse().unwrap()));
        assert_eq!(one.v6, None);
        let both = parse("[\"2001:db8:f::/64\", \"192.0.2.128/28\"]").unwrap();
        assert_eq!(
            both.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ["192.0.2.128/28", "2001:db8:f::/64"]
        );
        assert_eq!(
            both.for_family(false),
            Some("2001:db8:f::/64".parse().unwrap())
        );
        assert!(parse("[]").unwrap().is_empty());
        for (bad, why) in [
            (
                "[\"192.0.2.0/28\", \"198.51.100.0/28\"]",
                "two prefixes of one family",
            ),
            ("\"192.0.2.0\"", "invalid prefix"),
            ("[\"2001:db8::/64\", 7]", "invalid type"),
            ("7", "one prefix, or a list"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn next_hops_one_or_one_per_family() {
        let parse = parse::<NextHops>;
        let one = parse("\"2001:db8::1\"").unwrap();
        assert_eq!(one.v4, None);
        assert_eq!(one.v6, Some("2001:db8::1".parse().unwrap()));
        let both = parse("[\"2001:db8::1\", \"192.0.2.1\"]").unwrap();
        assert_eq!(both.v4, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(
            both.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["192.0.2.1", "2001:db8::1"]
        );
        assert_eq!(both.for_family(true), Some("192.0.2.1".parse().unwrap()));
        for (bad, why) in [
            (
                "[\"192.0.2.1\", \"192.0.2.2\"]",
                "two addresses of one family (192.0.2.1 and 192.0.2.2): give at most one IPv4 and one IPv6 address",
            ),
            ("\"192.0.2.0/24\"", "invalid address `192.0.2.0/24`"),
            ("7", "one address, or a list"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "2",
            "s",
            "2 s",
            "-1s",
            "1.5s",
            "2sec",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn communities() {
        assert_eq!("65000:100".parse(), Ok(Community((65000 << 16) | 100)));
        assert_eq!("no-export".parse(), Ok(Community(0xFFFF_FF01)));
        assert_eq!(Community((65000 << 16) | 100).to_string(), "65000:100");
        for bad in ["65536:1", "1", "a:b", "1:2:3", ""] {
            assert!(bad.parse::<Community>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            "4200000000:1:2".parse(),
            Ok(LargeCommunity(4_200_000_000, 1, 2))
        );
        for bad in ["1:2", "1:2:3:4", "1:2:x", "4294967296:1:1"] {
            assert!(bad.parse::<LargeCommunity>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn pool_ranges() {
        let p: PoolRange = "203.0.113.0/30".parse().unwrap();
        assert_eq!(p.addresses().count(), 4);
        assert!(p.contains("203.0.113.3".parse().unwrap()));
        assert!(!p.contains("203.0.113.4".parse().unwrap()));
        let r: PoolRange = "198.51.100.10 - 198.51.100.12".parse().unwrap();
        assert_eq!(
            r.addresses().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
        );
        assert!(!p.overlaps(&r));
        assert!(p.overlaps(&"203.0.113.2-203.0.113.9".parse().unwrap()));
        let v6: PoolRange = "2001:db8::/126".parse().unwrap();
        assert_eq!(v6.addresses().count(), 4);
        assert!(!v6.overlaps(&p));
        for bad in [
            "203.0.113.1/30",
            "10.0.0.5-10.0.0.1",
            "10.0.0.1-2001:db8::1",
            "x",
            "10.0.0.0/33",
        ] {
            assert!(bad.parse::<PoolRange>().is_err(), "{bad:?} accepted");
        }
    }
}
