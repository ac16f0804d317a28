//! Health checks against real TCP and HTTP servers on 127.0.0.x. Waits have
//! generous bounds; nothing here asserts how fast anything is.
//!
//! The test servers' mode, weight and request count are atomics with `SeqCst`
//! throughout: each is a single value read on its own, so any ordering would do, and
//! test code takes the one that needs no argument.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::health::{
    self, HealthEvent, HealthSpec, Probe, Reason, State, Target, Timing, Transition, Verdict,
};
use crossbeam::channel::Receiver;

const BOUND: Duration = Duration::from_secs(20);

fn timing(rise: u32, fall: u32, interval_ms: u64, timeout_ms: u64) -> Timing {
    Timing {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        rise,
        fall,
    }
}

fn next_event(rx: &Receiver<HealthEvent>) -> HealthEvent {
    rx.recv_timeout(BOUND)
        .expect("no health event within the bound")
}

/// What the HTTP server answers.
const OK: u8 = 0;
const UNAVAILABLE: u8 = 1;
const SILENT: u8 = 2;
const GARBAGE: u8 = 3;

/// A tiny HTTP server imitating kube-proxy's healthCheckNodePort answer.
struct HttpServer {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    weight: Arc<AtomicU32>,
    requests: Arc<AtomicU32>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    fn start(ip: &str) -> HttpServer {
        Self::start_on(ip, 0)
    }

    fn start_on(ip: &str, port: u16) -> HttpServer {
        let listener = TcpListener::bind((ip, port)).unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(OK));
        let weight = Arc::new(AtomicU32::new(1));
        let requests = Arc::new(AtomicU32::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (m, w, r, p) = (
            mode.clone(),
            weight.clone(),
            requests.clone(),
            paths.clone(),
        );
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|x| x == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&buf)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                p.lock().unwrap().push(line);
                r.fetch_add(1, Ordering::SeqCst);
                let count = w.load(Ordering::SeqCst);
                let body = format!("{{\"service\":{{\"namespace\":\"default\",\"name\":\"web\"}},\"localEndpoints\":{count},\"serviceProxyHealthy\":true}}");
                match m.load(Ordering::SeqCst) {
                    OK => {
                        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {count}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    }
                    UNAVAILABLE => {
                        let _ = write!(s, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nX-Load-Balancing-Endpoint-Weight: 0\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    }
                    SILENT => held.push(s),
                    _ => {
                        let _ = s.write_all(b"\x00\x01garbage\r\n\r\n");
                    }
                }
            }
        });
        HttpServer {
            addr,
            mode,
            weight,
            requests,
            paths,
        }
    }

    fn target(&self, t: Timing) -> Target {
        Target {
            addr: self.addr.ip(),
            spec: HealthSpec {
                probe: Probe::Http {
                    port: self.addr.port(),
                    path: "/healthz".into(),
                    weight_header: true,
                },
                timing: t,
            },
        }
    }
}

#[test]
fn tcp_rise_and_fall_against_a_real_listener() {
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let a = accepted.clone();
    let stop = Arc::new(AtomicU8::new(0));
    let st = stop.clone();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        while st.load(Ordering::SeqCst) == 0 {
            match listener.accept() {
                Ok(_) => {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        // The listener is dropped here: connects are refused from now on.
    });

    let (checker, rx) = health::spawn().unwrap();
    let target = Target {
        addr: addr.ip(),
        spec: HealthSpec {
            probe: Probe::Tcp { port: addr.port() },
            timing: timing(3, 2, 300, 200),
        },
    };
    checker.set_targets(vec![target.clone()]);

    let up = next_event(&rx);
    assert_eq!(
        (up.transition.clone(), up.state, up.reason.clone()),
        (Transition::Up, State::Up, Reason::Passed)
    );
    assert_eq!(up.target, target);
    // The kernel completes handshakes before accept(): wait for the acceptor.
    let t0 = std::time::Instant::now();
    while accepted.load(Ordering::SeqCst) < 3 && t0.elapsed() < BOUND {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(accepted.load(Ordering::SeqCst) >= 3);

    stop.store(1, Ordering::SeqCst);
    server.join().unwrap();
    let down = next_event(&rx);
    assert_eq!(
        (down.transition, down.state, down.reason),
        (Transition::Down, State::Down, Reason::Refused)
    );
}

#[test]
fn a_target_that_never_answers_never_rises() {
    // Nothing listens on this port of 127.0.0.3 (bound, then closed).
    let port = TcpListener::bind("127.0.0.3:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut checker = health::HealthChecker::new().unwrap();
    let target = Target {
        addr: "127.0.0.3".parse().unwrap(),
        spec: HealthSpec {
            probe: Probe::Tcp { port },
            timing: timing(1, 1, 100, 50),
        },
    };
    checker.set_targets([target.clone()]);
    let mut out = Vec::new();
    for _ in 0..30 {
        checker
            .poll(Some(Duration::from_millis(20)), &mut out)
            .unwrap();
    }
    // It says why it stays down, once; it never rises.
    let what: Vec<_> = out
        .iter()
        .map(|e| (e.transition.clone(), e.state))
        .collect();
    assert_eq!(what, [(Transition::StillDown, State::Down)], "{out:?}");
    assert_eq!(checker.state(&target), Some((State::Down, None)));
}

#[test]
fn http_status_weight_header_and_timeout() {
    let server = HttpServer::start("127.0.0.4");
    server.weight.store(3, Ordering::SeqCst);
    let (checker, rx) = health::spawn().unwrap();
    let target = server.target(timing(2, 2, 300, 200));
    checker.set_targets(vec![target.clone()]);

    let up = next_event(&rx);
    assert_eq!((up.transition, up.weight), (Transition::Up, Some(3)));
    assert_eq!(server.paths.lock().unwrap()[0], "GET /healthz HTTP/1.1");
    // Up exactly on the second success: requests are counted before they are
    // answered, and the next probe is 270+ ms away.
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);

    server.weight.store(5, Ordering::SeqCst);
    let w = next_event(&rx);
    assert_eq!(
        (w.transition, w.state, w.weight),
        (
            Transition::Weight {
                from: Some(3),
                to: Some(5)
            },
            State::Up,
            Some(5)
        )
    );

    server.mode.store(UNAVAILABLE, Ordering::SeqCst);
    let before = server.requests.load(Ordering::SeqCst);
    let down = next_event(&rx);
    assert_eq!(
        (down.verdict(), down.transition, down.state, down.reason),
        (
            Verdict::Down,
            Transition::Down,
            State::Down,
            Reason::HttpStatus(503)
        ),
        "it answers: not silent"
    );
    // Down on the second consecutive failure, not the first (a probe may have
    // been in flight when the mode changed, hence the range).
    let failed = server.requests.load(Ordering::SeqCst) - before;
    assert!((2..=3).contains(&failed), "{failed} probes");

    server.mode.store(OK, Ordering::SeqCst);
    assert_eq!(next_event(&rx).transition, Transition::Up);

    // A server that accepts and never answers: the probe times out.
    server.mode.store(SILENT, Ordering::SeqCst);
    let down = next_event(&rx);
    assert_eq!(
        (down.verdict(), down.transition, down.reason),
        (Verdict::Silent, Transition::Down, Reason::Timeout),
        "no answer to `fall` probes"
    );

    server.mode.store(OK, Ordering::SeqCst);
    let answers = next_event(&rx);
    assert_eq!(
        (answers.verdict(), answers.transition),
        (Verdict::Down, Transition::Answers),
        "the first pass, before `rise`"
    );
    assert_eq!(next_event(&rx).transition, Transition::Up);
    server.mode.store(GARBAGE, Ordering::SeqCst);
    let down = next_event(&rx);
    assert!(matches!(down.reason, Reason::BadResponse(_)), "{down:?}");
}

#[test]
fn targets_keep_state_across_updates_and_are_removed() {
    let a = HttpServer::start("127.0.0.5");
    let b = HttpServer::start("127.0.0.6");
    let (checker, rx) = health::spawn().unwrap();
    let (ta, tb) = (
        a.target(timing(1, 1, 150, 100)),
        b.target(timing(1, 1, 150, 100)),
    );
    checker.set_targets(vec![ta.clone()]);
    assert_eq!(next_event(&rx).target, ta);
    // Adding b keeps a up (no second Up event for a).
    checker.set_targets(vec![ta.clone(), tb.clone(), tb.clone()]);
    let ev = next_event(&rx);
    assert_eq!((ev.target, ev.transition), (tb.clone(), Transition::Up));
    // Removing a: its failures are no longer reported.
    checker.set_targets(vec![tb.clone()]);
    std::thread::sleep(Duration::from_millis(200));
    let served = a.requests.load(Ordering::SeqCst);
    a.mode.store(UNAVAILABLE, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(600));
    assert!(rx.try_recv().is_err());
    assert!(a.requests.load(Ordering::SeqCst) <= served + 1);
    assert!(b.requests.load(Ordering::SeqCst) >= 2);
}

#[test]
fn probes_are_jittered_not_synchronised() {
    // Many targets with the same interval: their first probes spread over the
    // interval instead of firing together.
    let server = HttpServer::start("127.0.0.7");
    let mut checker = health::HealthChecker::new().unwrap();
    let targets: Vec<Target> = (0..20)
        .map(|i| {
            let mut t = server.target(timing(1, 1, 2000, 1000));
            t.spec.probe = Probe::Http {
                port: server.addr.port(),
                path: format!("/t{i}"),
                weight_header: false,
            };
            t
        })
        .collect();
    checker.set_targets(targets);
    let mut out = Vec::new();
    let mut seen = Vec::new();
    while out.len() < 20 {
        checker
            .poll(Some(Duration::from_millis(50)), &mut out)
            .unwrap();
        seen.push(out.len());
    }
    // Events trickled in over several polls, not all in one.
    let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
    assert!(distinct.len() >= 5, "{seen:?}");
}

/// Static config → ServiceSet → probes → the backends that may get traffic:
/// a backend enters after `rise` successes, leaves after `fall` failures, and
/// a VIP whose backends all fail has none left (so it is withdrawn).
#[test]
fn static_vip_backends_follow_health() {
    use control::sources::{static_list, BackendSpec};
    use std::collections::HashMap;

    let a = HttpServer::start("127.0.0.8");
    let b = HttpServer::start_on("127.0.0.9", a.addr.port());
    // One probe port for both nodes, as a VIP's health check has.
    let port = a.addr.port();
    let text = format!(
        "[dataplane]\nupstream_interface = \"eth0\"\n[[vips]]\naddress = \"203.0.113.10\"\nport = 80\n\
         backends = [{{ address = \"192.0.2.8\", weight = 3 }}, {{ address = \"192.0.2.9\" }}]\n\
         health = {{ type = \"http\", port = {port}, path = \"/healthz\", interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 2 }}\n"
    );
    let mut cfg = control::config::parse(&text, std::path::Path::new("static.toml")).unwrap();
    // The nodes are test servers on loopback (which validation rightly refuses).
    cfg.vips[0].backends[0].address = "127.0.0.8".parse().unwrap();
    cfg.vips[0].backends[1].address = "127.0.0.9".parse().unwrap();
    let set = static_list::service_set(&cfg);
    let vip = &set.vips[0];
    let (checker, rx) = health::spawn().unwrap();
    checker.set_targets(set.health_targets());

    let mut states: HashMap<Target, Verdict> = HashMap::new();
    let usable = |states: &mut HashMap<Target, Verdict>, want: &[BackendSpec]| {
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let now = vip.healthy_backends(|t| states.get(t).copied());
            if now == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "stuck at {now:?}, want {want:?}"
            );
            if let Ok(ev) = rx.recv_timeout(Duration::from_millis(100)) {
                states.insert(ev.target.clone(), ev.verdict());
            }
        }
    };
    let ba = BackendSpec {
        addr: "127.0.0.8".parse().unwrap(),
        weight: 3,
    };
    let bb = BackendSpec {
        addr: "127.0.0.9".parse().unwrap(),
        weight: 1,
    };
    // Nothing is usable before the first probes rise.
    assert!(vip.healthy_backends(|t| states.get(t).copied()).is_empty());
    usable(&mut states, &[ba, bb]);
    b.mode.store(UNAVAILABLE, Ordering::SeqCst);
    usable(&mut states, &[ba]);
    a.mode.store(SILENT, Ordering::SeqCst);
    usable(&mut states, &[]);
    b.mode.store(OK, Ordering::SeqCst);
    usable(&mut states, &[bb]);
}

/// A `Local` Service's nodes at weight 0 (their endpoints all terminating) against real
/// servers: kube-proxy's 503 keeps a node draining, but a node that does not answer (a
/// closed port, a server that accepts and never answers) leaves once `fall` probes in a
/// row went unanswered, and so does one that answered 503 and then stops answering. Both
/// used to stay as long as the EndpointSlice listed them: a dead node black-holed every
/// flow pinned to it.
#[test]
fn a_draining_local_node_stays_while_it_answers_503_and_leaves_once_silent() {
    use control::config::{HashMode, Protocol, VipBgp};
    use control::sources::{BackendSpec, Encap, Origin, ServiceSet, TrafficPolicy, VipSpec};
    use std::collections::HashMap;

    type Verdicts = HashMap<Target, (Verdict, bool, Reason)>;
    /// Takes events, as the daemon does, until `done`.
    fn wait_for(
        rx: &Receiver<HealthEvent>,
        verdicts: &mut Verdicts,
        what: &str,
        done: impl Fn(&Verdicts) -> bool,
    ) {
        let deadline = std::time::Instant::now() + BOUND;
        while !done(verdicts) {
            assert!(std::time::Instant::now() < deadline, "{what}: {verdicts:?}");
            if let Ok(ev) = rx.recv_timeout(Duration::from_millis(50)) {
                let v = (ev.verdict(), ev.settled, ev.reason.clone());
                verdicts.insert(ev.target, v);
            }
        }
    }

    let draining = HttpServer::start("127.0.0.10");
    let port = draining.addr.port();
    let dying = HttpServer::start_on("127.0.0.11", port);
    // 127.0.0.12: nothing listens on the port (kube-proxy gone): refused.
    let _serving = HttpServer::start_on("127.0.0.13", port);
    draining.mode.store(UNAVAILABLE, Ordering::SeqCst);
    dying.mode.store(UNAVAILABLE, Ordering::SeqCst);
    let b = |a: &str, weight| BackendSpec {
        addr: a.parse().unwrap(),
        weight,
    };
    let vip = VipSpec {
        name: "team/web".into(),
        origin: Origin::Kubernetes {
            namespace: "team".into(),
            name: "web".into(),
            traffic_policy: TrafficPolicy::Local,
            health_check_node_port: Some(port),
            created: None,
        },
        addr: "203.0.113.1".parse().unwrap(),
        proto: Protocol::Tcp,
        ports: vec![80],
        hash: HashMode::FiveTuple,
        encap: Encap::Ipip,
        min_healthy: 1,
        bgp: VipBgp::default(),
        backends: vec![
            b("127.0.0.10", 0),
            b("127.0.0.11", 0),
            b("127.0.0.12", 0),
            b("127.0.0.13", 1),
        ],
        health: Some(HealthSpec {
            probe: Probe::Http {
                port,
                path: "/healthz".into(),
                weight_header: true,
            },
            timing: timing(2, 2, 150, 100),
        }),
    };
    let target = |a: &str| vip.target(&b(a, 0)).unwrap();
    let serving = |v: &Verdicts| vip.serving_backends(|t| v.get(t).map(|s| s.0));
    let (checker, rx) = health::spawn().unwrap();
    checker.set_targets(
        ServiceSet {
            vips: vec![vip.clone()],
        }
        .health_targets(),
    );
    let mut verdicts = Verdicts::new();

    wait_for(&rx, &mut verdicts, "every node's first verdict", |v| {
        v.len() == 4 && v.values().all(|s| s.1)
    });
    let got = |v: &Verdicts, a: &str| v[&target(a)].clone();
    let answering = (Verdict::Down, true, Reason::HttpStatus(503));
    assert_eq!(got(&verdicts, "127.0.0.10"), answering);
    assert_eq!(got(&verdicts, "127.0.0.11"), answering);
    assert_eq!(
        got(&verdicts, "127.0.0.12"),
        (Verdict::Silent, true, Reason::Refused)
    );
    assert_eq!(got(&verdicts, "127.0.0.13").0, Verdict::Up);
    assert_eq!(
        serving(&verdicts),
        [b("127.0.0.10", 0), b("127.0.0.11", 0), b("127.0.0.13", 1)],
        "the closed port leaves, the 503s stay"
    );

    // 127.0.0.11 dies: its server accepts and never answers.
    dying.mode.store(SILENT, Ordering::SeqCst);
    wait_for(&rx, &mut verdicts, "the silent node leaves", |v| {
        serving(v) == [b("127.0.0.10", 0), b("127.0.0.13", 1)]
    });
    assert_eq!(
        got(&verdicts, "127.0.0.11"),
        (Verdict::Silent, true, Reason::Timeout)
    );
    // The node answering 503 stays, probe after probe.
    let before = draining.requests.load(Ordering::SeqCst);
    wait_for(&rx, &mut verdicts, "three more 503s", |_| {
        draining.requests.load(Ordering::SeqCst) >= before + 3
    });
    assert_eq!(got(&verdicts, "127.0.0.10"), answering);

    // It answers 503 again (rebooted, its pods still terminating): back, at weight 0.
    dying.mode.store(UNAVAILABLE, Ordering::SeqCst);
    wait_for(
        &rx,
        &mut verdicts,
        "the node answering again is back",
        |v| serving(v) == [b("127.0.0.10", 0), b("127.0.0.11", 0), b("127.0.0.13", 1)],
    );
}
