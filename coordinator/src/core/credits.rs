//! Credits and reputation as a pure function of the run log. The coordinator keeps them by
//! folding each entry as it writes it, a restarted coordinator by folding its stored log, and
//! `tessera verify` by folding the log it checked: one piece of code, so the same numbers, and
//! a coordinator cannot credit work its log does not record.
//!
//! The rules, entry by entry:
//! - `Joined`: the identity's kind.
//! - `Accepted`: one more accepted unit, its tokens, and its FLOPs, pending when the entry says
//!   the run checks work, verified at once otherwise.
//! - `Rejected`: one more rejected submission.
//! - `Checked`: passed (or the auditors were the ones wrong): the checked identity's pending
//!   FLOPs become verified, and its first pass in that step or round adds a clean step. Failed:
//!   the checked identity loses everything and is refused. Every auditor of an `AuditorFailed`
//!   check that is not in `credited` (those that disagreed with the checked result) is refused
//!   likewise. Disputed: every party is on probation again. Each identity in `credited` gains
//!   the check's FLOPs, verified.

use std::collections::{BTreeMap, BTreeSet};

use tessera_protocol::log::{CheckOutcome, LogEvent};
use tessera_protocol::PublicKey;

use serde::{Deserialize, Serialize};
use tessera_protocol::messages::ContributorKind;

/// Every identity's record, as the log so far makes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Credits {
    records: BTreeMap<PublicKey, Record>,
    refused: BTreeSet<PublicKey>,
    /// The last step or round each identity's work passed a check in.
    last_clean: BTreeMap<PublicKey, u64>,
    /// The identities whose record the entry being folded changed (empty between entries).
    touched: Vec<PublicKey>,
}

impl Credits {
    /// The records a whole log makes.
    pub fn from_log<'a>(events: impl IntoIterator<Item = &'a LogEvent>) -> Self {
        let mut c = Credits::default();
        for e in events {
            c.apply(e);
        }
        c
    }

    /// Folds one more entry in; returns the identities whose record it changed.
    pub fn apply(&mut self, event: &LogEvent) -> Vec<PublicKey> {
        self.fold(event);
        std::mem::take(&mut self.touched)
    }

    fn fold(&mut self, event: &LogEvent) {
        match event {
            LogEvent::Joined { key, kind } => self.at(*key).kind = Some(*kind),
            LogEvent::Accepted {
                key,
                tokens,
                flops,
                pending,
                ..
            } => {
                let r = self.at(*key);
                r.accepted += 1;
                r.tokens += tokens;
                if *pending {
                    r.pending_flops += flops;
                } else {
                    r.flops += flops;
                }
            }
            LogEvent::Rejected { key, .. } => self.at(*key).rejected += 1,
            LogEvent::Checked {
                key,
                step,
                auditors,
                outcome,
                flops,
                credited,
            } => {
                match outcome {
                    CheckOutcome::Passed | CheckOutcome::AuditorFailed(_) => {
                        let new_step = self.last_clean.insert(*key, *step) != Some(*step);
                        let r = self.at(*key);
                        r.checks_passed += 1;
                        r.clean_steps += u64::from(new_step);
                        r.flops += std::mem::take(&mut r.pending_flops);
                        if let CheckOutcome::AuditorFailed(_) = outcome {
                            for liar in auditors.iter().filter(|k| !credited.contains(k)) {
                                self.refuse(*liar);
                            }
                        }
                    }
                    CheckOutcome::Failed(_) => self.refuse(*key),
                    CheckOutcome::Disputed(_) => {
                        // One of them is wrong and nobody could say who: every party is on
                        // probation again (checked at the new identity's rate).
                        for k in std::iter::once(key).chain(auditors) {
                            if self.records.contains_key(k) {
                                self.at(*k).clean_steps = 0;
                            }
                        }
                    }
                    CheckOutcome::Skipped(_) => {}
                }
                for &k in credited {
                    if !self.refused.contains(&k) {
                        self.at(k).flops += flops;
                    }
                }
            }
            _ => {}
        }
    }

    fn at(&mut self, key: PublicKey) -> &mut Record {
        if !self.touched.contains(&key) {
            self.touched.push(key);
        }
        self.records.entry(key).or_default()
    }

    /// Found wrong: everything is lost, and the identity is refused from then on.
    fn refuse(&mut self, key: PublicKey) {
        let r = self.at(key);
        r.checks_failed += 1;
        r.flops = 0.0;
        r.pending_flops = 0.0;
        self.refused.insert(key);
    }

    /// Each identity's record.
    pub fn records(&self) -> &BTreeMap<PublicKey, Record> {
        &self.records
    }

    /// Whether a check found `key` wrong.
    pub fn is_refused(&self, key: &PublicKey) -> bool {
        self.refused.contains(key)
    }

    /// Whether `key` spent its rejections: [`MAX_REJECTED`] of its results or more were
    /// rejected, and more than were accepted. Such an identity takes no further part in the
    /// run (a restarted coordinator and `tessera verify` fold the same count from the log), so
    /// no identity can fill the log with rejections; an honest contributor's late results
    /// are far fewer than its accepted ones.
    pub fn rejections_spent(&self, key: &PublicKey) -> bool {
        self.records
            .get(key)
            .is_some_and(|r| r.rejected >= MAX_REJECTED && r.rejected > r.accepted)
    }

    /// Distinct steps or rounds in which `key`'s work passed checks (its probation).
    pub fn clean_steps(&self, key: &PublicKey) -> u64 {
        self.records.get(key).map_or(0, |r| r.clean_steps)
    }
}

/// Rejected results after which an identity with fewer accepted ones is refused (see
/// [`Credits::rejections_spent`]).
pub const MAX_REJECTED: u64 = 64;

/// Per-identity record, kept across sessions and restarts: a fold of the run log (see
/// this module).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Native or browser (as last seen).
    pub kind: Option<ContributorKind>,
    /// Accepted units.
    pub accepted: u64,
    /// Rejected submissions.
    pub rejected: u64,
    /// Tokens in accepted units.
    pub tokens: u64,
    /// Credits: floating-point operations of verified work (estimated from the model shape:
    /// two per parameter per token forward, six forward and backward). Where the run checks
    /// work, accepted work waits in `pending_flops` until the identity passes a check (or
    /// its results agree with another's in a check it ran); a failed check takes everything.
    pub flops: f64,
    /// Accepted work not yet verified.
    pub pending_flops: f64,
    /// Checks of its work passed.
    pub checks_passed: u64,
    /// Checks of its work failed.
    pub checks_failed: u64,
    /// Distinct steps or rounds in which checks of its work passed: its probation. A step
    /// thrown away and run again counts once, however often its checks ran, so an attacker
    /// cannot shorten its probation by getting steps discarded.
    pub clean_steps: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::messages::ContributorKind;
    use tessera_protocol::Identity;

    fn key(n: u8) -> PublicKey {
        Identity::from_seed([n; 32]).public()
    }

    fn accepted(k: PublicKey, flops: f64, pending: bool) -> LogEvent {
        LogEvent::Accepted {
            key: k,
            unit: 1,
            seq: 1,
            result: [0; 32],
            tokens: 10,
            flops,
            pending,
        }
    }

    fn checked(k: PublicKey, auditors: Vec<PublicKey>, outcome: CheckOutcome) -> LogEvent {
        LogEvent::Checked {
            key: k,
            step: 0,
            credited: match &outcome {
                CheckOutcome::Passed => auditors.clone(),
                CheckOutcome::AuditorFailed(_) | CheckOutcome::Failed(_) => {
                    auditors.iter().skip(1).copied().collect()
                }
                _ => Vec::new(),
            },
            auditors,
            outcome,
            flops: 5.0,
        }
    }

    #[test]
    fn a_dispute_puts_its_parties_on_probation_and_verifies_nothing() {
        let (a, b, outsider) = (key(1), key(2), key(3));
        let passed = |k, step| LogEvent::Checked {
            key: k,
            step,
            auditors: Vec::new(),
            outcome: CheckOutcome::Passed,
            flops: 0.0,
            credited: Vec::new(),
        };
        let mut log = vec![accepted(a, 10.0, false), accepted(b, 10.0, false)];
        log.extend((0..5).flat_map(|s| [passed(a, s), passed(b, s)]));
        log.push(accepted(a, 7.0, true));
        let mut cr = Credits::from_log(&log);
        assert_eq!((cr.clean_steps(&a), cr.clean_steps(&b)), (5, 5));
        let why = tessera_protocol::Reason::new(tessera_protocol::Code::Disputed, "no third");
        let touched = cr.apply(&checked(a, vec![b, outsider], CheckOutcome::Disputed(why)));
        assert_eq!((cr.clean_steps(&a), cr.clean_steps(&b)), (0, 0));
        assert_eq!(touched, vec![a, b], "the parties' records changed");
        assert!(
            !cr.records().contains_key(&outsider),
            "no record made for a stranger"
        );
        let r = &cr.records()[&a];
        assert_eq!(
            (r.flops, r.pending_flops),
            (10.0, 7.0),
            "nothing verified by a dispute"
        );
        assert!(!cr.is_refused(&a) && !cr.is_refused(&b), "nobody refused");
    }

    #[test]
    fn pending_work_counts_once_checked_and_a_failure_takes_everything() {
        let (a, b, c) = (key(1), key(2), key(3));
        let log = vec![
            LogEvent::Joined {
                key: a,
                kind: ContributorKind::Native,
            },
            accepted(a, 100.0, true),
            accepted(a, 50.0, true),
            accepted(b, 70.0, true),
            LogEvent::Rejected {
                key: b,
                unit: 2,
                seq: 2,
                reason: tessera_protocol::Reason::new(tessera_protocol::Code::NotOpen, "late"),
            },
            checked(a, vec![b], CheckOutcome::Passed),
            accepted(a, 1.0, true),
            checked(
                b,
                vec![a, c],
                CheckOutcome::Failed(tessera_protocol::Reason::new(
                    tessera_protocol::Code::CheckFailed,
                    "wrong",
                )),
            ),
        ];
        let cr = Credits::from_log(&log);
        let ra = &cr.records()[&a];
        assert_eq!(ra.kind, Some(ContributorKind::Native));
        assert_eq!((ra.accepted, ra.tokens, ra.checks_passed), (3, 30, 1));
        assert_eq!((ra.flops, ra.pending_flops), (150.0, 1.0));
        let rb = &cr.records()[&b];
        assert_eq!((rb.flops, rb.pending_flops, rb.rejected), (0.0, 0.0, 1));
        assert_eq!(rb.checks_failed, 1);
        assert_eq!(cr.records()[&c].flops, 5.0, "the agreeing third party");
        assert!(cr.is_refused(&b) && !cr.is_refused(&a));
        assert_eq!(cr.records().keys().filter(|k| cr.is_refused(k)).count(), 1);
    }

    #[test]
    fn a_lying_auditor_is_refused_and_the_checked_lease_cleared() {
        let (a, liar, judge) = (key(1), key(2), key(3));
        let log = vec![
            accepted(a, 10.0, true),
            accepted(liar, 10.0, false),
            checked(
                a,
                vec![liar, judge],
                CheckOutcome::AuditorFailed(tessera_protocol::Reason::new(
                    tessera_protocol::Code::AuditorWrong,
                    "x",
                )),
            ),
        ];
        let cr = Credits::from_log(&log);
        assert_eq!(cr.records()[&a].flops, 10.0);
        assert_eq!(cr.records()[&liar].flops, 0.0);
        assert_eq!(cr.records()[&judge].flops, 5.0);
        assert!(cr.is_refused(&liar));
        assert_eq!(cr.clean_steps(&a), 1);
    }

    #[test]
    fn unchecked_runs_credit_at_once() {
        let a = key(1);
        let cr = Credits::from_log(&[accepted(a, 3.0, false), accepted(a, 4.0, false)]);
        assert_eq!(
            (cr.records()[&a].flops, cr.records()[&a].pending_flops),
            (7.0, 0.0)
        );
    }
}
