//! The tab's kernel tuning: the matmul tiling measured on this browser's GPU the first time it
//! contributes (every candidate timed on a layer's matmuls, checked against the CPU reference,
//! progress shown), kept by the page (its `localStorage`, per origin) and handed back on later
//! visits, so a tab measures once.

use serde::{Deserialize, Serialize};
use tessera_compute::tune::{tune, Case};
use tessera_compute::{Gpu, GpuOptions, MatmulTiles};

use crate::client::post;
use crate::report::Report;

/// What the page keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tuned {
    /// The adapter it was measured on (as `AdapterSummary` displays it).
    pub adapter: String,
    /// The winning tiling.
    pub tiles: MatmulTiles,
}

/// Least milliseconds each case is timed (the clock in a worker is coarse).
const MIN_MS: f64 = 20.0;

/// The tiling for `gpu`: the kept one when it was measured on this adapter, else measured now
/// (reported as it goes, the result posted for the page to keep); `None` when nothing ran
/// correctly (the adapter type's defaults stay).
pub async fn tiles_for(gpu: &Gpu, opts: &GpuOptions, kept: Option<&str>) -> Option<MatmulTiles> {
    let adapter = gpu.adapter().to_string();
    if let Some(t) = kept.and_then(|k| serde_json::from_str::<Tuned>(k).ok()) {
        if t.adapter == adapter {
            return Some(t.tiles);
        }
    }
    let clock = js_sys::Date::now;
    let t = tune(opts, &Case::default_set(), MIN_MS, &clock, |i, n, _| {
        post(&Report::Tuning {
            candidate: i as u32 + 1,
            of: n as u32,
        })
    })
    .await;
    let t = match t {
        Ok(t) => t,
        Err(e) => {
            post(&Report::Note {
                text: format!("kernel tuning failed ({e}); the defaults stay"),
            });
            return None;
        }
    };
    let tiles = t.choice()?;
    let keep = Tuned { adapter, tiles };
    post(&Report::Tuned {
        keep: serde_json::to_string(&keep).unwrap_or_default(),
        tiles: format!(
            "{:?} {}x{} (bk {}, {}x{} per invocation)",
            tiles.kernel, tiles.bm, tiles.bn, tiles.bk, tiles.tm, tiles.tn
        ),
        gflops: t.chosen.and_then(|i| t.gflops(i)).unwrap_or(0.0),
        table: t.table(),
    });
    Some(tiles)
}
