//! What a run is: the model, the data, and how to train, resolved (no file paths) for the core.

use std::sync::Arc;

use tessera_compute::ModelConfig;
use tessera_protocol::messages::{InnerOptimizer, SyncMode};
use tessera_train::schedule::Schedule;
use tessera_train::sparseloco::SparseConfig;

/// A run, resolved.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Run name.
    pub name: String,
    /// The model.
    pub model: ModelConfig,
    /// Training token stream.
    pub tokens: Arc<[u32]>,
    /// Seed of weights and data order.
    pub seed: u64,
    /// Rounds (outer steps) to train; the run finishes after the last.
    pub rounds: u64,
    /// Replica slots per round.
    pub replicas: u64,
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
    /// Largest frame payload for weights, in f32 elements.
    pub weights_frame_elems: usize,
}

impl RunSpec {
    /// The sparse configuration, when syncing sparsely.
    pub fn sparse(&self) -> Option<SparseConfig> {
        SparseConfig::from_sync(&self.sync)
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
