//! Active health checks of backend nodes.
//!
//! Each target (a node address and a probe spec) is probed every `interval`
//! (jittered ±10%, first probe at a random point of the first interval, so
//! hundreds of targets and several gateways do not probe in lockstep). A probe
//! is a TCP connect, or an HTTP/1.1 GET whose status must be 2xx/3xx; for
//! `externalTrafficPolicy: Local` Services the GET goes to kube-proxy's
//! `healthCheckNodePort` `/healthz`, whose `X-Load-Balancing-Endpoint-Weight`
//! header carries the node's local endpoint count; it is read (a malformed one
//! fails the probe) and reported, but the table's weight is the EndpointSlices'.
//! A probe that has not finished within `timeout` fails. A target starts
//! [`State::Down`] (unless it replaces an up one, see [`Targets`]), goes up
//! after `rise` consecutive successes, and down after
//! `fall` consecutive failures; each change is a [`HealthEvent`] with its
//! reason, for the control loop, the logs, and the metrics. A failure that
//! changes nothing still makes one ([`Transition::StillDown`]) when it tells
//! something new: the first failure of a target that never came up, or a
//! down target failing for another reason than the one last reported. So does
//! the result that gives a target that never came up its first verdict, down
//! ([`HealthEvent::settled`], see [`Counter::settled`]).
//!
//! A down target is also judged by whether its node answers ([`Reason::answered`]): an
//! HTTP status that fails is an answer (kube-proxy's 503 for a node whose endpoints are
//! all terminating: a live node asking to be drained); a timeout, a refused or failed
//! connection, or no readable HTTP response is not. After `fall` failures in a row
//! without an answer the target is [`HealthEvent::silent`] (its node taken for dead,
//! [`Transition::Silent`]) until it answers again ([`Transition::Answers`]). Only the
//! rule for draining nodes reads it ([`crate::sources::VipSpec::serving_backends`]).
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
    /// [`WEIGHT_HEADER`] value must be readable; it is reported, not used as the
    /// table's weight.
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

/// One thing to probe. Equality and hashing look only at what is probed (the
/// address and the [`Probe`]), not at the timing: a reload that only retimes a
/// check finds the same target and keeps its state, as HAProxy and IPVS keep a
/// server's state across a reload, while a new port, path or probe kind is a
/// new target (which may start with the verdict of the one it replaces, see
/// [`Targets`]). Backends of several VIPs that share a node and
/// a probe share one target, so a node is not probed once per VIP; if their
/// timings differ, the first in the list given to
/// [`HealthChecker::set_targets`] is used, and the daemon's list gives the
/// strictest of them (`ServiceSet::health_targets`).
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: IpAddr,
    pub spec: HealthSpec,
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr && self.spec.probe == other.spec.probe
    }
}

impl Eq for Target {}

impl std::hash::Hash for Target {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
        self.spec.probe.hash(state);
    }
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

/// The targets to probe, each with its users: opaque keys of what it probes for (the
/// daemon's are its VIPs), which say which new target replaces which old one.
///
/// Make-before-break: a new target (not in the previous list) on a node whose user probed
/// that node with another target before starts with that target's verdict if it was up,
/// instead of down, and from there its own probes apply `rise` and `fall` as usual. A
/// Service's probe changes with no change of the node (`externalTrafficPolicy` Cluster to
/// Local moves it from kube-proxy's port to the `healthCheckNodePort`; a reload changes a
/// port, path or type), and started down, every gateway at once emptied the VIP's table
/// and withdrew it until the new probe had risen. A node that was down, or not probed
/// yet, still starts down, and so does a target with no predecessor (a new Service, a new
/// node): a verdict is never made up, only carried over from the same node for the same
/// user. With several predecessors, the target starts up only if all of them were up.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    list: Vec<Target>,
    /// Per target of `list`, its users, sorted.
    users: Vec<Vec<String>>,
    index: HashMap<Target, usize>,
}

impl Targets {
    /// Adds `user` to `target`, which is added if new (the first one's timing stays);
    /// returns the stored target.
    pub fn insert(&mut self, target: Target, user: &str) -> &mut Target {
        let i = match self.index.get(&target) {
            Some(&i) => i,
            None => {
                self.index.insert(target.clone(), self.list.len());
                self.list.push(target);
                self.users.push(Vec::new());
                self.list.len() - 1
            }
        };
        if let Err(at) = self.users[i].binary_search_by(|u| u.as_str().cmp(user)) {
            self.users[i].insert(at, user.to_owned());
        }
        &mut self.list[i]
    }

    /// Who uses `target`, if it is in the list.
    pub fn users(&self, target: &Target) -> Option<&[String]> {
        self.index.get(target).map(|&i| self.users[i].as_slice())
    }

    /// For each target of `self` that `prev` does not have and that replaces some of
    /// `prev`'s (see [`Targets`]) all up by `verdict`: the target, the first it replaces,
    /// and the weight they agree on (else none).
    fn inherited(
        &self,
        prev: &Targets,
        verdict: impl Fn(&Target) -> Option<(State, Option<u32>)>,
    ) -> Vec<(Target, Target, Option<u32>)> {
        let mut out = Vec::new();
        for (t, users) in self.list.iter().zip(&self.users) {
            if prev.index.contains_key(t) || users.is_empty() {
                continue;
            }
            let replaced: Vec<&Target> = prev
                .list
                .iter()
                .zip(&prev.users)
                .filter(|(p, pu)| p.addr == t.addr && pu.iter().any(|u| users.contains(u)))
                .map(|(p, _)| p)
                .collect();
            let Some(&first) = replaced.first() else {
                continue;
            };
            let mut weights = Vec::new();
            for p in &replaced {
                match verdict(p) {
                    Some((State::Up, w)) => weights.push(w),
                    _ => break,
                }
            }
            if weights.len() < replaced.len() {
                continue;
            }
            let weight = weights[0].filter(|_| weights.iter().all(|w| *w == weights[0]));
            out.push((t.clone(), first.clone(), weight));
        }
        out
    }
}

impl PartialEq for Targets {
    /// The same targets (with their timings) and users, in the same order.
    fn eq(&self, other: &Self) -> bool {
        self.users == other.users
            && self.list.len() == other.list.len()
            && self
                .list
                .iter()
                .zip(&other.list)
                .all(|(a, b)| a == b && a.spec.timing == b.spec.timing)
    }
}

impl std::ops::Deref for Targets {
    type Target = [Target];
    fn deref(&self) -> &[Target] {
        &self.list
    }
}

impl IntoIterator for Targets {
    type Item = Target;
    type IntoIter = std::vec::IntoIter<Target>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.into_iter()
    }
}

impl<'a> IntoIterator for &'a Targets {
    type Item = &'a Target;
    type IntoIter = std::slice::Iter<'a, Target>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

impl FromIterator<Target> for Targets {
    /// Targets without users (which inherit nothing); of duplicates the first stays.
    fn from_iter<I: IntoIterator<Item = Target>>(iter: I) -> Self {
        let mut out = Targets::default();
        for t in iter {
            if !out.index.contains_key(&t) {
                out.index.insert(t.clone(), out.list.len());
                out.list.push(t);
                out.users.push(Vec::new());
            }
        }
        out
    }
}

impl From<Vec<Target>> for Targets {
    fn from(v: Vec<Target>) -> Self {
        v.into_iter().collect()
    }
}

impl<const N: usize> From<[Target; N]> for Targets {
    fn from(v: [Target; N]) -> Self {
        v.into_iter().collect()
    }
}

/// Whether a target may receive traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Down,
}

/// A target's verdict as the table rules read it
/// ([`crate::sources::VipSpec::serving_backends`]): its [`State`], and for a down one
/// whether its node still answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Up,
    /// Down, its node answering (or not yet `fall` probes in a row without an answer).
    Down,
    /// Down, `fall` probes in a row without an answer ([`Counter::silent`]).
    Silent,
}

impl Verdict {
    pub fn new(state: State, silent: bool) -> Verdict {
        match (state, silent) {
            (State::Up, _) => Verdict::Up,
            (State::Down, false) => Verdict::Down,
            (State::Down, true) => Verdict::Silent,
        }
    }
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

    /// Whether the node answered the probe: a pass, or an HTTP status that fails
    /// (kube-proxy answers 503 on purpose for a node whose endpoints are all
    /// terminating). No answer in time, a refused or failed connection, or a response
    /// that is not readable HTTP is none: what a dead node (or one whose proxy is down)
    /// gives, and what the rule for draining nodes does not wait out
    /// ([`crate::sources::VipSpec::serving_backends`]).
    pub fn answered(&self) -> bool {
        matches!(self, Reason::Passed | Reason::HttpStatus(_))
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
    /// A failure while down, with a reason not reported since the target went
    /// down (or started): the state stays down, the reason is news. Or the result
    /// that settles a target that never came up (see [`HealthEvent::settled`]),
    /// with the reason last reported.
    StillDown,
    /// A new target starts up, as `from`, the up target it replaces (see
    /// [`Targets`]), was: not a transition of the node.
    Inherited { from: Target },
    /// A down target's last `fall` probes all went unanswered (see [`Reason::answered`]):
    /// it is now [`HealthEvent::silent`], its node taken for dead.
    Silent,
    /// A silent target answered with no other news: a pass, short of `rise` in a row (a
    /// failing status is a new reason, a [`Transition::StillDown`] that is not silent).
    Answers,
}

/// A transition of one target, with the reason (for `Down` and `StillDown`,
/// the last failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub target: Target,
    /// The run of the target that made this transition; see [`Epochs`].
    pub epoch: u64,
    pub transition: Transition,
    pub state: State,
    pub weight: Option<u32>,
    pub reason: Reason,
    /// The target has its first verdict of this run ([`Counter::settled`]): up, or down
    /// after `fall` failures in a row (or flapping for `rise + fall` probes).
    pub settled: bool,
    /// Down, and its last `fall` probes went unanswered ([`Counter::silent`]).
    pub silent: bool,
}

impl HealthEvent {
    /// The target's verdict after this event.
    pub fn verdict(&self) -> Verdict {
        Verdict::new(self.state, self.silent)
    }

    /// Why a down target is down, for the status: the last failure, and whether the
    /// node has stopped answering (then a draining node leaves the table too).
    pub fn why(&self) -> String {
        if self.silent {
            format!(
                "{}; no answer to {} probes in a row",
                self.reason, self.target.spec.timing.fall
            )
        } else {
            self.reason.to_string()
        }
    }
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
            Transition::StillDown => write!(f, "{} is down ({})", self.target, self.reason),
            Transition::Inherited { from } => {
                write!(f, "{} starts up, as {from} which it replaces", self.target)
            }
            Transition::Silent => write!(
                f,
                "{} is down and does not answer ({})",
                self.target,
                self.why()
            ),
            Transition::Answers => {
                write!(
                    f,
                    "{} answers again ({}), still down",
                    self.target, self.reason
                )
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
    epoch: u64,
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
    /// Epochs of [`set_targets`](Self::set_targets) (a [`HealthThread`]
    /// assigns its own and passes them in).
    epochs: Epochs,
    /// The last list given to [`set_targets`](Self::set_targets).
    targets: Targets,
}

/// Which run of each target is current. A target gets a new epoch each time it
/// is added (it was not in the previous list) and keeps it while it stays,
/// timing changes included; every [`HealthEvent`] carries its epoch.
///
/// Why: a consumer reads events some time after they were made. If a target is
/// removed and added again in between, the checker starts it afresh (down),
/// but the old run's `Up` may still be queued; taken as current it would hold
/// the target up while the checker holds it down, and since failures while
/// down make no transition, nothing would ever take it out. Epochs make such
/// an event recognisably stale ([`HealthThread::is_current`]).
#[derive(Debug, Default)]
pub struct Epochs {
    current: HashMap<Target, u64>,
    last: u64,
}

impl Epochs {
    /// Makes `targets` (duplicates dropped, the first kept) the current list and
    /// returns each with its epoch: the one it had if it stays, else a new one.
    pub fn assign(&mut self, targets: impl IntoIterator<Item = Target>) -> Vec<(Target, u64)> {
        let mut next = HashMap::new();
        let mut out = Vec::new();
        for t in targets {
            if next.contains_key(&t) {
                continue;
            }
            let epoch = match self.current.get(&t) {
                Some(&e) => e,
                None => {
                    self.last += 1;
                    self.last
                }
            };
            next.insert(t.clone(), epoch);
            out.push((t, epoch));
        }
        self.current = next;
        out
    }

    /// Whether `ev` comes from the current run of a current target.
    pub fn is_current(&self, ev: &HealthEvent) -> bool {
        self.current.get(&ev.target) == Some(&ev.epoch)
    }
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
            epochs: Epochs::default(),
            targets: Targets::default(),
        })
    }

    /// Wakes a [`poll`](Self::poll) in progress from another thread.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Replaces the set of targets. Targets already known keep their state
    /// and schedule (a changed timing applies from the next probe, and the
    /// rise/fall streak starts over so the new counts apply in full); new ones
    /// start down, or up as the up targets they replace ([`Targets`]), first
    /// probed within one interval. Returns a [`Transition::Inherited`] event
    /// per target that starts up.
    pub fn set_targets(&mut self, targets: impl Into<Targets>) -> Vec<HealthEvent> {
        let targets = targets.into();
        let stamped = self.epochs.assign(targets.iter().cloned());
        self.set_stamped(targets, stamped)
    }

    /// [`set_targets`](Self::set_targets) with epochs from [`Epochs::assign`] (a
    /// [`HealthThread`] assigns its own). Which new target inherits is decided here, from
    /// the slots' own state, never from a verdict reported earlier: a target that has just
    /// gone down, its event not yet read, is down here.
    fn set_stamped(&mut self, targets: Targets, stamped: Vec<(Target, u64)>) -> Vec<HealthEvent> {
        let inherited = targets.inherited(&self.targets, |t| self.state(t));
        let events = inherited_events(inherited, &stamped);
        self.apply(stamped, &seeds(&events));
        self.targets = targets;
        events
    }

    /// Applies a stamped list to the slots:
    /// a known target whose epoch changed was removed and added again since,
    /// and starts afresh; a new one in `seeds` starts up with that weight.
    fn apply(&mut self, targets: Vec<(Target, u64)>, seeds: &HashMap<Target, Option<u32>>) {
        let now = Instant::now();
        let mut next: HashMap<Target, Slot> = HashMap::new();
        for (t, epoch) in targets {
            if next.contains_key(&t) {
                continue;
            }
            let interval = t.spec.timing.interval.min(MAX_PERIOD);
            let kept = match self.slots.remove_entry(&t) {
                Some((old, mut slot)) if slot.epoch == epoch => {
                    if old.spec.timing != t.spec.timing {
                        slot.counter.retimed();
                        // A shorter interval applies now, not after the old one.
                        slot.due = slot.due.min(now + interval.mul_f64(self.rng.f64()));
                    }
                    Some(slot)
                }
                Some((_, stale)) => {
                    self.stop(stale);
                    None
                }
                None => None,
            };
            let slot = kept.unwrap_or_else(|| Slot {
                epoch,
                counter: seeds
                    .get(&t)
                    .map_or_else(Counter::default, |w| Counter::inherited(*w)),
                due: now + interval.mul_f64(self.rng.f64()),
                running: None,
            });
            next.insert(t, slot);
        }
        let gone: Vec<Slot> = self.slots.drain().map(|(_, s)| s).collect();
        for slot in gone {
            self.stop(slot);
        }
        self.slots = next;
    }

    /// Drops a slot's probe in flight, if any.
    fn stop(&mut self, slot: Slot) {
        if let Some(mut r) = slot.running {
            let _ = self.poll.registry().deregister(&mut r.probe.stream);
            self.by_token.remove(&r.token);
        }
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
        // The slot's own key has the current timing; `target` may be a copy
        // taken before a retiming.
        let Some(target) = self.slots.get_key_value(target).map(|(t, _)| t.clone()) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&target) else {
            return;
        };
        if let Some(mut r) = slot.running.take() {
            let _ = self.poll.registry().deregister(&mut r.probe.stream);
            self.by_token.remove(&r.token);
        }
        let timing = target.spec.timing;
        let was_settled = slot.counter.settled();
        if let Some((transition, reason)) = slot.counter.record(&outcome, timing.rise, timing.fall)
        {
            let event = HealthEvent {
                target,
                epoch: slot.epoch,
                transition,
                state: slot.counter.state(),
                weight: slot.counter.weight(),
                reason,
                settled: slot.counter.settled(),
                silent: slot.counter.silent(),
            };
            let (reason, silent) = (event.why(), event.silent);
            match event.transition {
                Transition::Down => {
                    tracing::warn!(target = %event.target, %reason, silent, "backend down")
                }
                // A target that never came up, now settled down: a line of its own, the
                // moment a VIP's first announcement stops waiting for it.
                Transition::StillDown if !was_settled && event.settled => {
                    tracing::warn!(target = %event.target, %reason, silent, "backend down: first verdict")
                }
                Transition::StillDown => {
                    tracing::warn!(target = %event.target, %reason, silent, "backend still down")
                }
                Transition::Silent => {
                    tracing::warn!(target = %event.target, %reason, "backend down and not answering: taken for dead, a draining node leaves too")
                }
                _ => tracing::info!(target = %event.target, "{event}"),
            }
            out.push(event);
        }
    }
}

/// The events for targets that start up as the ones they replace.
fn inherited_events(
    inherited: Vec<(Target, Target, Option<u32>)>,
    stamped: &[(Target, u64)],
) -> Vec<HealthEvent> {
    let epochs: HashMap<&Target, u64> = stamped.iter().map(|(t, e)| (t, *e)).collect();
    inherited
        .into_iter()
        .filter_map(|(target, from, weight)| {
            let epoch = *epochs.get(&target)?;
            let event = HealthEvent {
                target,
                epoch,
                transition: Transition::Inherited { from },
                state: State::Up,
                weight,
                reason: Reason::Passed,
                settled: true,
                silent: false,
            };
            tracing::info!(target = %event.target, "{event}");
            Some(event)
        })
        .collect()
}

/// The targets that start up, with their weight.
fn seeds(events: &[HealthEvent]) -> HashMap<Target, Option<u32>> {
    events
        .iter()
        .map(|e| (e.target.clone(), e.weight))
        .collect()
}

enum Command {
    /// A new list, its epochs, and where to say it is applied (its
    /// [`Transition::Inherited`] events sent).
    SetTargets {
        targets: Targets,
        stamped: Vec<(Target, u64)>,
        done: Sender<()>,
    },
}

/// How long [`HealthThread::set_targets`] waits for the thread to apply a list. The
/// thread never waits on the network, so this is reached only if it is stuck.
const APPLY_BOUND: Duration = Duration::from_secs(2);

/// A [`HealthChecker`] on its own thread. Dropping it stops the thread.
pub struct HealthThread {
    /// Assigned here, on the caller's side, so that
    /// [`is_current`](Self::is_current) knows the current epochs the moment
    /// [`set_targets`](Self::set_targets) returns, whatever the thread is doing.
    epochs: std::sync::Mutex<Epochs>,
    commands: Option<Sender<Command>>,
    waker: Arc<Waker>,
    join: Option<JoinHandle<()>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Replaced whole, so consistent after any panic.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the checker thread; transitions arrive on the returned receiver.
///
/// The receiver disconnects when the thread ends, however it ends: the thread alone
/// holds the sender.
pub fn spawn() -> io::Result<(HealthThread, Receiver<HealthEvent>)> {
    let mut checker = HealthChecker::new()?;
    let waker = checker.waker();
    let (cmd_tx, cmd_rx) = crossbeam::channel::unbounded::<Command>();
    // Unbounded, and this matters: `set_targets` waits for the thread to have sent a
    // list's events, and its caller (the daemon) is the one who reads them, so a send
    // that could wait for room would deadlock the two.
    let (ev_tx, ev_rx) = crossbeam::channel::unbounded();
    let join = std::thread::Builder::new()
        .name("dsrgate-health".into())
        .spawn(move || {
            let send = |out: &mut Vec<HealthEvent>| out.drain(..).all(|ev| ev_tx.send(ev).is_ok());
            let mut out = Vec::new();
            loop {
                loop {
                    match cmd_rx.try_recv() {
                        Ok(Command::SetTargets {
                            targets,
                            stamped,
                            done,
                        }) => {
                            // Test builds: end this thread on a new target list.
                            #[cfg(feature = "failpoints")]
                            fail::fail_point!("health-set-targets");
                            out.extend(checker.set_stamped(targets, stamped));
                            if !send(&mut out) {
                                return;
                            }
                            let _ = done.send(());
                        }
                        Err(crossbeam::channel::TryRecvError::Empty) => break,
                        Err(crossbeam::channel::TryRecvError::Disconnected) => return,
                    }
                }
                if let Err(e) = checker.poll(Some(Duration::from_secs(1)), &mut out) {
                    tracing::error!(error = %e, "health checker poll failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
                if !send(&mut out) {
                    return;
                }
            }
        })?;
    Ok((
        HealthThread {
            epochs: std::sync::Mutex::new(Epochs::default()),
            commands: Some(cmd_tx),
            waker,
            join: Some(join),
        },
        ev_rx,
    ))
}

impl HealthThread {
    /// Replaces the probed targets (see [`HealthChecker::set_targets`]), and returns
    /// once the thread has applied them, or has ended, or after [`APPLY_BOUND`].
    ///
    /// The thread decides which new targets start up as those they replace, from its
    /// own state when it applies the list: a verdict read here could be outdated by a
    /// `Down` the thread has just made, which then, being about a replaced target, would
    /// be dropped as stale while the new target held the failed node up. The
    /// [`Transition::Inherited`] events are sent before this returns: a consumer that
    /// takes the events waiting before it acts on the new list (the daemon takes them
    /// before it publishes) never sees a replaced probe without a verdict.
    pub fn set_targets(&self, targets: impl Into<Targets>) {
        let targets = targets.into();
        let (done_tx, done) = crossbeam::channel::bounded(1);
        {
            let mut epochs = lock(&self.epochs);
            let stamped = epochs.assign(targets.iter().cloned());
            if let Some(tx) = &self.commands {
                // Sent under the lock, so the thread sees lists in assignment order.
                let _ = tx.send(Command::SetTargets {
                    targets,
                    stamped,
                    done: done_tx,
                });
                let _ = self.waker.wake();
            }
        }
        // A thread that has ended, or ends before it applies this, drops `done_tx`
        // (with the command): this returns at once, and the caller learns of the end
        // from the events' receiver.
        let _ = done.recv_timeout(APPLY_BOUND);
    }

    /// Whether `ev` is about a target's current run: false for a target no
    /// longer probed, and for one removed and added again since `ev` was made
    /// (see [`Epochs`]). A consumer that ignores the others holds the same
    /// state as the checker.
    pub fn is_current(&self, ev: &HealthEvent) -> bool {
        lock(&self.epochs).is_current(ev)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const BOUND: Duration = Duration::from_secs(20);

    fn tcp(addr: SocketAddr, interval_ms: u64, rise: u32, fall: u32) -> Target {
        Target {
            addr: addr.ip(),
            spec: HealthSpec {
                probe: Probe::Tcp { port: addr.port() },
                timing: Timing {
                    interval: Duration::from_millis(interval_ms),
                    timeout: Duration::from_millis(interval_ms),
                    rise,
                    fall,
                },
            },
        }
    }

    /// Polls until an event arrives; panics after [`BOUND`].
    fn next_event(checker: &mut HealthChecker) -> HealthEvent {
        let deadline = Instant::now() + BOUND;
        let mut out = Vec::new();
        while out.is_empty() {
            assert!(
                Instant::now() < deadline,
                "no health event within the bound"
            );
            checker
                .poll(Some(Duration::from_millis(20)), &mut out)
                .unwrap();
        }
        out.remove(0)
    }

    #[test]
    fn identity_is_what_is_probed_not_when() {
        let addr: SocketAddr = "192.0.2.1:8080".parse().unwrap();
        let t = tcp(addr, 2000, 2, 3);
        let retimed = tcp(addr, 3000, 5, 1);
        assert_eq!(t, retimed);
        // What the daemon's services_changed does with its state map on a reload.
        let mut states = HashMap::from([(t.clone(), State::Up)]);
        let keep: std::collections::HashSet<&Target> = [&retimed].into_iter().collect();
        states.retain(|t, _| keep.contains(t));
        assert_eq!(states.get(&retimed), Some(&State::Up));

        let other_port = tcp("192.0.2.1:8081".parse().unwrap(), 2000, 2, 3);
        let other_node = tcp("192.0.2.2:8080".parse().unwrap(), 2000, 2, 3);
        let mut http = t.clone();
        http.spec.probe = Probe::Http {
            port: 8080,
            path: "/healthz".into(),
            weight_header: false,
        };
        let mut other_path = http.clone();
        other_path.spec.probe = Probe::Http {
            port: 8080,
            path: "/ready".into(),
            weight_header: false,
        };
        for different in [other_port, other_node, http.clone(), other_path] {
            assert_ne!(t, different);
            assert!(!keep.contains(&different));
        }
        assert_ne!(http, t);
    }

    #[test]
    fn epochs_change_only_when_a_target_comes_back() {
        let a = tcp("192.0.2.1:80".parse().unwrap(), 1000, 1, 1);
        let b = tcp("192.0.2.2:80".parse().unwrap(), 1000, 1, 1);
        let mut e = Epochs::default();
        let first = e.assign([a.clone(), b.clone(), a.clone()]);
        assert_eq!(first.len(), 2, "duplicates are dropped");
        let ev = |t: &Target, epoch| HealthEvent {
            target: t.clone(),
            epoch,
            transition: Transition::Up,
            state: State::Up,
            weight: None,
            reason: Reason::Passed,
            settled: true,
            silent: false,
        };
        let up_a = ev(&a, first[0].1);
        assert!(e.is_current(&up_a));
        // Retimed: the same run.
        let kept = e.assign([tcp("192.0.2.1:80".parse().unwrap(), 3000, 2, 2), b.clone()]);
        assert_eq!(kept[0].1, first[0].1);
        assert!(e.is_current(&up_a));
        // Removed, then added again: a new run, and the old run's event is stale.
        e.assign([b.clone()]);
        assert!(!e.is_current(&up_a));
        let again = e.assign([a.clone(), b.clone()]);
        assert_ne!(again[0].1, first[0].1);
        assert!(!e.is_current(&up_a));
        assert!(e.is_current(&ev(&a, again[0].1)));
        assert_eq!(again[1].1, first[1].1, "b stayed throughout");
    }

    /// A target that never comes up says why, once: the daemon's status shows
    /// the reason instead of "not probed yet", and the log has it. Its first verdict,
    /// after `fall` failures, is news too (a VIP's first announcement waits for it),
    /// and then nothing more.
    #[test]
    fn a_target_that_never_comes_up_says_why_once() {
        // Nothing listens on this port (bound, then closed).
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut checker = HealthChecker::new().unwrap();
        let t = tcp(addr, 30, 2, 2);
        checker.set_targets([t.clone()]);
        let ev = next_event(&mut checker);
        assert_eq!(
            (
                ev.transition.clone(),
                ev.state,
                ev.reason.clone(),
                ev.settled
            ),
            (Transition::StillDown, State::Down, Reason::Refused, false)
        );
        assert_eq!(
            ev.to_string(),
            format!("tcp://{addr} is down (connection refused)")
        );
        let verdict = next_event(&mut checker);
        assert_eq!(
            (verdict.transition, verdict.reason, verdict.settled),
            (Transition::StillDown, Reason::Refused, true)
        );
        let mut out = Vec::new();
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            checker
                .poll(Some(Duration::from_millis(20)), &mut out)
                .unwrap();
        }
        assert!(out.is_empty(), "only once: {out:?}");
    }

    /// A backend whose first probe fails (it starts late, or the probe is lost) has no
    /// verdict yet: it has one once up. Taken as its verdict, that one failure let a
    /// starting gateway announce a VIP with the backend left out of its table.
    #[test]
    fn a_first_failure_is_no_verdict() {
        // Nothing listens on this port until the first probe has failed.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut checker = HealthChecker::new().unwrap();
        // A `fall` far above the failures the test may see before it listens.
        checker.set_targets([tcp(addr, 30, 2, 20)]);
        let first = next_event(&mut checker);
        assert_eq!(
            (first.transition, first.settled),
            (Transition::StillDown, false)
        );
        let _listener = TcpListener::bind(addr).unwrap();
        let up = next_event(&mut checker);
        assert_eq!((up.transition, up.settled), (Transition::Up, true));
    }

    /// A reload that changes only the timing keeps an up target up (no event,
    /// no new rise), and the new `fall` then takes it down.
    #[test]
    fn retiming_keeps_an_up_target_up() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut checker = HealthChecker::new().unwrap();
        checker.set_targets([tcp(addr, 50, 1, 1)]);
        let up = next_event(&mut checker);
        assert_eq!(up.transition, Transition::Up);

        let retimed = tcp(addr, 80, 3, 2);
        checker.set_targets([retimed.clone()]);
        assert_eq!(checker.state(&retimed), Some((State::Up, None)));
        let mut out = Vec::new();
        let until = Instant::now() + Duration::from_millis(400);
        while Instant::now() < until {
            checker
                .poll(Some(Duration::from_millis(20)), &mut out)
                .unwrap();
        }
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(checker.state(&retimed), Some((State::Up, None)));

        drop(listener);
        let down = next_event(&mut checker);
        assert_eq!((down.transition, down.epoch), (Transition::Down, up.epoch));
        assert_eq!(
            down.target.spec.timing.fall, 2,
            "reported with the new timing"
        );

        // A new port is a new target: it starts down.
        let moved = tcp(SocketAddr::new(addr.ip(), addr.port() ^ 1), 80, 1, 1);
        checker.set_targets([moved.clone()]);
        assert_eq!(checker.state(&moved), Some((State::Down, None)));
    }

    /// The race the epochs close: an `Up` still queued when its target is removed
    /// and added again is stale, and the checker restarts the target so the new
    /// run reports its own `Up`, which is current.
    #[test]
    fn an_event_from_before_a_readd_is_stale() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let t = tcp(listener.local_addr().unwrap(), 50, 1, 1);
        let (checker, rx) = spawn().unwrap();
        checker.set_targets(vec![t.clone()]);
        let queued = rx.recv_timeout(BOUND).unwrap();
        assert_eq!(queued.transition, Transition::Up);
        assert!(checker.is_current(&queued));

        checker.set_targets(vec![]);
        checker.set_targets(vec![t.clone()]);
        assert!(!checker.is_current(&queued), "{queued:?}");
        // Any event of the old run still queued is stale too; the new run rises.
        let deadline = Instant::now() + BOUND;
        let fresh = loop {
            assert!(Instant::now() < deadline, "the re-added target never rose");
            let ev = rx.recv_timeout(BOUND).unwrap();
            if checker.is_current(&ev) {
                break ev;
            }
            assert_eq!(ev.epoch, queued.epoch, "{ev:?}");
        };
        assert_eq!(fresh.transition, Transition::Up);
        assert_ne!(fresh.epoch, queued.epoch);

        // A retiming keeps the run: its events stay current.
        checker.set_targets(vec![tcp(listener.local_addr().unwrap(), 80, 2, 2)]);
        assert!(checker.is_current(&fresh));
    }

    /// Which new target inherits which verdict: only from a target of the same node for
    /// the same user, only if up, and with several predecessors only if all are up.
    #[test]
    fn a_new_target_inherits_only_the_up_verdict_of_those_it_replaces() {
        let t = |a: &str, port| tcp(SocketAddr::new(a.parse().unwrap(), port), 1000, 2, 2);
        let list = |items: &[(&Target, &str)]| {
            let mut out = Targets::default();
            for (target, user) in items {
                out.insert((*target).clone(), user);
            }
            out
        };
        let (a1, a2, a3) = (t("192.0.2.1", 1), t("192.0.2.1", 2), t("192.0.2.1", 3));
        let (b1, b2) = (t("192.0.2.2", 1), t("192.0.2.2", 2));
        let prev = list(&[(&a1, "x"), (&b1, "x"), (&a3, "y"), (&a3, "z")]);
        let up = |w| Some((State::Up, w));
        let verdict = |target: &Target| match target {
            x if *x == a1 => up(Some(3)),
            x if *x == a3 => up(None),
            x if *x == b1 => Some((State::Down, None)),
            _ => None,
        };
        let got = |next: &Targets| -> Vec<(Target, Target, Option<u32>)> {
            next.inherited(&prev, verdict)
        };
        // x's probe moves to port 2: a node that was up starts up, with its weight; one
        // that was down does not. The kept target inherits nothing (it has its own).
        let next = list(&[(&a2, "x"), (&b2, "x"), (&a3, "y")]);
        assert_eq!(got(&next), [(a2.clone(), a1.clone(), Some(3))]);
        // A new user of a new target on the same node (a new Service) inherits nothing.
        assert_eq!(got(&list(&[(&a2, "w")])), []);
        // Two predecessors, both up, disagreeing on the weight: up, without one.
        assert_eq!(
            got(&list(&[(&a2, "x"), (&a2, "y")])),
            [(a2.clone(), a1.clone(), None)]
        );
        // One of them down (or never probed): starts down.
        let verdict_down = |target: &Target| (*target == a1).then_some((State::Up, None));
        assert_eq!(
            list(&[(&a2, "x"), (&a2, "y")]).inherited(&prev, verdict_down),
            []
        );
        // Targets without users (a plain list) inherit nothing.
        assert_eq!(
            Targets::from(vec![a2.clone()]).inherited(&prev, verdict),
            []
        );
    }

    /// A VIP's probe changes with no change of its nodes (Kubernetes:
    /// externalTrafficPolicy Cluster to Local moves it to the healthCheckNodePort; a
    /// reload: another port). The new targets used to start down, so at once every
    /// gateway had no usable backend: an empty table and a withdrawn VIP until the new
    /// probe rose. Done as the daemon does it, a node that was up stays usable right
    /// after the change, one that was down stays down, and the new probe's own `fall`
    /// then applies.
    #[test]
    fn a_changed_probe_keeps_up_nodes_usable_and_down_ones_down() {
        use crate::config::{HashMode, Protocol, VipBgp};
        use crate::sources::{BackendSpec, Encap, Origin, ServiceSet, VipSpec};

        let old_port = TcpListener::bind("127.0.0.1:0").unwrap();
        let new_port = TcpListener::bind("127.0.0.1:0").unwrap();
        // 127.0.0.2 is a node where nothing listens.
        let (up, down): (IpAddr, IpAddr) =
            ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let set = |port: u16| ServiceSet {
            vips: vec![VipSpec {
                name: "team/web".into(),
                origin: Origin::Static,
                addr: "203.0.113.1".parse().unwrap(),
                proto: Protocol::Tcp,
                ports: vec![80],
                hash: HashMode::FiveTuple,
                encap: Encap::Ipip,
                min_healthy: 1,
                bgp: VipBgp::default(),
                backends: [up, down]
                    .map(|addr| BackendSpec { addr, weight: 1 })
                    .to_vec(),
                health: Some(HealthSpec {
                    probe: Probe::Tcp { port },
                    timing: Timing {
                        interval: Duration::from_millis(50),
                        timeout: Duration::from_millis(50),
                        rise: 2,
                        fall: 2,
                    },
                }),
            }],
        };
        let before = set(old_port.local_addr().unwrap().port());
        let after = set(new_port.local_addr().unwrap().port());
        let (checker, rx) = spawn().unwrap();
        // The daemon's view: the current events' verdicts.
        let mut states: HashMap<Target, (Verdict, Option<u32>)> = HashMap::new();
        let take = |states: &mut HashMap<Target, (Verdict, Option<u32>)>, ev: HealthEvent| {
            if checker.is_current(&ev) {
                let verdict = ev.verdict();
                states.insert(ev.target, (verdict, ev.weight));
            }
        };
        let usable = |set: &ServiceSet, states: &HashMap<Target, (Verdict, Option<u32>)>| {
            set.vips[0].healthy_backends(|t| states.get(t).map(|s| s.0))
        };
        let only_up = [BackendSpec {
            addr: up,
            weight: 1,
        }];

        checker.set_targets(before.health_targets());
        let deadline = Instant::now() + BOUND;
        while usable(&before, &states) != only_up
            || !states.values().any(|(s, _)| *s != Verdict::Up)
        {
            assert!(Instant::now() < deadline, "{states:?}");
            if let Ok(ev) = rx.recv_timeout(Duration::from_millis(50)) {
                take(&mut states, ev);
            }
        }

        // The daemon's serve, then its loop: forget the targets no longer probed, set the
        // new list, take the events waiting, publish.
        let targets = after.health_targets();
        let keep: std::collections::HashSet<&Target> = targets.iter().collect();
        states.retain(|t, _| keep.contains(t));
        checker.set_targets(targets);
        while let Ok(ev) = rx.try_recv() {
            take(&mut states, ev);
        }
        assert_eq!(usable(&after, &states), only_up, "{states:?}");

        // From there the new probe decides: its node stays up while it answers, and goes
        // down after `fall` failures; the node that was down rises only by its own probes.
        std::thread::sleep(Duration::from_millis(300));
        while let Ok(ev) = rx.try_recv() {
            let news = checker.is_current(&ev);
            assert!(
                !news || (ev.state, ev.target.addr) == (State::Down, down),
                "{ev:?}"
            );
            take(&mut states, ev);
        }
        assert_eq!(usable(&after, &states), only_up, "{states:?}");
        drop(new_port);
        let deadline = Instant::now() + BOUND;
        while !usable(&after, &states).is_empty() {
            assert!(Instant::now() < deadline, "{states:?}");
            if let Ok(ev) = rx.recv_timeout(Duration::from_millis(50)) {
                take(&mut states, ev);
            }
        }
        drop(old_port);
    }

    /// The race an inheritance decided outside the checker left open: a node's old probe
    /// goes down, and its probe changes before the daemon has read that `Down`. Read
    /// then, the `Down` is about a replaced target and is dropped as stale; had the new
    /// probe started up on the strength of an `Up` reported earlier, the failed node
    /// would stay in the table for the new probe's whole `fall`. It must start down. (The
    /// old race itself, a `Down` recorded between the caller's read and the command, cannot
    /// be timed from a test; this guards the outcome.)
    #[test]
    fn a_node_that_has_just_failed_is_not_inherited_up() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let old = tcp(addr, 50, 1, 1);
        // The new probe's port: nothing listens there, so it does not rise on its own.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let new = tcp(closed, 50, 1, 1);
        let list = |t: &Target| {
            let mut out = Targets::default();
            out.insert(t.clone(), "team/web");
            out
        };
        let (checker, rx) = spawn().unwrap();
        let mut states: HashMap<Target, State> = HashMap::new();
        checker.set_targets(list(&old));
        let up = rx.recv_timeout(BOUND).unwrap();
        assert_eq!(
            (up.transition.clone(), up.state),
            (Transition::Up, State::Up)
        );
        states.insert(up.target.clone(), up.state);

        // The checker's verdict is down; the daemon has not read it yet.
        drop(listener);
        let down = loop {
            let ev = rx.recv_timeout(BOUND).unwrap();
            if ev.transition == Transition::Down {
                break ev;
            }
        };
        assert_eq!((down.target.clone(), down.epoch), (old.clone(), up.epoch));

        // The daemon's serve then loop: forget the replaced target, set the new list,
        // take the events waiting (the unread `Down` first).
        states.retain(|t, _| *t == new);
        checker.set_targets(list(&new));
        let mut waiting = vec![down];
        waiting.extend(rx.try_iter());
        for ev in waiting {
            assert!(
                !matches!(ev.transition, Transition::Inherited { .. }),
                "{ev:?}"
            );
            if checker.is_current(&ev) {
                states.insert(ev.target, ev.state);
            }
        }
        assert_ne!(states.get(&new), Some(&State::Up), "{states:?}");
    }
}
