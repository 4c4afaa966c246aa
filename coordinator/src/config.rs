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
//! replicas = 3
//! inner_steps = 4
//! sync = "sparse"             # or "dense"
//! ```
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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tessera_compute::hf::params_from_safetensors;
use tessera_compute::reference::ModelParams;
use tessera_compute::ModelConfig;
use tessera_protocol::messages::{InnerOptimizer, SyncMode};
use tessera_train::data::{Sampler, BUILT_IN_CORPUS};

use crate::data::{documents, Format, Tokenizer};
use tessera_train::schedule::Schedule;

use crate::core::spec::{ChecksSpec, PipelineSpec, MIN_HELD_OUT};
use crate::core::RunSpec;
use tessera_plan::units::parse_bytes;
use tessera_plan::{Plan, PlanOptions};
use tessera_protocol::ActEncoding;

/// The most sequences held out by default for the held-out loss check.
const MAX_HELD_OUT: u64 = 64;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML or wrong fields.
    #[error("run config: {0}")]
    Parse(String),
    /// A value that cannot work.
    #[error("run config: {0}")]
    Invalid(String),
    /// A file it names cannot be read.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

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
    /// `f32`, `bf16` or `int8`.
    #[serde(default = "default_activations")]
    pub activations: String,
    /// How leases send their gradient sums: `dense` (default) or `sparse` (SparseLoCo with the
    /// `[train]` chunk, k and beta, error feedback on the contributor).
    #[serde(default = "default_grads")]
    pub grads: String,
}

fn default_grads() -> String {
    "dense".into()
}

fn default_micro_batches() -> u64 {
    8
}
fn default_activations() -> String {
    "bf16".into()
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
    pub format: Option<String>,
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
    /// Replica slots per round.
    pub replicas: u64,
    /// Inner steps per replica per round.
    pub inner_steps: u64,
    /// Sequences per inner step.
    pub batch: u64,
    /// Tokens per sequence.
    pub seq: u64,
    /// `adamw` or `sgd`.
    pub optimizer: String,
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
    /// chunk (on the demo run, 12 rounds: held-out 3.63 at 1.0, 2.83 at 2.0, 2.58 at 4.0,
    /// against 2.46 for dense at 1.0; `cargo run --release -p tessera-bench --bin sync`).
    pub outer_lr: Option<f32>,
    /// `sparse` (SparseLoCo) or `dense`.
    pub sync: String,
    /// SparseLoCo chunk side.
    pub chunk: u32,
    /// SparseLoCo entries per chunk.
    pub k: u32,
    /// SparseLoCo error-feedback decay.
    pub beta: f32,
    /// Clip replicas' pseudo-gradients to the median norm.
    pub clip_to_median: bool,
    /// Seconds before an unfinished unit is re-assigned.
    pub unit_deadline_secs: u64,
    /// Seconds of silence before a contributor is dropped.
    pub silence_secs: u64,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            replicas: 3,
            inner_steps: 4,
            batch: 4,
            seq: 64,
            optimizer: "adamw".into(),
            lr: 3e-3,
            warmup: 8,
            lr_floor: 0.1,
            weight_decay: 0.01,
            clip: 1.0,
            outer_lr: None,
            sync: "sparse".into(),
            chunk: 64,
            k: 64,
            beta: 0.95,
            clip_to_median: true,
            unit_deadline_secs: 120,
            silence_secs: 60,
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

/// A byte-level model preset: `tiny-byte` (d 64, 2 layers) or `small-byte` (d 128, 4 layers).
pub fn preset(name: &str) -> Option<ModelConfig> {
    match name {
        "tiny-byte" | "small-byte" => tessera_plan::preset(name),
        _ => None,
    }
}

/// `dense`, or `sparse` (SparseLoCo with the `[train]` chunk, k and beta, checked); `what` names
/// the setting in errors.
fn sync_mode(name: &str, t: &TrainSection, what: &str) -> Result<SyncMode, ConfigError> {
    let mode = match name {
        "dense" => SyncMode::Dense,
        "sparse" => SyncMode::Sparse {
            chunk: [t.chunk, t.chunk],
            k: t.k,
            beta: t.beta,
        },
        s => {
            return Err(ConfigError::Invalid(format!(
                "{what} {s:?} is not sparse or dense"
            )))
        }
    };
    if let Some(sc) = tessera_train::sparseloco::SparseConfig::from_sync(&mode) {
        sc.validate()
            .map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?;
    }
    Ok(mode)
}

/// The checks of a run: the `[checks]` section over the defaults (on). A pipeline's gradient
/// sums compressed with error feedback cannot be checked (the feedback is private to each
/// lease), so checks are off by default there and an error when asked for.
fn checks_spec(
    c: Option<&ChecksSection>,
    pipeline_grads: Option<&SyncMode>,
    sync: &SyncMode,
    samples: u64,
    batch: u64,
) -> Result<Option<ChecksSpec>, ConfigError> {
    let sparse = pipeline_grads.is_some_and(|g| *g != SyncMode::Dense);
    // Replays are of whole-model units: by default where updates are dense; SparseLoCo runs may
    // ask for them, at the price of error feedback (units then start fresh).
    let whole_model = pipeline_grads.is_none();
    let replayable = whole_model && *sync == SyncMode::Dense;
    // Held-out sequences: a tenth of the data, at most 64 (too few for a comparison: none).
    let held_out = match (samples / 10).min(MAX_HELD_OUT) {
        n if whole_model && n >= MIN_HELD_OUT => n,
        _ => 0,
    };
    let Some(c) = c else {
        if sparse {
            tracing::warn!("[pipeline] grads = \"sparse\": leases' work is not checked");
            return Ok(None);
        }
        return Ok(Some(ChecksSpec {
            replay: replayable,
            held_out,
            ..ChecksSpec::default()
        }));
    };
    if !c.enabled {
        return Ok(None);
    }
    if sparse {
        return Err(ConfigError::Invalid(
            "[checks] need [pipeline] grads = \"dense\": sparse gradient sums carry each lease's private error feedback, which no other lease can reproduce".into(),
        ));
    }
    let d = ChecksSpec::default();
    let spec = ChecksSpec {
        tolerance: c.tolerance.unwrap_or(d.tolerance),
        new_rate: c.new_rate.unwrap_or(d.new_rate),
        min_rate: c.min_rate.unwrap_or(d.min_rate),
        halving: c.halving.unwrap_or(d.halving),
        copy_overlap: c.copy_overlap.unwrap_or(d.copy_overlap),
        replay: c.replay.unwrap_or(replayable),
        round_tolerance: c.round_tolerance.unwrap_or(d.round_tolerance),
        held_out: c.held_out.unwrap_or(held_out),
    };
    if spec.replay && !whole_model {
        return Err(ConfigError::Invalid(
            "[checks] replay is for whole-model runs: pipeline leases are checked by second replicas".into(),
        ));
    }
    if c.held_out.is_some_and(|n| n > 0) && !whole_model {
        return Err(ConfigError::Invalid(
            "[checks] held_out is for whole-model runs: pipeline leases are checked by second replicas".into(),
        ));
    }
    // Every sequence held out is one the run cannot train on: a unit's batch must still fit.
    if spec.held_out > 0 && samples.saturating_sub(spec.held_out + 1) < batch {
        return Err(ConfigError::Invalid(format!(
            "[checks] held_out = {} leaves too few of the data's {samples} sequences to train on (batch = {batch})",
            spec.held_out
        )));
    }
    spec.validate().map_err(ConfigError::Invalid)?;
    Ok(Some(spec))
}

/// The planner's micro-shards for the `[pipeline]` section.
fn pipeline_spec(
    p: &PipelineSection,
    model: &ModelConfig,
    seq: u64,
    grads: SyncMode,
) -> Result<PipelineSpec, ConfigError> {
    let bad = |e: String| ConfigError::Invalid(format!("[pipeline] {e}"));
    let activations = ActEncoding::parse(&p.activations).map_err(bad)?;
    if p.micro_batches == 0 {
        return Err(bad("micro_batches must be positive".into()));
    }
    let budget = parse_bytes(&p.budget).map_err(|e| bad(e.to_string()))?;
    let options = PlanOptions {
        seq: seq as usize,
        budget,
        act_bytes: activations.bytes() as u64,
        micro_batches: p.micro_batches as usize,
        ..PlanOptions::default()
    };
    let plan = Plan::new(model, options).map_err(|e| bad(e.to_string()))?;
    let spec = PipelineSpec::from_plan(&plan, p.micro_batches, activations, grads);
    spec.validate(model).map_err(bad)?;
    Ok(spec)
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

impl RunConfig {
    /// Parses the TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// The model and its initial weights: a preset's or a `config.json`'s with random weights
    /// from the seed, or a checkpoint's (`init_from`).
    fn model_and_weights(
        &self,
        base: &Path,
    ) -> Result<(ModelConfig, ModelParams<f32>), ConfigError> {
        let m = &self.model;
        let given = [
            m.preset.is_some(),
            m.config.is_some(),
            m.init_from.is_some(),
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        if given > 1 {
            return Err(ConfigError::Invalid(
                "[model] takes one of preset, config, init_from".into(),
            ));
        }
        let (model, weights) = if let Some(dir) = &m.init_from {
            let dir = base.join(dir);
            let cfg_text = String::from_utf8(read(&dir.join("config.json"))?)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            let cfg = ModelConfig::from_hf_json(&cfg_text)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            let w = params_from_safetensors(&cfg, &read(&dir.join("model.safetensors"))?)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            (cfg, w)
        } else {
            let cfg = match (&m.config, &m.preset) {
                (Some(p), _) => {
                    let text = String::from_utf8(read(&base.join(p))?)
                        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
                    ModelConfig::from_hf_json(&text)
                        .map_err(|e| ConfigError::Invalid(e.to_string()))?
                }
                (None, p) => {
                    let name = p.as_deref().unwrap_or("tiny-byte");
                    preset(name).ok_or_else(|| {
                        ConfigError::Invalid(format!(
                            "unknown preset {name:?} (tiny-byte, small-byte)"
                        ))
                    })?
                }
            };
            let w = ModelParams::random(&cfg, self.seed);
            (cfg, w)
        };
        Ok((model, weights))
    }

    /// The training data as token ids, each inside `model`'s vocabulary.
    fn tokens(&self, base: &Path, model: &ModelConfig) -> Result<Vec<u32>, ConfigError> {
        let d = &self.data;
        let tokenizer = match &d.tokenizer {
            Some(p) => Tokenizer::from_file(&base.join(p))
                .map_err(|e| ConfigError::Invalid(e.to_string()))?,
            None => Tokenizer::Bytes,
        };
        let docs = match (&d.path, d.builtin) {
            (Some(p), _) => {
                let p = base.join(p);
                let format = Format::pick(d.format.as_deref(), &p)
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?;
                documents(&p, format, &d.field).map_err(|e| ConfigError::Invalid(e.to_string()))?
            }
            (None, true) => vec![BUILT_IN_CORPUS.to_string()],
            (None, false) => {
                return Err(ConfigError::Invalid(
                    "[data] needs path = \"...\" when builtin = false".into(),
                ))
            }
        };
        let tokens = tokenizer
            .encode(&docs)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(&max) = tokens.iter().max() {
            if max as usize >= model.vocab_size {
                return Err(ConfigError::Invalid(format!(
                    "token id {max} from the tokenizer (vocabulary {}) is outside the model's vocabulary of {}",
                    tokenizer.vocab_size(),
                    model.vocab_size
                )));
            }
        }
        Ok(tokens)
    }

    /// The model, the data and the initial weights; relative paths resolve against `base`.
    pub fn resolve(&self, base: &Path) -> Result<(RunSpec, ModelParams<f32>), ConfigError> {
        let (model, weights) = self.model_and_weights(base)?;
        let tokens = self.tokens(base, &model)?;
        let t = &self.train;
        if t.replicas == 0 || t.inner_steps == 0 || t.batch == 0 || t.seq == 0 || self.rounds == 0 {
            return Err(ConfigError::Invalid(
                "rounds, replicas, inner_steps, batch and seq must be positive".into(),
            ));
        }
        if (tokens.len() as u64) <= t.seq * t.batch {
            return Err(ConfigError::Invalid(format!(
                "{} tokens of data are too few for batches of {} x {}",
                tokens.len(),
                t.batch,
                t.seq
            )));
        }
        let optimizer = match t.optimizer.as_str() {
            "sgd" => InnerOptimizer::Sgd,
            "adamw" => InnerOptimizer::AdamW {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: t.weight_decay,
            },
            o => {
                return Err(ConfigError::Invalid(format!(
                    "optimizer {o:?} is not adamw or sgd"
                )))
            }
        };
        let sync = sync_mode(&t.sync, t, "sync")?;
        let pipeline = match &self.pipeline {
            Some(p) => Some(pipeline_spec(
                p,
                &model,
                t.seq,
                sync_mode(&p.grads, t, "[pipeline] grads")?,
            )?),
            None => None,
        };
        let checks = checks_spec(
            self.checks.as_ref(),
            pipeline.as_ref().map(|p| &p.grads),
            &sync,
            Sampler::count(tokens.len(), t.seq as usize) as u64,
            t.batch,
        )?;
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
            weights_frame_elems: 4 << 20,
            pipeline,
            checks,
        };
        Ok((spec, weights))
    }
}
