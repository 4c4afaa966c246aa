//! `tessera train-local`: trains a small model on this machine's GPU, the model cut into
//! micro-shards (sliced embedding, attention groups, MLP columns and head vocabulary) composed
//! the way the coordinator composes contributors' shards.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ops::AdamW;
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::shard::Optimizer;
use tessera_compute::{Gpu, GpuOptions, ModelConfig};

use tessera_train::data::{byte_tokens, BUILT_IN_CORPUS};
use tessera_train::schedule::Schedule;

/// Options of `train-local`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Optimizer steps.
    #[arg(long, default_value_t = 150)]
    steps: u32,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Residual width.
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Peak learning rate (linear warmup over the first tenth, cosine decay to a tenth).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Slices per stage kind: embed,attn,mlp,head.
    #[arg(long, default_value = "2,2,2,2")]
    slices: String,
    /// Seed for weights and data order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print a line every this many steps.
    #[arg(long, default_value_t = 10)]
    every: u32,
}

fn parse_slices(s: &str) -> Result<Slicing> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse())
        .collect::<Result<_, _>>()
        .context("--slices takes four numbers: embed,attn,mlp,head")?;
    let [embed, attn, mlp, head] = v[..] else {
        bail!("--slices takes four numbers: embed,attn,mlp,head")
    };
    Ok(Slicing {
        embed,
        attn,
        mlp,
        head,
    })
}

fn sample(tokens: &[u32], seq: usize, n: usize, rng: &mut SplitMix) -> Batch {
    let mut ids = Vec::with_capacity(n * seq);
    let mut targets = Vec::with_capacity(n * seq);
    for _ in 0..n {
        let start = (rng.next_u64() % (tokens.len() - seq) as u64) as usize;
        ids.extend_from_slice(&tokens[start..start + seq]);
        targets.extend_from_slice(&tokens[start + 1..start + seq + 1]);
    }
    Batch { ids, targets, seq }
}

/// Runs the demo.
pub fn run(a: Args) -> Result<()> {
    let heads = (a.d_model / 16).max(1);
    let cfg = ModelConfig {
        vocab_size: 256,
        hidden_size: a.d_model,
        intermediate_size: (a.d_model * 8 / 3).div_ceil(8) * 8,
        num_hidden_layers: a.layers,
        num_attention_heads: heads,
        num_key_value_heads: if heads.is_multiple_of(2) {
            heads / 2
        } else {
            heads
        },
        head_dim: a.d_model / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: a.seq,
        tie_word_embeddings: false,
    };
    cfg.validate()?;
    let slicing = parse_slices(&a.slices)?;
    if a.steps == 0 || a.every == 0 || a.batch == 0 {
        bail!("--steps, --batch and --every must be positive");
    }
    let tokens = byte_tokens(BUILT_IN_CORPUS);
    let split = tokens.len() * 9 / 10;
    let (train, held) = (&tokens[..split], &tokens[split..]);
    if held.len() <= a.seq || train.len() <= a.seq {
        bail!("--seq {} is too long for the built-in corpus", a.seq);
    }
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default()))?;
    println!("adapter: {}", gpu.adapter());
    let params: ModelParams<f32> = ModelParams::random(&cfg, a.seed);
    let mut model = GpuModel::new(&gpu, &cfg, &params, slicing, a.seq * a.batch)?;
    let shards: Vec<String> = model.shards().map(|s| s.shard().to_string()).collect();
    println!(
        "model: {} parameters, {} micro-shards: {}",
        cfg.parameter_count(),
        shards.len(),
        shards.join(" ")
    );
    println!(
        "corpus: {} training bytes, {} held-out bytes",
        train.len(),
        held.len()
    );
    // Held-out loss: fixed non-overlapping sequences.
    let held_n = (held.len() - 1) / a.seq;
    let held_batch = Batch {
        ids: held[..held_n * a.seq].to_vec(),
        targets: held[1..held_n * a.seq + 1].to_vec(),
        seq: a.seq,
    };
    let eval = |m: &GpuModel| -> Result<f64> {
        let mut total = 0.0;
        let chunk = a.batch * a.seq;
        let mut count = 0;
        for (ids, targets) in held_batch
            .ids
            .chunks(chunk)
            .zip(held_batch.targets.chunks(chunk))
        {
            let b = Batch {
                ids: ids.to_vec(),
                targets: targets.to_vec(),
                seq: a.seq,
            };
            total += pollster::block_on(m.loss(&gpu, &b))? * ids.len() as f64;
            count += ids.len();
        }
        Ok(total / count as f64)
    };
    let start_loss = eval(&model)?;
    println!(
        "step 0 held-out loss {start_loss:.4} (uniform would be {:.4})",
        (256f64).ln()
    );
    let schedule = Schedule {
        peak: a.lr,
        warmup: (a.steps as u64 / 10).max(1),
        total: a.steps as u64,
        floor: 0.1,
    };
    let mut rng = SplitMix(a.seed ^ 0x5eed);
    let t0 = Instant::now();
    let mut last = start_loss;
    for step in 1..=a.steps {
        let b = sample(train, a.seq, a.batch, &mut rng);
        model.zero_grads(&gpu)?;
        let loss = pollster::block_on(model.loss_and_grads(&gpu, &b))?;
        let lr = schedule.at(step as u64);
        let norm = pollster::block_on(model.optimizer_step(
            &gpu,
            Optimizer::AdamW(AdamW {
                lr,
                weight_decay: 0.01,
                ..AdamW::default()
            }),
            step,
            Some(1.0),
        ))?;
        if step % a.every == 0 || step == a.steps {
            last = eval(&model)?;
            let tps = (step as usize * a.seq * a.batch) as f64 / t0.elapsed().as_secs_f64();
            println!(
                "step {step} loss {loss:.4} held-out {last:.4} lr {lr:.2e} grad-norm {:.3} ({tps:.0} tokens/s)",
                norm.unwrap_or(f64::NAN)
            );
        }
    }
    println!(
        "held-out loss {start_loss:.4} -> {last:.4} ({:+.4} nats) in {:.1} s",
        last - start_loss,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
