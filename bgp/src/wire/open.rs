//! OPEN (RFC 4271 §4.2) and its capabilities (RFC 5492).

use std::net::Ipv4Addr;

use super::error::{DecodeError, EncodeError, OpenError};
use super::prefix::Family;
use super::{Reader, AS_TRANS};

/// Optional parameter type 2, Capabilities (RFC 5492 §4).
const PARAM_CAPABILITIES: u8 = 2;

mod code {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_AS: u8 = 65;
}

/// A capability (RFC 5492 §4). Those this speaker acts on are typed; every other one
/// is kept as is and ignored, as RFC 5492 §5 asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Code 1, multiprotocol extensions (RFC 4760 §8): AFI, reserved, SAFI.
    Multiprotocol { afi: u16, safi: u8 },
    /// Code 2, route refresh (RFC 2918 §2): no value.
    RouteRefresh,
    /// Code 64, graceful restart (RFC 4724 §3).
    GracefulRestart(GracefulRestart),
    /// Code 65, support for 4-octet AS numbers, carrying ours (RFC 6793 §3).
    FourOctetAs { asn: u32 },
    /// Anything else, zero-length ones included.
    Unknown { code: u8, value: Vec<u8> },
}

/// The graceful restart capability value (RFC 4724 §3; the N bit is RFC 8538 §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// R: the sender has restarted.
    pub restarting: bool,
    /// N: the sender supports graceful NOTIFICATION (RFC 8538).
    pub notification: bool,
    /// Seconds the peer should keep our routes after the session drops (12 bits).
    pub restart_time: u16,
    /// AFI, SAFI, and whether forwarding state was preserved.
    pub families: Vec<(u16, u8, bool)>,
}

impl Capability {
    pub fn multiprotocol(family: Family) -> Capability {
        let (afi, safi) = family.afi_safi();
        Capability::Multiprotocol { afi, safi }
    }

    fn code(&self) -> u8 {
        match self {
            Capability::Multiprotocol { .. } => code::MULTIPROTOCOL,
            Capability::RouteRefresh => code::ROUTE_REFRESH,
            Capability::GracefulRestart(_) => code::GRACEFUL_RESTART,
            Capability::FourOctetAs { .. } => code::FOUR_OCTET_AS,
            Capability::Unknown { code, .. } => *code,
        }
    }

    fn encode_value(&self, out: &mut Vec<u8>) {
        match self {
            Capability::Multiprotocol { afi, safi } => {
                out.extend_from_slice(&afi.to_be_bytes());
                out.push(0);
                out.push(*safi);
            }
            Capability::RouteRefresh => {}
            Capability::GracefulRestart(gr) => {
                let mut flags = gr.restart_time & 0x0fff;
                if gr.restarting {
                    flags |= 0x8000;
                }
                if gr.notification {
                    flags |= 0x4000;
                }
                out.extend_from_slice(&flags.to_be_bytes());
                for &(afi, safi, forwarding) in &gr.families {
                    out.extend_from_slice(&afi.to_be_bytes());
                    out.push(safi);
                    out.push(if forwarding { 0x80 } else { 0 });
                }
            }
            Capability::FourOctetAs { asn } => out.extend_from_slice(&asn.to_be_bytes()),
            Capability::Unknown { value, .. } => out.extend_from_slice(value),
        }
    }

    fn parse(code: u8, value: &[u8]) -> Result<Capability, OpenError> {
        let malformed = |reason| OpenError::Unspecific { reason };
        let mut r = Reader::new(value);
        Ok(match code {
            code::MULTIPROTOCOL => {
                if value.len() != 4 {
                    return Err(malformed("multiprotocol capability length is not 4"));
                }
                Capability::Multiprotocol {
                    afi: u16::from_be_bytes([value[0], value[1]]),
                    safi: value[3],
                }
            }
            code::ROUTE_REFRESH => {
                if !value.is_empty() {
                    return Err(malformed("route refresh capability length is not 0"));
                }
                Capability::RouteRefresh
            }
            code::GRACEFUL_RESTART => {
                let bad = || malformed("graceful restart capability length");
                let flags = r.u16().ok_or_else(bad)?;
                if !r.remaining().is_multiple_of(4) {
                    return Err(bad());
                }
                let mut families = Vec::new();
                while let (Some(afi), Some(safi), Some(f)) = (r.u16(), r.u8(), r.u8()) {
                    families.push((afi, safi, f & 0x80 != 0));
                }
                Capability::GracefulRestart(GracefulRestart {
                    restarting: flags & 0x8000 != 0,
                    notification: flags & 0x4000 != 0,
                    restart_time: flags & 0x0fff,
                    families,
                })
            }
            code::FOUR_OCTET_AS => {
                let asn = r
                    .u32()
                    .filter(|_| r.is_empty())
                    .ok_or(malformed("4-octet AS capability length is not 4"))?;
                Capability::FourOctetAs { asn }
            }
            code => Capability::Unknown {
                code,
                value: value.to_vec(),
            },
        })
    }
}

/// An OPEN message (RFC 4271 §4.2). The version is always 4: the decoder rejects
/// others. Capabilities keep the grouping they arrived in, one `Vec` per optional
/// parameter, since BIRD sends one parameter holding all of them and FRR one each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// My Autonomous System: AS_TRANS when the real AS needs 4 octets.
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub parameters: Vec<Vec<Capability>>,
}

impl Open {
    /// An OPEN for `asn`, with all capabilities in one optional parameter.
    pub fn new(asn: u32, hold_time: u16, bgp_id: Ipv4Addr, capabilities: Vec<Capability>) -> Open {
        Open {
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            bgp_id,
            parameters: if capabilities.is_empty() {
                vec![]
            } else {
                vec![capabilities]
            },
        }
    }

    pub fn capabilities(&self) -> impl Iterator<Item = &Capability> {
        self.parameters.iter().flatten()
    }

    /// The sender's AS: from the 4-octet AS capability if present (RFC 6793 §4.1).
    pub fn asn(&self) -> u32 {
        self.four_octet_as().unwrap_or(u32::from(self.my_as))
    }

    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities().find_map(|c| match c {
            Capability::FourOctetAs { asn } => Some(*asn),
            _ => None,
        })
    }

    /// Families the sender offers. An OPEN without multiprotocol capabilities implies
    /// IPv4 unicast only (RFC 4760 §8).
    pub fn families(&self) -> Vec<Family> {
        let mut any = false;
        let mut out = Vec::new();
        for c in self.capabilities() {
            if let Capability::Multiprotocol { afi, safi } = c {
                any = true;
                if let Some(f) = Family::from_afi_safi(*afi, *safi) {
                    if !out.contains(&f) {
                        out.push(f);
                    }
                }
            }
        }
        if !any {
            out.push(Family::Ipv4Unicast);
        }
        out
    }

    pub fn route_refresh(&self) -> bool {
        self.capabilities()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }

    /// Parses the OPEN body and applies the checks that need no configuration
    /// (RFC 4271 §6.2): version, hold time 1 or 2, a zero BGP identifier.
    pub(crate) fn parse(body: &[u8]) -> Result<Open, DecodeError> {
        let malformed = |reason| DecodeError::Open(OpenError::Unspecific { reason });
        let mut r = Reader::new(body);
        // frame() guarantees the 10 fixed octets.
        let version = r.u8().ok_or(malformed("short"))?;
        if version != 4 {
            return Err(OpenError::UnsupportedVersion { version }.into());
        }
        let my_as = r.u16().ok_or(malformed("short"))?;
        let hold_time = r.u16().ok_or(malformed("short"))?;
        let bgp_id = Ipv4Addr::from(r.u32().ok_or(malformed("short"))?);
        let opt_len = r.u8().ok_or(malformed("short"))?;
        // RFC 9072 §2: length 255 followed by type 255 announces the extended
        // format, with 2-octet lengths for the field and for each parameter.
        let extended = opt_len == 255 && r.rest().first() == Some(&255);
        let params_len = if extended {
            r.u8();
            usize::from(r.u16().ok_or(malformed("short"))?)
        } else {
            usize::from(opt_len)
        };
        if params_len != r.remaining() {
            return Err(malformed(
                "optional parameters length disagrees with message length",
            ));
        }
        let mut parameters = Vec::new();
        while !r.is_empty() {
            let kind = r.u8().ok_or(malformed("truncated optional parameter"))?;
            let len = if extended {
                r.u16()
            } else {
                r.u8().map(u16::from)
            };
            let value = len
                .and_then(|len| r.take(usize::from(len)))
                .ok_or(malformed("truncated optional parameter"))?;
            if kind != PARAM_CAPABILITIES {
                return Err(OpenError::UnsupportedOptionalParameter { kind }.into());
            }
            let mut caps = Vec::new();
            let mut cr = Reader::new(value);
            while !cr.is_empty() {
                let (Some(code), Some(len)) = (cr.u8(), cr.u8()) else {
                    return Err(malformed("truncated capability"));
                };
                let value = cr
                    .take(usize::from(len))
                    .ok_or(malformed("truncated capability"))?;
                caps.push(Capability::parse(code, value)?);
            }
            parameters.push(caps);
        }
        if hold_time == 1 || hold_time == 2 {
            return Err(OpenError::UnacceptableHoldTime { hold_time }.into());
        }
        if bgp_id.is_unspecified() {
            return Err(OpenError::BadBgpIdentifier { id: bgp_id }.into());
        }
        Ok(Open {
            my_as,
            hold_time,
            bgp_id,
            parameters,
        })
    }

    /// The classic format when everything fits in 255 octets, the extended one of
    /// RFC 9072 otherwise.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(4);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        let start = out.len();
        out.push(0);
        if self.encode_parameters(out, false).is_ok() && out.len() - start - 1 <= 255 {
            out[start] = (out.len() - start - 1) as u8;
            return Ok(());
        }
        out.truncate(start);
        out.extend_from_slice(&[255, 255, 0, 0]);
        self.encode_parameters(out, true)?;
        let len = u16::try_from(out.len() - start - 4)
            .map_err(|_| EncodeError::OptionalParametersTooLong)?;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    fn encode_parameters(&self, out: &mut Vec<u8>, extended: bool) -> Result<(), EncodeError> {
        let too_long = |_| EncodeError::OptionalParametersTooLong;
        for caps in &self.parameters {
            out.push(PARAM_CAPABILITIES);
            let len_at = out.len();
            out.extend_from_slice(if extended { &[0, 0] } else { &[0] });
            let value_at = out.len();
            for cap in caps {
                out.push(cap.code());
                let cap_len_at = out.len();
                out.push(0);
                cap.encode_value(out);
                out[cap_len_at] = u8::try_from(out.len() - cap_len_at - 1).map_err(too_long)?;
            }
            let len = out.len() - value_at;
            if extended {
                let len = u16::try_from(len).map_err(too_long)?;
                out[len_at..value_at].copy_from_slice(&len.to_be_bytes());
            } else {
                out[len_at] = u8::try_from(len).map_err(too_long)?;
            }
        }
        Ok(())
    }
}
