//! The sections of a run configuration file as serde reads them, with their defaults; named
//! choices are the enums of `choices.rs`, so an unknown name fails when the file is read.

use std::path::PathBuf;

use serde::Deserialize;

use super::choices::{Activations, Optimizer, Sync};
use crate::data::Format;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run name.
    #[serde(default = "default_name")]
    pub name: String,
    /// Seed of weights and data order.
    #[serde(default = "one")]
    pub seed: u64,
    /// Rounds to train.
    #[serde(default = "default_rounds")]
    pub rounds: u64,
    /// The model.
    #[serde(default)]
    pub model: ModelSection,
    /// The data.
    #[serde(default)]
    pub data: DataSection,
    /// Training.
    #[serde(default)]
    pub train: TrainSection,
    /// Micro-shard pipeline instead of whole-model replicas.
    pub pipeline: Option<PipelineSection>,
    /// Checks of untrusted work (on by default, except for pipeline runs with sparse gradient
    /// sums).
    pub checks: Option<ChecksSection>,
    /// Who may join (anyone by default).
    #[serde(default)]
    pub admission: AdmissionSection,
}

/// `[admission]`: who may join the run.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSection {
    /// Only these identities (public keys, 64 hex characters each) may join; absent: anyone.
    pub invite: Option<Vec<String>>,
}

/// `[checks]`: how untrusted work is checked (see docs/ARCHITECTURE.md, "Checking untrusted work").
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksSection {
    /// Check at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Largest relative L2 distance between two honest results beyond the encoding's
    /// rounding (`tessera calibrate` measures it; default 1e-5).
    pub tolerance: Option<f64>,
    /// Share of a new identity's steps checked (default 1).
    pub new_rate: Option<f64>,
    /// Share checked however clean the record (default 0.1).
    pub min_rate: Option<f64>,
    /// Clean steps (steps or rounds whose checks passed) that halve the share (default 4).
    pub halving: Option<u64>,
    /// Whole-model runs: two updates whose largest entries overlap this much (and point the
    /// same way) are copies (default 0.9).
    pub copy_overlap: Option<f64>,
    /// Whole-model runs: replay drawn units on another contributor (default: on with dense
    /// sync; a SparseLoCo run may ask for it, its units then starting without error feedback).
    pub replay: Option<bool>,
    /// Largest relative distance between two honest replays of a unit (default 2.5e-4).
    pub round_tolerance: Option<f64>,
    /// Whole-model runs: sequences kept out of training at the end of the data for the
    /// held-out loss check (default: a tenth of the data's sequences, at most 64; 0 turns
    /// the check off).
    pub held_out: Option<u64>,
    /// Auditors that must agree with each other before anyone is refused (default 2, at most
    /// 8).
    pub agree: Option<u64>,
    /// Whole-model runs: the largest share of a round's slots for identities still on
    /// probation, once the run has `replicas` established contributors (default 0.4).
    pub probation_share: Option<f64>,
}

impl ChecksSection {
    /// Checks on, every choice at its default (as `[checks]` alone reads): for a section
    /// built in code, `ChecksSection { replay: Some(false), ..ChecksSection::on() }`.
    pub fn on() -> Self {
        ChecksSection {
            enabled: true,
            tolerance: None,
            new_rate: None,
            min_rate: None,
            halving: None,
            copy_overlap: None,
            replay: None,
            round_tolerance: None,
            held_out: None,
            agree: None,
            probation_share: None,
        }
    }
}

/// `[pipeline]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// The smallest contributor's lease budget (`"2MiB"`, `"0.6GiB"`, bytes): sizes the
    /// micro-shards.
    pub budget: String,
    /// Sequences per optimizer step.
    #[serde(default = "default_micro_batches")]
    pub micro_batches: u64,
    /// `f32`, `bf16` (default) or `int8`.
    #[serde(default)]
    pub activations: Activations,
    /// How leases send their gradient sums: `dense` (default) or `sparse` (SparseLoCo with the
    /// `[train]` chunk, k and beta, error feedback on the contributor).
    #[serde(default = "dense")]
    pub grads: Sync,
    /// Largest activation magnitude a result may carry (default 1e7); beyond it a result is
    /// refused on receipt.
    #[serde(default)]
    pub max_activation: Option<f32>,
}

fn dense() -> Sync {
    Sync::Dense
}

fn default_micro_batches() -> u64 {
    8
}

/// `[model]`: exactly one of `preset`, `config`, `init_from`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// `tiny-byte` (d 64, 2 layers) or `small-byte` (d 128, 4 layers); byte-level vocabulary.
    pub preset: Option<String>,
    /// A transformers `config.json`; weights start random.
    pub config: Option<PathBuf>,
    /// A checkpoint directory (`config.json` + `model.safetensors`) to start from.
    pub init_from: Option<PathBuf>,
}

/// `[data]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Use the built-in corpus.
    #[serde(default = "yes")]
    pub builtin: bool,
    /// A data file: text, JSON Lines or Parquet.
    pub path: Option<PathBuf>,
    /// `text`, `jsonl` or `parquet` (default: from the extension).
    pub format: Option<Format>,
    /// The text field of JSON Lines records or Parquet rows.
    #[serde(default = "text_field")]
    pub field: String,
    /// A Hugging Face `tokenizer.json` (default: byte-level).
    pub tokenizer: Option<PathBuf>,
}

fn text_field() -> String {
    "text".into()
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            builtin: true,
            path: None,
            format: None,
            field: text_field(),
            tokenizer: None,
        }
    }
}

/// `[train]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Replica slots a round opens with (the least it has).
    pub replicas: u64,
    /// Most replica slots a round grows to, one for each further ready contributor (default
    /// 16, or `replicas` when more; `replicas` for a fixed count).
    pub max_replicas: Option<u64>,
    /// Inner steps per replica per round.
    pub inner_steps: u64,
    /// Sequences per inner step.
    pub batch: u64,
    /// Tokens per sequence.
    pub seq: u64,
    /// `adamw` (default) or `sgd`.
    pub optimizer: Optimizer,
    /// Peak inner learning rate.
    pub lr: f64,
    /// Inner warmup steps.
    pub warmup: u64,
    /// Floor of the cosine, as a fraction of the peak.
    pub lr_floor: f64,
    /// AdamW weight decay.
    pub weight_decay: f32,
    /// Global-norm clip of inner gradients (0 = off).
    pub clip: f32,
    /// Outer SGD learning rate. Default: 1.0 with dense sync (exactly the averaged
    /// pseudo-gradient), 4.0 with SparseLoCo, whose update carries only the top-k part of each
    /// chunk (on the demo run, 24 rounds, seeds 1-3, beta 0.8: held-out gap to dense +11.9% at
    /// 2.0, +6.2% at 4.0, +8.9% at 6.0; `cargo run --release -p tessera-bench --bin sync --
    /// --rounds 24 --variant outer_lr=2.0 --variant outer_lr=4.0 --variant outer_lr=6.0`).
    pub outer_lr: Option<f32>,
    /// `sparse` (SparseLoCo, default) or `dense`.
    pub sync: Sync,
    /// SparseLoCo chunk side.
    pub chunk: u32,
    /// SparseLoCo entries per chunk.
    pub k: u32,
    /// SparseLoCo error-feedback decay (default 0.8: on the sync benchmark, 3 seeds, the held-out
    /// gap to dense was 6.2% at 0.8 against 9.9% at Covenant-72B's 0.95 after 24 rounds of 4
    /// inner steps, 3.2% against 3.9% after 48 rounds of 2; 0.6 and lower were worse).
    pub beta: f32,
    /// Clip replicas' pseudo-gradients to the median norm.
    pub clip_to_median: bool,
    /// Seconds before an unfinished unit is re-assigned.
    pub unit_deadline_secs: u64,
    /// Seconds of silence before a contributor is dropped.
    pub silence_secs: u64,
    /// Accepted slots that close a round once `round_deadline_secs` have passed since it
    /// opened (default: every replica, so only a full round closes). Fewer lets a round go on
    /// when identities take slots and never deliver.
    pub quorum: Option<u64>,
    /// Seconds after which a round closes on its quorum (default: twice `unit_deadline_secs`).
    pub round_deadline_secs: Option<u64>,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            replicas: 3,
            max_replicas: None,
            inner_steps: 4,
            batch: 4,
            seq: 64,
            optimizer: Optimizer::AdamW,
            lr: 3e-3,
            warmup: 8,
            lr_floor: 0.1,
            weight_decay: 0.01,
            clip: 1.0,
            outer_lr: None,
            sync: Sync::Sparse,
            chunk: 64,
            k: 64,
            beta: 0.8,
            clip_to_median: true,
            unit_deadline_secs: 120,
            silence_secs: 60,
            quorum: None,
            round_deadline_secs: None,
        }
    }
}

fn default_name() -> String {
    "tessera".into()
}
fn one() -> u64 {
    1
}
fn yes() -> bool {
    true
}
fn default_rounds() -> u64 {
    20
}
