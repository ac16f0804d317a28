//! NOTIFICATION (RFC 4271 §4.5), with the Cease subcodes of RFC 4486 and the
//! shutdown communication of RFC 8203.

use std::fmt;

/// Error codes (RFC 4271 §4.5, RFC 7313 §5, RFC 9687 §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationCode {
    MessageHeader = 1,
    OpenMessage = 2,
    UpdateMessage = 3,
    HoldTimerExpired = 4,
    FiniteStateMachine = 5,
    Cease = 6,
    RouteRefreshMessage = 7,
    SendHoldTimerExpired = 8,
}

/// Cease subcodes (RFC 4486 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeaseSubcode {
    MaximumPrefixes = 1,
    AdministrativeShutdown = 2,
    PeerDeconfigured = 3,
    AdministrativeReset = 4,
    ConnectionRejected = 5,
    OtherConfigurationChange = 6,
    ConnectionCollisionResolution = 7,
    OutOfResources = 8,
}

/// RFC 8203 §2 caps the shutdown communication at 128 octets; RFC 9003 later allows
/// 255, but older peers reject anything longer than 128, so we send at most that.
pub const MAX_SHUTDOWN_MESSAGE: usize = 128;

/// A NOTIFICATION message. Any code and data are accepted when parsing: a peer's
/// NOTIFICATION is recorded, never answered (RFC 4271 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: NotificationCode, subcode: u8) -> Notification {
        Notification {
            code: code as u8,
            subcode,
            data: Vec::new(),
        }
    }

    /// The Hold Timer expired (RFC 4271 §6.5).
    pub fn hold_timer_expired() -> Notification {
        Notification::new(NotificationCode::HoldTimerExpired, 0)
    }

    /// The peer took none of the bytes waiting for it for the SendHoldTime (RFC 9687
    /// §4.3); no subcode, no data (§6).
    pub fn send_hold_timer_expired() -> Notification {
        Notification::new(NotificationCode::SendHoldTimerExpired, 0)
    }

    /// A message arrived that the current state does not expect (RFC 4271 §6.6); the
    /// subcode says which state (RFC 6608 §3): 1 OpenSent, 2 OpenConfirm, 3 Established.
    pub fn fsm_error(subcode: u8) -> Notification {
        Notification::new(NotificationCode::FiniteStateMachine, subcode)
    }

    pub fn cease(subcode: CeaseSubcode) -> Notification {
        Notification::new(NotificationCode::Cease, subcode as u8)
    }

    /// Administrative Shutdown with a shutdown communication (RFC 8203 §2): a length
    /// octet and UTF-8, cut at a character boundary to fit.
    pub fn shutdown(message: &str) -> Notification {
        let mut n = Notification::cease(CeaseSubcode::AdministrativeShutdown);
        let mut end = message.len().min(MAX_SHUTDOWN_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        if end > 0 {
            n.data.push(end as u8);
            n.data.extend_from_slice(&message.as_bytes()[..end]);
        }
        n
    }

    /// The shutdown communication of an Administrative Shutdown or Reset (RFC 8203
    /// §2), if the data holds a well-formed one.
    pub fn shutdown_message(&self) -> Option<String> {
        let admin = [
            CeaseSubcode::AdministrativeShutdown as u8,
            CeaseSubcode::AdministrativeReset as u8,
        ];
        if self.code != NotificationCode::Cease as u8 || !admin.contains(&self.subcode) {
            return None;
        }
        let (&len, rest) = self.data.split_first()?;
        let text = rest.get(..usize::from(len))?;
        String::from_utf8(text.to_vec()).ok()
    }

    pub(crate) fn parse(body: &[u8]) -> Notification {
        // frame() guarantees at least code and subcode.
        Notification {
            code: body[0],
            subcode: body[1],
            data: body[2..].to_vec(),
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.code);
        out.push(self.subcode);
        out.extend_from_slice(&self.data);
    }

    fn names(&self) -> (&'static str, &'static str) {
        let code = match self.code {
            1 => "message header error",
            2 => "OPEN message error",
            3 => "UPDATE message error",
            4 => "hold timer expired",
            5 => "finite state machine error",
            6 => "cease",
            7 => "ROUTE-REFRESH message error",
            8 => "send hold timer expired",
            _ => "unknown error code",
        };
        let sub = match (self.code, self.subcode) {
            (1, 1) => "connection not synchronized",
            (1, 2) => "bad message length",
            (1, 3) => "bad message type",
            (2, 1) => "unsupported version number",
            (2, 2) => "bad peer AS",
            (2, 3) => "bad BGP identifier",
            (2, 4) => "unsupported optional parameter",
            (2, 6) => "unacceptable hold time",
            (2, 7) => "unsupported capability",
            (3, 1) => "malformed attribute list",
            (3, 2) => "unrecognized well-known attribute",
            (3, 3) => "missing well-known attribute",
            (3, 4) => "attribute flags error",
            (3, 5) => "attribute length error",
            (3, 6) => "invalid ORIGIN attribute",
            (3, 8) => "invalid NEXT_HOP attribute",
            (3, 9) => "optional attribute error",
            (3, 10) => "invalid network field",
            (3, 11) => "malformed AS_PATH",
            (5, 1) => "unexpected message in OpenSent",
            (5, 2) => "unexpected message in OpenConfirm",
            (5, 3) => "unexpected message in Established",
            (6, 1) => "maximum number of prefixes reached",
            (6, 2) => "administrative shutdown",
            (6, 3) => "peer de-configured",
            (6, 4) => "administrative reset",
            (6, 5) => "connection rejected",
            (6, 6) => "other configuration change",
            (6, 7) => "connection collision resolution",
            (6, 8) => "out of resources",
            (7, 1) => "invalid message length",
            (_, 0) => "unspecific",
            _ => "unknown subcode",
        };
        (code, sub)
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (code, sub) = self.names();
        write!(f, "{code} / {sub} ({}/{})", self.code, self.subcode)?;
        if let Some(msg) = self.shutdown_message() {
            write!(f, ": {msg:?}")?;
        } else if !self.data.is_empty() {
            write!(f, ", data")?;
            for b in &self.data {
                write!(f, " {b:02x}")?;
            }
        }
        Ok(())
    }
}
