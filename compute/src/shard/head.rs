//! `Head(vocab columns)`: final RMSNorm and the columns' rows of the LM head, in the three
//! passes of the vocab-parallel cross-entropy: per-token statistics of the slice, combination
//! by the caller ([`combine`]), and the backward from the combined log-sum-exp.

use super::kind::{MicroShard, Rows};
use super::params::GpuShard;
use crate::error::ComputeError;
use crate::gpu::{Gpu, Tensor};
use crate::kernels::Layout;
pub use crate::reference::ops::SliceStats as HeadStats;

impl GpuShard {
    fn expect_head(&self, targets: &[u32], rows: Rows) -> Result<usize, ComputeError> {
        if !matches!(self.shard, MicroShard::Head { .. }) {
            return Err(ComputeError::Shape(format!(
                "{} is not a Head shard",
                self.shard
            )));
        }
        let n = self.check_rows(rows)?;
        if targets.len() != n {
            return Err(ComputeError::Shape(format!(
                "{} targets for {n} rows",
                targets.len()
            )));
        }
        self.check_tokens(targets, true)?;
        Ok(n)
    }

    fn piece_logits(
        &self,
        gpu: &Gpu,
        xn: &Tensor,
        w: &Tensor,
        n: usize,
        cols: usize,
    ) -> Result<Tensor, ComputeError> {
        let logits = gpu.zeros(&[n, cols])?;
        gpu.matmul(
            Layout::NT,
            xn,
            w,
            &logits,
            n,
            cols,
            self.cfg.hidden_size,
            false,
        )?;
        Ok(logits)
    }

    /// The slice's logits `[rows, cols]` (row-major) for input `h`.
    pub async fn head_logits(
        &self,
        gpu: &Gpu,
        h: &Tensor,
        rows: Rows,
    ) -> Result<Vec<f32>, ComputeError> {
        if !matches!(self.shard, MicroShard::Head { .. }) {
            return Err(ComputeError::Shape(format!(
                "{} is not a Head shard",
                self.shard
            )));
        }
        let n = self.check_rows(rows)?;
        let (xn, _) = self.norm_forward(gpu, h, n)?;
        let total = self.shard.units().len();
        let start = self.shard.units().start;
        let mut out = vec![0.0f32; n * total];
        for p in &self.pieces {
            let cols = p.units.len();
            let part = gpu
                .read(&self.piece_logits(gpu, &xn, &p.slots[0].w, n, cols)?)
                .await?;
            for r in 0..n {
                let o = r * total + p.units.start - start;
                out[o..o + cols].copy_from_slice(&part[r * cols..(r + 1) * cols]);
            }
        }
        Ok(out)
    }

    /// Pass 1: this slice's per-token max, sum-exp and (where it owns it) target logit.
    pub async fn head_forward(
        &self,
        gpu: &Gpu,
        h: &Tensor,
        targets: &[u32],
        rows: Rows,
    ) -> Result<HeadStats, ComputeError> {
        let n = self.expect_head(targets, rows)?;
        let (xn, _) = self.norm_forward(gpu, h, n)?;
        let tt = gpu.upload_u32(targets)?;
        let stats = gpu.zeros(&[n, 4])?;
        for (i, p) in self.pieces.iter().enumerate() {
            let logits = self.piece_logits(gpu, &xn, &p.slots[0].w, n, p.units.len())?;
            gpu.cross_entropy_stats(&logits, &tt, &stats, n, p.units.len(), p.units.start, i > 0)?;
        }
        let s = gpu.read(&stats).await?;
        let mut out = HeadStats::default();
        for r in 0..n {
            out.max.push(s[r * 4] as f64);
            out.sum_exp.push(s[r * 4 + 1] as f64);
            out.target_logit
                .push((s[r * 4 + 3] != 0.0).then_some(s[r * 4 + 2] as f64));
        }
        Ok(out)
    }

    /// Pass 3: accumulates the slice's gradients from the combined per-token log-sum-exp and
    /// `1 / counted tokens`; returns the slice's partial input gradient.
    pub fn head_backward(
        &self,
        gpu: &Gpu,
        h: &Tensor,
        targets: &[u32],
        lse: &[f32],
        inv_count: f32,
        rows: Rows,
    ) -> Result<Tensor, ComputeError> {
        let n = self.expect_head(targets, rows)?;
        if lse.len() != n || lse.iter().any(|x| !x.is_finite()) || !inv_count.is_finite() {
            return Err(ComputeError::Shape(format!(
                "head backward needs {n} finite log-sum-exp values and a finite 1/count"
            )));
        }
        let d = self.cfg.hidden_size;
        let (xn, rstd) = self.norm_forward(gpu, h, n)?;
        let tt = gpu.upload_u32(targets)?;
        let tl = gpu.upload(lse, &[n])?;
        let dxn = gpu.zeros(&[n, d])?;
        for (i, p) in self.pieces.iter().enumerate() {
            let cols = p.units.len();
            let g = self.piece_logits(gpu, &xn, &p.slots[0].w, n, cols)?;
            gpu.cross_entropy_backward(&g, &tt, &tl, n, cols, p.units.start, inv_count)?;
            gpu.matmul(Layout::TN, &g, &xn, &p.slots[0].g, cols, d, n, true)?;
            gpu.matmul(Layout::NN, &g, &p.slots[0].w, &dxn, n, d, cols, i > 0)?;
        }
        self.norm_backward(gpu, h, &rstd, &dxn, n)
    }
}

/// Pass 2: combines every head slice's statistics into per-token log-sum-exp and the mean loss
/// over counted tokens. Returns `(lse, loss, counted tokens)`.
pub fn combine(slices: &[HeadStats], targets: &[u32]) -> (Vec<f64>, f64, usize) {
    crate::reference::ops::combine_stats(slices, targets)
}
