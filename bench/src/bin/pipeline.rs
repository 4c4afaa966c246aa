//! `pipeline`: tokens/s of a sharded pipeline run against single-device training with the same
//! kernels on the same adapter, and the activation bytes per token on the wire, for f32, bf16
//! and 8-bit activations (with the error each adds to the trained weights against f32).
//!
//! The sharded run is the real coordinator state machine and real contributors, in process
//! (every message is encoded as it would be on a socket to count its bytes, but not sent), each
//! contributor holding the micro-shards its budget allows, all on this one adapter. The ratio
//! therefore measures what the pipeline costs (small dispatches, relaying, serialization,
//! recomputation in the backward) and not what many GPUs in parallel would gain.
//!
//! ```text
//! cargo run --release -p tessera-bench --bin pipeline -- --model small-byte --steps 6
//! ```

use std::time::Instant;

use anyhow::{bail, Context, Result};
use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::reference::ops::AdamW;
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::shard::Optimizer;
use tessera_compute::{Gpu, GpuOptions};
use tessera_coordinator::config::RunConfig;
use tessera_coordinator::core::{Core, Phase, RunSpec};
use tessera_e2e::{Control, Message};
use tessera_protocol::messages::SessionMessage;
use tessera_protocol::pipeline::PipeResult;
use tessera_protocol::{encode, Identity, ToContributor, ToCoordinator};

struct Options {
    model: String,
    steps: u64,
    micro_batches: u64,
    seq: u64,
    budget: String,
}

struct Sharded {
    weights: ModelParams<f32>,
    losses: Vec<f64>,
    tokens_per_s: f64,
    leases: usize,
    micro_shards: usize,
    /// Encoded bytes of every pipeline unit and result, per token.
    wire_per_token: f64,
    /// Activation and gradient payload bytes alone, per token.
    act_per_token: f64,
    data: Vec<Vec<(Vec<u32>, Vec<u32>)>>,
}

fn config(o: &Options, activations: &str) -> Result<(RunSpec, ModelParams<f32>)> {
    let mut cfg = RunConfig::from_toml(&format!(
        "name = \"bench\"\nseed = 5\nrounds = {}\n[model]\npreset = \"{}\"\n[train]\nseq = {}\nlr = 1e-2\nwarmup = 1\n[pipeline]\nbudget = \"{}\"\nmicro_batches = {}\nactivations = \"{activations}\"\n",
        o.steps, o.model, o.seq, o.budget, o.micro_batches
    ))?;
    cfg.seed = 5;
    Ok(cfg.resolve(std::path::Path::new("."))?)
}

/// Contributors of the sharded run.
#[derive(Clone, Copy)]
enum Leases {
    /// One per micro-shard, each with the plan's budget.
    Small,
    /// A single contributor holding every stage (it runs spans of whole stages).
    Heavy,
}

fn sharded(gpu: &Gpu, o: &Options, activations: &str, leases: Leases) -> Result<Sharded> {
    let (spec, init) = config(o, activations)?;
    let pipe = spec.pipeline.clone().context("a pipeline run")?;
    let micro_shards: usize = pipe.stages.iter().map(Vec::len).sum();
    let budget = tessera_plan::units::parse_bytes(&o.budget)?;
    let mut core = Core::new(spec, Identity::from_seed([7; 32]), init);
    let budgets = match leases {
        Leases::Small => vec![budget; micro_shards],
        Leases::Heavy => vec![u64::MAX / 2],
    };
    let mut clients = tessera_e2e::with_budgets(gpu, &budgets);
    let (mut wire, mut act) = (0usize, 0usize);
    let mut data = vec![vec![(Vec::new(), Vec::new()); o.micro_batches as usize]; o.steps as usize];
    let mut first_unit: Option<Instant> = None;
    tessera_e2e::run_with(gpu, &mut core, &mut clients, |m, _| {
        match m {
            Message::Down(ToContributor::Unit(w)) => {
                first_unit.get_or_insert_with(Instant::now);
                wire += encode(&ToContributor::Unit(w.clone())).map_or(0, |f| f.len());
                act += w.input.as_ref().map_or(0, |a| a.wire_bytes());
                act += w.grad.as_ref().map_or(0, |a| a.wire_bytes());
                let e = &mut data[w.step as usize][w.micro_batch as usize];
                if let Some(t) = w.tokens.as_ref().and_then(|t| t.to_u32().ok()) {
                    if w.stages[0] == 0 {
                        e.0 = t;
                    } else {
                        e.1 = t;
                    }
                }
            }
            Message::Up(ToCoordinator::Session(s)) => {
                if let SessionMessage::Output(out) = &s.body {
                    wire += encode(&s.body).map_or(0, |f| f.len());
                    if let PipeResult::Activation(a) = &out.result {
                        act += a.wire_bytes();
                    }
                }
            }
            _ => {}
        }
        Control::Go
    })
    .context("contributor")?;
    let elapsed = first_unit.map_or(0.0, |t| t.elapsed().as_secs_f64());
    if core.phase() != Phase::Finished {
        bail!("the sharded run did not finish");
    }
    let tokens = (o.steps * o.micro_batches * o.seq) as f64;
    Ok(Sharded {
        weights: core.weights().clone(),
        losses: core.losses().to_vec(),
        tokens_per_s: tokens / elapsed,
        leases: core.sessions().iter().filter(|s| s.lease.is_some()).count(),
        micro_shards,
        wire_per_token: wire as f64 / tokens,
        act_per_token: act as f64 / tokens,
        data,
    })
}

/// Single-device AdamW on the same data, unsliced, with the same kernels: tokens/s over the
/// steps after the first (which compiles the kernels).
fn single(gpu: &Gpu, o: &Options, data: &[Vec<(Vec<u32>, Vec<u32>)>]) -> Result<f64> {
    let (spec, init) = config(o, "f32")?;
    let rows = (o.micro_batches * o.seq) as usize;
    let mut m = GpuModel::new(gpu, &spec.model, &init, Slicing::whole(), rows)?;
    let mut start = Instant::now();
    for (step, mbs) in data.iter().enumerate() {
        if step == 1 {
            start = Instant::now();
        }
        let mut b = Batch {
            ids: Vec::new(),
            targets: Vec::new(),
            seq: o.seq as usize,
        };
        for (i, t) in mbs {
            b.ids.extend_from_slice(i);
            b.targets.extend_from_slice(t);
        }
        m.zero_grads(gpu)?;
        pollster::block_on(m.loss_and_grads(gpu, &b))?;
        let h = AdamW {
            lr: spec.inner_lr.at(step as u64 + 1),
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        pollster::block_on(m.optimizer_step(
            gpu,
            Optimizer::AdamW(h),
            step as u32 + 1,
            spec.inner_clip.map(f64::from),
        ))?;
    }
    pollster::block_on(m.read_params(gpu))?;
    let timed = (data.len().saturating_sub(1) as u64 * o.micro_batches * o.seq) as f64;
    Ok(timed / start.elapsed().as_secs_f64())
}

fn rel(a: &ModelParams<f32>, b: &ModelParams<f32>) -> (f64, f64) {
    let (mut num, mut den, mut worst) = (0.0f64, 0.0f64, 0.0f64);
    for ((_, x), (_, y)) in a.named().into_iter().zip(b.named()) {
        let n: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
        let d: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
        worst = worst.max((n / d.max(1e-30)).sqrt());
        num += n;
        den += d;
    }
    ((num / den.max(1e-30)).sqrt(), worst)
}

fn main() -> Result<()> {
    let mut o = Options {
        model: "small-byte".into(),
        steps: 6,
        micro_batches: 8,
        seq: 64,
        budget: "600KiB".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => o.model = val()?,
            "--steps" => o.steps = val()?.parse().context("--steps takes a number")?,
            "--micro-batches" => {
                o.micro_batches = val()?.parse().context("--micro-batches takes a number")?
            }
            "--seq" => o.seq = val()?.parse().context("--seq takes a number")?,
            "--budget" => o.budget = val()?,
            "-h" | "--help" => {
                println!("pipeline [--model small-byte|tiny-byte] [--steps 6] [--micro-batches 8] [--seq 64] [--budget 600KiB]: a sharded pipeline run against single-device training, in process on this adapter");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if o.steps < 2 {
        bail!("--steps must be at least 2 (the first single-device step is not timed)");
    }
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default()))?;
    println!("adapter: {}", gpu.adapter());
    let f32_run = sharded(&gpu, &o, "f32", Leases::Small)?;
    let heavy = sharded(&gpu, &o, "f32", Leases::Heavy)?;
    let single_tps = single(&gpu, &o, &f32_run.data)?;
    println!(
        "model {}, {} steps of {} x {} tokens; {} micro-shards for a {} budget, {} leases",
        o.model, o.steps, o.micro_batches, o.seq, f32_run.micro_shards, o.budget, f32_run.leases
    );
    println!(
        "tokens/s: sharded pipeline {:.1}, single device {:.1}, ratio sharded/single {:.3}",
        f32_run.tokens_per_s,
        single_tps,
        f32_run.tokens_per_s / single_tps
    );
    println!(
        "tokens/s: one heavy lease holding every stage (spans) {:.1}, ratio heavy/single {:.3}, wire bytes/token {:.0}",
        heavy.tokens_per_s,
        heavy.tokens_per_s / single_tps,
        heavy.wire_per_token
    );
    println!("activations | wire bytes/token (units and results) | activation bytes/token | weights vs f32 run: rel err (worst tensor) | last step loss");
    let report = |name: &str, r: &Sharded| {
        let (all, worst) = rel(&r.weights, &f32_run.weights);
        println!(
            "{name:>11} | {:>10.0} | {:>10.0} | {all:.2e} ({worst:.2e}) | {:.4}",
            r.wire_per_token,
            r.act_per_token,
            r.losses.last().copied().unwrap_or(f64::NAN)
        );
    };
    report("f32", &f32_run);
    for enc in ["bf16", "int8"] {
        let r = sharded(&gpu, &o, enc, Leases::Small)?;
        report(enc, &r);
    }
    Ok(())
}
