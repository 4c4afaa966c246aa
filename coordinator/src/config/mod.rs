//! The run configuration file (TOML) and its resolution into a [`RunSpec`] and initial weights:
//! the model from a preset, a transformers `config.json`, or a checkpoint (`init_from`); the
//! data from the built-in corpus or a text file (byte-level tokens).
//!
//! ```toml
//! name = "demo"
//! seed = 1
//! rounds = 20
//! [model]
//! preset = "tiny-byte"        # or: config = "config.json", or: init_from = "checkpoint-dir"
//! [data]
//! builtin = true              # or: path = "corpus.txt" / "data.jsonl" / "data.parquet"
//! field = "text"              # JSON Lines / Parquet text field
//! tokenizer = "tokenizer.json" # optional; byte-level by default
//! [train]
//! replicas = 3               # slots a round opens with (its least)
//! max_replicas = 16           # slots it grows to, one per further ready contributor
//! inner_steps = 4
//! sync = "sparse"             # or "dense"
//! optimizer = "adamw"         # or "sgd"
//! unit_deadline_secs = 120    # a unit not delivered by then runs elsewhere
//! quorum = 3                  # optional: accepted slots that close a round once
//! round_deadline_secs = 240   #   this long has passed (default: every replica; 2 x units)
//! ```
//!
//! A contributor whose unit for a slot was refused or expired does not get that slot again in
//! the same round; a quorum below `replicas` lets a round close when identities take slots and
//! never deliver.
//!
//! With a `[pipeline]` section the run trains micro-shard leases instead of whole-model
//! replicas: the planner cuts the model so that each micro-shard fits `budget`, `rounds` counts
//! optimizer steps of `micro_batches` sequences of `[train] seq` tokens, and `[train]` gives
//! the optimizer, learning rate, warmup (in steps) and clip:
//!
//! ```toml
//! [pipeline]
//! budget = "2MiB"             # the smallest contributor's lease
//! micro_batches = 8
//! activations = "bf16"        # or "f32", "int8"
//! grads = "dense"             # or "sparse": SparseLoCo-compressed gradient sums
//! ```

use std::path::Path;
use std::sync::Arc;

use tessera_compute::reference::ModelParams;
use tessera_protocol::messages::SyncMode;
use tessera_train::data::Sampler;
use tessera_train::schedule::Schedule;

use crate::core::RunSpec;

mod choices;
mod error;
mod resolve;
mod sections;

pub use choices::{Activations, Optimizer, Sync};
pub use error::ConfigError;
pub use resolve::preset;
pub use sections::{
    AdmissionSection, ChecksSection, DataSection, ModelSection, PipelineSection, RunConfig,
    TrainSection,
};

/// The fewest updates a whole-model round that checks work may average (`replicas` and
/// `quorum`): the checks compare each with the round's median.
pub const MIN_CHECKED_REPLICAS: u64 = 3;

/// The most replica slots a round grows to where `[train] max_replicas` is not set (or
/// `replicas`, when that is more).
pub const DEFAULT_MAX_REPLICAS: u64 = 16;

impl RunConfig {
    /// Parses the TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// The model, the data and the initial weights; relative paths resolve against `base`.
    pub fn resolve(&self, base: &Path) -> Result<(RunSpec, ModelParams<f32>), ConfigError> {
        let (model, weights) = resolve::model_and_weights(&self.model, self.seed, base)?;
        let tokens = resolve::tokens(&self.data, base, &model)?;
        let t = &self.train;
        if t.replicas == 0 || t.inner_steps == 0 || t.batch == 0 || t.seq == 0 || self.rounds == 0 {
            return Err(ConfigError::NotPositive(
                "rounds, replicas, inner_steps, batch and seq",
            ));
        }
        if (tokens.len() as u64) <= t.seq * t.batch {
            return Err(ConfigError::TooFewTokens {
                tokens: tokens.len(),
                batch: t.batch,
                seq: t.seq,
            });
        }
        let quorum = t.quorum.unwrap_or(t.replicas);
        if quorum == 0 || quorum > t.replicas {
            return Err(ConfigError::Quorum {
                quorum,
                replicas: t.replicas,
            });
        }
        let max_replicas = t
            .max_replicas
            .unwrap_or_else(|| t.replicas.max(DEFAULT_MAX_REPLICAS));
        if max_replicas < t.replicas || max_replicas > crate::core::spec::MAX_REPLICAS {
            return Err(ConfigError::MaxReplicas {
                max: max_replicas,
                replicas: t.replicas,
            });
        }
        let optimizer = t.optimizer.inner(t.weight_decay);
        let sync = resolve::sync_mode(t.sync, t, "sync")?;
        let pipeline = match &self.pipeline {
            Some(p) => Some(resolve::pipeline_spec(
                p,
                &model,
                t.seq,
                resolve::sync_mode(p.grads, t, "[pipeline] grads")?,
            )?),
            None => None,
        };
        let checks = resolve::checks_spec(
            self.checks.as_ref(),
            pipeline.as_ref().map(|p| &p.grads),
            &sync,
            Sampler::count(tokens.len(), t.seq as usize) as u64,
            t.batch,
        )?;
        // Checks compare each update with its round's median: of fewer than three, a median
        // says nothing, so a checked whole-model round has at least three (a full one and a
        // quorum alike).
        if pipeline.is_none() && checks.is_some() && t.replicas.min(quorum) < MIN_CHECKED_REPLICAS {
            return Err(ConfigError::TooFewChecked {
                replicas: t.replicas,
                quorum,
            });
        }
        let invited = resolve::invited(&self.admission)?;
        let total = if pipeline.is_some() {
            self.rounds
        } else {
            self.rounds * t.inner_steps
        };
        let spec = RunSpec {
            name: self.name.clone(),
            model,
            tokens: Arc::from(tokens),
            seed: self.seed,
            rounds: self.rounds,
            replicas: t.replicas,
            max_replicas,
            inner_steps: t.inner_steps,
            batch: t.batch,
            seq: t.seq,
            optimizer,
            inner_lr: Schedule {
                peak: t.lr,
                warmup: t.warmup.min(total),
                total,
                floor: t.lr_floor,
            },
            inner_clip: (t.clip > 0.0).then_some(t.clip),
            outer_lr: t
                .outer_lr
                .unwrap_or(if sync == SyncMode::Dense { 1.0 } else { 4.0 }),
            clip_to_median: t.clip_to_median,
            sync,
            unit_deadline_ms: t.unit_deadline_secs * 1000,
            silence_ms: t.silence_secs * 1000,
            quorum,
            round_deadline_ms: t
                .round_deadline_secs
                .unwrap_or(2 * t.unit_deadline_secs)
                .saturating_mul(1000),
            weights_frame_elems: 1 << 20,
            pipeline,
            checks,
            invited,
        };
        Ok((spec, weights))
    }
}
