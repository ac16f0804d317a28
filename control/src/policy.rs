//! Which VIP prefixes are announced over BGP, and why.
//!
//! A prefix (the VIP address as a /32 or /128) is announced while at least one of the
//! services on that address has at least its configured minimum of healthy backends with
//! nonzero weight, and the dataplane itself is healthy. Announcing per address rather
//! than per port keeps a healthy `TCP 80` reachable while `UDP 7` on the same address has
//! no backend; the `UDP 7` traffic that still arrives is dropped and counted as
//! "no backend" by the pipeline.
//!
//! A service that a reload or a Kubernetes update removed is still served for the drain
//! time (the router may send its traffic until it has converged) but no longer counts
//! toward announcing: its address is withdrawn with [`WithdrawReason::Removed`] unless
//! another service keeps it. A prefix that disappears without such a drain is reported
//! withdrawn for the same reason before it is forgotten.
//!
//! An address is not announced the first time (since the daemon started or since the
//! address was added) until every backend its services health-check has a verdict from
//! this run, as the health checker settles it: up, or down after `fall` failures in a row,
//! as an up backend goes down ([`WithdrawReason::HealthPending`]). A checked backend
//! counts as absent until it has passed `rise` probes, so the first backends up would
//! otherwise make a table that other gateways, which have all of them, do not share, and
//! the flows that ECMP moves to a restarted gateway would reach other backends. A single
//! failure is no verdict for the same reason: a first probe lost by chance would leave an
//! up backend out. The wait is bounded by the probes' schedule: a backend that flaps is
//! taken as down after `rise + fall` probes (about that many intervals, plus `timeout`).
//! Once announced, an address is never withdrawn for it: a backend added later joins the
//! table when it is up.
//!
//! The policy is pure: health and dataplane state come in, decisions and the transitions
//! since the last evaluation come out. The caller logs and counts the transitions and
//! hands the announced set to the BGP speaker.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// The health of one service (address, protocol, port) as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub addr: IpAddr,
    /// Backends that passed their health checks (`rise` met) and have nonzero weight.
    pub healthy_backends: u32,
    /// The announce policy: fewer healthy backends than this and the service does not
    /// count toward announcing its address.
    pub min_healthy: u32,
    /// Backends it health-checks that have no verdict yet: not up, and not down after
    /// `fall` failures in a row (or `rise + fall` probes).
    pub pending_backends: u32,
    /// Backends it health-checks, pending or not.
    pub checked_backends: u32,
    /// Removed from the config or the Kubernetes API, and only served until its drain
    /// ends: it never counts toward announcing its address.
    pub removed: bool,
}

/// Why the whole dataplane cannot forward, which withdraws every prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataplaneProblem {
    /// A worker has not completed a loop iteration recently.
    WorkerStalled { worker: usize },
    /// The steering XDP program is no longer attached to an interface.
    XdpDetached { iface: String },
    /// Whether the uplink still runs the steering program cannot be read (a netlink error):
    /// withdrawn while unknown, but not rebuilt (see `Dataplane::reattach`).
    SteeringUnreadable { iface: String, error: String },
    /// No next hop toward any backend has a resolved MAC address.
    NextHopUnresolved,
    /// The services' snapshot cannot be built, so the workers run on an older one that
    /// no longer follows backend health.
    SnapshotRejected { error: String },
}

impl fmt::Display for DataplaneProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataplaneProblem::WorkerStalled { worker } => write!(f, "worker {worker} stalled"),
            DataplaneProblem::XdpDetached { iface } => {
                write!(f, "XDP program detached from {iface}")
            }
            DataplaneProblem::SteeringUnreadable { iface, error } => {
                write!(
                    f,
                    "cannot read whether {iface} runs the steering program: {error}"
                )
            }
            DataplaneProblem::NextHopUnresolved => f.write_str("no next hop resolved"),
            DataplaneProblem::SnapshotRejected { error } => {
                write!(f, "the snapshot cannot be built: {error}")
            }
        }
    }
}

/// The decision for one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Announce,
    Withdraw(WithdrawReason),
}

/// Why a prefix is not announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WithdrawReason {
    /// No service on the address meets its minimum; `healthy` is the best service's count.
    TooFewHealthyBackends {
        healthy: u32,
        required: u32,
    },
    Dataplane(DataplaneProblem),
    ShuttingDown,
    /// Every service on the address was removed (its flows drain).
    Removed,
    /// Enough backends are up, but the address was never announced and some of the
    /// backends its services check have no verdict yet (counts summed over its services).
    HealthPending {
        pending: u32,
        checked: u32,
    },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Announce => f.write_str("announced"),
            Decision::Withdraw(WithdrawReason::TooFewHealthyBackends { healthy, required }) => {
                write!(
                    f,
                    "withdrawn: {healthy} healthy backends, {required} required"
                )
            }
            Decision::Withdraw(WithdrawReason::Dataplane(p)) => write!(f, "withdrawn: {p}"),
            Decision::Withdraw(WithdrawReason::ShuttingDown) => {
                f.write_str("withdrawn: shutting down")
            }
            Decision::Withdraw(WithdrawReason::Removed) => {
                f.write_str("withdrawn: removed, draining")
            }
            Decision::Withdraw(WithdrawReason::HealthPending { pending, checked }) => write!(
                f,
                "withdrawn: waiting for first health verdicts ({} of {checked})",
                checked.saturating_sub(*pending)
            ),
        }
    }
}

/// A change of decision for one prefix since the previous evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub addr: IpAddr,
    /// `None` the first time the prefix is seen.
    pub from: Option<Decision>,
    pub to: Decision,
}

/// Remembers the last decision per prefix so that only changes are reported.
#[derive(Default, Debug)]
pub struct Policy {
    decisions: BTreeMap<IpAddr, Decision>,
    /// Known prefixes announced at least once: no longer held for pending verdicts.
    announced_once: BTreeSet<IpAddr>,
}

impl Policy {
    /// Decides every prefix from the services' health and the dataplane's state, and
    /// returns what changed. Prefixes that no longer have any service are forgotten (the
    /// speaker withdraws them because they are absent from [`Policy::announced`]); one
    /// not already withdrawn as [`WithdrawReason::Removed`] is reported so first. A prefix
    /// never announced is held while any of its services not removed has pending
    /// backends, even if another of them could announce it: that one's table is partial.
    pub fn evaluate(
        &mut self,
        services: &[ServiceHealth],
        dataplane: Option<&DataplaneProblem>,
        shutting_down: bool,
    ) -> Vec<Transition> {
        let mut best: BTreeMap<IpAddr, Decision> = BTreeMap::new();
        for s in services {
            let d = if s.removed {
                Decision::Withdraw(WithdrawReason::Removed)
            } else if shutting_down {
                Decision::Withdraw(WithdrawReason::ShuttingDown)
            } else if let Some(p) = dataplane {
                Decision::Withdraw(WithdrawReason::Dataplane(p.clone()))
            } else if s.healthy_backends >= s.min_healthy.max(1) {
                Decision::Announce
            } else {
                Decision::Withdraw(WithdrawReason::TooFewHealthyBackends {
                    healthy: s.healthy_backends,
                    required: s.min_healthy.max(1),
                })
            };
            best.entry(s.addr)
                .and_modify(|cur| {
                    if better(&d, cur) {
                        *cur = d.clone();
                    }
                })
                .or_insert(d);
        }
        for (addr, d) in &mut best {
            if *d != Decision::Announce || self.announced_once.contains(addr) {
                continue;
            }
            let own = services.iter().filter(|s| s.addr == *addr && !s.removed);
            let (pending, checked) = own.fold((0u32, 0u32), |(p, c), s| {
                (
                    p.saturating_add(s.pending_backends),
                    c.saturating_add(s.checked_backends),
                )
            });
            if pending > 0 {
                *d = Decision::Withdraw(WithdrawReason::HealthPending { pending, checked });
            }
        }
        self.announced_once.retain(|a| best.contains_key(a));
        self.announced_once.extend(
            best.iter()
                .filter(|(_, d)| **d == Decision::Announce)
                .map(|(a, _)| *a),
        );
        let mut out = Vec::new();
        let removed = Decision::Withdraw(WithdrawReason::Removed);
        for (addr, from) in &self.decisions {
            if !best.contains_key(addr) && *from != removed {
                out.push(Transition {
                    addr: *addr,
                    from: Some(from.clone()),
                    to: removed.clone(),
                });
            }
        }
        for (addr, to) in &best {
            let from = self.decisions.get(addr);
            if from != Some(to) {
                out.push(Transition {
                    addr: *addr,
                    from: from.cloned(),
                    to: to.clone(),
                });
            }
        }
        self.decisions = best;
        out
    }

    /// The prefixes to announce now.
    pub fn announced(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.decisions
            .iter()
            .filter(|(_, d)| **d == Decision::Announce)
            .map(|(a, _)| *a)
    }

    /// The current decision for every known prefix.
    pub fn decisions(&self) -> &BTreeMap<IpAddr, Decision> {
        &self.decisions
    }
}

/// Among the services of one address, an announce wins; a removed service loses to any
/// other; otherwise the reason with the most healthy backends is the one worth reporting.
fn better(new: &Decision, cur: &Decision) -> bool {
    use WithdrawReason::{Removed, TooFewHealthyBackends as Few};
    match (new, cur) {
        (Decision::Announce, Decision::Announce) => false,
        (Decision::Announce, _) => true,
        (Decision::Withdraw(Removed), _) => false,
        (_, Decision::Withdraw(Removed)) => true,
        (
            Decision::Withdraw(Few { healthy: a, .. }),
            Decision::Withdraw(Few { healthy: b, .. }),
        ) => a > b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(addr: &str, healthy: u32, min: u32) -> ServiceHealth {
        ServiceHealth {
            addr: addr.parse().unwrap(),
            healthy_backends: healthy,
            min_healthy: min,
            pending_backends: 0,
            checked_backends: 0,
            removed: false,
        }
    }

    /// Checks `checked` backends, of which `pending` have no verdict yet.
    fn checking(addr: &str, healthy: u32, pending: u32, checked: u32) -> ServiceHealth {
        ServiceHealth {
            pending_backends: pending,
            checked_backends: checked,
            ..svc(addr, healthy, 1)
        }
    }

    fn removed(addr: &str, healthy: u32) -> ServiceHealth {
        ServiceHealth {
            removed: true,
            ..svc(addr, healthy, 1)
        }
    }

    #[test]
    fn announces_while_healthy_and_withdraws_when_last_backend_fails() {
        let mut p = Policy::default();
        let t = p.evaluate(&[svc("192.0.2.10", 2, 1)], None, false);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].from, None);
        assert_eq!(t[0].to, Decision::Announce);
        assert_eq!(p.announced().count(), 1);

        assert!(
            p.evaluate(&[svc("192.0.2.10", 1, 1)], None, false)
                .is_empty(),
            "no change, no transition"
        );

        let t = p.evaluate(&[svc("192.0.2.10", 0, 1)], None, false);
        assert_eq!(
            t[0].to,
            Decision::Withdraw(WithdrawReason::TooFewHealthyBackends {
                healthy: 0,
                required: 1
            })
        );
        assert_eq!(t[0].from, Some(Decision::Announce));
        assert_eq!(p.announced().count(), 0);
    }

    #[test]
    fn minimum_is_at_least_one() {
        let mut p = Policy::default();
        p.evaluate(&[svc("192.0.2.10", 0, 0)], None, false);
        assert_eq!(
            p.announced().count(),
            0,
            "a VIP without healthy backends is never announced"
        );
    }

    #[test]
    fn one_healthy_service_keeps_its_address_announced() {
        let mut p = Policy::default();
        p.evaluate(
            &[
                svc("192.0.2.10", 0, 1),
                svc("192.0.2.10", 3, 2),
                svc("2001:db8::1", 1, 2),
            ],
            None,
            false,
        );
        let announced: Vec<_> = p.announced().collect();
        assert_eq!(announced, vec!["192.0.2.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            p.decisions()[&"2001:db8::1".parse::<IpAddr>().unwrap()],
            Decision::Withdraw(WithdrawReason::TooFewHealthyBackends {
                healthy: 1,
                required: 2
            })
        );
    }

    #[test]
    fn dataplane_problem_and_shutdown_withdraw_everything() {
        let mut p = Policy::default();
        let services = [svc("192.0.2.10", 3, 1), svc("192.0.2.11", 3, 1)];
        p.evaluate(&services, None, false);
        assert_eq!(p.announced().count(), 2);
        let problem = DataplaneProblem::XdpDetached {
            iface: "eth0".into(),
        };
        let t = p.evaluate(&services, Some(&problem), false);
        assert_eq!(t.len(), 2);
        assert_eq!(p.announced().count(), 0);
        assert_eq!(
            t[0].to.to_string(),
            "withdrawn: XDP program detached from eth0"
        );
        p.evaluate(&services, None, false);
        assert_eq!(p.announced().count(), 2);
        p.evaluate(&services, None, true);
        assert_eq!(p.announced().count(), 0);
    }

    /// A removed service's prefix is withdrawn, and the withdrawal reported (logged and
    /// counted by the caller), while it drains; then it is forgotten without another.
    #[test]
    fn a_removed_service_is_withdrawn_as_such_then_forgotten() {
        let mut p = Policy::default();
        p.evaluate(&[svc("192.0.2.10", 3, 1)], None, false);
        let t = p.evaluate(&[removed("192.0.2.10", 3)], None, false);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].from, Some(Decision::Announce));
        assert_eq!(t[0].to, Decision::Withdraw(WithdrawReason::Removed));
        assert_eq!(t[0].to.to_string(), "withdrawn: removed, draining");
        assert_eq!(p.announced().count(), 0);
        assert!(
            p.evaluate(&[removed("192.0.2.10", 3)], None, true)
                .is_empty(),
            "shutting down changes nothing for a draining prefix"
        );
        assert!(p.evaluate(&[], None, false).is_empty(), "drain over");
        assert_eq!(p.decisions().len(), 0);

        // Re-added during the drain: announced again.
        p.evaluate(&[removed("192.0.2.10", 3)], None, false);
        let t = p.evaluate(&[svc("192.0.2.10", 3, 1)], None, false);
        assert_eq!(t[0].to, Decision::Announce);
    }

    /// Without a drain, the prefix vanishes at once: still reported withdrawn.
    #[test]
    fn a_prefix_gone_without_a_drain_is_reported_withdrawn() {
        let mut p = Policy::default();
        p.evaluate(&[svc("192.0.2.10", 3, 1)], None, false);
        let t = p.evaluate(&[], None, false);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].to, Decision::Withdraw(WithdrawReason::Removed));
        assert_eq!(p.decisions().len(), 0);
    }

    /// One prefix, several services: it stays announced while any service not removed
    /// keeps it, whatever order they come in.
    #[test]
    fn an_address_another_service_keeps_stays_announced() {
        let mut p = Policy::default();
        let (a, b) = (svc("192.0.2.10", 3, 1), removed("192.0.2.10", 3));
        p.evaluate(&[a, svc("192.0.2.10", 2, 1)], None, false);
        assert!(p.evaluate(&[a, b], None, false).is_empty());
        assert!(p.evaluate(&[b, a], None, false).is_empty());
        assert_eq!(p.announced().count(), 1);
        // The one kept has no healthy backend: its own reason, not "removed".
        let t = p.evaluate(&[b, svc("192.0.2.10", 0, 1)], None, false);
        assert_eq!(
            t[0].to,
            Decision::Withdraw(WithdrawReason::TooFewHealthyBackends {
                healthy: 0,
                required: 1
            })
        );
    }

    /// A starting gateway (or a new address) with one backend up of three, the others
    /// not probed yet: a table of one would send the flows ECMP moves here elsewhere
    /// than the other gateways do. Announced once the last verdict is in; from then on a
    /// new backend without a verdict does not withdraw it.
    #[test]
    fn the_first_announcement_waits_for_every_verdict() {
        let mut p = Policy::default();
        let t = p.evaluate(&[checking("192.0.2.10", 1, 2, 3)], None, false);
        let held = Decision::Withdraw(WithdrawReason::HealthPending {
            pending: 2,
            checked: 3,
        });
        assert_eq!(t[0].to, held);
        assert_eq!(
            held.to_string(),
            "withdrawn: waiting for first health verdicts (1 of 3)"
        );
        assert_eq!(p.announced().count(), 0);
        // One more verdict, down: still held.
        let t = p.evaluate(&[checking("192.0.2.10", 1, 1, 3)], None, false);
        assert_eq!(
            t[0].to.to_string(),
            "withdrawn: waiting for first health verdicts (2 of 3)"
        );
        assert_eq!(p.announced().count(), 0);

        let t = p.evaluate(&[checking("192.0.2.10", 1, 0, 3)], None, false);
        assert_eq!(t[0].to, Decision::Announce);
        assert!(
            p.evaluate(&[checking("192.0.2.10", 1, 1, 4)], None, false)
                .is_empty(),
            "a new backend does not withdraw an announced address"
        );
        // Withdrawn for another reason and back: not held again.
        p.evaluate(&[checking("192.0.2.10", 0, 1, 4)], None, false);
        p.evaluate(&[checking("192.0.2.10", 1, 1, 4)], None, false);
        assert_eq!(p.announced().count(), 1);

        // Forgotten, then added again: a new address, held again.
        p.evaluate(&[], None, false);
        p.evaluate(&[checking("192.0.2.10", 1, 1, 4)], None, false);
        assert_eq!(p.announced().count(), 0);
    }

    /// The hold only ever replaces an announcement: without enough backends up, or with
    /// a reason that withdraws everything, that reason is the one reported.
    #[test]
    fn pending_verdicts_do_not_hide_other_reasons() {
        let mut p = Policy::default();
        let s = [checking("192.0.2.10", 0, 2, 3)];
        let t = p.evaluate(&s, None, false);
        assert_eq!(
            t[0].to,
            Decision::Withdraw(WithdrawReason::TooFewHealthyBackends {
                healthy: 0,
                required: 1
            })
        );
        let s = [checking("192.0.2.10", 2, 1, 3)];
        let t = p.evaluate(&s, None, true);
        assert_eq!(t[0].to, Decision::Withdraw(WithdrawReason::ShuttingDown));
        let problem = DataplaneProblem::NextHopUnresolved;
        let t = p.evaluate(&s, Some(&problem), false);
        assert_eq!(
            t[0].to,
            Decision::Withdraw(WithdrawReason::Dataplane(problem))
        );
    }

    /// One address, two services: the one ready does not announce it while the other
    /// waits for verdicts (its table would be partial); a removed one does not hold it.
    #[test]
    fn any_service_of_an_address_still_pending_holds_it() {
        let mut p = Policy::default();
        let ready = svc("192.0.2.10", 3, 1);
        p.evaluate(&[ready, checking("192.0.2.10", 0, 2, 2)], None, false);
        assert_eq!(
            p.decisions()[&"192.0.2.10".parse::<IpAddr>().unwrap()],
            Decision::Withdraw(WithdrawReason::HealthPending {
                pending: 2,
                checked: 2
            })
        );
        let gone = ServiceHealth {
            removed: true,
            ..checking("192.0.2.10", 0, 2, 2)
        };
        p.evaluate(&[ready, gone], None, false);
        assert_eq!(p.announced().count(), 1);
    }
}
