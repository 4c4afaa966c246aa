//! Checks of untrusted pipeline work, adaptive in the manner of BOINC. Each lease's step is
//! drawn for a check with a probability that falls as its identity's clean record grows (run
//! parameters); the coordinator keeps the exact units a drawn lease was sent and its results.
//! Once the step drained and every gradient sum is in, another lease holding the same
//! micro-shards (identical weights) runs those units again into a separate accumulator; every
//! result and the gradient sums are compared within the run's tolerance (beyond the rounding
//! of the activation encoding). A mismatch goes to a third lease: the side it agrees with is
//! right. An identity found wrong loses its credits and is refused from then on, and the step
//! is thrown away and run again from the same weights, so nothing descending from a wrong
//! result is applied. The step commits only once every check is resolved.

use std::collections::{BTreeMap, BTreeSet};

use tessera_compute::shard::ShardTensors;
use tessera_protocol::log::{CheckOf, CheckOutcome, LogEvent};
use tessera_protocol::messages::Verdict;
use tessera_protocol::pipeline::{AuditResult, AuditWork, PipeResult, PipeWork};
use tessera_protocol::{Code, PublicKey, Reason, ToContributor};
use tessera_train::shards::grads_from_wire;

use super::compare::agree;
use super::{Pipe, ShardId};
use crate::core::arbitration::{
    arbitrate, fingerprints, nobody_left, wrong_auditors, Found, Ruling, Tally,
};
use crate::core::context::Context;
use crate::core::draws::Candidate;
use crate::core::part::Part;
use crate::core::ConnId;

/// The first disagreeing auditor's identity and answer (results, gradient sums), kept while
/// more auditors run the same check.
pub(in crate::core) type FirstAnswer = (PublicKey, Vec<PipeResult>, Vec<ShardTensors>);

/// Where a lease's check stands.
#[derive(Clone, Debug, PartialEq)]
pub(in crate::core) enum AuditPhase {
    /// Its units are being recorded.
    Recording,
    /// No holder that could run them is free yet (one is loading its lease or busy): the
    /// check waits for one until `until`, then ends as nobody being left.
    Waiting {
        /// When the wait ends.
        until: u64,
        /// Once an auditor disagreed: the first disagreeing answer.
        first: Option<FirstAnswer>,
    },
    /// Another lease runs them again.
    Running {
        /// Audit id.
        audit: u64,
        /// The auditor's lease, connection and identity.
        lease: u64,
        conn: ConnId,
        key: PublicKey,
        deadline: u64,
        /// Once an auditor disagreed: the first disagreeing answer.
        first: Option<FirstAnswer>,
    },
    /// Done.
    Resolved(CheckOutcome),
}

/// One lease's check within a step.
#[derive(Clone, Debug)]
pub(in crate::core) struct LeaseAudit {
    /// Whose work.
    pub(in crate::core) key: PublicKey,
    /// Units sent and not yet answered.
    pub(in crate::core) sent: BTreeMap<u64, PipeWork>,
    /// Accepted units with their results, in the order they ran.
    pub(in crate::core) done: Vec<(PipeWork, PipeResult)>,
    /// The lease's gradient sums, once collected (never, when the lease was lost first).
    pub(in crate::core) sums: Option<Vec<ShardTensors>>,
    pub(in crate::core) phase: AuditPhase,
    /// Auditors' leases tried (answered, lost or late).
    pub(in crate::core) tried: BTreeSet<u64>,
    /// The answers after the first disagreeing one, by side.
    pub(in crate::core) tally: Tally,
}

impl Pipe {
    /// Whether `lease`'s units in the open step are recorded for a check: every lease's are,
    /// in a run that checks work, since which ones are checked is drawn only once the step's
    /// work is in ([`Pipe::draw_audits`]).
    pub(super) fn audit_recorded(&mut self, cx: &mut Context, lease: u64, key: PublicKey) -> bool {
        if cx.spec.checks.is_none() {
            return false;
        }
        self.step.audits.entry(lease).or_insert_with(|| LeaseAudit {
            key,
            sent: BTreeMap::new(),
            done: Vec::new(),
            sums: None,
            phase: AuditPhase::Recording,
            tried: BTreeSet::new(),
            tally: Tally::default(),
        });
        true
    }

    /// Reveals the draw chain's next value once the step's work and gradient sums are in:
    /// the leases of the identities it draws are checked, the others' records dropped. Once a
    /// step (a step run again draws anew).
    fn draw_audits(&mut self, cx: &mut Context) {
        if self.step.drawn {
            return;
        }
        self.step.drawn = true;
        let drawn = cx.reveal();
        self.step.audits.retain(|_, a| drawn.contains(&a.key));
    }

    /// Starts the checks of a drained, collected step; true once every one is resolved.
    pub(super) fn audits_resolved(&mut self, cx: &mut Context) -> bool {
        if cx.spec.checks.is_some() {
            self.draw_audits(cx);
        }
        let waiting: Vec<u64> = self
            .step
            .audits
            .iter()
            .filter(|(_, a)| a.phase == AuditPhase::Recording)
            .map(|(&l, _)| l)
            .collect();
        for lease in waiting {
            self.start_audit(cx, lease, None);
        }
        self.step
            .audits
            .values()
            .all(|a| matches!(a.phase, AuditPhase::Resolved(_)))
    }

    /// Sends `lease`'s units to an auditor (one more when `first` holds the first disagreeing
    /// answer), or resolves the check when nobody can run it.
    fn start_audit(&mut self, cx: &mut Context, lease: u64, first: Option<FirstAnswer>) {
        let Some(a) = self.step.audits.get(&lease) else {
            return;
        };
        if a.done.is_empty() {
            return self.resolve(
                cx,
                lease,
                CheckOutcome::Skipped(Reason::new(Code::NoAuditor, "no accepted work")),
                vec![],
                vec![],
                0.0,
            );
        }
        let need: BTreeSet<ShardId> = a
            .done
            .iter()
            .flat_map(|(w, _)| self.cells_of(&cx.spec.model, w).unwrap_or_default())
            .collect();
        let mut exclude = vec![a.key];
        exclude.extend(a.tally.order.iter().copied());
        let candidates: Vec<Candidate> = self
            .holdings
            .iter()
            .filter(|(&l, h)| {
                l != lease && !a.tried.contains(&l) && need.iter().all(|c| h.shards.contains(c))
            })
            .filter_map(|(&l, h)| {
                let s = cx.sessions.get(&h.conn)?;
                let key = s.active()?;
                Some(Candidate {
                    conn: h.conn,
                    key,
                    lease: l,
                    clean_steps: cx.credits.clean_steps(&key),
                    free: s.ready && !exclude.contains(&key) && !cx.is_refused(&key),
                })
            })
            .collect();
        let check = CheckOf::Audit {
            step: self.step.number,
            lease,
        };
        let beacon = cx.credits.beacon();
        let auditor = crate::core::draws::Draws::checker(beacon, &candidates, check, a.key);
        let Some((
            Candidate {
                lease: by,
                conn,
                key,
                ..
            },
            picked,
        )) = auditor
        else {
            // A holder that is only not ready yet (loading its lease, or busy) is waited for,
            // for as long as a unit may take; then the check ends as nobody being left.
            let could = candidates
                .iter()
                .any(|c| !exclude.contains(&c.key) && !cx.credits.is_refused(&c.key));
            let until = match &a.phase {
                AuditPhase::Waiting { until, .. } => *until,
                _ => cx.now + cx.spec.unit_deadline_ms,
            };
            if could && cx.now < until {
                if let Some(a) = self.step.audits.get_mut(&lease) {
                    a.phase = AuditPhase::Waiting { until, first };
                }
                return;
            }
            let outcome = nobody_left(
                a.tally.disagreed(),
                "no other lease holding the same micro-shards was available",
                "the auditors disagree and no further lease was available",
            );
            let auditors = a.tally.order.clone();
            return self.resolve(cx, lease, outcome, auditors, Vec::new(), 0.0);
        };
        cx.log(picked);
        let audit = cx.next_unit;
        cx.next_unit += 1;
        let deadline = cx.now + cx.spec.unit_deadline_ms;
        let units: Vec<PipeWork> = a
            .done
            .iter()
            .map(|(w, _)| PipeWork {
                lease: by,
                ..w.clone()
            })
            .collect();
        let step = self.step.number;
        if let Some(a) = self.step.audits.get_mut(&lease) {
            a.phase = AuditPhase::Running {
                audit,
                lease: by,
                conn,
                key,
                deadline,
                first,
            };
        }
        cx.send(
            conn,
            ToContributor::Audit(Box::new(AuditWork {
                audit,
                lease: by,
                step,
                units,
            })),
        );
    }

    /// An auditor's answer.
    pub(in crate::core) fn audited(
        &mut self,
        cx: &mut Context,
        conn: ConnId,
        key: PublicKey,
        seq: u64,
        r: AuditResult,
    ) {
        let found = self.step.audits.iter().find_map(|(&l, a)| match &a.phase {
            AuditPhase::Running { audit, conn: c, .. } if *audit == r.audit && *c == conn => {
                Some((l, a.clone()))
            }
            _ => None,
        });
        let Some((lease, a)) = found else {
            return cx.reject(
                conn,
                r.audit,
                key,
                seq,
                Reason::new(
                    Code::NotOpen,
                    format!("audit {} is not open for this connection", r.audit),
                ),
            );
        };
        let AuditPhase::Running {
            lease: by, first, ..
        } = a.phase.clone()
        else {
            return;
        };
        if r.lease != by {
            return cx.reject(
                conn,
                r.audit,
                key,
                seq,
                Reason::new(Code::NotYourLease, "audit answered for another lease"),
            );
        }
        let sparse = None;
        let sums: Result<Vec<ShardTensors>, Reason> = r
            .grads
            .iter()
            .map(|g| {
                grads_from_wire(g, &cx.spec.model, sparse)
                    .map_err(|e| Reason::new(Code::WrongShape, e.to_string()))
            })
            .collect();
        let sums = match sums {
            Ok(s) if r.outputs.len() == a.done.len() => s,
            Ok(_) => {
                let why = Reason::new(
                    Code::WrongUnits,
                    format!(
                        "{} results for an audit of {} units",
                        r.outputs.len(),
                        a.done.len()
                    ),
                );
                return self.audit_answer_refused(cx, conn, key, seq, r.audit, lease, why);
            }
            Err(why) => return self.audit_answer_refused(cx, conn, key, seq, r.audit, lease, why),
        };
        let d = crate::core::digest(&r);
        // The auditor's credit comes with the check's outcome.
        cx.receipt(conn, r.audit, key, seq, Verdict::Accepted, d, (0, 0.0));
        let tol = cx.spec.checks.as_ref().map_or(0.0, |c| c.tolerance);
        let units: Vec<u64> = a.done.iter().map(|(w, _)| w.unit).collect();
        let claimed: Vec<PipeResult> = a.done.iter().map(|(_, r)| r.clone()).collect();
        let work: Vec<PipeWork> = a.done.iter().map(|(w, _)| w.clone()).collect();
        let flops = self.units_flops(&cx.spec.model, cx.spec.seq, &work);
        let with_checked = agree(
            (&r.outputs, &sums),
            (&claimed, a.sums.as_deref()),
            &units,
            tol,
        );
        let with_first = first.as_ref().map(|(_, out, sums_first)| {
            agree((&r.outputs, &sums), (out, Some(sums_first)), &units, tol)
        });
        let need = cx.spec.agreement();
        match arbitrate(key, with_checked, with_first, &a.tally, need) {
            Ruling::AskAnother { tally, keep, why } => {
                tracing::info!(lease, "check mismatch, asking another auditor: {why}");
                if let Some(a) = self.step.audits.get_mut(&lease) {
                    a.tried.insert(by);
                    a.tally = tally;
                }
                let first = if keep {
                    Some((key, r.outputs, sums))
                } else {
                    first
                };
                self.start_audit(cx, lease, first);
            }
            Ruling::Decided(d) => {
                let outcome = outcome_of(&d, need);
                let flops = if d.credited.is_empty() { 0.0 } else { flops };
                self.resolve(cx, lease, outcome, d.auditors, d.credited, flops);
            }
        }
        self.collect_or_close(cx);
    }

    fn audit_answer_refused(
        &mut self,
        cx: &mut Context,
        conn: ConnId,
        key: PublicKey,
        seq: u64,
        audit: u64,
        lease: u64,
        why: Reason,
    ) {
        cx.reject(conn, audit, key, seq, why.clone());
        if let Some(a) = self.step.audits.get_mut(&lease) {
            if let AuditPhase::Running {
                lease: by, first, ..
            } = a.phase.clone()
            {
                a.tried.insert(by);
                self.start_audit(cx, lease, first);
            }
        }
        self.fatal(cx, conn, why.prefixed("audit answer refused"));
        self.collect_or_close(cx);
    }

    /// Records a check's outcome: in the log (which credits the checked identity's pending
    /// work on a pass, `flops` to each of `credited`, and refuses whoever was found wrong),
    /// and for the step; closes the sessions of whoever was found wrong.
    fn resolve(
        &mut self,
        cx: &mut Context,
        lease: u64,
        outcome: CheckOutcome,
        auditors: Vec<PublicKey>,
        credited: Vec<PublicKey>,
        flops: f64,
    ) {
        let step = self.step.number;
        let Some(a) = self.step.audits.get_mut(&lease) else {
            return;
        };
        a.phase = AuditPhase::Resolved(outcome.clone());
        let key = a.key;
        let wrong = wrong_auditors(&auditors, &credited);
        cx.log(LogEvent::Checked {
            key,
            step,
            auditors,
            outcome: outcome.clone(),
            flops,
            credited,
        });
        match &outcome {
            CheckOutcome::AuditorFailed(why) => {
                for liar in wrong {
                    self.close_refused(cx, liar, why.prefixed("an audit it ran was wrong"));
                }
            }
            CheckOutcome::Failed(why) => {
                self.close_refused(cx, key, why.prefixed("its results failed a check"));
            }
            CheckOutcome::Passed | CheckOutcome::Skipped(_) | CheckOutcome::Disputed(_) => {}
        }
    }

    /// Audits whose auditor is gone or late run elsewhere; audits waiting for a free auditor
    /// look for one again (every tick).
    pub(in crate::core) fn expire_audits(&mut self, cx: &mut Context, lost: Option<u64>) {
        let now = cx.now;
        // Checks waiting for a free auditor look again.
        let waiting: Vec<(u64, Option<FirstAnswer>)> = self
            .step
            .audits
            .iter()
            .filter_map(|(&l, a)| match &a.phase {
                AuditPhase::Waiting { first, .. } => Some((l, first.clone())),
                _ => None,
            })
            .collect();
        for (lease, first) in waiting {
            self.start_audit(cx, lease, first);
        }
        let redo: Vec<(u64, u64, Option<FirstAnswer>)> = self
            .step
            .audits
            .iter()
            .filter_map(|(&l, a)| match &a.phase {
                AuditPhase::Running {
                    lease,
                    deadline,
                    first,
                    ..
                } if Some(*lease) == lost || *deadline < now => Some((l, *lease, first.clone())),
                _ => None,
            })
            .collect();
        for (lease, by, first) in redo {
            if let Some(a) = self.step.audits.get_mut(&lease) {
                a.tried.insert(by);
                a.phase = AuditPhase::Recording;
            }
            self.start_audit(cx, lease, first);
        }
    }
}

/// How a decided audit is logged, in a run that refuses on `need` agreeing auditors.
fn outcome_of(d: &crate::core::arbitration::Decision, need: usize) -> CheckOutcome {
    match &d.found {
        Found::Passed => CheckOutcome::Passed,
        Found::AuditorWrong { wrong } => CheckOutcome::AuditorFailed(Reason::new(
            Code::AuditorWrong,
            format!(
                "{} auditors agree with the checked lease, not with {}",
                d.credited.len(),
                fingerprints(wrong)
            ),
        )),
        Found::CheckedWrong { why } => CheckOutcome::Failed(Reason::new(Code::CheckFailed, why)),
        Found::NoneAgree { why } => CheckOutcome::Disputed(Reason::new(
            Code::Disputed,
            format!(
                "{} auditors answered and neither side reached {need} agreeing: {why}",
                d.auditors.len()
            ),
        )),
    }
}

impl super::Pipe {
    /// Whether every resolved check that stops the step ended disputed (nobody found wrong).
    pub(super) fn only_disputed(&self) -> bool {
        let mut disputed = false;
        for a in self.step.audits.values() {
            match &a.phase {
                AuditPhase::Resolved(CheckOutcome::Disputed(_)) => disputed = true,
                AuditPhase::Resolved(CheckOutcome::Failed(_) | CheckOutcome::AuditorFailed(_)) => {
                    return false
                }
                _ => {}
            }
        }
        disputed
    }

    /// Whether a resolved check means the step cannot commit, and why.
    pub(super) fn audit_failure(&self) -> Option<Reason> {
        let pipe = self;
        pipe.step.audits.values().find_map(|a| match &a.phase {
            AuditPhase::Resolved(CheckOutcome::Failed(w))
            | AuditPhase::Resolved(CheckOutcome::AuditorFailed(w))
            | AuditPhase::Resolved(CheckOutcome::Disputed(w)) => Some(Reason::new(
                Code::Discarded,
                format!("a check of {}'s work: {w}", a.key.fingerprint()),
            )),
            _ => None,
        })
    }
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
