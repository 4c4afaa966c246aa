//! Replays of whole-model units. A drawn unit runs again on another contributor, from the
//! round's weights and the unit's data (units of such runs start from fresh inner state, see
//! `Lease::fresh_units`), sent as an ordinary unit; the two updates (and loss sums) must agree
//! within the run's round tolerance. In SparseLoCo runs the replay comes back dense (the work
//! says so) and the original's compression is checked against it, near-ties allowed either way
//! ([`matches_compression`]). On a mismatch a third contributor decides. Whoever is found wrong is refused and loses its credits (through the
//! failed `Checked` entry); a refused update's slot runs again. A round closes only once every
//! replay of it is resolved.

use std::collections::{BTreeMap, BTreeSet};

use tessera_protocol::log::{CheckOf, CheckOutcome, LogEvent};
use tessera_protocol::messages::Update;
use tessera_protocol::messages::{Submission, Verdict};
use tessera_protocol::{Code, PublicKey, Reason, ToContributor};
use tessera_train::drift::rel_l2;
use tessera_train::sparse_wire::unpack;
use tessera_train::sparseloco::matches_compression;

use super::arbitration::{
    after_checks, arbitrate, fingerprints, nobody_left, wrong_auditors, AfterChecks, Found, Ruling,
    Tally,
};
use super::context::Context;
use super::draws::Candidate;
use super::part::Part;
use super::{Action, ConnId, Replicas};

/// The first auditor that disagreed: who, its update and its loss sum.
type FirstAnswer = (PublicKey, Vec<Vec<f32>>, f64);

/// The replays of the open round.
#[derive(Clone, Debug, Default)]
pub(super) struct Replays {
    /// Drawn units awaiting their verdict, by slot.
    cases: BTreeMap<u64, Case>,
    /// Replay units in flight.
    running: BTreeMap<u64, Running>,
}

#[derive(Clone, Debug)]
struct Case {
    /// The unit replayed.
    unit: u64,
    /// Whose it is.
    key: PublicKey,
    /// Auditors that answered, failed or vanished.
    tried: BTreeSet<PublicKey>,
    /// The first auditor that disagreed, once one did.
    first: Option<FirstAnswer>,
    /// The answers since, by side.
    tally: Tally,
    /// The replay unit in flight.
    replay: Option<u64>,
}

#[derive(Clone, Debug)]
struct Running {
    slot: u64,
    conn: ConnId,
    key: PublicKey,
    deadline: u64,
}

/// Whether two replays of a unit agree: updates within `tol` (relative L2), loss sums too.
fn agree(a: (&[Vec<f32>], f64), b: (&[Vec<f32>], f64), tol: f64) -> Result<(), String> {
    let flat = |u: &[Vec<f32>]| -> Vec<f32> { u.iter().flatten().copied().collect() };
    let d = rel_l2(&flat(a.0), &flat(b.0));
    if d.is_nan() || d > tol {
        return Err(format!("updates {d:.2e} apart, tolerance {tol:.1e}"));
    }
    let l = (a.1 - b.1).abs() / a.1.abs().max(b.1.abs()).max(f64::MIN_POSITIVE);
    if l.is_nan() || l > tol {
        return Err(format!("loss sums {l:.2e} apart, tolerance {tol:.1e}"));
    }
    Ok(())
}

impl Replays {
    /// Draws the unit just accepted into `slot` for a replay.
    pub(super) fn draw(&mut self, slot: u64, unit: u64, key: PublicKey) {
        self.cases.insert(
            slot,
            Case {
                unit,
                key,
                tried: BTreeSet::new(),
                first: None,
                tally: Tally::default(),
                replay: None,
            },
        );
    }

    /// Whether `slot`'s unit is drawn for a replay not yet resolved.
    pub(super) fn has(&self, slot: u64) -> bool {
        self.cases.contains_key(&slot)
    }

    /// Whether every replay of the round is resolved.
    pub(super) fn resolved(&self) -> bool {
        self.cases.is_empty()
    }

    /// Whether `unit` is a replay in flight.
    pub(super) fn is_running(&self, unit: u64) -> bool {
        self.running.contains_key(&unit)
    }

    /// An auditor that will not answer (gone, late): the replay goes to another. False when
    /// `unit` is no replay in flight.
    pub(super) fn lost(&mut self, unit: u64) -> bool {
        let Some(r) = self.running.remove(&unit) else {
            return false;
        };
        if let Some(c) = self.cases.get_mut(&r.slot) {
            c.tried.insert(r.key);
            c.replay = None;
        }
        true
    }
}

/// Whether a replay (`dense`, `loss_sum`) of a run `spec` agrees with the replayed
/// contribution: updates within the tolerance, or, for a compressed update, its compression
/// of the replay.
fn agrees_with_checked(
    spec: &super::RunSpec,
    checked: (&super::Contribution, &[Vec<f32>]),
    replay: (&[Vec<f32>], f64),
    tol: f64,
) -> Result<(), String> {
    let (c, checked_dense) = checked;
    let (Some(cfg), Update::Sparse(packed)) = (spec.sparse(), &c.update) else {
        return agree(replay, (checked_dense, c.loss_sum), tol);
    };
    let shapes = tessera_compute::hf::tensor_shapes(&spec.model);
    let sent = unpack(packed, &shapes, &cfg).map_err(|e| e.to_string())?;
    for ((t, (name, _)), d) in sent.iter().zip(&shapes).zip(replay.0) {
        matches_compression(t, d, tol as f32).map_err(|e| format!("{name}: {e}"))?;
    }
    agree((&[], replay.1), (&[], c.loss_sum), tol)
}

impl Replicas {
    /// Whether this run replays drawn whole-model units.
    pub(super) fn replays_on(&self, cx: &Context) -> bool {
        cx.spec.checks.as_ref().is_some_and(|c| c.replay)
    }

    fn cancel_replay(&mut self, cx: &mut Context, unit: u64, conn: ConnId) {
        if let Some(s) = cx.sessions.get_mut(&conn) {
            if s.unit == Some(unit) {
                s.unit = None;
            }
        }
        cx.send(conn, ToContributor::Cancel { unit });
    }

    /// Replays past their deadline go to someone else.
    pub(super) fn expire_replays(&mut self, cx: &mut Context) {
        let late: Vec<(u64, ConnId)> = self
            .round
            .replays
            .running
            .iter()
            .filter(|(_, r)| r.deadline < cx.now)
            .map(|(&u, r)| (u, r.conn))
            .collect();
        for (unit, conn) in late {
            self.round.replays.lost(unit);
            self.cancel_replay(cx, unit, conn);
        }
    }

    /// Gives each waiting replay to an idle, ready contributor that may run it (not the unit's
    /// own, not one that already tried); resolves a case no connected contributor could ever
    /// take (while nobody is connected, after a restart say, it waits).
    pub(super) fn start_replays(&mut self, cx: &mut Context) {
        let waiting: Vec<u64> = self
            .round
            .replays
            .cases
            .iter()
            .filter(|(_, c)| c.replay.is_none())
            .map(|(&s, _)| s)
            .collect();
        for slot in waiting {
            let Some(case) = self.round.replays.cases.get(&slot) else {
                continue;
            };
            let eligible: Vec<Candidate> = cx
                .sessions
                .iter()
                .filter_map(|(&conn, s)| {
                    let k = s.active()?;
                    let ok = k != case.key
                        && !case.tried.contains(&k)
                        && !case.tally.order.contains(&k)
                        && !cx.is_refused(&k);
                    ok.then_some(Candidate {
                        conn,
                        key: k,
                        lease: s.lease.unwrap_or(0),
                        clean_steps: cx.credits.clean_steps(&k),
                        free: s.ready && s.lease.is_some() && s.unit.is_none(),
                    })
                })
                .collect();
            let anyone = cx.sessions.values().any(|s| s.active().is_some());
            if eligible.is_empty() && anyone {
                let outcome = nobody_left(
                    case.tally.disagreed(),
                    "no other contributor could replay it",
                    "the replays disagree and no further contributor was there",
                );
                let auditors = case.tally.order.clone();
                self.resolve_replay(cx, slot, outcome, auditors, Vec::new(), 0.0);
                self.maybe_close_round(cx);
                continue;
            }
            let check = CheckOf::Replay {
                round: self.round.number,
                unit: case.unit,
            };
            let beacon = cx.credits.beacon();
            let Some((Candidate { conn, key, .. }, picked)) =
                super::draws::Draws::checker(beacon, &eligible, check, case.key)
            else {
                continue;
            };
            let Some(lease) = cx.sessions.get(&conn).and_then(|s| s.lease) else {
                continue;
            };
            cx.log(picked);
            let unit = cx.next_unit;
            cx.next_unit += 1;
            if let Some(s) = cx.sessions.get_mut(&conn) {
                s.unit = Some(unit);
            }
            if let Some(c) = self.round.replays.cases.get_mut(&slot) {
                c.replay = Some(unit);
            }
            self.round.replays.running.insert(
                unit,
                Running {
                    slot,
                    conn,
                    key,
                    deadline: cx.now + cx.spec.unit_deadline_ms,
                },
            );
            let round = self.round.number;
            let mut work = super::samples::work(
                &cx.spec,
                &mut cx.sampler,
                (round, cx.version),
                (unit, lease, slot),
            );
            // A compressed unit's replay comes back dense, to check the compression against.
            work.dense = cx.spec.sparse().is_some();
            cx.send(conn, ToContributor::Work(work));
        }
    }

    /// An auditor's answer: checked like any submission, then compared with the replayed unit.
    pub(super) fn replayed(
        &mut self,
        cx: &mut Context,
        conn: ConnId,
        key: PublicKey,
        seq: u64,
        sub: Submission,
    ) {
        let unit = sub.unit;
        let Some(r) = self.round.replays.running.get(&unit).cloned() else {
            return;
        };
        if r.conn != conn {
            return cx.reject_foreign(conn, unit, key, seq);
        }
        self.round.replays.running.remove(&unit);
        if let Some(s) = cx.sessions.get_mut(&conn) {
            s.unit = None;
        }
        let Some(case) = self.round.replays.cases.get_mut(&r.slot) else {
            return;
        };
        case.replay = None;
        case.tried.insert(key);
        let case = case.clone();
        let answer = if let Some(problem) =
            super::validate::submission_problem(&cx.spec, cx.version, &sub)
        {
            Err(problem)
        } else if cx.spec.sparse().is_some() && !matches!(sub.result, Update::Dense(_)) {
            Err(Reason::new(
                Code::WrongShape,
                "a replay's update goes back dense (the work said so)",
            ))
        } else {
            super::validate::dense_update(&cx.spec, &sub.result)
                .map_err(|e| super::validate::update_refusal(&sub.result, e))
        };
        let dense = match answer {
            Ok(d) => d,
            Err(why) => return self.reject_submission(cx, conn, key, seq, &sub, why),
        };
        cx.receipt(
            conn,
            unit,
            key,
            seq,
            Verdict::Accepted,
            super::digest(&sub.result),
            // The auditor's credit comes with the check's outcome.
            (0, 0.0),
        );
        let tol = cx.spec.checks.as_ref().map_or(0.0, |c| c.round_tolerance);
        let mine = (dense.as_slice(), sub.loss_sum);
        let Some(with_checked) = self
            .round
            .slot_update(r.slot, case.unit)
            .map(|checked| agrees_with_checked(&cx.spec, checked, mine, tol))
        else {
            // The slot was reopened meanwhile: nothing left to judge.
            self.round.replays.cases.remove(&r.slot);
            return;
        };
        let flops = cx.spec.unit_flops(sub.tokens);
        let with_first = case
            .first
            .as_ref()
            .map(|(_, d, l)| agree(mine, (d, *l), tol));
        let need = cx.spec.agreement();
        match arbitrate(key, with_checked, with_first, &case.tally, need) {
            Ruling::AskAnother { tally, keep, why } => {
                tracing::info!(slot = r.slot, "replays disagree, asking another: {why}");
                if let Some(c) = self.round.replays.cases.get_mut(&r.slot) {
                    c.tally = tally;
                    if keep {
                        c.first = Some((key, dense, sub.loss_sum));
                    }
                }
            }
            Ruling::Decided(d) => {
                let outcome = match d.found {
                    Found::Passed => CheckOutcome::Passed,
                    Found::AuditorWrong { wrong } => CheckOutcome::AuditorFailed(Reason::new(
                        Code::AuditorWrong,
                        format!(
                            "{} replays agree with the unit, not with {}",
                            d.credited.len(),
                            fingerprints(&wrong)
                        ),
                    )),
                    Found::CheckedWrong { why } => CheckOutcome::Failed(Reason::new(
                        Code::CheckFailed,
                        format!(
                            "{} replays elsewhere agree with each other, not with it: {why}",
                            d.credited.len()
                        ),
                    )),
                    Found::NoneAgree { why } => CheckOutcome::Disputed(Reason::new(
                        Code::Disputed,
                        format!(
                            "replayed {} times elsewhere and neither side reached {need} agreeing replays: {why}",
                            d.auditors.len()
                        ),
                    )),
                };
                let flops = if d.credited.is_empty() { 0.0 } else { flops };
                self.resolve_replay(cx, r.slot, outcome, d.auditors, d.credited, flops);
            }
        }
        self.maybe_close_round(cx);
    }

    /// Logs a replay's outcome (which credits and refuses as the log's rules say) and acts on
    /// it: a failed or disputed unit's slot runs again.
    fn resolve_replay(
        &mut self,
        cx: &mut Context,
        slot: u64,
        outcome: CheckOutcome,
        auditors: Vec<PublicKey>,
        credited: Vec<PublicKey>,
        flops: f64,
    ) {
        let Some(case) = self.round.replays.cases.remove(&slot) else {
            return;
        };
        let round = self.round.number;
        let credited_keys = credited.clone();
        cx.log(LogEvent::Checked {
            key: case.key,
            step: round,
            auditors: auditors.clone(),
            outcome: outcome.clone(),
            flops,
            credited,
        });
        let rerun = match &outcome {
            CheckOutcome::Failed(why) => {
                self.close_refused(cx, case.key, why.prefixed("its update failed a replay"));
                true
            }
            CheckOutcome::AuditorFailed(why) => {
                for liar in wrong_auditors(&auditors, &credited_keys) {
                    self.close_refused(cx, liar, why.prefixed("a replay it ran was wrong"));
                }
                false
            }
            CheckOutcome::Disputed(_) => {
                let reruns = self.round.disputed.entry(slot).or_default();
                let again = after_checks(true, true, *reruns) == AfterChecks::RunsAgain;
                *reruns += u32::from(again);
                if !again {
                    tracing::warn!(
                        round,
                        slot,
                        "the slot's replay stayed disputed: its update stands unverified"
                    );
                }
                again
            }
            CheckOutcome::Passed => {
                self.round.verified.insert(slot);
                false
            }
            CheckOutcome::Skipped(_) => false,
        };
        if rerun && self.round.slot_update(slot, case.unit).is_some() {
            self.round.reopen(slot);
            cx.out.push(Action::Withdrawn { round, slot });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::agree;

    #[test]
    fn replays_agree_within_the_tolerance_only() {
        let a = vec![vec![1.0f32, 2.0, 3.0], vec![4.0]];
        let mut b = a.clone();
        b[1][0] += 1e-5;
        assert!(agree((&a, 10.0), (&b, 10.0), 1e-4).is_ok());
        assert!(agree((&a, 10.0), (&b, 10.0), 1e-7).is_err());
        assert!(agree((&a, 10.0), (&a, 10.1), 1e-4).is_err(), "loss sums");
        let nan = vec![vec![f32::NAN, 2.0, 3.0], vec![4.0]];
        assert!(agree((&a, 10.0), (&nan, 10.0), 1e-4).is_err());
    }
}
