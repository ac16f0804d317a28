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
}

impl Default for Counter {
    /// A new target starts `Down`: it must earn its place with `rise` successes.
    fn default() -> Self {
        Counter {
            state: State::Down,
            streak: 0,
            weight: None,
            reported: None,
        }
    }
}

impl Counter {
    pub fn state(&self) -> State {
        self.state
    }

    /// A new target that starts up, as the up target it replaces was, with that
    /// one's weight; its own `fall` failures take it down.
    pub fn inherited(weight: Option<u32>) -> Counter {
        Counter {
            state: State::Up,
            weight,
            ..Counter::default()
        }
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
    }

    /// Records one probe result; returns the transition it caused, if any,
    /// with the reason to log.
    pub fn record(
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

    /// A target that never comes up reports its first failure, and a new reason,
    /// but not every probe.
    #[test]
    fn a_down_target_says_why_once_per_reason() {
        let mut c = Counter::default();
        let timeout = Outcome::Fail(Reason::Timeout);
        assert_eq!(
            c.record(&fail(), 2, 2),
            Some((Transition::StillDown, Reason::Refused))
        );
        assert_eq!(c.record(&fail(), 2, 2), None);
        assert_eq!(c.record(&pass(), 2, 2), None);
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
        assert_eq!(c.record(&pass(), 3, 2), None);
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

    proptest! {
        /// Against a model: the state flips exactly when the last `rise`
        /// (or `fall`) results all disagree with it.
        #[test]
        fn matches_model(results in proptest::collection::vec(any::<bool>(), 0..200), rise in 1u32..5, fall in 1u32..5) {
            let mut c = Counter::default();
            let mut up = false;
            let mut run = 0u32;
            // Whether the down state's (only) reason has been reported.
            let mut reported = false;
            for ok in results {
                let t = c.record(&if ok { pass() } else { fail() }, rise, fall);
                if ok != up { run += 1 } else { run = 0 }
                let flip = run == if up { fall } else { rise };
                let still_down = !up && !ok && !reported;
                if flip { up = !up; run = 0; reported = !up; }
                if still_down { reported = true; }
                prop_assert_eq!(t.as_ref().is_some_and(|t| t.0 != Transition::StillDown), flip);
                prop_assert_eq!(t.is_some_and(|t| t.0 == Transition::StillDown), still_down);
                prop_assert_eq!(c.state() == State::Up, up);
            }
        }
    }
}
