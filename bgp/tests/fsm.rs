//! The session state machine under virtual time: every instant is made up by the
//! test, and every output is checked.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bgp::fsm::{Config, ConnId, Event, Output, Session, SessionError, State, StopReason, Timer};
use bgp::wire::{
    Capability, CeaseSubcode, Context, Family, Message, Notification, Open, RouteRefresh, Update,
};

const OUR_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PEER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Any seed: tests check the jitter's bounds, never its values.
const SEED: u64 = 1;

fn config() -> Config {
    let mut c = Config::new(65001, 65000, OUR_ID);
    c.hold_time = 9;
    c.connect_retry = Duration::from_secs(2);
    c.max_retry = Duration::from_secs(30);
    c
}

struct Harness {
    s: Session,
    t0: Instant,
    now: Instant,
}

impl Harness {
    fn new(config: Config) -> Self {
        let now = Instant::now();
        Harness {
            s: Session::new(config, SEED),
            t0: now,
            now,
        }
    }

    /// Started and connected: our OPEN is out on connection 1 (OpenSent).
    fn open_sent(config: Config) -> Self {
        let mut h = Harness::new(config);
        h.ev(Event::Start);
        h.ev(Event::Connected(1));
        h
    }

    fn ev(&mut self, e: Event<'_>) -> Vec<Output> {
        let mut out = Vec::new();
        self.s.handle(self.now, e, &mut out);
        out
    }

    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    fn advance_to(&mut self, secs: u64) {
        self.now = self.at(secs);
    }

    fn recv(&mut self, conn: ConnId, msg: Message) -> Vec<Output> {
        self.recv_bytes(conn, &msg.to_bytes(Context::FOUR_OCTET).unwrap())
    }

    fn recv_bytes(&mut self, conn: ConnId, bytes: &[u8]) -> Vec<Output> {
        self.ev(Event::Received { conn, bytes })
    }

    /// Start, connect, exchange OPENs and KEEPALIVEs: Established on connection 1.
    fn establish(&mut self, peer_hold: u16) -> Vec<Output> {
        self.ev(Event::Start);
        self.ev(Event::Connected(1));
        self.recv(1, peer_open(65000, peer_hold, PEER_ID));
        let out = self.recv(1, Message::Keepalive);
        assert_eq!(self.s.state(), State::Established);
        out
    }
}

/// The OPEN the configured peer sends: AS 65000, hold time 9 s.
fn their_open() -> Message {
    peer_open(65000, 9, PEER_ID)
}

/// [`their_open`] encoded, to be altered.
fn their_open_bytes() -> Vec<u8> {
    their_open().to_bytes(Context::default()).unwrap()
}

fn peer_open(asn: u32, hold: u16, id: Ipv4Addr) -> Message {
    Message::Open(Open::new(
        asn,
        hold,
        id,
        vec![
            Capability::multiprotocol(Family::Ipv4Unicast),
            Capability::multiprotocol(Family::Ipv6Unicast),
            Capability::RouteRefresh,
            Capability::FourOctetAs { asn },
        ],
    ))
}

/// Messages sent, per connection, decoded.
fn sent(out: &[Output]) -> Vec<(ConnId, Message)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(c, bytes) => {
                Some((*c, Message::parse(bytes, Context::FOUR_OCTET).unwrap()))
            }
            _ => None,
        })
        .collect()
}

fn notification(out: &[Output]) -> Option<(ConnId, Notification)> {
    sent(out).into_iter().find_map(|(c, m)| match m {
        Message::Notification(n) => Some((c, n)),
        _ => None,
    })
}

/// The NOTIFICATION sent, as (error code, subcode).
fn notified(out: &[Output]) -> Option<(u8, u8)> {
    notification(out).map(|(_, n)| (n.code, n.subcode))
}

fn armed(out: &[Output], timer: Timer) -> Option<Instant> {
    out.iter().rev().find_map(|o| match o {
        Output::ArmTimer(t, at) if *t == timer => Some(*at),
        _ => None,
    })
}

/// Checks that `timer` was armed `base` after `from` with RFC 4271 §10 jitter, a
/// factor in 0.75..=1.0, and returns the delay.
fn jittered(out: &[Output], timer: Timer, from: Instant, base: Duration) -> Duration {
    let at = armed(out, timer).unwrap_or_else(|| panic!("{timer:?} not armed: {out:?}"));
    let delay = at - from;
    assert!(
        delay >= base * 3 / 4 && delay <= base,
        "{timer:?} in {delay:?}, base {base:?}"
    );
    delay
}

#[test]
fn active_session_comes_up_and_negotiates_hold_time() {
    let mut h = Harness::new(config());
    let out = h.ev(Event::Start);
    assert_eq!(out[0], Output::Connect(1));
    jittered(&out, Timer::ConnectRetry, h.now, Duration::from_secs(2));
    assert_eq!(h.s.state(), State::Connect);

    let out = h.ev(Event::Connected(1));
    assert!(out.contains(&Output::CancelTimer(Timer::ConnectRetry)));
    let Ok([(1, Message::Open(open))]) = <[_; 1]>::try_from(sent(&out)) else {
        panic!("{out:?}")
    };
    assert_eq!(
        (open.asn(), open.hold_time, open.bgp_id),
        (65001, 9, OUR_ID)
    );
    // Never graceful restart: no forwarding state outlives the process (RFC 4724 §3).
    assert!(open.graceful_restart().is_none());
    assert_eq!(armed(&out, Timer::Hold(1)), Some(h.at(240)));
    assert_eq!(h.s.state(), State::OpenSent);

    h.advance_to(1);
    let out = h.recv(1, peer_open(65000, 30, PEER_ID));
    assert_eq!(sent(&out), vec![(1, Message::Keepalive)]);
    // min(9, 30) = 9: hold 9 s, keepalive every 3 s.
    assert_eq!(armed(&out, Timer::Hold(1)), Some(h.at(10)));
    jittered(&out, Timer::Keepalive(1), h.now, Duration::from_secs(3));
    assert_eq!(h.s.state(), State::OpenConfirm);

    h.advance_to(2);
    let out = h.recv(1, Message::Keepalive);
    let up = out.iter().find_map(|o| match o {
        Output::Established { conn, negotiated } => Some((*conn, negotiated.clone())),
        _ => None,
    });
    let (conn, n) = up.expect("Established output");
    assert_eq!(conn, 1);
    assert_eq!(
        (n.hold_time, n.remote_as, n.four_octet_as, n.route_refresh),
        (9, 65000, true, true)
    );
    assert_eq!(n.families, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert!(out.contains(&Output::StateChanged {
        from: State::OpenConfirm,
        to: State::Established
    }));
    assert_eq!(h.s.established_at(), Some(h.at(2)));
}

#[test]
fn keepalives_every_third_of_hold_time_and_hold_restarts_on_messages() {
    let mut h = Harness::new(config());
    h.establish(9);
    h.advance_to(3);
    let out = h.ev(Event::TimerExpired(Timer::Keepalive(1)));
    assert_eq!(sent(&out), vec![(1, Message::Keepalive)]);
    jittered(&out, Timer::Keepalive(1), h.now, Duration::from_secs(3));
    h.advance_to(5);
    let out = h.recv(1, Message::Keepalive);
    assert_eq!(armed(&out, Timer::Hold(1)), Some(h.at(14)));
    let out = h.recv(1, Message::Update(Update::end_of_rib(Family::Ipv4Unicast)));
    assert_eq!(armed(&out, Timer::Hold(1)), Some(h.at(14)));
    // Sending an UPDATE pushes the next KEEPALIVE back.
    h.advance_to(6);
    let mut out = Vec::new();
    h.s.send_update(h.now, &Update::end_of_rib(Family::Ipv6Unicast), &mut out)
        .unwrap();
    jittered(&out, Timer::Keepalive(1), h.now, Duration::from_secs(3));
    assert_eq!(h.s.stats().sent.update, 1);
}

/// RFC 4271 §10: KeepaliveTimer and ConnectRetryTimer get a random factor in
/// 0.75..=1.0, a new one each time they are set, so that sessions started together
/// (two gateways rebooted at once) do not stay in step. Same seed, same timers.
#[test]
fn keepalive_and_connect_retry_timers_are_jittered() {
    let keepalive = Duration::from_secs(3);
    let retry = Duration::from_secs(2);
    let delays = |seed: u64| {
        let mut h = Harness::new(config());
        h.s = Session::new(config(), seed);
        let out = h.ev(Event::Start);
        let mut d = vec![jittered(&out, Timer::ConnectRetry, h.now, retry)];
        let out = h.ev(Event::ConnectionFailed {
            conn: 1,
            reason: "refused",
        });
        d.push(jittered(&out, Timer::ConnectRetry, h.now, retry));
        h.ev(Event::TimerExpired(Timer::ConnectRetry));
        h.ev(Event::Connected(2));
        let out = h.recv(2, their_open());
        d.push(jittered(&out, Timer::Keepalive(2), h.now, keepalive));
        h.recv(2, Message::Keepalive);
        assert_eq!(h.s.state(), State::Established);
        for _ in 0..5 {
            let out = h.ev(Event::TimerExpired(Timer::Keepalive(2)));
            d.push(jittered(&out, Timer::Keepalive(2), h.now, keepalive));
        }
        d
    };
    let mut all = Vec::new();
    for seed in 0..40 {
        let d = delays(seed);
        assert_eq!(d, delays(seed), "seed {seed} is not reproducible");
        // A new factor each time the timer is set.
        assert!(d[3..].windows(2).any(|w| w[0] != w[1]), "{d:?}");
        all.push(d);
    }
    // Different seeds, different timers: no two sessions in lockstep.
    let firsts: std::collections::BTreeSet<Duration> = all.iter().map(|d| d[0]).collect();
    assert!(firsts.len() > 30, "{firsts:?}");
    // The whole range is used, not just its top.
    let keepalives: Vec<Duration> = all.iter().flat_map(|d| d[2..].to_vec()).collect();
    assert!(keepalives.iter().any(|d| *d < keepalive * 4 / 5));
    assert!(keepalives.iter().any(|d| *d > keepalive * 19 / 20));
}

/// RFC 4271 §4.4: KEEPALIVEs MUST NOT be sent more often than one per second. With
/// hold time 3 the interval is 1 s, which the jitter would cut to 0.75 s.
#[test]
fn keepalives_are_never_less_than_a_second_apart() {
    for seed in 0..20 {
        let mut c = config();
        c.hold_time = 3;
        let mut h = Harness::new(c.clone());
        h.s = Session::new(c, seed);
        h.ev(Event::Start);
        h.ev(Event::Connected(1));
        let out = h.recv(1, peer_open(65000, 3, PEER_ID));
        let mut delays = vec![armed(&out, Timer::Keepalive(1)).unwrap() - h.now];
        h.recv(1, Message::Keepalive);
        assert_eq!(h.s.state(), State::Established);
        for _ in 0..10 {
            let out = h.ev(Event::TimerExpired(Timer::Keepalive(1)));
            delays.push(armed(&out, Timer::Keepalive(1)).unwrap() - h.now);
            let mut out = Vec::new();
            h.s.send_update(h.now, &Update::end_of_rib(Family::Ipv4Unicast), &mut out)
                .unwrap();
            delays.push(armed(&out, Timer::Keepalive(1)).unwrap() - h.now);
        }
        assert!(
            delays.iter().all(|d| *d == Duration::from_secs(1)),
            "seed {seed}: {delays:?}"
        );
    }
}

#[test]
fn hold_time_zero_means_no_keepalives() {
    let mut h = Harness::new(config());
    let out = h.establish(0);
    assert!(out.contains(&Output::CancelTimer(Timer::Hold(1))));
    assert_eq!(h.s.established().unwrap().1.keepalive(), None);
}

/// A peer that proposes hold time 0 turns off the session's liveness check, whatever we
/// propose; `min_hold_time` refuses that, and any proposal below it, with NOTIFICATION
/// OPEN Message Error / Unacceptable Hold Time (RFC 4271 §4.2, §6.2).
#[test]
fn a_hold_time_below_the_configured_minimum_is_refused() {
    let mut cfg = config();
    cfg.hold_time = 90;
    cfg.min_hold_time = 9;
    for (peer_hold, refused) in [(0, true), (3, true), (8, true), (9, false), (240, false)] {
        let mut h = Harness::open_sent(cfg.clone());
        let out = h.recv(1, peer_open(65000, peer_hold, PEER_ID));
        let expected = refused.then_some((2, 6));
        assert_eq!(notified(&out), expected, "hold time {peer_hold}: {out:?}");
        let state = if refused {
            State::Idle
        } else {
            State::OpenConfirm
        };
        assert_eq!(h.s.state(), state, "hold time {peer_hold}");
    }
    // Without a minimum the peer's 0 is the session's.
    let mut h = Harness::new(config());
    h.establish(0);
    assert_eq!(h.s.established().unwrap().1.hold_time, 0);
}

/// On hold time 0 nothing shows that the peer lost the session (a router that restarted
/// without closing its connections: no KEEPALIVE is due and no hold timer runs), so its
/// new connection replaces the Established one once its OPEN is valid, as RFC 4271 §6.8
/// allows "via configuration". It used to be refused with Cease / Connection Collision
/// Resolution on every retry, forever. On a nonzero hold time the Established
/// connection still wins: its hold timer finds a peer that is gone.
#[test]
fn on_hold_time_zero_a_new_connection_replaces_the_established_one() {
    let mut cfg = config();
    cfg.hold_time = 90;
    let mut h = Harness::new(cfg);
    h.establish(0);
    let out = h.ev(Event::Incoming);
    assert_eq!(out.first(), Some(&Output::Accept(2)), "{out:?}");
    assert!(matches!(sent(&out)[..], [(2, Message::Open(_))]), "{out:?}");
    // The old connection carries the session until the new one shows it is the peer.
    assert_eq!(h.s.established().map(|(c, _)| c), Some(1));
    // An OPEN that fails its checks leaves the old one alone.
    let out = h.recv(2, peer_open(65099, 0, PEER_ID));
    assert_eq!(notification(&out).map(|(c, _)| c), Some(2), "{out:?}");
    assert_eq!(h.s.established().map(|(c, _)| c), Some(1));

    let out = h.ev(Event::Incoming);
    assert_eq!(out.first(), Some(&Output::Accept(3)), "{out:?}");
    let out = h.recv(3, peer_open(65000, 0, PEER_ID));
    let collision = Notification::cease(CeaseSubcode::ConnectionCollisionResolution);
    assert_eq!(notification(&out), Some((1, collision)), "{out:?}");
    assert!(out.contains(&Output::Close(1)) && out.contains(&Output::Down));
    assert_eq!(h.s.state(), State::OpenConfirm);
    h.recv(3, Message::Keepalive);
    assert_eq!(h.s.established().map(|(c, _)| c), Some(3));
    assert_eq!(h.s.stats().flaps, 1);

    let mut h = Harness::new(config());
    h.establish(9);
    assert_eq!(
        h.ev(Event::Incoming),
        vec![Output::Refuse(Notification::cease(
            CeaseSubcode::ConnectionCollisionResolution
        ))]
    );
    assert_eq!(h.s.established().map(|(c, _)| c), Some(1));
}

#[test]
fn hold_timer_expiry_sends_notification_and_retries() {
    let mut h = Harness::new(config());
    h.establish(9);
    h.advance_to(11);
    let out = h.ev(Event::TimerExpired(Timer::Hold(1)));
    let (conn, n) = notification(&out).unwrap();
    assert_eq!((conn, n.code, n.subcode), (1, 4, 0));
    assert!(out.contains(&Output::Close(1)));
    assert!(out.contains(&Output::Down));
    assert_eq!(h.s.state(), State::Idle);
    assert_eq!(
        h.s.last_error(),
        Some(&SessionError::NotificationSent(
            Notification::hold_timer_expired()
        ))
    );
    assert_eq!(h.s.stats().flaps, 1);
    // Automatic restart after ConnectRetryTime.
    jittered(&out, Timer::ConnectRetry, h.now, Duration::from_secs(2));
    h.advance_to(13);
    let out = h.ev(Event::TimerExpired(Timer::ConnectRetry));
    assert!(out.contains(&Output::Connect(2)));
    assert_eq!(h.s.state(), State::Connect);
}

/// RFC 9687 §4.3: bytes waiting on an Established connection that the peer does not
/// take for the SendHoldTime (8 minutes here) end the session with NOTIFICATION 8, Send
/// Hold Timer Expired; every report of progress restarts the timer, and a send queue
/// found empty stops it.
#[test]
fn send_hold_timer_closes_a_connection_the_peer_stopped_taking_from() {
    let queue = |progressed, pending| Event::SendQueue {
        conn: 1,
        progressed,
        pending,
    };
    let mut h = Harness::new(config());
    h.ev(Event::Start);
    h.ev(Event::Connected(1));
    // Not before Established (§4.3): the OPEN hold timer covers those states.
    let out = h.ev(queue(false, true));
    assert_eq!(armed(&out, Timer::SendHold(1)), None, "{out:?}");
    h.recv(1, their_open());
    h.recv(1, Message::Keepalive);
    assert_eq!(h.s.state(), State::Established);

    h.advance_to(10);
    let out = h.ev(queue(false, true));
    assert_eq!(armed(&out, Timer::SendHold(1)), Some(h.at(490)));
    // Still stuck: the timer runs on from when it was set.
    h.advance_to(100);
    assert_eq!(h.ev(queue(false, true)), []);
    // The peer took some: restarted.
    h.advance_to(200);
    let out = h.ev(queue(true, true));
    assert_eq!(armed(&out, Timer::SendHold(1)), Some(h.at(680)));
    // All taken: stopped, and an expiry already on its way does nothing.
    h.advance_to(300);
    let out = h.ev(queue(true, false));
    assert_eq!(out, [Output::CancelTimer(Timer::SendHold(1))]);
    assert_eq!(h.ev(queue(false, false)), []);
    assert_eq!(h.ev(Event::TimerExpired(Timer::SendHold(1))), []);
    assert_eq!(h.s.state(), State::Established);

    h.advance_to(400);
    let out = h.ev(queue(false, true));
    assert_eq!(armed(&out, Timer::SendHold(1)), Some(h.at(880)));
    h.advance_to(880);
    let out = h.ev(Event::TimerExpired(Timer::SendHold(1)));
    assert_eq!(notified(&out), Some((8, 0)), "{out:?}");
    assert_eq!(notification(&out).unwrap().1.data, []);
    assert!(out.contains(&Output::Close(1)));
    assert!(out.contains(&Output::Down));
    assert_eq!(h.s.state(), State::Idle);
    let expected = Notification::send_hold_timer_expired();
    assert_eq!(
        h.s.last_error(),
        Some(&SessionError::NotificationSent(expected.clone()))
    );
    assert_eq!(
        h.s.last_error().unwrap().to_string(),
        "sent NOTIFICATION: send hold timer expired / unspecific (8/0)"
    );
    assert_eq!(h.s.stats().sent.notification, 1);
    // Retried like any other error.
    jittered(&out, Timer::ConnectRetry, h.now, Duration::from_secs(2));
}

/// The SendHoldTime: by default the greater of 8 minutes and twice the negotiated hold
/// time (RFC 9687 §6); a configured one, raised above the hold time if it is not
/// (§4.4); none when configured 0 or when the negotiated hold time is 0 (§4.3: the
/// SendHoldTimer is stopped then).
#[test]
fn send_hold_time_follows_the_hold_time_and_the_configuration() {
    let send_hold = |ours: u16, theirs: u16, configured: Option<Duration>| {
        let mut c = config();
        c.hold_time = ours;
        c.send_hold_time = configured;
        let mut h = Harness::new(c);
        h.establish(theirs);
        let out = h.ev(Event::SendQueue {
            conn: 1,
            progressed: false,
            pending: true,
        });
        armed(&out, Timer::SendHold(1)).map(|at| at - h.now)
    };
    let secs = |s| Some(Duration::from_secs(s));
    assert_eq!(send_hold(9, 9, None), secs(480));
    assert_eq!(send_hold(90, 90, None), secs(480));
    assert_eq!(send_hold(600, 300, None), secs(600));
    assert_eq!(send_hold(3, 3, secs(4)), secs(4));
    assert_eq!(send_hold(9, 9, secs(2)), secs(10));
    assert_eq!(send_hold(9, 9, Some(Duration::ZERO)), None);
    assert_eq!(send_hold(9, 0, None), None);
    assert_eq!(send_hold(0, 9, secs(60)), None);
}

#[test]
fn hold_timer_expiry_in_open_sent_after_four_minutes() {
    let mut h = Harness::open_sent(config());
    h.advance_to(240);
    let out = h.ev(Event::TimerExpired(Timer::Hold(1)));
    assert_eq!(
        notification(&out).unwrap().1,
        Notification::hold_timer_expired()
    );
}

#[test]
fn connect_retry_backs_off_exponentially_up_to_the_cap() {
    let mut h = Harness::new(config());
    h.ev(Event::Start);
    let mut conn = 1;
    let mut delays = Vec::new();
    for _ in 0..7 {
        let out = h.ev(Event::ConnectionFailed {
            conn,
            reason: "refused",
        });
        assert_eq!(h.s.state(), State::Active);
        delays.push(armed(&out, Timer::ConnectRetry).unwrap() - h.now);
        h.now = armed(&out, Timer::ConnectRetry).unwrap();
        let out = h.ev(Event::TimerExpired(Timer::ConnectRetry));
        conn += 1;
        assert!(out.contains(&Output::Connect(conn)), "{out:?}");
    }
    // The base doubles up to the cap; each delay is that base, jittered (§10).
    for (delay, base) in delays.iter().zip([2, 4, 8, 16, 30, 30, 30]) {
        let base = Duration::from_secs(base);
        assert!(*delay >= base * 3 / 4 && *delay <= base, "{delays:?}");
    }
    assert_eq!(
        h.s.last_error(),
        Some(&SessionError::Connection("refused".into()))
    );
}

#[test]
fn connect_timeout_abandons_the_attempt() {
    let mut h = Harness::new(config());
    h.ev(Event::Start);
    h.advance_to(2);
    let out = h.ev(Event::TimerExpired(Timer::ConnectRetry));
    assert!(out.contains(&Output::Close(1)));
    assert!(out.contains(&Output::Connect(2)));
    assert_eq!(
        h.s.last_error(),
        Some(&SessionError::Connection("connect timed out".into()))
    );
    // A late completion of the abandoned connect is closed.
    let out = h.ev(Event::Connected(1));
    assert_eq!(out, vec![Output::Close(1)]);
}

/// An inbound connection leaves the timer of a connect still pending running: when the
/// inbound one fails, the timer is what abandons the hung connect and tries again.
#[test]
fn inbound_connection_keeps_the_timeout_of_a_pending_connect() {
    let mut h = Harness::new(config());
    let out = h.ev(Event::Start); // connect 1 pending
    assert!(armed(&out, Timer::ConnectRetry).is_some());
    let out = h.ev(Event::Incoming); // 2
    assert!(out.contains(&Output::Accept(2)));
    assert!(
        !out.contains(&Output::CancelTimer(Timer::ConnectRetry)),
        "{out:?}"
    );
    // The inbound connection fails (an OPEN from the wrong AS); connect 1 still hangs.
    let out = h.recv(2, peer_open(65099, 9, PEER_ID));
    assert_eq!(notified(&out), Some((2, 2)));
    h.advance_to(2);
    let out = h.ev(Event::TimerExpired(Timer::ConnectRetry));
    assert!(out.contains(&Output::Close(1)) && out.contains(&Output::Connect(3)));

    // With no connect pending, an inbound connection stops the timer as before.
    let mut h = Harness::open_sent(config());
    let out = h.ev(Event::Incoming);
    assert!(out.contains(&Output::CancelTimer(Timer::ConnectRetry)));
}

#[test]
fn backoff_resets_once_established() {
    let mut h = Harness::new(config());
    h.ev(Event::Start);
    h.ev(Event::ConnectionFailed {
        conn: 1,
        reason: "refused",
    });
    h.ev(Event::TimerExpired(Timer::ConnectRetry));
    h.ev(Event::ConnectionFailed {
        conn: 2,
        reason: "refused",
    });
    h.ev(Event::TimerExpired(Timer::ConnectRetry));
    h.ev(Event::Connected(3));
    h.recv(3, their_open());
    h.recv(3, Message::Keepalive);
    assert_eq!(h.s.state(), State::Established);
    let out = h.ev(Event::ConnectionFailed {
        conn: 3,
        reason: "reset",
    });
    jittered(&out, Timer::ConnectRetry, h.now, Duration::from_secs(2));
}

#[test]
fn passive_waits_for_the_peer() {
    let mut cfg = config();
    cfg.passive = true;
    let mut h = Harness::new(cfg);
    let out = h.ev(Event::Start);
    assert!(!out.iter().any(|o| matches!(o, Output::Connect(_))));
    assert_eq!(h.s.state(), State::Active);
    let out = h.ev(Event::Incoming);
    assert_eq!(out[0], Output::Accept(1));
    assert!(matches!(sent(&out)[..], [(1, Message::Open(_))]));
    assert_eq!(h.s.state(), State::OpenSent);
    h.recv(1, their_open());
    h.recv(1, Message::Keepalive);
    assert_eq!(h.s.state(), State::Established);
    // An Established session keeps its connection (§6.8).
    assert_eq!(
        h.ev(Event::Incoming),
        vec![Output::Refuse(Notification::cease(
            CeaseSubcode::ConnectionCollisionResolution
        ))]
    );
    // After a failure a passive session never connects; it waits in Active again, with
    // no timer to wait for.
    let out = h.ev(Event::ConnectionFailed {
        conn: 1,
        reason: "reset",
    });
    assert!(!out.iter().any(|o| matches!(o, Output::Connect(_))));
    assert_eq!(armed(&out, Timer::ConnectRetry), None, "{out:?}");
    assert_eq!(h.s.state(), State::Active);
}

/// A passive session that went down (here the router reset it: Cease / Administrative
/// Reset, as `birdc restart` sends) accepts the router's next connection at once, however
/// often it failed before: it has no connect of its own to damp (RFC 4271 §8.1.1
/// DampPeerOscillations), and a refusal would make the router wait its own connect-retry
/// time (120 s by default in BIRD) before it tries again. It used to wait in Idle, as a
/// session that connects does, and refuse with Cease / Connection Rejected.
#[test]
fn a_passive_session_accepts_at_once_after_a_flap() {
    let mut cfg = config();
    cfg.passive = true;
    let mut h = Harness::new(cfg);
    h.ev(Event::Start);
    for flap in 0..4 {
        let out = h.ev(Event::Incoming);
        let Some(&Output::Accept(conn)) = out.first() else {
            panic!("flap {flap}: the router's connection was not accepted: {out:?}");
        };
        h.recv(conn, their_open());
        h.recv(conn, Message::Keepalive);
        assert_eq!(h.s.state(), State::Established, "flap {flap}");
        h.now += Duration::from_secs(1);
        let reset = Notification::cease(CeaseSubcode::AdministrativeReset);
        let out = h.recv(conn, Message::Notification(reset));
        assert_eq!(h.s.state(), State::Active, "flap {flap}: {out:?}");
        h.now += Duration::from_secs(1);
    }
    // A session that connects itself still waits between attempts, refusing meanwhile.
    let mut h = Harness::new(config());
    h.establish(9);
    h.recv(
        1,
        Message::Notification(Notification::cease(CeaseSubcode::AdministrativeReset)),
    );
    assert_eq!(h.s.state(), State::Idle);
    assert_eq!(
        h.ev(Event::Incoming),
        vec![Output::Refuse(Notification::cease(
            CeaseSubcode::ConnectionRejected
        ))]
    );
}

/// §8.2.2: Idle refuses connections, telling the peer with Cease / Connection Rejected
/// (RFC 4486 §4).
#[test]
fn idle_refuses_connections() {
    let rejected = || {
        vec![Output::Refuse(Notification::cease(
            CeaseSubcode::ConnectionRejected,
        ))]
    };
    let mut h = Harness::new(config());
    assert_eq!(h.ev(Event::Incoming), rejected());
    h.establish(9);
    h.ev(Event::TimerExpired(Timer::Hold(1)));
    assert_eq!(h.s.state(), State::Idle);
    let notifications = h.s.stats().sent.notification;
    assert_eq!(h.ev(Event::Incoming), rejected());
    assert_eq!(h.s.stats().sent.notification, notifications);
}

/// §6.8: both sides connect at once. Each test sees the peer's OPEN on one
/// connection while the other is in OpenSent or OpenConfirm.
fn collide(peer_id: Ipv4Addr) -> (Harness, Vec<Output>) {
    collide_with(config(), peer_id)
}

fn collide_with(cfg: Config, peer_id: Ipv4Addr) -> (Harness, Vec<Output>) {
    let peer_as = cfg.remote_as;
    let mut h = Harness::open_sent(cfg); // ours
    let out = h.ev(Event::Incoming); // theirs
    assert_eq!(out[0], Output::Accept(2));
    assert!(matches!(sent(&out)[..], [(2, Message::Open(_))]));
    // The first OPEN already identifies the peer, so the collision is resolved
    // then; the second OPEN finds its connection gone if it lost.
    let mut out = h.recv(2, peer_open(peer_as, 9, peer_id));
    out.extend(h.recv(1, peer_open(peer_as, 9, peer_id)));
    (h, out)
}

#[test]
fn collision_keeps_the_connection_of_the_higher_identifier() {
    // Peer's identifier is higher: its connection (2, inbound) wins; ours (1) is
    // closed with Cease / Connection Collision Resolution.
    let (mut h, out) = collide(Ipv4Addr::new(10, 0, 0, 9));
    let (conn, n) = notification(&out).unwrap();
    assert_eq!((conn, n.code, n.subcode), (1, 6, 7));
    assert!(out.contains(&Output::Close(1)));
    h.recv(2, Message::Keepalive);
    assert_eq!(h.s.state(), State::Established);
    assert_eq!(h.s.established().unwrap().0, 2);

    // Ours is higher: our connection (1) wins and the peer's (2) is closed.
    let (mut h, out) = collide(PEER_ID);
    let (conn, n) = notification(&out).unwrap();
    assert_eq!((conn, n.code, n.subcode), (2, 6, 7));
    h.recv(1, Message::Keepalive);
    assert_eq!(h.s.established().unwrap().0, 1);
}

/// RFC 6286 §2.3: eBGP peers may share an identifier; then the connection opened by
/// the side with the larger AS survives. Both sides must pick the same one, or each
/// closes the connection the other kept.
#[test]
fn collision_with_equal_identifiers_keeps_the_connection_of_the_larger_as() {
    // Ours is the larger AS (65001 against 65000): the peer's connection (2) goes.
    let (mut h, out) = collide(OUR_ID);
    let (conn, n) = notification(&out).unwrap();
    assert_eq!((conn, n.code, n.subcode), (2, 6, 7));
    h.recv(1, Message::Keepalive);
    assert_eq!(h.s.established().unwrap().0, 1);

    // The peer's is larger (65002): ours (1) goes.
    let mut cfg = config();
    cfg.remote_as = 65002;
    let (mut h, out) = collide_with(cfg, OUR_ID);
    let (conn, n) = notification(&out).unwrap();
    assert_eq!((conn, n.code, n.subcode), (1, 6, 7));
    h.recv(2, Message::Keepalive);
    assert_eq!(h.s.established().unwrap().0, 2);
}

#[test]
fn collision_with_pending_connect_drops_the_connect() {
    let mut h = Harness::new(config());
    h.ev(Event::Start); // connect 1 pending
    h.ev(Event::Incoming); // 2
                           // The peer reconnecting replaces its earlier connection.
    let out = h.ev(Event::Incoming); // 3
    assert!(out.contains(&Output::Close(2)) && out.contains(&Output::Accept(3)));
    let out = h.recv(3, their_open());
    assert!(out.contains(&Output::Close(1)));
    assert_eq!(h.s.state(), State::OpenConfirm);
}

fn rejected_open(open: Message) -> Notification {
    rejected_open_bytes(&open.to_bytes(Context::FOUR_OCTET).unwrap())
}

/// The NOTIFICATION that answers `open` in OpenSent, checking that it closed the
/// connection and sent the session to Idle.
fn rejected_open_bytes(open: &[u8]) -> Notification {
    let mut h = Harness::open_sent(config());
    let out = h.recv_bytes(1, open);
    assert!(out.contains(&Output::Close(1)), "{out:?}");
    assert_eq!(h.s.state(), State::Idle);
    let (_, n) = notification(&out).unwrap();
    assert_eq!(
        h.s.last_error(),
        Some(&SessionError::NotificationSent(n.clone()))
    );
    n
}

#[test]
fn bad_open_is_answered_with_the_right_notification() {
    // Wrong AS: 2/2 Bad Peer AS.
    let n = rejected_open(peer_open(65099, 9, PEER_ID));
    assert_eq!((n.code, n.subcode), (2, 2));

    // Version 3: 2/1 Unsupported Version Number, data = 4.
    let mut bytes = their_open_bytes();
    bytes[19] = 3;
    let n = rejected_open_bytes(&bytes);
    assert_eq!((n.code, n.subcode, n.data), (2, 1, vec![0, 4]));

    // Hold time 1 or 2: 2/6 Unacceptable Hold Time.
    for hold in [1, 2] {
        let mut bytes = their_open_bytes();
        bytes[22..24].copy_from_slice(&u16::to_be_bytes(hold));
        let n = rejected_open_bytes(&bytes);
        assert_eq!((n.code, n.subcode), (2, 6));
    }

    // No family in common: 2/7 Unsupported Capability listing ours.
    let open = Message::Open(Open::new(
        65000,
        9,
        PEER_ID,
        vec![Capability::Multiprotocol { afi: 25, safi: 70 }],
    ));
    let n = rejected_open(open);
    assert_eq!((n.code, n.subcode), (2, 7));
    assert_eq!(n.data, vec![1, 4, 0, 1, 0, 1, 1, 4, 0, 2, 0, 1]);

    // iBGP with our own identifier: 2/3.
    let mut cfg = config();
    cfg.remote_as = 65001;
    let mut h = Harness::open_sent(cfg);
    let out = h.recv(1, peer_open(65001, 9, OUR_ID));
    assert_eq!(notified(&out), Some((2, 3)));
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    // UPDATE in OpenSent: 5/1 (RFC 6608).
    let mut h = Harness::open_sent(config());
    let out = h.recv(1, Message::Update(Update::default()));
    assert_eq!(notified(&out), Some((5, 1)));
    // UPDATE in OpenConfirm: 5/2.
    let mut h = Harness::open_sent(config());
    h.recv(1, their_open());
    let out = h.recv(1, Message::Update(Update::default()));
    assert_eq!(notified(&out), Some((5, 2)));
    // OPEN in Established: 5/3.
    let mut h = Harness::new(config());
    h.establish(9);
    let out = h.recv(1, their_open());
    assert_eq!(notified(&out), Some((5, 3)));
    assert!(out.contains(&Output::Down));
}

#[test]
fn framing_errors_reset_and_rfc7606_errors_do_not() {
    let mut h = Harness::new(config());
    h.establish(9);
    // Bad ORIGIN value: treat-as-withdraw, the session stays up.
    let bad_origin = [
        &[0xff; 16][..],
        &[0, 0x1b, 2, 0, 0, 0, 4, 0x40, 1, 1, 9, 24, 192, 0, 2],
    ]
    .concat();
    let out = h.recv_bytes(1, &bad_origin[..27]);
    assert!(sent(&out).is_empty(), "{out:?}");
    assert_eq!(h.s.state(), State::Established);
    assert_eq!(h.s.stats().update_errors, 1);
    assert!(h.s.last_update_error().is_some());
    // A bad marker: 1/1 and the session resets.
    let mut ka = Message::Keepalive.to_bytes(Context::default()).unwrap();
    ka[3] = 0;
    let out = h.recv_bytes(1, &ka);
    assert_eq!(notified(&out), Some((1, 1)));
    assert_eq!(h.s.state(), State::Idle);
}

/// An UPDATE announcing 192.0.2.0/24 with `attrs` (type, flags, value each) after
/// ORIGIN and AS_PATH.
fn update_with(extra: &[u8]) -> Vec<u8> {
    let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe8];
    attrs.extend_from_slice(extra);
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend(attrs);
    body.extend([24, 192, 0, 2]);
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    msg.push(2);
    msg.extend(body);
    msg
}

#[test]
fn unrecognised_well_known_attribute_resets_with_3_2() {
    let mut h = Harness::new(config());
    h.establish(9);
    // NEXT_HOP, then well-known (flags 0x40) type 99 with one octet.
    let out = h.recv_bytes(1, &update_with(&[0x40, 3, 4, 10, 0, 0, 1, 0x40, 99, 1, 7]));
    let (_, n) = notification(&out).expect("a NOTIFICATION");
    assert_eq!((n.code, n.subcode), (3, 2));
    assert_eq!(n.data, [0x40, 99, 1, 7]);
    assert!(out.contains(&Output::Down));
    assert_eq!(h.s.state(), State::Idle);
    assert_eq!(h.s.stats().update_errors, 0);
}

#[test]
fn next_hop_that_is_no_host_address_is_treat_as_withdraw() {
    let mut h = Harness::new(config());
    h.establish(9);
    for nh in [[0, 0, 0, 0], [224, 0, 0, 5], [255, 255, 255, 255]] {
        let mut attr = vec![0x40, 3, 4];
        attr.extend(nh);
        let out = h.recv_bytes(1, &update_with(&attr));
        assert!(sent(&out).is_empty(), "{out:?}");
    }
    assert_eq!(h.s.state(), State::Established);
    assert_eq!(h.s.stats().update_errors, 3);
    assert_eq!(h.s.stats().prefixes_received, 0);
    let e = h.s.last_update_error().unwrap().notification();
    assert_eq!((e.code, e.subcode), (3, 8));
    // A host address is fine.
    h.recv_bytes(1, &update_with(&[0x40, 3, 4, 10, 0, 0, 1]));
    assert_eq!(h.s.stats().prefixes_received, 1);
}

#[test]
fn messages_split_across_reads_are_reassembled() {
    let mut h = Harness::open_sent(config());
    let mut bytes = their_open_bytes();
    bytes.extend(Message::Keepalive.to_bytes(Context::default()).unwrap());
    for b in &bytes {
        h.recv_bytes(1, std::slice::from_ref(b));
    }
    assert_eq!(h.s.state(), State::Established);
    assert_eq!(h.s.stats().received.open, 1);
    assert_eq!(h.s.stats().received.keepalive, 1);
}

#[test]
fn notification_received_is_recorded() {
    let mut h = Harness::new(config());
    h.establish(9);
    let n = Notification::shutdown("router maintenance");
    let out = h.recv(1, Message::Notification(n.clone()));
    assert!(sent(&out).is_empty(), "a NOTIFICATION is never answered");
    assert!(out.contains(&Output::Close(1)));
    assert_eq!(h.s.state(), State::Idle);
    assert_eq!(
        h.s.last_error(),
        Some(&SessionError::NotificationReceived(n))
    );
    assert_eq!(
        h.s.last_error().unwrap().to_string(),
        "received NOTIFICATION: cease / administrative shutdown (6/2): \"router maintenance\""
    );
}

#[test]
fn admin_shutdown_sends_cease_with_message() {
    let mut h = Harness::new(config());
    h.establish(9);
    let out = h.ev(Event::Stop(StopReason::Shutdown("dsrgate stopping")));
    let (conn, n) = notification(&out).unwrap();
    assert_eq!(conn, 1);
    assert_eq!(n.shutdown_message().as_deref(), Some("dsrgate stopping"));
    assert!(out.contains(&Output::Close(1)));
    assert!(out.contains(&Output::Down));
    assert_eq!(h.s.state(), State::Idle);
    // Stopped sessions stay down: no retry, no connections.
    assert!(!out.iter().any(|o| matches!(o, Output::ArmTimer(..))));
    assert_eq!(
        h.ev(Event::Incoming),
        vec![Output::Refuse(Notification::cease(
            CeaseSubcode::ConnectionRejected
        ))]
    );
}

#[test]
fn a_peer_removed_or_changed_is_told_why_in_its_cease() {
    // RFC 4486 §4: Peer De-configured (3) and Other Configuration Change (6), no data.
    for (reason, subcode) in [(StopReason::Deconfigured, 3), (StopReason::Reconfigured, 6)] {
        let mut h = Harness::new(config());
        h.establish(9);
        let out = h.ev(Event::Stop(reason));
        let (conn, n) = notification(&out).unwrap();
        assert_eq!((conn, n.code, n.subcode), (1, 6, subcode), "{reason:?}");
        assert!(n.data.is_empty(), "{reason:?}: {n:?}");
        assert!(out.contains(&Output::Close(1)));
        assert_eq!(h.s.state(), State::Idle);
        assert_eq!(h.s.last_error(), Some(&SessionError::NotificationSent(n)));
    }
}

#[test]
fn route_refresh_is_passed_on_for_negotiated_families() {
    let mut h = Harness::new(config());
    h.establish(9);
    let out = h.recv(
        1,
        Message::RouteRefresh(RouteRefresh::new(Family::Ipv6Unicast)),
    );
    assert!(out.contains(&Output::RouteRefresh(Family::Ipv6Unicast)));
    let out = h.recv(
        1,
        Message::RouteRefresh(RouteRefresh {
            afi: 1,
            subtype: 0,
            safi: 128,
        }),
    );
    assert!(!out.iter().any(|o| matches!(o, Output::RouteRefresh(_))));
    // RFC 7313 §5: BoRR and EoRR (1, 2) mark the peer's own refresh, and other subtypes
    // are ignored; none of them asks for our routes.
    for subtype in [1, 2, 3, 255] {
        let out = h.recv(
            1,
            Message::RouteRefresh(RouteRefresh {
                subtype,
                ..RouteRefresh::new(Family::Ipv6Unicast)
            }),
        );
        assert!(
            !out.iter().any(|o| matches!(o, Output::RouteRefresh(_))),
            "subtype {subtype}: {out:?}"
        );
        assert_eq!(h.s.state(), State::Established);
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Incoming,
        Connected(u64),
        Failed(u64),
        Bytes(u64, Vec<u8>),
        Valid(u64, u8),
        Timer(u8, u64),
        SendQueue(u64, bool, bool),
        Advance(u16),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Incoming),
            (1u64..5).prop_map(Step::Connected),
            (1u64..5).prop_map(Step::Failed),
            ((1u64..5), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(c, b)| Step::Bytes(c, b)),
            ((1u64..5), 0u8..5).prop_map(|(c, k)| Step::Valid(c, k)),
            ((0u8..4), (1u64..5)).prop_map(|(t, c)| Step::Timer(t, c)),
            ((1u64..5), any::<bool>(), any::<bool>())
                .prop_map(|(c, progressed, pending)| Step::SendQueue(c, progressed, pending)),
            any::<u16>().prop_map(Step::Advance),
        ]
    }

    proptest! {
        /// Whatever the peer sends and whatever order events come in, the session
        /// never panics, keeps at most two connections, and reports Established
        /// exactly when it has an Established connection.
        #[test]
        fn any_event_sequence_is_handled(passive in any::<bool>(), steps in proptest::collection::vec(step(), 1..60)) {
            let mut cfg = config();
            cfg.passive = passive;
            let mut h = Harness::new(cfg);
            h.ev(Event::Start);
            let mut open = std::collections::BTreeSet::new();
            for s in steps {
                let out = match s {
                    Step::Incoming => h.ev(Event::Incoming),
                    Step::Connected(c) => h.ev(Event::Connected(c)),
                    Step::Failed(c) => h.ev(Event::ConnectionFailed { conn: c, reason: "test" }),
                    Step::Bytes(c, b) => h.ev(Event::Received { conn: c, bytes: &b }),
                    Step::Valid(c, k) => {
                        let msg = match k {
                            0 => their_open(),
                            1 => Message::Keepalive,
                            2 => Message::Update(Update::end_of_rib(Family::Ipv6Unicast)),
                            3 => Message::RouteRefresh(RouteRefresh::new(Family::Ipv4Unicast)),
                            _ => Message::Notification(Notification::hold_timer_expired()),
                        };
                        h.recv(c, msg)
                    }
                    Step::Timer(t, c) => h.ev(Event::TimerExpired(match t {
                        0 => Timer::ConnectRetry,
                        1 => Timer::Hold(c),
                        2 => Timer::Keepalive(c),
                        _ => Timer::SendHold(c),
                    })),
                    Step::SendQueue(conn, progressed, pending) => {
                        h.ev(Event::SendQueue { conn, progressed, pending })
                    }
                    Step::Advance(ms) => {
                        h.now += Duration::from_millis(u64::from(ms));
                        continue;
                    }
                };
                for o in &out {
                    match o {
                        Output::Connect(c) => {
                            prop_assert!(!passive, "a passive session connected");
                            open.insert(*c);
                        }
                        Output::Accept(c) => { open.insert(*c); }
                        Output::Close(c) => { open.remove(c); }
                        _ => {}
                    }
                }
                prop_assert!(h.s.established().is_some() == (h.s.state() == State::Established));
                prop_assert!(open.len() <= 2, "connections {open:?}");
            }
        }
    }
}
