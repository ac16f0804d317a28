//! UPDATE (RFC 4271 §4.3) with its path attributes, the multiprotocol attributes of
//! RFC 4760 for IPv6, and the error handling of RFC 7606.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::error::{DecodeError, ErrorAction, UpdateError, UpdateErrorKind};
use super::prefix::{Family, Prefix};
use super::{Context, Reader, AS_TRANS};

/// Attribute flag bits (RFC 4271 §4.3).
mod flag {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// Attribute type codes (IANA "BGP Path Attributes").
mod code {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
    pub const LARGE_COMMUNITIES: u8 = 32;
}

/// ORIGIN values (RFC 4271 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

/// AS_PATH segment types (RFC 4271 §4.3, RFC 5065 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AsSegmentKind {
    Set = 1,
    Sequence = 2,
    ConfedSequence = 3,
    ConfedSet = 4,
}

/// One AS_PATH segment: at most 255 AS numbers, none of them 0 (RFC 7607).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsSegment {
    pub kind: AsSegmentKind,
    pub asns: Vec<u32>,
}

/// A large community (RFC 8092 §3): global administrator and two local data parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LargeCommunity {
    pub global: u32,
    pub local1: u32,
    pub local2: u32,
}

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.global, self.local1, self.local2)
    }
}

impl FromStr for LargeCommunity {
    type Err = String;
    /// `GLOBAL:LOCAL1:LOCAL2`, each a 32-bit decimal number (RFC 8195 §2 notation).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':').map(str::parse::<u32>);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(global)), Some(Ok(local1)), Some(Ok(local2)), None) => Ok(LargeCommunity {
                global,
                local1,
                local2,
            }),
            _ => Err(format!("large community {s:?} is not GLOBAL:LOCAL1:LOCAL2")),
        }
    }
}

/// MP_REACH_NLRI for a known unicast family (RFC 4760 §3). The next hop is one
/// address, or for IPv6 a global and a link-local one (RFC 2545 §3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpReach {
    pub family: Family,
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<Prefix>,
}

/// MP_UNREACH_NLRI for a known unicast family (RFC 4760 §4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpUnreach {
    pub family: Family,
    pub withdrawn: Vec<Prefix>,
}

/// A path attribute (RFC 4271 §5). Unrecognised optional attributes, and the
/// multiprotocol attributes of families this speaker does not know, stay raw.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathAttribute {
    Origin(Origin),
    AsPath(Vec<AsSegment>),
    NextHop(Ipv4Addr),
    MultiExitDisc(u32),
    LocalPref(u32),
    AtomicAggregate,
    Aggregator {
        asn: u32,
        address: Ipv4Addr,
    },
    /// RFC 1997.
    Communities(Vec<u32>),
    MpReach(MpReach),
    MpUnreach(MpUnreach),
    /// RFC 6793 §3, for AS numbers that a 2-octet session cannot carry.
    As4Path(Vec<AsSegment>),
    As4Aggregator {
        asn: u32,
        address: Ipv4Addr,
    },
    /// RFC 8092.
    LargeCommunities(Vec<LargeCommunity>),
    Unknown {
        flags: u8,
        code: u8,
        value: Vec<u8>,
    },
}

/// Which flags a recognised attribute must carry (RFC 4271 §5), and how a malformed
/// one is handled (RFC 7606 §7, RFC 6793 §6).
fn known(code: u8) -> Option<(u8, ErrorAction)> {
    use ErrorAction::*;
    let wk = flag::TRANSITIVE;
    let opt_t = flag::OPTIONAL | flag::TRANSITIVE;
    let opt_nt = flag::OPTIONAL;
    Some(match code {
        code::ORIGIN | code::AS_PATH | code::NEXT_HOP | code::LOCAL_PREF => (wk, TreatAsWithdraw),
        code::ATOMIC_AGGREGATE => (wk, AttributeDiscard),
        code::MULTI_EXIT_DISC => (opt_nt, TreatAsWithdraw),
        code::AGGREGATOR | code::AS4_PATH | code::AS4_AGGREGATOR => (opt_t, AttributeDiscard),
        code::COMMUNITIES | code::LARGE_COMMUNITIES => (opt_t, TreatAsWithdraw),
        code::MP_REACH_NLRI | code::MP_UNREACH_NLRI => (opt_nt, SessionReset),
        _ => return None,
    })
}

impl PathAttribute {
    fn code(&self) -> u8 {
        match self {
            PathAttribute::Origin(_) => code::ORIGIN,
            PathAttribute::AsPath(_) => code::AS_PATH,
            PathAttribute::NextHop(_) => code::NEXT_HOP,
            PathAttribute::MultiExitDisc(_) => code::MULTI_EXIT_DISC,
            PathAttribute::LocalPref(_) => code::LOCAL_PREF,
            PathAttribute::AtomicAggregate => code::ATOMIC_AGGREGATE,
            PathAttribute::Aggregator { .. } => code::AGGREGATOR,
            PathAttribute::Communities(_) => code::COMMUNITIES,
            PathAttribute::MpReach(_) => code::MP_REACH_NLRI,
            PathAttribute::MpUnreach(_) => code::MP_UNREACH_NLRI,
            PathAttribute::As4Path(_) => code::AS4_PATH,
            PathAttribute::As4Aggregator { .. } => code::AS4_AGGREGATOR,
            PathAttribute::LargeCommunities(_) => code::LARGE_COMMUNITIES,
            PathAttribute::Unknown { code, .. } => *code,
        }
    }

    fn encode(&self, ctx: Context, out: &mut Vec<u8>) {
        let flags = match self {
            PathAttribute::Unknown { flags, .. } => flags & !flag::EXTENDED_LENGTH,
            other => known(other.code()).map_or(0, |(f, _)| f),
        };
        let start = out.len();
        out.extend_from_slice(&[flags, self.code(), 0]);
        let value_at = out.len();
        match self {
            PathAttribute::Origin(o) => out.push(*o as u8),
            PathAttribute::AsPath(segments) => encode_as_path(segments, ctx.four_octet_as, out),
            PathAttribute::As4Path(segments) => encode_as_path(segments, true, out),
            PathAttribute::NextHop(a) => out.extend_from_slice(&a.octets()),
            PathAttribute::MultiExitDisc(v) | PathAttribute::LocalPref(v) => {
                out.extend_from_slice(&v.to_be_bytes())
            }
            PathAttribute::AtomicAggregate => {}
            PathAttribute::Aggregator { asn, address } => {
                if ctx.four_octet_as {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    out.extend_from_slice(&u16::try_from(*asn).unwrap_or(AS_TRANS).to_be_bytes());
                }
                out.extend_from_slice(&address.octets());
            }
            PathAttribute::As4Aggregator { asn, address } => {
                out.extend_from_slice(&asn.to_be_bytes());
                out.extend_from_slice(&address.octets());
            }
            PathAttribute::Communities(cs) => {
                for c in cs {
                    out.extend_from_slice(&c.to_be_bytes());
                }
            }
            PathAttribute::LargeCommunities(cs) => {
                for c in cs {
                    out.extend_from_slice(&c.global.to_be_bytes());
                    out.extend_from_slice(&c.local1.to_be_bytes());
                    out.extend_from_slice(&c.local2.to_be_bytes());
                }
            }
            PathAttribute::MpReach(mp) => {
                let (afi, safi) = mp.family.afi_safi();
                out.extend_from_slice(&afi.to_be_bytes());
                out.push(safi);
                let nh_len_at = out.len();
                out.push(0);
                for nh in &mp.next_hops {
                    match nh {
                        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                    }
                }
                out[nh_len_at] = (out.len() - nh_len_at - 1) as u8;
                out.push(0); // Reserved (RFC 4760 §3).
                for p in &mp.nlri {
                    p.encode(out);
                }
            }
            PathAttribute::MpUnreach(mp) => {
                let (afi, safi) = mp.family.afi_safi();
                out.extend_from_slice(&afi.to_be_bytes());
                out.push(safi);
                for p in &mp.withdrawn {
                    p.encode(out);
                }
            }
            PathAttribute::Unknown { value, .. } => out.extend_from_slice(value),
        }
        let len = out.len() - value_at;
        if len > 255 {
            out[start] |= flag::EXTENDED_LENGTH;
            out.insert(value_at - 1, 0);
            out[value_at - 1..value_at + 1].copy_from_slice(&(len as u16).to_be_bytes());
        } else {
            out[value_at - 1] = len as u8;
        }
    }

    /// Parses one attribute's value. `raw` is the whole attribute, which RFC 4271 §6.3
    /// puts in the NOTIFICATION data.
    fn parse(
        flags: u8,
        code: u8,
        value: &[u8],
        raw: &[u8],
        ctx: Context,
    ) -> Result<Self, UpdateError> {
        let Some((expected, action)) = known(code) else {
            if flags & flag::OPTIONAL == 0 {
                // RFC 4271 §6.3: an unrecognised well-known attribute is answered with
                // Unrecognized Well-known Attribute, the attribute as data, and a
                // reset. RFC 7606 does not soften this: its §3 and §7 revise the
                // handling of malformed attributes this speaker knows, and an attribute
                // it does not recognise cannot be judged malformed.
                return Err(UpdateError::new(
                    UpdateErrorKind::UnrecognizedWellKnownAttribute,
                    raw,
                    ErrorAction::SessionReset,
                ));
            }
            return Ok(PathAttribute::Unknown {
                flags,
                code,
                value: value.to_vec(),
            });
        };
        let err = |kind| UpdateError::new(kind, raw, action);
        // RFC 7606 §3 (c): conflicting Optional or Transitive bits make it malformed.
        if flags & (flag::OPTIONAL | flag::TRANSITIVE) != expected {
            return Err(err(UpdateErrorKind::AttributeFlagsError));
        }
        // The Partial bit is only meaningful on optional transitive attributes.
        if flags & flag::PARTIAL != 0 && expected != flag::OPTIONAL | flag::TRANSITIVE {
            return Err(err(UpdateErrorKind::AttributeFlagsError));
        }
        let length_error = || err(UpdateErrorKind::AttributeLengthError);
        let u32_value = || match value {
            [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(length_error()),
        };
        let ipv4 =
            |v: &[u8]| -> Option<Ipv4Addr> { <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from) };
        Ok(match code {
            code::ORIGIN => match value {
                [0] => PathAttribute::Origin(Origin::Igp),
                [1] => PathAttribute::Origin(Origin::Egp),
                [2] => PathAttribute::Origin(Origin::Incomplete),
                [_] => return Err(err(UpdateErrorKind::InvalidOrigin)),
                _ => return Err(length_error()),
            },
            code::AS_PATH => PathAttribute::AsPath(
                parse_as_path(value, ctx.four_octet_as)
                    .ok_or_else(|| err(UpdateErrorKind::MalformedAsPath))?,
            ),
            code::AS4_PATH => PathAttribute::As4Path(
                parse_as_path(value, true).ok_or_else(|| err(UpdateErrorKind::MalformedAsPath))?,
            ),
            code::NEXT_HOP => {
                let nh = ipv4(value).ok_or_else(length_error)?;
                if !is_host_address(nh) {
                    return Err(err(UpdateErrorKind::InvalidNextHop));
                }
                PathAttribute::NextHop(nh)
            }
            code::MULTI_EXIT_DISC => PathAttribute::MultiExitDisc(u32_value()?),
            code::LOCAL_PREF => PathAttribute::LocalPref(u32_value()?),
            code::ATOMIC_AGGREGATE => {
                if !value.is_empty() {
                    return Err(length_error());
                }
                PathAttribute::AtomicAggregate
            }
            code::AGGREGATOR => {
                let (asn, addr) = match (ctx.four_octet_as, value.len()) {
                    (true, 8) => (
                        u32::from_be_bytes([value[0], value[1], value[2], value[3]]),
                        &value[4..],
                    ),
                    (false, 6) => (
                        u32::from(u16::from_be_bytes([value[0], value[1]])),
                        &value[2..],
                    ),
                    _ => return Err(length_error()),
                };
                PathAttribute::Aggregator {
                    asn,
                    address: ipv4(addr).ok_or_else(length_error)?,
                }
            }
            code::AS4_AGGREGATOR => {
                if value.len() != 8 {
                    return Err(length_error());
                }
                PathAttribute::As4Aggregator {
                    asn: u32::from_be_bytes([value[0], value[1], value[2], value[3]]),
                    address: ipv4(&value[4..]).ok_or_else(length_error)?,
                }
            }
            code::COMMUNITIES => {
                // RFC 7606 §7.8: a non-zero multiple of 4.
                if value.is_empty() || !value.len().is_multiple_of(4) {
                    return Err(length_error());
                }
                PathAttribute::Communities(
                    value
                        .chunks_exact(4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
            code::LARGE_COMMUNITIES => {
                // RFC 8092 §5: a non-zero multiple of 12.
                if value.is_empty() || !value.len().is_multiple_of(12) {
                    return Err(length_error());
                }
                PathAttribute::LargeCommunities(
                    value
                        .chunks_exact(12)
                        .map(|c| LargeCommunity {
                            global: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                            local1: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                            local2: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
                        })
                        .collect(),
                )
            }
            code::MP_REACH_NLRI | code::MP_UNREACH_NLRI => {
                return parse_mp(flags, code, value, raw)
            }
            _ => unreachable!("known() lists exactly the codes matched above"),
        })
    }
}

/// RFC 4271 §6.3: a NEXT_HOP is syntactically correct when it "represents a valid IP
/// host address"; otherwise Invalid NEXT_HOP, which RFC 7606 §7.3 handles by
/// treat-as-withdraw. Not host addresses: 0.0.0.0/8 ("this network", a source only,
/// RFC 1122 §3.2.1.3), multicast 224.0.0.0/4 and the reserved 240.0.0.0/4 with the
/// limited broadcast. A loopback address is a host address that makes no sense
/// beyond one host: a semantic fault, which §6.3 says to log and ignore without a
/// NOTIFICATION, and this speaker installs nothing it learns.
fn is_host_address(a: Ipv4Addr) -> bool {
    let first = a.octets()[0];
    first != 0 && first < 224
}

/// MP_REACH_NLRI (RFC 4760 §3) and MP_UNREACH_NLRI (§4), which both open with AFI and
/// SAFI. A malformed one, its prefixes included, resets the session with Optional
/// Attribute Error (RFC 4760 §7; RFC 7606 §7.11, §7.12): the Invalid Network Field of a
/// bad prefix is for the UPDATE's own NLRI and Withdrawn Routes fields (RFC 4271 §6.3).
fn parse_mp(flags: u8, code: u8, value: &[u8], raw: &[u8]) -> Result<PathAttribute, UpdateError> {
    let err = || {
        UpdateError::new(
            UpdateErrorKind::OptionalAttributeError,
            raw,
            ErrorAction::SessionReset,
        )
    };
    let mut r = Reader::new(value);
    let (afi, safi) = (r.u16().ok_or_else(err)?, r.u8().ok_or_else(err)?);
    let Some(family) = Family::from_afi_safi(afi, safi) else {
        // A family never negotiated: not ours to interpret (RFC 4760 §7).
        return Ok(PathAttribute::Unknown {
            flags,
            code,
            value: value.to_vec(),
        });
    };
    if code == code::MP_UNREACH_NLRI {
        let withdrawn = Prefix::parse_all(r.rest(), family).map_err(|_| err())?;
        return Ok(PathAttribute::MpUnreach(MpUnreach { family, withdrawn }));
    }
    let nh_len = r.u8().ok_or_else(err)?;
    let nh = r.take(usize::from(nh_len)).ok_or_else(err)?;
    let next_hops = match nh.len() {
        4 => vec![IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(nh).map_err(|_| err())?,
        ))],
        16 | 32 => nh
            .chunks_exact(16)
            .map(|c| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(c).unwrap_or([0; 16]))))
            .collect(),
        _ => return Err(err()),
    };
    r.u8().ok_or_else(err)?; // Reserved.
    let nlri = Prefix::parse_all(r.rest(), family).map_err(|_| err())?;
    Ok(PathAttribute::MpReach(MpReach {
        family,
        next_hops,
        nlri,
    }))
}

/// RFC 4271 §4.3 (AS_PATH), RFC 6793 §3 (4-octet), RFC 7606 §7.2 and RFC 7607: empty
/// segments, unknown segment types, truncation and AS 0 are all malformed.
fn parse_as_path(value: &[u8], four_octet: bool) -> Option<Vec<AsSegment>> {
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while !r.is_empty() {
        let kind = match r.u8()? {
            1 => AsSegmentKind::Set,
            2 => AsSegmentKind::Sequence,
            3 => AsSegmentKind::ConfedSequence,
            4 => AsSegmentKind::ConfedSet,
            _ => return None,
        };
        let count = r.u8()?;
        if count == 0 {
            return None;
        }
        let mut asns = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let asn = if four_octet {
                r.u32()?
            } else {
                u32::from(r.u16()?)
            };
            if asn == 0 {
                return None;
            }
            asns.push(asn);
        }
        segments.push(AsSegment { kind, asns });
    }
    Some(segments)
}

fn encode_as_path(segments: &[AsSegment], four_octet: bool, out: &mut Vec<u8>) {
    for seg in segments {
        // A segment holds at most 255 AS numbers; longer ones continue in the next.
        for chunk in seg.asns.chunks(255) {
            out.push(seg.kind as u8);
            out.push(chunk.len() as u8);
            for &asn in chunk {
                if four_octet {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    out.extend_from_slice(&u16::try_from(asn).unwrap_or(AS_TRANS).to_be_bytes());
                }
            }
        }
    }
}

/// An UPDATE message (RFC 4271 §4.3). `withdrawn` and `nlri` are the IPv4 fields;
/// IPv6 travels in [`MpReach`] and [`MpUnreach`] attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<Prefix>,
    pub attributes: Vec<PathAttribute>,
    pub nlri: Vec<Prefix>,
}

impl Update {
    /// The End-of-RIB marker (RFC 4724 §2): an empty UPDATE for IPv4 unicast, an
    /// UPDATE holding only an empty MP_UNREACH_NLRI for other families.
    pub fn end_of_rib(family: Family) -> Update {
        match family {
            Family::Ipv4Unicast => Update::default(),
            other => Update {
                attributes: vec![PathAttribute::MpUnreach(MpUnreach {
                    family: other,
                    withdrawn: vec![],
                })],
                ..Update::default()
            },
        }
    }

    /// Prefixes announced, IPv4 and multiprotocol.
    pub fn announced(&self) -> impl Iterator<Item = &Prefix> {
        self.nlri
            .iter()
            .chain(self.attributes.iter().flat_map(|a| match a {
                PathAttribute::MpReach(mp) => mp.nlri.as_slice(),
                _ => &[],
            }))
    }

    /// Prefixes withdrawn, IPv4 and multiprotocol.
    pub fn withdrawn_all(&self) -> impl Iterator<Item = &Prefix> {
        self.withdrawn
            .iter()
            .chain(self.attributes.iter().flat_map(|a| match a {
                PathAttribute::MpUnreach(mp) => mp.withdrawn.as_slice(),
                _ => &[],
            }))
    }

    /// The length of the whole encoded message, header included.
    pub fn encoded_len(&self, ctx: Context) -> usize {
        let mut out = Vec::new();
        self.encode(ctx, &mut out);
        super::HEADER_LEN + out.len()
    }

    pub(crate) fn encode(&self, ctx: Context, out: &mut Vec<u8>) {
        let wl_at = out.len();
        out.extend_from_slice(&[0, 0]);
        for p in &self.withdrawn {
            p.encode(out);
        }
        let wl = (out.len() - wl_at - 2) as u16;
        out[wl_at..wl_at + 2].copy_from_slice(&wl.to_be_bytes());
        let al_at = out.len();
        out.extend_from_slice(&[0, 0]);
        for a in &self.attributes {
            a.encode(ctx, out);
        }
        let al = (out.len() - al_at - 2) as u16;
        out[al_at..al_at + 2].copy_from_slice(&al.to_be_bytes());
        for p in &self.nlri {
            p.encode(out);
        }
    }

    /// Parses an UPDATE body. Framing errors (RFC 7606 §4, §5.3) and malformed
    /// multiprotocol attributes reset the session at once. Attribute errors handled
    /// by treat-as-withdraw are reported only after the whole message has been
    /// framed, so that a later framing error still wins; discarded attributes are
    /// dropped silently (RFC 7606 §2).
    pub(crate) fn parse(body: &[u8], ctx: Context) -> Result<Update, DecodeError> {
        let framing = || {
            UpdateError::new(
                UpdateErrorKind::MalformedAttributeList,
                &[],
                ErrorAction::SessionReset,
            )
        };
        let mut r = Reader::new(body);
        let wl = r.u16().ok_or_else(framing)?;
        let withdrawn = r.take(usize::from(wl)).ok_or_else(framing)?;
        let al = r.u16().ok_or_else(framing)?;
        let attrs = r.take(usize::from(al)).ok_or_else(framing)?;
        let withdrawn = Prefix::parse_all(withdrawn, Family::Ipv4Unicast)?;
        let nlri = Prefix::parse_all(r.rest(), Family::Ipv4Unicast)?;

        let mut attributes = Vec::new();
        let mut seen = [false; 256];
        let mut pending: Option<UpdateError> = None;
        let mut ar = Reader::new(attrs);
        while !ar.is_empty() {
            let start = ar.rest();
            let header = (ar.u8(), ar.u8());
            let (Some(flags), Some(code)) = header else {
                pending.get_or_insert(UpdateError::new(
                    UpdateErrorKind::MalformedAttributeList,
                    &[],
                    ErrorAction::TreatAsWithdraw,
                ));
                break;
            };
            let len = if flags & flag::EXTENDED_LENGTH != 0 {
                ar.u16()
            } else {
                ar.u8().map(u16::from)
            };
            // RFC 7606 §4: an attribute that overruns the attribute field makes the
            // rest unparseable; the NLRI is still found by the total length.
            let Some(value) = len.and_then(|l| ar.take(usize::from(l))) else {
                pending.get_or_insert(UpdateError::new(
                    UpdateErrorKind::AttributeLengthError,
                    start,
                    ErrorAction::TreatAsWithdraw,
                ));
                break;
            };
            let raw = &start[..start.len() - ar.remaining()];
            if std::mem::replace(&mut seen[usize::from(code)], true) {
                // RFC 7606 §3 (g): repeated MP attributes reset the session; other
                // repeats are dropped.
                if code == code::MP_REACH_NLRI || code == code::MP_UNREACH_NLRI {
                    return Err(framing().into());
                }
                continue;
            }
            // Extended Length is framing, not meaning: keep it out of the value.
            match PathAttribute::parse(flags & !flag::EXTENDED_LENGTH, code, value, raw, ctx) {
                Ok(a) => attributes.push(a),
                Err(e) => match e.action {
                    ErrorAction::SessionReset => return Err(e.into()),
                    ErrorAction::TreatAsWithdraw => {
                        pending.get_or_insert(e);
                    }
                    ErrorAction::AttributeDiscard => {}
                },
            }
        }
        if let Some(e) = pending {
            return Err(e.into());
        }
        // RFC 4271 §6.3 and RFC 4760 §3: mandatory attributes when routes are announced;
        // RFC 7606 §3 (d): missing ones mean treat-as-withdraw.
        let mp_nlri = attributes
            .iter()
            .any(|a| matches!(a, PathAttribute::MpReach(mp) if !mp.nlri.is_empty()));
        if !nlri.is_empty() || mp_nlri {
            let mut required = vec![code::ORIGIN, code::AS_PATH];
            if !nlri.is_empty() {
                required.push(code::NEXT_HOP);
            }
            for c in required {
                if !seen[usize::from(c)] {
                    let e = UpdateError::new(
                        UpdateErrorKind::MissingWellKnownAttribute,
                        &[c],
                        ErrorAction::TreatAsWithdraw,
                    );
                    return Err(e.into());
                }
            }
        }
        Ok(Update {
            withdrawn,
            attributes,
            nlri,
        })
    }
}
