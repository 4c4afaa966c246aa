//! `tessera eval`: the mean next-token cross-entropy of a checkpoint on a text file
//! (byte-level: the file's UTF-8 bytes are the token ids), over non-overlapping sequences of
//! the model's context length, the remainder dropped. The last line printed is the number.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tessera_compute::hf::params_from_safetensors;
use tessera_compute::hf_shards::{index_files, params_from_shards, INDEX};
use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::{Gpu, GpuOptions, ModelConfig};

/// Options of `eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (`config.json` + `model.safetensors`, or the files of
    /// `model.safetensors.index.json`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text file to evaluate on.
    #[arg(long)]
    pub data: PathBuf,
}

/// A checkpoint directory's shape and weights: `config.json` and `model.safetensors`, or the
/// files `model.safetensors.index.json` names (a checkpoint cut into several, as Hugging Face
/// writes large models and `tessera export` writes above its file size).
pub fn load_checkpoint(checkpoint: &Path) -> Result<(ModelConfig, ModelParams<f32>)> {
    let cfg_text = std::fs::read_to_string(checkpoint.join("config.json"))
        .with_context(|| format!("reading {}/config.json", checkpoint.display()))?;
    let cfg = ModelConfig::from_hf_json(&cfg_text)
        .with_context(|| format!("{}/config.json", checkpoint.display()))?;
    let index = checkpoint.join(INDEX);
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))?;
        let files = index_files(&text).with_context(|| format!("{}", index.display()))?;
        let files = files
            .into_iter()
            .map(|f| {
                let path = checkpoint.join(&f);
                std::fs::read(&path)
                    .with_context(|| format!("reading {}", path.display()))
                    .map(|b| (f, b))
            })
            .collect::<Result<Vec<_>>>()?;
        let params = params_from_shards(&cfg, &files)
            .with_context(|| format!("the checkpoint {}", checkpoint.display()))?;
        return Ok((cfg, params));
    }
    let bytes = std::fs::read(checkpoint.join("model.safetensors"))
        .with_context(|| format!("reading {}/model.safetensors", checkpoint.display()))?;
    let params = params_from_safetensors(&cfg, &bytes)
        .with_context(|| format!("{}/model.safetensors", checkpoint.display()))?;
    Ok((cfg, params))
}

/// Fails on the first of `tokens` (those of `what`) outside the model's vocabulary.
pub fn in_vocabulary(tokens: &[u32], cfg: &ModelConfig, what: &str) -> Result<()> {
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
        bail!(
            "token {t} of {what} is outside the model's vocabulary of {}",
            cfg.vocab_size
        );
    }
    Ok(())
}

/// Mean loss over all predicted positions.
pub async fn evaluate(checkpoint: &Path, text: &[u8]) -> Result<(f64, usize)> {
    let (cfg, params) = load_checkpoint(checkpoint)?;
    let seq = cfg.max_position_embeddings;
    // Byte-level: every byte of the text is a token.
    let tokens: Vec<u32> = text.iter().map(|&b| b as u32).collect();
    in_vocabulary(&tokens, &cfg, "the data (byte-level tokens)")?;
    let n = tokens.len() / seq;
    if n == 0 || seq < 2 {
        bail!(
            "the data holds {} tokens, fewer than one sequence of {seq}",
            tokens.len()
        );
    }
    let gpu = Gpu::new(GpuOptions::default()).await?;
    let per = (2048 / seq).max(1);
    let model = GpuModel::new(&gpu, &cfg, &params, Slicing::whole(), per * seq)?;
    let (mut total, mut count) = (0.0, 0usize);
    for chunk in tokens[..n * seq].chunks(per * seq) {
        let b = Batch::from_sequences(chunk, seq);
        let c = b.counted();
        total += model.loss(&gpu, &b).await? * c as f64;
        count += c;
    }
    Ok((total / count as f64, count))
}

/// Runs `eval`.
pub async fn run(a: Args) -> Result<()> {
    let text = std::fs::read(&a.data).with_context(|| format!("reading {}", a.data.display()))?;
    let (loss, count) = evaluate(&a.checkpoint, &text).await?;
    println!("mean next-token cross-entropy over {count} predicted positions (nats):");
    println!("{loss:.6}");
    Ok(())
}
