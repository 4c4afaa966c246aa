//! `tessera generate`: text from a checkpoint on this machine's GPU, with a key/value cache
//! (the prompt is run once, then each new token costs one position). The tokenizer is a
//! Hugging Face `tokenizer.json` (given, in the checkpoint's folder, or beside the run's
//! checkpoints) or byte-level (the prompt's UTF-8 bytes are its tokens); the new tokens are
//! printed as text as soon as they form whole characters (or as ids with `--ids`). Greedy
//! unless a temperature is given; a seed repeats a sampled run exactly.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use tessera_compute::generate::GenerateOptions;
use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::sampling::Sampling;
use tessera_compute::{Gpu, GpuOptions};

use tessera_coordinator::data::Tokenizer;

use crate::eval::{in_vocabulary, load_checkpoint};

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
    /// A Hugging Face `tokenizer.json` (default: the checkpoint's `tokenizer.json`, or the one
    /// a run trained with a tokenizer keeps beside its checkpoints, else byte-level: every UTF-8
    /// byte is a token, as in the built-in runs).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Print the new tokens' ids, space-separated, instead of the text.
    #[arg(long)]
    pub ids: bool,
}

/// Token ids to text as they come: the text of the prompt and the new tokens is decoded again
/// after each token and its new end printed, so a tokenizer that merges pieces (or bytes
/// forming one character) prints whole characters; an unfinished character waits.
struct TextOut<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    printed: String,
}

impl<'a> TextOut<'a> {
    /// Starts after `prompt`; returns the prompt's text as the tokenizer decodes it.
    fn new(tok: &'a Tokenizer, prompt: &[u32]) -> Result<(Self, String)> {
        let printed = tok.decode(prompt)?;
        let first = printed.clone();
        let out = TextOut {
            tok,
            ids: prompt.to_vec(),
            printed,
        };
        Ok((out, first))
    }

    /// The text that `id` adds (possibly empty, while a character is unfinished).
    fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids)?;
        if text.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(String::new());
        }
        Ok(self.advance(text))
    }

    /// What is left at the end (an unfinished character as U+FFFD).
    fn finish(&mut self) -> Result<String> {
        let text = self.tok.decode(&self.ids)?;
        Ok(self.advance(text))
    }

    fn advance(&mut self, text: String) -> String {
        match text.strip_prefix(self.printed.as_str()) {
            Some(new) => {
                let new = new.to_string();
                self.printed = text;
                new
            }
            // Decoding changed text already printed: wait for the end.
            None => String::new(),
        }
    }
}

/// The tokenizer: `--tokenizer`, else the checkpoint's `tokenizer.json`, else the one a run
/// keeps beside its checkpoints (`checkpoints/tokenizer.json`), else byte-level.
fn tokenizer(a: &Args) -> Result<(Tokenizer, String)> {
    let beside = [
        Some(a.checkpoint.join("tokenizer.json")),
        a.checkpoint.parent().map(|d| d.join("tokenizer.json")),
    ];
    let file = a
        .tokenizer
        .clone()
        .or_else(|| beside.into_iter().flatten().find(|p| p.is_file()));
    Ok(match file {
        Some(f) => (
            Tokenizer::from_file(&f)?,
            format!("tokenizer {}", f.display()),
        ),
        None => (Tokenizer::Bytes, "byte-level tokens".to_string()),
    })
}

/// Runs `generate`.
pub async fn run(a: Args) -> Result<()> {
    let sampling = Sampling {
        temperature: a.temperature,
        top_p: a.top_p,
    };
    sampling.validate()?;
    let (cfg, params) = load_checkpoint(&a.checkpoint)?;
    let (tok, tok_name) = tokenizer(&a)?;
    if a.prompt.is_empty() {
        bail!("the prompt is empty: give at least one character to continue");
    }
    let prompt = tok.encode(std::slice::from_ref(&a.prompt))?;
    in_vocabulary(&prompt, &cfg, &format!("the prompt ({tok_name})"))?;
    let ctx = cfg.max_position_embeddings;
    if prompt.is_empty() {
        bail!("the prompt makes no tokens under {tok_name}");
    }
    if prompt.len() >= ctx {
        bail!(
            "the prompt is {} tokens long; the model's context is {ctx} positions, so it must \
             be shorter than that to leave room for new tokens",
            prompt.len()
        );
    }
    let gpu = Gpu::new(GpuOptions::default()).await?;
    eprintln!(
        "generating up to {} tokens on {} ({tok_name}, {})",
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
    let (mut text, shown) = TextOut::new(&tok, &prompt)?;
    let mut first = true;
    if !a.ids {
        write!(stdout, "{shown}")?;
        stdout.flush()?;
    }
    let mut failed: Option<anyhow::Error> = None;
    let start = Instant::now();
    let out = model
        .generate(&gpu, &mut cache, &prompt, opts, |t| {
            let piece = if a.ids {
                let sep = if first { "" } else { " " };
                Ok(format!("{sep}{t}"))
            } else {
                text.push(t)
            };
            first = false;
            let written =
                piece.and_then(|p| Ok(write!(stdout, "{p}").and_then(|()| stdout.flush())?));
            if let Err(e) = written {
                failed.get_or_insert(e);
            }
        })
        .await?;
    if let Some(e) = failed {
        return Err(e);
    }
    let rest = if a.ids { String::new() } else { text.finish()? };
    writeln!(stdout, "{rest}")?;
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
    use super::{TextOut, Tokenizer};

    #[test]
    fn whole_characters_print_at_once_and_broken_ones_as_replacements() {
        let tok = Tokenizer::Bytes;
        let (mut t, shown) = TextOut::new(&tok, &[b'>' as u32]).unwrap();
        assert_eq!(shown, ">");
        let mut out = String::new();
        for b in "aé€".bytes() {
            out.push_str(&t.push(b as u32).unwrap());
        }
        assert_eq!(out, "aé€");
        // A two-byte character's first byte waits; a stray continuation byte is replaced.
        assert_eq!(t.push(0xC3).unwrap(), "");
        assert_eq!(t.push(0xA9).unwrap(), "é");
        assert_eq!(t.push(0x80).unwrap(), "");
        assert_eq!(t.push(b'x' as u32).unwrap(), "\u{fffd}x");
        // An unfinished character at the end prints as a replacement.
        assert_eq!(t.push(0xF0).unwrap(), "");
        assert_eq!(t.finish().unwrap(), "\u{fffd}");
        assert_eq!(t.finish().unwrap(), "");
    }
}
