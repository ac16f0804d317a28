//! The API server over real TCP: /metrics, /status and /healthz, malformed and hostile
//! clients, the connection limit, shutdown, and `dsrgate status`'s client and renderer;
//! and property tests of the request handler it runs on what clients send.

mod status_fixture;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::api::{self, ApiServer, Handler, Metrics};
use control::status::{self, SharedStatus, Status};
use prometheus_client::registry::Registry;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use status_fixture::a_status;

const T: Duration = Duration::from_secs(5);

struct Fixture {
    server: ApiServer,
    status: SharedStatus,
    metrics: Metrics,
}

fn start() -> Fixture {
    let status = status::shared(a_status(100));
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry, status.clone());
    let server = ApiServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(registry),
        status.clone(),
    )
    .expect("starting the API");
    Fixture {
        server,
        status,
        metrics,
    }
}

/// Sends raw bytes and returns whatever the server answers before closing.
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect_timeout(&addr, T).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer (and close) before reading everything: ignore write errors.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

/// Checks that every line is a comment or `name{labels} value` with a numeric value.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line:?}");
        }
        samples.push((series.to_owned(), value));
    }
    samples
}

fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no series {series}"))
        .1
}

#[test]
fn serves_metrics_in_prometheus_text() {
    let f = start();
    f.metrics
        .health_transition("198.51.100.11".parse().unwrap(), true, "passed");
    f.metrics.snapshot_published(Duration::from_micros(800));
    let r = api::get(f.server.local_addr(), "/metrics", T).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(r.body).unwrap();
    let samples = parse_prometheus(&text);
    assert!(
        samples.iter().all(|(s, _)| s.starts_with("dsrgate_")),
        "{text}"
    );
    let vip = "vip=\"192.0.2.10\",protocol=\"tcp\",port=\"443\",name=\"web\"";
    assert_eq!(
        value(&samples, &format!("dsrgate_vip_packets_total{{{vip}}}")),
        100.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("dsrgate_backend_bytes_total{{{vip},backend=\"198.51.100.11\"}}")
        ),
        12000.0
    );
    assert_eq!(value(&samples, "dsrgate_untracked_backends"), 2.0);
    assert_eq!(
        value(&samples, "dsrgate_bgp_session_state{peer=\"198.51.100.1\"}"),
        6.0
    );
    assert_eq!(
        value(
            &samples,
            "dsrgate_drops_total{interface=\"eth0\",queue=\"0\",reason=\"truncated\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            &samples,
            "dsrgate_drops_total{interface=\"eth0\",queue=\"0\",reason=\"rx_ring_full\"}"
        ),
        5.0
    );
    assert_eq!(
        value(
            &samples,
            "dsrgate_steering_packets_total{interface=\"eth0\",verdict=\"redirected\"}"
        ),
        100.0
    );
    assert_eq!(
        value(
            &samples,
            "dsrgate_steering_packets_total{interface=\"eth0\",verdict=\"shed\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "dsrgate_worker_shed_starts_total{interface=\"eth0\",queue=\"0\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "dsrgate_health_transitions_total{backend=\"198.51.100.11\",to=\"up\",reason=\"passed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "dsrgate_snapshot_publish_seconds_count"),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "dsrgate_snapshot_publish_seconds_bucket{le=\"+Inf\"}"
        ),
        1.0
    );

    // The next tick's totals show up at the next scrape.
    f.status.store(Arc::new(a_status(250)));
    let text =
        String::from_utf8(api::get(f.server.local_addr(), "/metrics", T).unwrap().body).unwrap();
    assert_eq!(
        value(
            &parse_prometheus(&text),
            &format!("dsrgate_vip_packets_total{{{vip}}}")
        ),
        250.0
    );
}

#[test]
fn serves_openmetrics_when_asked() {
    let f = start();
    let r = raw(
        f.server.local_addr(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK");
    assert!(
        r.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{r}"
    );
    assert!(r.trim_end().ends_with("# EOF"), "{r}");
}

#[test]
fn serves_status_json_and_healthz() {
    let f = start();
    let addr = f.server.local_addr();
    let r = api::get(addr, "/status", T).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let got: Status = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(got, a_status(100));

    // The client `dsrgate status` uses, and a new tick.
    f.status.store(Arc::new(a_status(300)));
    assert_eq!(status::fetch(addr, T).unwrap(), a_status(300));

    let r = api::get(addr, "/healthz", T).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    // Query strings are ignored.
    assert_eq!(api::get(addr, "/healthz?verbose=1", T).unwrap().status, 200);
}

#[test]
fn status_round_trip_renders_tables() {
    let f = start();
    let s = status::fetch(f.server.local_addr(), T).unwrap();
    let text = status::render(&s);
    assert_eq!(text, status::render(&a_status(100)));
    for needle in [
        "192.0.2.10:443/tcp",
        "198.51.100.11 02:00:00:00:00:0b",
        "100.0%",
        "Established",
        "native/copy",
        "2 backend slots not counted per backend",
        "Steering",
        "REDIRECTED",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
}

#[test]
fn fetch_reports_an_unreachable_daemon() {
    // Bind then drop, so that nothing listens on the port.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = status::fetch(addr, Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach the dsrgate API"), "{err}");
}

#[test]
fn wrong_paths_and_methods() {
    let f = start();
    let addr = f.server.local_addr();
    assert_eq!(api::get(addr, "/nope", T).unwrap().status, 404);
    let r = raw(
        addr,
        b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(status_line(&r), "HTTP/1.1 405 Method Not Allowed");
    assert!(r.contains("Allow: GET, HEAD"), "{r}");
    let r = raw(addr, b"HEAD /status HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK");
    assert!(r.ends_with("\r\n\r\n"), "HEAD must have no body: {r:?}");
    // HTTP/1.0 clients work too.
    assert_eq!(
        status_line(&raw(addr, b"GET /healthz HTTP/1.0\r\n\r\n")),
        "HTTP/1.1 200 OK"
    );
}

#[test]
fn malformed_requests_get_400_and_the_server_survives() {
    let f = start();
    let addr = f.server.local_addr();
    let bad: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /status HTTP/9.9\r\n\r\n",
        b"GET /status HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET /sta tus HTTP/1.1\r\n\r\n",
        b"\x00\x01\x02\xff\xfe\r\n\r\n",
        b"GET /status HTTP/1.1\r\nHost: \x01\x02\r\n\r\n",
    ];
    for req in bad {
        let r = raw(addr, req);
        assert_eq!(status_line(&r), "HTTP/1.1 400 Bad Request", "for {req:?}");
    }
    // Too large a head, in one header or in too many.
    let mut huge = b"GET /status HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 16 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        status_line(&raw(addr, &huge)),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let mut many = b"GET /status HTTP/1.1\r\n".to_vec();
    for i in 0..40 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(
        status_line(&raw(addr, &many)),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // A client that leaves halfway gets nothing, and nothing breaks.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /status HTT").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.set_read_timeout(Some(T)).unwrap();
    let _ = s.read_to_string(&mut out);
    assert_eq!(out, "");

    // Random bytes (fixed seed): always a 4xx answer or a plain close, never a crash.
    let mut rng = fastrand::Rng::with_seed(5);
    for _ in 0..100 {
        let len = rng.usize(1..300);
        let mut junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        junk.extend_from_slice(b"\r\n\r\n");
        let r = raw(addr, &junk);
        let line = status_line(&r);
        assert!(
            r.is_empty() || line.starts_with("HTTP/1.1 4"),
            "{junk:?} got {line:?}"
        );
    }
    assert_eq!(api::get(addr, "/healthz", T).unwrap().status, 200);
}

#[test]
fn slow_clients_do_not_block_others_and_time_out() {
    let f = start();
    let addr = f.server.local_addr();
    // One client sends half a request and stalls.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    // Others are served meanwhile.
    assert_eq!(api::get(addr, "/healthz", T).unwrap().status, 200);
    // The stalled one is answered 408 once the request timeout has passed.
    slow.set_read_timeout(Some(api::REQUEST_TIMEOUT * 3))
        .unwrap();
    let mut out = String::new();
    let _ = slow.read_to_string(&mut out);
    assert_eq!(status_line(&out), "HTTP/1.1 408 Request Timeout");
}

#[test]
fn connection_limit_answers_503() {
    let f = start();
    let addr = f.server.local_addr();
    // Fill every handler slot with an idle connection.
    let idle: Vec<TcpStream> = (0..api::MAX_CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    // The accept loop may not have taken all of them yet: retry until the limit shows.
    let deadline = Instant::now() + T;
    loop {
        let r = raw(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        if status_line(&r) == "HTTP/1.1 503 Service Unavailable" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 503 with all slots busy: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(idle);
    // Slots free up as soon as the idle clients leave.
    let deadline = Instant::now() + T;
    while api::get(addr, "/healthz", T).map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "slots not freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_closes_the_listener() {
    let f = start();
    let addr = f.server.local_addr();
    assert_eq!(api::get(addr, "/healthz", T).unwrap().status, 200);
    f.server.shutdown();
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after shutdown"
    );
}

#[test]
fn address_in_use_fails_at_start() {
    let f = start();
    let err = ApiServer::start(
        f.server.local_addr(),
        Arc::new(Registry::default()),
        status::shared(Status::default()),
    )
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

fn handler() -> Handler {
    let status = status::shared(a_status(100));
    let mut registry = Registry::default();
    Metrics::register(&mut registry, status.clone());
    Handler::new(Arc::new(registry), status)
}

fn answer_status(answer: &[u8]) -> &str {
    let text = std::str::from_utf8(answer).unwrap_or_default();
    text.split("\r\n").next().unwrap_or_default()
}

/// A valid request to the API, with what must not change its answer left to chance: the
/// order of its headers, the case of their names, the space after the colon, extra
/// headers, and bare LF line ends.
#[derive(Clone, Debug)]
struct Valid {
    method: &'static str,
    target: String,
    minor: u8,
    openmetrics: bool,
    headers: Vec<(String, String)>,
    lf_only: bool,
    colon: &'static str,
}

impl Valid {
    /// The same request as plainly as it can be written: only what matters.
    fn canonical(&self) -> Vec<u8> {
        let accept = if self.openmetrics {
            "Accept: application/openmetrics-text\r\n"
        } else {
            ""
        };
        let (method, target, minor) = (self.method, &self.target, self.minor);
        format!("{method} {target} HTTP/1.{minor}\r\n{accept}\r\n").into_bytes()
    }

    fn bytes(&self) -> Vec<u8> {
        let eol = if self.lf_only { "\n" } else { "\r\n" };
        let mut out = format!("{} {} HTTP/1.{}{eol}", self.method, self.target, self.minor);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}{}{value}{eol}", self.colon));
        }
        out.push_str(eol);
        out.into_bytes()
    }
}

fn valid() -> impl Strategy<Value = Valid> {
    let extra = ("[A-Za-z][A-Za-z0-9-]{0,15}", "[!-~][ -~]{0,40}")
        .prop_filter("Accept is the one header that matters", |(n, _)| {
            !n.eq_ignore_ascii_case("accept")
        });
    (
        prop_oneof![Just("GET"), Just("HEAD")],
        prop_oneof![Just("/metrics"), Just("/status"), Just("/healthz")],
        proptest::option::of("[a-z0-9=&]{0,20}"),
        0u8..=1,
        any::<bool>(),
        vec(extra, 0..8),
        vec(any::<bool>(), 40),
        any::<bool>(),
        prop_oneof![Just(":"), Just(": "), Just(":\t  ")],
    )
        .prop_flat_map(
            |(method, path, query, minor, openmetrics, extra, upper, lf_only, colon)| {
                let mut headers = vec![
                    ("Host".to_owned(), "127.0.0.1:9180".to_owned()),
                    ("User-Agent".to_owned(), "proptest".to_owned()),
                ];
                if openmetrics {
                    let value = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
                    headers.push(("Accept".to_owned(), value.to_owned()));
                }
                headers.extend(extra);
                // Flip the case of header names, letter by letter.
                for (name, _) in &mut headers {
                    *name = name
                        .chars()
                        .zip(upper.iter().cycle())
                        .map(|(c, &up)| {
                            if up {
                                c.to_ascii_uppercase()
                            } else {
                                c.to_ascii_lowercase()
                            }
                        })
                        .collect();
                }
                let target = match query {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_owned(),
                };
                Just(headers).prop_shuffle().prop_map(move |headers| Valid {
                    method,
                    target: target.clone(),
                    minor,
                    openmetrics,
                    headers,
                    lf_only,
                    colon,
                })
            },
        )
}

proptest! {
    /// Whatever a client sends, the handler returns: it waits for more, or answers with
    /// a client error. Random bytes are never a request it serves.
    #[test]
    fn arbitrary_bytes_get_a_client_error(bytes in vec(any::<u8>(), 0..2048)) {
        if let Some(answer) = handler().answer(&bytes) {
            let line = answer_status(&answer);
            prop_assert!(
                [400, 404, 405, 431].iter().any(|c| line.starts_with(&format!("HTTP/1.1 {c} "))),
                "{line:?}"
            );
        }
    }

    /// The server answers after every read, so an answer to the first bytes of a request
    /// must be the answer to all of them, however TCP cut the stream.
    #[test]
    fn answering_early_does_not_change_the_answer(
        request in prop_oneof![
            vec(any::<u8>(), 0..512),
            (valid(), any::<Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
                let mut bytes = v.bytes();
                let i = at.index(bytes.len());
                bytes[i] = byte;
                bytes
            }),
        ],
        cut in any::<Index>(),
    ) {
        let h = handler();
        let early = &request[..cut.index(request.len() + 1)];
        if let Some(answer) = h.answer(early) {
            prop_assert_eq!(Some(answer), h.answer(&request));
        }
    }

    /// Header order, name case, extra headers, whitespace and line ends do not change the
    /// answer to a valid request.
    #[test]
    fn a_valid_request_is_answered_as_its_canonical_form(v in valid()) {
        let h = handler();
        let answer = h.answer(&v.bytes()).expect("a complete request unanswered");
        prop_assert_eq!(answer_status(&answer), "HTTP/1.1 200 OK");
        let canonical = h.answer(&v.canonical()).expect("the canonical request unanswered");
        prop_assert!(answer == canonical, "{v:?}");
    }

    /// A request cut short waits for the rest: no answer at all, and so never a 200.
    #[test]
    fn a_truncated_request_is_not_answered(v in valid(), cut in any::<Index>()) {
        let bytes = v.bytes();
        let short = &bytes[..cut.index(bytes.len())];
        prop_assert!(handler().answer(short).is_none(), "{:?}", String::from_utf8_lossy(short));
    }

    /// What `dsrgate status` reads back: a whole answer of the server decodes to the status
    /// it served, and any answer cut short (head or body) is an error, not a status.
    #[test]
    fn the_client_takes_only_a_whole_answer(cut in any::<Index>(), n in 0u64..40) {
        let served = a_status(n);
        let h = Handler::new(
            Arc::new(Registry::default()),
            status::shared(served.clone()),
        );
        let answer = h
            .answer(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("a complete request unanswered");
        let whole = api::parse_response(&answer).expect("the server's own answer");
        prop_assert_eq!(status::decode(&whole).expect("its status"), served);
        let short = &answer[..cut.index(answer.len())];
        prop_assert!(api::parse_response(short).is_err(), "{} of {} bytes taken", short.len(), answer.len());
    }

    /// Whatever is listening there, the client returns an error or a response whose body
    /// is no more than what was received and, given a length, exactly that long.
    #[test]
    fn any_answer_is_parsed_or_refused(
        data in prop_oneof![
            vec(any::<u8>(), 0..1024),
            (vec(any::<u8>(), 0..256), 0usize..300, any::<u16>()).prop_map(|(body, length, code)| {
                let mut r = format!("HTTP/1.1 {code} X\r\nContent-Length: {length}\r\n\r\n").into_bytes();
                r.extend_from_slice(&body);
                r
            }),
        ],
    ) {
        if let Ok(r) = api::parse_response(&data) {
            prop_assert!(r.body.len() <= data.len());
            if let Some(length) = r.header("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
                prop_assert_eq!(r.body.len(), length);
            }
            let decoded = status::decode(&r);
            prop_assert!(r.status == 200 || decoded.is_err());
        }
    }
}
