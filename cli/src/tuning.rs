//! The native workers' tuning cache: what `tessera tune` (or a worker's first start on an
//! adapter) measured, kept per adapter and driver in one JSON file (by default
//! `~/.tessera/tuning.json`), and opening the GPU with the cached matmul tiling. A worker tunes
//! an adapter the cache does not know before it connects (`--tune auto`, the default; `off`
//! keeps the adapter type's defaults; `again` measures anew).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tessera_compute::tune::{tune, with_matmul, Case, Tuning};
use tessera_compute::{Gpu, GpuOptions};

/// The largest cache file read (a few KiB an adapter).
const MAX_CACHE_BYTES: u64 = 4 << 20;

/// How long each tuned case is timed at least (ms).
pub const MIN_MS: f64 = 20.0;

/// Whether a worker tunes its adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TuneMode {
    /// Use the cached choice; measure an adapter the cache does not know, then cache it.
    Auto,
    /// The adapter type's defaults, cached or not.
    Off,
    /// Measure again and replace the cached choice.
    Again,
}

/// Which GPU a command opens and with which matmul tiling (`worker`, `calibrate`).
#[derive(clap::Args, Debug, Clone)]
pub struct GpuArgs {
    /// Use the GPU adapter whose name contains this text (ignoring case; `tessera adapters`
    /// lists them) instead of the one the system prefers.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Matmul kernel tuning: `auto` uses the tiling cached for this adapter and measures one
    /// the cache does not know first (a few seconds, once); `off` keeps the adapter type's
    /// defaults; `again` measures anew.
    #[arg(long, value_enum, default_value = "auto")]
    pub tune: TuneMode,
    /// The tuning cache (default `~/.tessera/tuning.json`; `tessera tune` writes it too).
    #[arg(long)]
    pub tuning: Option<PathBuf>,
}

impl GpuArgs {
    /// Opens the GPU these arguments name (see [`open`]).
    pub async fn open(&self) -> Result<Gpu> {
        let opts = GpuOptions {
            adapter: self.adapter.clone(),
            ..Default::default()
        };
        let cache = self.tuning.clone().unwrap_or_else(default_path);
        open(opts, self.tune, &cache).await
    }
}

/// The default cache file: `~/.tessera/tuning.json`.
pub fn default_path() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".tessera")
        .join("tuning.json")
}

/// Every adapter's tuning in the file (none when there is no file).
pub fn load(path: &Path) -> Result<BTreeMap<String, Tuning>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let len = file.metadata()?.len();
    if len > MAX_CACHE_BYTES {
        bail!(
            "{} is {len} bytes, more than a tuning cache holds ({MAX_CACHE_BYTES}); remove it",
            path.display()
        );
    }
    serde_json::from_reader(std::io::BufReader::new(file)).with_context(|| {
        format!(
            "{} is not a tuning cache (remove it, or run tessera tune)",
            path.display()
        )
    })
}

/// Records `t` for its adapter, written beside the file and renamed over it.
pub fn store(path: &Path, t: &Tuning) -> Result<()> {
    let mut all = load(path).unwrap_or_default();
    all.insert(t.adapter.clone(), t.clone());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&all)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

fn now_ms() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
        * 1e3
}

/// Tunes the adapter `opts` opens on `cases`, printing progress to standard error.
pub async fn measure(opts: &GpuOptions, cases: &[Case], min_ms: f64) -> Result<Tuning> {
    let started = std::time::Instant::now();
    let t = tune(opts, cases, min_ms, &now_ms, |i, n, tiles| {
        eprintln!(
            "  tuning: candidate {} of {n}: {:?} {}x{} ({:.1} s)",
            i + 1,
            tiles.kernel,
            tiles.bm,
            tiles.bn,
            started.elapsed().as_secs_f64()
        )
    })
    .await?;
    Ok(t)
}

/// Opens the GPU `opts` names with the matmul tiling the cache holds for it (tuning it first
/// when `mode` asks); says which tiling it uses and why.
pub async fn open(opts: GpuOptions, mode: TuneMode, cache: &Path) -> Result<Gpu> {
    let gpu = Gpu::new(opts.clone()).await?;
    if mode == TuneMode::Off {
        return Ok(gpu);
    }
    let adapter = gpu.adapter().to_string();
    // Kept when the cached tiling is the one it opened with (no second device for nothing).
    let mut gpu = Some(gpu);
    let cached = match load(cache) {
        Ok(all) => all.get(&adapter).cloned(),
        Err(e) => {
            tracing::warn!("tuning cache ignored: {e:#}");
            None
        }
    };
    let tuning = match (cached, mode) {
        (Some(t), TuneMode::Auto) => t,
        _ => {
            eprintln!(
                "tuning the matmul kernels of {adapter} (once; cached in {})",
                cache.display()
            );
            gpu = None;
            let t = measure(&opts, &Case::default_set(), MIN_MS).await?;
            if let Err(e) = store(cache, &t) {
                tracing::warn!("could not cache the tuning: {e:#}");
            }
            t
        }
    };
    let Some(matmul) = tuning.choice() else {
        tracing::warn!("no tuned tiling for {adapter}: the adapter type's defaults");
        return match gpu {
            Some(g) => Ok(g),
            None => Gpu::new(opts).await.map_err(Into::into),
        };
    };
    tracing::info!("matmul tiling {matmul:?}, tuned for {adapter} (tessera tune prints the table)");
    if let Some(g) = gpu.filter(|g| g.tiles().matmul == matmul) {
        return Ok(g);
    }
    Gpu::new(with_matmul(&opts, matmul))
        .await
        .map_err(Into::into)
}
