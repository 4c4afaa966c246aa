//! `tessera export`: a checkpoint as a Hugging Face LLaMA checkpoint folder that any loader
//! of that format reads: `config.json`, the weights as f32 safetensors (`model.safetensors`,
//! or above `--max-file-size` files `model-0000i-of-0000N.safetensors` with
//! `model.safetensors.index.json`, as Hugging Face cuts a large model), and the run's
//! `tokenizer.json` where it trained with one. The folder is written beside its destination and
//! renamed into place once whole, so an interrupted export leaves no half folder under its name.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tessera_compute::hf_shards::{params_to_shards, INDEX};

use crate::eval::load_checkpoint;

/// Options of `export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint folder (`config.json` + `model.safetensors`, or a cut checkpoint's index),
    /// e.g. a run's `DATA_DIR/checkpoints/round-N-HASH`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The folder to write (it must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Largest weights file; a larger model is cut into several (a tensor larger than this
    /// alone in its file).
    #[arg(long, value_parser = crate::plan_cmd::budget, default_value = "5GB")]
    pub max_file_size: u64,
}

/// The tokenizer a checkpoint goes with: its own folder's, else the one a run keeps beside its
/// checkpoints (the folder above).
fn tokenizer_of(checkpoint: &Path) -> Option<PathBuf> {
    [Some(checkpoint), checkpoint.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("tokenizer.json"))
        .find(|p| p.is_file())
}

/// Runs `export`.
pub fn run(a: Args) -> Result<()> {
    let empty = match std::fs::read_dir(&a.out) {
        Ok(mut d) => d.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).with_context(|| format!("reading {}", a.out.display())),
    };
    if !empty {
        bail!(
            "{} exists and is not empty: export writes a new folder",
            a.out.display()
        );
    }
    let (cfg, params) = load_checkpoint(&a.checkpoint)?;
    let cut = params_to_shards(&cfg, &params, a.max_file_size)
        .with_context(|| format!("writing the weights of {}", a.checkpoint.display()))?;
    let name = a
        .out
        .file_name()
        .with_context(|| format!("{} names no folder", a.out.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("removing an earlier partial export {}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let write = |file: &str, bytes: &[u8]| -> Result<()> {
        let path = tmp.join(file);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    write("config.json", cfg.to_hf_json().as_bytes())?;
    let mut total = 0u64;
    for (file, bytes) in &cut.files {
        write(file, bytes)?;
        total += bytes.len() as u64;
    }
    if let Some(index) = &cut.index {
        write(INDEX, index.as_bytes())?;
    }
    let tokenizer = tokenizer_of(&a.checkpoint);
    if let Some(t) = &tokenizer {
        let bytes = std::fs::read(t).with_context(|| format!("reading {}", t.display()))?;
        write("tokenizer.json", &bytes)?;
    }
    if a.out.exists() {
        std::fs::remove_dir(&a.out).with_context(|| format!("replacing {}", a.out.display()))?;
    }
    std::fs::rename(&tmp, &a.out)
        .with_context(|| format!("moving the export into {}", a.out.display()))?;
    println!(
        "exported {} ({} parameters, {} weights file{} of {} bytes in all{}{}) to {}",
        a.checkpoint.display(),
        params.named().iter().map(|(_, t)| t.len()).sum::<usize>(),
        cut.files.len(),
        if cut.files.len() == 1 { "" } else { "s" },
        total,
        if cut.index.is_some() {
            format!(" with {INDEX}")
        } else {
            String::new()
        },
        if tokenizer.is_some() {
            ", tokenizer.json"
        } else {
            ""
        },
        a.out.display()
    );
    Ok(())
}
