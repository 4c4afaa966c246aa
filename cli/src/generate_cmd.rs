//! `tessera generate`: text from a checkpoint on this machine's GPU, with a key/value cache
//! (the prompt is run once, then each new token costs one position). The tokenizer is
//! byte-level: the prompt's UTF-8 bytes are its tokens and the new tokens are bytes, printed
//! as text as soon as they form whole characters (or as ids with `--ids`). Greedy unless a
//! temperature is given; a seed repeats a sampled run exactly.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use tessera_compute::generate::GenerateOptions;
use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::sampling::Sampling;
use tessera_compute::{Gpu, GpuOptions};

use crate::eval::{byte_ids, load_checkpoint};

/// Options of `generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (`config.json` + `model.safetensors`), e.g. one a run wrote under
    /// its data directory's `checkpoints/`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    /// New tokens at most (fewer when the model's context fills).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// Softmax temperature; 0 (the default) always takes the most likely token.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Draw only among the most likely tokens whose probabilities add up to this (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the draws when sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the new tokens' ids, space-separated, instead of the text.
    #[arg(long)]
    pub ids: bool,
}

/// Bytes to text as they come: whole UTF-8 characters are printed at once, a character's first
/// bytes wait for the rest, and bytes that cannot start or continue one print as U+FFFD.
#[derive(Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The text that `byte` completes (possibly empty).
    fn push(&mut self, byte: u8) -> String {
        self.pending.push(byte);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // Checked by `from_utf8`: the first `good` bytes are whole characters.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..good]));
                    match e.error_len() {
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end: an unfinished character as U+FFFD.
    fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// Runs `generate`.
pub async fn run(a: Args) -> Result<()> {
    let sampling = Sampling {
        temperature: a.temperature,
        top_p: a.top_p,
    };
    sampling.validate()?;
    let (cfg, params) = load_checkpoint(&a.checkpoint)?;
    let prompt = byte_ids(a.prompt.as_bytes(), &cfg)?;
    let ctx = cfg.max_position_embeddings;
    if prompt.is_empty() {
        bail!("the prompt is empty: give at least one character to continue");
    }
    if prompt.len() >= ctx {
        bail!(
            "the prompt is {} tokens (bytes) long; the model's context is {ctx} positions, so \
             it must be shorter than that to leave room for new tokens",
            prompt.len()
        );
    }
    let gpu = Gpu::new(GpuOptions::default()).await?;
    eprintln!(
        "generating up to {} tokens on {} ({})",
        a.max_tokens,
        gpu.adapter(),
        if a.temperature == 0.0 {
            "greedy".to_string()
        } else {
            format!(
                "temperature {}, top-p {}, seed {}",
                a.temperature, a.top_p, a.seed
            )
        }
    );
    let model = GpuModel::new(&gpu, &cfg, &params, Slicing::whole(), ctx)?;
    let mut cache = model.kv_cache(&gpu, ctx)?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens as usize,
        sampling,
        seed: a.seed,
    };
    let mut stdout = std::io::stdout().lock();
    let mut text = Utf8Stream::default();
    let mut first = true;
    if !a.ids {
        write!(stdout, "{}", a.prompt)?;
        stdout.flush()?;
    }
    let mut failed = None;
    let start = Instant::now();
    let out = model
        .generate(&gpu, &mut cache, &prompt, opts, |t| {
            let piece = if a.ids {
                let sep = if first { "" } else { " " };
                format!("{sep}{t}")
            } else {
                // Byte-level: every id the model can emit here is below its vocabulary,
                // and the byte tokenizer's are below 256.
                u8::try_from(t).map_or_else(|_| "\u{fffd}".to_string(), |b| text.push(b))
            };
            first = false;
            if let Err(e) = write!(stdout, "{piece}").and_then(|()| stdout.flush()) {
                failed.get_or_insert(e);
            }
        })
        .await?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    writeln!(stdout, "{}", text.finish())?;
    let secs = start.elapsed().as_secs_f64();
    let stop = if out.len() < opts.max_tokens {
        " (the model's context is full)"
    } else {
        ""
    };
    eprintln!(
        "{} new tokens after a prompt of {} in {secs:.2} s ({:.1} tokens/s){stop}",
        out.len(),
        prompt.len(),
        out.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn whole_characters_print_at_once_and_broken_ones_as_replacements() {
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        for b in "aé€".bytes() {
            out.push_str(&s.push(b));
        }
        assert_eq!(out, "aé€");
        // A two-byte character's first byte waits; a stray continuation byte is replaced.
        assert_eq!(s.push(0xC3), "");
        assert_eq!(s.push(0xA9), "é");
        assert_eq!(s.push(0x80), "\u{fffd}");
        // A lead byte followed by an ASCII byte: the lead is replaced, the ASCII printed.
        assert_eq!(s.push(0xE2), "");
        assert_eq!(s.push(b'x'), "\u{fffd}x");
        assert_eq!(s.push(0xF0), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}
