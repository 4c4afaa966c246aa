//! `tessera calibrate`: measures how far two honest adapters drift on the same work, to set the
//! tolerance the coordinator's checks allow. Run it on each kind of adapter with `--out`, then
//! compare two files with `--compare` (or run and compare at once with `--against`); it prints
//! each output's relative L2 and largest elementwise drift and the tolerances it suggests for
//! the run file's `[checks]` section.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tessera_protocol::{decode_since, encode, WORK_FORMAT_SINCE};
use tessera_worker::calibrate::{calibrate, compare, Calibration, CalibrationSpec};

use crate::plan_cmd::model;

/// Options of `calibrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model to calibrate on: a preset (`tiny`, `tiny-byte`, `small-byte`) or a `config.json`.
    #[arg(long, default_value = "small-byte")]
    pub model: String,
    /// Tokens per sequence (default: the model's context, at most 64).
    #[arg(long)]
    pub seq: Option<u64>,
    /// Sequences per inner step of the replica round.
    #[arg(long, default_value_t = 2)]
    pub batch: u64,
    /// Inner steps of the replica round.
    #[arg(long, default_value_t = 8)]
    pub steps: u64,
    /// Seed of the weights and tokens.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write this adapter's outputs here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compare this adapter's outputs with a file another adapter wrote (the file's work is
    /// rerun: its model, sizes and seed override the options above).
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// Compare two files and run nothing.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub compare: Option<Vec<PathBuf>>,
    /// The GPU and its matmul tiling (a worker's, for calibrate).
    #[command(flatten)]
    pub gpu: crate::tuning::GpuArgs,
}

/// How much larger than the largest honest drift measured the suggested tolerance is.
const MARGIN: f64 = 10.0;

fn read(path: &PathBuf) -> Result<Calibration> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // Files of earlier protocol versions read as long as the records' encoding is unchanged.
    decode_since(&bytes, usize::MAX, WORK_FORMAT_SINCE)
        .with_context(|| format!("{} is not a calibration file", path.display()))
}

fn report(a: &Calibration, b: &Calibration) -> Result<()> {
    let drifts = compare(a, b)?;
    println!("A: {}\nB: {}", a.adapter, b.adapter);
    println!("{:<44} {:>12} {:>12}", "output", "rel L2", "rel max");
    for d in &drifts {
        println!("{:<44} {:>12.3e} {:>12.3e}", d.name, d.rel_l2, d.rel_max);
    }
    let worst = |prefix: &str| {
        drifts
            .iter()
            .filter(|d| d.name.starts_with(prefix))
            .map(|d| d.rel_l2)
            .fold(0.0f64, f64::max)
    };
    let (unit, round) = (worst("pipeline/"), worst("replica/pseudo"));
    println!("worst pipeline unit drift {unit:.3e}; worst replica round drift {round:.3e}");
    println!(
        "suggested [checks]: unit_tolerance = {:.1e}, round_tolerance = {:.1e} ({MARGIN}x the worst, at least 1e-6)",
        (unit * MARGIN).max(1e-6),
        (round * MARGIN).max(1e-6)
    );
    Ok(())
}

/// Runs the calibration work, or compares two results.
pub fn run(a: Args) -> Result<()> {
    if let Some(files) = &a.compare {
        let [x, y] = &files[..] else {
            bail!("--compare takes two files");
        };
        return report(&read(x)?, &read(y)?);
    }
    let against = a.against.as_ref().map(read).transpose()?;
    let spec = match &against {
        Some(c) => c.spec.clone(),
        None => {
            let cfg = model(&a.model)?;
            CalibrationSpec {
                config_json: cfg.to_hf_json(),
                seq: a.seq.unwrap_or(cfg.max_position_embeddings.min(64) as u64),
                batch: a.batch,
                steps: a.steps,
                seed: a.seed,
            }
        }
    };
    let gpu = pollster::block_on(a.gpu.open())?;
    eprintln!(
        "calibrating on {} (matmul {:?})",
        gpu.adapter().name,
        gpu.tiles().matmul
    );
    let started = std::time::Instant::now();
    let mine = pollster::block_on(calibrate(&gpu, &spec, |name| {
        eprintln!("  {name} ({:.1} s)", started.elapsed().as_secs_f64())
    }))?;
    if let Some(out) = &a.out {
        std::fs::write(out, encode(&mine)?)
            .with_context(|| format!("writing {}", out.display()))?;
        println!(
            "wrote {} outputs of {} to {}",
            mine.outputs.len(),
            mine.adapter,
            out.display()
        );
    }
    match &against {
        Some(other) => report(&mine, other),
        None => Ok(()),
    }
}
