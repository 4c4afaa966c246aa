//! Vocab-parallel softmax cross-entropy: per-token statistics of a chunk of logits (merged
//! chunk by chunk), and the gradient in place given the combined log-sum-exp.

use super::{need, u32_of};
use crate::error::ComputeError;
use crate::gpu::{Gpu, Params, Tensor};

impl Gpu {
    /// Pass 1 on logits `[rows, n]` of vocabulary columns `lo..lo+n`: `stats: [rows, 4]` =
    /// (max, sum-exp, target logit, owns target), merged into existing stats when `accumulate`.
    pub fn cross_entropy_stats(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        stats: &Tensor,
        rows: usize,
        n: usize,
        lo: usize,
        accumulate: bool,
    ) -> Result<(), ComputeError> {
        need("cross-entropy logits", logits, rows * n)?;
        need("cross-entropy targets", targets, rows)?;
        need("cross-entropy stats", stats, rows * 4)?;
        let p = Params::new()
            .u(u32_of("rows", rows)?)
            .u(u32_of("n", n)?)
            .u(u32_of("lo", lo)?)
            .u(accumulate as u32);
        self.dispatch(
            "cross_entropy_stats",
            &self.wg_consts(),
            &[&logits.buf, &targets.buf, &stats.buf],
            p,
            self.grid(rows as u64)?,
        )
    }

    /// Pass 3, in place: logits become `(softmax - onehot) * inv_count` (zero for ignored rows).
    pub fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        rows: usize,
        n: usize,
        lo: usize,
        inv_count: f32,
    ) -> Result<(), ComputeError> {
        need("cross-entropy logits", logits, rows * n)?;
        need("cross-entropy targets", targets, rows)?;
        need("cross-entropy lse", lse, rows)?;
        let p = Params::new()
            .u(u32_of("rows", rows)?)
            .u(u32_of("n", n)?)
            .u(u32_of("lo", lo)?)
            .f(inv_count);
        self.dispatch(
            "cross_entropy_backward",
            &self.wg_consts(),
            &[&logits.buf, &targets.buf, &lse.buf],
            p,
            self.elementwise_grid(rows * n)?,
        )
    }
}
