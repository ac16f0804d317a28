//! Rise/fall hysteresis of one target: pure bookkeeping, no I/O, no clock.

use super::{Outcome, Reason, State, Transition};

/// The health state of one probe target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    state: State,
    /// Consecutive results that disagree with `state`.
    streak: u32,
    weight: Option<u32>,
    /// While down, the failure reason last reported (by the transition down or a
    /// [`Transition::StillDown`]); `None` while up and before the first failure.
    reported: Option<Reason>,
    /// Until the first verdict (see [`Counter::settled`]): what counts toward it.
    unsettled: Option<Unsettled>,
    /// Consecutive failures without an answer ([`Reason::answered`]).
    unanswered: u32,
    /// See [`Counter::silent`].
    silent: bool,
}

/// The results of a target that has no first verdict yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Unsettled {
    results: u32,
    /// The last results that were all failures.
    failures: u32,
}

impl Default for Counter {
    /// A new target starts `Down`: it must earn its place with `rise` successes.
    fn default() -> Self {
        Counter {
            state: State::Down,
            streak: 0,
            weight: None,
            reported: None,
            unsettled: Some(Unsettled::default()),
            unanswered: 0,
            silent: false,
        }
    }
}

impl Counter {
    pub fn state(&self) -> State {
        self.state
    }

    /// A new target that starts up, as the up target it replaces was, with that
    /// one's weight (its first verdict); its own `fall` failures take it down.
    pub fn inherited(weight: Option<u32>) -> Counter {
        Counter {
            state: State::Up,
            weight,
            unsettled: None,
            ..Counter::default()
        }
    }

    /// Whether the target has its first verdict, the one a VIP's first announcement waits
    /// for: up (`rise` successes, or inherited), or down as the checker would take an up
    /// target down, after `fall` failures in a row. A single failure is not one: a first
    /// probe lost by chance would leave a backend that is up out of the first table.
    ///
    /// A target that flaps, reaching neither, is settled down after `rise + fall` results,
    /// which bounds the wait at the time the checker takes to take a target down and bring
    /// it back up. It is enough for a backend that answers from its `fall`-th probe on
    /// (one starting a little late, or whose first probes are lost) to rise in time and be
    /// settled up. A target that has never failed is not settled down: it rises.
    pub fn settled(&self) -> bool {
        self.unsettled.is_none()
    }

    /// Whether the target is down and its last `fall` probes, at least, all went unanswered
    /// (timed out, refused, unreachable, no HTTP response: see [`Reason::answered`]): its
    /// node is taken for dead, not for one that answers "drain me" (kube-proxy's 503).
    /// Judged with the same `fall` as up and down, so one lost probe of a node answering
    /// 503 does not make it silent; any answer ends it.
    pub fn silent(&self) -> bool {
        self.silent
    }

    /// The weight the target reported in its last successful probe, if any.
    pub fn weight(&self) -> Option<u32> {
        self.weight
    }

    /// The probe's timing changed: the state and weight stay, and the streak
    /// starts over, so an up target now goes down after the new `fall`
    /// failures (and a down one up after the new `rise` successes).
    pub fn retimed(&mut self) {
        self.streak = 0;
        self.unanswered = 0;
    }

    /// Records one probe result; returns the transition it caused, if any,
    /// with the reason to log. A target settled down by this result (see
    /// [`Counter::settled`]) reports a [`Transition::StillDown`], with the reason last
    /// reported if this result has no news of its own. A down target that becomes
    /// [`silent`](Counter::silent), or stops being so, with no other news reports
    /// [`Transition::Silent`] or [`Transition::Answers`]: whatever this returns, a change
    /// of `silent` is always reported.
    pub fn record(
        &mut self,
        outcome: &Outcome,
        rise: u32,
        fall: u32,
    ) -> Option<(Transition, Reason)> {
        let change = self.hysteresis(outcome, rise, fall);
        let change = match self.settle(outcome, rise, fall) {
            Some(reason) => Some(change.unwrap_or((Transition::StillDown, reason))),
            None => change,
        };
        let was_silent = self.silent;
        self.unanswered = match outcome {
            Outcome::Fail(reason) if !reason.answered() => self.unanswered.saturating_add(1),
            _ => 0,
        };
        // A silent target stays so while it goes on not answering, also when a retiming
        // restarted the count: only an answer brings it back.
        self.silent = self.state == State::Down
            && (self.unanswered >= fall || (was_silent && self.unanswered > 0));
        if change.is_some() || self.silent == was_silent {
            return change;
        }
        let reason = match outcome {
            Outcome::Fail(reason) => reason.clone(),
            Outcome::Pass { .. } => Reason::Passed,
        };
        if !self.silent {
            return Some((Transition::Answers, reason));
        }
        self.reported = Some(reason.clone());
        Some((Transition::Silent, reason))
    }

    /// Counts one result toward the first verdict; returns the reason to report if it
    /// settles the target down.
    fn settle(&mut self, outcome: &Outcome, rise: u32, fall: u32) -> Option<Reason> {
        let u = self.unsettled.as_mut()?;
        if self.state == State::Up {
            self.unsettled = None;
            return None;
        }
        u.results = u.results.saturating_add(1);
        u.failures = match outcome {
            Outcome::Fail(_) => u.failures.saturating_add(1),
            Outcome::Pass { .. } => 0,
        };
        if u.failures < fall && u.results < rise.saturating_add(fall) {
            return None;
        }
        let reason = self.reported.clone()?;
        self.unsettled = None;
        Some(reason)
    }

    /// The rise/fall state machine.
    fn hysteresis(
        &mut self,
        outcome: &Outcome,
        rise: u32,
        fall: u32,
    ) -> Option<(Transition, Reason)> {
        match (self.state, outcome) {
            (State::Up, Outcome::Pass { weight }) => {
                self.streak = 0;
                if *weight != self.weight {
                    let from = std::mem::replace(&mut self.weight, *weight);
                    return Some((Transition::Weight { from, to: *weight }, Reason::Passed));
                }
                None
            }
            (State::Down, Outcome::Pass { weight }) => {
                self.streak += 1;
                if self.streak < rise {
                    return None;
                }
                self.state = State::Up;
                self.streak = 0;
                self.weight = *weight;
                self.reported = None;
                Some((Transition::Up, Reason::Passed))
            }
            (State::Up, Outcome::Fail(reason)) => {
                self.streak += 1;
                if self.streak < fall {
                    return None;
                }
                self.state = State::Down;
                self.streak = 0;
                self.reported = Some(reason.clone());
                Some((Transition::Down, reason.clone()))
            }
            // No change of state, but a target that never came up (or failed
            // differently since) says why, once per reason.
            (State::Down, Outcome::Fail(reason)) => {
                self.streak = 0;
                if self.reported.as_ref() == Some(reason) {
                    return None;
                }
                self.reported = Some(reason.clone());
                Some((Transition::StillDown, reason.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pass() -> Outcome {
        Outcome::Pass { weight: None }
    }
    fn fail() -> Outcome {
        Outcome::Fail(Reason::Refused)
    }

    /// A node that answers 503 (kube-proxy: "drain me") is down but not silent; one that
    /// then stops answering is silent once `fall` probes in a row went unanswered, not on
    /// the first one lost, and says so; any answer ends it. Nothing made this difference
    /// before: a dead draining node was kept as one answering 503.
    #[test]
    fn a_node_that_stops_answering_is_silent_after_fall_probes() {
        let unavailable = Outcome::Fail(Reason::HttpStatus(503));
        let timeout = Outcome::Fail(Reason::Timeout);
        let mut c = Counter::inherited(None);
        c.record(&unavailable, 2, 3);
        c.record(&unavailable, 2, 3);
        assert_eq!(
            c.record(&unavailable, 2, 3),
            Some((Transition::Down, Reason::HttpStatus(503)))
        );
        assert!(!c.silent(), "it answers");
        assert_eq!(
            c.record(&timeout, 2, 3),
            Some((Transition::StillDown, Reason::Timeout))
        );
        assert_eq!(c.record(&timeout, 2, 3), None);
        assert!(!c.silent(), "two probes lost are not `fall`");
        assert_eq!(
            c.record(&timeout, 2, 3),
            Some((Transition::Silent, Reason::Timeout))
        );
        assert!(c.silent());
        assert_eq!(c.record(&timeout, 2, 3), None, "said once");
        assert_eq!(
            c.record(&fail(), 2, 3),
            Some((Transition::StillDown, Reason::Refused)),
            "another failure without an answer"
        );
        assert!(c.silent());
        // A 503 again: it answers (a new reason says so).
        assert_eq!(
            c.record(&unavailable, 2, 3),
            Some((Transition::StillDown, Reason::HttpStatus(503)))
        );
        assert!(!c.silent());
        // A pass while it rises: it answers, with no other news.
        for _ in 0..3 {
            c.record(&timeout, 2, 3);
        }
        assert!(c.silent());
        assert_eq!(
            c.record(&pass(), 2, 3),
            Some((Transition::Answers, Reason::Passed))
        );
        assert!(!c.silent());
        assert_eq!(c.record(&pass(), 2, 3).map(|t| t.0), Some(Transition::Up));
    }

    /// A node that dies while up is silent from the transition down on; one that never
    /// came up, from its first verdict; a retiming counts the unanswered probes afresh.
    #[test]
    fn a_node_silent_from_the_start_is_silent_with_its_verdict() {
        let timeout = Outcome::Fail(Reason::Timeout);
        let mut c = Counter::inherited(None);
        c.record(&timeout, 2, 2);
        assert!(!c.silent(), "up");
        assert_eq!(
            c.record(&timeout, 2, 2),
            Some((Transition::Down, Reason::Timeout))
        );
        assert!(c.silent());

        let mut c = Counter::default();
        assert_eq!(
            c.record(&fail(), 2, 2),
            Some((Transition::StillDown, Reason::Refused))
        );
        assert!(!c.silent());
        assert_eq!(
            c.record(&fail(), 2, 2),
            Some((Transition::StillDown, Reason::Refused)),
            "the first verdict"
        );
        assert!(c.silent() && c.settled());

        let mut c = Counter::inherited(None);
        for _ in 0..3 {
            c.record(&Outcome::Fail(Reason::HttpStatus(503)), 1, 3);
        }
        c.record(&timeout, 1, 3);
        c.record(&timeout, 1, 3);
        c.retimed();
        assert_eq!(c.record(&timeout, 1, 3), None);
        assert!(!c.silent(), "counted afresh");
    }

    /// A target that never comes up reports its first failure, its first verdict, and a
    /// new reason, but not every probe.
    #[test]
    fn a_down_target_says_why_once_per_reason() {
        let mut c = Counter::default();
        let timeout = Outcome::Fail(Reason::Timeout);
        assert_eq!(
            c.record(&fail(), 2, 3),
            Some((Transition::StillDown, Reason::Refused))
        );
        assert_eq!(c.record(&fail(), 2, 3), None);
        assert_eq!(
            c.record(&fail(), 2, 3),
            Some((Transition::StillDown, Reason::Refused)),
            "the first verdict"
        );
        assert_eq!(c.record(&fail(), 2, 3), None);
        assert_eq!(
            c.record(&pass(), 2, 2),
            Some((Transition::Answers, Reason::Passed)),
            "it was silent"
        );
        assert_eq!(c.record(&fail(), 2, 2), None, "same reason");
        assert_eq!(
            c.record(&timeout, 2, 2),
            Some((Transition::StillDown, Reason::Timeout))
        );
        assert_eq!(c.state(), State::Down);
        // Down after being up: the transition says why; the same reason after
        // it does not again, another one does.
        c.record(&pass(), 2, 2);
        assert_eq!(
            c.record(&pass(), 2, 2),
            Some((Transition::Up, Reason::Passed))
        );
        c.record(&fail(), 2, 2);
        assert_eq!(
            c.record(&fail(), 2, 2),
            Some((Transition::Down, Reason::Refused))
        );
        assert_eq!(c.record(&fail(), 2, 2), None);
        assert_eq!(
            c.record(&timeout, 2, 2),
            Some((Transition::StillDown, Reason::Timeout))
        );
    }

    #[test]
    fn enters_after_rise_and_leaves_after_fall() {
        let mut c = Counter::default();
        assert_eq!(c.state(), State::Down);
        assert_eq!(c.record(&pass(), 3, 2), None);
        assert_eq!(c.record(&pass(), 3, 2), None);
        assert_eq!(
            c.record(&pass(), 3, 2),
            Some((Transition::Up, Reason::Passed))
        );
        assert_eq!(c.record(&fail(), 3, 2), None);
        assert_eq!(
            c.record(&pass(), 3, 2),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(c.record(&fail(), 3, 2), None);
        assert_eq!(
            c.record(&fail(), 3, 2),
            Some((Transition::Down, Reason::Refused))
        );
        assert_eq!(
            c.record(&pass(), 3, 2),
            Some((Transition::Answers, Reason::Passed)),
            "it was silent"
        );
        assert_eq!(
            c.record(&fail(), 3, 2),
            None,
            "a failure resets the success streak"
        );
        assert_eq!(c.record(&pass(), 3, 2), None);
        assert_eq!(c.record(&pass(), 3, 2), None);
        assert_eq!(c.state(), State::Down);
    }

    #[test]
    fn weight_changes_while_up() {
        let mut c = Counter::default();
        assert_eq!(
            c.record(&Outcome::Pass { weight: Some(2) }, 1, 1)
                .map(|t| t.0),
            Some(Transition::Up)
        );
        assert_eq!(c.weight(), Some(2));
        assert_eq!(c.record(&Outcome::Pass { weight: Some(2) }, 1, 1), None);
        assert_eq!(
            c.record(&Outcome::Pass { weight: Some(5) }, 1, 1)
                .map(|t| t.0),
            Some(Transition::Weight {
                from: Some(2),
                to: Some(5)
            })
        );
        assert_eq!(c.weight(), Some(5));
    }

    #[test]
    fn retimed_keeps_the_state_and_restarts_the_streak() {
        let mut c = Counter::default();
        assert!(c.record(&Outcome::Pass { weight: Some(4) }, 1, 3).is_some());
        assert_eq!(c.record(&fail(), 1, 3), None);
        assert_eq!(c.record(&fail(), 1, 3), None);
        c.retimed();
        assert_eq!((c.state(), c.weight()), (State::Up, Some(4)));
        // Two failures were counted before: the new fall of 2 counts afresh.
        assert_eq!(c.record(&fail(), 1, 2), None);
        assert_eq!(
            c.record(&fail(), 1, 2),
            Some((Transition::Down, Reason::Refused))
        );
    }

    /// A retiming restarts the count of probes in a row, but a silent target stays silent
    /// until it answers: it used to be taken for answering again at its next timeout (and
    /// a dead draining node rejoined for `fall - 1` probes).
    #[test]
    fn a_silent_target_stays_silent_across_a_retiming() {
        let mut c = Counter::inherited(None);
        for _ in 0..3 {
            c.record(&Outcome::Fail(Reason::Timeout), 2, 3);
        }
        assert!(c.silent());
        c.retimed();
        assert_eq!(c.record(&Outcome::Fail(Reason::Timeout), 2, 3), None);
        assert!(c.silent());
        let answered = c.record(&Outcome::Fail(Reason::HttpStatus(503)), 2, 3);
        assert_eq!(answered.map(|(_, r)| r), Some(Reason::HttpStatus(503)));
        assert!(!c.silent());
    }

    /// A first probe lost by chance is no verdict: the target is settled once it is up.
    #[test]
    fn a_first_failure_then_rise_successes_settles_up() {
        let mut c = Counter::default();
        assert!(!c.settled());
        assert_eq!(
            c.record(&fail(), 2, 3),
            Some((Transition::StillDown, Reason::Refused)),
            "the status says why"
        );
        assert!(!c.settled(), "one failure is not the checker's verdict");
        assert_eq!(c.record(&pass(), 2, 3), None);
        assert!(!c.settled());
        assert_eq!(
            c.record(&pass(), 2, 3),
            Some((Transition::Up, Reason::Passed))
        );
        assert!(c.settled());
    }

    /// `fall` failures in a row settle a target that never came up, as they take an up one
    /// down; the verdict is news even when its reason is not.
    #[test]
    fn fall_failures_in_a_row_settle_down() {
        let mut c = Counter::default();
        c.record(&fail(), 2, 3);
        assert_eq!(c.record(&fail(), 2, 3), None);
        assert!(!c.settled());
        assert_eq!(
            c.record(&fail(), 2, 3),
            Some((Transition::StillDown, Reason::Refused))
        );
        assert!(c.settled());
        assert_eq!(c.state(), State::Down);
        assert_eq!(c.record(&fail(), 2, 3), None, "said once");
        // With `fall = 1` the first failure is the verdict, and says why.
        let mut c = Counter::default();
        assert_eq!(
            c.record(&fail(), 2, 1),
            Some((Transition::StillDown, Reason::Refused))
        );
        assert!(c.settled());
    }

    /// A target that never passes `rise` in a row nor fails `fall` in a row is settled down
    /// after `rise + fall` results; a success in between starts the failures over.
    #[test]
    fn a_flapping_target_is_settled_down_after_rise_plus_fall_results() {
        let mut c = Counter::default();
        let timeout = Outcome::Fail(Reason::Timeout);
        for (i, outcome) in [fail(), pass(), fail(), fail(), pass()].iter().enumerate() {
            assert!(!c.settled(), "after {i} results");
            let t = c.record(outcome, 3, 3);
            assert!(t.is_none() || i == 0, "{i}: {t:?}");
        }
        assert_eq!(
            c.record(&timeout, 3, 3),
            Some((Transition::StillDown, Reason::Timeout))
        );
        assert!(c.settled());
        // Settled on a success: the last failure says why.
        let mut c = Counter::default();
        for outcome in [pass(), fail(), pass(), fail()] {
            c.record(&outcome, 2, 3);
        }
        assert!(!c.settled());
        assert_eq!(
            c.record(&pass(), 2, 3),
            Some((Transition::StillDown, Reason::Refused))
        );
        assert!(c.settled());
        assert_eq!(c.state(), State::Down);
    }

    /// A target that starts up as the one it replaces has its verdict; so does a target up
    /// after having been settled down.
    #[test]
    fn an_inherited_target_is_settled() {
        let c = Counter::inherited(Some(3));
        assert!(c.settled());
        assert_eq!((c.state(), c.weight()), (State::Up, Some(3)));
        let mut c = Counter::default();
        c.record(&fail(), 1, 1);
        c.record(&pass(), 1, 1);
        assert!(c.settled());
        c.record(&fail(), 1, 1);
        assert!(c.settled(), "a first verdict stays");
    }

    proptest! {
        /// Against a model: the state flips exactly when the last `rise`
        /// (or `fall`) results all disagree with it; the first verdict is in once up, or
        /// after a failure and `fall` failures in a row or `rise + fall` results, and
        /// always within `rise + fall` results; a target is silent exactly while down
        /// with its last `fall` results unanswered, and every change of that is reported.
        /// Results: 0 passes, 1 an answer that fails (503), 2 no answer (refused).
        #[test]
        fn matches_model(results in proptest::collection::vec(0u8..3, 0..200), rise in 1u32..5, fall in 1u32..5) {
            let mut c = Counter::default();
            let mut up = false;
            let mut run = 0u32;
            // The down state's reason last reported.
            let mut reported: Option<u8> = None;
            let (mut settled, mut seen, mut failures) = (false, 0u32, 0u32);
            let (mut silent, mut unanswered) = (false, 0u32);
            for r in results {
                let ok = r == 0;
                let outcome = match r {
                    0 => pass(),
                    1 => Outcome::Fail(Reason::HttpStatus(503)),
                    _ => fail(),
                };
                let t = c.record(&outcome, rise, fall);
                if ok != up { run += 1 } else { run = 0 }
                let flip = run == if up { fall } else { rise };
                let still_down = !up && !ok && reported != Some(r);
                if flip { up = !up; run = 0; reported = (!up).then_some(r); }
                if still_down { reported = Some(r); }
                let mut settles = false;
                if !settled {
                    seen += 1;
                    failures = if ok { 0 } else { failures + 1 };
                    settled = up || (reported.is_some() && (failures >= fall || seen >= rise + fall));
                    settles = settled && !up;
                }
                unanswered = if r == 2 { unanswered + 1 } else { 0 };
                let now_silent = !up && unanswered >= fall;
                let quiet = !flip && !still_down && !settles;
                let said_silence = quiet && now_silent != silent;
                silent = now_silent;
                if said_silence && silent { reported = Some(r); }
                let is = |want: &[Transition]| t.as_ref().is_some_and(|t| want.contains(&t.0));
                prop_assert_eq!(is(&[Transition::Up, Transition::Down]), flip);
                prop_assert_eq!(is(&[Transition::StillDown]), still_down || settles);
                prop_assert_eq!(is(&[Transition::Silent]), said_silence && silent);
                prop_assert_eq!(is(&[Transition::Answers]), said_silence && !silent);
                prop_assert_eq!(c.state() == State::Up, up);
                prop_assert_eq!(c.silent(), silent);
                prop_assert_eq!(c.settled(), settled);
                prop_assert!(c.settled() || seen < rise + fall);
            }
        }
    }
}
