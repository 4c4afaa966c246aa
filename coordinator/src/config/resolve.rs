//! Each section of a run configuration turned into its part of the [`RunSpec`]: the model and
//! its first weights, the tokens, SparseLoCo's settings, the pipeline's micro-shards and the
//! checks. `RunConfig::resolve` (in `mod.rs`) puts the parts together.

use std::path::Path;

use tessera_compute::hf::params_from_safetensors;
use tessera_compute::reference::ModelParams;
use tessera_compute::ModelConfig;
use tessera_plan::units::parse_bytes;
use tessera_plan::{Plan, PlanOptions};
use tessera_protocol::messages::SyncMode;
use tessera_protocol::ActEncoding;
use tessera_train::data::BUILT_IN_CORPUS;

use super::choices::Sync;
use super::error::ConfigError;
use super::sections::{ChecksSection, DataSection, ModelSection, PipelineSection, TrainSection};
use crate::core::spec::{ChecksSpec, PipelineSpec, MIN_HELD_OUT};
use crate::data::{documents, Format, Tokenizer};

#[cfg(doc)]
use crate::core::RunSpec;

/// The most sequences held out by default for the held-out loss check.
const MAX_HELD_OUT: u64 = 64;

/// A byte-level model preset: `tiny-byte` (d 64, 2 layers) or `small-byte` (d 128, 4 layers).
pub fn preset(name: &str) -> Option<ModelConfig> {
    match name {
        "tiny-byte" | "small-byte" => tessera_plan::preset(name),
        _ => None,
    }
}

/// `dense`, or `sparse` (SparseLoCo with the `[train]` chunk, k and beta, checked); `setting`
/// names the setting in errors.
pub(super) fn sync_mode(
    choice: Sync,
    t: &TrainSection,
    setting: &'static str,
) -> Result<SyncMode, ConfigError> {
    let mode = choice.mode(t.chunk, t.k, t.beta);
    if let Some(sc) = tessera_train::sparseloco::SparseConfig::from_sync(&mode) {
        sc.validate()
            .map_err(|source| ConfigError::Sparse { setting, source })?;
    }
    Ok(mode)
}

/// The checks of a run: the `[checks]` section over the defaults (on). A pipeline's gradient
/// sums compressed with error feedback cannot be checked (the feedback is private to each
/// lease), so checks are off by default there and an error when asked for.
pub(super) fn checks_spec(
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
        return Err(ConfigError::ChecksOfSparseGrads);
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
        agree: c.agree.unwrap_or(d.agree),
        probation_share: c.probation_share.unwrap_or(d.probation_share),
    };
    if spec.replay && !whole_model {
        return Err(ConfigError::WholeModelCheck("replay"));
    }
    if c.held_out.is_some_and(|n| n > 0) && !whole_model {
        return Err(ConfigError::WholeModelCheck("held_out"));
    }
    // Every sequence held out is one the run cannot train on: a unit's batch must still fit.
    if spec.held_out > 0 && samples.saturating_sub(spec.held_out + 1) < batch {
        return Err(ConfigError::HeldOutTooMany {
            held_out: spec.held_out,
            samples,
            batch,
        });
    }
    spec.validate()?;
    Ok(Some(spec))
}

/// The planner's micro-shards for the `[pipeline]` section.
pub(super) fn pipeline_spec(
    p: &PipelineSection,
    model: &ModelConfig,
    seq: u64,
    grads: SyncMode,
) -> Result<PipelineSpec, ConfigError> {
    let activations = ActEncoding::from(p.activations);
    if p.micro_batches == 0 {
        return Err(ConfigError::NotPositive("[pipeline] micro_batches"));
    }
    let options = PlanOptions {
        seq: seq as usize,
        budget: parse_bytes(&p.budget)?,
        act_bytes: activations.bytes() as u64,
        micro_batches: p.micro_batches as usize,
        ..PlanOptions::default()
    };
    let plan = Plan::new(model, options)?;
    let mut spec = PipelineSpec::from_plan(&plan, p.micro_batches, activations, grads);
    if let Some(m) = p.max_activation {
        if !(m.is_finite() && m > 0.0) {
            return Err(ConfigError::NotPositive("[pipeline] max_activation"));
        }
        spec.max_activation = m;
    }
    spec.validate(model).map_err(ConfigError::Pipeline)?;
    Ok(spec)
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::file(path, e))
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    String::from_utf8(read(path)?).map_err(|_| ConfigError::file(path, "not UTF-8 text"))
}

/// The model and its initial weights: a preset's or a `config.json`'s with random weights
/// from `seed`, or a checkpoint's (`init_from`); paths resolve against `base`.
pub(super) fn model_and_weights(
    m: &ModelSection,
    seed: u64,
    base: &Path,
) -> Result<(ModelConfig, ModelParams<f32>), ConfigError> {
    let given = [
        m.preset.is_some(),
        m.config.is_some(),
        m.init_from.is_some(),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if given > 1 {
        return Err(ConfigError::ModelSources);
    }
    if let Some(dir) = &m.init_from {
        let dir = base.join(dir);
        let cfg = ModelConfig::from_hf_json(&read_text(&dir.join("config.json"))?)?;
        let w = params_from_safetensors(&cfg, &read(&dir.join("model.safetensors"))?)?;
        return Ok((cfg, w));
    }
    let cfg = match (&m.config, &m.preset) {
        (Some(p), _) => ModelConfig::from_hf_json(&read_text(&base.join(p))?)?,
        (None, p) => {
            let name = p.as_deref().unwrap_or("tiny-byte");
            preset(name).ok_or_else(|| ConfigError::UnknownPreset(name.into()))?
        }
    };
    let w = ModelParams::random(&cfg, seed);
    Ok((cfg, w))
}

/// The training data as token ids, each inside `model`'s vocabulary; paths resolve against
/// `base`.
pub(super) fn tokens(
    d: &DataSection,
    base: &Path,
    model: &ModelConfig,
) -> Result<Vec<u32>, ConfigError> {
    let tokenizer = match &d.tokenizer {
        Some(p) => Tokenizer::from_file(&base.join(p))?,
        None => Tokenizer::Bytes,
    };
    let docs = match (&d.path, d.builtin) {
        (Some(p), _) => {
            let p = base.join(p);
            documents(&p, Format::pick(d.format, &p), &d.field)?
        }
        (None, true) => vec![BUILT_IN_CORPUS.to_string()],
        (None, false) => return Err(ConfigError::NoData),
    };
    let tokens = tokenizer.encode(&docs)?;
    if let Some(&max) = tokens.iter().max() {
        if max as usize >= model.vocab_size {
            return Err(ConfigError::Vocabulary {
                max,
                tokenizer: tokenizer.vocab_size(),
                model: model.vocab_size,
            });
        }
    }
    Ok(tokens)
}

/// The identities `[admission] invite` lets join, if it limits them.
pub(super) fn invited(
    a: &super::AdmissionSection,
) -> Result<Option<std::collections::BTreeSet<tessera_protocol::PublicKey>>, ConfigError> {
    let Some(keys) = &a.invite else {
        return Ok(None);
    };
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            tessera_protocol::PublicKey::from_hex(k)
                .map_err(|_| super::error::BadInvite { position: i + 1 }.into())
        })
        .collect::<Result<_, ConfigError>>()
        .map(Some)
}
