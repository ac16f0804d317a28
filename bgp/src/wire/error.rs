//! Decode errors, one per NOTIFICATION code and subcode (RFC 4271 §6), and the
//! RFC 7606 action each UPDATE error calls for.

use std::net::Ipv4Addr;

use super::notification::{Notification, NotificationCode};
use super::{HEADER_LEN, MAX_MESSAGE_LEN};

/// Why a received message was rejected. [`DecodeError::notification`] gives the
/// NOTIFICATION RFC 4271 §6 names for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// §6.1: the marker is not all ones.
    #[error("connection not synchronized (bad marker)")]
    ConnectionNotSynchronized,
    /// §6.1: the length is out of bounds or wrong for the message type.
    #[error("bad message length {length}")]
    BadMessageLength { length: u16 },
    /// §6.1: an unknown message type.
    #[error("bad message type {kind}")]
    BadMessageType { kind: u8 },
    /// §6.2: a bad OPEN.
    #[error("bad OPEN: {0}")]
    Open(#[from] OpenError),
    /// §6.3 as revised by RFC 7606: a bad UPDATE.
    #[error("bad UPDATE: {0}")]
    Update(#[from] UpdateError),
    /// RFC 7313 §5: a ROUTE-REFRESH of subtype 1 or 2 (BoRR, EoRR) whose body is not
    /// four octets.
    #[error("ROUTE-REFRESH of subtype {subtype} with a bad length ({} octets)", message.len())]
    RouteRefreshLength { subtype: u8, message: Vec<u8> },
}

/// OPEN message errors (RFC 4271 §6.2, RFC 5492 §5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Subcode 0: a recognised optional parameter or capability is malformed.
    #[error("malformed: {reason}")]
    Unspecific { reason: &'static str },
    /// Subcode 1; the data names the highest version supported, 4.
    #[error("unsupported version {version}")]
    UnsupportedVersion { version: u8 },
    /// Subcode 2: the AS is not the configured one, or is 0 (RFC 7607).
    #[error("bad peer AS {asn}")]
    BadPeerAs { asn: u32 },
    /// Subcode 3: zero, or (for iBGP) our own (RFC 6286 §2.2).
    #[error("bad BGP identifier {id}")]
    BadBgpIdentifier { id: Ipv4Addr },
    /// Subcode 4: an optional parameter other than Capabilities.
    #[error("unsupported optional parameter {kind}")]
    UnsupportedOptionalParameter { kind: u8 },
    /// Subcode 6: hold time 1 or 2 (§4.2), or below the configured minimum
    /// ([`crate::fsm::Config::min_hold_time`]; §4.2 allows refusing on the hold time).
    #[error("unacceptable hold time {hold_time}")]
    UnacceptableHoldTime { hold_time: u16 },
    /// Subcode 7 (RFC 5492 §5): a capability we require is missing; the data lists it.
    #[error("unsupported capability")]
    UnsupportedCapability { capability: Vec<u8> },
}

/// An UPDATE error: which subcode, the data RFC 4271 §6.3 puts in the NOTIFICATION
/// (usually the offending attribute), and what RFC 7606 says to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} ({action:?})")]
pub struct UpdateError {
    pub kind: UpdateErrorKind,
    pub data: Vec<u8>,
    pub action: ErrorAction,
}

/// UPDATE message error subcodes (RFC 4271 §4.5 and §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateErrorKind {
    MalformedAttributeList = 1,
    UnrecognizedWellKnownAttribute = 2,
    MissingWellKnownAttribute = 3,
    AttributeFlagsError = 4,
    AttributeLengthError = 5,
    InvalidOrigin = 6,
    /// A NEXT_HOP that is not a host address (RFC 4271 §6.3); treat-as-withdraw
    /// (RFC 7606 §7.3).
    InvalidNextHop = 8,
    OptionalAttributeError = 9,
    InvalidNetworkField = 10,
    MalformedAsPath = 11,
}

/// How to handle an UPDATE error (RFC 7606 §2). This speaker installs nothing it
/// learns, so the last two amount to logging the error and carrying on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorAction {
    /// Drop the attribute and process the rest (RFC 7606 §2 "attribute discard").
    AttributeDiscard,
    /// Treat the routes in the UPDATE as withdrawn (RFC 7606 §2 "treat-as-withdraw").
    TreatAsWithdraw,
    /// The message cannot be framed: send the NOTIFICATION and close (RFC 7606 §2
    /// "session reset").
    SessionReset,
}

impl UpdateError {
    pub(crate) fn new(kind: UpdateErrorKind, data: &[u8], action: ErrorAction) -> Self {
        UpdateError {
            kind,
            data: data.to_vec(),
            action,
        }
    }
}

impl DecodeError {
    /// Whether the session must be reset (a NOTIFICATION sent and the connection
    /// closed). False only for UPDATE errors that RFC 7606 handles without a reset.
    pub fn is_fatal(&self) -> bool {
        match self {
            DecodeError::Update(e) => e.action == ErrorAction::SessionReset,
            _ => true,
        }
    }

    /// The NOTIFICATION that reports this error (RFC 4271 §6).
    pub fn notification(&self) -> Notification {
        let (code, subcode, data) = match self {
            DecodeError::ConnectionNotSynchronized => (NotificationCode::MessageHeader, 1, vec![]),
            DecodeError::BadMessageLength { length } => (
                NotificationCode::MessageHeader,
                2,
                length.to_be_bytes().to_vec(),
            ),
            DecodeError::BadMessageType { kind } => {
                (NotificationCode::MessageHeader, 3, vec![*kind])
            }
            DecodeError::Open(e) => {
                let (subcode, data) = match e {
                    OpenError::Unspecific { .. } => (0, vec![]),
                    // §6.2: the largest locally supported version number.
                    OpenError::UnsupportedVersion { .. } => (1, 4u16.to_be_bytes().to_vec()),
                    OpenError::BadPeerAs { .. } => (2, vec![]),
                    OpenError::BadBgpIdentifier { .. } => (3, vec![]),
                    OpenError::UnsupportedOptionalParameter { .. } => (4, vec![]),
                    OpenError::UnacceptableHoldTime { .. } => (6, vec![]),
                    OpenError::UnsupportedCapability { capability } => (7, capability.clone()),
                };
                (NotificationCode::OpenMessage, subcode, data)
            }
            DecodeError::Update(e) => (
                NotificationCode::UpdateMessage,
                e.kind as u8,
                e.data.clone(),
            ),
            // Invalid Message Length, with the whole message (RFC 7313 §5), cut to what
            // a NOTIFICATION holds.
            DecodeError::RouteRefreshLength { message, .. } => {
                let room = MAX_MESSAGE_LEN - HEADER_LEN - 2;
                let data = message[..message.len().min(room)].to_vec();
                (NotificationCode::RouteRefreshMessage, 1, data)
            }
        };
        Notification {
            code: code as u8,
            subcode,
            data,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Longer than 4096 octets (RFC 4271 §4.1).
    #[error("message of {length} octets exceeds the 4096-octet limit")]
    TooLong { length: usize },
    /// A capability over 255 octets, or optional parameters beyond what even the
    /// extended format of RFC 9072 holds.
    #[error("OPEN optional parameters too long")]
    OptionalParametersTooLong,
}
