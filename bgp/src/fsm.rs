//! The BGP session state machine for one peer (RFC 4271 §8), sans-IO: events and
//! received bytes go in with the current time, and [`Output`]s come out (bytes to
//! send, connections to open or close, timers to arm or cancel, state changes).
//! There are no sockets or clocks in here, so tests drive it with virtual time.
//!
//! The RFC runs one FSM per TCP connection and resolves collisions (§6.8) between
//! them; here one [`Session`] owns up to two connections to the same peer and does
//! that resolution itself. The reported [`State`] is that of the most advanced
//! connection, or Idle/Active when there is none.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::wire::{
    frame, kind, Capability, CeaseSubcode, Context, DecodeError, EncodeError, Family, Message,
    Notification, Open, OpenError, Update,
};

/// RFC 4271 §8.2.2: the hold timer while waiting for the peer's OPEN ("a large
/// value", 4 minutes suggested).
const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);

/// RFC 9687 §6: the SendHoldTime suggested is the greater of 8 minutes and twice the
/// negotiated hold time.
const MIN_SEND_HOLD_TIME: Duration = Duration::from_secs(480);

/// Session parameters that do not change while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub local_as: u32,
    pub remote_as: u32,
    pub router_id: Ipv4Addr,
    /// Hold time we propose: 0 (no keepalives) or at least 3 seconds (§4.2).
    pub hold_time: u16,
    /// The lowest hold time accepted from the peer, 0 for any (§4.2: "an implementation
    /// MAY reject connections on the basis of the Hold Time"). A lower proposal, 0
    /// included, is refused with NOTIFICATION OPEN Message Error / Unacceptable Hold
    /// Time (§6.2): the peer cannot then turn off the session's liveness check by
    /// proposing 0, whatever `hold_time` we propose.
    pub min_hold_time: u16,
    /// Only accept connections, never initiate (§8.1.1 PassiveTcpEstablishment).
    pub passive: bool,
    /// ConnectRetryTime (§10): the connect timeout and the first retry delay,
    /// each scaled by a jitter factor in 0.75..1.0.
    pub connect_retry: Duration,
    /// Consecutive failures double the retry delay up to this (§8.1.1,
    /// DampPeerOscillations).
    pub max_retry: Duration,
    /// Families advertised with the multiprotocol capability (RFC 4760 §8).
    pub families: Vec<Family>,
    /// SendHoldTime (RFC 9687 §4.4, §6): how long an Established connection may hold
    /// bytes the peer does not take before it is closed with NOTIFICATION Send Hold
    /// Timer Expired, so that a peer that stopped reading stops using our routes too.
    /// `None` is the RFC's default, the greater of 8 minutes and twice the negotiated
    /// hold time; `Some(Duration::ZERO)` turns it off. A value not above the negotiated
    /// hold time is raised to a second above it (§4.4: it MUST be greater).
    pub send_hold_time: Option<Duration>,
}

impl Config {
    /// Defaults for an eBGP session toward an upstream router.
    pub fn new(local_as: u32, remote_as: u32, router_id: Ipv4Addr) -> Config {
        Config {
            local_as,
            remote_as,
            router_id,
            hold_time: 90,
            min_hold_time: 0,
            passive: false,
            connect_retry: Duration::from_secs(5),
            max_retry: Duration::from_secs(120),
            families: Family::ALL.to_vec(),
            send_hold_time: None,
        }
    }

    /// The OPEN we send (§4.2), all capabilities in one optional parameter. Never
    /// graceful restart (RFC 4724): the dataplane goes with the process, so no
    /// forwarding state outlives a restart, and a router that kept a restarting
    /// gateway's routes would send its traffic into nothing.
    pub fn open(&self) -> Open {
        let mut caps: Vec<Capability> = self
            .families
            .iter()
            .map(|&f| Capability::multiprotocol(f))
            .collect();
        caps.push(Capability::RouteRefresh);
        caps.push(Capability::FourOctetAs { asn: self.local_as });
        Open::new(self.local_as, self.hold_time, self.router_id, caps)
    }
}

/// RFC 4271 §10: KeepaliveTimer and ConnectRetryTimer are set to their base value
/// times a random factor uniform in 0.75..1.0, drawn anew each time, so that
/// speakers that start together (gateways rebooted at once, a router coming back)
/// do not connect and send in lockstep. The generator is splitmix64 from a seed the
/// driver passes in, which keeps the session free of clocks and entropy sources and
/// its outputs reproducible in tests.
#[derive(Debug, Clone)]
struct Jitter {
    state: u64,
}

impl Jitter {
    /// Fractional bits of the factor.
    const BITS: u32 = 24;

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `base` times a factor in 0.75..1.0, in integer arithmetic so that no
    /// configured value can overflow.
    fn apply(&mut self, base: Duration) -> Duration {
        let fraction = u128::from(self.next() >> (64 - Self::BITS));
        let scaled = (base.as_nanos() * ((3 << Self::BITS) + fraction)) >> (Self::BITS + 2);
        // At most `base`, so the seconds fit.
        Duration::new(
            (scaled / 1_000_000_000) as u64,
            (scaled % 1_000_000_000) as u32,
        )
    }
}

/// Identifies one TCP connection of a session. The session allocates them.
pub type ConnId = u64;

/// The session states of RFC 4271 §8.2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The timers of §8 (ConnectRetryTimer, HoldTimer, KeepaliveTimer) and RFC 9687's
/// SendHoldTimer, all but the first per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    ConnectRetry,
    Hold(ConnId),
    Keepalive(ConnId),
    SendHold(ConnId),
}

/// Why a session is stopped: the Cease subcode (RFC 4486) its NOTIFICATION carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason<'a> {
    /// Administrative Shutdown, with this shutdown communication (RFC 8203).
    Shutdown(&'a str),
    /// Peer De-configured: the peer was removed from the configuration.
    Deconfigured,
    /// Other Configuration Change: the peer's settings changed, and the session starts
    /// again with the new ones.
    Reconfigured,
}

impl StopReason<'_> {
    fn notification(self) -> Notification {
        match self {
            StopReason::Shutdown(message) => Notification::shutdown(message),
            StopReason::Deconfigured => Notification::cease(CeaseSubcode::PeerDeconfigured),
            StopReason::Reconfigured => Notification::cease(CeaseSubcode::OtherConfigurationChange),
        }
    }
}

/// Inputs (the events of §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Events 1 and 3, ManualStart / AutomaticStart (with PassiveTcpEstablishment
    /// when configured passive: events 4 and 5).
    Start,
    /// Event 2, ManualStop: a Cease NOTIFICATION for `reason` on every connection that
    /// has sent its OPEN.
    Stop(StopReason<'a>),
    /// Events 16/17, TcpCRAcked / TcpConnectionConfirmed: our connect completed.
    Connected(ConnId),
    /// Event 18, TcpConnectionFails: a connect failed or the connection closed.
    ConnectionFailed { conn: ConnId, reason: &'a str },
    /// Event 14, TcpConnection_Valid: the peer connected to us. The session answers
    /// with [`Output::Accept`] or [`Output::Refuse`].
    Incoming,
    /// Bytes read from a connection.
    Received { conn: ConnId, bytes: &'a [u8] },
    /// How the bytes sent on a connection fare, which only the driver sees (RFC 9687
    /// §4.3): `progressed` when the peer took some since the last report (its TCP
    /// acknowledged them), `pending` when some still wait, queued or unacknowledged.
    /// Report it after writing and whenever the send queue is looked at again. An
    /// Established connection with bytes pending and none taken for the SendHoldTime
    /// is closed with NOTIFICATION Send Hold Timer Expired.
    SendQueue {
        conn: ConnId,
        progressed: bool,
        pending: bool,
    },
    /// Events 9-11: a timer armed with [`Output::ArmTimer`] fired.
    TimerExpired(Timer),
}

/// What the session asks of its driver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open a TCP connection to the peer and report [`Event::Connected`] or
    /// [`Event::ConnectionFailed`] for it.
    Connect(ConnId),
    /// Keep the incoming connection, known from now on by this id.
    Accept(ConnId),
    /// Close the incoming connection without using it, after sending it this
    /// NOTIFICATION if the socket takes it at once (RFC 4486 §4: a connection accepted
    /// and then disallowed SHOULD be told so). The session does not count it as sent:
    /// the connection was never the session's.
    Refuse(Notification),
    Send(ConnId, Vec<u8>),
    /// Close after sending what was queued.
    Close(ConnId),
    ArmTimer(Timer, Instant),
    CancelTimer(Timer),
    StateChanged {
        from: State,
        to: State,
    },
    /// The session is Established on this connection: send the Adj-RIB-Out.
    Established {
        conn: ConnId,
        negotiated: Negotiated,
    },
    /// The session left Established: forget the Adj-RIB-Out.
    Down,
    /// The peer asked for our routes again (RFC 2918 §4).
    RouteRefresh(Family),
}

/// What the two OPENs agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The smaller of both proposals (§4.2); 0 means no keepalives.
    pub hold_time: u16,
    pub remote_as: u32,
    pub remote_id: Ipv4Addr,
    /// Both sides advertised 4-octet AS support (RFC 6793 §4).
    pub four_octet_as: bool,
    /// Families both sides advertised (RFC 4760 §8).
    pub families: Vec<Family>,
    pub route_refresh: bool,
    /// The peer advertised graceful restart (RFC 4724).
    pub peer_graceful_restart: bool,
}

impl Negotiated {
    pub fn context(&self) -> Context {
        Context {
            four_octet_as: self.four_octet_as,
        }
    }

    /// KEEPALIVE interval: a third of the hold time (§10), before jitter.
    pub fn keepalive(&self) -> Option<Duration> {
        (self.hold_time > 0).then(|| Duration::from_secs(u64::from(self.hold_time)) / 3)
    }
}

/// Why the session last went down or failed to come up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The peer sent this NOTIFICATION.
    NotificationReceived(Notification),
    /// We sent this NOTIFICATION (a bad message, hold timer expiry, shutdown).
    NotificationSent(Notification),
    /// The TCP connection failed or was closed without a NOTIFICATION.
    Connection(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::NotificationReceived(n) => write!(f, "received NOTIFICATION: {n}"),
            SessionError::NotificationSent(n) => write!(f, "sent NOTIFICATION: {n}"),
            SessionError::Connection(reason) => write!(f, "connection: {reason}"),
        }
    }
}

/// Messages by type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounts {
    pub open: u64,
    pub update: u64,
    pub notification: u64,
    pub keepalive: u64,
    pub route_refresh: u64,
}

impl MessageCounts {
    fn count(&mut self, kind: u8) {
        match kind {
            kind::OPEN => self.open += 1,
            kind::UPDATE => self.update += 1,
            kind::NOTIFICATION => self.notification += 1,
            kind::KEEPALIVE => self.keepalive += 1,
            kind::ROUTE_REFRESH => self.route_refresh += 1,
            _ => {}
        }
    }

    pub fn total(&self) -> u64 {
        self.open + self.update + self.notification + self.keepalive + self.route_refresh
    }
}

/// What an observer may want to know about the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: MessageCounts,
    pub sent: MessageCounts,
    /// Prefixes announced to us (counted, never installed).
    pub prefixes_received: u64,
    pub withdrawals_received: u64,
    /// UPDATEs handled by treat-as-withdraw (RFC 7606), without a reset.
    pub update_errors: u64,
    /// Times the session left Established.
    pub flaps: u64,
}

/// Connection progress: Connecting is the RFC's Connect state for that connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Connecting,
    OpenSent,
    OpenConfirm,
    Established,
}

/// Bytes received on a connection and not yet taken as messages. Messages are taken
/// from an offset, and the bytes they held are dropped once per read
/// ([`RxBuf::compact`]): dropping each message from the front as it was taken moved the
/// rest of the buffer every time, a cost quadratic in the messages one read carries (a
/// read of 64 KiB may hold 3,449 KEEPALIVEs), which let one peer keep the speaker busy.
#[derive(Debug, Default)]
struct RxBuf {
    bytes: Vec<u8>,
    /// Where the next message starts in `bytes`.
    start: usize,
    /// Bytes moved to the front by compaction, for the tests.
    #[cfg(test)]
    moved: usize,
}

impl RxBuf {
    fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// The next whole message, its type and bytes, taken; `Ok(None)` until one is
    /// complete; an error when its header is bad (RFC 4271 §6.1).
    fn next_message(&mut self) -> Result<Option<(u8, &[u8])>, DecodeError> {
        let rest = &self.bytes[self.start..];
        let Some((kind, len)) = frame(rest)? else {
            return Ok(None);
        };
        let at = self.start;
        self.start += len;
        Ok(Some((kind, &self.bytes[at..at + len])))
    }

    /// Drops the bytes of the messages taken, moving what is left (less than one
    /// message) to the front.
    fn compact(&mut self) {
        #[cfg(test)]
        {
            self.moved += self.bytes.len() - self.start;
        }
        self.bytes.drain(..self.start);
        self.start = 0;
    }
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    outbound: bool,
    phase: Phase,
    rx: RxBuf,
    negotiated: Option<Negotiated>,
    /// When the SendHoldTimer (RFC 9687) is due, while it is armed.
    send_hold: Option<Instant>,
}

/// One peer's BGP session.
#[derive(Debug)]
pub struct Session {
    config: Config,
    conns: Vec<Conn>,
    next_id: ConnId,
    running: bool,
    /// After an error, Idle until the ConnectRetry timer restarts the session
    /// (§8.1.1 AllowAutomaticStart with DampPeerOscillations). Never for a passive
    /// session (see [`Session::drop_conn`]).
    idle: bool,
    /// ConnectRetryCounter (§8): consecutive failures, reset when Established.
    failures: u32,
    state: State,
    established_at: Option<Instant>,
    last_error: Option<SessionError>,
    last_update_error: Option<DecodeError>,
    stats: Stats,
    jitter: Jitter,
}

impl Session {
    /// `seed` drives the timer jitter (RFC 4271 §10); give each session its own
    /// random one so that speakers restarting together do not retry in lockstep.
    pub fn new(config: Config, seed: u64) -> Session {
        Session {
            config,
            conns: Vec::new(),
            next_id: 1,
            running: false,
            idle: false,
            failures: 0,
            state: State::Idle,
            established_at: None,
            last_error: None,
            last_update_error: None,
            stats: Stats::default(),
            jitter: Jitter { state: seed },
        }
    }

    /// A session with new settings for the same peer. It keeps this one's counters and
    /// last errors: they describe the peer, not one configuration, and a counter that
    /// went back while the process runs would read as a restart.
    pub fn reconfigured(&self, config: Config, seed: u64) -> Session {
        Session {
            stats: self.stats.clone(),
            last_error: self.last_error.clone(),
            last_update_error: self.last_update_error.clone(),
            ..Session::new(config, seed)
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn established_at(&self) -> Option<Instant> {
        self.established_at
    }

    pub fn last_error(&self) -> Option<&SessionError> {
        self.last_error.as_ref()
    }

    /// The last UPDATE error handled without a reset (RFC 7606 treat-as-withdraw).
    pub fn last_update_error(&self) -> Option<&DecodeError> {
        self.last_update_error.as_ref()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The Established connection and what was negotiated on it.
    pub fn established(&self) -> Option<(ConnId, &Negotiated)> {
        self.conns
            .iter()
            .find(|c| c.phase == Phase::Established)
            .and_then(|c| Some((c.id, c.negotiated.as_ref()?)))
    }

    /// Handles one event; outputs are appended to `out` in the order to carry out.
    pub fn handle(&mut self, now: Instant, event: Event<'_>, out: &mut Vec<Output>) {
        match event {
            Event::Start => self.start(now, out),
            Event::Stop(reason) => self.stop(reason, out),
            Event::Connected(id) => self.connected(now, id, out),
            Event::ConnectionFailed { conn, reason } => {
                if let Some(i) = self.index(conn) {
                    let error = SessionError::Connection(reason.to_string());
                    // Failing to connect, or a close before the OPENs were exchanged,
                    // is retried from Active (§8.2.2, Connect and OpenSent states);
                    // later it is an error that sends the session to Idle.
                    let to_idle = self.conns[i].phase >= Phase::OpenConfirm;
                    self.drop_conn(now, i, None, error, to_idle, out);
                }
            }
            Event::Incoming => self.incoming(now, out),
            Event::Received { conn, bytes } => self.received(now, conn, bytes, out),
            Event::SendQueue {
                conn,
                progressed,
                pending,
            } => self.send_queue(now, conn, progressed, pending, out),
            Event::TimerExpired(timer) => self.timer(now, timer, out),
        }
        self.update_state(now, out);
    }

    /// Sends an UPDATE on the Established connection (§9.2). The caller keeps it
    /// within 4096 octets; an error means nothing was sent.
    pub fn send_update(
        &mut self,
        now: Instant,
        update: &Update,
        out: &mut Vec<Output>,
    ) -> Result<(), EncodeError> {
        let Some(i) = self
            .conns
            .iter()
            .position(|c| c.phase == Phase::Established)
        else {
            return Ok(());
        };
        let ctx = self.conns[i]
            .negotiated
            .as_ref()
            .map(Negotiated::context)
            .unwrap_or_default();
        let bytes = Message::Update(update.clone()).to_bytes(ctx)?;
        let id = self.conns[i].id;
        self.stats.sent.count(kind::UPDATE);
        out.push(Output::Send(id, bytes));
        self.arm_keepalive(now, i, out);
        Ok(())
    }

    fn index(&self, id: ConnId) -> Option<usize> {
        self.conns.iter().position(|c| c.id == id)
    }

    fn start(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.running {
            return;
        }
        self.running = true;
        self.idle = false;
        self.failures = 0;
        if !self.config.passive {
            self.connect(now, out);
        }
    }

    fn stop(&mut self, reason: StopReason<'_>, out: &mut Vec<Output>) {
        if !self.running {
            return;
        }
        self.running = false;
        self.idle = false;
        let notification = reason.notification();
        for conn in std::mem::take(&mut self.conns) {
            if conn.phase >= Phase::OpenSent {
                self.send(conn.id, &Message::Notification(notification.clone()), out);
            }
            out.push(Output::Close(conn.id));
            out.push(Output::CancelTimer(Timer::Hold(conn.id)));
            out.push(Output::CancelTimer(Timer::Keepalive(conn.id)));
            if conn.send_hold.is_some() {
                out.push(Output::CancelTimer(Timer::SendHold(conn.id)));
            }
        }
        out.push(Output::CancelTimer(Timer::ConnectRetry));
        self.last_error = Some(SessionError::NotificationSent(notification));
    }

    /// Starts an outbound connection and the ConnectRetry timer as its timeout
    /// (§8.2.2 Idle state, event 1).
    fn connect(&mut self, now: Instant, out: &mut Vec<Output>) {
        let id = self.alloc();
        self.conns.push(Conn {
            id,
            outbound: true,
            phase: Phase::Connecting,
            rx: RxBuf::default(),
            negotiated: None,
            send_hold: None,
        });
        out.push(Output::Connect(id));
        let timeout = self.jitter.apply(self.config.connect_retry);
        out.push(Output::ArmTimer(Timer::ConnectRetry, now + timeout));
    }

    fn alloc(&mut self) -> ConnId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn connected(&mut self, now: Instant, id: ConnId, out: &mut Vec<Output>) {
        match self.index(id) {
            Some(i) if self.conns[i].phase == Phase::Connecting => {
                out.push(Output::CancelTimer(Timer::ConnectRetry));
                self.send_open(now, i, out);
            }
            // A connect we gave up on: not ours any more.
            _ => out.push(Output::Close(id)),
        }
    }

    /// §8.2.2 Connect/Active states, TcpConnectionConfirmed: send OPEN, set the hold
    /// timer to the large value, and go to OpenSent.
    fn send_open(&mut self, now: Instant, i: usize, out: &mut Vec<Output>) {
        let id = self.conns[i].id;
        self.conns[i].phase = Phase::OpenSent;
        let open = Message::Open(self.config.open());
        self.send(id, &open, out);
        out.push(Output::ArmTimer(Timer::Hold(id), now + OPEN_HOLD_TIME));
    }

    fn incoming(&mut self, now: Instant, out: &mut Vec<Output>) {
        // Idle refuses connections (§8.2.2), with Cease / Connection Rejected (RFC 4486
        // §4): only a session that connects itself waits there between attempts. An
        // Established session keeps its connection and closes the new one (§6.8), with
        // Cease / Connection Collision Resolution; on hold time 0 it takes the new one.
        if let Some(up) = self.conns.iter().find(|c| c.phase == Phase::Established) {
            if !Self::unwatched(up) {
                let cease = Notification::cease(CeaseSubcode::ConnectionCollisionResolution);
                out.push(Output::Refuse(cease));
                return;
            }
        }
        if !self.running || self.idle {
            let cease = Notification::cease(CeaseSubcode::ConnectionRejected);
            out.push(Output::Refuse(cease));
            return;
        }
        // The peer connecting again means it gave up its earlier connection: keep
        // at most one in each direction (an Established one goes at the new OPEN).
        if let Some(j) = self
            .conns
            .iter()
            .position(|c| !c.outbound && c.phase != Phase::Established)
        {
            self.collision_loser(j, out);
        }
        let id = self.alloc();
        out.push(Output::Accept(id));
        // A connect of ours still pending keeps the timer as its timeout (§8.2.2 Connect
        // state, event 9): without it, a connect that hangs after this connection fails
        // would leave the session with no timer to retry on.
        if !self.conns.iter().any(|c| c.phase == Phase::Connecting) {
            out.push(Output::CancelTimer(Timer::ConnectRetry));
        }
        self.conns.push(Conn {
            id,
            outbound: false,
            phase: Phase::Connecting,
            rx: RxBuf::default(),
            negotiated: None,
            send_hold: None,
        });
        let i = self.conns.len() - 1;
        self.send_open(now, i, out);
    }

    fn received(&mut self, now: Instant, id: ConnId, bytes: &[u8], out: &mut Vec<Output>) {
        let Some(i) = self.index(id) else { return };
        if self.conns[i].phase == Phase::Connecting {
            return;
        }
        self.conns[i].rx.push(bytes);
        loop {
            // A message may close the connection (and move the others).
            let Some(i) = self.index(id) else { return };
            let conn = &mut self.conns[i];
            let ctx = conn
                .negotiated
                .as_ref()
                .map(Negotiated::context)
                .unwrap_or_default();
            let (kind, parsed) = match conn.rx.next_message() {
                Ok(Some((kind, msg))) => (kind, Message::parse(msg, ctx)),
                Ok(None) => {
                    conn.rx.compact();
                    return;
                }
                Err(e) => {
                    self.notify_and_drop(now, i, e.notification(), out);
                    return;
                }
            };
            self.stats.received.count(kind);
            self.message(now, i, kind, parsed, out);
        }
    }

    /// Dispatches one received message by connection phase (§8.2.2).
    fn message(
        &mut self,
        now: Instant,
        i: usize,
        kind: u8,
        parsed: Result<Message, DecodeError>,
        out: &mut Vec<Output>,
    ) {
        let phase = self.conns[i].phase;
        let expected = kind == kind::NOTIFICATION
            || match phase {
                Phase::OpenSent => kind == kind::OPEN,
                Phase::OpenConfirm => kind == kind::KEEPALIVE,
                _ => matches!(kind, kind::UPDATE | kind::KEEPALIVE | kind::ROUTE_REFRESH),
            };
        if !expected {
            return self.fsm_error(now, i, out);
        }
        let parsed = match parsed {
            Ok(m) => m,
            // RFC 7606: errors that do not reset the session leave it alone; this
            // speaker installs nothing, so there is nothing to withdraw.
            Err(e) if !e.is_fatal() => {
                self.stats.update_errors += 1;
                self.last_update_error = Some(e);
                self.restart_hold(now, i, out);
                return;
            }
            Err(e) => {
                return self.notify_and_drop(now, i, e.notification(), out);
            }
        };
        match (phase, parsed) {
            (_, Message::Notification(n)) => {
                // §6.4: never answered; the connection closes.
                self.drop_conn(
                    now,
                    i,
                    None,
                    SessionError::NotificationReceived(n),
                    true,
                    out,
                )
            }
            (Phase::OpenSent, Message::Open(open)) => self.open_received(now, i, open, out),
            (Phase::OpenConfirm, Message::Keepalive) => {
                self.conns[i].phase = Phase::Established;
                self.failures = 0;
                self.restart_hold(now, i, out);
                // §6.8: an Established connection wins over any other.
                for other in self
                    .conns
                    .iter()
                    .filter(|c| c.id != self.conns[i].id)
                    .map(|c| c.id)
                    .collect::<Vec<_>>()
                {
                    if let Some(j) = self.index(other) {
                        self.collision_loser(j, out);
                    }
                }
            }
            (Phase::Established, Message::Keepalive) => self.restart_hold(now, i, out),
            (Phase::Established, Message::Update(u)) => {
                self.stats.prefixes_received += u.announced().count() as u64;
                self.stats.withdrawals_received += u.withdrawn_all().count() as u64;
                self.restart_hold(now, i, out);
            }
            (Phase::Established, Message::RouteRefresh(rr)) => {
                self.restart_hold(now, i, out);
                let negotiated = self.conns[i].negotiated.as_ref();
                // RFC 2918 §4: a family we did not advertise is ignored. Only subtype 0
                // asks for our routes: 1 and 2 (BoRR, EoRR) mark the peer's own refresh,
                // and any other subtype MUST be ignored (RFC 7313 §5).
                if let Some(f) = rr
                    .family()
                    .filter(|f| negotiated.is_some_and(|n| n.families.contains(f)))
                    .filter(|_| rr.subtype == 0)
                {
                    out.push(Output::RouteRefresh(f));
                }
            }
            _ => self.fsm_error(now, i, out),
        }
    }

    /// §6.6 with the RFC 6608 subcodes: a message the state does not expect.
    fn fsm_error(&mut self, now: Instant, i: usize, out: &mut Vec<Output>) {
        let subcode = match self.conns[i].phase {
            Phase::OpenSent => 1,
            Phase::OpenConfirm => 2,
            _ => 3,
        };
        self.notify_and_drop(now, i, Notification::fsm_error(subcode), out);
    }

    /// §6.2 checks that need the configuration, then collision detection (§6.8),
    /// then KEEPALIVE and OpenConfirm (§8.2.2 OpenSent state, event 19).
    fn open_received(&mut self, now: Instant, i: usize, open: Open, out: &mut Vec<Output>) {
        if let Err(e) = self.check_open(&open) {
            return self.notify_and_drop(now, i, DecodeError::Open(e).notification(), out);
        }
        let ours = self.config.open();
        let peer_families = open.families();
        let negotiated = Negotiated {
            hold_time: self.config.hold_time.min(open.hold_time),
            remote_as: open.asn(),
            remote_id: open.bgp_id,
            four_octet_as: open.four_octet_as().is_some(),
            families: self
                .config
                .families
                .iter()
                .copied()
                .filter(|f| peer_families.contains(f))
                .collect(),
            route_refresh: open.route_refresh(),
            peer_graceful_restart: open.graceful_restart().is_some(),
        };
        if negotiated.families.is_empty() {
            // RFC 5492 §5: no family in common; the data lists what we support.
            let mut data = Vec::new();
            for cap in ours
                .capabilities()
                .filter(|c| matches!(c, Capability::Multiprotocol { .. }))
            {
                let msg = Message::Open(Open::new(0, 0, Ipv4Addr::UNSPECIFIED, vec![cap.clone()]));
                if let Ok(bytes) = msg.to_bytes(Context::default()) {
                    data.extend_from_slice(&bytes[31..]);
                }
            }
            let unsupported = OpenError::UnsupportedCapability { capability: data };
            return self.notify_and_drop(
                now,
                i,
                DecodeError::Open(unsupported).notification(),
                out,
            );
        }
        let id = self.conns[i].id;
        // §6.8: another connection to the same peer past Connecting collides with
        // this one. The connection opened by the side with the higher BGP
        // Identifier survives, or with equal Identifiers (allowed between ASes) the
        // side with the larger AS (RFC 6286 §2.3); the loser is closed with Cease /
        // Connection Collision Resolution (RFC 4486).
        let others: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|c| c.id != id)
            .map(|c| c.id)
            .collect();
        for other in others {
            let Some(j) = self.index(other) else { continue };
            let Some(i) = self.index(id) else { return };
            if self.conns[j].phase == Phase::Connecting {
                // This session is moving on; the pending connect is moot.
                self.collision_loser(j, out);
                continue;
            }
            if self.conns[j].phase == Phase::Established {
                // Only taken on hold time 0 ([`Session::incoming`]): the peer lost the
                // session that connection carries, so the new one replaces it.
                self.collision_loser(j, out);
                continue;
            }
            let keep_inbound = (u32::from(self.config.router_id), self.config.local_as)
                < (u32::from(open.bgp_id), open.asn());
            // Two connections in one direction: the older one goes.
            let same_direction = self.conns[i].outbound == self.conns[j].outbound;
            let loser = if !same_direction && self.conns[i].outbound == keep_inbound {
                i
            } else {
                j
            };
            let lost_self = loser == i;
            self.collision_loser(loser, out);
            if lost_self {
                return;
            }
        }
        let Some(i) = self.index(id) else { return };
        self.conns[i].negotiated = Some(negotiated);
        self.conns[i].phase = Phase::OpenConfirm;
        self.send(id, &Message::Keepalive, out);
        self.restart_hold(now, i, out);
        self.arm_keepalive(now, i, out);
    }

    /// Whether Established connection `c` runs on hold time 0, so that nothing would
    /// notice if the peer lost it: no KEEPALIVE is due, no hold timer runs, and a peer
    /// that restarted without closing it (power lost, a VM restored) leaves it open
    /// while nothing is written. Its new connection then replaces this one rather than
    /// being refused as a collision, again on every retry (§6.8: an Established
    /// connection wins "unless allowed via configuration"). A connection on a nonzero
    /// hold time keeps its place: its hold timer finds a peer that is gone.
    fn unwatched(c: &Conn) -> bool {
        c.negotiated.as_ref().is_some_and(|n| n.hold_time == 0)
    }

    fn check_open(&self, open: &Open) -> Result<(), OpenError> {
        let asn = open.asn();
        // RFC 7607: AS 0 is never valid.
        if asn != self.config.remote_as || asn == 0 || open.my_as == 0 {
            return Err(OpenError::BadPeerAs { asn });
        }
        // RFC 6286 §2.2: within an AS the identifiers must differ.
        if self.config.local_as == self.config.remote_as && open.bgp_id == self.config.router_id {
            return Err(OpenError::BadBgpIdentifier { id: open.bgp_id });
        }
        // §4.2, §6.2: a hold time below local policy (1 and 2 are refused when parsed).
        if open.hold_time < self.config.min_hold_time {
            return Err(OpenError::UnacceptableHoldTime {
                hold_time: open.hold_time,
            });
        }
        Ok(())
    }

    /// Closes a connection that lost a collision (or became moot); the session
    /// continues on the other one.
    fn collision_loser(&mut self, j: usize, out: &mut Vec<Output>) {
        let cease = (self.conns[j].phase >= Phase::OpenSent)
            .then(|| Notification::cease(CeaseSubcode::ConnectionCollisionResolution));
        self.close(j, cease, out);
    }

    /// Removes connection `i`, sends `notification` on it first if given, closes it and
    /// cancels its timers.
    fn close(&mut self, i: usize, notification: Option<Notification>, out: &mut Vec<Output>) {
        let conn = self.conns.remove(i);
        if let Some(n) = notification {
            self.send(conn.id, &Message::Notification(n), out);
        }
        out.push(Output::Close(conn.id));
        out.push(Output::CancelTimer(Timer::Hold(conn.id)));
        out.push(Output::CancelTimer(Timer::Keepalive(conn.id)));
        if conn.send_hold.is_some() {
            out.push(Output::CancelTimer(Timer::SendHold(conn.id)));
        }
    }

    fn timer(&mut self, now: Instant, timer: Timer, out: &mut Vec<Output>) {
        match timer {
            Timer::ConnectRetry => {
                if !self.running {
                    return;
                }
                self.idle = false;
                // A connect still pending has timed out (§8.2.2 Connect state,
                // event 9): drop it and try again.
                while let Some(j) = self.conns.iter().position(|c| c.phase == Phase::Connecting) {
                    self.collision_loser(j, out);
                    self.last_error = Some(SessionError::Connection("connect timed out".into()));
                }
                if self.conns.is_empty() && !self.config.passive {
                    self.connect(now, out);
                }
            }
            Timer::Hold(id) => {
                if let Some(i) = self.index(id) {
                    self.notify_and_drop(now, i, Notification::hold_timer_expired(), out);
                }
            }
            Timer::Keepalive(id) => {
                if let Some(i) = self.index(id) {
                    if self.conns[i].phase >= Phase::OpenConfirm {
                        self.send(id, &Message::Keepalive, out);
                        self.arm_keepalive(now, i, out);
                    }
                }
            }
            // RFC 9687 §4.3, SendHoldTimer_Expires: NOTIFICATION Send Hold Timer Expired
            // (best effort: it waits behind what the peer did not take), close, Idle.
            Timer::SendHold(id) => {
                if let Some(i) = self
                    .index(id)
                    .filter(|&i| self.conns[i].send_hold.is_some())
                {
                    self.conns[i].send_hold = None;
                    self.notify_and_drop(now, i, Notification::send_hold_timer_expired(), out);
                }
            }
        }
    }

    /// [`Event::SendQueue`]: the SendHoldTimer (RFC 9687 §4.3) runs while bytes wait
    /// on an Established connection, restarts each time the peer takes some, and stops
    /// when none wait (an idle connection has nothing to time out).
    fn send_queue(
        &mut self,
        now: Instant,
        id: ConnId,
        progressed: bool,
        pending: bool,
        out: &mut Vec<Output>,
    ) {
        let Some(i) = self.index(id) else { return };
        let Some(limit) = self.send_hold_time(i) else {
            return;
        };
        let conn = &mut self.conns[i];
        if !pending {
            if conn.send_hold.take().is_some() {
                out.push(Output::CancelTimer(Timer::SendHold(id)));
            }
        } else if progressed || conn.send_hold.is_none() {
            let at = now + limit;
            conn.send_hold = Some(at);
            out.push(Output::ArmTimer(Timer::SendHold(id), at));
        }
    }

    /// The SendHoldTime of connection `i`, if it has one: only Established connections
    /// do, and not when it is configured 0 or the negotiated hold time is 0 (RFC 9687
    /// §4.3: the SendHoldTimer is stopped then). The default is the greater of 8
    /// minutes and twice the hold time (§6); a configured value must exceed the hold
    /// time (§4.4).
    fn send_hold_time(&self, i: usize) -> Option<Duration> {
        let conn = &self.conns[i];
        if conn.phase != Phase::Established {
            return None;
        }
        let hold = Duration::from_secs(u64::from(conn.negotiated.as_ref()?.hold_time));
        match self.config.send_hold_time {
            _ if hold.is_zero() => None,
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d.max(hold + Duration::from_secs(1))),
            None => Some(MIN_SEND_HOLD_TIME.max(hold * 2)),
        }
    }

    fn restart_hold(&mut self, now: Instant, i: usize, out: &mut Vec<Output>) {
        let conn = &self.conns[i];
        match conn.negotiated.as_ref().map(|n| n.hold_time) {
            Some(0) => out.push(Output::CancelTimer(Timer::Hold(conn.id))),
            Some(h) => out.push(Output::ArmTimer(
                Timer::Hold(conn.id),
                now + Duration::from_secs(u64::from(h)),
            )),
            None => {}
        }
    }

    /// A third of the hold time, jittered (§10): always well inside the hold time. Never
    /// under a second (§4.4: KEEPALIVEs MUST NOT be sent more often than one per second),
    /// which the jitter would make of hold time 3's one second.
    fn arm_keepalive(&mut self, now: Instant, i: usize, out: &mut Vec<Output>) {
        let conn = &self.conns[i];
        if let Some(every) = conn.negotiated.as_ref().and_then(Negotiated::keepalive) {
            let at = now + self.jitter.apply(every).max(Duration::from_secs(1));
            out.push(Output::ArmTimer(Timer::Keepalive(conn.id), at));
        }
    }

    fn send(&mut self, id: ConnId, msg: &Message, out: &mut Vec<Output>) {
        // Only messages this module builds reach here, and all of them fit.
        if let Ok(bytes) = msg.to_bytes(Context::default()) {
            self.stats.sent.count(msg.kind());
            out.push(Output::Send(id, bytes));
        }
    }

    /// Sends NOTIFICATION `n` on connection `i` and drops it (§8.2.2: the session
    /// goes to Idle).
    fn notify_and_drop(&mut self, now: Instant, i: usize, n: Notification, out: &mut Vec<Output>) {
        self.drop_conn(
            now,
            i,
            Some(n.clone()),
            SessionError::NotificationSent(n),
            true,
            out,
        );
    }

    /// Closes connection `i`, after sending `notification` if given, and records
    /// why. When no connection is left the session retries after a delay that grows
    /// with consecutive failures; `to_idle` waits in Idle rather than Active.
    fn drop_conn(
        &mut self,
        now: Instant,
        i: usize,
        notification: Option<Notification>,
        error: SessionError,
        to_idle: bool,
        out: &mut Vec<Output>,
    ) {
        self.close(i, notification, out);
        self.last_error = Some(error);
        if self.conns.is_empty() && self.running {
            self.failures = self.failures.saturating_add(1);
            // A passive session has no connect to hold back: damping it (§8.1.1
            // DampPeerOscillations, optional) could only refuse the peer's next
            // connection, and the peer would then wait its own ConnectRetry time (120 s
            // by default in BIRD and FRR) before trying again. It waits in Active, which
            // accepts at once (§8.2.2 Idle state, events 4 and 5), and the peer's own
            // timers pace its attempts.
            if !self.config.passive {
                self.idle = to_idle;
                let delay = self.jitter.apply(self.retry_delay());
                out.push(Output::ArmTimer(Timer::ConnectRetry, now + delay));
            }
        }
    }

    /// ConnectRetryTime doubled per consecutive failure after the first, capped;
    /// the base the jitter scales.
    fn retry_delay(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        let delay = self.config.connect_retry.saturating_mul(1 << doublings);
        delay.min(self.config.max_retry.max(self.config.connect_retry))
    }

    fn update_state(&mut self, now: Instant, out: &mut Vec<Output>) {
        let to = match self.conns.iter().map(|c| c.phase).max() {
            Some(Phase::Connecting) => State::Connect,
            Some(Phase::OpenSent) => State::OpenSent,
            Some(Phase::OpenConfirm) => State::OpenConfirm,
            Some(Phase::Established) => State::Established,
            None if !self.running || self.idle => State::Idle,
            None => State::Active,
        };
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        if from == State::Established {
            self.established_at = None;
            self.stats.flaps += 1;
            out.push(Output::Down);
        }
        out.push(Output::StateChanged { from, to });
        if to == State::Established {
            self.established_at = Some(now);
            if let Some((conn, negotiated)) = self.established() {
                let negotiated = negotiated.clone();
                out.push(Output::Established { conn, negotiated });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One read's messages are taken from an offset, and only what is left of the last,
    /// incomplete one is moved to the front, once: time linear in the bytes read. Taking
    /// each message off the front moved the rest of the buffer every time, some 110 MB for
    /// one read of 64 KiB of KEEPALIVEs.
    #[test]
    fn a_read_of_many_messages_moves_only_its_incomplete_end() {
        let keepalive = Message::Keepalive.to_bytes(Context::default()).unwrap();
        let count = 3449;
        let mut read = keepalive.repeat(count);
        read.extend_from_slice(&keepalive[..7]);
        let mut rx = RxBuf::default();
        rx.push(&read);
        let mut taken = 0;
        while let Some((kind, msg)) = rx.next_message().unwrap() {
            assert_eq!((kind, msg), (kind::KEEPALIVE, &keepalive[..]));
            taken += 1;
        }
        rx.compact();
        assert_eq!(taken, count);
        assert_eq!(rx.moved, 7);
        // The next read completes it.
        rx.push(&keepalive[7..]);
        assert_eq!(
            rx.next_message().unwrap(),
            Some((kind::KEEPALIVE, &keepalive[..]))
        );
        rx.compact();
        assert_eq!((rx.moved, rx.bytes.len()), (7, 0));
    }

    /// Every message of one such read reaches the session.
    #[test]
    fn a_session_takes_every_message_of_one_read() {
        let mut s = Session::new(Config::new(65001, 65000, Ipv4Addr::new(10, 0, 0, 2)), 1);
        let now = Instant::now();
        let mut out = Vec::new();
        s.handle(now, Event::Start, &mut out);
        s.handle(now, Event::Connected(1), &mut out);
        let open = Config::new(65000, 65001, Ipv4Addr::new(10, 0, 0, 1)).open();
        let mut read = Message::Open(open).to_bytes(Context::default()).unwrap();
        let keepalive = Message::Keepalive.to_bytes(Context::default()).unwrap();
        read.extend(keepalive.repeat(3000));
        s.handle(
            now,
            Event::Received {
                conn: 1,
                bytes: &read,
            },
            &mut out,
        );
        assert_eq!(s.state(), State::Established);
        assert_eq!(s.stats().received.keepalive, 3000);
    }
}
