//! Two speakers on loopback, one listening, one connecting: sessions come up, routes
//! flow as differences, ROUTE-REFRESH and shutdown behave. No privileges needed.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use bgp::fsm::{self, SessionError, State};
use bgp::speaker::{
    Config, PeerConfig, PeerStatus, ReconfigureError, Reconfigured, RouteAttributes, Routes,
    Speaker,
};
use bgp::wire::{
    CeaseSubcode, Context, Family, LargeCommunity, Message, Notification, Open, PathAttribute,
    Prefix, RouteRefresh, Update, HEADER_LEN,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A port free on 127.0.0.1, below Linux's ephemeral range (32768 up): a port handed
/// out by binding port 0 could be handed out again to another test's listener while a
/// gateway still connects to it, and that listener would take the wrong gateway.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 100 * 100;
    loop {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        let port = 20_000 + offset as u16;
        if TcpListener::bind((LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

fn wait_for(what: &str, speaker: &Speaker, cond: impl Fn(&PeerStatus) -> bool) -> PeerStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let peers = speaker.peers();
        if let Some(p) = peers.iter().find(|p| cond(p)) {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {peers:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn peer(port: u16, local_as: u32, remote_as: u32, id: u8) -> PeerConfig {
    let mut p = PeerConfig::new(LOCALHOST, local_as, remote_as, Ipv4Addr::new(10, 0, 0, id));
    p.port = port;
    p.session.hold_time = 3;
    p.session.connect_retry = Duration::from_millis(200);
    p.next_hop_v6 = Some(Ipv6Addr::LOCALHOST);
    p
}

/// The router side: AS 65000, passive, listening on `port` for a gateway in AS 65001.
fn router(port: u16) -> Speaker {
    let mut cfg = peer(port, 65000, 65001, 1);
    cfg.session.passive = true;
    Speaker::spawn(Config {
        peers: vec![cfg],
        listen: vec![SocketAddr::new(LOCALHOST, port)],
    })
    .unwrap()
}

/// The gateway side: AS 65001, connecting to `port` and expecting `remote_as` there.
fn gateway(port: u16, remote_as: u32) -> Speaker {
    Speaker::spawn(Config {
        peers: vec![peer(port, 65001, remote_as, 2)],
        listen: vec![],
    })
    .unwrap()
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn routes(list: &[&str]) -> Routes {
    list.iter()
        .map(|p| {
            let attrs = RouteAttributes {
                med: Some(10),
                communities: vec![(65001 << 16) | 1],
                large_communities: vec![LargeCommunity {
                    global: 65001,
                    local1: 2,
                    local2: 3,
                }],
            };
            (p.parse::<Prefix>().unwrap(), attrs)
        })
        .collect()
}

#[test]
fn speakers_exchange_routes_over_loopback() {
    let port = free_port();
    let mut router = router(port);
    let mut gateway = gateway(port, 65000);
    gateway.set_routes(routes(&["192.0.2.10/32", "2001:db8:100::10/128"]));

    let up = wait_for("session up", &router, |p| {
        p.state == State::Established && p.stats.prefixes_received == 2
    });
    assert_eq!(up.negotiated.as_ref().unwrap().hold_time, 3);
    let g = wait_for("gateway up", &gateway, |p| p.state == State::Established);
    assert_eq!(g.prefixes_advertised, 2);
    assert_eq!(
        g.advertised,
        [p("192.0.2.10/32"), p("2001:db8:100::10/128")]
    );
    assert!(g.uptime.is_some());

    // Only the difference goes out: one withdrawal, nothing re-announced.
    gateway.set_routes(routes(&["192.0.2.10/32"]));
    wait_for("withdrawal", &router, |p| p.stats.withdrawals_received == 1);
    wait_for("withdrawn", &gateway, |g| {
        g.advertised == [p("192.0.2.10/32")]
    });
    gateway.set_routes(routes(&["192.0.2.10/32"]));
    let r = wait_for("stable", &router, |p| p.stats.withdrawals_received == 1);
    assert_eq!(r.stats.prefixes_received, 2);

    // Keepalives keep the session up past the hold time.
    std::thread::sleep(Duration::from_secs(4));
    let r = wait_for("still up", &router, |p| p.state == State::Established);
    assert!(r.stats.received.keepalive >= 2, "{r:?}");
    assert_eq!(r.stats.flaps, 0);

    // Shutdown: withdraw, then Cease with the message; the router records it.
    // Waiting is bounded only so that a hung shutdown fails instead of blocking.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        gateway.shutdown("gateway maintenance");
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("shutdown returns");
    let r = wait_for("cease", &router, |p| p.state != State::Established);
    assert_eq!(r.stats.withdrawals_received, 2);
    match r.last_error {
        Some(SessionError::NotificationReceived(n)) => {
            assert_eq!(n.shutdown_message().as_deref(), Some("gateway maintenance"))
        }
        other => panic!("{other:?}"),
    }
    router.shutdown("done");
}

#[test]
fn wrong_remote_as_is_refused_with_bad_peer_as() {
    let port = free_port();
    let _router = router(port);
    let gateway = gateway(port, 65099);
    let g = wait_for(
        "bad peer AS",
        &gateway,
        |p| matches!(&p.last_error, Some(SessionError::NotificationSent(n)) if (n.code, n.subcode) == (2, 2)),
    );
    assert_ne!(g.state, State::Established);
}

#[test]
fn refused_connections_are_retried_until_the_peer_appears() {
    let port = free_port();
    let gateway = gateway(port, 65000);
    wait_for("connection refused", &gateway, |p| {
        matches!(p.last_error, Some(SessionError::Connection(_)))
    });
    let _router = router(port);
    wait_for("session up", &gateway, |p| p.state == State::Established);
}

/// A peer written out by hand on a plain socket, so that the test sees every message
/// the speaker sends, in order.
struct RawPeer {
    stream: TcpStream,
    /// The speaker's OPEN.
    open: Open,
}

impl RawPeer {
    /// A peer on `stream`, connected to the speaker or accepted from it, before any
    /// message.
    fn on(stream: TcpStream) -> RawPeer {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawPeer {
            stream,
            open: Open::new(0, 0, Ipv4Addr::UNSPECIFIED, vec![]),
        }
    }

    /// Accepts the gateway's connection on `listener` and brings the session up as
    /// AS 65000 with both families, ROUTE-REFRESH and 4-octet AS numbers.
    fn accept(listener: &TcpListener) -> RawPeer {
        let (stream, _) = listener.accept().unwrap();
        let mut peer = RawPeer::on(stream);
        peer.establish(fsm::Config::new(65000, 65001, Ipv4Addr::new(10, 0, 0, 1)));
        peer
    }

    /// Brings the session up as `ours` says: the speaker's OPEN (kept), ours, then a
    /// KEEPALIVE each way.
    fn establish(&mut self, ours: fsm::Config) {
        match self.recv() {
            Message::Open(open) => self.open = open,
            other => panic!("expected an OPEN, got {other:?}"),
        }
        self.send(&Message::Open(ours.open()));
        assert_eq!(self.recv(), Message::Keepalive);
        self.send(&Message::Keepalive);
    }

    /// The End-of-RIB of each family, all that a new session gets while there are no
    /// routes.
    fn end_of_rib(&mut self) {
        assert_eq!(self.update(), Update::default());
        assert_eq!(self.update(), Update::end_of_rib(Family::Ipv6Unicast));
    }

    /// The NOTIFICATION that ends the session (KEEPALIVEs before it are skipped), after
    /// which the speaker closes the connection.
    fn notification(&mut self) -> Notification {
        let n = loop {
            match self.recv() {
                Message::Keepalive => {}
                Message::Notification(n) => break n,
                other => panic!("expected a NOTIFICATION, got {other:?}"),
            }
        };
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{rest:?} after {n:?}");
        n
    }

    fn send(&mut self, msg: &Message) {
        let bytes = msg.to_bytes(Context::FOUR_OCTET).unwrap();
        self.stream.write_all(&bytes).unwrap();
    }

    /// The next message; fails after 10 seconds of silence.
    fn recv(&mut self) -> Message {
        let mut msg = vec![0u8; HEADER_LEN];
        self.stream.read_exact(&mut msg).unwrap();
        let len = usize::from(u16::from_be_bytes([msg[16], msg[17]]));
        msg.resize(len, 0);
        self.stream.read_exact(&mut msg[HEADER_LEN..]).unwrap();
        Message::parse(&msg, Context::FOUR_OCTET).unwrap()
    }

    /// The next UPDATE. KEEPALIVEs are answered, so that the session outlives its
    /// hold time however slowly the test runs.
    fn update(&mut self) -> Update {
        loop {
            match self.recv() {
                Message::Keepalive => self.send(&Message::Keepalive),
                Message::Update(u) => return u,
                other => panic!("expected an UPDATE, got {other:?}"),
            }
        }
    }

    /// UPDATEs until they have announced `count` prefixes; their prefixes, sorted.
    fn announcements(&mut self, count: usize) -> Vec<String> {
        let mut seen = Vec::new();
        while seen.len() < count {
            let u = self.update();
            assert_eq!(u.withdrawn_all().count(), 0, "{u:?}");
            assert!(u.announced().count() > 0, "{u:?}");
            seen.extend(u.announced().map(Prefix::to_string));
        }
        seen.sort();
        seen
    }
}

#[test]
fn routes_then_end_of_rib_then_again_on_route_refresh() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let gateway = gateway(port, 65000);
    gateway.set_routes(routes(&[
        "192.0.2.10/32",
        "192.0.2.11/32",
        "2001:db8:100::10/128",
    ]));
    let mut peer = RawPeer::accept(&listener);

    // RFC 4271 §9.2 then RFC 4724 §2: the whole Adj-RIB-Out, then one End-of-RIB per
    // negotiated family, nothing in between.
    assert_eq!(
        peer.announcements(3),
        ["192.0.2.10/32", "192.0.2.11/32", "2001:db8:100::10/128"]
    );
    assert_eq!(peer.update(), Update::default(), "IPv4 End-of-RIB");
    assert_eq!(
        peer.update(),
        Update::end_of_rib(Family::Ipv6Unicast),
        "IPv6 End-of-RIB"
    );
    assert!(matches!(
        Update::end_of_rib(Family::Ipv6Unicast).attributes[..],
        [PathAttribute::MpUnreach(ref mp)] if mp.withdrawn.is_empty()
    ));
    let g = wait_for("gateway up", &gateway, |p| p.state == State::Established);
    let updates_before = g.stats.sent.update;
    assert_eq!(g.prefixes_advertised, 3);

    // RFC 2918 §4: each ROUTE-REFRESH is answered with exactly that family's routes.
    peer.send(&Message::RouteRefresh(RouteRefresh::new(
        Family::Ipv4Unicast,
    )));
    peer.send(&Message::RouteRefresh(RouteRefresh::new(
        Family::Ipv6Unicast,
    )));
    assert_eq!(peer.announcements(2), ["192.0.2.10/32", "192.0.2.11/32"]);
    assert_eq!(peer.announcements(1), ["2001:db8:100::10/128"]);
    // Then nothing more: the next UPDATE is the withdrawal asked for now.
    gateway.set_routes(routes(&["192.0.2.10/32", "2001:db8:100::10/128"]));
    let next = peer.update();
    assert_eq!(
        next.withdrawn_all()
            .map(Prefix::to_string)
            .collect::<Vec<_>>(),
        ["192.0.2.11/32"],
        "{next:?}"
    );
    assert_eq!(next.announced().count(), 0);
    let g = wait_for("counted", &gateway, |p| p.prefixes_advertised == 2);
    assert_eq!(g.stats.received.route_refresh, 2);
    // Both routes with equal attributes share one UPDATE, so two answers and the
    // withdrawal.
    assert_eq!(g.stats.sent.update, updates_before + 3);
}

/// A hand-written peer at `ip` on loopback: its listener and the speaker's config for it
/// (hold time 30 s, so that the test needs not answer keepalives).
fn raw_peer_at(ip: [u8; 4]) -> (TcpListener, PeerConfig) {
    let listener = TcpListener::bind((Ipv4Addr::from(ip), 0)).unwrap();
    let mut cfg = peer(listener.local_addr().unwrap().port(), 65001, 65000, 2);
    cfg.address = IpAddr::from(ip);
    cfg.session.hold_time = 30;
    (listener, cfg)
}

/// A speaker with one peer, `cfg`, whose session with the raw peer listening on
/// `listener` is up and past its End-of-RIBs.
fn raw_session(listener: &TcpListener, cfg: PeerConfig) -> (Speaker, RawPeer) {
    let speaker = Speaker::spawn(Config {
        peers: vec![cfg],
        listen: vec![],
    })
    .unwrap();
    let mut peer = RawPeer::accept(listener);
    peer.end_of_rib();
    (speaker, peer)
}

/// Reconfiguring peer by peer: an unchanged session goes on with no NOTIFICATION and
/// keeps getting UPDATEs; a removed peer gets Cease / Peer De-configured, a changed one
/// Cease / Other Configuration Change and a new session with its new settings, and a new
/// peer is connected; the changed peer's counters go on. (Restarting the speaker, as
/// before, sends each one Cease / Administrative Shutdown and connects again.)
#[test]
fn reconfigure_touches_only_the_peers_that_changed() {
    let (kept_l, kept) = raw_peer_at([127, 0, 0, 2]);
    let (removed_l, removed) = raw_peer_at([127, 0, 0, 3]);
    let (changed_l, changed) = raw_peer_at([127, 0, 0, 4]);
    let (added_l, added) = raw_peer_at([127, 0, 0, 5]);
    let speaker = Speaker::spawn(Config {
        peers: vec![kept.clone(), removed.clone(), changed.clone()],
        listen: vec![],
    })
    .unwrap();
    let mut sessions: Vec<RawPeer> = [&kept_l, &removed_l, &changed_l]
        .into_iter()
        .map(RawPeer::accept)
        .collect();
    for s in &mut sessions {
        s.end_of_rib();
    }
    let [mut kept_s, mut removed_s, mut changed_s] =
        <[RawPeer; 3]>::try_from(sessions).ok().unwrap();
    assert_eq!(changed_s.open.hold_time, 30);

    let mut changed_new = changed.clone();
    changed_new.session.hold_time = 9;
    let done = speaker
        .reconfigure(Config {
            peers: vec![kept.clone(), changed_new, added.clone()],
            listen: vec![],
        })
        .unwrap();
    assert_eq!(
        done,
        Reconfigured {
            kept: vec![kept.address],
            changed: vec![changed.address],
            added: vec![added.address],
            removed: vec![removed.address],
        }
    );
    assert_eq!(
        removed_s.notification(),
        Notification::cease(CeaseSubcode::PeerDeconfigured)
    );
    assert_eq!(
        changed_s.notification(),
        Notification::cease(CeaseSubcode::OtherConfigurationChange)
    );
    let mut changed_s = RawPeer::accept(&changed_l);
    assert_eq!(changed_s.open.hold_time, 9, "the new settings");
    let mut added_s = RawPeer::accept(&added_l);
    for s in [&mut changed_s, &mut added_s] {
        s.end_of_rib();
    }
    let peers = speaker.peers();
    assert_eq!(
        peers.iter().map(|p| p.address).collect::<Vec<_>>(),
        [kept.address, changed.address, added.address]
    );
    assert_eq!(peers[0].stats.flaps, 0, "{peers:?}");
    // The changed peer's counters go on across its new settings: one flap, the Cease,
    // and a second OPEN each way.
    let c = wait_for("changed peer up again", &speaker, |p| {
        p.address == changed.address && p.state == State::Established
    });
    assert_eq!(c.stats.flaps, 1, "{c:?}");
    assert_eq!(c.stats.sent.notification, 1, "{c:?}");
    assert_eq!((c.stats.sent.open, c.stats.received.open), (2, 2), "{c:?}");

    // Every session, the untouched one first, gets the next route on its connection.
    speaker.set_routes(routes(&["192.0.2.10/32"]));
    for s in [&mut kept_s, &mut changed_s, &mut added_s] {
        assert_eq!(s.announcements(1), ["192.0.2.10/32"]);
    }
    let k = wait_for("kept counted", &speaker, |p| {
        p.address == kept.address && p.prefixes_advertised == 1
    });
    assert_eq!(k.state, State::Established);
    assert_eq!(k.stats.flaps, 0);
    assert_eq!(k.stats.sent.notification, 0);
    // The removed peer is not connected to again.
    removed_l.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        removed_l.accept().is_err(),
        "the removed peer was connected to"
    );
}

/// A peer that stops reading after the session is up: what the speaker writes waits in
/// its socket's send queue behind the peer's full receive buffer, so `unacked_bytes`
/// tells that a withdrawal out of the Adj-RIB-Out has not reached the peer yet. Once
/// the peer reads everything, its TCP has acknowledged every byte and the count is 0.
#[test]
fn unacked_bytes_count_what_a_stalled_peer_has_not_acknowledged() {
    // Keepalives every 30 s: none wakes the speaker while the test runs, so only the
    // speaker sampling the queue again shows it emptied.
    let (speaker, mut peer) = small_window_session(|cfg| cfg.session.hold_time = 90);
    wait_for("session up, nothing in flight", &speaker, |p| {
        p.state == State::Established && p.unacked_bytes == 0
    });

    // About 100 kB of UPDATEs, far more than the peer's receive buffer holds.
    const COUNT: usize = 20_000;
    let many = host_routes(COUNT);
    speaker.set_routes(many);
    let s = wait_for("announced", &speaker, |p| p.prefixes_advertised == COUNT);
    assert!(
        s.unacked_bytes > 0,
        "nothing in flight to a peer not reading"
    );
    speaker.set_routes(Routes::new());
    let s = wait_for("withdrawn from the Adj-RIB-Out", &speaker, |p| {
        p.prefixes_advertised == 0
    });
    assert_eq!(s.state, State::Established);
    assert!(
        s.unacked_bytes > 0,
        "the withdrawal waits behind the announcements, unacknowledged"
    );

    let (mut announced, mut withdrawn) = (0, 0);
    while withdrawn < COUNT {
        let u = peer.update();
        announced += u.announced().count();
        withdrawn += u.withdrawn_all().count();
    }
    assert_eq!(announced, COUNT);
    let s = wait_for("everything acknowledged", &speaker, |p| {
        p.unacked_bytes == 0
    });
    assert_eq!((s.state, s.prefixes_advertised), (State::Established, 0));
}

/// A listener whose accepted sockets have a small receive buffer, so that a peer that
/// does not read soon stops acknowledging.
fn small_window_listener() -> TcpListener {
    // Set before listen: accepted sockets inherit it, and the window scale offered in
    // the handshake is chosen from it (tcp(7), SO_RCVBUF).
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(&SocketAddr::new(LOCALHOST, 0).into()).unwrap();
    socket.listen(1).unwrap();
    TcpListener::from(socket)
}

/// `count` /32 routes (about 5 bytes each in an UPDATE).
fn host_routes(count: usize) -> Routes {
    (0..count)
        .map(|i| {
            let prefix = format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 0xff, i & 0xff);
            (p(&prefix), RouteAttributes::default())
        })
        .collect()
}

/// A speaker with one session (as `adjust` sets it) to a raw peer whose socket has a small
/// receive buffer, past the initial UPDATE and End-of-RIB.
fn small_window_session(adjust: impl FnOnce(&mut PeerConfig)) -> (Speaker, RawPeer) {
    let listener = small_window_listener();
    let mut cfg = peer(listener.local_addr().unwrap().port(), 65001, 65000, 2);
    adjust(&mut cfg);
    raw_session(&listener, cfg)
}

/// RFC 9687: a peer that keeps sending KEEPALIVEs but stops reading holds our UPDATEs
/// (withdrawals too) forever; once it has taken nothing for the SendHoldTime, the
/// speaker gives up with NOTIFICATION Send Hold Timer Expired and resets the connection
/// (a FIN would wait behind the bytes the peer does not take), so the router drops our
/// routes instead of using stale ones.
#[test]
fn a_peer_that_stops_reading_is_dropped_after_the_send_hold_time() {
    let (speaker, peer) = small_window_session(|cfg| {
        cfg.session.hold_time = 3;
        cfg.session.send_hold_time = Some(Duration::from_secs(4));
        // No new connection while the test looks at the dropped one.
        cfg.session.connect_retry = Duration::from_secs(600);
    });
    // KEEPALIVEs keep the session's hold timer going; nothing is read from now on.
    let mut keepalives = peer.stream.try_clone().unwrap();
    let keepalive = Message::Keepalive.to_bytes(Context::FOUR_OCTET).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let keepalives = std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) && keepalives.write_all(&keepalive).is_ok() {
            std::thread::sleep(Duration::from_millis(300));
        }
    });

    const COUNT: usize = 20_000;
    let many = host_routes(COUNT);
    let sent_at = Instant::now();
    speaker.set_routes(many);
    let s = wait_for("announced, not taken", &speaker, |p| {
        p.prefixes_advertised == COUNT && p.unacked_bytes > 0
    });
    assert_eq!(s.state, State::Established);

    let expired = SessionError::NotificationSent(Notification::send_hold_timer_expired());
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = speaker.peers().remove(0);
        if s.last_error.as_ref() == Some(&expired) {
            break s;
        }
        let brief = (s.state, &s.last_error, s.unacked_bytes);
        assert_eq!(s.state, State::Established, "{brief:?}");
        assert!(Instant::now() < deadline, "still up: {brief:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        sent_at.elapsed() >= Duration::from_secs(4),
        "dropped before the send hold time"
    );
    assert_ne!(s.state, State::Established);
    assert_eq!((s.prefixes_advertised, s.unacked_bytes), (0, 0));
    assert!(s.advertised.is_empty());
    assert_eq!(s.stats.flaps, 1);

    // The peer, still not reading, learns that the connection is gone: reset, since
    // a FIN would wait behind the UPDATEs it did not take.
    stop.store(true, Ordering::Relaxed);
    keepalives.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        if let Some(e) = peer.stream.take_error().unwrap() {
            break e;
        }
        assert!(Instant::now() < deadline, "the connection was not reset");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
}

/// A router side (AS 65000) awaiting the gateway at `ip` on `port`.
fn passive_peer(ip: [u8; 4], port: u16) -> PeerConfig {
    let mut r = peer(port, 65000, 65001, 1);
    r.address = IpAddr::from(ip);
    r.session.passive = true;
    r
}

/// A gateway (AS 65001) connecting from `ip` to the router's `port`, signing its segments
/// with `md5` (RFC 2385) if given.
fn gateway_from(ip: [u8; 4], port: u16, md5: Option<&str>) -> Speaker {
    let mut g = peer(port, 65001, 65000, ip[3]);
    g.local_address = Some(IpAddr::from(ip));
    g.md5_password = md5.map(str::to_owned);
    Speaker::spawn(Config {
        peers: vec![g],
        listen: vec![],
    })
    .unwrap()
}

/// The listeners change in place: the sessions they accepted stay up, a wildcard
/// listener can replace a specific one on the same port (the old one closes first), and
/// an address that cannot be bound changes nothing, not even the peers.
#[test]
fn reconfigure_moves_the_listeners_and_keeps_the_sessions() {
    let port = free_port();
    let (a, b) = ([127, 0, 0, 7], [127, 0, 0, 8]);
    let router = Speaker::spawn(Config {
        peers: vec![passive_peer(a, port)],
        listen: vec![SocketAddr::new(LOCALHOST, port)],
    })
    .unwrap();
    let _gateway_a = gateway_from(a, port, None);
    let established = |ip: [u8; 4]| {
        move |p: &PeerStatus| p.address == IpAddr::from(ip) && p.state == State::Established
    };
    let up = wait_for("session A", &router, established(a));

    let wildcard = vec![SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))];
    let both = vec![passive_peer(a, port), passive_peer(b, port)];
    let done = router
        .reconfigure(Config {
            peers: both.clone(),
            listen: wildcard.clone(),
        })
        .unwrap();
    assert_eq!((done.kept, done.added), (vec![a.into()], vec![b.into()]));
    let _gateway_b = gateway_from(b, port, None);
    wait_for(
        "session B, through the wildcard listener",
        &router,
        established(b),
    );
    let still = wait_for("session A", &router, established(a));
    assert_eq!(still.stats.flaps, 0, "{still:?}");
    assert!(
        still.uptime > up.uptime,
        "A's session is the first one: {still:?}"
    );

    // A port held elsewhere: refused, and the peers (B stays) and listeners stay.
    let taken = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let refused = router.reconfigure(Config {
        peers: vec![passive_peer(a, port)],
        listen: vec![taken_addr],
    });
    match refused {
        Err(ReconfigureError::Listen { addr, .. }) => assert_eq!(addr, taken_addr),
        other => panic!("expected a Listen error: {other:?}"),
    }
    let peers = router.peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers
        .iter()
        .all(|p| p.state == State::Established && p.stats.flaps == 0));
    // The wildcard listener is bound again: it takes a connection now, and a third
    // gateway, added next, gets a session through it.
    TcpStream::connect((LOCALHOST, port)).expect("the wildcard listener is back");
    let c = [127, 0, 0, 9];
    let mut three = both;
    three.push(passive_peer(c, port));
    router
        .reconfigure(Config {
            peers: three,
            listen: wildcard,
        })
        .unwrap();
    let _gateway_c = gateway_from(c, port, None);
    wait_for(
        "session C, through the wildcard listener",
        &router,
        established(c),
    );
}

/// A peer's new TCP MD5 key (RFC 2385) reaches the running listener: the peer, now
/// signing its segments, gets its session. A listener without the key drops them.
#[test]
fn reconfigure_gives_the_listener_a_new_md5_key() {
    let port = free_port();
    let listen = vec![SocketAddr::new(LOCALHOST, port)];
    let gw = [127, 0, 0, 6];
    let gateway_ip = IpAddr::from(gw);
    let mut r = passive_peer(gw, port);
    let router = Speaker::spawn(Config {
        peers: vec![r.clone()],
        listen: listen.clone(),
    })
    .unwrap();
    r.md5_password = Some("secret".into());
    let done = router
        .reconfigure(Config {
            peers: vec![r.clone()],
            listen: listen.clone(),
        })
        .unwrap();
    assert_eq!(done.changed, [gateway_ip]);

    let mut gateway = gateway_from(gw, port, Some("secret"));
    wait_for("signed session up", &router, |p| {
        p.state == State::Established
    });

    // And a key taken away is gone: an unsigned peer gets its session.
    gateway.shutdown("unsigned from now on");
    r.md5_password = None;
    router
        .reconfigure(Config {
            peers: vec![r],
            listen,
        })
        .unwrap();
    let _gateway = gateway_from(gw, port, None);
    wait_for("unsigned session up", &router, |p| {
        p.state == State::Established
    });
}

/// A reconfiguration refused for an address it cannot bind leaves the listeners' TCP
/// MD5 keys as they were, not only the peers: a peer still signing with its old key gets
/// its session through the listener that stayed.
#[test]
fn a_refused_listener_change_puts_the_md5_keys_back() {
    let port = free_port();
    let listen = vec![SocketAddr::new(LOCALHOST, port)];
    let a = [127, 0, 0, 10];
    let mut r = passive_peer(a, port);
    r.md5_password = Some("old".into());
    let router = Speaker::spawn(Config {
        peers: vec![r.clone()],
        listen: listen.clone(),
    })
    .unwrap();
    let taken = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let mut new_key = r;
    new_key.md5_password = Some("new".into());
    let refused = router.reconfigure(Config {
        peers: vec![new_key],
        listen: vec![listen[0], taken.local_addr().unwrap()],
    });
    assert!(
        matches!(refused, Err(ReconfigureError::Listen { .. })),
        "{refused:?}"
    );
    let _gateway = gateway_from(a, port, Some("old"));
    wait_for("session signed with the old key", &router, |p| {
        p.state == State::Established
    });
}

/// A connection from `from` to `to`, if it completes within a second: a listener
/// holding a TCP MD5 key (RFC 2385) for `from` drops its unsigned SYNs.
fn connect_from(from: [u8; 4], to: SocketAddr) -> Option<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(IpAddr::from(from), 0).into())
        .unwrap();
    socket
        .connect_timeout(&to.into(), Duration::from_secs(1))
        .ok()?;
    Some(TcpStream::from(socket))
}

fn unsigned_connect(from: [u8; 4], to: SocketAddr) -> bool {
    connect_from(from, to).is_some()
}

/// An IPv4 listener gets only the IPv4 peers' TCP MD5 keys: an IPv6 peer never reaches
/// it, and Linux refuses a non-IPv4 key on an IPv4 socket (EINVAL), which used to fail
/// the spawn and every reconfiguration. The IPv4 peer's key is still enforced.
#[test]
fn an_ipv4_listener_takes_the_ipv4_keys_and_skips_the_ipv6_ones() {
    let port = free_port();
    let listen = vec![SocketAddr::new(LOCALHOST, port)];
    let gw = [127, 0, 0, 11];
    let mut r = passive_peer(gw, port);
    r.md5_password = Some("secret".into());
    let mut v6 = passive_peer([0; 4], port);
    v6.address = IpAddr::V6(Ipv6Addr::LOCALHOST);
    v6.md5_password = Some("other".into());
    let router = Speaker::spawn(Config {
        peers: vec![r.clone(), v6.clone()],
        listen: listen.clone(),
    })
    .expect("an IPv6 peer's key does not stop an IPv4 listener");
    assert!(
        !unsigned_connect(gw, listen[0]),
        "the listener takes unsigned connections from a peer with a key"
    );
    let _gateway = gateway_from(gw, port, Some("secret"));
    wait_for("signed session up", &router, |p| {
        p.address == IpAddr::from(gw) && p.state == State::Established
    });

    // A reconfiguration with a new IPv6 key is taken too.
    v6.md5_password = Some("changed".into());
    let done = router
        .reconfigure(Config {
            peers: vec![r, v6],
            listen,
        })
        .expect("an IPv6 peer's new key does not stop an IPv4 listener");
    assert_eq!(done.changed, [IpAddr::V6(Ipv6Addr::LOCALHOST)]);
}

/// RFC 4486 §4: a connection the speaker accepts and then refuses is told so with Cease /
/// Connection Rejected before it is closed: the peer's connection while its session waits
/// in Idle after a failure (a session that connects itself; a passive one accepts at
/// once), and a connection from an address that is no peer.
#[test]
fn a_connection_refused_in_idle_gets_cease_connection_rejected() {
    let port = free_port();
    let listen = SocketAddr::new(LOCALHOST, port);
    let gw = [127, 0, 0, 12];
    let mut r = passive_peer(gw, port);
    // It connects too, to 127.0.0.12, where nothing listens; the peer's own connection
    // reaches its listener. Idle for long after the failure below.
    r.session.passive = false;
    r.session.connect_retry = Duration::from_secs(600);
    let router = Speaker::spawn(Config {
        peers: vec![r],
        listen: vec![listen],
    })
    .unwrap();
    let mut peer = RawPeer::on(connect_from(gw, listen).expect("the listener takes the peer"));
    peer.establish(fsm::Config::new(65001, 65000, Ipv4Addr::new(10, 0, 0, 12)));
    wait_for("session up", &router, |p| p.state == State::Established);
    drop(peer);
    wait_for("session idle after the close", &router, |p| {
        p.state == State::Idle
    });

    let rejected = Notification::cease(CeaseSubcode::ConnectionRejected);
    let mut again = RawPeer::on(connect_from(gw, listen).expect("the listener takes the peer"));
    assert_eq!(again.notification(), rejected);
    let s = wait_for("still idle", &router, |p| p.state == State::Idle);
    assert_eq!(s.stats.sent.notification, 0, "{s:?}");

    let mut stranger =
        RawPeer::on(connect_from([127, 0, 0, 13], listen).expect("the listener takes anyone"));
    assert_eq!(stranger.notification(), rejected);
}

/// A speaker whose whole configuration is removed (the daemon's `[bgp]` section) tells
/// every peer Cease / Peer De-configured (RFC 4486 subcode 3), as a reconfiguration tells
/// a peer it removes, after withdrawing its routes.
#[test]
fn deconfigure_tells_every_peer_it_was_removed() {
    let (listener, cfg) = raw_peer_at([127, 0, 0, 14]);
    let (mut speaker, mut peer) = raw_session(&listener, cfg);
    speaker.set_routes(routes(&["192.0.2.10/32"]));
    assert_eq!(peer.update().announced().count(), 1);
    speaker.deconfigure();
    assert_eq!(peer.update().withdrawn_all().count(), 1);
    assert_eq!(
        peer.notification(),
        Notification::cease(CeaseSubcode::PeerDeconfigured)
    );
    assert!(speaker.ended());
}
