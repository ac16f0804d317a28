//! One in-flight probe over a non-blocking socket: connect, and for HTTP
//! write a GET and read the status line and headers. Driven by readiness
//! events; never blocks, never panics on what the peer sends.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;

use super::{Outcome, Probe, Reason};
use crate::config::MAX_WEIGHT;

/// The response head is read up to this size; kube-proxy's answer is ~200 bytes.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The header kube-proxy sets on `healthCheckNodePort` answers: the number of
/// local endpoints of the Service on that node.
pub const WEIGHT_HEADER: &str = "X-Load-Balancing-Endpoint-Weight";

enum Phase {
    Connecting,
    Writing { request: Vec<u8>, written: usize },
    Reading { buf: Vec<u8> },
}

pub(super) struct InFlight {
    pub stream: TcpStream,
    phase: Phase,
    http: Option<HttpCheck>,
}

struct HttpCheck {
    path: String,
    host: String,
    weight_header: bool,
}

impl InFlight {
    /// Starts a non-blocking connect. An immediate failure is an `Err` outcome.
    pub fn start(addr: SocketAddr, probe: &Probe) -> Result<InFlight, Reason> {
        let stream = TcpStream::connect(addr).map_err(|e| Reason::from_io(&e))?;
        let http = match probe {
            Probe::Tcp { .. } => None,
            Probe::Http {
                path,
                weight_header,
                ..
            } => Some(HttpCheck {
                path: path.clone(),
                host: addr.to_string(),
                weight_header: *weight_header,
            }),
        };
        Ok(InFlight {
            stream,
            phase: Phase::Connecting,
            http,
        })
    }

    /// Advances on a readiness event; `Some` once the probe has an outcome.
    pub fn advance(&mut self) -> Option<Outcome> {
        loop {
            match &mut self.phase {
                Phase::Connecting => {
                    match self.stream.take_error() {
                        Ok(Some(e)) | Err(e) => return Some(Outcome::Fail(Reason::from_io(&e))),
                        Ok(None) => {}
                    }
                    match self.stream.peer_addr() {
                        Ok(_) => {}
                        // Spurious wakeup: the connect is still in progress.
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
                        Err(e) => return Some(Outcome::Fail(Reason::from_io(&e))),
                    }
                    let Some(http) = &self.http else {
                        return Some(Outcome::Pass { weight: None });
                    };
                    let request = format!(
                        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: dsrgate-health/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
                        http.path,
                        http.host,
                        env!("CARGO_PKG_VERSION")
                    );
                    self.phase = Phase::Writing {
                        request: request.into_bytes(),
                        written: 0,
                    };
                }
                Phase::Writing { request, written } => {
                    while *written < request.len() {
                        match self.stream.write(&request[*written..]) {
                            Ok(0) => {
                                return Some(Outcome::Fail(Reason::BadResponse(
                                    "connection closed while sending the request",
                                )))
                            }
                            Ok(n) => *written += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Some(Outcome::Fail(Reason::from_io(&e))),
                        }
                    }
                    self.phase = Phase::Reading {
                        buf: Vec::with_capacity(512),
                    };
                }
                Phase::Reading { buf } => {
                    let mut chunk = [0u8; 2048];
                    match self.stream.read(&mut chunk) {
                        Ok(0) => return evaluate(buf, self.http.as_ref()?.weight_header, true),
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            if let Some(outcome) =
                                evaluate(buf, self.http.as_ref()?.weight_header, false)
                            {
                                return Some(outcome);
                            }
                            if buf.len() > MAX_RESPONSE_HEAD {
                                return Some(Outcome::Fail(Reason::BadResponse(
                                    "response head larger than 16 KiB",
                                )));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Some(Outcome::Fail(Reason::from_io(&e))),
                    }
                }
            }
        }
    }
}

/// Judges an HTTP response head: 2xx and 3xx pass (as HAProxy and most load
/// balancers count them), anything else fails with its status. With
/// `weight_header`, a present but unreadable weight fails the probe: a node
/// that cannot say how many endpoints it has is not trusted with traffic. A
/// weight above [`MAX_WEIGHT`] counts as [`MAX_WEIGHT`].
/// `None`: the head is incomplete and more may come. Public for the fuzz target.
pub fn evaluate(buf: &[u8], weight_header: bool, eof: bool) -> Option<Outcome> {
    let mut headers = header_slots(buf);
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) if !eof => None,
        _ => Some(judge(buf, weight_header)),
    }
}

/// Room for every header `buf` can hold (one per line): a healthy backend behind a proxy
/// may send more headers than a fixed array holds, which httparse refuses as malformed.
/// Bounded by the head's size ([`MAX_RESPONSE_HEAD`]); a probe's read, not a packet's.
fn header_slots(buf: &[u8]) -> Vec<httparse::Header<'_>> {
    let lines = buf.iter().filter(|&&b| b == b'\n').count();
    vec![httparse::EMPTY_HEADER; lines]
}

/// The weight a kube-proxy header gives, capped as configured weights are (one node's
/// header cannot claim more of the Maglev table than a configured backend could): decimal
/// digits only, however many (a value past `u32` is capped like one within it).
fn header_weight(v: &[u8]) -> Option<u32> {
    let digits = v.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let w = digits.iter().try_fold(0u32, |w, d| {
        w.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    });
    Some(w.unwrap_or(u32::MAX).min(MAX_WEIGHT))
}

fn judge(buf: &[u8], weight_header: bool) -> Outcome {
    let mut headers = header_slots(buf);
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Outcome::Fail(Reason::BadResponse(
                "connection closed before the end of the response head",
            ))
        }
        Err(_) => return Outcome::Fail(Reason::BadResponse("malformed HTTP response")),
    }
    let code = resp.code.unwrap_or(0);
    if !(200..400).contains(&code) {
        return Outcome::Fail(Reason::HttpStatus(code));
    }
    if !weight_header {
        return Outcome::Pass { weight: None };
    }
    let value = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(WEIGHT_HEADER))
        .map(|h| h.value);
    match value {
        None => Outcome::Pass { weight: None },
        Some(v) => match header_weight(v) {
            Some(w) => Outcome::Pass { weight: Some(w) },
            None => Outcome::Fail(Reason::BadResponse(
                "unreadable X-Load-Balancing-Endpoint-Weight header",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn statuses_and_weights() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: 3\r\nDate: Thu, 26 Nov 2026 09:00:00 GMT\r\nContent-Length: 2\r\n\r\n{}";
        let pass = |w| Some(Outcome::Pass { weight: w });
        assert_eq!(evaluate(ok, true, false), pass(Some(3)));
        assert_eq!(evaluate(ok, false, false), pass(None));
        assert_eq!(
            evaluate(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", true, false),
            Some(Outcome::Fail(Reason::HttpStatus(503)))
        );
        assert_eq!(
            evaluate(b"HTTP/1.0 301 Moved\r\nLocation: /\r\n\r\n", false, false),
            pass(None)
        );
        assert_eq!(
            evaluate(
                b"HTTP/1.1 200 OK\r\nx-load-balancing-endpoint-weight: 7\r\n\r\n",
                true,
                false
            ),
            pass(Some(7))
        );
        assert_eq!(
            evaluate(
                b"HTTP/1.1 200 OK\r\nx-load-balancing-endpoint-weight: 4294967295\r\n\r\n",
                true,
                false
            ),
            pass(Some(MAX_WEIGHT))
        );
        // However many digits: capped alike (one past u32 failed the probe).
        assert_eq!(
            evaluate(
                b"HTTP/1.1 200 OK\r\nx-load-balancing-endpoint-weight: 4294967296000\r\n\r\n",
                true,
                false
            ),
            pass(Some(MAX_WEIGHT))
        );
        for bad in ["lots", "+3", "-1", "3 4", "", "0x10"] {
            let head =
                format!("HTTP/1.1 200 OK\r\nX-Load-Balancing-Endpoint-Weight: {bad}\r\n\r\n");
            assert!(
                matches!(
                    evaluate(head.as_bytes(), true, false),
                    Some(Outcome::Fail(Reason::BadResponse(_)))
                ),
                "{bad:?}"
            );
        }
        // More headers than a fixed array holds: still a response (it was "malformed").
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-Header-{i}: v\r\n").as_bytes());
        }
        assert_eq!(evaluate(&many, true, false), None);
        many.extend_from_slice(b"X-Load-Balancing-Endpoint-Weight: 9\r\n\r\n");
        assert_eq!(evaluate(&many, true, false), pass(Some(9)));
        assert_eq!(evaluate(b"HTTP/1.1 200 OK\r\n", true, false), None);
        assert!(matches!(
            evaluate(b"HTTP/1.1 200 OK\r\n", true, true),
            Some(Outcome::Fail(Reason::BadResponse(_)))
        ));
        assert!(matches!(
            evaluate(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", false, false),
            Some(Outcome::Fail(Reason::BadResponse(_)))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_responses_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), eof: bool, wh: bool) {
            let _ = evaluate(&bytes, wh, eof);
            let mut framed = b"HTTP/1.1 200 OK\r\n".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = evaluate(&framed, wh, eof);
        }
    }
}
