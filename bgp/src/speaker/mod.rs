//! The speaker: a mio event loop on its own thread that owns the sockets and timers,
//! drives one [`Session`] per peer, and keeps an Adj-RIB-Out per peer so that only
//! differences are sent (RFC 4271 §9.2).
//!
//! The control thread talks to it through [`Speaker`]: [`Speaker::set_routes`] with
//! the whole desired set, [`Speaker::peers`] for observer state,
//! [`Speaker::reconfigure`], which changes the peers without touching the sessions
//! whose settings stay, and [`Speaker::shutdown`], which withdraws everything, sends
//! Cease with a shutdown message (RFC 8203) and returns once the sessions are closed.

mod rib;
mod socket;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, error, info, warn};

use crate::fsm::{
    self, ConnId, Event, Negotiated, Output, Session, SessionError, State, Stats, StopReason, Timer,
};
use crate::wire::{CeaseSubcode, Context, Family, Message, Notification, Prefix, Update};
pub use rib::{max_update_len, AdjRibOut, Changes, Export, RouteAttributes, Routes, Unsendable};

/// How long a closed connection may take to deliver its last NOTIFICATION, and
/// how long [`Speaker::shutdown`] waits for all of them. One whose peer has not
/// acknowledged everything by then is reset: its FIN would wait behind the bytes the
/// peer does not take (RFC 9687's stalled peer), and the peer would never learn of the
/// close.
const LINGER: Duration = Duration::from_secs(2);

/// How soon [`PeerStatus::unacked_bytes`] is sampled again while it is not 0 (the peer's
/// acknowledgements do not wake the loop): after this while the count moves, twice as
/// long after each sample that finds it unchanged, up to [`UNACKED_POLL_MAX`], and from
/// the start again after each command (new routes, a shutdown: someone may wait for them
/// to be acknowledged). A peer that has stopped reading then costs one status snapshot a
/// second, not a hundred, and one that reads is still seen done within 10 ms.
const UNACKED_POLL: Duration = Duration::from_millis(10);
const UNACKED_POLL_MAX: Duration = Duration::from_secs(1);

/// One neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    /// 179 unless testing.
    pub port: u16,
    /// Source address for outgoing connections; the kernel picks one if unset.
    pub local_address: Option<IpAddr>,
    /// AS numbers, router ID, hold time, passive mode, retry timing.
    pub session: fsm::Config,
    /// NEXT_HOP for IPv4 VIPs; the session's local address when it is IPv4.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Next hop for IPv6 VIPs; the session's local address when it is IPv6.
    pub next_hop_v6: Option<Ipv6Addr>,
    /// TCP MD5 signature password (RFC 2385).
    pub md5_password: Option<String>,
}

impl PeerConfig {
    pub fn new(address: IpAddr, local_as: u32, remote_as: u32, router_id: Ipv4Addr) -> PeerConfig {
        PeerConfig {
            address,
            port: 179,
            local_address: None,
            session: fsm::Config::new(local_as, remote_as, router_id),
            next_hop_v4: None,
            next_hop_v6: None,
            md5_password: None,
        }
    }
}

/// The speaker's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub peers: Vec<PeerConfig>,
    /// Where to accept connections (e.g. `0.0.0.0:179` or `[::]:179`). Passive peers
    /// need one; active peers work without (the peer's own connects are refused).
    pub listen: Vec<SocketAddr>,
}

/// What observers see of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub remote_as: u32,
    pub state: State,
    /// Time in Established, if it is.
    pub uptime: Option<Duration>,
    /// Why it last went down or failed to come up, including a NOTIFICATION received.
    pub last_error: Option<SessionError>,
    pub stats: Stats,
    /// Prefixes in the Adj-RIB-Out.
    pub prefixes_advertised: usize,
    /// Bytes written to this peer that its TCP has not acknowledged: the speaker's own
    /// queue plus the socket's send queue, sent or not (`SIOCOUTQ`, tcp(7)), summed
    /// over the peer's connections. A snapshot with a prefix gone from
    /// `prefixes_advertised` and this at 0 says the withdrawal reached the peer's TCP
    /// (not that the router has processed it yet). Acknowledgements do not wake the
    /// speaker, so while this is not 0 it is sampled again: every 10 ms while it moves,
    /// backing off to once a second while it does not.
    pub unacked_bytes: usize,
    /// Those prefixes, sorted: what this peer has been sent and not had withdrawn.
    /// Empty unless Established (the Adj-RIB-Out is forgotten when a session goes
    /// down), so it says which routes a session actually carries.
    pub advertised: Vec<Prefix>,
    pub negotiated: Option<Negotiated>,
}

/// What [`Speaker::snapshot`] returns: every peer, as of the commands it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The generation ([`Speaker::generation`]) of the last command the speaker had
    /// carried out when it took this snapshot: the peers show that command's effect
    /// (new routes in their Adj-RIB-Out, the UPDATEs that carry them written or queued),
    /// and that of every command before it.
    pub generation: u64,
    pub peers: Vec<PeerStatus>,
}

/// What [`Speaker::reconfigure`] did, each list in the new config's order (removed
/// peers in the old one's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Settings unchanged: the session went on untouched.
    pub kept: Vec<IpAddr>,
    /// Settings changed: closed with Cease / Other Configuration Change (RFC 4486
    /// subcode 6) and started again with the new ones; its counters go on.
    pub changed: Vec<IpAddr>,
    /// New peers, started.
    pub added: Vec<IpAddr>,
    /// Gone from the config: closed with Cease / Peer De-configured (subcode 3).
    pub removed: Vec<IpAddr>,
}

/// Why [`Speaker::reconfigure`] changed nothing (the peers, at least).
#[derive(Debug, thiserror::Error)]
pub enum ReconfigureError {
    /// A new listening address could not be bound (in use by another process, or not
    /// on this host). The listeners and the peers are as they were; a new speaker
    /// would fail the same way.
    #[error("cannot listen for BGP on {addr}: {error}")]
    Listen { addr: SocketAddr, error: io::Error },
    /// A listener did not take a peer's new TCP MD5 key. Peers were not touched; keys
    /// set before it stay set, so a new speaker ([`Speaker::spawn`]), which sets every
    /// key afresh, should take over.
    #[error("setting the TCP MD5 key of {peer} on the BGP listener {listener}: {error}")]
    Md5 {
        peer: IpAddr,
        listener: SocketAddr,
        error: io::Error,
    },
    #[error("the BGP speaker thread has stopped")]
    Stopped,
}

/// Why [`Speaker::spawn`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A listening address could not be bound (in use, or not on this host).
    #[error("cannot listen for BGP on {addr}: {error}")]
    Listen { addr: SocketAddr, error: io::Error },
    /// The event loop or its thread could not be set up.
    #[error(transparent)]
    Io(#[from] io::Error),
}

enum Command {
    SetRoutes(Routes),
    Reconfigure(Config, Sender<Result<Reconfigured, ReconfigureError>>),
    /// Withdraw everything and close every session with Cease: Administrative Shutdown
    /// with this message, or Peer De-configured without one.
    Shutdown(Option<String>),
}

/// Handle to the speaker thread.
pub struct Speaker {
    /// Each command with its generation.
    commands: Sender<(u64, Command)>,
    /// The generation of the last command sent.
    generation: AtomicU64,
    waker: Arc<Waker>,
    status: Arc<Mutex<Snapshot>>,
    thread: Option<JoinHandle<()>>,
}

impl Speaker {
    /// Binds the listeners and starts every session. Socket errors at this point
    /// (a port in use, a bad MD5 key) are returned; later ones show in [`peers`].
    ///
    /// [`peers`]: Speaker::peers
    pub fn spawn(config: Config) -> Result<Speaker, SpawnError> {
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        bind_missing(&config.listen, &mut listeners, &config.peers)
            .map_err(|(addr, error)| SpawnError::Listen { addr, error })?;
        register_listeners(&poll, &mut listeners)?;
        Ok(Speaker::run(poll, listeners, config.peers)?)
    }

    /// Starts the thread of a loop on `poll`, with `listeners` registered in it.
    fn run(poll: Poll, listeners: Vec<Listener>, peers: Vec<PeerConfig>) -> io::Result<Speaker> {
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (commands, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(Snapshot::default()));
        let mut event_loop = Loop::new(poll, rx, status.clone(), listeners, peers);
        let now = Instant::now();
        for p in 0..event_loop.peers.len() {
            event_loop.feed(now, p, Event::Start);
        }
        event_loop.publish(now);
        let thread = std::thread::Builder::new()
            .name("bgp-speaker".into())
            .spawn(move || event_loop.run())?;
        Ok(Speaker {
            commands,
            generation: AtomicU64::new(0),
            waker,
            status,
            thread: Some(thread),
        })
    }

    /// Whether the speaker's thread has ended: after [`Speaker::shutdown`], or on its own
    /// (its event loop failed, or it panicked), when its sessions are closed and nothing
    /// is announced any more, while [`Speaker::peers`] still shows the last state it
    /// published. Cheap: meant to be polled.
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Replaces the set of announced prefixes. Peers get only the differences.
    pub fn set_routes(&self, routes: Routes) {
        self.command(Command::SetRoutes(routes));
    }

    /// Applies `config` to the running speaker, peer by peer (peers are told apart by
    /// address): a peer whose settings are unchanged keeps its session and routes, a
    /// changed one is closed with Cease / Other Configuration Change and started again,
    /// a removed one is closed with Cease / Peer De-configured, a new one is started.
    /// Listeners get the new peers' TCP MD5 keys first, then the listen addresses change
    /// in place: connections already accepted are sessions' and stay. A key a listener
    /// does not take, or an address that cannot be bound, is refused; then the peers
    /// (and the listeners) are as they were.
    pub fn reconfigure(&self, config: Config) -> Result<Reconfigured, ReconfigureError> {
        let (reply, done) = mpsc::channel();
        self.command(Command::Reconfigure(config, reply));
        done.recv().unwrap_or(Err(ReconfigureError::Stopped))
    }

    /// A snapshot of every peer.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.snapshot().peers
    }

    /// A snapshot of every peer, with the generation of the last command it reflects.
    /// The speaker carries out commands asynchronously: a snapshot whose generation is
    /// below [`Speaker::generation`] may not show the latest routes yet.
    pub fn snapshot(&self) -> Snapshot {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The generation of the last command sent to the speaker ([`Speaker::set_routes`],
    /// [`Speaker::reconfigure`]); it counts up from 1, and 0 is the state at start.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Withdraws every route, sends Cease / Administrative Shutdown with `message`
    /// (RFC 8203) and waits (at most a couple of seconds) until the sessions are
    /// closed. Later calls do nothing.
    pub fn shutdown(&mut self, message: &str) {
        self.stop(Some(message.to_string()));
    }

    /// [`Speaker::shutdown`] for a speaker whose configuration is gone (the whole `[bgp]`
    /// section was removed): every session is told Cease / Peer De-configured (RFC 4486
    /// subcode 3), as [`Speaker::reconfigure`] tells each peer it removes.
    pub fn deconfigure(&mut self) {
        self.stop(None);
    }

    fn stop(&mut self, message: Option<String>) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.command(Command::Shutdown(message));
        if thread.join().is_err() {
            warn!("BGP speaker thread panicked");
        }
    }

    fn command(&self, c: Command) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        // A send fails only when the thread is gone, and then there is nothing to do.
        if self.commands.send((generation, c)).is_ok() {
            if let Err(e) = self.waker.wake() {
                warn!("cannot wake the BGP speaker: {e}");
            }
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.shutdown("speaker stopped");
    }
}

/// The loop's read buffer.
const READ_BUFFER: usize = 65536;

/// Reads of one socket per turn of the loop, at most (with [`READ_BUFFER`], 1 MiB). A
/// socket with more to read is read again the next turn, after the commands, the timers
/// (every session's KEEPALIVEs and hold timers) and the other sockets' events: a peer
/// that streams messages faster than they are handled used to keep the loop reading it
/// alone, and the other sessions' routers then timed them out (RFC 4271 §10 assumes the
/// KeepaliveTimer is honoured).
const READS_PER_TURN: usize = 16;

/// Connections one listener accepts per turn of the loop, at most. A listener with more
/// waiting is come back to the next turn, after the commands, the timers and the
/// sessions' sockets: connections completing as fast as the loop refused them (a
/// stranger's flood, each one accepted, told Cease and closed) used to keep it in
/// `accept` until the sessions' routers timed them out. A full listen backlog
/// ([`socket::BACKLOG`], 16), more than a speaker's few peers ever queue at once, so a
/// turn still takes all of theirs, while 16 refusals (an accept, one write and a close
/// each) are a small part of a turn.
const ACCEPTS_PER_TURN: usize = socket::BACKLOG as usize;

const WAKER: Token = Token(0);
const FIRST_LISTENER: usize = 1;
const FIRST_CONN: usize = 1 << 16;

/// How long a listener whose `accept` failed for want of a resource (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM, or an error not known to concern one connection only) rests before
/// it is tried again. Such a failure leaves the connection queued and comes back at
/// once until something frees the resource, while the listener, edge-triggered, says
/// nothing more of what waits: so it is tried again on a timer. A router waits for our
/// OPEN with its large initial hold timer (RFC 4271 §8.2.2 suggests 4 minutes), for
/// which a quarter of a second is nothing; four failed accepts a second, which take
/// nothing from the queue, cost nothing while the shortage lasts.
const ACCEPT_RETRY: Duration = Duration::from_millis(250);

/// A listening socket shared by the passive peers that reach it.
struct Listener {
    addr: SocketAddr,
    socket: TcpListener,
    /// Set while `accept` fails for want of a resource: not tried again before then
    /// ([`ACCEPT_RETRY`]).
    retry_at: Option<Instant>,
}

impl Listener {
    fn new(addr: SocketAddr, socket: TcpListener) -> Listener {
        Listener {
            addr,
            socket,
            retry_at: None,
        }
    }

    /// An `accept` that did not lack a resource: says so if the last one did.
    fn accepting(&mut self) {
        if self.retry_at.take().is_some() {
            info!(listener = %self.addr, "accepting BGP connections again");
        }
    }

    /// An `accept` that failed for want of a resource: rest until [`ACCEPT_RETRY`] from
    /// `now`. Said once when it starts; each failure after that only at debug level.
    fn rest(&mut self, now: Instant, e: &io::Error) {
        if self.retry_at.is_none() {
            warn!(listener = %self.addr, "cannot accept BGP connections ({e}): they wait in the listen queue; trying again every {ACCEPT_RETRY:?}");
        } else {
            debug!(listener = %self.addr, "accept still fails: {e}");
        }
        self.retry_at = Some(now + ACCEPT_RETRY);
    }
}

/// Whether a failed `accept` is over with, the next one free to succeed at once:
/// ECONNABORTED (a connection reset while it waited, gone with the error), EINTR, and
/// the network errors Linux passes on from the new connection, for TCP ENETDOWN,
/// EPROTO, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP and ENETUNREACH
/// (accept(2), "Error handling", which asks for them to be retried at once).
fn lost_one_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::ENETDOWN
                | libc::EPROTO
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// Binds each address of `listen` that `listeners` lacks, with the TCP MD5 keys of
/// `peers`, adding it to `listeners`; stops at the first that fails.
fn bind_missing(
    listen: &[SocketAddr],
    listeners: &mut Vec<Listener>,
    peers: &[PeerConfig],
) -> Result<(), (SocketAddr, io::Error)> {
    let md5: Vec<(IpAddr, &str)> = peers
        .iter()
        .filter_map(|p| Some((p.address, p.md5_password.as_deref()?)))
        .collect();
    for &addr in listen {
        if !listeners.iter().any(|l| l.addr == addr) {
            let socket = socket::listen(addr, &md5).map_err(|e| (addr, e))?;
            listeners.push(Listener::new(addr, socket));
        }
    }
    Ok(())
}

/// Watches each listener under the token of its position.
fn register_listeners(poll: &Poll, listeners: &mut [Listener]) -> io::Result<()> {
    for (i, l) in listeners.iter_mut().enumerate() {
        poll.registry()
            .register(&mut l.socket, Token(FIRST_LISTENER + i), Interest::READABLE)?;
    }
    Ok(())
}

struct Sock {
    stream: TcpStream,
    token: Token,
    tx: Vec<u8>,
    connected: bool,
    /// Bytes handed to the kernel so far.
    written: u64,
    /// Of those, how many the peer's TCP had acknowledged at the last look.
    acked: u64,
    /// Bytes were waiting for the peer at the last look (see [`Loop::watch_sending`]).
    pending: bool,
}

impl Sock {
    /// Writes as much of `tx` as the socket takes.
    fn flush(&mut self) -> io::Result<()> {
        let result = flush(&mut self.stream, &mut self.tx);
        self.written += result.as_ref().map_or(0, |&n| n as u64);
        result.map(drop)
    }
}

/// A connection the session is done with, delivering its last bytes before close.
struct Closing {
    stream: TcpStream,
    tx: Vec<u8>,
    write_shut: bool,
    deadline: Instant,
}

impl Closing {
    /// Makes the close that follows a reset (RST) if the peer has not acknowledged all
    /// that was written ([`LINGER`]).
    fn reset_if_undelivered(&self) {
        let undelivered = !self.tx.is_empty() || socket::unacked(&self.stream).unwrap_or(0) > 0;
        if undelivered {
            // SO_LINGER 0: close() sends RST and discards the queue (socket(7)).
            let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        }
    }
}

struct Peer {
    config: PeerConfig,
    session: Session,
    timers: HashMap<Timer, Instant>,
    socks: HashMap<ConnId, Sock>,
    rib: AdjRibOut,
    /// How to build UPDATEs, while Established.
    export: Option<Export>,
}

impl Peer {
    fn new(config: PeerConfig) -> Peer {
        Peer::with_session(Session::new(config.session.clone(), jitter_seed()), config)
    }

    /// The peer with new settings, keeping `old`'s counters ([`Session::reconfigured`]).
    fn reconfigured(config: PeerConfig, old: &Peer) -> Peer {
        let session = old
            .session
            .reconfigured(config.session.clone(), jitter_seed());
        Peer::with_session(session, config)
    }

    fn with_session(session: Session, config: PeerConfig) -> Peer {
        Peer {
            session,
            config,
            timers: HashMap::new(),
            socks: HashMap::new(),
            rib: AdjRibOut::default(),
            export: None,
        }
    }

    /// [`PeerStatus::unacked_bytes`]. A connect still in progress has sent nothing.
    fn unacked_bytes(&self) -> usize {
        let kernel = |s: &Sock| {
            socket::unacked(&s.stream).unwrap_or_else(|e| {
                debug!(peer = %self.config.address, "SIOCOUTQ failed: {e}");
                0
            })
        };
        self.socks
            .values()
            .filter(|s| s.connected)
            .map(|s| s.tx.len() + kernel(s))
            .sum()
    }
}

/// A random seed for a session's timer jitter (RFC 4271 §10): std's hasher keys
/// come from the operating system's random source, so gateways started together
/// draw different timers.
fn jitter_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}

#[derive(Clone, Copy)]
enum Owner {
    Conn(usize, ConnId),
    Closing,
}

struct Loop {
    poll: Poll,
    commands: Receiver<(u64, Command)>,
    /// The generation of the last command carried out.
    applied: u64,
    status: Arc<Mutex<Snapshot>>,
    /// In the order of [`Config::listen`]; a listener's token is its position.
    listeners: Vec<Listener>,
    peers: Vec<Peer>,
    tokens: HashMap<Token, Owner>,
    next_token: usize,
    routes: Routes,
    closing: HashMap<Token, Closing>,
    /// Connections whose socket failed while outputs were being carried out, by peer
    /// address: a reconfiguration may move the peers before they are handed back.
    failed: Vec<(IpAddr, ConnId, String)>,
    /// Set by shutdown: the loop ends when everything is closed, or at this time.
    stop_by: Option<Instant>,
    /// When to publish again because some output was not yet acknowledged.
    resample_at: Option<Instant>,
    /// The wait before the next of those samples (see [`UNACKED_POLL`]).
    resample_every: Duration,
    /// The unacknowledged bytes of all peers at the last sample.
    unacked: usize,
    /// Sockets (of sessions or closing) whose reads stopped at [`READS_PER_TURN`], and
    /// listeners whose accepts stopped at [`ACCEPTS_PER_TURN`], with more perhaps
    /// waiting: edge-triggered, they would get no new event for it, so they are read
    /// again next turn, which then does not wait.
    unread: Vec<Token>,
}

impl Loop {
    /// A loop with no connection yet, for `peers`, listening on `listeners`.
    fn new(
        poll: Poll,
        commands: mpsc::Receiver<(u64, Command)>,
        status: Arc<Mutex<Snapshot>>,
        listeners: Vec<Listener>,
        peers: Vec<PeerConfig>,
    ) -> Loop {
        Loop {
            poll,
            commands,
            applied: 0,
            status,
            listeners,
            peers: peers.into_iter().map(Peer::new).collect(),
            tokens: HashMap::new(),
            next_token: FIRST_CONN,
            routes: Routes::new(),
            closing: HashMap::new(),
            failed: Vec::new(),
            stop_by: None,
            resample_at: None,
            resample_every: UNACKED_POLL,
            unacked: 0,
            unread: Vec::new(),
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; READ_BUFFER];
        while self.turn(&mut events, &mut buf) {}
    }

    /// One turn of the loop: waits for I/O, a command or the next timer, reads what is
    /// ready (each socket at most [`READS_PER_TURN`] times, each listener's connections
    /// up to [`ACCEPTS_PER_TURN`], and a listener resting after a failed `accept` when
    /// its [`Listener::retry_at`] comes), carries out the commands, fires the timers due
    /// and publishes the peers' state. False when the loop ends.
    fn turn(&mut self, events: &mut Events, buf: &mut [u8]) -> bool {
        let now = Instant::now();
        if let Some(by) = self.stop_by {
            let open = self.peers.iter().any(|p| !p.socks.is_empty()) || !self.closing.is_empty();
            if !open || now >= by {
                self.closing
                    .values()
                    .for_each(Closing::reset_if_undelivered);
                return false;
            }
        }
        let timeout = match self.unread.is_empty() {
            true => self
                .next_deadline()
                .map(|at| at.saturating_duration_since(now)),
            false => Some(Duration::ZERO),
        };
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                // The thread ends: its owner sees that ([`Speaker::ended`]) and gives up.
                error!("BGP speaker poll failed; the speaker stops: {e}");
                return false;
            }
        }
        let now = Instant::now();
        let mut ready: Vec<Token> = events.iter().map(|e| e.token()).collect();
        let due = self
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.retry_at.is_some_and(|at| at <= now))
            .map(|(i, _)| Token(FIRST_LISTENER + i));
        for token in std::mem::take(&mut self.unread).into_iter().chain(due) {
            if !ready.contains(&token) {
                ready.push(token);
            }
        }
        for token in ready {
            match token {
                WAKER => {}
                Token(t) if t < FIRST_CONN => self.accept(now, t - FIRST_LISTENER),
                token => match self.tokens.get(&token).copied() {
                    Some(Owner::Conn(p, id)) => self.conn_ready(now, p, id, buf),
                    Some(Owner::Closing) => self.closing_ready(token, buf),
                    None => {}
                },
            }
        }
        while let Ok((generation, c)) = self.commands.try_recv() {
            self.command(now, c);
            self.applied = generation;
            self.resample_every = UNACKED_POLL;
        }
        self.watch_sending(now);
        self.fire_timers(now);
        self.expire_closing(now);
        self.publish(now);
        true
    }

    fn next_deadline(&self) -> Option<Instant> {
        let timers = self.peers.iter().flat_map(|p| p.timers.values().copied());
        let closing = self.closing.values().map(|c| c.deadline);
        let listeners = self.listeners.iter().filter_map(|l| l.retry_at);
        timers
            .chain(closing)
            .chain(listeners)
            .chain(self.stop_by)
            .chain(self.resample_at)
            .min()
    }

    fn command(&mut self, now: Instant, c: Command) {
        match c {
            Command::SetRoutes(routes) => {
                #[cfg(feature = "failpoints")]
                fail::fail_point!("bgp-speaker-set-routes");
                self.routes = routes;
                for p in 0..self.peers.len() {
                    self.sync(now, p);
                }
                self.hand_back_failures(now);
            }
            Command::Reconfigure(config, reply) => {
                #[cfg(feature = "failpoints")]
                fail::fail_point!("bgp-speaker-reconfigure");
                let result = self.reconfigure(now, config);
                self.publish(now);
                // The caller waits for this unless it went away.
                let _ = reply.send(result);
            }
            Command::Shutdown(message) => {
                let reason = match &message {
                    Some(message) => {
                        info!("BGP speaker shutting down: {message}");
                        StopReason::Shutdown(message)
                    }
                    None => {
                        info!("BGP speaker shutting down: its configuration was removed; telling every peer Cease / Peer De-configured");
                        StopReason::Deconfigured
                    }
                };
                self.routes.clear();
                for p in 0..self.peers.len() {
                    self.sync(now, p);
                    self.feed(now, p, Event::Stop(reason));
                }
                self.stop_by = Some(now + LINGER);
            }
        }
    }

    /// [`Speaker::reconfigure`]: listener keys and addresses first (what can fail), then
    /// the peers.
    fn reconfigure(
        &mut self,
        now: Instant,
        config: Config,
    ) -> Result<Reconfigured, ReconfigureError> {
        // Only the listeners that stay are rekeyed; new ones are bound with the new keys.
        let old: Vec<PeerConfig> = self.peers.iter().map(|p| p.config.clone()).collect();
        self.rekey_listeners(&old, &config.peers, &config.listen)?;
        if let Err(e) = self.relisten(&config.listen, &config.peers, &old) {
            if let Err(again) = self.rekey_listeners(&config.peers, &old, &config.listen) {
                warn!("cannot give the BGP listeners their old TCP MD5 keys back: {again}");
            }
            return Err(e);
        }
        // Sessions that do not go on stop while still in place, so that their session sends
        // the Cease that says why and closes its connections, as any stop does.
        for p in 0..self.peers.len() {
            let reason = match config
                .peers
                .iter()
                .find(|pc| pc.address == self.peers[p].config.address)
            {
                None => StopReason::Deconfigured,
                Some(pc) if *pc != self.peers[p].config => StopReason::Reconfigured,
                Some(_) => continue,
            };
            self.feed(now, p, Event::Stop(reason));
        }
        let mut old: Vec<Option<Peer>> = std::mem::take(&mut self.peers)
            .into_iter()
            .map(Some)
            .collect();
        let mut done = Reconfigured::default();
        let mut start = Vec::new();
        for pc in config.peers {
            let address = pc.address;
            let same = old
                .iter_mut()
                .find(|o| o.as_ref().is_some_and(|p| p.config.address == address))
                .and_then(Option::take);
            let next = match same {
                Some(peer) if peer.config == pc => {
                    done.kept.push(address);
                    self.peers.push(peer);
                    continue;
                }
                Some(peer) => {
                    info!(peer = %address, "BGP peer settings changed: closed the session with Cease / Other Configuration Change; starting it again");
                    let next = Peer::reconfigured(pc, &peer);
                    self.discard(now, peer);
                    done.changed.push(address);
                    next
                }
                None => {
                    info!(peer = %address, "BGP peer added");
                    done.added.push(address);
                    Peer::new(pc)
                }
            };
            start.push(self.peers.len());
            self.peers.push(next);
        }
        for peer in old.into_iter().flatten() {
            info!(peer = %peer.config.address, "BGP peer removed: closed the session with Cease / Peer De-configured");
            done.removed.push(peer.config.address);
            self.discard(now, peer);
        }
        // Peers moved: point their connections' tokens at the new positions.
        for (p, peer) in self.peers.iter().enumerate() {
            for (id, sock) in &peer.socks {
                self.tokens.insert(sock.token, Owner::Conn(p, *id));
            }
        }
        for p in start {
            self.feed(now, p, Event::Start);
        }
        Ok(done)
    }

    /// Moves the TCP MD5 keys (RFC 2385) of the listeners at `on` from those of `from`
    /// to those of `to`: a peer's changed or new key is set, and a gone peer's key is
    /// deleted. Keys are per peer address, so sessions already accepted keep theirs.
    fn rekey_listeners(
        &self,
        from: &[PeerConfig],
        to: &[PeerConfig],
        on: &[SocketAddr],
    ) -> Result<(), ReconfigureError> {
        let key_in = |peers: &[PeerConfig], address: IpAddr| {
            peers
                .iter()
                .find(|p| p.address == address)
                .and_then(|p| p.md5_password.clone())
        };
        let mut keys: Vec<(IpAddr, Option<String>)> = to
            .iter()
            .filter(|p| p.md5_password != key_in(from, p.address))
            .map(|p| (p.address, p.md5_password.clone()))
            .collect();
        keys.extend(
            from.iter()
                .filter(|old| old.md5_password.is_some())
                .filter(|old| !to.iter().any(|p| p.address == old.address))
                .map(|old| (old.address, None)),
        );
        for l in self.listeners.iter().filter(|l| on.contains(&l.addr)) {
            for (peer, key) in &keys {
                // Deleting a key the listener never had (`None` after `None`) is not
                // asked for: `keys` holds only changes.
                socket::listener_md5(&l.socket, *peer, key.as_deref()).map_err(|error| {
                    ReconfigureError::Md5 {
                        peer: *peer,
                        listener: l.addr,
                        error,
                    }
                })?;
            }
        }
        Ok(())
    }

    /// Moves the listeners to `listen`. One that stays keeps its socket; one that goes is
    /// closed before any new one binds, since a new one may want the address it holds
    /// (`[::]:179` after `192.0.2.1:179`). If a new address cannot be bound, the old set
    /// is bound again, with the keys of `old`. Accepted connections belong to sessions and
    /// are not touched.
    fn relisten(
        &mut self,
        listen: &[SocketAddr],
        peers: &[PeerConfig],
        old: &[PeerConfig],
    ) -> Result<(), ReconfigureError> {
        let was: Vec<SocketAddr> = self.listeners.iter().map(|l| l.addr).collect();
        if was == listen {
            return Ok(());
        }
        let mut listeners = std::mem::take(&mut self.listeners);
        for l in &mut listeners {
            // Registered again below, under the token of its new position.
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        listeners.retain(|l| listen.contains(&l.addr));
        let result = match bind_missing(listen, &mut listeners, peers) {
            Ok(()) => {
                info!(from = ?was, to = ?listen, "BGP listeners moved; sessions stay");
                Ok(())
            }
            Err((addr, error)) => {
                listeners.retain(|l| was.contains(&l.addr));
                if let Err((again, e)) = bind_missing(&was, &mut listeners, old) {
                    warn!("cannot bind the BGP listener {again} again ({e}); it stays closed");
                }
                Err(ReconfigureError::Listen { addr, error })
            }
        };
        let order = if result.is_ok() { listen } else { &was };
        listeners.sort_by_key(|l| order.iter().position(|a| *a == l.addr));
        if let Err(e) = register_listeners(&self.poll, &mut listeners) {
            warn!("cannot watch the BGP listeners: {e}");
        }
        self.listeners = listeners;
        result
    }

    /// Drops a peer whose session was stopped: its session closed every connection it
    /// knew; any socket left (none, unless the session never heard of it) closes too.
    fn discard(&mut self, now: Instant, peer: Peer) {
        for (_, sock) in peer.socks {
            self.linger(now, sock);
        }
    }

    /// Tells each session how what it sent fares ([`Event::SendQueue`], for the RFC 9687
    /// SendHoldTimer): whether the peer's TCP acknowledged more since the last look, and
    /// whether bytes still wait, in our queue or the socket's (`SIOCOUTQ`). A peer that
    /// stopped reading closes its receive window: its TCP then acknowledges nothing more,
    /// however much the kernel still takes. Called each time round the loop, which comes
    /// round at least once a second while bytes are unacknowledged ([`UNACKED_POLL_MAX`]),
    /// and before timers fire, so that a timer due sees the latest progress.
    fn watch_sending(&mut self, now: Instant) {
        let mut reports = Vec::new();
        for (p, peer) in self.peers.iter_mut().enumerate() {
            for (&conn, sock) in peer.socks.iter_mut().filter(|(_, s)| s.connected) {
                let queued = socket::unacked(&sock.stream).unwrap_or(0);
                let acked = sock.written.saturating_sub(queued as u64);
                let progressed = acked > sock.acked;
                sock.acked = sock.acked.max(acked);
                let pending = !sock.tx.is_empty() || queued > 0;
                if pending || sock.pending {
                    reports.push((p, conn, progressed, pending));
                }
                sock.pending = pending;
            }
        }
        for (p, conn, progressed, pending) in reports {
            self.feed(
                now,
                p,
                Event::SendQueue {
                    conn,
                    progressed,
                    pending,
                },
            );
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        for p in 0..self.peers.len() {
            let due: Vec<Timer> = self.peers[p]
                .timers
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(t, _)| *t)
                .collect();
            for t in due {
                self.peers[p].timers.remove(&t);
                self.feed(now, p, Event::TimerExpired(t));
            }
        }
    }

    /// Hands one event to a peer's session and carries out what it asks.
    fn feed(&mut self, now: Instant, p: usize, event: Event<'_>) {
        let mut out = Vec::new();
        self.peers[p].session.handle(now, event, &mut out);
        self.carry_out(now, p, out);
    }

    /// Applies a session's outputs, then feeds each socket failure that left back to
    /// the session it belongs to.
    fn carry_out(&mut self, now: Instant, p: usize, out: Vec<Output>) {
        self.apply(now, p, out);
        self.hand_back_failures(now);
    }

    /// Feeds each socket failure left in [`Loop::failed`] to the session it belongs to,
    /// if that peer is still configured.
    fn hand_back_failures(&mut self, now: Instant) {
        while let Some((address, conn, reason)) = self.failed.pop() {
            let Some(p) = self.peers.iter().position(|p| p.config.address == address) else {
                continue;
            };
            self.feed(
                now,
                p,
                Event::ConnectionFailed {
                    conn,
                    reason: &reason,
                },
            );
        }
    }

    /// Records that connection `id` of peer `p` failed, for [`Loop::hand_back_failures`].
    fn failed(&mut self, p: usize, id: ConnId, error: &io::Error) {
        let address = self.peers[p].config.address;
        self.failed.push((address, id, error.to_string()));
    }

    fn apply(&mut self, now: Instant, p: usize, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Connect(id) => self.connect(p, id),
                // Decided in accept(), which looks at these before applying the rest.
                Output::Accept(_) | Output::Refuse(_) => {}
                Output::Send(id, bytes) => {
                    if let Some(sock) = self.peers[p].socks.get_mut(&id) {
                        sock.tx.extend_from_slice(&bytes);
                        if let Err(e) = sock.flush() {
                            self.failed(p, id, &e);
                        }
                    }
                }
                Output::Close(id) => self.close(now, p, id),
                Output::ArmTimer(t, at) => {
                    self.peers[p].timers.insert(t, at);
                }
                Output::CancelTimer(t) => {
                    self.peers[p].timers.remove(&t);
                }
                Output::StateChanged { from, to } => {
                    let peer = &self.peers[p];
                    info!(peer = %peer.config.address, %from, %to, "BGP session state");
                    if to == State::Idle {
                        if let Some(e) = peer.session.last_error() {
                            info!(peer = %peer.config.address, "BGP session down: {e}");
                        }
                    }
                }
                Output::Established { conn, negotiated } => {
                    self.established(now, p, conn, &negotiated)
                }
                Output::Down => {
                    let peer = &mut self.peers[p];
                    peer.rib.clear();
                    peer.export = None;
                }
                Output::RouteRefresh(family) => {
                    let peer = &self.peers[p];
                    if let Some(export) = &peer.export {
                        let updates = peer.rib.refresh(family, export);
                        self.send_updates(now, p, &updates);
                    }
                }
            }
        }
    }

    /// RFC 4271 §9.2 and RFC 4724 §2: on session up, the whole Adj-RIB-Out, then
    /// End-of-RIB for each family.
    fn established(&mut self, now: Instant, p: usize, conn: ConnId, negotiated: &Negotiated) {
        let peer = &mut self.peers[p];
        let local = peer
            .socks
            .get(&conn)
            .and_then(|s| s.stream.local_addr().ok())
            .map(|a| socket::canonical(a.ip()));
        let next_hop_v6 = peer.config.next_hop_v6.or(match local {
            Some(IpAddr::V6(a)) if !a.is_unicast_link_local() => Some(a),
            _ => None,
        });
        // RFC 2545 §3, on an IPv6 session: the next hop's link-local address too when the
        // next hop is this host on the peer's link.
        let next_hop_v6_link_local = match (local, peer.config.address, next_hop_v6) {
            (Some(IpAddr::V6(local)), IpAddr::V6(to), Some(nh)) => match socket::ipv6_addresses() {
                Ok(addresses) => socket::link_local_next_hop(&addresses, local, to, nh),
                Err(e) => {
                    warn!(peer = %peer.config.address, "cannot list the interfaces' addresses, so no link-local next hop goes with {nh}: {e}");
                    None
                }
            },
            _ => None,
        };
        let export = Export {
            local_as: peer.config.session.local_as,
            internal: peer.config.session.local_as == peer.config.session.remote_as,
            ctx: negotiated.context(),
            families: negotiated.families.clone(),
            next_hop_v4: peer.config.next_hop_v4.or(match local {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            }),
            next_hop_v6,
            next_hop_v6_link_local,
        };
        for f in &export.families {
            let missing = match f {
                Family::Ipv4Unicast => export.next_hop_v4.is_none(),
                Family::Ipv6Unicast => export.next_hop_v6.is_none(),
            };
            if missing {
                warn!(peer = %peer.config.address, "no {f} next hop for this session: configure one to announce {f} routes");
            }
        }
        info!(peer = %peer.config.address, local = ?local, hold = negotiated.hold_time, link_local_next_hop = ?export.next_hop_v6_link_local, "BGP session established");
        peer.rib.clear();
        let mut changes = peer.rib.sync(&self.routes, &export);
        changes
            .updates
            .extend(export.families.iter().map(|f| Update::end_of_rib(*f)));
        peer.export = Some(export);
        self.send_changes(now, p, changes);
    }

    fn sync(&mut self, now: Instant, p: usize) {
        let peer = &mut self.peers[p];
        let Some(export) = &peer.export else { return };
        let changes = peer.rib.sync(&self.routes, export);
        self.send_changes(now, p, changes);
    }

    fn send_changes(&mut self, now: Instant, p: usize, changes: Changes) {
        for e in &changes.refused {
            warn!(peer = %self.peers[p].config.address, "{e}");
        }
        self.send_updates(now, p, &changes.updates);
    }

    fn send_updates(&mut self, now: Instant, p: usize, updates: &[Update]) {
        for u in updates {
            let mut out = Vec::new();
            if let Err(e) = self.peers[p].session.send_update(now, u, &mut out) {
                warn!(peer = %self.peers[p].config.address, "UPDATE not sent: {e}");
            }
            self.apply(now, p, out);
        }
    }

    fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    fn connect(&mut self, p: usize, id: ConnId) {
        let cfg = &self.peers[p].config;
        let addr = SocketAddr::new(cfg.address, cfg.port);
        let stream = socket::connect(addr, cfg.local_address, cfg.md5_password.as_deref());
        match stream.and_then(|s| self.register(p, id, s, false)) {
            Ok(()) => debug!(peer = %addr, "connecting"),
            Err(e) => self.failed(p, id, &e),
        }
    }

    /// Polls `stream` as connection `id` of peer `p`; `connected` is false while a
    /// connect is still in progress.
    fn register(
        &mut self,
        p: usize,
        id: ConnId,
        mut stream: TcpStream,
        connected: bool,
    ) -> io::Result<()> {
        let token = self.token();
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.tokens.insert(token, Owner::Conn(p, id));
        self.peers[p].socks.insert(
            id,
            Sock {
                stream,
                token,
                tx: Vec::new(),
                connected,
                written: 0,
                acked: 0,
                pending: false,
            },
        );
        Ok(())
    }

    /// Accepts what waits on listener `l`, up to [`ACCEPTS_PER_TURN`] connections.
    fn accept(&mut self, now: Instant, l: usize) {
        self.accept_with(now, l, TcpListener::accept);
    }

    /// [`Loop::accept`], taking each connection with `accept` (a test's fails as Linux's
    /// TCP never does on its own). A connection lost in `accept` is skipped; a resource
    /// lacking rests the listener until its [`Listener::retry_at`], whatever its events.
    fn accept_with(
        &mut self,
        now: Instant,
        l: usize,
        mut accept: impl FnMut(&TcpListener) -> io::Result<(TcpStream, SocketAddr)>,
    ) {
        if self
            .listeners
            .get(l)
            .is_some_and(|listener| listener.retry_at.is_some_and(|at| now < at))
        {
            return;
        }
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = self.listeners.get_mut(l) else {
                return;
            };
            let (stream, from) = match accept(&listener.socket) {
                Ok(found) => found,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    listener.accepting();
                    return;
                }
                Err(e) if lost_one_connection(&e) => {
                    debug!(listener = %listener.addr, "accept failed, going on with the next connection: {e}");
                    continue;
                }
                Err(e) => {
                    listener.rest(now, &e);
                    return;
                }
            };
            listener.accepting();
            let ip = socket::canonical(from.ip());
            let Some(p) = self.peers.iter().position(|p| p.config.address == ip) else {
                debug!(%from, "connection from an unknown peer refused");
                // RFC 4486 §4, best effort: one write, then close; a stranger gets no
                // more of our time.
                let rejected = Notification::cease(CeaseSubcode::ConnectionRejected);
                if let Ok(bytes) = Message::Notification(rejected).to_bytes(Context::default()) {
                    let _ = (&stream).write(&bytes);
                }
                continue;
            };
            self.incoming(now, p, stream);
        }
        // More may wait: the rest next turn, after the timers and the sessions' sockets.
        self.unread.push(Token(FIRST_LISTENER + l));
    }

    /// Peer `p` connected to us: its session takes the connection or refuses it.
    fn incoming(&mut self, now: Instant, p: usize, stream: TcpStream) {
        let mut out = Vec::new();
        self.peers[p].session.handle(now, Event::Incoming, &mut out);
        let decision = out.iter().find_map(|o| match o {
            Output::Accept(id) => Some(Ok(*id)),
            Output::Refuse(n) => Some(Err(n.clone())),
            _ => None,
        });
        match decision {
            Some(Ok(id)) => {
                let _ = stream.set_nodelay(true);
                if let Err(e) = socket::keep_alive(&stream) {
                    warn!(peer = %self.peers[p].config.address, "cannot turn on TCP keepalive: {e}");
                }
                if let Err(e) = self.register(p, id, stream, true) {
                    self.failed(p, id, &e);
                }
            }
            Some(Err(n)) => self.refuse(now, stream, n),
            None => {}
        }
        self.carry_out(now, p, out);
    }

    /// Closes an incoming connection its session refused, after sending `n` (RFC 4486
    /// §4) as far as the socket takes it without waiting. It then lingers like any
    /// closed connection ([`Loop::close`]): the peer's OPEN, already in, must not turn
    /// the close into a reset that could discard the NOTIFICATION.
    fn refuse(&mut self, now: Instant, mut stream: TcpStream, n: Notification) {
        let Ok(tx) = Message::Notification(n).to_bytes(Context::default()) else {
            return;
        };
        let token = self.token();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .register(&mut stream, token, interest)
            .is_err()
        {
            return;
        }
        let sock = Sock {
            stream,
            token,
            tx,
            connected: true,
            written: 0,
            acked: 0,
            pending: false,
        };
        self.linger(now, sock);
    }

    fn conn_ready(&mut self, now: Instant, p: usize, id: ConnId, buf: &mut [u8]) {
        let Some(sock) = self.peers[p].socks.get_mut(&id) else {
            return;
        };
        if !sock.connected {
            // mio: a finished connect reports writable; take_error, then peer_addr,
            // tell success from failure.
            let result = match sock.stream.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match sock.stream.peer_addr() {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => {
                    sock.connected = true;
                    self.feed(now, p, Event::Connected(id));
                }
                Err(e) => self.feed(
                    now,
                    p,
                    Event::ConnectionFailed {
                        conn: id,
                        reason: &e.to_string(),
                    },
                ),
            }
            return;
        }
        if let Err(e) = sock.flush() {
            return self.feed(
                now,
                p,
                Event::ConnectionFailed {
                    conn: id,
                    reason: &e.to_string(),
                },
            );
        }
        let token = sock.token;
        for _ in 0..READS_PER_TURN {
            let Some(sock) = self.peers[p].socks.get_mut(&id) else {
                // The session closed it: what is left is read as it closes.
                self.unread.push(token);
                return;
            };
            match sock.stream.read(buf) {
                Ok(0) => {
                    return self.feed(
                        now,
                        p,
                        Event::ConnectionFailed {
                            conn: id,
                            reason: "closed by peer",
                        },
                    );
                }
                Ok(n) => self.feed(
                    now,
                    p,
                    Event::Received {
                        conn: id,
                        bytes: &buf[..n],
                    },
                ),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return self.feed(
                        now,
                        p,
                        Event::ConnectionFailed {
                            conn: id,
                            reason: &e.to_string(),
                        },
                    )
                }
            }
        }
        // More may wait: the rest next turn, after the timers and the other sockets.
        self.unread.push(token);
    }

    /// Stops using a connection: what is queued (a NOTIFICATION, usually) still goes
    /// out, then FIN; the socket is read until the peer closes so that unread data
    /// does not turn the close into a reset that could discard the NOTIFICATION.
    fn close(&mut self, now: Instant, p: usize, id: ConnId) {
        if let Some(sock) = self.peers[p].socks.remove(&id) {
            self.linger(now, sock);
        }
    }

    /// [`Loop::close`] for a socket already taken from its peer.
    fn linger(&mut self, now: Instant, mut sock: Sock) {
        if !sock.connected {
            let _ = self.poll.registry().deregister(&mut sock.stream);
            self.tokens.remove(&sock.token);
            return;
        }
        let _ = sock.flush();
        let mut c = Closing {
            stream: sock.stream,
            tx: sock.tx,
            write_shut: false,
            deadline: now + LINGER,
        };
        if c.tx.is_empty() {
            c.write_shut = c.stream.shutdown(Shutdown::Write).is_ok();
        }
        self.tokens.insert(sock.token, Owner::Closing);
        self.closing.insert(sock.token, c);
    }

    fn closing_ready(&mut self, token: Token, buf: &mut [u8]) {
        let Some(c) = self.closing.get_mut(&token) else {
            return;
        };
        let mut done = flush(&mut c.stream, &mut c.tx).is_err();
        if !done && c.tx.is_empty() && !c.write_shut {
            c.write_shut = true;
            done = c.stream.shutdown(Shutdown::Write).is_err();
        }
        let mut reads = 0;
        while !done {
            if reads == READS_PER_TURN {
                self.unread.push(token);
                break;
            }
            reads += 1;
            match c.stream.read(buf) {
                Ok(0) => done = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => done = true,
            }
        }
        if done {
            self.drop_closing(token);
        }
    }

    fn expire_closing(&mut self, now: Instant) {
        let expired: Vec<Token> = self
            .closing
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            if let Some(c) = self.closing.get(&t) {
                c.reset_if_undelivered();
            }
            self.drop_closing(t);
        }
    }

    fn drop_closing(&mut self, token: Token) {
        if let Some(mut c) = self.closing.remove(&token) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
        self.tokens.remove(&token);
    }

    /// Refreshes the snapshot [`Speaker::peers`] returns.
    fn publish(&mut self, now: Instant) {
        let snapshot: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|p| PeerStatus {
                address: p.config.address,
                remote_as: p.config.session.remote_as,
                state: p.session.state(),
                uptime: p
                    .session
                    .established_at()
                    .map(|t| now.saturating_duration_since(t)),
                last_error: p.session.last_error().cloned(),
                stats: p.session.stats().clone(),
                prefixes_advertised: p.rib.len(),
                unacked_bytes: p.unacked_bytes(),
                advertised: p.rib.prefixes().copied().collect(),
                negotiated: p.session.established().map(|(_, n)| n.clone()),
            })
            .collect();
        let unacked: usize = snapshot.iter().map(|s| s.unacked_bytes).sum();
        self.resample_every = match unacked {
            0 => UNACKED_POLL,
            n if n == self.unacked => (self.resample_every * 2).min(UNACKED_POLL_MAX),
            _ => UNACKED_POLL,
        };
        self.resample_at = (unacked > 0).then(|| now + self.resample_every);
        self.unacked = unacked;
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = Snapshot {
            generation: self.applied,
            peers: snapshot,
        };
    }
}

/// Writes as much of `tx` as the socket takes; how much that was.
fn flush(stream: &mut TcpStream, tx: &mut Vec<u8>) -> io::Result<usize> {
    let mut written = 0;
    while !tx.is_empty() {
        match stream.write(tx) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                tx.drain(..n);
                written += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A speaker loop for `peers`, driven by hand: no thread, no listener.
    fn event_loop(peers: Vec<PeerConfig>) -> Loop {
        let (_, commands) = mpsc::channel();
        let status = Arc::new(Mutex::new(Snapshot::default()));
        Loop::new(Poll::new().unwrap(), commands, status, Vec::new(), peers)
    }

    fn passive(last: u8) -> PeerConfig {
        let address = IpAddr::V4(Ipv4Addr::new(192, 0, 2, last));
        let mut c = PeerConfig::new(address, 65001, 65000, Ipv4Addr::new(10, 0, 0, 2));
        c.session.passive = true;
        c
    }

    /// Brings peer `p`'s session up over a loopback connection, the peer's end of which
    /// is returned (it is never read: the kernel's buffers take what the tests send).
    fn establish(l: &mut Loop, p: usize) -> std::net::TcpStream {
        let now = Instant::now();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        l.feed(now, p, Event::Start);
        l.incoming(now, p, TcpStream::from_std(ours));
        let conn = *l.peers[p].socks.keys().next().unwrap();
        let open = fsm::Config::new(65000, 65001, Ipv4Addr::new(10, 0, 0, 1)).open();
        for msg in [Message::Open(open), Message::Keepalive] {
            let bytes = msg.to_bytes(Context::FOUR_OCTET).unwrap();
            l.feed(
                now,
                p,
                Event::Received {
                    conn,
                    bytes: &bytes,
                },
            );
        }
        assert_eq!(l.peers[p].session.state(), State::Established);
        theirs
    }

    fn state(l: &Loop, address: IpAddr) -> State {
        let peer = l
            .peers
            .iter()
            .find(|p| p.config.address == address)
            .unwrap();
        peer.session.state()
    }

    /// A write that fails while new routes go out is handed to the session of the peer it
    /// belongs to, even when a reconfiguration moves the peers before that: it used to go
    /// to whichever peer took the failed one's position, and close that one's session.
    #[test]
    fn a_write_failure_reaches_its_own_peer_after_the_peers_move() {
        let (a, b) = (passive(1), passive(2));
        let mut l = event_loop(vec![a.clone(), b.clone()]);
        let a_end = establish(&mut l, 0);
        let _b_end = establish(&mut l, 1);
        // A's end resets the connection (SO_LINGER 0): the next write to it fails.
        socket2::SockRef::from(&a_end)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(a_end);
        std::thread::sleep(Duration::from_millis(100));

        let now = Instant::now();
        let prefix: Prefix = "198.51.100.1/32".parse().unwrap();
        let routes: Routes = [(prefix, RouteAttributes::default())].into_iter().collect();
        l.command(now, Command::SetRoutes(routes));
        // B and A swap places, and C is added (its start hands failures back).
        let (reply, result) = mpsc::channel();
        let config = Config {
            peers: vec![b.clone(), a.clone(), passive(3)],
            listen: Vec::new(),
        };
        l.command(now, Command::Reconfigure(config, reply));
        let done = result.recv().unwrap().unwrap();
        assert_eq!(done.kept, [b.address, a.address]);

        assert_ne!(state(&l, a.address), State::Established);
        assert_eq!(state(&l, b.address), State::Established);
        assert_eq!(l.peers[0].rib.len(), 1, "B carries the route");
    }

    /// A speaker whose event loop fails (here its next `epoll_wait`, on a descriptor that
    /// no longer is an epoll instance: EINVAL) ends its thread, and says so: its owner
    /// must not go on as if its sessions were up.
    #[test]
    fn a_speaker_whose_loop_fails_has_ended() {
        use std::os::fd::AsRawFd;
        let poll = Poll::new().unwrap();
        let epoll = poll.as_raw_fd();
        let speaker = Speaker::run(poll, Vec::new(), vec![passive(1)]).unwrap();
        assert!(!speaker.ended(), "a running speaker has not ended");

        let null = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: `epoll` stays an open descriptor owned by the loop's `Poll` (which
        // closes it when dropped); dup2 only makes it refer to /dev/null from now on.
        assert!(unsafe { libc::dup2(null.as_raw_fd(), epoll) } >= 0);
        // A poll already waiting holds the old instance: wake it, so it polls again.
        speaker.waker.wake().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !speaker.ended() {
            assert!(Instant::now() < deadline, "the speaker's thread still runs");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `getsockopt` of an option whose value is a `T`.
    ///
    /// # Safety
    ///
    /// Any bytes are a `T`: an integer, or a C struct of integers.
    unsafe fn option<T>(fd: &impl std::os::fd::AsRawFd, level: i32, name: i32) -> T {
        let mut value = std::mem::MaybeUninit::<T>::zeroed();
        let mut len = std::mem::size_of::<T>() as libc::socklen_t;
        // SAFETY: `value` and `len` are live for the call, and `len` is `value`'s size.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                level,
                name,
                value.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        // SAFETY: zeroed, then written by the kernel; the caller vouches that any bytes
        // are a `T`.
        unsafe { value.assume_init() }
    }

    /// `getsockopt` of one int.
    fn int_option(fd: &impl std::os::fd::AsRawFd, level: i32, name: i32) -> i32 {
        // SAFETY: any 4 bytes are a c_int.
        unsafe { option::<libc::c_int>(fd, level, name) }
    }

    /// (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) of a socket.
    fn keepalive(fd: &impl std::os::fd::AsRawFd) -> [i32; 4] {
        [
            int_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
        ]
    }

    /// Every BGP connection, ours or the peer's, probes a silent peer with TCP keepalives
    /// and fails within a minute when it does not answer: on hold time 0 nothing else
    /// would notice a router that restarted without closing the connection. Without them
    /// the session stayed Established, refusing the router's new connections, forever.
    #[test]
    fn every_bgp_connection_probes_a_silent_peer() {
        let expected = [
            1,
            socket::KEEPALIVE_IDLE.as_secs() as i32,
            socket::KEEPALIVE_INTERVAL.as_secs() as i32,
            socket::KEEPALIVE_PROBES as i32,
        ];
        assert!(
            socket::KEEPALIVE_IDLE + socket::KEEPALIVE_INTERVAL * socket::KEEPALIVE_PROBES
                <= Duration::from_secs(60)
        );
        // Accepted: the peer connected.
        let mut l = event_loop(vec![passive(1)]);
        let _theirs = establish(&mut l, 0);
        let sock = l.peers[0].socks.values().next().unwrap();
        assert_eq!(keepalive(&sock.stream), expected, "accepted");
        // Ours.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = socket::connect(listener.local_addr().unwrap(), None, None).unwrap();
        assert_eq!(keepalive(&ours), expected, "connected");
    }

    /// Bytes waiting in a socket's receive queue (`FIONREAD`, tcp(7)'s SIOCINQ).
    fn queued(fd: &impl std::os::fd::AsRawFd) -> usize {
        let mut bytes: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through its argument, alive for the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &raw mut bytes) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        usize::try_from(bytes).unwrap()
    }

    /// Makes an Established peer's KEEPALIVE due now.
    fn keepalive_due(peer: &mut Peer) {
        let keepalive = *peer
            .timers
            .keys()
            .find(|t| matches!(t, Timer::Keepalive(_)))
            .unwrap();
        peer.timers.insert(keepalive, Instant::now());
    }

    /// A peer that streams messages is read a bounded share per turn of the loop, and
    /// the rest on the turns after, without waiting for new readiness: between its
    /// shares the other sessions' timers fire. The loop used to read a socket until it
    /// had nothing more, so a peer sending faster than its messages were handled kept
    /// every other session's KEEPALIVEs from going out, until their routers' hold
    /// timers expired. Here the stream is all queued before the turn, so that the old
    /// loop would read it whole in that one turn whatever the scheduling.
    #[test]
    fn a_streaming_peer_is_read_a_share_per_turn() {
        let mut l = event_loop(vec![passive(1), passive(2)]);
        let mut a_end = establish(&mut l, 0);
        let _b_end = establish(&mut l, 1);
        let keepalive = Message::Keepalive.to_bytes(Context::default()).unwrap();
        let count = 1700;
        a_end.write_all(&keepalive.repeat(count)).unwrap();
        let a_sock = &l.peers[0].socks.values().next().unwrap().stream;
        let deadline = Instant::now() + Duration::from_secs(10);
        while queued(a_sock) < count * keepalive.len() {
            assert!(Instant::now() < deadline, "the stream never arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
        keepalive_due(&mut l.peers[1]);
        let b_sent = l.peers[1].session.stats().sent.keepalive;
        let a_received = |l: &Loop| l.peers[0].session.stats().received.keepalive - 1;

        // A buffer of 512 octets: a turn reads at most 16 of them, 8 KiB, of 32 KiB.
        let (mut events, mut buf) = (Events::with_capacity(16), [0u8; 512]);
        assert!(l.turn(&mut events, &mut buf));
        let first = a_received(&l);
        assert!(
            first > 0 && first as usize * keepalive.len() <= READS_PER_TURN * buf.len(),
            "the first turn took {first} of A's {count} KEEPALIVEs"
        );
        assert_eq!(
            l.peers[1].session.stats().sent.keepalive,
            b_sent + 1,
            "B's KEEPALIVE did not go out in that turn"
        );
        // The rest comes in the next turns, with no new data to signal it.
        let mut turns = 1;
        while (a_received(&l) as usize) < count {
            assert!(
                !l.unread.is_empty(),
                "A's stream is left unread after {} KEEPALIVEs",
                a_received(&l)
            );
            assert!(l.turn(&mut events, &mut buf));
            turns += 1;
        }
        assert!(turns >= 4, "{turns} turns");
        assert_eq!(l.peers[0].session.state(), State::Established);
    }

    /// Connections waiting in a listener's accept queue: on a listening socket,
    /// TCP_INFO's `tcpi_unacked` is that queue's length (Linux's tcp_get_info; `ss -l`
    /// shows it as Recv-Q).
    fn accept_queue(listener: &impl std::os::fd::AsRawFd) -> usize {
        // SAFETY: tcp_info is a C struct of integers only.
        let info: libc::tcp_info = unsafe { option(listener, libc::IPPROTO_TCP, libc::TCP_INFO) };
        info.tcpi_unacked as usize
    }

    /// A flood of connections to the listener, here from an address that is no peer, is
    /// accepted a bounded share per turn of the loop, and the rest on the turns after
    /// without new readiness (the listener is edge-triggered): between its shares the
    /// sessions' timers fire. The loop used to accept until the queue was empty, so
    /// connections completing as fast as it refused them kept every session's KEEPALIVEs
    /// from going out. Here the flood is all queued before the first turn (on a listener
    /// with room for it), so that the old loop would take it whole in that one turn.
    #[test]
    fn a_flood_of_connections_is_accepted_a_share_per_turn() {
        use socket2::{Domain, Socket, Type};
        const FLOOD: usize = 200;
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        socket.listen(FLOOD as i32).unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let mut l = event_loop(vec![passive(1)]);
        let socket = TcpListener::from_std(socket.into());
        l.listeners.push(Listener::new(addr, socket));
        register_listeners(&l.poll, &mut l.listeners).unwrap();
        let _session = establish(&mut l, 0);
        let mut flood: Vec<std::net::TcpStream> = (0..FLOOD)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        wait_queued(&l, FLOOD);

        let (mut events, mut buf) = (Events::with_capacity(16), [0u8; 512]);
        let (mut waiting, mut turns) = (FLOOD, 0);
        while waiting > 0 {
            keepalive_due(&mut l.peers[0]);
            let sent = l.peers[0].session.stats().sent.keepalive;
            assert!(l.turn(&mut events, &mut buf));
            turns += 1;
            let left = accept_queue(&l.listeners[0].socket);
            assert_eq!(
                waiting - left,
                ACCEPTS_PER_TURN.min(waiting),
                "turn {turns} accepted {} of the {waiting} waiting",
                waiting - left
            );
            assert_eq!(
                l.peers[0].session.stats().sent.keepalive,
                sent + 1,
                "the session's KEEPALIVE did not go out in turn {turns}"
            );
            waiting = left;
        }
        assert_eq!(turns, FLOOD.div_ceil(ACCEPTS_PER_TURN));
        assert_eq!(l.peers[0].session.state(), State::Established);
        // Each was refused as before: Cease / Connection Rejected, then closed.
        let rejected = Message::Notification(Notification::cease(CeaseSubcode::ConnectionRejected))
            .to_bytes(Context::default())
            .unwrap();
        for stream in &mut flood {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).unwrap();
            assert_eq!(got, rejected);
        }
    }

    /// Waits until `count` connections wait to be accepted on the loop's first listener.
    fn wait_queued(l: &Loop, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while accept_queue(&l.listeners[0].socket) < count {
            assert!(Instant::now() < deadline, "the connections never queued");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A loop whose one peer, passive, is 127.0.0.1, listening on a loopback port, with a
    /// connection from that peer waiting there; the peer's end of it.
    fn a_connection_waits() -> (Loop, std::net::TcpStream) {
        let mut peer = passive(1);
        peer.address = Ipv4Addr::LOCALHOST.into();
        let mut l = event_loop(vec![peer]);
        let socket = socket::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &[]).unwrap();
        let addr = socket.local_addr().unwrap();
        l.listeners.push(Listener::new(addr, socket));
        register_listeners(&l.poll, &mut l.listeners).unwrap();
        l.feed(Instant::now(), 0, Event::Start);
        let theirs = std::net::TcpStream::connect(addr).unwrap();
        wait_queued(&l, 1);
        (l, theirs)
    }

    /// The first message the peer's end receives.
    fn first_message(theirs: &mut std::net::TcpStream) -> Message {
        theirs
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut msg = vec![0u8; crate::wire::HEADER_LEN];
        theirs.read_exact(&mut msg).unwrap();
        let len = usize::from(u16::from_be_bytes([msg[16], msg[17]]));
        msg.resize(len, 0);
        theirs
            .read_exact(&mut msg[crate::wire::HEADER_LEN..])
            .unwrap();
        Message::parse(&msg, Context::FOUR_OCTET).unwrap()
    }

    /// A connection lost in `accept` (ECONNABORTED: reset while it waited) is passed over
    /// and the next one waiting is accepted in the same turn. The loop used to stop at any
    /// accept error, and the listener, edge-triggered, said nothing more of the
    /// connections still waiting: they waited for another to arrive. Linux's TCP never
    /// fails `accept` so on its own, hence the error made up here.
    #[test]
    fn a_connection_lost_in_accept_is_passed_over() {
        let (mut l, mut theirs) = a_connection_waits();
        let mut lost = Some(io::Error::from_raw_os_error(libc::ECONNABORTED));
        l.accept_with(Instant::now(), 0, |socket| match lost.take() {
            Some(e) => Err(e),
            None => socket.accept(),
        });
        assert_eq!(l.peers[0].session.state(), State::OpenSent);
        assert!(matches!(first_message(&mut theirs), Message::Open(_)));
        assert_eq!(l.listeners[0].retry_at, None, "the listener rests");
    }

    /// Lets [`descriptors_run_out_in_this_process`] run: it lowers the descriptor limit of
    /// its process, which would fail the tests running beside it.
    const OWN_PROCESS: &str = "BGP_SPEAKER_TEST_OWN_PROCESS";

    /// A connection that waits while the speaker has no descriptor left for it (`accept`
    /// fails with EMFILE) is accepted once descriptors are back, though no other
    /// connection arrives. The loop used to log the error and leave the listener, which
    /// being edge-triggered said nothing more of the connection waiting: a passive peer's
    /// router waited for our OPEN until a connection from elsewhere woke the listener, or
    /// until it gave up. The limit is per process, so the case runs in a process of its own: this
    /// test binary again, running that test alone (bounded: the old loop waited for ever).
    #[test]
    fn a_connection_waiting_while_descriptors_run_out_is_accepted_when_they_are_back() {
        use std::os::unix::process::ExitStatusExt;
        let name = "speaker::tests::descriptors_run_out_in_this_process";
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--include-ignored", "--nocapture"])
            .env(OWN_PROCESS, "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let (done, output) = mpsc::channel();
        std::thread::spawn(move || done.send(child.wait_with_output()));
        let (output, timed_out) = match output.recv_timeout(Duration::from_secs(60)) {
            Ok(output) => (output.unwrap(), false),
            Err(_) => {
                // SAFETY: kill(2) of our own child, which is not waited for yet (the
                // thread's wait returns only once it has ended).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                (output.recv().unwrap().unwrap(), true)
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !timed_out,
            "the connection was never accepted (the child still waited after 60 s)\n{stdout}{stderr}"
        );
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{:?} (signal {:?})\n{stdout}{stderr}",
            output.status,
            output.status.signal()
        );
    }

    /// The case of the test above, run in its process (only there: [`OWN_PROCESS`]).
    #[test]
    #[ignore = "run by a_connection_waiting_while_descriptors_run_out_is_accepted_when_they_are_back, in a process of its own"]
    fn descriptors_run_out_in_this_process() {
        use std::os::fd::AsRawFd;
        if std::env::var_os(OWN_PROCESS).is_none() {
            return;
        }
        let (mut l, mut theirs) = a_connection_waits();
        // The lowest descriptor free: every one below is taken, so a limit of it leaves
        // the loop's accept none.
        let free = std::fs::File::open("/dev/null").unwrap().as_raw_fd();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit, `limit`, live for the call.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) },
            0
        );
        let set = |limit: libc::rlimit| {
            // SAFETY: setrlimit reads one rlimit, live for the call.
            let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        };
        set(libc::rlimit {
            rlim_cur: free as libc::rlim_t,
            ..limit
        });

        let (mut events, mut buf) = (Events::with_capacity(16), [0u8; 512]);
        assert!(l.turn(&mut events, &mut buf));
        let e = std::fs::File::open("/dev/null").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
        assert_eq!(accept_queue(&l.listeners[0].socket), 1, "it was accepted");
        assert_eq!(l.peers[0].session.state(), State::Active);

        set(limit);
        let deadline = Instant::now() + Duration::from_secs(10);
        while l.peers[0].session.state() != State::OpenSent {
            assert!(
                Instant::now() < deadline,
                "the connection was never accepted"
            );
            assert!(l.turn(&mut events, &mut buf));
        }
        assert!(matches!(first_message(&mut theirs), Message::Open(_)));
    }

    /// A snapshot names the last command it shows: one taken after [`Speaker::set_routes`]
    /// returned but before the speaker carried it out is older than
    /// [`Speaker::generation`], so that a caller waiting for the routes to go can tell it
    /// from one that shows them gone.
    #[test]
    fn a_snapshot_names_the_last_command_it_shows() {
        let mut speaker = Speaker::run(Poll::new().unwrap(), Vec::new(), vec![passive(1)]).unwrap();
        assert_eq!(
            (speaker.generation(), speaker.snapshot().generation),
            (0, 0)
        );
        let prefix: Prefix = "198.51.100.1/32".parse().unwrap();
        for round in 1..=3 {
            let routes: Routes = [(prefix, RouteAttributes::default())].into_iter().collect();
            speaker.set_routes(routes);
            speaker.set_routes(Routes::new());
            assert_eq!(speaker.generation(), 2 * round);
            let deadline = Instant::now() + Duration::from_secs(10);
            while speaker.snapshot().generation < speaker.generation() {
                assert!(
                    Instant::now() < deadline,
                    "the speaker never took its commands"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(speaker.snapshot().generation, 2 * round);
        }
        speaker.shutdown("test over");
    }

    /// A listener that cannot be bound is named in the error.
    #[test]
    fn a_listener_that_cannot_bind_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let Err(e) = Speaker::spawn(Config {
            peers: vec![passive(1)],
            listen: vec![addr],
        }) else {
            panic!("{addr} was bound twice");
        };
        assert!(
            matches!(e, SpawnError::Listen { addr: a, .. } if a == addr),
            "{e:?}"
        );
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
