//! Embedding gather and its scatter-add gradient (no atomics: the host groups token positions
//! by table row, and each invocation sums one row and column).

use super::{need, u32_of};
use crate::error::ComputeError;
use crate::gpu::{Gpu, Params, Tensor};

/// Token positions grouped by the table row (of the slice `lo..lo+n`) they read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowIndex {
    /// `starts[r]..starts[r+1]` indexes `order` for row `r`.
    pub starts: Vec<u32>,
    /// Token positions, grouped by row, ascending within a row.
    pub order: Vec<u32>,
}

impl RowIndex {
    /// Groups the positions of `ids` that fall in rows `lo..lo+n`.
    pub fn new(ids: &[u32], lo: usize, n: usize) -> Self {
        let mut counts = vec![0u32; n + 1];
        for &id in ids {
            let id = id as usize;
            if id >= lo && id < lo + n {
                counts[id - lo + 1] += 1;
            }
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let starts = counts.clone();
        let mut next = counts;
        let mut order = vec![0u32; starts[n] as usize];
        for (t, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= lo && id < lo + n {
                order[next[id - lo] as usize] = t as u32;
                next[id - lo] += 1;
            }
        }
        RowIndex { starts, order }
    }
}

impl Gpu {
    /// `out[t] (+)= table[ids[t] - lo]` for ids in `lo..lo+n`, zero rows otherwise.
    pub fn embedding(
        &self,
        ids: &Tensor,
        table: &Tensor,
        out: &Tensor,
        tokens: usize,
        lo: usize,
        n: usize,
        d: usize,
        accumulate: bool,
    ) -> Result<(), ComputeError> {
        need("embedding ids", ids, tokens)?;
        need("embedding table", table, n * d)?;
        need("embedding out", out, tokens * d)?;
        let p = Params::new()
            .u(u32_of("tokens", tokens)?)
            .u(u32_of("d", d)?)
            .u(u32_of("lo", lo)?)
            .u(u32_of("n", n)?)
            .u(accumulate as u32);
        self.dispatch(
            "embedding_forward",
            &self.wg_consts(),
            &[&ids.buf, &table.buf, &out.buf],
            p,
            self.elementwise_grid(tokens * d)?,
        )
    }

    /// `dtable (+)= scatter-add of dy rows` using an index built by [`RowIndex::new`].
    pub fn embedding_backward(
        &self,
        starts: &Tensor,
        order: &Tensor,
        dy: &Tensor,
        dtable: &Tensor,
        tokens: usize,
        n: usize,
        d: usize,
        accumulate: bool,
    ) -> Result<(), ComputeError> {
        need("embedding starts", starts, n + 1)?;
        need("embedding dy", dy, tokens * d)?;
        need("embedding dtable", dtable, n * d)?;
        let p = Params::new()
            .u(u32_of("n", n)?)
            .u(u32_of("d", d)?)
            .u(accumulate as u32);
        self.dispatch(
            "embedding_backward",
            &self.wg_consts(),
            &[&starts.buf, &order.buf, &dy.buf, &dtable.buf],
            p,
            self.elementwise_grid(n * d)?,
        )
    }
}
