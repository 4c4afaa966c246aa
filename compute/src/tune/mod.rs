//! The kernel autotuner, in the manner of cubecl's: on an adapter, time every candidate matmul
//! tiling ([`candidates`]) on the matmuls a model's layer runs ([`Case::of_layer`]: forward,
//! input gradient, weight gradient), check each result against the CPU reference, and pick the
//! fastest correct one ([`choose`]). Contributors' GPUs differ by orders of magnitude, so no
//! tiling is right for all of them; this measures instead of guessing by adapter type. The
//! caller supplies the clock (milliseconds; `Instant` natively, `performance.now()` in a
//! browser), so the tuner runs wherever the kernels do. The choice is cached per adapter and
//! driver by the caller (`tessera tune` writes the native workers' file).

mod candidates;

pub use candidates::{candidates, choose, finalists, Measured};

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::ComputeError;
use crate::gpu::{Gpu, GpuOptions};
use crate::kernels::Layout;
use crate::reference::model::SplitMix;
use crate::reference::ops::{matmul_nn, matmul_nt, matmul_tn};
use crate::tiles::{MatmulTiles, Tiles};

/// Largest relative L2 error from the CPU reference a candidate may show (f32 sums of up to a
/// few thousand terms, grouped differently, stay far below it).
pub const TOLERANCE: f64 = 1e-5;

/// A candidate slower than this many times the best so far on a case is not timed further.
const DROP_SLOWER: f64 = 4.0;

/// How many of the fastest are timed again, and how many turns each gets.
const FINALISTS: usize = 3;
const TURNS: usize = 3;

/// One matmul the tuner times: `C[m,n] = op(A) op(B)` summed over `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// Operand layout.
    pub layout: Layout,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// Reduction length.
    pub k: usize,
}

impl Case {
    /// The matmuls of one layer of `cfg` over `rows` tokens: the MLP's up projection forward
    /// (NT), its input gradient (NN) and its weight gradient (TN), and the attention output
    /// projection forward (NT).
    pub fn of_layer(cfg: &ModelConfig, rows: usize) -> Vec<Case> {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        vec![
            Case {
                layout: Layout::NT,
                m: rows,
                n: f,
                k: d,
            },
            Case {
                layout: Layout::NN,
                m: rows,
                n: d,
                k: f,
            },
            Case {
                layout: Layout::TN,
                m: f,
                n: d,
                k: rows,
            },
            Case {
                layout: Layout::NT,
                m: rows,
                n: d,
                k: d,
            },
        ]
    }

    /// The matmuls tuned when nothing names a model: a layer of the `small-byte` preset (128
    /// wide, 344 MLP columns) over 256 tokens, a browser-sized shard.
    pub fn default_set() -> Vec<Case> {
        let cfg = ModelConfig {
            vocab_size: 256,
            hidden_size: 128,
            intermediate_size: 344,
            num_hidden_layers: 1,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 32,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 256,
            tie_word_embeddings: false,
        };
        Case::of_layer(&cfg, 256)
    }

    /// Floating-point operations of one run.
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }
}

/// What tuning an adapter found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    /// The adapter, as `AdapterSummary` displays it (name, backend, type, driver).
    pub adapter: String,
    /// The cases timed.
    pub cases: Vec<Case>,
    /// Every candidate, as measured.
    pub rows: Vec<Measured>,
    /// The winner's row (`None` when no candidate qualified).
    pub chosen: Option<usize>,
    /// Runs the timing of each case needed at least this long (ms).
    pub min_ms: f64,
}

impl Tuning {
    /// The winning tiling.
    pub fn choice(&self) -> Option<MatmulTiles> {
        self.chosen.map(|i| self.rows[i].tiles)
    }

    /// GFLOP/s of `row` over every case it was timed on.
    pub fn gflops(&self, row: usize) -> Option<f64> {
        let r = &self.rows[row];
        if r.secs.is_empty() {
            return None;
        }
        let flops: f64 = self.cases[..r.secs.len()].iter().map(Case::flops).sum();
        Some(flops / r.secs.iter().sum::<f64>() / 1e9)
    }

    /// The table `tessera tune` prints: one line per candidate, GFLOP/s per case and overall,
    /// the winner marked, the reason beside each excluded one.
    pub fn table(&self) -> String {
        let mut out = format!("adapter: {}\n", self.adapter);
        let heads: Vec<String> = self
            .cases
            .iter()
            .map(|c| format!("{:?} {}x{}x{}", c.layout, c.m, c.n, c.k))
            .collect();
        out += &format!("{:<34}", "tiling (kernel bm bn bk tm tn)");
        for h in &heads {
            out += &format!(" {h:>16}");
        }
        out += &format!(" {:>9} {:>9}\n", "GFLOP/s", "again");
        for (i, r) in self.rows.iter().enumerate() {
            let t = r.tiles;
            let mark = if Some(i) == self.chosen { "*" } else { " " };
            out += &format!(
                "{mark} {:<32}",
                format!(
                    "{:?} {} {} {} {} {}",
                    t.kernel, t.bm, t.bn, t.bk, t.tm, t.tn
                )
            );
            for (j, c) in self.cases.iter().enumerate() {
                match r.secs.get(j) {
                    Some(s) => out += &format!(" {:>16.2}", c.flops() / s / 1e9),
                    None => out += &format!(" {:>16}", "-"),
                }
            }
            match self.gflops(i) {
                Some(g) => out += &format!(" {g:>9.2}"),
                None => out += &format!(" {:>9}", "-"),
            }
            let all: f64 = self.cases.iter().map(Case::flops).sum();
            match r.confirmed {
                Some(s) if s.is_finite() => out += &format!(" {:>9.2}", all / s / 1e9),
                _ => out += &format!(" {:>9}", "-"),
            }
            if let Some(why) = &r.excluded {
                out += &format!("  ({why})");
            }
            out += "\n";
        }
        match self.choice() {
            Some(t) => {
                out += &format!(
                    "chosen: {t:?} (marked *; \"again\": the fastest timed again in {TURNS} turns, which decide)\n"
                )
            }
            None => out += "chosen: none (every candidate was excluded)\n",
        }
        out
    }
}

/// `base` with the matmul tiling `matmul` (its other sizes as `base` has them).
pub fn with_matmul(base: &GpuOptions, matmul: MatmulTiles) -> GpuOptions {
    GpuOptions {
        tiles: Some(Tiles {
            matmul,
            ..base.tiles.unwrap_or_default()
        }),
        ..base.clone()
    }
}

/// Operands of a case, seeded, and the CPU reference's result.
fn operands(c: &Case, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut r = SplitMix(seed);
    let (a_len, b_len) = (c.m * c.k, c.k * c.n);
    let a: Vec<f32> = r.vec(a_len, 1.0);
    let b: Vec<f32> = r.vec(b_len, 1.0);
    let want = match c.layout {
        Layout::NT => matmul_nt(&a, &b, c.m, c.n, c.k),
        Layout::NN => matmul_nn(&a, &b, c.m, c.n, c.k),
        Layout::TN => matmul_tn(&a, &b, c.m, c.n, c.k),
    };
    (a, b, want)
}

fn shape(c: &Case) -> ([usize; 2], [usize; 2]) {
    match c.layout {
        Layout::NT => ([c.m, c.k], [c.n, c.k]),
        Layout::NN => ([c.m, c.k], [c.k, c.n]),
        Layout::TN => ([c.k, c.m], [c.k, c.n]),
    }
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Times `tiles` on `cases` (opening the adapter `base` names with them); the best time per
/// case, or why the candidate is out. `best` holds the best time so far per case, for dropping
/// a candidate that is far slower.
async fn measure(
    base: &GpuOptions,
    tiles: MatmulTiles,
    cases: &[Case],
    data: &[(Vec<f32>, Vec<f32>, Vec<f32>)],
    min_ms: f64,
    best: &[Option<f64>],
    clock: &dyn Fn() -> f64,
) -> Measured {
    let mut m = Measured {
        tiles,
        secs: Vec::new(),
        excluded: None,
        confirmed: None,
    };
    let gpu = match Gpu::new(with_matmul(base, tiles)).await {
        Ok(g) => g,
        Err(e) => {
            m.excluded = Some(format!("not on this adapter: {e}"));
            return m;
        }
    };
    for (i, (c, (a, b, want))) in cases.iter().zip(data).enumerate() {
        match time_case(&gpu, c, a, b, want, min_ms, clock).await {
            Ok(s) => {
                m.secs.push(s);
                if best[i].is_some_and(|b| s > DROP_SLOWER * b) {
                    m.excluded = Some(format!("over {DROP_SLOWER}x the best on a case"));
                    return m;
                }
            }
            Err(why) => {
                m.excluded = Some(why);
                return m;
            }
        }
    }
    m
}

/// One case on `gpu`: checked once against the reference, then run until `min_ms` passed (at
/// least twice); the mean seconds a run.
async fn time_case(
    gpu: &Gpu,
    c: &Case,
    a: &[f32],
    b: &[f32],
    want: &[f32],
    min_ms: f64,
    clock: &dyn Fn() -> f64,
) -> Result<f64, String> {
    let (sa, sb) = shape(c);
    let err = |e: ComputeError| e.to_string();
    let ta = gpu.upload(a, &sa).map_err(err)?;
    let tb = gpu.upload(b, &sb).map_err(err)?;
    let tc = gpu.zeros(&[c.m, c.n]).map_err(err)?;
    gpu.matmul(c.layout, &ta, &tb, &tc, c.m, c.n, c.k, false)
        .map_err(err)?;
    let got = gpu.read(&tc).await.map_err(err)?;
    let e = rel(&got, want);
    if e.is_nan() || e > TOLERANCE {
        return Err(format!(
            "wrong: {:?} {}x{}x{} off the reference by {e:.1e}",
            c.layout, c.m, c.n, c.k
        ));
    }
    let mut runs = 0u32;
    let start = clock();
    while runs < 2 || clock() - start < min_ms {
        gpu.matmul(c.layout, &ta, &tb, &tc, c.m, c.n, c.k, false)
            .map_err(err)?;
        gpu.idle().await.map_err(err)?;
        runs += 1;
    }
    Ok((clock() - start) / 1e3 / runs as f64)
}

/// Times the fastest few again, in turns (each once per turn, every case, the order rotating),
/// so that a moment of noise during the first pass (another process, a clock step) does not
/// decide alone; each keeps its least total.
async fn confirm(
    base: &GpuOptions,
    rows: &mut [Measured],
    cases: &[Case],
    data: &[(Vec<f32>, Vec<f32>, Vec<f32>)],
    min_ms: f64,
    clock: &dyn Fn() -> f64,
) {
    let picked = finalists(rows, cases.len(), FINALISTS);
    if picked.len() < 2 {
        return;
    }
    let mut open = Vec::new();
    for &i in &picked {
        match Gpu::new(with_matmul(base, rows[i].tiles)).await {
            Ok(g) => open.push((i, g)),
            Err(_) => return,
        }
    }
    for turn in 0..TURNS {
        for k in 0..open.len() {
            let (i, gpu) = &open[(k + turn) % open.len()];
            let mut total = 0.0;
            for (c, (a, b, want)) in cases.iter().zip(data) {
                match time_case(gpu, c, a, b, want, min_ms, clock).await {
                    Ok(s) => total += s,
                    Err(why) => {
                        rows[*i].excluded = Some(why);
                        total = f64::INFINITY;
                        break;
                    }
                }
            }
            let best = rows[*i].confirmed.map_or(total, |b| b.min(total));
            rows[*i].confirmed = Some(best);
        }
    }
}

/// Tunes the matmul tiling of the adapter `base` opens on `cases`: every candidate its limits
/// allow, each case timed for at least `min_ms`; `progress` hears of each candidate as it
/// starts (`i` of `n`).
pub async fn tune(
    base: &GpuOptions,
    cases: &[Case],
    min_ms: f64,
    clock: &dyn Fn() -> f64,
    mut progress: impl FnMut(usize, usize, &MatmulTiles),
) -> Result<Tuning, ComputeError> {
    let probe = Gpu::new(base.clone()).await?;
    let adapter = probe.adapter().to_string();
    let limits = probe.limits().clone();
    drop(probe);
    let data: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| operands(c, 11 + i as u64))
        .collect();
    let all = candidates();
    let mut rows = Vec::with_capacity(all.len());
    let mut best: Vec<Option<f64>> = vec![None; cases.len()];
    for (i, tiles) in all.into_iter().enumerate() {
        progress(i, candidates().len(), &tiles);
        let t = with_matmul(base, tiles).tiles.unwrap_or_default();
        let row = match t.validate(&limits) {
            Err(e) => Measured {
                tiles,
                secs: Vec::new(),
                excluded: Some(format!("not on this adapter: {e}")),
                confirmed: None,
            },
            Ok(()) => measure(base, tiles, cases, &data, min_ms, &best, clock).await,
        };
        if row.excluded.is_none() {
            for (b, s) in best.iter_mut().zip(&row.secs) {
                *b = Some(b.map_or(*s, |b: f64| b.min(*s)));
            }
        }
        rows.push(row);
    }
    confirm(base, &mut rows, cases, &data, min_ms, clock).await;
    let chosen = choose(&rows, cases.len());
    Ok(Tuning {
        adapter,
        cases: cases.to_vec(),
        rows,
        chosen,
        min_ms,
    })
}
