//! Causal grouped-query attention, flash-style: forward (saving log-sum-exp), and the backward
//! as three kernels (row deltas, query gradient, key/value gradient). No T x T buffer.

use super::{need, u32_of};
use crate::error::ComputeError;
use crate::gpu::{Gpu, Params, Tensor};
use crate::shaders::Const;

/// Shape of an attention call: `rows = sequences * seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// Tokens per sequence.
    pub seq: usize,
    /// Number of sequences.
    pub sequences: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub hd: usize,
}

impl AttnDims {
    fn rows(&self) -> usize {
        self.seq * self.sequences
    }
    pub(crate) fn check(&self) -> Result<(), ComputeError> {
        if self.kv_heads == 0
            || !self.heads.is_multiple_of(self.kv_heads)
            || self.seq == 0
            || self.hd == 0
        {
            return Err(ComputeError::Shape(format!(
                "attention {self:?}: heads must be a positive multiple of kv heads"
            )));
        }
        Ok(())
    }
    fn params(&self) -> Result<Params, ComputeError> {
        Ok(Params::new()
            .u(u32_of("seq", self.seq)?)
            .u(u32_of("heads", self.heads)?)
            .u(u32_of("kv_heads", self.kv_heads)?)
            .f((1.0 / (self.hd as f64).sqrt()) as f32))
    }
}

/// Generated constants and grid of one attention kernel launch.
type Launch = ([Const; 3], (u32, u32, u32));

impl Gpu {
    /// Constants and grid of an attention kernel. Forward and dq run one invocation per
    /// (query, head), `attn_rows` queries per workgroup, keys streamed in tiles (`by_key`
    /// false); dk/dv runs one per (key, kv head), `attn_rows` keys per workgroup, queries
    /// streamed in tiles (`by_key` true).
    fn launch(&self, a: &AttnDims, by_key: bool) -> Result<Launch, ComputeError> {
        let hd = u32_of("head_dim", a.hd)?;
        let rows = self.tiles().attn_rows;
        let tile = self
            .tiles()
            .attn_tile_for(hd, self.limits().max_compute_workgroup_storage_size)?;
        let (heads, bq, bkv) = if by_key {
            (a.kv_heads, tile, rows)
        } else {
            (a.heads, rows, tile)
        };
        let grid = (
            u32_of("row blocks", a.seq.div_ceil(rows as usize))?,
            u32_of("heads", heads)?,
            u32_of("sequences", a.sequences)?,
        );
        Ok((
            [
                Const::U32("HD", hd),
                Const::U32("BQ", bq),
                Const::U32("BKV", bkv),
            ],
            grid,
        ))
    }

    /// `o = softmax(q k^T * scale, causal) v` per head; `lse: [rows, heads]`.
    pub fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        lse: &Tensor,
        a: AttnDims,
    ) -> Result<(), ComputeError> {
        a.check()?;
        let rows = a.rows();
        need("attention q", q, rows * a.heads * a.hd)?;
        need("attention k", k, rows * a.kv_heads * a.hd)?;
        need("attention v", v, rows * a.kv_heads * a.hd)?;
        need("attention o", o, rows * a.heads * a.hd)?;
        need("attention lse", lse, rows * a.heads)?;
        let (consts, grid) = self.launch(&a, false)?;
        self.dispatch(
            "attention_forward",
            &consts,
            &[&q.buf, &k.buf, &v.buf, &o.buf, &lse.buf],
            a.params()?,
            grid,
        )
    }

    /// Gradients of attention; `delta: [rows, heads]` is scratch.
    pub fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        lse: &Tensor,
        d_o: &Tensor,
        delta: &Tensor,
        dq: &Tensor,
        dk: &Tensor,
        dv: &Tensor,
        a: AttnDims,
    ) -> Result<(), ComputeError> {
        a.check()?;
        let rows = a.rows();
        let qn = rows * a.heads * a.hd;
        let kn = rows * a.kv_heads * a.hd;
        for (w, t, n) in [
            ("q", q, qn),
            ("o", o, qn),
            ("dO", d_o, qn),
            ("dq", dq, qn),
            ("k", k, kn),
            ("v", v, kn),
            ("dk", dk, kn),
            ("dv", dv, kn),
            ("lse", lse, rows * a.heads),
            ("delta", delta, rows * a.heads),
        ] {
            need(&format!("attention backward {w}"), t, n)?;
        }
        let pd = Params::new()
            .u(u32_of("rows", rows)?)
            .u(u32_of("heads", a.heads)?)
            .u(u32_of("hd", a.hd)?);
        self.dispatch(
            "attention_delta",
            &self.wg_consts(),
            &[&o.buf, &d_o.buf, &delta.buf],
            pd,
            self.elementwise_grid(rows * a.heads)?,
        )?;
        let (consts, grid) = self.launch(&a, false)?;
        self.dispatch(
            "attention_backward_dq",
            &consts,
            &[
                &q.buf, &k.buf, &v.buf, &d_o.buf, &lse.buf, &delta.buf, &dq.buf,
            ],
            a.params()?,
            grid,
        )?;
        let (consts, grid) = self.launch(&a, true)?;
        self.dispatch(
            "attention_backward_dkv",
            &consts,
            &[
                &q.buf, &k.buf, &v.buf, &d_o.buf, &lse.buf, &delta.buf, &dk.buf, &dv.buf,
            ],
            a.params()?,
            grid,
        )
    }
}
