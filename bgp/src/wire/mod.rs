//! The BGP-4 message codec (RFC 4271 §4): owned message representations with `parse`
//! and `encode`, and one typed error per NOTIFICATION code and subcode (RFC 4271 §6).
//!
//! Everything here is pure: no I/O, no clock. Parsing untrusted bytes never panics; a
//! malformed message yields a [`DecodeError`] that names the NOTIFICATION to send and,
//! for UPDATEs, the RFC 7606 action to take.

mod error;
mod notification;
mod open;
mod prefix;
mod update;

pub use error::{DecodeError, EncodeError, ErrorAction, OpenError, UpdateError, UpdateErrorKind};
pub use notification::{CeaseSubcode, Notification, NotificationCode};
pub use open::{Capability, GracefulRestart, Open};
pub use prefix::{Family, Prefix, PrefixError};
pub use update::{
    AsSegment, AsSegmentKind, LargeCommunity, MpReach, MpUnreach, Origin, PathAttribute, Update,
};

/// Every message starts with 16 octets of all ones (RFC 4271 §4.1).
pub const MARKER: [u8; 16] = [0xff; 16];
/// Marker, length and type (RFC 4271 §4.1).
pub const HEADER_LEN: usize = 19;
/// The largest message without the extended message capability (RFC 4271 §4.1), which
/// this speaker never advertises.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The 2-octet AS number that stands in for a 4-octet one (RFC 6793 §9).
pub const AS_TRANS: u16 = 23456;

/// Message type codes (RFC 4271 §4.1, RFC 2918 §3).
pub mod kind {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

/// What the decoder needs to know about the session: the width of AS numbers in
/// AS_PATH and AGGREGATOR depends on whether both sides advertised the 4-octet AS
/// capability (RFC 6793 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    pub four_octet_as: bool,
}

impl Context {
    /// A session where both speakers advertised 4-octet AS support.
    pub const FOUR_OCTET: Context = Context {
        four_octet_as: true,
    };
}

/// A BGP message (RFC 4271 §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

impl Message {
    /// The type code in the header.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Open(_) => kind::OPEN,
            Message::Update(_) => kind::UPDATE,
            Message::Notification(_) => kind::NOTIFICATION,
            Message::Keepalive => kind::KEEPALIVE,
            Message::RouteRefresh(_) => kind::ROUTE_REFRESH,
        }
    }

    /// Parses one complete message (header included), as delimited by [`frame`].
    pub fn parse(msg: &[u8], ctx: Context) -> Result<Message, DecodeError> {
        let (kind, len) = match frame(msg)? {
            Some(found) => found,
            None => return Err(DecodeError::BadMessageLength { length: 0 }),
        };
        if len != msg.len() {
            return Err(DecodeError::BadMessageLength {
                length: u16::try_from(msg.len()).unwrap_or(u16::MAX),
            });
        }
        let body = &msg[HEADER_LEN..];
        Ok(match kind {
            kind::OPEN => Message::Open(Open::parse(body)?),
            kind::UPDATE => Message::Update(Update::parse(body, ctx)?),
            kind::NOTIFICATION => Message::Notification(Notification::parse(body)),
            kind::KEEPALIVE => Message::Keepalive,
            kind::ROUTE_REFRESH => Message::RouteRefresh(RouteRefresh::parse(body)),
            other => return Err(DecodeError::BadMessageType { kind: other }),
        })
    }

    /// Appends the encoded message to `out`. On error `out` is left as it was.
    pub fn encode(&self, ctx: Context, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&MARKER);
        out.extend_from_slice(&[0, 0, self.kind()]);
        let body = match self {
            Message::Open(open) => open.encode(out),
            Message::Update(update) => {
                update.encode(ctx, out);
                Ok(())
            }
            Message::Notification(n) => {
                n.encode(out);
                Ok(())
            }
            Message::Keepalive => Ok(()),
            Message::RouteRefresh(rr) => {
                rr.encode(out);
                Ok(())
            }
        };
        let len = out.len() - start;
        if let Err(e) = body {
            out.truncate(start);
            return Err(e);
        }
        if len > MAX_MESSAGE_LEN {
            out.truncate(start);
            return Err(EncodeError::TooLong { length: len });
        }
        out[start + 16..start + 18].copy_from_slice(&(len as u16).to_be_bytes());
        Ok(())
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self, ctx: Context) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(ctx, &mut out)?;
        Ok(out)
    }
}

/// Finds the first message in a byte stream: `Ok(None)` when more bytes are needed,
/// otherwise its type and total length. Checks the header as RFC 4271 §6.1 asks:
/// marker, length bounds, type, and length against the type's fixed size.
pub fn frame(buf: &[u8]) -> Result<Option<(u8, usize)>, DecodeError> {
    // A wrong marker is reported as soon as any byte of it is seen.
    let seen = buf.len().min(16);
    if buf[..seen].iter().any(|&b| b != 0xff) {
        return Err(DecodeError::ConnectionNotSynchronized);
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let length = u16::from_be_bytes([buf[16], buf[17]]);
    let kind = buf[18];
    let len = usize::from(length);
    let (min, max) = match kind {
        kind::OPEN => (29, MAX_MESSAGE_LEN),
        kind::UPDATE => (23, MAX_MESSAGE_LEN),
        kind::NOTIFICATION => (21, MAX_MESSAGE_LEN),
        kind::KEEPALIVE => (19, 19),
        // RFC 2918 §3: AFI, reserved, SAFI. Longer ones carry ORFs (RFC 5291), which
        // this speaker never negotiates. The reserved octet is RFC 7313's subtype, and
        // the length rule depends on it.
        kind::ROUTE_REFRESH if len != 23 => return route_refresh_length(buf, length),
        kind::ROUTE_REFRESH => (23, 23),
        other => {
            if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
                return Err(DecodeError::BadMessageLength { length });
            }
            return Err(DecodeError::BadMessageType { kind: other });
        }
    };
    if len < min || len > max {
        return Err(DecodeError::BadMessageLength { length });
    }
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some((kind, len)))
}

/// [`frame`] for a ROUTE-REFRESH whose length is not 23, decided by its subtype
/// (RFC 7313 §5): a BoRR or EoRR (1, 2) is answered with ROUTE-REFRESH Message Error /
/// Invalid Message Length carrying the message, so it is read whole first; an unknown
/// subtype (3 and up) MUST be ignored, so it is framed like any message, for the
/// session to ignore; a plain refresh (0), or one too short to show its subtype, is a
/// Bad Message Length (RFC 4271 §6.1), as nothing else defines its error.
fn route_refresh_length(buf: &[u8], length: u16) -> Result<Option<(u8, usize)>, DecodeError> {
    const SUBTYPE: usize = HEADER_LEN + 2;
    let len = usize::from(length);
    if !(SUBTYPE + 1..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(DecodeError::BadMessageLength { length });
    }
    let Some(&subtype) = buf.get(SUBTYPE) else {
        return Ok(None);
    };
    match subtype {
        0 => Err(DecodeError::BadMessageLength { length }),
        _ if buf.len() < len => Ok(None),
        1 | 2 => Err(DecodeError::RouteRefreshLength {
            subtype,
            message: buf[..len].to_vec(),
        }),
        _ => Ok(Some((kind::ROUTE_REFRESH, len))),
    }
}

/// ROUTE-REFRESH (RFC 2918 §3); the reserved octet carries the RFC 7313 subtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    pub afi: u16,
    pub subtype: u8,
    pub safi: u8,
}

impl RouteRefresh {
    /// A plain refresh request for one family.
    pub fn new(family: Family) -> RouteRefresh {
        let (afi, safi) = family.afi_safi();
        RouteRefresh {
            afi,
            subtype: 0,
            safi,
        }
    }

    /// The family asked for, if it is one this speaker knows.
    pub fn family(&self) -> Option<Family> {
        Family::from_afi_safi(self.afi, self.safi)
    }

    fn parse(body: &[u8]) -> RouteRefresh {
        // frame() guarantees three body octets, and four but for an unknown subtype,
        // which the session ignores (RFC 7313 §5).
        let octet = |i: usize| body.get(i).copied().unwrap_or(0);
        RouteRefresh {
            afi: u16::from_be_bytes([octet(0), octet(1)]),
            subtype: octet(2),
            safi: octet(3),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.afi.to_be_bytes());
        out.push(self.subtype);
        out.push(self.safi);
    }
}

/// A cursor over untrusted bytes whose reads fail instead of panicking.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}
