//! Rounds: assignment of the open round's slots to ready contributors (and its growth, see
//! `round_size.rs`), deadlines, submissions, the outer step that closes a round, and what a
//! lost session leaves (`Replicas`' `Part`). The round itself is `round.rs`.

use tessera_protocol::log::{LogEvent, Weighed};
use tessera_protocol::messages::{Submission, Update, Verdict};
use tessera_protocol::{Code, PublicKey, Reason, ToContributor};
use tessera_train::outer;

use super::context::Context;
use super::part::Part;
use super::round::{Round, Slot, Unit};
use super::round_size;
use super::session::Session;
use super::{Action, ConnId, Contribution, Replicas, RoundSummary};

impl Replicas {
    /// The regime's state at the start of round `number` of `replicas` slots.
    pub(super) fn new(number: u64, replicas: u64) -> Self {
        Replicas {
            round: Round::new(number, replicas, 0),
            previous_updates: Vec::new(),
            gains: Vec::new(),
            held_out_scores: Default::default(),
            next_ticket: 0,
        }
    }

    /// Whole-model runs: re-queues units past their deadline; their contributors may not have
    /// those slots again this round.
    pub(super) fn expire_units(&mut self, cx: &mut Context) {
        for (conn, unit, slot) in self.round.expired(cx.now) {
            if let Some(s) = cx.sessions.get_mut(&conn) {
                if s.unit == Some(unit) {
                    s.unit = None;
                }
                if let Some(key) = s.active() {
                    self.round.barred.insert((slot, key));
                }
            }
            cx.send(conn, ToContributor::Cancel { unit });
        }
    }

    /// Gives slots to ready, idle, leased sessions: an open slot to one that is not barred from
    /// it, and, while the round computes, a new slot to one that holds no unit of the round yet
    /// (up to the run's most replicas; identities on probation within their share, see
    /// `round_size.rs`). Who comes first: those with no unit of the round, then established
    /// identities, then the one that has waited longest (since it connected or last took a
    /// unit), so neither an early connection nor a quick reconnect puts a contributor ahead of
    /// the queue. One left without work is told why, once a round.
    pub(super) fn schedule(&mut self, cx: &mut Context) {
        if !cx.state.hands_out_work() {
            return;
        }
        // Replays first: the round cannot close before they resolve.
        self.start_replays(cx);
        self.maybe_close_round(cx);
        let probation = cx.spec.checks.as_ref().map(|c| c.halving);
        let on_probation = |cx: &Context, k: &PublicKey| {
            probation.is_some_and(|halving| cx.credits.clean_steps(k) < halving)
        };
        // The sessions are scanned once per call, not once per open slot.
        let mut idle: Vec<(bool, bool, u64, ConnId, PublicKey)> = cx
            .sessions
            .iter()
            .filter(|(_, s)| s.ready && s.lease.is_some() && s.unit.is_none())
            .filter_map(|(&c, s)| s.active().map(|k| (c, s.waiting_since, k)))
            .map(|(c, since, k)| {
                let served = self.round.served.contains(&k);
                (served, on_probation(cx, &k), since, c, k)
            })
            .collect();
        if idle.is_empty() {
            return;
        }
        idle.sort_unstable();
        let mut holders = self.round.holders();
        let mut veterans: std::collections::BTreeSet<PublicKey> = holders
            .iter()
            .filter(|k| !on_probation(cx, k))
            .copied()
            .collect();
        veterans.extend(idle.iter().filter(|i| !i.1).map(|i| i.4));
        let mut newcomers = holders.iter().filter(|k| on_probation(cx, k)).count() as u64;
        let share = cx
            .spec
            .checks
            .as_ref()
            .map_or(1000, |c| round_size::permille(c.probation_share));
        let least = cx.spec.replicas;
        for (served, newcomer, _, conn, key) in idle {
            if newcomer {
                let v = veterans.len() as u64;
                if let Err(why) = round_size::newcomer_may_join(newcomers, v, least, share) {
                    self.tell(cx, conn, key, why);
                    continue;
                }
            }
            let barred = &self.round.barred;
            let open = (0..self.round.slots.len())
                .find(|&i| self.round.slots[i] == Slot::Open && !barred.contains(&(i as u64, key)));
            let slot = match open {
                Some(slot) => slot,
                None if served => continue,
                None => {
                    let computing = self.round.computing(cx.now, cx.spec.round_deadline_ms);
                    let grow = round_size::may_grow(
                        self.round.slot_count(),
                        cx.spec.max_replicas,
                        computing,
                    );
                    if let Err(why) = grow {
                        self.tell(cx, conn, key, why);
                        continue;
                    }
                    self.round.slots.push(Slot::Open);
                    self.round.slots.len() - 1
                }
            };
            if holders.insert(key) && newcomer {
                newcomers += 1;
            }
            self.round.served.insert(key);
            self.assign(cx, conn, key, slot as u64);
        }
    }

    /// Tells a ready contributor, once a round, why it got no slot.
    fn tell(&mut self, cx: &mut Context, conn: ConnId, key: PublicKey, why: round_size::NoSlot) {
        if self.round.told.insert(key) {
            let reason = Reason::new(Code::NoSlot, why.text());
            cx.send(
                conn,
                ToContributor::Error {
                    reason,
                    fatal: false,
                },
            );
        }
    }

    /// Gives `slot` to the session on `conn`: a new unit, sent as its work.
    fn assign(&mut self, cx: &mut Context, conn: ConnId, key: PublicKey, slot: u64) {
        let round = self.round.number;
        let unit = cx.next_unit;
        cx.next_unit += 1;
        let deadline = cx.now + cx.spec.unit_deadline_ms;
        self.round.slots[slot as usize] = Slot::Assigned(unit);
        self.round.units.insert(
            unit,
            Unit {
                slot,
                conn,
                key,
                deadline,
            },
        );
        let Some(s) = cx.sessions.get_mut(&conn) else {
            return;
        };
        s.unit = Some(unit);
        s.waiting_since = cx.now;
        let Some(lease) = s.lease else {
            return;
        };
        let work = super::samples::work(
            &cx.spec,
            &mut cx.sampler,
            (round, cx.version),
            (unit, lease, slot),
        );
        cx.send(conn, ToContributor::Work(work));
    }

    /// Rejects a whole-model submission; one carrying NaN or infinities, in a run that checks
    /// work, also finds its sender wrong.
    pub(super) fn reject_submission(
        &mut self,
        cx: &mut Context,
        conn: ConnId,
        key: PublicKey,
        seq: u64,
        sub: &Submission,
        why: Reason,
    ) {
        cx.reject(conn, sub.unit, key, seq, why.clone());
        if cx.spec.checks.is_some() && super::validate::update_non_finite(&sub.result) {
            let why = Reason::new(
                Code::NotFinite,
                format!("it sent values that are not finite: {why}"),
            );
            self.found_wrong(cx, key, why);
        }
    }

    /// A submission: checked, then accepted into its slot or rejected with the reason.
    pub(super) fn submit(
        &mut self,
        cx: &mut Context,
        conn: ConnId,
        key: PublicKey,
        seq: u64,
        sub: Submission,
    ) {
        let unit = sub.unit;
        if self.round.replays.is_running(unit) {
            return self.replayed(cx, conn, key, seq, sub);
        }
        let Some(u) = self.round.units.get(&unit).cloned() else {
            return cx.reject_unopen(conn, unit, key, seq);
        };
        if u.conn != conn {
            return cx.reject_foreign(conn, unit, key, seq);
        }
        let dense = match super::validate::submission_problem(&cx.spec, cx.version, &sub) {
            Some(p) => Err(p),
            None => super::validate::dense_update(&cx.spec, &sub.result)
                .map_err(|e| super::validate::update_refusal(&sub.result, e)),
        };
        // Either way the unit is over for this contributor.
        self.round.units.remove(&unit);
        if let Some(s) = cx.sessions.get_mut(&conn) {
            s.unit = None;
        }
        let dense = match dense {
            Ok(d) => d,
            Err(why) => {
                self.round.slots[u.slot as usize] = Slot::Open;
                self.round.barred.insert((u.slot, key));
                return self.reject_submission(cx, conn, key, seq, &sub, why);
            }
        };
        if let Some(checks) = cx.spec.checks.clone() {
            match self.check_update(cx, &dense, &checks) {
                Ok(true) => {
                    self.round.drawn.insert(u.slot);
                    if self.replays_on(cx) {
                        self.round.replays.draw(u.slot, unit, key);
                    }
                }
                Ok(false) => {}
                Err(why) => {
                    self.round.slots[u.slot as usize] = Slot::Open;
                    cx.reject(conn, unit, key, seq, why.clone());
                    return self.found_wrong(cx, key, why.prefixed("its update failed a check"));
                }
            }
        }
        let result_digest = super::digest(&sub.result);
        let c = Contribution {
            round: self.round.number,
            slot: u.slot,
            unit,
            contributor: key,
            tokens: sub.tokens,
            loss_sum: sub.loss_sum,
            update: sub.result,
        };
        cx.out.push(Action::Accepted(c.clone()));
        let flops = cx.spec.unit_flops(sub.tokens);
        self.round.slots[u.slot as usize] = Slot::Done(Box::new(c), dense);
        cx.receipt(
            conn,
            unit,
            key,
            seq,
            Verdict::Accepted,
            result_digest,
            (sub.tokens, flops),
        );
        if cx.spec.checks.is_some() {
            self.draw_accepted(cx);
        }
        self.maybe_close_round(cx);
    }

    /// Reveals the draw chain's next value now that an update is in: every accepted update of
    /// an identity it draws is checked at the round's close (and replayed, where the run
    /// replays). Its contributor could not know beforehand whether it would be.
    pub(super) fn draw_accepted(&mut self, cx: &mut Context) {
        let drawn = cx.reveal();
        if drawn.is_empty() {
            return;
        }
        let replays = self.replays_on(cx);
        let hits: Vec<(u64, u64, PublicKey)> = self
            .round
            .done()
            .into_iter()
            .filter(|(.., key, _)| drawn.contains(key))
            .map(|(slot, unit, key, _)| (slot, unit, key))
            .collect();
        for (slot, unit, key) in hits {
            if self.round.drawn.insert(slot) && replays {
                self.round.replays.draw(slot, unit, key);
            }
        }
    }

    /// Closes the round once every slot is accepted (or, once the round's deadline has passed,
    /// a quorum of them), every replay resolved and the round's checks pass.
    pub(super) fn maybe_close_round(&mut self, cx: &mut Context) {
        let accepted = self.round.accepted();
        let full = accepted == self.round.slots.len();
        let late = cx.now >= self.round.opened.saturating_add(cx.spec.round_deadline_ms);
        let need = cx.spec.quorum.min(self.round.slots.len() as u64).max(1);
        let quorum = accepted as u64 >= need && late;
        // While the checks' measurement is out, nothing they read has changed unless a slot's
        // unit did: every other input (a crowd's heartbeats) skips them.
        let waiting = self
            .round
            .measuring
            .as_ref()
            .is_some_and(|m| m.pending_at(&self.round.done_units()));
        if cx.state.is_open()
            && (full || quorum)
            && !waiting
            && self.round.replays.resolved()
            && self.round_checks(cx)
        {
            self.close_round(cx);
        }
    }

    /// Puts an accepted contribution back after a restart.
    pub(super) fn restore_contribution(&mut self, cx: &mut Context, c: Contribution) {
        if c.round != self.round.number || c.slot >= cx.spec.max_replicas {
            return;
        }
        if let Ok(dense) = super::validate::dense_update(&cx.spec, &c.update) {
            let slot = c.slot as usize;
            self.round.grow_to(c.slot);
            self.round.served.insert(c.contributor);
            cx.next_unit = cx.next_unit.max(c.unit + 1);
            // Whether it was drawn before the restart is not kept: a restored contribution is
            // checked (loss check, and replay where the run replays).
            if cx.spec.checks.is_some() {
                self.round.drawn.insert(c.slot);
                if self.replays_on(cx) {
                    self.round.replays.draw(c.slot, c.unit, c.contributor);
                }
            }
            self.round.slots[slot] = Slot::Done(Box::new(c), dense);
        }
        // A round whose slots were all restored closes at the first tick, once the log
        // continues where it stopped (its checks and close are entries of it).
    }

    /// The outer step: median clip, mean, `theta -= outer_lr * mean`; broadcast; next round.
    fn close_round(&mut self, cx: &mut Context) {
        let slots = std::mem::take(&mut self.round.slots);
        let mut updates = Vec::new();
        let mut contributors = Vec::new();
        let mut weighed = Vec::new();
        // The updates as sent, while every one is compressed: the outer step may be published
        // as them (see below).
        let mut parts = Some(Vec::new());
        let (mut tokens, mut loss_sum) = (0u64, 0.0f64);
        for (slot, s) in slots.into_iter().enumerate() {
            if let Slot::Done(c, d) = s {
                match (&c.update, parts.as_mut()) {
                    (Update::Sparse(p), Some(ps)) => ps.push((**p).clone()),
                    _ => parts = None,
                }
                tokens += c.tokens;
                loss_sum += c.loss_sum;
                contributors.push(c.contributor);
                weighed.push((c.contributor, c.unit, slot as u64));
                updates.push(d);
            }
        }
        let (mean, clip_scales) = outer::aggregate(&updates, cx.spec.clip_to_median);
        // What the outer step averages, and how each update was weighed, before its close.
        cx.log(LogEvent::Aggregated {
            round: self.round.number,
            updates: weighed
                .into_iter()
                .zip(&clip_scales)
                .map(|((key, unit, slot), &scale)| Weighed {
                    key,
                    unit,
                    slot,
                    scale,
                })
                .collect(),
        });
        self.previous_updates = updates;
        let closed_round = self.round.number;
        self.gains.retain(|&(r, _)| r == closed_round);
        let mut aggregate = cx.weights.zeros_like();
        for (dst, src) in aggregate.tensors_mut().into_iter().zip(&mean) {
            dst.clone_from(src);
        }
        let closed = self.round.number;
        let rule = super::rules::RunRules::of(&cx.spec).step;
        let weights = std::sync::Arc::make_mut(&mut cx.weights);
        let tied = cx.spec.model.tie_word_embeddings;
        // An outer step is a sum and a product per element: it cannot be refused.
        let _ = super::rules::apply(&rule, closed, weights, &mut None, &aggregate, tied);
        let aggregate_digest = super::weights_digest(&aggregate);
        cx.aggregate = Some(aggregate);
        cx.version += 1;
        let loss = if tokens > 0 {
            loss_sum / tokens as f64
        } else {
            0.0
        };
        cx.losses.push(loss);
        let shapes = tessera_compute::hf::tensor_shapes(&cx.spec.model);
        let update = super::outer_step::publish(
            &shapes,
            &mean,
            cx.spec.sparse().is_some(),
            parts,
            &clip_scales,
        );
        cx.digest = super::weights_digest(&cx.weights);
        cx.log(LogEvent::Closed {
            round: closed,
            version: cx.version,
            weights: cx.digest,
            aggregate: aggregate_digest,
        });
        cx.out.push(Action::RoundClosed(RoundSummary {
            round: closed,
            version: cx.version,
            loss,
            tokens,
            contributors,
            clip_scales,
        }));
        let leased: Vec<ConnId> = cx
            .sessions
            .iter()
            .filter(|(_, s)| s.lease.is_some() && s.active().is_some())
            .map(|(&c, _)| c)
            .collect();
        // One copy of the update, however many sessions it goes to.
        let update = std::sync::Arc::new(update);
        for conn in leased {
            let msg = ToContributor::OuterStep {
                round: closed,
                version: cx.version,
                lr: cx.spec.outer_lr,
                update: update.clone(),
            };
            cx.send(conn, msg);
        }
        // Units still running on this round are void.
        for (id, u) in std::mem::take(&mut self.round.units) {
            if let Some(s) = cx.sessions.get_mut(&u.conn) {
                s.unit = None;
            }
            cx.send(u.conn, ToContributor::Cancel { unit: id });
        }
        self.round = Round::new(closed + 1, cx.spec.replicas, cx.now);
        cx.state = cx.state.after_close(self.round.number >= cx.spec.rounds);
        if !cx.state.is_open() {
            cx.out.push(Action::Finished);
        }
    }
}

impl Part for Replicas {
    fn number(&self) -> u64 {
        self.round.number
    }

    fn in_progress(&self) -> bool {
        !self.round.units.is_empty() || self.round.slots.iter().any(|s| !matches!(s, Slot::Open))
    }

    /// Its unit in progress goes back to the queue at once (a replay is given to someone else).
    fn session_lost(&mut self, _: &mut Context, s: Session) {
        if let Some(unit) = s.unit {
            if !self.round.replays.lost(unit) {
                self.round.requeue(unit);
            }
        }
    }
}

#[cfg(test)]
#[path = "rounds_tests.rs"]
mod tests;
