//! Pipeline units: handing an idle lease its task (chosen by `tasks.rs`) with the unit's inputs,
//! and taking in its output (decoded by `decode.rs`): partial sums, the residual, and the three
//! passes of the vocab-sliced head.

use tessera_compute::shard::{combine, HeadStats};
use tessera_protocol::messages::Verdict;
use tessera_protocol::pipeline::{HeadBackward, Pass, PipeWork, UnitOutput};
use tessera_protocol::{Code, PublicKey, Reason, TensorPayload, ToContributor};
use tessera_train::shards::to_wire;

use super::decode::Folded;
use super::route::Sent;
use super::{MicroBatch, Owed, Pipe, PipeUnit, ShardId, ShardState};
use crate::core::context::Context;
use crate::core::part::Part;
use crate::core::ConnId;
use std::ops::Range;

impl Pipe {
    /// Gives every idle, ready pipeline lease a unit, then collects or closes the step when it
    /// drained.
    pub(in crate::core) fn schedule(&mut self, cx: &mut Context) {
        if !cx.state.hands_out_work() {
            return;
        }
        self.rebalance(cx);
        let idle: Vec<(ConnId, u64)> = cx
            .sessions
            .iter()
            .filter(|(_, s)| s.ready && s.unit.is_none() && s.active().is_some())
            .filter_map(|(&c, s)| s.lease.map(|l| (c, l)))
            .collect();
        let holders = self.holders(cx);
        for (conn, lease) in idle {
            if let Some((mb, stages, pass, cells)) = self.pick_task(lease, &holders) {
                self.assign(cx, conn, lease, mb, stages, pass, cells);
            }
        }
        self.collect_or_close(cx);
    }

    /// Each lease's identity and readiness, when some identity is barred from a task (the
    /// scheduler reads them only then); empty otherwise, so scheduling costs no walk of every
    /// session.
    fn holders(&self, cx: &Context) -> super::tasks::Holders {
        if self.step.barred.is_empty() {
            return super::tasks::Holders::new();
        }
        cx.sessions
            .values()
            .filter_map(|s| Some((s.lease?, (s.active()?, s.ready))))
            .collect()
    }

    fn assign(
        &mut self,
        cx: &mut Context,
        conn: ConnId,
        lease: u64,
        m: usize,
        stages: Range<usize>,
        pass: Pass,
        cells: Vec<ShardId>,
    ) {
        let audited = match cx.sessions.get(&conn).and_then(|s| s.active()) {
            Some(key) => self.audit_recorded(cx, lease, key),
            None => false,
        };
        let unit = cx.next_unit;
        cx.next_unit += 1;
        let deadline = cx.now + cx.spec.unit_deadline_ms;
        let seq = cx.spec.seq as usize;
        let last = self.spec.stages.len() - 1;
        let enc = self.spec.activations;
        let step_number = self.step.number;
        let inv = if self.step.count > 0 {
            1.0 / self.step.count as f32
        } else {
            0.0
        };
        let mb = &mut self.step.mbs[m];
        for &(s, i) in &cells {
            mb.cover(s, pass).shards[i] = ShardState::Pending(unit);
        }
        let tokens = if stages.start == 0 {
            Some(TensorPayload::from_u32(&[seq], &mb.ids))
        } else if stages.start == last {
            Some(TensorPayload::from_u32(&[seq], &mb.targets))
        } else {
            None
        };
        let head = match (pass, stages.start == last, mb.lse.as_ref()) {
            (Pass::Backward, true, Some(lse)) => Some(HeadBackward {
                lse: TensorPayload::from_f32(&[seq], lse),
                inv_count: inv,
            }),
            _ => None,
        };
        let mut work = PipeWork {
            unit,
            lease,
            step: step_number,
            micro_batch: m as u64,
            stages: [stages.start as u64, stages.end as u64],
            shards: cells
                .iter()
                .map(|&(s, i)| to_wire(&self.spec.stages[s][i]))
                .collect(),
            pass,
            weights: cx.version,
            tokens,
            input: None,
            grad: None,
            head,
            output: enc,
        };
        if mb.route.carries_bytes() {
            (work.input, work.grad) = mb.route.attached(stages.clone(), pass, last);
        }
        if cfg!(debug_assertions) {
            // The route's names and what it carries agree: a tensor goes with the unit where,
            // and only where, the directions name one (every simulation checks this).
            let d = mb.route.directions(stages.clone(), pass, last);
            let named = (!d.input.is_empty(), !d.grad.is_empty());
            let carried = (work.input.is_some(), work.grad.is_some());
            assert!(
                !mb.route.carries_bytes() || named == carried,
                "{named:?} {carried:?}"
            );
        }
        if audited {
            if let Some(a) = self.step.audits.get_mut(&lease) {
                a.sent.insert(unit, work.clone());
            }
        }
        self.step.units.insert(
            unit,
            PipeUnit {
                conn,
                lease,
                mb: m,
                stages,
                pass,
                cells,
                deadline,
            },
        );
        if let Some(s) = cx.sessions.get_mut(&conn) {
            s.unit = Some(unit);
        }
        cx.send(conn, ToContributor::Unit(Box::new(work)));
    }

    /// A pipeline unit's output: checked, then folded into its micro-batch, or rejected (its
    /// micro-shards go back to the queue).
    pub(in crate::core) fn output(
        &mut self,
        cx: &mut Context,
        conn: ConnId,
        key: PublicKey,
        seq: u64,
        o: UnitOutput,
    ) {
        let unit = o.unit;
        let Some(u) = self.step.units.get(&unit).cloned() else {
            return cx.reject_unopen(conn, unit, key, seq);
        };
        if u.conn != conn || u.lease != o.lease {
            return cx.reject_foreign(conn, unit, key, seq);
        }
        if let Some(s) = cx.sessions.get_mut(&conn) {
            s.unit = None;
        }
        let result_digest = crate::core::digest(&o.result);
        let folded = if o.weights != cx.version {
            Err(Reason::new(
                Code::WrongVersion,
                format!(
                    "computed on weights {} but the step uses {}",
                    o.weights, cx.version
                ),
            ))
        } else {
            self.decode(&cx.spec.model, cx.spec.seq as usize, &u, &o.result)
                .map_err(|why| {
                    if super::compare::result_non_finite(&o.result) {
                        Reason::new(Code::NotFinite, why.text.as_str())
                    } else {
                        why
                    }
                })
        };
        let folded = match folded {
            Ok(f) => f,
            Err(why) => {
                self.step.reopen_barring(unit, Some(key));
                let poison = cx.spec.pipe_checks() && super::compare::result_non_finite(&o.result);
                cx.reject(conn, unit, key, seq, why.clone());
                if poison {
                    let found = format!("it sent values that are not finite where another holder's result of the same input was finite: {why}");
                    let found = Reason::new(Code::NotFinite, found);
                    self.step.suspect(u.mb, u.pass, &u.cells, key, found);
                }
                return;
            }
        };
        self.step.units.remove(&unit);
        self.step.contributors.insert(key);
        if let Some(a) = self.step.audits.get_mut(&u.lease) {
            if let Some(w) = a.sent.remove(&unit) {
                a.done.push((w, o.result.clone()));
            }
        }
        let last = self.spec.stages.len() - 1;
        let mb = &mut self.step.mbs[u.mb];
        for &(s, i) in &u.cells {
            mb.cover(s, u.pass).shards[i] = ShardState::Done(u.lease);
        }
        let first = u.stages.start;
        mb.fold(unit, &u, folded, result_digest);
        if u.pass == Pass::Backward {
            self.step.owed.entry(u.lease).or_default().push(Owed {
                unit,
                mb: u.mb,
                cells: u.cells.clone(),
            });
        }
        if u.stages.len() == 1 {
            mb.propagate(first, u.pass, last);
        }
        let flops = self.cells_flops(&u.cells, u.pass, cx.spec.seq);
        let credit = (cx.spec.seq, flops);
        cx.receipt(
            conn,
            unit,
            key,
            seq,
            Verdict::Accepted,
            result_digest,
            credit,
        );
        for (wrong, why) in self.step.contradicted(u.mb, u.pass, &u.cells, key) {
            self.found_wrong(cx, wrong, why);
        }
    }

    /// Re-queues pipeline units past their deadline, to another holder where there is one; a
    /// lease that misses a collect deadline is dropped (its units run again elsewhere).
    pub(in crate::core) fn expire(&mut self, cx: &mut Context) {
        self.expire_audits(cx, None);
        let now = cx.now;
        let late: Vec<(u64, ConnId)> = self
            .step
            .units
            .iter()
            .filter(|(_, u)| u.deadline < now)
            .map(|(&id, u)| (id, u.conn))
            .collect();
        for &(id, conn) in &late {
            let key = cx.sessions.get(&conn).and_then(|s| s.active());
            self.step.reopen_barring(id, key);
        }
        let slow: Vec<ConnId> = self
            .step
            .collecting
            .values()
            .filter(|c| c.deadline < now)
            .map(|c| c.conn)
            .collect();
        for (id, conn) in late {
            if let Some(s) = cx.sessions.get_mut(&conn) {
                if s.unit == Some(id) {
                    s.unit = None;
                }
            }
            cx.send(conn, ToContributor::Cancel { unit: id });
        }
        for conn in slow {
            self.fatal(
                cx,
                conn,
                Reason::new(Code::Silent, "gradient sums not delivered in time"),
            );
        }
    }
}

impl MicroBatch {
    /// Folds an accepted unit's decoded output into its micro-batch: partial sums and head
    /// statistics until the stage is complete, a span's whole-stage results once.
    pub(super) fn fold(&mut self, unit: u64, u: &PipeUnit, folded: Folded, hash: [u8; 32]) {
        let mb = self;
        let first = u.stages.start;
        let carries = mb.route.carries_bytes();
        let carried = |v: Vec<f32>| carries.then_some(v);
        match folded {
            Folded::Sum(v) if !mb.cover(first, u.pass).complete => {
                let sent = Sent { unit, hash };
                let v = carried(v);
                mb.route.add(first, u.pass, sent, v)
            }
            Folded::Stats(stats) if !mb.cover(first, u.pass).complete => {
                for (i, s) in stats {
                    mb.head[i] = Some(s);
                }
            }
            Folded::Span(parts) => {
                // Whole-stage results: the first to arrive for a stage is passed on; a re-run
                // (of a lost lease's backward) only restores gradient sums.
                for (stage, hash, full) in parts {
                    if !mb.cover(stage, u.pass).complete {
                        let v = carried(full);
                        mb.route.put(stage, u.pass, Sent { unit, hash }, v);
                    }
                }
                for stage in u.stages.clone() {
                    mb.cover(stage, u.pass).complete = true;
                }
            }
            _ => {}
        }
    }

    /// When a stage and pass of a micro-batch has every micro-shard's result, passes the sum on.
    pub(super) fn propagate(&mut self, stage: usize, pass: Pass, last: usize) {
        let mb = self;
        let cover = match pass {
            Pass::Forward => &mut mb.fwd[stage],
            Pass::Backward => &mut mb.bwd[stage],
        };
        if cover.complete || !cover.all_done() {
            return;
        }
        cover.complete = true;
        if let (Pass::Forward, true) = (pass, stage == last) {
            let stats: Option<Vec<HeadStats>> = mb.head.iter().cloned().collect();
            if let Some(stats) = stats {
                let (lse, loss, count) = combine(&stats, &mb.targets);
                mb.lse = Some(lse.iter().map(|&x| x as f32).collect());
                mb.loss_sum = loss * count as f64;
            }
        }
        mb.route.complete(stage, pass, last);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{pipe, spec};
    use super::super::{Holding, Pipe, ShardState};
    use crate::core::context::testing::{active, context};
    use crate::core::context::Context;
    use crate::core::Action;
    use tessera_protocol::log::{CheckOutcome, LogEvent};
    use tessera_protocol::messages::LogHead;
    use tessera_protocol::pipeline::{Pass, PipeResult, UnitOutput};
    use tessera_protocol::{Activation, Code, PublicKey};

    /// An active session of the identity seeded by `seed` on `conn` with `lease`, which holds
    /// the embedding; its identity.
    fn embedding_holder(
        cx: &mut Context,
        p: &mut Pipe,
        conn: u64,
        seed: u8,
        lease: u64,
    ) -> PublicKey {
        let key = active(cx, conn, seed, Some(lease));
        let h = Holding {
            conn,
            shards: vec![(0, 0)],
        };
        p.holdings.insert(lease, h);
        key
    }

    /// Lease 1 (connection 1) holds the embedding and runs micro-batch 0's forward past its
    /// deadline; with `second`, lease 2 (connection 2, still loading its weights) holds it too.
    fn late_embedding(second: bool) -> (Context, Pipe) {
        let spec = spec();
        let mut cx = context(spec.clone());
        let mut p = pipe(&spec, vec![(0, 0)]);
        active(&mut cx, 1, 1, Some(1));
        if second {
            embedding_holder(&mut cx, &mut p, 2, 2, 2);
            cx.sessions.get_mut(&2).expect("added").ready = false;
        }
        p.schedule(&mut cx);
        let late = cx.sessions[&1].unit.expect("the embedding's forward");
        assert_eq!(
            p.step.mbs[0].cover(0, Pass::Forward).shards[0],
            ShardState::Pending(late)
        );
        cx.now += cx.spec.unit_deadline_ms + 1;
        p.expire(&mut cx);
        assert_eq!(cx.sessions[&1].unit, None, "the late unit is cancelled");
        (cx, p)
    }

    #[test]
    fn a_late_unit_goes_to_another_holder_not_back_to_the_late_one() {
        let (mut cx, mut p) = late_embedding(true);
        cx.sessions.get_mut(&2).expect("added").ready = true;
        p.schedule(&mut cx);
        let (one, two) = (cx.sessions[&1].unit, cx.sessions[&2].unit);
        let mbs = &mut p.step.mbs;
        assert_eq!(
            mbs[0].cover(0, Pass::Forward).shards[0],
            ShardState::Pending(two.expect("the other holder has work")),
            "micro-batch 0 runs on the other holder"
        );
        assert_eq!(
            mbs[1].cover(0, Pass::Forward).shards[0],
            ShardState::Pending(one.expect("the late holder has other work")),
            "the late holder runs another micro-batch"
        );
    }

    #[test]
    fn a_late_unit_with_no_other_holder_goes_back_to_its_own() {
        let (mut cx, mut p) = late_embedding(false);
        p.schedule(&mut cx);
        let again = cx.sessions[&1].unit.expect("work again");
        assert_eq!(
            p.step.mbs[0].cover(0, Pass::Forward).shards[0],
            ShardState::Pending(again),
            "no holder else: the step would stall without it"
        );
    }

    #[test]
    fn a_new_lease_of_the_late_identity_stays_barred_while_another_identity_holds_the_task() {
        let (mut cx, mut p) = late_embedding(true);
        cx.sessions.get_mut(&2).expect("added").ready = true;
        // The late identity comes back on connection 0 (scheduled first) with a new lease.
        embedding_holder(&mut cx, &mut p, 0, 1, 3);
        p.schedule(&mut cx);
        let two = cx.sessions[&2].unit.expect("the other identity's work");
        assert_eq!(
            p.step.mbs[0].cover(0, Pass::Forward).shards[0],
            ShardState::Pending(two),
            "the identity ran micro-batch 0 late: another identity takes it"
        );
        assert!(
            cx.sessions[&0].unit.is_some(),
            "the new lease runs other work"
        );
    }

    #[test]
    fn an_output_for_a_unit_not_open_or_not_its_own_is_rejected_and_changes_nothing() {
        let spec = spec();
        let mut cx = context(spec.clone());
        let mut p = pipe(&spec, vec![(0, 0)]);
        let one = active(&mut cx, 1, 1, Some(1));
        let two = embedding_holder(&mut cx, &mut p, 2, 2, 2);
        p.schedule(&mut cx);
        let unit = cx.sessions[&1].unit.expect("work for lease 1");
        let before = p.step.mbs[0].cover(0, Pass::Forward).shards.clone();
        let (seq, d) = (cx.spec.seq as usize, cx.spec.model.hidden_size);
        let output = |unit, lease| UnitOutput {
            unit,
            lease,
            weights: 0,
            result: PipeResult::Activation(Activation::encode(
                &[seq, d],
                &vec![0.5; seq * d],
                spec.pipeline.as_ref().expect("a pipeline").activations,
            )),
            log_head: LogHead::default(),
        };
        cx.out.clear();
        // A unit that was never handed out, then lease 1's unit sent by lease 2.
        p.output(&mut cx, 1, one, 1, output(unit + 1_000_000, 1));
        p.output(&mut cx, 2, two, 1, output(unit, 2));
        let codes: Vec<Code> = cx
            .out
            .iter()
            .filter_map(|a| match a {
                Action::Logged(e) => match &e.entry.event {
                    LogEvent::Rejected { reason, .. } => Some(reason.code),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(codes, [Code::NotOpen, Code::NotOpen]);
        assert_eq!(
            cx.sessions[&1].unit,
            Some(unit),
            "lease 1 still runs its unit"
        );
        assert_eq!(p.step.mbs[0].cover(0, Pass::Forward).shards, before);
    }

    /// Connection `conn`'s unit's output: an embedding activation filled with `value`.
    fn send(cx: &mut Context, p: &mut Pipe, conn: u64, key: PublicKey, value: f32) {
        let unit = cx.sessions[&conn].unit.expect("a unit");
        let (seq, d) = (cx.spec.seq as usize, cx.spec.model.hidden_size);
        let enc = p.spec.activations;
        let o = UnitOutput {
            unit,
            lease: p.step.units[&unit].lease,
            weights: cx.version,
            result: PipeResult::Activation(Activation::encode(
                &[seq, d],
                &vec![value; seq * d],
                enc,
            )),
            log_head: LogHead::default(),
        };
        p.output(cx, conn, key, 1, o);
    }

    /// Identities the log found wrong so far.
    fn failed(cx: &Context) -> Vec<PublicKey> {
        cx.out
            .iter()
            .filter_map(|a| match a {
                Action::Logged(e) => match &e.entry.event {
                    LogEvent::Checked {
                        key,
                        outcome: CheckOutcome::Failed(_),
                        ..
                    } => Some(*key),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_non_finite_output_is_blamed_only_once_another_holder_s_result_of_its_input_is_finite() {
        let mut spec = spec();
        spec.checks = Some(Default::default());
        let mut cx = context(spec.clone());
        let mut p = pipe(&spec, vec![(0, 0)]);
        let one = active(&mut cx, 1, 1, Some(1));
        let two = embedding_holder(&mut cx, &mut p, 2, 2, 2);
        cx.sessions.get_mut(&2).expect("added").ready = false;
        p.schedule(&mut cx);
        send(&mut cx, &mut p, 1, one, f32::NAN);
        assert_eq!(
            failed(&cx),
            vec![],
            "a non-finite result alone blames nobody"
        );
        assert_eq!(
            p.step.mbs[0].cover(0, Pass::Forward).shards[0],
            ShardState::Open
        );
        cx.sessions.get_mut(&2).expect("added").ready = true;
        p.schedule(&mut cx);
        send(&mut cx, &mut p, 2, two, 0.5);
        assert_eq!(
            failed(&cx),
            vec![one],
            "the same input gave another holder a finite result"
        );
        assert!(p.step.suspects.is_empty());
    }
}
