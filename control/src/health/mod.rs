//! Active health checks of backend nodes.
//!
//! Each target (a node address and a probe spec) is probed every `interval`
//! (jittered ±10%, first probe at a random point of the first interval, so
//! hundreds of targets and several gateways do not probe in lockstep). A probe
//! is a TCP connect, or an HTTP/1.1 GET whose status must be 2xx/3xx; for
//! `externalTrafficPolicy: Local` Services the GET goes to kube-proxy's
//! `healthCheckNodePort` `/healthz`, whose `X-Load-Balancing-Endpoint-Weight`
//! header carries the node's local endpoint count, reported as the weight.
//! A probe that has not finished within `timeout` fails. A target starts
//! [`State::Down`], goes up after `rise` consecutive successes, and down after
//! `fall` consecutive failures; each change is a [`HealthEvent`] with its
//! reason, for the control loop, the logs, and the metrics.
//!
//! # Which path probes take
//! Probes leave through the gateway's own kernel stack and routing table to
//! the node's address; they are *not* encapsulated through the dataplane
//! tunnel. The tunnel exists only in the XDP workers, which carry VIP traffic
//! arriving from the router; the kernel here has no ipip module to build one
//! of its own, and with DSR the node would answer a tunnelled probe from the
//! VIP straight back to the gateway, not through the tunnel. The ports that
//! matter (kube-proxy's `healthCheckNodePort`, a node's service port) listen on
//! the node address anyway. So a probe proves the node is reachable from the
//! gateway over the same downstream link and next hop the tunnel uses, and that
//! the service (or kube-proxy) answers on it; what it cannot prove is that the
//! node decapsulates, which the dataplane's own counters cover.
//!
//! [`HealthChecker`] is the non-blocking engine (mio): it can be stepped by a
//! caller's loop with [`HealthChecker::poll`], or run on a small dedicated
//! thread with [`spawn`], which takes target lists and emits events over
//! crossbeam channels.

mod counter;
mod probe;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};

pub use crate::config::Timing;
pub use counter::Counter;
use probe::InFlight;
pub use probe::{evaluate as evaluate_response, WEIGHT_HEADER};

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    /// Connect to `port`; success once the handshake completes.
    Tcp { port: u16 },
    /// `GET path` on `port`; success on 2xx/3xx. With `weight_header`, the
    /// [`WEIGHT_HEADER`] value becomes the target's weight.
    Http {
        port: u16,
        path: String,
        weight_header: bool,
    },
}

impl Probe {
    pub fn port(&self) -> u16 {
        match self {
            Probe::Tcp { port } | Probe::Http { port, .. } => *port,
        }
    }
}

/// A probe and its timing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthSpec {
    pub probe: Probe,
    pub timing: Timing,
}

/// One thing to probe. Backends of several VIPs that share a node and a spec
/// share one target, so a node is not probed once per VIP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: IpAddr,
    pub spec: HealthSpec,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sa = SocketAddr::new(self.addr, self.spec.probe.port());
        match &self.spec.probe {
            Probe::Tcp { .. } => write!(f, "tcp://{sa}"),
            Probe::Http { path, .. } => write!(f, "http://{sa}{path}"),
        }
    }
}

/// Whether a target may receive traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Down,
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass { weight: Option<u32> },
    Fail(Reason),
}

/// Why a probe passed or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Passed,
    Refused,
    Timeout,
    Unreachable,
    HttpStatus(u16),
    BadResponse(&'static str),
    Io(io::ErrorKind),
}

impl Reason {
    fn from_io(e: &io::Error) -> Reason {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Reason::Refused,
            io::ErrorKind::TimedOut => Reason::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                Reason::Unreachable
            }
            k => Reason::Io(k),
        }
    }

    /// A short stable label, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Passed => "passed",
            Reason::Refused => "refused",
            Reason::Timeout => "timeout",
            Reason::Unreachable => "unreachable",
            Reason::HttpStatus(_) => "http_status",
            Reason::BadResponse(_) => "bad_response",
            Reason::Io(_) => "io_error",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Passed => f.write_str("probe passed"),
            Reason::Refused => f.write_str("connection refused"),
            Reason::Timeout => f.write_str("timed out"),
            Reason::Unreachable => f.write_str("unreachable"),
            Reason::HttpStatus(c) => write!(f, "HTTP status {c}"),
            Reason::BadResponse(why) => f.write_str(why),
            Reason::Io(k) => write!(f, "I/O error: {k}"),
        }
    }
}

/// A change of a target's state or weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// `rise` consecutive successes.
    Up,
    /// `fall` consecutive failures.
    Down,
    /// The reported weight changed while up.
    Weight { from: Option<u32>, to: Option<u32> },
}

/// A transition of one target, with the reason (for `Down`, the last failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub target: Target,
    pub transition: Transition,
    pub state: State,
    pub weight: Option<u32>,
    pub reason: Reason,
}

impl fmt::Display for HealthEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.transition {
            Transition::Up => write!(
                f,
                "{} is up after {} successes",
                self.target, self.target.spec.timing.rise
            ),
            Transition::Down => write!(
                f,
                "{} is down after {} failures ({})",
                self.target, self.target.spec.timing.fall, self.reason
            ),
            Transition::Weight { from, to } => {
                write!(f, "{} weight {:?} -> {:?}", self.target, from, to)
            }
        }
    }
}

/// Jitter of each interval, as a fraction of it.
const JITTER: f64 = 0.1;
/// Intervals and timeouts are capped here (config validation allows at most
/// 1 h), so no schedule arithmetic can overflow whatever a caller passes.
const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);
const WAKER: Token = Token(usize::MAX);

struct Running {
    token: Token,
    probe: InFlight,
    deadline: Instant,
}

struct Slot {
    counter: Counter,
    due: Instant,
    running: Option<Running>,
}

/// The probing engine: owns the sockets, the schedule, and every target's
/// rise/fall state.
pub struct HealthChecker {
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    slots: HashMap<Target, Slot>,
    by_token: HashMap<Token, Target>,
    next_token: usize,
    rng: fastrand::Rng,
}

impl HealthChecker {
    pub fn new() -> io::Result<HealthChecker> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(HealthChecker {
            poll,
            events: Events::with_capacity(256),
            waker,
            slots: HashMap::new(),
            by_token: HashMap::new(),
            next_token: 0,
            rng: fastrand::Rng::new(),
        })
    }

    /// Wakes a [`poll`](Self::poll) in progress from another thread.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Replaces the set of targets. Targets already known keep their state
    /// and schedule; new ones start down, first probed within one interval.
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = Target>) {
        let now = Instant::now();
        let mut next: HashMap<Target, Slot> = HashMap::new();
        for t in targets {
            if next.contains_key(&t) {
                continue;
            }
            let slot = match self.slots.remove(&t) {
                Some(slot) => slot,
                None => {
                    let first = t
                        .spec
                        .timing
                        .interval
                        .min(MAX_PERIOD)
                        .mul_f64(self.rng.f64());
                    Slot {
                        counter: Counter::default(),
                        due: now + first,
                        running: None,
                    }
                }
            };
            next.insert(t, slot);
        }
        for (_, slot) in self.slots.drain() {
            if let Some(mut r) = slot.running {
                let _ = self.poll.registry().deregister(&mut r.probe.stream);
                self.by_token.remove(&r.token);
            }
        }
        self.slots = next;
    }

    /// The current state and reported weight of a target.
    pub fn state(&self, target: &Target) -> Option<(State, Option<u32>)> {
        self.slots
            .get(target)
            .map(|s| (s.counter.state(), s.counter.weight()))
    }

    /// Runs due probes and waits at most `max_wait` (or until the next probe
    /// is due or times out) for socket readiness; appends transitions to `out`.
    pub fn poll(
        &mut self,
        max_wait: Option<Duration>,
        out: &mut Vec<HealthEvent>,
    ) -> io::Result<()> {
        self.start_due(Instant::now(), out);
        let now = Instant::now();
        let next = self
            .slots
            .values()
            .map(|s| s.running.as_ref().map_or(s.due, |r| r.deadline))
            .min();
        let mut wait = next.map(|t| t.saturating_duration_since(now));
        if let Some(m) = max_wait {
            wait = Some(wait.map_or(m, |w| w.min(m)));
        }
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let ready: Vec<Token> = self
            .events
            .iter()
            .map(|e| e.token())
            .filter(|t| *t != WAKER)
            .collect();
        for token in ready {
            let Some(target) = self.by_token.get(&token).cloned() else {
                continue;
            };
            let outcome = self
                .slots
                .get_mut(&target)
                .and_then(|s| s.running.as_mut())
                .and_then(|r| r.probe.advance());
            if let Some(outcome) = outcome {
                self.finish(&target, outcome, out);
            }
        }
        let now = Instant::now();
        let expired: Vec<Target> = self
            .slots
            .iter()
            .filter(|(_, s)| s.running.as_ref().is_some_and(|r| r.deadline <= now))
            .map(|(t, _)| t.clone())
            .collect();
        for target in expired {
            self.finish(&target, Outcome::Fail(Reason::Timeout), out);
        }
        self.start_due(Instant::now(), out);
        Ok(())
    }

    fn start_due(&mut self, now: Instant, out: &mut Vec<HealthEvent>) {
        let due: Vec<Target> = self
            .slots
            .iter()
            .filter(|(_, s)| s.running.is_none() && s.due <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for target in due {
            let timing = target.spec.timing;
            let factor = 1.0 + JITTER * (2.0 * self.rng.f64() - 1.0);
            let addr = SocketAddr::new(target.addr, target.spec.probe.port());
            let started = InFlight::start(addr, &target.spec.probe).and_then(|mut probe| {
                let token = Token(self.next_token);
                self.next_token = (self.next_token + 1) % (usize::MAX - 1);
                self.poll
                    .registry()
                    .register(
                        &mut probe.stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|e| Reason::from_io(&e))?;
                Ok(Running {
                    token,
                    probe,
                    deadline: now + timing.timeout.min(MAX_PERIOD),
                })
            });
            let Some(slot) = self.slots.get_mut(&target) else {
                continue;
            };
            slot.due = now + timing.interval.min(MAX_PERIOD).mul_f64(factor);
            match started {
                Ok(r) => {
                    self.by_token.insert(r.token, target.clone());
                    slot.running = Some(r);
                }
                Err(reason) => self.finish(&target, Outcome::Fail(reason), out),
            }
        }
    }

    fn finish(&mut self, target: &Target, outcome: Outcome, out: &mut Vec<HealthEvent>) {
        let Some(slot) = self.slots.get_mut(target) else {
            return;
        };
        if let Some(mut r) = slot.running.take() {
            let _ = self.poll.registry().deregister(&mut r.probe.stream);
            self.by_token.remove(&r.token);
        }
        let timing = target.spec.timing;
        if let Some((transition, reason)) = slot.counter.record(&outcome, timing.rise, timing.fall)
        {
            let event = HealthEvent {
                target: target.clone(),
                transition,
                state: slot.counter.state(),
                weight: slot.counter.weight(),
                reason,
            };
            match event.transition {
                Transition::Down => {
                    tracing::warn!(target = %event.target, reason = %event.reason, "backend down")
                }
                _ => tracing::info!(target = %event.target, "{event}"),
            }
            out.push(event);
        }
    }
}

enum Command {
    SetTargets(Vec<Target>),
}

/// A [`HealthChecker`] on its own thread. Dropping it stops the thread.
pub struct HealthThread {
    commands: Option<Sender<Command>>,
    waker: Arc<Waker>,
    join: Option<JoinHandle<()>>,
}

/// Starts the checker thread; transitions arrive on the returned receiver.
pub fn spawn() -> io::Result<(HealthThread, Receiver<HealthEvent>)> {
    let mut checker = HealthChecker::new()?;
    let waker = checker.waker();
    let (cmd_tx, cmd_rx) = crossbeam::channel::unbounded::<Command>();
    let (ev_tx, ev_rx) = crossbeam::channel::unbounded();
    let join = std::thread::Builder::new()
        .name("dsrgate-health".into())
        .spawn(move || {
            let mut out = Vec::new();
            loop {
                loop {
                    match cmd_rx.try_recv() {
                        Ok(Command::SetTargets(t)) => checker.set_targets(t),
                        Err(crossbeam::channel::TryRecvError::Empty) => break,
                        Err(crossbeam::channel::TryRecvError::Disconnected) => return,
                    }
                }
                if let Err(e) = checker.poll(Some(Duration::from_secs(1)), &mut out) {
                    tracing::error!(error = %e, "health checker poll failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
                for ev in out.drain(..) {
                    if ev_tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok((
        HealthThread {
            commands: Some(cmd_tx),
            waker,
            join: Some(join),
        },
        ev_rx,
    ))
}

impl HealthThread {
    /// Replaces the probed targets (see [`HealthChecker::set_targets`]).
    pub fn set_targets(&self, targets: Vec<Target>) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(Command::SetTargets(targets));
            let _ = self.waker.wake();
        }
    }
}

impl Drop for HealthThread {
    fn drop(&mut self) {
        self.commands = None;
        let _ = self.waker.wake();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}
