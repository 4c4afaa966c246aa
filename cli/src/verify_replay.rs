//! `tessera verify`'s replay: from a checkpoint, applies each closed round's or step's kept
//! aggregate by the run's rules (the coordinator's own [`rules::apply`]) and confirms that the
//! weights reached are the ones the log recorded for every later version, so a checkpoint's
//! hash follows from the log's aggregates, not only from the coordinator's word.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tessera_compute::hf::params_from_safetensors;
use tessera_compute::reference::ModelParams;
use tessera_compute::ModelConfig;
use tessera_coordinator::core::rules::{self, RunRules};
use tessera_coordinator::core::weights_digest;
use tessera_protocol::log::{LogEvent, SignedEntry};

/// What a replay covered.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Versions whose weights were reached by applying their aggregate.
    pub versions: usize,
    /// The checkpoints replays started from.
    pub starts: Vec<u64>,
    /// Steps whose logged scalars (`Stepped`) were the ones the replay computed.
    pub scalars: usize,
}

/// The run's rules from `dir/rules.json`, held to the log's `Started` entry.
pub fn rules(entries: &[SignedEntry], dir: &Path) -> Result<RunRules> {
    let path = dir.join("rules.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rules: RunRules = serde_json::from_str(&text)
        .with_context(|| format!("{} does not hold a run's rules", path.display()))?;
    match entries.first().map(|e| &e.entry.event) {
        Some(LogEvent::Started { config, .. }) if *config == rules.digest() => Ok(rules),
        Some(LogEvent::Started { .. }) => bail!(
            "log entry 0: {} is not the configuration the run started with (its digest differs)",
            path.display()
        ),
        _ => bail!("log entry 0: the log does not start with the run's start"),
    }
}

fn load(cfg: &ModelConfig, path: &Path) -> Result<Option<ModelParams<f32>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            params_from_safetensors(cfg, &bytes)
                .with_context(|| format!("{} does not load", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A checkpoint's version, weights and AdamW moments (pipeline runs, after a step).
pub type State = (
    u64,
    ModelParams<f32>,
    Option<(ModelParams<f32>, ModelParams<f32>)>,
);

/// The weights (and AdamW moments) of checkpoint `version` in its folder `ck`
/// (`closes::checkpoint_dir`), if it is there.
pub fn checkpoint(cfg: &ModelConfig, ck: &Path, version: u64) -> Result<Option<State>> {
    let Some(w) = load(cfg, &ck.join("model.safetensors"))? else {
        return Ok(None);
    };
    let m = load(cfg, &ck.join("adam_m.safetensors"))?;
    let v = load(cfg, &ck.join("adam_v.safetensors"))?;
    let moments = match (m, v) {
        (Some(m), Some(v)) => Some((m, v)),
        (None, None) => None,
        _ => bail!(
            "{}: one of the two AdamW moment files is missing",
            ck.display()
        ),
    };
    Ok(Some((version, w, moments)))
}

/// Replays every closed version from the earliest checkpoint before it (starting again from a
/// checkpoint only where the chain breaks); an error names the first entry a replay
/// contradicts.
pub fn replay(entries: &[SignedEntry], dir: &Path, rules: &RunRules) -> Result<Replayed> {
    let cfg = rules.model_config().map_err(anyhow::Error::msg)?;
    let mut out = Replayed::default();
    let mut state: Option<State> = None;
    let closes = crate::closes::closes(entries);
    for (&version, close) in &closes {
        let (index, number) = (close.head.index, close.round);
        let (weights, aggregate) = (close.weights, close.aggregate);
        let Some(before) = version.checked_sub(1) else {
            bail!("log entry {index}: a round closed into version 0");
        };
        if state.as_ref().map(|s| s.0) != Some(before) {
            let known = closes.get(&before).map(|c| &c.weights);
            let ck = crate::closes::checkpoint_dir(dir, before, known)?;
            state = checkpoint(&cfg, &ck, before)?;
            match &state {
                Some(_) => out.starts.push(before),
                None => bail!(
                    "log entry {index}: version {version} cannot be replayed: no checkpoint of version {before} in {} to start from",
                    dir.display()
                ),
            }
        }
        let path = crate::closes::checkpoint_dir(dir, version, Some(&weights))?
            .join("aggregate.safetensors");
        let Some(agg) = load(&cfg.untied(), &path)? else {
            bail!(
                "log entry {index}: {} is missing: version {version} cannot be replayed",
                path.display()
            );
        };
        if weights_digest(&agg) != aggregate {
            bail!(
                "log entry {index}: {} is not the aggregate the log recorded for version {version}",
                path.display()
            );
        }
        let Some((_, w, moments)) = state.as_mut() else {
            continue;
        };
        let scalars = match rules::apply(
            &rules.step,
            number,
            w,
            moments,
            &agg,
            cfg.tie_word_embeddings,
        ) {
            Ok(s) => s.map(|s| s.to_bits()),
            Err(e) => bail!(
                "log entry {index}: the recorded aggregate of version {version} cannot be applied to version {before}: {e}"
            ),
        };
        match (scalars, close.scalars) {
            (Some(want), Some((at, logged))) if want != logged => bail!(
                "log entry {at}: step {number}'s logged scalars {} are not the ones its rules and gradient sums give ({})",
                bits_text(&logged),
                bits_text(&want)
            ),
            (Some(_), None) if rules.records >= 1 => bail!(
                "log entry {index}: step {number} closed without a Stepped entry of the scalars its holders used"
            ),
            (Some(_), Some(_)) => out.scalars += 1,
            _ => {}
        }
        if weights_digest(w) != weights {
            bail!(
                "log entry {index}: applying the recorded aggregate to version {before} does not give the weights the log recorded for version {version}"
            );
        }
        if let Some(s) = state.as_mut() {
            s.0 = version;
        }
        out.versions += 1;
    }
    Ok(out)
}

/// A step's scalars for people: each f32 (lr, decay, bias corrections, clip) with its bits.
fn bits_text(bits: &[u32; 5]) -> String {
    let parts: Vec<String> = bits
        .iter()
        .map(|&b| format!("{:e} ({b:#010x})", f32::from_bits(b)))
        .collect();
    format!("[{}]", parts.join(", "))
}
