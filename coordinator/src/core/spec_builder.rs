//! A [`RunSpec`] from a model and a token stream, with the defaults of a small run, changed
//! field by field: simulations and tests say only what their run is about instead of spelling
//! out every field. A run configuration (`config/`) sets every field itself.

use std::sync::Arc;

use tessera_compute::ModelConfig;
use tessera_protocol::messages::{InnerOptimizer, SyncMode};
use tessera_train::schedule::Schedule;

use super::spec::{ChecksSpec, PipelineSpec, RunSpec};

impl RunSpec {
    /// A whole-model run named `name` of `model` on `tokens`: one round of one replica slot,
    /// one inner SGD step at a constant rate of 0.1 on one sequence of 8 tokens, outer SGD at
    /// rate 1 with dense sync and no median clip, seed 1, deadlines of ten minutes (twenty for a
    /// round's quorum, which is every slot), no checks.
    pub fn new(name: impl Into<String>, model: ModelConfig, tokens: impl Into<Arc<[u32]>>) -> Self {
        RunSpec {
            name: name.into(),
            model,
            tokens: tokens.into(),
            seed: 1,
            rounds: 1,
            replicas: 1,
            max_replicas: 1,
            inner_steps: 1,
            batch: 1,
            seq: 8,
            optimizer: InnerOptimizer::Sgd,
            inner_lr: Schedule::constant(0.1),
            inner_clip: None,
            outer_lr: 1.0,
            clip_to_median: false,
            sync: SyncMode::Dense,
            unit_deadline_ms: 600_000,
            silence_ms: 600_000,
            quorum: u64::MAX,
            round_deadline_ms: 1_200_000,
            weights_frame_elems: 1 << 20,
            pipeline: None,
            checks: None,
            invited: None,
        }
    }

    /// Seed of the weights and the data order.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Rounds (or, in a pipeline run, optimizer steps).
    pub fn with_rounds(mut self, rounds: u64) -> Self {
        self.rounds = rounds;
        self
    }

    /// Replica slots per round, a fixed count (a round closes only when all are accepted).
    pub fn with_replicas(mut self, replicas: u64) -> Self {
        self.replicas = replicas;
        self.max_replicas = replicas;
        self
    }

    /// Replica slots per round between `least` and `most`, following the ready contributors.
    pub fn with_replica_range(mut self, least: u64, most: u64) -> Self {
        self.replicas = least;
        self.max_replicas = most;
        self
    }

    /// A round closes on `quorum` accepted slots once `deadline_ms` has passed since it opened.
    pub fn with_quorum(mut self, quorum: u64, deadline_ms: u64) -> Self {
        self.quorum = quorum;
        self.round_deadline_ms = deadline_ms;
        self
    }

    /// Each unit's shape: `inner_steps` steps of `batch` sequences of `seq` tokens (a pipeline
    /// run's micro-batch is one sequence of `seq` tokens).
    pub fn with_units(mut self, inner_steps: u64, batch: u64, seq: u64) -> Self {
        self.inner_steps = inner_steps;
        self.batch = batch;
        self.seq = seq;
        self
    }

    /// The inner (or a pipeline step's) optimizer, its learning rate and gradient clip.
    pub fn with_optimizer(
        mut self,
        optimizer: InnerOptimizer,
        lr: Schedule,
        clip: Option<f32>,
    ) -> Self {
        self.optimizer = optimizer;
        self.inner_lr = lr;
        self.inner_clip = clip;
        self
    }

    /// How whole-model rounds aggregate: outer learning rate, median clip, dense or sparse.
    pub fn with_outer(mut self, lr: f32, clip_to_median: bool, sync: SyncMode) -> Self {
        self.outer_lr = lr;
        self.clip_to_median = clip_to_median;
        self.sync = sync;
        self
    }

    /// A unit's deadline and how long a silent contributor is kept (ms).
    pub fn with_deadlines(mut self, unit_ms: u64, silence_ms: u64) -> Self {
        self.unit_deadline_ms = unit_ms;
        self.silence_ms = silence_ms;
        self
    }

    /// Largest frame payload for weights, in f32 elements.
    pub fn with_weights_frame(mut self, elems: usize) -> Self {
        self.weights_frame_elems = elems;
        self
    }

    /// Micro-shard leases in a pipeline instead of whole-model replicas.
    pub fn with_pipeline(mut self, pipeline: PipelineSpec) -> Self {
        self.pipeline = Some(pipeline);
        self
    }

    /// Checks of untrusted work.
    pub fn with_checks(mut self, checks: ChecksSpec) -> Self {
        self.checks = Some(checks);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelConfig {
        ModelConfig::tiny()
    }

    #[test]
    fn a_new_spec_is_a_small_unchecked_whole_model_run() {
        let s = RunSpec::new("t", model(), vec![1u32, 2, 3]);
        assert_eq!(s.name, "t");
        assert_eq!(&*s.tokens, &[1, 2, 3]);
        assert_eq!((s.rounds, s.replicas, s.inner_steps), (1, 1, 1));
        assert!(s.pipeline.is_none() && s.checks.is_none());
        assert_eq!(s.sync, SyncMode::Dense);
    }

    #[test]
    fn each_setter_changes_its_fields_only() {
        let base = RunSpec::new("t", model(), vec![0u32; 4]);
        let s = base
            .clone()
            .with_seed(9)
            .with_rounds(5)
            .with_replicas(3)
            .with_units(2, 4, 16)
            .with_outer(0.5, true, SyncMode::Dense)
            .with_deadlines(1_000, 2_000)
            .with_weights_frame(64)
            .with_checks(ChecksSpec::default());
        assert_eq!((s.seed, s.rounds, s.replicas), (9, 5, 3));
        assert_eq!((s.inner_steps, s.batch, s.seq), (2, 4, 16));
        assert_eq!((s.outer_lr, s.clip_to_median), (0.5, true));
        assert_eq!((s.unit_deadline_ms, s.silence_ms), (1_000, 2_000));
        assert_eq!(s.weights_frame_elems, 64);
        assert_eq!(s.checks, Some(ChecksSpec::default()));
        assert_eq!(s.optimizer, base.optimizer);
        assert_eq!(s.inner_lr, base.inner_lr);
        assert_eq!(s.pipeline, None);
    }
}
