//! `tessera plan`: cuts a model into micro-shards for the smallest memory budget given, packs
//! them into leases for every budget, and prints the estimated memory, FLOPs, traffic,
//! tokens/s ceilings and step latency.

use anyhow::{Context, Result};
use tessera_compute::ModelConfig;
use tessera_plan::units::{parse_bandwidth, parse_bytes, parse_flops};
use tessera_plan::{default_options, preset, Plan, Report, PRESETS};

/// Activation precision on the wire.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Act {
    /// 4 bytes per element.
    F32,
    /// 2 bytes per element.
    Bf16,
    /// 1 byte per element (per-tensor scaled).
    Int8,
}

/// Options of `plan`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `covenant-72b`, `tiny-byte`, `small-byte`, `tiny`, or the path of a Hugging Face `config.json`.
    #[arg(long, default_value = "covenant-72b")]
    pub model: String,
    /// A contributor's lease memory budget, e.g. `0.6GiB`, `512MiB`, `24GiB`, `1.5GB` or bytes;
    /// repeat for several. The smallest sizes the micro-shards; each gets its own leases.
    #[arg(long, value_parser = budget, default_value = "0.6GiB")]
    pub budget: Vec<u64>,
    /// Tokens per micro-batch (one sequence); default 2048 or the model's context if shorter.
    #[arg(long)]
    pub seq: Option<usize>,
    /// Activation precision on the wire.
    #[arg(long, value_enum, default_value = "bf16")]
    pub act: Act,
    /// A contributor's link, shared by both directions, e.g. `100Mbit`, `1Gbit`, or bytes/s.
    #[arg(long, value_parser = bandwidth, default_value = "100Mbit")]
    pub bandwidth: f64,
    /// The coordinator's link, shared by both directions.
    #[arg(long, value_parser = bandwidth, default_value = "10Gbit")]
    pub coordinator_bandwidth: f64,
    /// A contributor's sustained compute, e.g. `1T`, `500G` (FLOP/s).
    #[arg(long, value_parser = flops, default_value = "1T")]
    pub flops: f64,
    /// Micro-batches in flight per optimizer step.
    #[arg(long, default_value_t = 8)]
    pub micro_batches: usize,
    /// Largest storage buffer binding (WebGPU's default is 128 MiB).
    #[arg(long, value_parser = budget, default_value = "128MiB")]
    pub binding_limit: u64,
}

/// A byte size argument (`0.6GiB`, `5GB`, ...), for clap.
pub(crate) fn budget(s: &str) -> Result<u64, String> {
    parse_bytes(s).map_err(|e| e.to_string())
}

fn bandwidth(s: &str) -> Result<f64, String> {
    parse_bandwidth(s).map_err(|e| e.to_string())
}

fn flops(s: &str) -> Result<f64, String> {
    parse_flops(s).map_err(|e| e.to_string())
}

/// The model named by `--model`.
pub(crate) fn model(name: &str) -> Result<ModelConfig> {
    if let Some(cfg) = preset(name) {
        return Ok(cfg);
    }
    let text = std::fs::read_to_string(name).with_context(|| {
        format!(
            "--model {name}: not one of {} and not a readable config.json",
            PRESETS.join(", ")
        )
    })?;
    ModelConfig::from_hf_json(&text).with_context(|| format!("reading {name}"))
}

/// Prints the plan's report.
pub fn run(a: Args) -> Result<()> {
    let cfg = model(&a.model)?;
    let mut budgets = a.budget.clone();
    budgets.sort_unstable();
    budgets.dedup();
    let defaults = default_options(&cfg);
    let options = tessera_plan::PlanOptions {
        seq: a.seq.unwrap_or(defaults.seq),
        budget: budgets.first().copied().unwrap_or(defaults.budget),
        act_bytes: match a.act {
            Act::F32 => 4,
            Act::Bf16 => 2,
            Act::Int8 => 1,
        },
        max_binding: a.binding_limit,
        bandwidth: a.bandwidth,
        coordinator_bandwidth: a.coordinator_bandwidth,
        flops: a.flops,
        micro_batches: a.micro_batches,
    };
    let plan = Plan::new(&cfg, options)?;
    let name = a.model.clone();
    print!("{}", Report::new(&plan, &name, &budgets)?);
    Ok(())
}
