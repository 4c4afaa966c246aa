//! The pipeline regime: micro-shard leases, micro-batches flowing through the stages, and one
//! optimizer step per run step (see docs/ARCHITECTURE.md, "Pipeline leases").
//!
//! Per micro-batch the coordinator keeps each stage's input and output gradient (the relay:
//! every activation passes through it), and per stage and pass which micro-shards are done.
//! A stage's forward is complete when every micro-shard's partial output has arrived; their sum
//! (plus the residual) is the next stage's input. The head runs the three passes of the
//! vocab-parallel loss. When every backward is done the coordinator collects each lease's
//! gradient sums, applies the optimizer (through `StepState`; today the coordinator holds the one
//! authoritative AdamW state), and sends
//! each lease its new weights: the pipeline drains at every step boundary.

mod audit;
mod compare;
mod decode;
mod leases;
mod optimizer;
mod route;
mod step;
mod tasks;
mod units;

pub(in crate::core) use optimizer::{HeldByCoordinator, StepState};

use std::collections::{BTreeMap, BTreeSet};

use tessera_compute::reference::ModelParams;
use tessera_compute::shard::HeadStats;
use tessera_compute::ModelConfig;
use tessera_protocol::pipeline::{Pass, PipeWork};
use tessera_train::shards::from_wire;

use super::spec::PipelineSpec;
use super::ConnId;

/// A micro-shard's place: `(stage, index within the stage)`.
pub(crate) type ShardId = (usize, usize);

/// What a micro-shard of one stage and pass of one micro-batch is at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ShardState {
    /// Needs running.
    Open,
    /// A unit is running it.
    Pending(u64),
    /// Done under this lease.
    Done(u64),
}

/// One stage and pass of one micro-batch.
#[derive(Clone, Debug)]
pub(super) struct Cover {
    pub(super) shards: Vec<ShardState>,
    /// Every micro-shard reported and the result passed on; later re-runs (of a lost lease's
    /// backward units) only restore gradient sums.
    pub(super) complete: bool,
}

impl Cover {
    fn new(n: usize) -> Self {
        Cover {
            shards: vec![ShardState::Open; n],
            complete: false,
        }
    }

    pub(super) fn all_done(&self) -> bool {
        self.shards.iter().all(|s| matches!(s, ShardState::Done(_)))
    }
}

/// A micro-batch of the open step.
#[derive(Debug)]
pub(super) struct MicroBatch {
    pub(super) ids: Vec<u32>,
    pub(super) targets: Vec<u32>,
    /// Its activations and gradients between stages.
    pub(super) route: Box<dyn route::Route>,
    pub(super) fwd: Vec<Cover>,
    pub(super) bwd: Vec<Cover>,
    /// Head statistics per head micro-shard.
    pub(super) head: Vec<Option<HeadStats>>,
    /// Per-token log-sum-exp, once every head slice reported.
    pub(super) lse: Option<Vec<f32>>,
    /// Sum of token losses.
    pub(super) loss_sum: f64,
}

impl MicroBatch {
    /// The cover of `stage` for `pass`.
    pub(super) fn cover(&mut self, stage: usize, pass: Pass) -> &mut Cover {
        match pass {
            Pass::Forward => &mut self.fwd[stage],
            Pass::Backward => &mut self.bwd[stage],
        }
    }
}

/// A pipeline unit in flight.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct PipeUnit {
    pub(super) conn: ConnId,
    pub(super) lease: u64,
    pub(super) mb: usize,
    /// The stages it covers: one, or a span of whole stages.
    pub(super) stages: std::ops::Range<usize>,
    pub(super) pass: Pass,
    /// The micro-shards it runs.
    pub(super) cells: Vec<ShardId>,
    pub(super) deadline: u64,
}

/// A backward unit accepted from a lease whose gradient sums are not yet collected.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Owed {
    pub(super) unit: u64,
    pub(super) mb: usize,
    /// The micro-shards it ran.
    pub(super) cells: Vec<ShardId>,
}

/// A collect request in flight.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Collecting {
    pub(super) unit: u64,
    pub(super) conn: ConnId,
    pub(super) deadline: u64,
}

/// A pipeline lease.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Holding {
    pub(super) conn: ConnId,
    pub(super) shards: Vec<ShardId>,
}

/// The open step.
#[derive(Debug)]
pub(super) struct Step {
    pub(super) number: u64,
    pub(super) mbs: Vec<MicroBatch>,
    pub(super) units: BTreeMap<u64, PipeUnit>,
    /// Per lease, backward units whose gradient sums are still to be collected.
    pub(super) owed: BTreeMap<u64, Vec<Owed>>,
    /// Per lease, the collect request in flight.
    pub(super) collecting: BTreeMap<u64, Collecting>,
    /// Gradient sums collected so far, as whole tensors.
    pub(super) grads: ModelParams<f32>,
    /// Tokens counted in the step's loss.
    pub(super) count: usize,
    /// Contributors whose units were accepted.
    pub(super) contributors: BTreeSet<tessera_protocol::PublicKey>,
    /// Whether the step's checks were drawn (once its work and gradient sums are in).
    pub(super) drawn: bool,
    /// Checks of the step, by the lease checked (every lease's units are recorded until the
    /// draw; then only the drawn leases' are kept).
    pub(super) audits: BTreeMap<u64, audit::LeaseAudit>,
    /// `(identity, micro-batch, pass, micro-shard)` that an identity ran late or was refused
    /// for: the task goes to another ready holder this step, back to the same identity only
    /// when no other can take it, so one slow or hostile identity cannot keep a task to itself
    /// (a new session or lease of the same key stays barred).
    pub(super) barred: BTreeSet<(tessera_protocol::PublicKey, usize, Pass, ShardId)>,
    /// `(micro-batch, pass, micro-shard)` → identities whose result there was not finite. Each
    /// is found wrong once another identity's result of the same input is accepted (the input
    /// was sound); a poisoned input would make an honest holder's output non-finite too, so
    /// nobody is blamed on the non-finite result alone.
    pub(super) suspects: BTreeMap<
        (usize, Pass, ShardId),
        Vec<(tessera_protocol::PublicKey, tessera_protocol::Reason)>,
    >,
}

/// The pipeline's state.
pub(super) struct Pipe {
    /// The run's pipeline (the regime's own copy of `RunSpec::pipeline`): its stages of
    /// micro-shards, activation and gradient encodings, and bounds.
    pub(super) spec: PipelineSpec,
    /// Parameters of each micro-shard (for credits).
    pub(super) params: Vec<Vec<u64>>,
    pub(super) holdings: BTreeMap<u64, Holding>,
    pub(super) step: Step,
    /// The optimizer state of every micro-shard, and the step that moves the weights.
    pub(super) optimizer: Box<dyn StepState>,
    /// How many times the open step ran again because its checks ended disputed (at most
    /// `arbitration::MAX_DISPUTED_RERUNS`; then it commits unverified).
    pub(super) disputed_reruns: u32,
    /// How many times in a row the optimizer refused the open step's gradient sums (a step
    /// run again from the same weights and data gives the same sums: after
    /// `step::MAX_REFUSED_STEPS` the run pauses for its administrator).
    pub(super) refused_steps: u32,
}

impl Pipe {
    /// The micro-shards unit `w` names, as places in the pipeline (`None` when one is not
    /// the pipeline's).
    pub(super) fn cells_of(&self, model: &ModelConfig, w: &PipeWork) -> Option<Vec<ShardId>> {
        w.shards
            .iter()
            .map(|spec| {
                let shard = from_wire(spec, model).ok()?;
                self.spec
                    .stages
                    .iter()
                    .enumerate()
                    .find_map(|(s, stage)| stage.iter().position(|x| *x == shard).map(|i| (s, i)))
            })
            .collect()
    }

    /// Floating-point operations of running `units` on sequences of `seq` tokens (an
    /// auditor's credits).
    pub(super) fn units_flops(&self, model: &ModelConfig, seq: u64, units: &[PipeWork]) -> f64 {
        units
            .iter()
            .map(|w| self.cells_flops(&self.cells_of(model, w).unwrap_or_default(), w.pass, seq))
            .sum()
    }

    /// Floating-point operations of one `pass` of a sequence of `seq` tokens through the
    /// micro-shards `cells`: 2 per parameter and token forward, 6 backward.
    pub(super) fn cells_flops(&self, cells: &[ShardId], pass: Pass, seq: u64) -> f64 {
        let per_token = match pass {
            Pass::Forward => 2.0,
            Pass::Backward => 6.0,
        };
        let params: u64 = cells.iter().map(|&(s, i)| self.params[s][i]).sum();
        per_token * params as f64 * seq as f64
    }

    /// How many leases hold each micro-shard.
    pub(super) fn replicas(&self) -> Vec<Vec<usize>> {
        let mut n: Vec<Vec<usize>> = self.spec.stages.iter().map(|s| vec![0; s.len()]).collect();
        for h in self.holdings.values() {
            for &(s, i) in &h.shards {
                n[s][i] += 1;
            }
        }
        n
    }
}

/// A pipeline run of the tiny model, for the pipeline parts' unit tests.
#[cfg(test)]
pub(super) mod testing {
    use tessera_compute::model::{shards, Slicing};
    use tessera_train::data::Sampler;

    use super::{Holding, Pipe, ShardId, Step};
    use crate::core::spec::{PipelineSpec, RunSpec};

    /// The tiny model in stages (embedding, attention and MLP per layer, the head in two
    /// slices), two micro-batches a step, every micro-shard one byte.
    pub fn spec() -> RunSpec {
        let cfg = tessera_compute::ModelConfig::tiny();
        let slicing = Slicing {
            embed: 1,
            attn: 1,
            mlp: 1,
            head: 2,
        };
        let stages = shards(&cfg, slicing).expect("the tiny model slices");
        let tokens: Vec<u32> = (0..400).map(|i| i % cfg.vocab_size as u32).collect();
        RunSpec::new("tasks", cfg, tokens).with_pipeline(PipelineSpec {
            state_bytes: stages.iter().map(|s| vec![1; s.len()]).collect(),
            work_bytes: stages.iter().map(|s| vec![1; s.len()]).collect(),
            stages,
            micro_batches: 2,
            activations: tessera_protocol::ActEncoding::F32,
            grads: tessera_protocol::messages::SyncMode::Dense,
            max_activation: crate::core::spec::DEFAULT_MAX_ACTIVATION,
        })
    }

    /// The pipeline of `spec` at step 0, with lease 1 (on connection 1) holding `held`.
    pub fn pipe(spec: &RunSpec, held: Vec<ShardId>) -> Pipe {
        let ps = spec.pipeline.clone().expect("a pipeline");
        let mut sampler = Sampler::new(1, spec.tokens.len(), spec.seq as usize);
        let step = Step::of(spec, &mut sampler, 0);
        let mut p = Pipe::new(&spec.model, ps, step);
        let h = Holding {
            conn: 1,
            shards: held,
        };
        p.holdings.insert(1, h);
        p
    }
}
