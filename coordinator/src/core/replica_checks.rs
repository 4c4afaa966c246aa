//! Checks of whole-model submissions (the Templar-style ones, which apply to whole-model
//! leases only). As an update arrives it is compared with the round's other accepted updates
//! and the previous round's: one whose largest entries coincide with another's and that points
//! the same way is a copy (a freeloader's, or a stale result sent again) and is refused; where
//! the run replays, two such updates of the same round are both replayed instead, since the
//! later one may be the owner's (an attacker can compute another's unit and send it first). When
//! every slot is in, before the round may close: an update whose norm is several times the
//! round's median is a scaled one; a share of updates, drawn with a rate that falls with the
//! identity's clean record, is applied alone to the current weights (at its share of the outer
//! step: the outer learning rate over the replicas, CPU reference forward) and must
//! - lower the loss of its own first batch, per unit of its norm, by at least a share of the
//!   median of the round's (and the last round's) checked updates, and
//! - not do far worse on the held-out sequences (data no unit trains on) than the round's
//!   other updates: its loss gain there per unit of norm must not lie several spreads (robust
//!   standard deviations, from the median absolute deviation) below the median of every
//!   update of the round. The comparison is with the round's own updates, so a stage of
//!   training in which every honest update raises the held-out loss refuses nobody, and an
//!   update trained to fit its own batch rather than the data (a memorizer's) stands out.
//!   Every update of such a round is measured there for the median, so every one is held to
//!   the same bound, drawn or not.
//!
//! A refused update's slot runs again and its identity loses its credits and is refused; a
//! drawn update's passed check turns its identity's pending credits into verified ones.
//!
//! The losses are measured by the CPU reference model away from the core (`measure.rs`): the
//! complete round asks for them once and waits for the answer.

use tessera_compute::reference::Batch;
use tessera_protocol::log::{CheckOutcome, LogEvent};
use tessera_protocol::{Code, PublicKey, Reason};
use tessera_train::outer::norm;

use super::context::Context;
use super::held_out::{
    held_out_scores, refuses_outlier, HeldOutScore, HELD_OUT_MIN_SPREAD,
    HELD_OUT_MIN_SPREAD_FEEDBACK, KEPT_SCORES, OUTLIER_STRIKES, OUTLIER_WINDOW,
};
use super::measure::{Asked, Gains, Item, Measured, Measurement, Measuring};
use super::part::Part;
use super::spec::ChecksSpec;
use super::Replicas;

/// Positions (over the whole flattened update) of its largest entries by magnitude: the top
/// 1 %, at least one, sorted.
pub(super) fn top_positions(update: &[Vec<f32>]) -> Vec<u32> {
    let flat: Vec<f32> = update.iter().flatten().map(|x| x.abs()).collect();
    let k = (flat.len() / 100).max(1).min(flat.len());
    let mut idx: Vec<u32> = (0..flat.len() as u32).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            flat[b as usize].total_cmp(&flat[a as usize])
        });
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

/// The share of `a`'s positions that `b` also holds.
pub(super) fn overlap(a: &[u32], b: &[u32]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    both as f64 / a.len().min(b.len()).max(1) as f64
}

/// Cosine similarity of two updates (0 when either is zero).
pub(super) fn cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        let (x, y) = (*x as f64, *y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// Cosine above which two updates whose largest entries coincide count as copies.
const COPY_COSINE: f64 = 0.99;

/// The least share of the checked updates' median loss gain per unit of norm (this round's and
/// the last's) an update must reach on its own first batch.
const GAIN_SHARE: f64 = 0.1;

/// How many times the median norm of the round's updates an update may reach.
const SCALE_LIMIT: f64 = 5.0;

/// The median (0 for none).
pub(super) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

impl Replicas {
    /// Checks an update for `slot` of the open round from `key` as it arrives: a copy of an
    /// update of the last round is refused (`Err` with the reason), and so is a copy of another
    /// accepted update of this round where the run does not replay or that update already
    /// passed its replay; otherwise both near-identical updates are drawn, and their replays
    /// tell which one is the copy. `Ok(true)` when the update must be checked at the round's
    /// close (and replayed, where the run replays) whatever the draw.
    pub(super) fn check_update(
        &mut self,
        cx: &mut Context,
        dense: &[Vec<f32>],
        checks: &ChecksSpec,
    ) -> Result<bool, Reason> {
        let mine = top_positions(dense);
        let like = |o: &Vec<Vec<f32>>| {
            let top = overlap(&mine, &top_positions(o));
            let cos = if top < checks.copy_overlap {
                0.0
            } else {
                cosine(dense, o)
            };
            (cos >= COPY_COSINE).then(|| {
                format!(
                    "{:.0}% of the largest entries shared, cosine {cos:.4}",
                    top * 100.0
                )
            })
        };
        let replays = self.replays_on(cx);
        let mut twins = Vec::new();
        for (other, unit, owner, o) in self.round.done() {
            let Some(how) = like(o) else { continue };
            // With replays, each update is a function of its own slot's samples, so a replay
            // of both tells which one is not its slot's (the copy: an attacker may compute
            // another's update and send it first, to get the owner refused as the copier).
            // Without replays, or once the other passed its replay, the later one is the copy.
            if !replays || self.round.verified.contains(&other) {
                return Err(Reason::new(
                    Code::Copy,
                    format!("a copy of another accepted update of this round ({how})"),
                ));
            }
            twins.push((other, unit, owner));
        }
        for o in &self.previous_updates {
            if let Some(how) = like(o) {
                return Err(Reason::new(
                    Code::Copy,
                    format!("a copy of an update of the previous round ({how})"),
                ));
            }
        }
        if !twins.is_empty() {
            for (other, unit, owner) in twins {
                self.round.drawn.insert(other);
                if !self.round.replays.has(other) {
                    self.round.replays.draw(other, unit, owner);
                }
            }
            return Ok(true);
        }
        // Whether it is drawn is known only once it is accepted (`Replicas::draw_accepted`).
        Ok(false)
    }

    /// The checks of a complete round, before it may close: an update whose norm is several
    /// times the median of the round's is refused, and so is a drawn update that, applied
    /// alone, lowers the loss of its own first batch by less than a share of the median gain
    /// of the round's (and the last round's) checked updates, and any update (in a round with
    /// a drawn one) whose held-out gain lies too far below the round's median. A refused
    /// update's identity loses its credits and is refused, its slot runs again; true when the
    /// round may close.
    pub(super) fn round_checks(&mut self, cx: &mut Context) -> bool {
        if cx.spec.checks.is_none() {
            return true;
        }
        let round = self.round.number;
        // Each accepted slot's unit, identity and norm (the updates stay in the round: a
        // measurement's job copies those it measures, once).
        let done: Vec<(u64, u64, PublicKey, f64)> = self
            .round
            .done()
            .into_iter()
            .map(|(s, u, k, d)| (s, u, k, norm(d)))
            .collect();
        let norms: Vec<f64> = done.iter().map(|&(.., n)| n).collect();
        let median_norm = median(&norms);
        let mut failed: Vec<(u64, PublicKey, Reason)> = Vec::new();
        for &(slot, _, key, n) in &done {
            if median_norm > 0.0 && n > SCALE_LIMIT * median_norm {
                failed.push((
                    slot,
                    key,
                    Reason::new(
                        Code::NormOutlier,
                        format!(
                            "its norm {n:.3e} is {:.1} times the round's median ({median_norm:.3e})",
                            n / median_norm
                        ),
                    ),
                ));
            }
        }
        let Some(measured) = self.measure(cx, &done, &failed) else {
            return false;
        };
        let gains: Vec<(u64, PublicKey, f64, f64, f64)> = measured
            .iter()
            .filter_map(|m| m.own.map(|(g, b, a)| (m.slot, m.key, g, b, a)))
            .collect();
        let reference: Vec<f64> = gains
            .iter()
            .map(|g| g.2)
            .chain(self.gains.iter().map(|&(_, g)| g))
            .collect();
        let floor = GAIN_SHARE * median(&reference).max(0.0);
        for &(slot, key, gain, before, after) in &gains {
            if gain > 0.0 && gain >= floor {
                continue;
            }
            failed.push((
                slot,
                key,
                Reason::new(
                    Code::LossCheck,
                    format!(
                        "applied alone it lowers the loss of its own first batch by {gain:.4} per unit of norm ({before:.4} -> {after:.4}), under {:.0}% of the median of the checked updates ({:.4})",
                        GAIN_SHARE * 100.0,
                        floor / GAIN_SHARE
                    ),
                ),
            ));
        }
        // Private error feedback: compressed updates of a run whose units do not start fresh.
        let feedback = cx.spec.sparse().is_some() && !self.replays_on(cx);
        let min_spread = if feedback {
            HELD_OUT_MIN_SPREAD_FEEDBACK
        } else {
            HELD_OUT_MIN_SPREAD
        };
        let scores = held_out_scores(round, &measured, min_spread);
        if self.replay_held_out_outliers(cx, &scores, &done, &failed) {
            return false;
        }
        for score in scores {
            tracing::debug!(?score, "held-out check");
            let outlier = score.outlier(feedback) && !self.round.verified.contains(&score.slot);
            if outlier && !failed.iter().any(|f| f.0 == score.slot) {
                failed.push((score.slot, score.key, score.refusal()));
            }
            if self.held_out_scores.len() == KEPT_SCORES {
                self.held_out_scores.pop_front();
            }
            self.held_out_scores.push_back(score);
        }
        for &(slot, key, gain, ..) in &gains {
            if failed.iter().any(|f| f.0 == slot) {
                continue;
            }
            self.gains.push((round, gain));
            cx.log(LogEvent::Checked {
                key,
                step: round,
                auditors: Vec::new(),
                outcome: CheckOutcome::Passed,
                flops: 0.0,
                credited: Vec::new(),
            });
        }
        self.round.drawn.clear();
        for (slot, key, why) in &failed {
            self.fail_update(cx, *slot, *key, why);
        }
        failed.is_empty()
    }

    /// An update of `slot` by `key` that failed a check in the round: it is withdrawn (its slot
    /// runs again) and its identity refused, or, where a statistic decided about updates that
    /// carry private error feedback (SparseLoCo without replays, whose honest updates differ
    /// widely) and it is the identity's first or second outlier within
    /// `held_out::OUTLIER_WINDOW` rounds, withheld: the slot runs again on someone else, the
    /// identity is told and put on probation.
    fn fail_update(&mut self, cx: &mut Context, slot: u64, key: PublicKey, why: &Reason) {
        let round = self.round.number;
        let feedback = cx.spec.sparse().is_some() && !self.replays_on(cx);
        let statistical = feedback && matches!(why.code, Code::HeldOut | Code::LossCheck);
        let refused = !statistical || refuses_outlier(cx.credits.outliers(&key), round);
        let (outcome, why) = if refused {
            let prefix = if statistical {
                format!("{OUTLIER_STRIKES} statistical outliers within {OUTLIER_WINDOW} rounds")
            } else {
                "its update failed a check".to_string()
            };
            (CheckOutcome::Failed(why.clone()), why.prefixed(&prefix))
        } else {
            let why = why.prefixed(&format!(
                "withheld from round {round}, not refused (an identity is refused at {OUTLIER_STRIKES} outliers within {OUTLIER_WINDOW} rounds)"
            ));
            (CheckOutcome::Disputed(why.clone()), why)
        };
        cx.log(LogEvent::Checked {
            key,
            step: round,
            auditors: Vec::new(),
            outcome,
            flops: 0.0,
            credited: Vec::new(),
        });
        self.round.reopen(slot);
        cx.out.push(super::Action::Withdrawn { round, slot });
        if refused {
            self.close_refused(cx, key, why);
        } else {
            self.round.bar(slot, key);
            for conn in cx.conns_of(key) {
                cx.refuse(conn, why.clone());
            }
        }
    }

    /// The loss gains, per unit of norm, of the complete round's updates not already refused,
    /// each applied alone to the current weights at its share of the outer step: on its own
    /// first batch for drawn ones, and on every held-out sequence for all of them (when the
    /// run holds data out, at least three updates are left and one of them is drawn). The CPU
    /// reference work runs away from the core ([`Measurement`]): `None` while it is asked
    /// for and not answered (the round waits; the answer's input checks it again).
    fn measure(
        &mut self,
        cx: &mut Context,
        done: &[(u64, u64, PublicKey, f64)],
        failed: &[(u64, PublicKey, Reason)],
    ) -> Option<Vec<Gains>> {
        let left: Vec<&(u64, u64, PublicKey, f64)> = done
            .iter()
            .filter(|(slot, ..)| !failed.iter().any(|f| f.0 == *slot))
            .collect();
        let any_drawn = left.iter().any(|(s, ..)| self.round.drawn.contains(s));
        let held = cx
            .spec
            .held_out_batch()
            .filter(|_| any_drawn && left.len() >= 3);
        let chosen: Vec<_> = left
            .into_iter()
            .filter(|(slot, ..)| held.is_some() || self.round.drawn.contains(slot))
            .collect();
        if chosen.is_empty() {
            return Some(Vec::new());
        }
        let asked: Asked = chosen
            .iter()
            .map(|&&(slot, unit, ..)| (slot, unit))
            .collect();
        if let Some(m) = &self.round.measuring {
            if let Some(gains) = m.answer(&asked) {
                return Some(gains.to_vec());
            }
            if m.waits_for(&asked) {
                return None;
            }
        }
        let mut items = Vec::with_capacity(chosen.len());
        for &&(slot, unit, key, _) in &chosen {
            let first_batch = self
                .round
                .drawn
                .contains(&slot)
                .then(|| self.first_batch(cx, slot));
            let Some((_, update)) = self.round.slot_update(slot, unit) else {
                continue;
            };
            items.push(Item {
                slot,
                unit,
                key,
                update: update.to_vec(),
                first_batch,
            });
        }
        self.next_ticket += 1;
        let job = Measurement {
            ticket: self.next_ticket,
            round: self.round.number,
            version: cx.version,
            cfg: cx.spec.model.clone(),
            weights: cx.weights.clone(),
            // Its share of the outer step: the step applies the mean of the round's accepted
            // updates (however many the round grew to, or its quorum).
            lr: cx.spec.outer_lr / self.round.accepted().max(1) as f32,
            held,
            items,
        };
        // What the job measures (the slots chosen, each still holding its unit's update).
        self.round.measuring = Some(Measuring::Asked {
            ticket: job.ticket,
            asked: job.asked(),
            done: done.iter().map(|&(slot, unit, ..)| (slot, unit)).collect(),
        });
        cx.out
            .push(super::Action::Measure(std::sync::Arc::new(job)));
        None
    }

    /// A measurement's answer: kept if it answers what the round asked, and the round
    /// checked again.
    pub(super) fn measured(&mut self, cx: &mut Context, m: Measured) {
        if let Some((version, loss)) = m.held_loss {
            cx.held_out.record(version, loss);
        }
        let Some(now) = self.round.measuring.as_ref().and_then(|q| q.answered(m)) else {
            return;
        };
        self.round.measuring = Some(now);
        self.maybe_close_round(cx);
    }

    /// The held-out checks of the latest rounds, oldest first (at most the last 1024).
    pub(super) fn held_out_scores(&self) -> impl Iterator<Item = &HeldOutScore> {
        self.held_out_scores.iter()
    }

    /// The first inner step's sequences of `slot` in the open round (what the unit trained on
    /// first), as the data assignment gives them.
    fn first_batch(&mut self, cx: &mut Context, slot: u64) -> Batch {
        let round = self.round.number;
        let spans: Vec<_> = (0..cx.spec.batch)
            .map(|mb| super::samples::slot_sample(&cx.spec, &mut cx.sampler, round, (slot, 0, mb)))
            .collect();
        let rows = spans.into_iter().map(|span| &cx.spec.tokens[span]);
        Batch::from_rows(rows, cx.spec.seq as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::super::held_out::HELD_OUT_Z;
    use super::*;

    #[test]
    fn copies_and_strangers() {
        let a = vec![vec![1.0, -5.0, 0.1, 0.2], vec![3.0; 200]];
        let mut b = a.clone();
        b[1][7] = 9.0;
        let c: Vec<Vec<f32>> = a.iter().map(|t| t.iter().map(|x| -x).collect()).collect();
        assert_eq!(top_positions(&[vec![0.0, 5.0, -7.0, 1.0]]), vec![2]);
        assert_eq!(overlap(&[1, 2, 3, 4], &[2, 4, 9]), 2.0 / 3.0);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-12);
        assert!(
            (cosine(&a, &c) + 1.0).abs() < 1e-12,
            "a sign flip points the other way"
        );
        assert!(cosine(&a, &b) > 0.99);
        assert_eq!(cosine(&a, &[vec![0.0; 4], vec![0.0; 200]]), 0.0);
    }

    fn measured(held: &[f64]) -> Vec<Gains> {
        held.iter()
            .enumerate()
            .map(|(i, &g)| Gains {
                slot: i as u64,
                key: PublicKey([i as u8; 32]),
                drawn: i != 1,
                own: None,
                held: Some(g),
            })
            .collect()
    }

    #[test]
    fn held_out_scores_weigh_each_gain_against_the_rounds_spread() {
        let scores = held_out_scores(
            3,
            &measured(&[0.100, 0.101, 0.098, 0.103, 0.060, 0.099]),
            HELD_OUT_MIN_SPREAD,
        );
        // Every update, drawn (all but slot 1) or not, against median 0.100 and spread
        // 1.4826 x 0.002 (floored at 5% of the median: 0.005).
        assert_eq!(
            scores.iter().map(|s| (s.slot, s.drawn)).collect::<Vec<_>>(),
            vec![
                (0, true),
                (1, false),
                (2, true),
                (3, true),
                (4, true),
                (5, true)
            ]
        );
        let s4 = &scores[4];
        assert_eq!((s4.round, s4.median), (3, 0.100));
        assert!((s4.spread - 0.005).abs() < 1e-12, "{}", s4.spread);
        assert!((s4.z + 8.0).abs() < 1e-9, "{}", s4.z);
        assert!(scores
            .iter()
            .filter(|s| s.slot != 4)
            .all(|s| s.z.abs() < 1.0));
        assert!(s4.z < -HELD_OUT_Z);
        // An update not drawn is held to the same bound.
        let undrawn = held_out_scores(
            3,
            &measured(&[0.100, 0.060, 0.098, 0.103, 0.101, 0.099]),
            HELD_OUT_MIN_SPREAD,
        );
        assert!(!undrawn[1].drawn && undrawn[1].z < -HELD_OUT_Z);
        // A wide round: its own spread (1.4826 x MAD) counts, and the same gain is no outlier.
        let wide = held_out_scores(
            0,
            &measured(&[0.10, 0.14, 0.06, 0.12, 0.08]),
            HELD_OUT_MIN_SPREAD,
        );
        let s2 = wide.iter().find(|s| s.slot == 2).unwrap();
        assert!((s2.spread - 1.4826 * 0.02).abs() < 1e-9, "{}", s2.spread);
        assert!(s2.z > -HELD_OUT_Z);
        // Rounds where every update raises the held-out loss: the spread is of their gains.
        let worse = held_out_scores(
            0,
            &measured(&[-0.010, -0.011, -0.009, -0.030]),
            HELD_OUT_MIN_SPREAD,
        );
        assert!(worse.iter().all(|s| s.median == -0.010));
        assert!(worse.iter().find(|s| s.slot == 3).unwrap().z < -HELD_OUT_Z);
        // Fewer than three measured updates: nothing to compare with.
        // With private error feedback the least spread is half the median: the honest late
        // SparseLoCo update above (-0.0010 against 0.0185) passes, one raising the held-out
        // loss by more than the median lowers it does not.
        let feedback = |g| {
            held_out_scores(
                0,
                &measured(&[g, 0.0185, 0.0190, 0.0180]),
                HELD_OUT_MIN_SPREAD_FEEDBACK,
            )[0]
            .z
        };
        assert!(feedback(-0.0010) > -HELD_OUT_Z);
        assert!(feedback(-0.0200) < -HELD_OUT_Z);
        // Where every update raises the held-out loss (the run overfits), the same scores are no
        // verdict on updates with private error feedback, and stay one on dense updates.
        let slot3 = worse.iter().find(|s| s.slot == 3).unwrap();
        assert!(slot3.outlier(false) && !slot3.outlier(true));
        let fb = held_out_scores(
            0,
            &measured(&[-0.0200, 0.0185, 0.0190, 0.0180]),
            HELD_OUT_MIN_SPREAD_FEEDBACK,
        );
        assert!(
            fb[0].outlier(true),
            "a round whose median update gains still judges"
        );
        assert!(held_out_scores(0, &measured(&[0.1, 0.0]), HELD_OUT_MIN_SPREAD).is_empty());
    }
}
