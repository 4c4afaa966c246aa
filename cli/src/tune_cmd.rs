//! `tessera tune`: measures this GPU's matmul tilings on a model layer's matmuls, prints the
//! table (GFLOP/s per case and overall, the winner marked, why others are out) and caches the
//! winner for `tessera worker` (which tunes an adapter the cache does not know on its own).

use std::path::PathBuf;

use anyhow::{bail, Result};
use tessera_compute::tune::Case;
use tessera_compute::GpuOptions;

use crate::tuning;

/// Options of `tune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model whose layer's matmuls are timed: a preset (`tiny-byte`, `small-byte`, `tiny`,
    /// `covenant-72b`) or a `config.json`.
    #[arg(long, default_value = "small-byte")]
    pub model: String,
    /// Tokens per matmul (the rows a lease runs at once).
    #[arg(long, default_value_t = 256)]
    pub rows: usize,
    /// Least time each case is timed, in milliseconds.
    #[arg(long, default_value_t = tuning::MIN_MS)]
    pub min_ms: f64,
    /// The GPU adapter whose name contains this text (`tessera adapters` lists them).
    #[arg(long)]
    pub adapter: Option<String>,
    /// The tuning cache to update (default `~/.tessera/tuning.json`, where workers look).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Print the table and leave the cache alone.
    #[arg(long)]
    pub dry_run: bool,
}

/// Tunes, prints, caches.
pub fn run(a: Args) -> Result<()> {
    if a.rows == 0 || a.rows > 1 << 16 {
        bail!("--rows must be 1 to 65536, not {}", a.rows);
    }
    if !(a.min_ms.is_finite() && a.min_ms > 0.0 && a.min_ms <= 60_000.0) {
        bail!(
            "--min-ms must be above 0 and at most 60000, not {}",
            a.min_ms
        );
    }
    let cfg = crate::plan_cmd::model(&a.model)?;
    let cases = Case::of_layer(&cfg, a.rows);
    let opts = GpuOptions {
        adapter: a.adapter.clone(),
        ..Default::default()
    };
    let t = pollster::block_on(tuning::measure(&opts, &cases, a.min_ms))?;
    print!("{}", t.table());
    if t.choice().is_none() {
        bail!("no candidate tiling ran correctly on this adapter");
    }
    if !a.dry_run {
        let path = a.cache.unwrap_or_else(tuning::default_path);
        tuning::store(&path, &t)?;
        println!("cached in {} for {}", path.display(), t.adapter);
    }
    Ok(())
}
