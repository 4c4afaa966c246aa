//! What a run is: the model, the data, and how to train, resolved (no file paths) for the core.

use std::sync::Arc;

use tessera_compute::reference::Batch;
use tessera_compute::shard::MicroShard;
use tessera_compute::ModelConfig;
use tessera_protocol::messages::{InnerOptimizer, SyncMode};
use tessera_protocol::{ActEncoding, PublicKey};
use tessera_train::schedule::Schedule;
use tessera_train::sparseloco::SparseConfig;

/// A run, resolved.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Run name.
    pub name: String,
    /// The model.
    pub model: ModelConfig,
    /// The token stream: training data, then (whole-model runs with checks) the held-out
    /// sequences of [`ChecksSpec::held_out`], which no unit trains on.
    pub tokens: Arc<[u32]>,
    /// Seed of weights and data order.
    pub seed: u64,
    /// Rounds (outer steps) to train; the run finishes after the last.
    pub rounds: u64,
    /// Replica slots a round opens with: the least it has (see [`RunSpec::max_replicas`]).
    pub replicas: u64,
    /// Most replica slots a round grows to: while a round computes, every ready contributor
    /// that has no unit of it yet gets a slot of its own, up to this many (and, in a run that
    /// checks work, within [`ChecksSpec::probation_share`]); `replicas` for a fixed count. Each
    /// round's data draws are laid out for this many slots (`samples.rs`), so a round's slot
    /// draws the same samples however many slots the round reached.
    pub max_replicas: u64,
    /// Inner steps per replica per round (H).
    pub inner_steps: u64,
    /// Sequences per inner step.
    pub batch: u64,
    /// Tokens per sequence.
    pub seq: u64,
    /// Inner optimizer.
    pub optimizer: InnerOptimizer,
    /// Inner learning rate over all inner steps of the run (step = round * H + h + 1).
    pub inner_lr: Schedule,
    /// Global-norm clip of inner gradients.
    pub inner_clip: Option<f32>,
    /// Outer SGD learning rate.
    pub outer_lr: f32,
    /// Clip each replica's pseudo-gradient to the median norm before averaging.
    pub clip_to_median: bool,
    /// Dense or SparseLoCo.
    pub sync: SyncMode,
    /// A unit not submitted this long after assignment goes to someone else (ms).
    pub unit_deadline_ms: u64,
    /// A contributor silent this long is dropped (ms).
    pub silence_ms: u64,
    /// Whole-model rounds: how many accepted slots close a round once `round_deadline_ms` has
    /// passed since it opened (`replicas` or more: only a full round closes).
    pub quorum: u64,
    /// Whole-model rounds: after this long (ms) a quorum of accepted slots closes the round, so
    /// that identities that take slots and never deliver cannot hold it open.
    pub round_deadline_ms: u64,
    /// `Some`: an invite-only run, which only these identities may join.
    pub invited: Option<std::collections::BTreeSet<PublicKey>>,
    /// Largest frame payload for weights, in f32 elements (1 Mi from a config: 4 MiB frames, the
    /// most a lease being streamed holds per connection, besides its encoding).
    pub weights_frame_elems: usize,
    /// `None`: whole-model leases (rounds of replicas). `Some`: micro-shard leases in a
    /// pipeline; then `rounds` counts optimizer steps, `optimizer`, `inner_lr` and `inner_clip`
    /// are the step's optimizer, and `replicas`, `inner_steps`, `batch`, `outer_lr`,
    /// `clip_to_median` and `sync` are unused.
    pub pipeline: Option<PipelineSpec>,
    /// How untrusted work is checked (`None`: it is not).
    pub checks: Option<ChecksSpec>,
}

/// A pipeline of micro-shard pools (see docs/ARCHITECTURE.md, "Pipeline leases").
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSpec {
    /// The plan's stages in order: embed, then attention and MLP per layer, then head; each
    /// stage's micro-shards partition it.
    pub stages: Vec<Vec<MicroShard>>,
    /// Bytes a replica keeps resident per micro-shard (weights and gradient sums), shaped like
    /// `stages`.
    pub state_bytes: Vec<Vec<u64>>,
    /// Working memory of one forward and backward of one sequence per micro-shard, shaped like
    /// `stages`.
    pub work_bytes: Vec<Vec<u64>>,
    /// Micro-batches (sequences of `seq` tokens) per optimizer step.
    pub micro_batches: u64,
    /// How activations travel.
    pub activations: ActEncoding,
    /// How leases send their gradient sums: dense, or SparseLoCo-compressed with error
    /// feedback on the contributor.
    pub grads: SyncMode,
    /// Largest magnitude an activation or activation gradient may carry: a result beyond it is
    /// refused on receipt, so that no sum or re-encoding of accepted results can overflow into
    /// an infinity that an honest next stage would be blamed for.
    pub max_activation: f32,
}

/// The default [`PipelineSpec::max_activation`]: far above the residual streams of trained
/// LLMs (their largest "massive activations" are near 1e4), far below where f32 or bf16 sums
/// of a few results overflow.
pub const DEFAULT_MAX_ACTIVATION: f32 = 1e7;

/// How untrusted work is checked. Pipeline runs: a share of leases' steps is run again by
/// another lease holding the same micro-shards, and compared within a tolerance. Whole-model
/// runs: every update is compared with the round's others and the previous round's (copies),
/// and a share is applied alone to its own first batch, whose loss must fall, and to the
/// held-out sequences, where it must not do significantly worse than the round's median update.
#[derive(Clone, Debug, PartialEq)]
pub struct ChecksSpec {
    /// Largest relative L2 distance between two honest results (beyond the activation
    /// encoding's rounding), from `tessera calibrate`.
    pub tolerance: f64,
    /// Share of a new identity's steps checked.
    pub new_rate: f64,
    /// Share checked however long the identity's clean record.
    pub min_rate: f64,
    /// Clean steps (steps or rounds whose checks passed) that halve the share.
    pub halving: u64,
    /// Whole-model runs: the share of the largest entries (top 1 %) two updates may have in
    /// common before they count as copies (when they also point the same way).
    pub copy_overlap: f64,
    /// Whole-model runs: a drawn unit is replayed by another contributor from the round's
    /// weights and the unit's data, and the two updates compared within `round_tolerance`.
    /// Units then start from fresh inner state (see `Lease::fresh_units`): with SparseLoCo no
    /// error feedback is carried from round to round, so the configuration turns it on by
    /// default for dense sync only.
    pub replay: bool,
    /// Largest relative L2 distance between two honest replays of one unit (whole inner steps
    /// drift further apart than one pipeline unit; `tessera calibrate`).
    pub round_tolerance: f64,
    /// Whole-model runs: sequences of `seq` tokens kept out of training at the end of the
    /// data, on which no update of a round with a drawn one may do significantly worse than
    /// the round's median update (0: the held-out check is off).
    pub held_out: u64,
    /// Auditors that must agree with each other against a result (or, for an auditor found
    /// wrong, with the checked result against it) before anyone is refused; see
    /// `arbitration.rs` for the chance that colluding identities reach it.
    pub agree: u64,
    /// Whole-model runs: the largest share of a round's slots that identities still on
    /// probation (fewer than `halving` clean rounds) may hold once the run has at least
    /// `replicas` established contributors ready, so that fresh keys cannot fill a round; a
    /// younger run, which has only newcomers, is not capped (`round_size.rs`).
    pub probation_share: f64,
}

/// The default [`ChecksSpec::probation_share`]: identities on probation stay a minority of a
/// round (two for three established ones), so the median-norm clip and the checks' round
/// medians stand on established contributors.
pub const DEFAULT_PROBATION_SHARE: f64 = 0.4;

/// The most replica slots a round may have (each is a line of its `Aggregated` log entry).
pub const MAX_REPLICAS: u64 = 1024;

/// The most auditors a run may require to agree before it refuses anyone.
pub const MAX_AGREE: u64 = 8;

/// The fewest held-out sequences a held-out check compares over.
pub const MIN_HELD_OUT: u64 = 4;

impl Default for ChecksSpec {
    fn default() -> Self {
        ChecksSpec {
            tolerance: tessera_train::drift::UNIT_TOLERANCE,
            new_rate: 1.0,
            min_rate: 0.1,
            halving: 4,
            copy_overlap: 0.9,
            replay: true,
            round_tolerance: tessera_train::drift::ROUND_TOLERANCE,
            held_out: 0,
            agree: 2,
            probation_share: DEFAULT_PROBATION_SHARE,
        }
    }
}

impl RunSpec {
    /// Whether the run checks pipeline work.
    pub fn pipe_checks(&self) -> bool {
        self.pipeline.is_some() && self.checks.is_some()
    }

    /// Auditors that must agree before a check refuses anyone (`ChecksSpec::agree`; the
    /// default where the run does not check).
    pub fn agreement(&self) -> usize {
        self.checks
            .as_ref()
            .map_or(ChecksSpec::default().agree, |c| c.agree) as usize
    }

    /// Floating-point operations credited for a whole-model unit of `tokens` tokens (six per
    /// parameter per token, forward and backward).
    pub fn unit_flops(&self, tokens: u64) -> f64 {
        6.0 * self.model.parameter_count() as f64 * tokens as f64
    }
}

impl ChecksSpec {
    /// The share of work checked for an identity with `passed` clean steps (steps or rounds
    /// in which checks of its work passed): `new_rate` during its first `halving`, then halved
    /// every `halving` more, down to `min_rate`; in integers (`share.rs`), so that every
    /// platform draws the same.
    pub fn rate(&self, passed: u64) -> super::Share {
        super::beacon::rate(&self.draw_rates(), passed)
    }

    /// The rates as the log's draw chain commits them (shares of 2^64).
    pub fn draw_rates(&self) -> tessera_protocol::log::DrawRates {
        tessera_protocol::log::DrawRates {
            new: super::Share::of(self.new_rate).bits(),
            min: super::Share::of(self.min_rate).bits(),
            halving: self.halving.max(1),
        }
    }

    /// The values make sense.
    pub fn validate(&self) -> Result<(), ChecksError> {
        let share = |x: f64| (0.0..=1.0).contains(&x);
        if !(self.tolerance > 0.0 && self.tolerance < 1.0) {
            return Err(ChecksError::Tolerance);
        }
        if !share(self.new_rate) || !share(self.min_rate) || self.min_rate > self.new_rate {
            return Err(ChecksError::Rates);
        }
        if !(self.copy_overlap > 0.0 && self.copy_overlap <= 1.0) {
            return Err(ChecksError::CopyOverlap);
        }
        if !(self.round_tolerance > 0.0 && self.round_tolerance < 1.0) {
            return Err(ChecksError::RoundTolerance);
        }
        if self.halving == 0 {
            return Err(ChecksError::Halving);
        }
        if self.held_out != 0 && self.held_out < MIN_HELD_OUT {
            return Err(ChecksError::HeldOut);
        }
        if !(1..=MAX_AGREE).contains(&self.agree) {
            return Err(ChecksError::Agree);
        }
        if !(self.probation_share > 0.0 && self.probation_share <= 1.0) {
            return Err(ChecksError::ProbationShare);
        }
        Ok(())
    }
}

/// A [`ChecksSpec`] value that cannot work, by setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChecksError {
    /// `tolerance` outside (0, 1).
    #[error("[checks] tolerance must be in (0, 1)")]
    Tolerance,
    /// `new_rate` and `min_rate` not shares in order.
    #[error("[checks] rates are shares: 0 <= min_rate <= new_rate <= 1")]
    Rates,
    /// `copy_overlap` outside (0, 1].
    #[error("[checks] copy_overlap must be in (0, 1]")]
    CopyOverlap,
    /// `round_tolerance` outside (0, 1).
    #[error("[checks] round_tolerance must be in (0, 1)")]
    RoundTolerance,
    /// `halving` zero.
    #[error("[checks] halving must be positive")]
    Halving,
    /// `held_out` too small to compare losses.
    #[error("[checks] held_out must be 0 (off) or at least {MIN_HELD_OUT} sequences")]
    HeldOut,
    /// `agree` outside 1..=MAX_AGREE.
    #[error("[checks] agree must be in 1..={MAX_AGREE}")]
    Agree,
    /// `probation_share` outside (0, 1].
    #[error("[checks] probation_share must be in (0, 1]")]
    ProbationShare,
}

impl PipelineSpec {
    /// The planner's stages and costs.
    pub fn from_plan(
        plan: &tessera_plan::Plan,
        micro_batches: u64,
        activations: ActEncoding,
        grads: SyncMode,
    ) -> Self {
        let col = |f: fn(&tessera_plan::ShardCost) -> u64| -> Vec<Vec<u64>> {
            plan.stages
                .iter()
                .map(|s| s.iter().map(f).collect())
                .collect()
        };
        PipelineSpec {
            stages: plan
                .stages
                .iter()
                .map(|s| s.iter().map(|c| c.shard.clone()).collect())
                .collect(),
            state_bytes: col(|c| c.state_bytes),
            work_bytes: col(|c| c.work_bytes),
            micro_batches,
            activations,
            grads,
            max_activation: DEFAULT_MAX_ACTIVATION,
        }
    }

    /// Memory a lease holding `shards` (`(stage, index)`) needs: their resident bytes plus the
    /// largest working memory (a lease runs one micro-shard at a time).
    pub fn lease_bytes(&self, shards: &[(usize, usize)]) -> u64 {
        let resident: u64 = shards.iter().map(|&(s, i)| self.state_bytes[s][i]).sum();
        let work = shards
            .iter()
            .map(|&(s, i)| self.work_bytes[s][i])
            .max()
            .unwrap_or(0);
        resident + work
    }

    /// The smallest budget that holds a lease of any single micro-shard: the largest
    /// one-micro-shard lease.
    pub fn single_shard_budget(&self) -> u64 {
        (0..self.stages.len())
            .flat_map(|s| (0..self.stages[s].len()).map(move |i| (s, i)))
            .map(|c| self.lease_bytes(&[c]))
            .max()
            .unwrap_or(0)
    }

    /// Checks the stages against the model: each stage's micro-shards are of one kind and
    /// partition its range, the cost tables have the stages' shape, and there is at least one
    /// micro-batch.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<(), String> {
        let want = 2 + 2 * cfg.num_hidden_layers;
        if self.stages.len() != want {
            return Err(format!(
                "{} stages; the model has {want} (embed, attention and MLP per layer, head)",
                self.stages.len()
            ));
        }
        if self.micro_batches == 0 {
            return Err("a step needs at least one micro-batch".into());
        }
        for (k, stage) in self.stages.iter().enumerate() {
            if self.state_bytes.get(k).map(Vec::len) != Some(stage.len())
                || self.work_bytes.get(k).map(Vec::len) != Some(stage.len())
            {
                return Err(format!(
                    "stage {k}: cost tables do not match its micro-shards"
                ));
            }
            let layer = (k.max(1) - 1) / 2;
            let total = if k == 0 || k == want - 1 {
                cfg.vocab_size
            } else if k % 2 == 1 {
                cfg.num_key_value_heads
            } else {
                cfg.intermediate_size
            };
            let mut next = 0;
            for s in stage {
                s.validate(cfg).map_err(|e| e.to_string())?;
                let ok = match s {
                    MicroShard::Embed { .. } => k == 0,
                    MicroShard::Head { .. } => k == want - 1,
                    MicroShard::Attn { layer: l, .. } => k % 2 == 1 && k < want - 1 && *l == layer,
                    MicroShard::Mlp { layer: l, .. } => k % 2 == 0 && k > 0 && *l == layer,
                };
                if !ok || s.units().start != next {
                    return Err(format!("stage {k}: {s} is out of place"));
                }
                next = s.units().end;
            }
            if stage.is_empty() || next != total {
                return Err(format!("stage {k}: micro-shards do not cover 0..{total}"));
            }
        }
        Ok(())
    }
}

impl RunSpec {
    /// Held-out sequences reserved at the end of the data (0 without a held-out check).
    pub fn held_out(&self) -> u64 {
        match (&self.checks, &self.pipeline) {
            (Some(c), None) => c.held_out,
            _ => 0,
        }
    }

    /// Tokens at the start of the stream that training samples come from: all of them but the
    /// held-out sequences.
    pub fn training_tokens(&self) -> usize {
        match self.held_out() {
            0 => self.tokens.len(),
            n => self
                .tokens
                .len()
                .saturating_sub((n * self.seq) as usize + 1),
        }
    }

    /// The held-out sequences as one batch (`seq` inputs and their next tokens each, end to
    /// end after the training tokens); `None` without a held-out check.
    pub fn held_out_batch(&self) -> Option<Batch> {
        let (seq, n) = (self.seq as usize, self.held_out() as usize);
        let start = self.training_tokens();
        let rows: Option<Vec<&[u32]>> = (0..n)
            .map(|j| self.tokens.get(start + j * seq..start + (j + 1) * seq + 1))
            .collect();
        (n > 0).then_some(Batch::from_rows(rows?, seq))
    }

    /// The sparse configuration, when syncing sparsely.
    pub fn sparse(&self) -> Option<SparseConfig> {
        SparseConfig::from_sync(&self.sync)
    }

    /// How often a session is asked to send a heartbeat (`Welcome`): a quarter of the silence
    /// allowed, between 1 and 15 s, so three may go missing before it counts as silent.
    pub fn heartbeat_every_ms(&self) -> u64 {
        (self.silence_ms / 4).clamp(1_000, 15_000)
    }

    /// How often a session holding no lease is asked to heartbeat (`Welcome`): four times
    /// less often than a leased one, at most once a minute (as often as a contributor goes
    /// at its rarest).
    pub fn idle_heartbeat_every_ms(&self) -> u64 {
        (self.heartbeat_every_ms() * 4).min(60_000)
    }

    /// How long a session holding no lease may be silent: the run's silence, or four idle
    /// heartbeats if longer (three may go missing). It holds nothing the run waits for.
    pub fn idle_silence_ms(&self) -> u64 {
        self.silence_ms.max(self.idle_heartbeat_every_ms() * 4)
    }

    /// Bytes a whole-model replica needs: weights, gradients, optimizer moments and a copy of
    /// the round-start weights (f32), plus activations for one micro-batch (rough upper bound).
    pub fn replica_bytes(&self) -> u64 {
        let p = self.model.parameter_count();
        let states = match self.optimizer {
            InnerOptimizer::Sgd => 3,
            InnerOptimizer::AdamW { .. } => 5,
        };
        let acts = self.batch
            * self.seq
            * (self.model.hidden_size as u64 * 16
                + self.model.intermediate_size as u64 * 4
                + self.model.vocab_size as u64)
            * 4;
        p * 4 * states + acts
    }
}
