//! A client's bytes on the API listener, whole and cut where TCP may cut them: the
//! answer is always a well-formed HTTP/1.1 response with a status the API uses, 200
//! only to a complete GET or HEAD of /metrics, /status or /healthz, and the same
//! whichever read the server answers after (seed it with requests from
//! control/tests/api.rs).
#![no_main]

use std::sync::{Arc, LazyLock};

use control::api::{Handler, Metrics, MAX_HEAD};
use libfuzzer_sys::fuzz_target;
use prometheus_client::registry::Registry;

static HANDLER: LazyLock<Handler> = LazyLock::new(|| {
    let status = control::status::shared(control::status::Status::default());
    let mut registry = Registry::default();
    Metrics::register(&mut registry, status.clone());
    Handler::new(Arc::new(registry), status)
});

fuzz_target!(|data: &[u8]| {
    let (cut, request) = data.split_first().unwrap_or((&0, &[]));
    let Some(response) = HANDLER.answer(request) else {
        assert!(request.len() < MAX_HEAD, "a full buffer left unanswered");
        return;
    };
    check(request, &response);
    // The server answers after every read: bytes that came earlier either wait for more
    // or already get the whole request's answer.
    let early = &request[..request.len() * usize::from(*cut) / 255];
    if let Some(r) = HANDLER.answer(early) {
        assert_eq!(
            r,
            response,
            "answered differently after {} bytes",
            early.len()
        );
    }
});

fn check(request: &[u8], response: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut r = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(body_at)) = r.parse(response) else {
        panic!("malformed response {:?}", String::from_utf8_lossy(response));
    };
    assert_eq!(r.version, Some(1));
    let code = r.code.unwrap();
    assert!(matches!(code, 200 | 400 | 404 | 405 | 431), "status {code}");
    assert!(!r.reason.unwrap_or_default().is_empty(), "no reason phrase");
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap())
    };
    assert_eq!(header("connection"), Some("close"));
    assert_eq!(code == 405, header("allow") == Some("GET, HEAD"));
    let length: usize = header("content-length").unwrap().parse().unwrap();
    let body = &response[body_at..];
    // The leading empty lines a server ignores (RFC 9112 section 2.2).
    let start = request.iter().position(|b| !matches!(b, b'\r' | b'\n'));
    let request = &request[start.unwrap_or(request.len())..];
    let head_request = request.starts_with(b"HEAD ");
    assert!(
        body.len() == length || (head_request && body.is_empty()),
        "{length} bytes announced, {} sent",
        body.len()
    );
    if code == 200 {
        let target = request
            .strip_prefix(b"GET ")
            .or_else(|| request.strip_prefix(b"HEAD "))
            .expect("200 to neither GET nor HEAD");
        let known = [&b"/metrics"[..], b"/status", b"/healthz"]
            .iter()
            .any(|p| target.starts_with(p) && matches!(target.get(p.len()), Some(b' ' | b'?')));
        assert!(known, "200 to {:?}", String::from_utf8_lossy(request));
        let blank_line =
            request.windows(2).any(|w| w == b"\n\n") || request.windows(3).any(|w| w == b"\n\r\n");
        assert!(blank_line, "200 to an unfinished head");
    }
}
