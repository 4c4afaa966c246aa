//! A step of the pipeline: its micro-batches drawn from the seed, the collection of every
//! lease's gradient sums once all backward units are done, and the optimizer step (global-norm
//! clip, AdamW or SGD on the authoritative state) that closes it and sends each lease its new
//! weights.

use std::collections::{BTreeMap, BTreeSet};

use tessera_compute::reference::ops::IGNORE;
use tessera_compute::reference::ModelParams;
use tessera_protocol::messages::Verdict;
use tessera_protocol::pipeline::{Pass, StepGrads};
use tessera_protocol::{Code, PublicKey, Reason, ToContributor};
use tessera_train::data::draw_index;
use tessera_train::shards::grads_from_wire;
use tessera_train::sparseloco::SparseConfig;

use super::route::Relay;
use super::{Collecting, Cover, MicroBatch, Pipe, ShardId, ShardState, Step};
use crate::core::arbitration::{after_checks, AfterChecks};
use crate::core::context::Context;
use crate::core::part::Part;
use crate::core::run_state::RunState;
use crate::core::{Action, ConnId, RoundSummary, RunSpec};
use tessera_train::data::Sampler;

/// Refusals in a row of one step's gradient sums by the optimizer (an overflow: the run
/// diverging, or sums nobody checked) after which the run pauses instead of running the step
/// again.
pub(super) const MAX_REFUSED_STEPS: u32 = 3;

impl Step {
    /// Puts a running unit's micro-shards back in the queue.
    pub(super) fn reopen(&mut self, unit: u64) {
        for a in self.audits.values_mut() {
            a.sent.remove(&unit);
        }
        if let Some(u) = self.units.remove(&unit) {
            let mb = &mut self.mbs[u.mb];
            for (s, i) in u.cells {
                let cover = mb.cover(s, u.pass);
                if cover.shards[i] == ShardState::Pending(unit) {
                    cover.shards[i] = ShardState::Open;
                }
            }
        }
    }

    /// Puts a late or refused unit's micro-shards back in the queue, and bars the identity
    /// that ran it (when known) from running them again in this step while another ready
    /// holder can (see [`Step::barred`]).
    pub(super) fn reopen_barring(&mut self, unit: u64, key: Option<PublicKey>) {
        if let (Some(u), Some(key)) = (self.units.get(&unit), key) {
            for &cell in &u.cells {
                self.barred.insert((key, u.mb, u.pass, cell));
            }
        }
        self.reopen(unit);
    }

    /// Whether `key` ran `cell` of micro-batch `mb` in `pass` late or was refused for it.
    pub(super) fn is_barred(&self, key: PublicKey, mb: usize, pass: Pass, cell: ShardId) -> bool {
        !self.barred.is_empty() && self.barred.contains(&(key, mb, pass, cell))
    }

    /// Holds `key`'s non-finite result for `cells` of micro-batch `mb` in `pass` against it,
    /// until another identity's result of the same input settles it (see [`Step::suspects`]).
    pub(super) fn suspect(
        &mut self,
        mb: usize,
        pass: Pass,
        cells: &[ShardId],
        key: PublicKey,
        why: Reason,
    ) {
        for &cell in cells {
            let held = self.suspects.entry((mb, pass, cell)).or_default();
            if !held.iter().any(|(k, _)| *k == key) {
                held.push((key, why.clone()));
            }
        }
    }

    /// `key`'s finite result for `cells` of micro-batch `mb` in `pass` was accepted: the other
    /// identities whose results of the same input were not finite are wrong (each once).
    pub(super) fn contradicted(
        &mut self,
        mb: usize,
        pass: Pass,
        cells: &[ShardId],
        key: PublicKey,
    ) -> Vec<(PublicKey, Reason)> {
        let mut wrong: Vec<(PublicKey, Reason)> = Vec::new();
        if self.suspects.is_empty() {
            return wrong;
        }
        for &cell in cells {
            for (k, why) in self.suspects.remove(&(mb, pass, cell)).unwrap_or_default() {
                if k != key && !wrong.iter().any(|(w, _)| *w == k) {
                    wrong.push((k, why));
                }
            }
        }
        // An identity found wrong is found wrong once: its other suspect results go too.
        for held in self.suspects.values_mut() {
            held.retain(|(k, _)| !wrong.iter().any(|(w, _)| w == k));
        }
        self.suspects.retain(|_, held| !held.is_empty());
        wrong
    }

    /// Every backward of every micro-batch is done and nothing is running.
    fn drained(&self) -> bool {
        self.units.is_empty()
            && self
                .mbs
                .iter()
                .all(|m| m.bwd.iter().all(|c| c.complete && c.all_done()))
    }
}

impl Step {
    /// Step `number` of the run `sp`: its micro-batches, drawn from the seed alone.
    pub(in crate::core) fn of(sp: &RunSpec, sampler: &mut Sampler, number: u64) -> Step {
        let stages: Vec<usize> = sp
            .pipeline
            .as_ref()
            .map(|p| p.stages.iter().map(Vec::len).collect())
            .unwrap_or_default();
        let m = sp.pipeline.as_ref().map_or(0, |p| p.micro_batches);
        let seq = sp.seq as usize;
        let d = sp.model.hidden_size;
        let enc = sp
            .pipeline
            .as_ref()
            .map_or(Default::default(), |p| p.activations);
        let mut mbs = Vec::new();
        let mut count = 0;
        for mb in 0..m {
            let n = draw_index(number, 0, 1, 0, 1, mb, m);
            let s = sampler.sample(n);
            let row = &sp.tokens[sampler.span(s)];
            let (ids, targets) = (row[..seq].to_vec(), row[1..].to_vec());
            count += targets.iter().filter(|&&t| t != IGNORE).count();
            let head = stages.last().copied().unwrap_or(0);
            mbs.push(MicroBatch {
                ids,
                targets,
                route: Box::new(Relay::new(stages.len(), [seq, d], enc)),
                fwd: stages.iter().map(|&n| Cover::new(n)).collect(),
                bwd: stages.iter().map(|&n| Cover::new(n)).collect(),
                head: vec![None; head],
                lse: None,
                loss_sum: 0.0,
            });
        }
        Step {
            number,
            mbs,
            units: BTreeMap::new(),
            owed: BTreeMap::new(),
            collecting: BTreeMap::new(),
            grads: ModelParams::zeros(&sp.model),
            count,
            contributors: BTreeSet::new(),
            drawn: false,
            audits: BTreeMap::new(),
            barred: BTreeSet::new(),
            suspects: BTreeMap::new(),
        }
    }
}

impl Pipe {
    /// Once the step drained: asks every lease that owes gradient sums for them; once all are in,
    /// closes the step.
    pub(super) fn collect_or_close(&mut self, cx: &mut Context) {
        if !cx.state.is_open() || !self.step.drained() {
            return;
        }
        let ask: Vec<(u64, ConnId)> = self
            .step
            .owed
            .iter()
            .filter(|(l, o)| !o.is_empty() && !self.step.collecting.contains_key(l))
            .filter_map(|(&l, _)| self.holdings.get(&l).map(|h| (l, h.conn)))
            .collect();
        let step = self.step.number;
        for (lease, conn) in ask {
            let unit = cx.next_unit;
            cx.next_unit += 1;
            let deadline = cx.now + cx.spec.unit_deadline_ms;
            self.step.collecting.insert(
                lease,
                Collecting {
                    unit,
                    conn,
                    deadline,
                },
            );
            cx.send(conn, ToContributor::Collect { unit, lease, step });
        }
        let done = self.step.collecting.is_empty() && self.step.owed.values().all(Vec::is_empty);
        if done && self.audits_resolved(cx) {
            let failure = self.audit_failure();
            let only_disputed = self.only_disputed();
            match (
                after_checks(failure.is_some(), only_disputed, self.disputed_reruns),
                failure,
            ) {
                (AfterChecks::RunsAgain, Some(why)) => {
                    self.disputed_reruns += u32::from(only_disputed);
                    self.discard_step(cx, why)
                }
                (AfterChecks::StandsDisputed, _) => {
                    tracing::warn!(
                        step,
                        reruns = self.disputed_reruns,
                        "the step's checks stayed disputed: it commits unverified"
                    );
                    self.close_step(cx)
                }
                _ => self.close_step(cx),
            }
        }
    }

    /// Throws the open step's results away and runs it again from the same weights (every
    /// lease's gradient sums were collected, so none holds any).
    fn discard_step(&mut self, cx: &mut Context, reason: Reason) {
        let number = self.step.number;
        tracing::warn!(step = number, "step discarded: {reason}");
        cx.log(tessera_protocol::log::LogEvent::Discarded {
            step: number,
            reason,
        });
        let fresh = Step::of(&cx.spec, &mut cx.sampler, number);
        self.step = fresh;
    }

    /// A lease's gradient sums: checked against what it owes, then added to the step's sums.
    pub(in crate::core) fn grads(
        &mut self,
        cx: &mut Context,
        conn: ConnId,
        key: PublicKey,
        seq: u64,
        g: StepGrads,
    ) {
        let unit = g.unit;
        let checked = self.check_grads(&cx.spec, conn, &g);
        match checked {
            Ok(sums) => {
                if let Some(a) = self.step.audits.get_mut(&g.lease) {
                    a.sums = Some(sums.clone());
                }
                for t in &sums {
                    // Checked above: cannot fail.
                    let _ = t.add_into(&cx.spec.model, &mut self.step.grads);
                }
                self.step.owed.remove(&g.lease);
                self.step.collecting.remove(&g.lease);
                let d = crate::core::digest(&g.shards);
                // The sums' credit came with the backward units.
                cx.receipt(conn, unit, key, seq, Verdict::Accepted, d, (0, 0.0));
                self.collect_or_close(cx);
            }
            Err(why) => {
                let poison = cx.spec.checks.is_some() && super::compare::grads_non_finite(&g);
                if poison {
                    let why = Reason::new(Code::NotFinite, why.text.as_str());
                    cx.reject(conn, unit, key, seq, why.clone());
                    let found = format!("it sent values that are not finite: {why}");
                    return self.found_wrong(cx, key, Reason::new(Code::NotFinite, found));
                }
                cx.reject(conn, unit, key, seq, why.clone());
                // Its backward units' sums are lost: drop the lease so they run again.
                self.fatal(cx, conn, why.prefixed("gradient sums refused"));
            }
        }
    }

    /// The optimizer step: global-norm clip, AdamW (or SGD) on the authoritative state, new
    /// weights to every lease, next step.
    fn close_step(&mut self, cx: &mut Context) {
        let number = self.step.number;
        let grads = std::mem::replace(&mut self.step.grads, ModelParams::zeros(&cx.spec.model));
        let rule = crate::core::rules::RunRules::of(&cx.spec).step;
        // A refused step changes nothing (`tessera_train::optimizer::step` is all or nothing):
        // it runs again from the same weights (sums that overflow on an honest run's data are
        // the run diverging, which its administrator sees in the log and stops).
        let weights = std::sync::Arc::make_mut(&mut cx.weights);
        let scalars = match self.optimizer.step(&rule, number, weights, &grads) {
            Ok(scalars) => scalars,
            Err(e) => {
                self.refused_steps += 1;
                let mut why = format!("the optimizer step refused the step's gradient sums: {e}");
                if self.refused_steps >= MAX_REFUSED_STEPS && cx.state == RunState::Training {
                    // The same weights and data give the same sums: running the step again
                    // and again would only fill the log. The administrator decides (resume
                    // to try once more, stop, or fork with other settings).
                    why.push_str(&format!(
                        " ({} times in a row: the run is paused for its administrator)",
                        self.refused_steps
                    ));
                    cx.state = RunState::Paused;
                }
                return self.discard_step(cx, Reason::new(Code::NotFinite, why));
            }
        };
        self.disputed_reruns = 0;
        self.refused_steps = 0;
        let loss_sum: f64 = self.step.mbs.iter().map(|m| m.loss_sum).sum();
        let count = self.step.count;
        let contributors = self.step.contributors.iter().copied().collect();
        let holdings: Vec<(u64, ConnId, Vec<_>)> = self
            .holdings
            .iter()
            .map(|(&l, h)| (l, h.conn, h.shards.clone()))
            .collect();
        let aggregate = crate::core::weights_digest(&grads);
        cx.aggregate = Some(grads);
        cx.version += 1;
        let loss = if count > 0 {
            loss_sum / count as f64
        } else {
            0.0
        };
        cx.losses.push(loss);
        cx.digest = crate::core::weights_digest(&cx.weights);
        if let Some(s) = &scalars {
            cx.log(tessera_protocol::log::LogEvent::Stepped {
                step: number,
                scalars: s.to_bits(),
            });
        }
        cx.log(tessera_protocol::log::LogEvent::Closed {
            round: number,
            version: cx.version,
            weights: cx.digest,
            aggregate,
        });
        cx.out.push(Action::RoundClosed(RoundSummary {
            round: number,
            version: cx.version,
            loss,
            tokens: count as u64,
            contributors,
            clip_scales: vec![scalars.map_or(1.0, |s| f64::from(s.clip))],
        }));
        for (lease, conn, shards) in holdings {
            let weights = self.weight_stream(cx, lease, &shards);
            cx.send(
                conn,
                ToContributor::StepWeights {
                    lease,
                    step: number,
                    version: cx.version,
                    frames: weights.len(),
                },
            );
            cx.out.push(Action::SendWeights { conn, weights });
        }
        let next = Step::of(&cx.spec, &mut cx.sampler, number + 1);
        self.step = next;
        cx.state = cx.state.after_close(number + 1 >= cx.spec.rounds);
        if !cx.state.is_open() {
            cx.out.push(Action::Finished);
        }
    }
}

impl Pipe {
    /// Lease gradient sums `g` from `conn`, checked against what was asked of whom, the units
    /// the lease owes and the micro-shards it holds, and decoded (`spec`: the run's model and
    /// how sums travel); the refusal otherwise.
    pub(super) fn check_grads(
        &self,
        spec: &RunSpec,
        conn: ConnId,
        g: &StepGrads,
    ) -> Result<Vec<tessera_compute::shard::ShardTensors>, Reason> {
        let pipe = self;
        let c = pipe
            .step
            .collecting
            .get(&g.lease)
            .filter(|c| c.unit == g.unit && c.conn == conn)
            .ok_or_else(|| {
                Reason::new(
                    Code::NotOpen,
                    format!(
                        "no gradient sums were asked of lease {} as {}",
                        g.lease, g.unit
                    ),
                )
            })?;
        let _ = c;
        if g.step != pipe.step.number {
            return Err(Reason::new(
                Code::WrongVersion,
                format!(
                    "sums for step {}, the open step is {}",
                    g.step, pipe.step.number
                ),
            ));
        }
        let owed: BTreeSet<u64> = pipe
            .step
            .owed
            .get(&g.lease)
            .map(|o| o.iter().map(|o| o.unit).collect())
            .unwrap_or_default();
        let listed: BTreeSet<u64> = g.units.iter().copied().collect();
        if listed != owed || listed.len() != g.units.len() {
            return Err(Reason::new(
                Code::WrongUnits,
                format!(
                    "the sums list units {:?}; the lease's accepted backward units are {:?}",
                    g.units, owed
                ),
            ));
        }
        let held: Vec<_> = pipe
            .holdings
            .get(&g.lease)
            .map(|h| {
                h.shards
                    .iter()
                    .map(|&(s, i)| &pipe.spec.stages[s][i])
                    .collect()
            })
            .unwrap_or_default();
        if g.shards.len() != held.len() {
            return Err(Reason::new(
                Code::WrongShape,
                format!(
                    "sums for {} micro-shards, the lease holds {}",
                    g.shards.len(),
                    held.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for sg in &g.shards {
            let sparse = spec
                .pipeline
                .as_ref()
                .and_then(|p| SparseConfig::from_sync(&p.grads));
            let t = grads_from_wire(sg, &spec.model, sparse.as_ref())
                .map_err(|e| Reason::new(Code::WrongShape, e.to_string()))?;
            if !held.contains(&&t.shard)
                || out
                    .iter()
                    .any(|o: &tessera_compute::shard::ShardTensors| o.shard == t.shard)
            {
                return Err(Reason::new(
                    Code::WrongShape,
                    format!("{} is not held by the lease, or listed twice", t.shard),
                ));
            }
            out.push(t);
        }
        Ok(out)
    }

    /// A new pipeline `spec` of model `cfg` at `step`.
    pub(in crate::core) fn new(
        cfg: &tessera_compute::ModelConfig,
        spec: crate::core::spec::PipelineSpec,
        step: Step,
    ) -> Self {
        let params = spec
            .stages
            .iter()
            .map(|st| st.iter().map(|s| s.parameters(cfg) as u64).collect())
            .collect();
        Pipe {
            spec,
            params,
            holdings: BTreeMap::new(),
            step,
            optimizer: Box::new(super::HeldByCoordinator::new(cfg.tie_word_embeddings)),
            disputed_reruns: 0,
            refused_steps: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_protocol::pipeline::Pass;
    use tessera_protocol::{Code, Identity, Reason};

    use super::super::testing::{pipe, spec};

    #[test]
    fn a_non_finite_result_is_wrong_only_once_another_identity_settles_its_input() {
        let spec = spec();
        let mut step = pipe(&spec, vec![(0, 0)]).step;
        let [a, b, c] = [1u8, 2, 3].map(|s| Identity::from_seed([s; 32]).public());
        let why = Reason::new(Code::NotFinite, "not finite");
        let cells = [(1, 0)];
        step.suspect(0, Pass::Forward, &cells, a, why.clone());
        step.suspect(0, Pass::Forward, &cells, a, why.clone());
        step.suspect(0, Pass::Forward, &cells, b, why.clone());
        // b's result of another input is suspect too.
        step.suspect(1, Pass::Backward, &[(2, 0)], b, why.clone());
        // A result of another input settles nothing.
        assert!(step.contradicted(1, Pass::Forward, &cells, c).is_empty());
        // a's own finite result later does not blame a; b is wrong once, and its other
        // suspect result goes with it.
        let wrong = step.contradicted(0, Pass::Forward, &cells, a);
        assert_eq!(wrong, vec![(b, why)]);
        assert!(step.suspects.is_empty(), "{:?}", step.suspects);
        assert!(step.contradicted(0, Pass::Forward, &cells, c).is_empty());
    }

    #[test]
    fn a_step_the_optimizer_refuses_runs_again_then_pauses_the_run() {
        use crate::core::run_state::RunState;
        use tessera_protocol::log::LogEvent;
        let mut spec = spec();
        spec.optimizer = tessera_protocol::messages::InnerOptimizer::AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut cx = crate::core::context::testing::context(spec.clone());
        let mut p = pipe(&spec, vec![(0, 0)]);
        let before = cx.weights.clone();
        for n in 1..=super::MAX_REFUSED_STEPS {
            // Sums whose squares overflow f32: AdamW's second moment cannot take them.
            for t in p.step.grads.tensors_mut() {
                t.iter_mut().for_each(|x| *x = 1e30);
            }
            p.close_step(&mut cx);
            assert_eq!(p.refused_steps, n);
            assert_eq!(p.step.number, 0, "the step runs again");
            let paused = n == super::MAX_REFUSED_STEPS;
            assert_eq!(cx.state == RunState::Paused, paused, "refusal {n}");
        }
        assert_eq!(cx.weights, before, "nothing moved");
        let discarded: Vec<String> = cx
            .out
            .iter()
            .filter_map(|a| match a {
                crate::core::Action::Logged(e) => match &e.entry.event {
                    LogEvent::Discarded { reason, .. } => Some(reason.to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(discarded.len(), 3);
        assert!(
            discarded[2].contains("3 times in a row: the run is paused"),
            "{discarded:?}"
        );
        // Sums it takes close the step and clear the count.
        cx.state = RunState::Training;
        p.step.grads = tessera_compute::reference::ModelParams::zeros(&spec.model);
        p.close_step(&mut cx);
        assert_eq!((p.refused_steps, p.step.number), (0, 1));
    }

    #[test]
    fn a_bar_holds_only_the_identity_and_the_cells_it_names() {
        let spec = spec();
        let mut step = pipe(&spec, vec![(0, 0)]).step;
        let [a, b] = [1u8, 2].map(|s| Identity::from_seed([s; 32]).public());
        assert!(!step.is_barred(a, 0, Pass::Forward, (0, 0)));
        step.barred.insert((a, 0, Pass::Forward, (0, 0)));
        assert!(step.is_barred(a, 0, Pass::Forward, (0, 0)));
        assert!(!step.is_barred(b, 0, Pass::Forward, (0, 0)));
        assert!(!step.is_barred(a, 1, Pass::Forward, (0, 0)));
        assert!(!step.is_barred(a, 0, Pass::Backward, (0, 0)));
        // Reopening a unit the step does not know bars no one.
        step.reopen_barring(99, Some(b));
        assert_eq!(step.barred.len(), 1);
    }
}
