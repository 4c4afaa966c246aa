//! SparseLoCo compression of pseudo-gradients (as in Covenant-72B): the tensor is tiled into
//! chunks (64 x 64 by default); per chunk the `k` entries of largest magnitude are kept, each
//! sent as 2 bits (sign, and which of the chunk's two magnitude levels); what was not sent stays
//! in an error-feedback buffer `e = beta * e + delta`, from which the sent part is subtracted.

use serde::{Deserialize, Serialize};
use tessera_protocol::messages::SyncMode;

use crate::error::TrainError;

/// Compression parameters (Covenant-72B's: 64 x 64 chunks, k = 64, beta 0.95; a run's default
/// beta is 0.8, measured better on the sync benchmark).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseConfig {
    /// Chunk rows and columns.
    pub chunk: [usize; 2],
    /// Entries kept per chunk.
    pub k: usize,
    /// Error-feedback decay.
    pub beta: f32,
}

impl Default for SparseConfig {
    fn default() -> Self {
        SparseConfig {
            chunk: [64, 64],
            k: 64,
            beta: 0.95,
        }
    }
}

impl SparseConfig {
    /// The compression of a run's sync mode (`None` for dense).
    pub fn from_sync(sync: &SyncMode) -> Option<Self> {
        match *sync {
            SyncMode::Dense => None,
            SyncMode::Sparse { chunk, k, beta } => Some(SparseConfig {
                chunk: [chunk[0] as usize, chunk[1] as usize],
                k: k as usize,
                beta,
            }),
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), TrainError> {
        let n = self.chunk[0] * self.chunk[1];
        if n == 0 || n > u16::MAX as usize + 1 || self.k == 0 || self.k > n {
            return Err(TrainError::Config(format!(
                "chunk {:?} and k {} must satisfy 0 < k <= chunk size <= 65536",
                self.chunk, self.k
            )));
        }
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(TrainError::Config(format!(
                "beta {} must be within 0..=1",
                self.beta
            )));
        }
        Ok(())
    }
}

/// One chunk of a `[rows, cols]` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    r0: usize,
    c0: usize,
    h: usize,
    w: usize,
}

/// The chunks of a `[rows, cols]` tensor, row after row of chunks.
pub(crate) fn chunks(shape: [usize; 2], chunk: [usize; 2]) -> Vec<Chunk> {
    let [rows, cols] = shape;
    let mut out = Vec::new();
    for r0 in (0..rows).step_by(chunk[0]) {
        for c0 in (0..cols).step_by(chunk[1]) {
            out.push(Chunk {
                r0,
                c0,
                h: chunk[0].min(rows - r0),
                w: chunk[1].min(cols - c0),
            });
        }
    }
    out
}

impl Chunk {
    fn at(&self, cols: usize, i: usize) -> usize {
        (self.r0 + i / self.w) * cols + self.c0 + i % self.w
    }
    pub(crate) fn len(&self) -> usize {
        self.h * self.w
    }
}

/// A compressed tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Compressed {
    /// Dense shape `[rows, cols]` (a vector is `[1, n]`).
    pub shape: [usize; 2],
    /// Chunk shape.
    pub chunk: [usize; 2],
    /// Entries per full chunk.
    pub k: usize,
    /// Positions within chunks (row-major in the chunk), ascending within each, chunk after
    /// chunk.
    pub indices: Vec<u16>,
    /// 2-bit codes packed four per byte: bit 0 negative, bit 1 high level.
    pub codes: Vec<u8>,
    /// `(low, high)` magnitude level per chunk.
    pub levels: Vec<[f32; 2]>,
}

/// Entries kept in chunk `c`: `k`, or all of a smaller chunk.
pub(crate) fn kept(k: usize, c: &Chunk) -> usize {
    k.min(c.len())
}

/// Top-k per chunk of `e` with 2-bit values.
pub fn compress(e: &[f32], shape: [usize; 2], cfg: &SparseConfig) -> Compressed {
    let cols = shape[1];
    let mut out = Compressed {
        shape,
        chunk: cfg.chunk,
        k: cfg.k,
        indices: Vec::new(),
        codes: Vec::new(),
        levels: Vec::new(),
    };
    let mut entry = 0usize;
    let mut order: Vec<usize> = Vec::with_capacity(cfg.chunk[0] * cfg.chunk[1]);
    for c in chunks(shape, cfg.chunk) {
        order.clear();
        order.extend(0..c.len());
        // Largest magnitude first; ties by position, so the choice is deterministic.
        order.sort_by(|&a, &b| {
            e[c.at(cols, b)]
                .abs()
                .total_cmp(&e[c.at(cols, a)].abs())
                .then(a.cmp(&b))
        });
        let top = &mut order[..kept(cfg.k, &c)];
        // Sent in position order (the wire form codes the gaps between positions).
        top.sort_unstable();
        let top = &*top;
        let mags: Vec<f32> = top.iter().map(|&i| e[c.at(cols, i)].abs()).collect();
        let (lo_m, hi_m) = (
            mags.iter().cloned().fold(f32::INFINITY, f32::min),
            mags.iter().cloned().fold(0.0, f32::max),
        );
        let threshold = 0.5 * (lo_m + hi_m);
        let mean = |hi: bool| {
            let sel: Vec<f32> = mags
                .iter()
                .cloned()
                .filter(|&m| (m >= threshold) == hi)
                .collect();
            (!sel.is_empty()).then(|| sel.iter().sum::<f32>() / sel.len() as f32)
        };
        let hi_level = mean(true).unwrap_or(0.0);
        let lo_level = mean(false).unwrap_or(hi_level);
        out.levels.push([lo_level, hi_level]);
        for (&i, &m) in top.iter().zip(&mags) {
            let v = e[c.at(cols, i)];
            let code = u8::from(v < 0.0) | (u8::from(m >= threshold) << 1);
            if entry.is_multiple_of(4) {
                out.codes.push(0);
            }
            *out.codes.last_mut().expect("pushed above") |= code << (2 * (entry % 4));
            out.indices.push(i as u16);
            entry += 1;
        }
    }
    out
}

impl Compressed {
    /// Adds `scale` times the decompressed tensor into `out`.
    pub fn add_into(&self, out: &mut [f32], scale: f32) {
        let cols = self.shape[1];
        let mut entry = 0usize;
        for (ci, c) in chunks(self.shape, self.chunk).iter().enumerate() {
            let [lo, hi] = self.levels[ci];
            for _ in 0..kept(self.k, c) {
                let code = self.code(entry);
                let mag = if code & 2 != 0 { hi } else { lo };
                let v = if code & 1 != 0 { -mag } else { mag };
                out[c.at(cols, self.indices[entry] as usize)] += scale * v;
                entry += 1;
            }
        }
    }

    /// The dense tensor it stands for.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.shape[0] * self.shape[1]];
        self.add_into(&mut out, 1.0);
        out
    }

    /// Entry `e`'s 2-bit code (bit 0: negative; bit 1: the high level).
    pub fn code(&self, e: usize) -> u8 {
        (self.codes[e / 4] >> (2 * (e % 4))) & 3
    }
}

/// Whether `sent` is what compressing `dense` with zero error feedback gives, up to the drift
/// between two GPUs (`eps`, relative): in each chunk every sent entry is among the `k` largest
/// magnitudes of `dense` (at least the k-th largest less `eps` of it) with `dense`'s sign; each
/// entry's level (high or low) is the one its magnitude calls for, except within `eps` of the
/// threshold between the two; and each level is the mean magnitude of `dense` over the entries
/// given it, within `eps`. Near-ties may go either way, so honest replays on two GPUs agree, and
/// a sender can bias what it sends by no more than about `eps`.
pub fn matches_compression(sent: &Compressed, dense: &[f32], eps: f32) -> Result<(), String> {
    let [rows, cols] = sent.shape;
    if dense.len() != rows * cols {
        return Err(format!(
            "{} values for a [{rows}, {cols}] tensor",
            dense.len()
        ));
    }
    let mut entry = 0usize;
    let mut mags: Vec<f32> = Vec::new();
    for (ci, c) in chunks(sent.shape, sent.chunk).iter().enumerate() {
        let n = kept(sent.k, c);
        mags.clear();
        mags.extend((0..c.len()).map(|i| dense[c.at(cols, i)].abs()));
        mags.sort_by(|a, b| b.total_cmp(a));
        let kth = mags[n - 1];
        let top = mags[0];
        let slack = eps * top.max(f32::MIN_POSITIVE);
        let picked: Vec<(f32, f32, bool)> = (entry..entry + n)
            .map(|e| {
                let v = dense[c.at(cols, sent.indices[e] as usize)];
                let code = sent.code(e);
                (v, if code & 1 != 0 { -1.0 } else { 1.0 }, code & 2 != 0)
            })
            .collect();
        let (lo_m, hi_m) = picked.iter().fold((f32::INFINITY, 0.0f32), |(lo, hi), p| {
            (lo.min(p.0.abs()), hi.max(p.0.abs()))
        });
        let threshold = 0.5 * (lo_m + hi_m);
        let (mut sums, mut counts) = ([0.0f64; 2], [0usize; 2]);
        for (j, &(v, sign, high)) in picked.iter().enumerate() {
            let m = v.abs();
            let at = || format!("chunk {ci}, entry {j}");
            if m < kth - slack {
                return Err(format!(
                    "{}: a magnitude of {m:.3e} sent where the {n} largest reach {kth:.3e}",
                    at()
                ));
            }
            if m > slack && sign != v.signum() {
                return Err(format!("{}: the sign of {v:.3e} flipped", at()));
            }
            if (high && m < threshold - slack) || (!high && m > threshold + slack) {
                return Err(format!(
                    "{}: {m:.3e} given the {} level, the threshold being {threshold:.3e}",
                    at(),
                    if high { "high" } else { "low" }
                ));
            }
            sums[usize::from(high)] += m as f64;
            counts[usize::from(high)] += 1;
        }
        let [lo, hi] = sent.levels[ci];
        let mean = |g: usize| (counts[g] > 0).then(|| (sums[g] / counts[g] as f64) as f32);
        let want_hi = mean(1).unwrap_or(0.0);
        let want_lo = mean(0).unwrap_or(want_hi);
        for (what, got, want) in [("high", hi, want_hi), ("low", lo, want_lo)] {
            if (got - want).abs() > slack {
                return Err(format!(
                    "chunk {ci}: {what} level {got:.4e}, the entries given it average {want:.4e}"
                ));
            }
        }
        entry += n;
    }
    Ok(())
}

/// The error-feedback buffer of one tensor on one replica.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorFeedback {
    shape: [usize; 2],
    e: Vec<f32>,
}

impl ErrorFeedback {
    /// A zero buffer for a `[rows, cols]` tensor.
    pub fn new(shape: [usize; 2]) -> Self {
        ErrorFeedback {
            shape,
            e: vec![0.0; shape[0] * shape[1]],
        }
    }

    /// `e = beta * e + delta`, compress, `e -= sent`; returns what to send.
    pub fn step(&mut self, delta: &[f32], cfg: &SparseConfig) -> Compressed {
        for (e, d) in self.e.iter_mut().zip(delta) {
            *e = cfg.beta * *e + d;
        }
        let c = compress(&self.e, self.shape, cfg);
        c.add_into(&mut self.e, -1.0);
        c
    }

    /// The residual not yet sent.
    pub fn residual(&self) -> &[f32] {
        &self.e
    }
}
