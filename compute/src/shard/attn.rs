//! `Attn(layer, kv groups)`: input RMSNorm, q/k/v projections of the groups' heads, RoPE,
//! causal attention, and the groups' columns of the output projection. Its output is a partial
//! sum of the attention block's contribution to the residual stream.

use super::kind::{MicroShard, Rows};
use super::params::{GpuShard, Piece};
use crate::error::ComputeError;
use crate::gpu::{Gpu, Tensor};
use crate::kernels::attention::AttnDims;
use crate::kernels::Layout;

/// A piece's forward intermediates (after RoPE).
struct AttnActs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    dims: AttnDims,
}

impl GpuShard {
    fn piece_attention(
        &self,
        gpu: &Gpu,
        p: &Piece,
        xn: &Tensor,
        rows: Rows,
    ) -> Result<AttnActs, ComputeError> {
        let cfg = &self.cfg;
        let (n, d, hd) = (rows.count(), cfg.hidden_size, cfg.head_dim);
        let groups = p.units.len();
        let heads = groups * cfg.group_size();
        let rope = self
            .rope
            .as_ref()
            .ok_or_else(|| ComputeError::Shape("attention shard without RoPE table".into()))?;
        let q = gpu.zeros(&[n, heads * hd])?;
        let k = gpu.zeros(&[n, groups * hd])?;
        let v = gpu.zeros(&[n, groups * hd])?;
        gpu.matmul(Layout::NT, xn, &p.slots[0].w, &q, n, heads * hd, d, false)?;
        gpu.matmul(Layout::NT, xn, &p.slots[1].w, &k, n, groups * hd, d, false)?;
        gpu.matmul(Layout::NT, xn, &p.slots[2].w, &v, n, groups * hd, d, false)?;
        gpu.rope(&q, rope, n, heads, hd, rows.seq, false)?;
        gpu.rope(&k, rope, n, groups, hd, rows.seq, false)?;
        let dims = AttnDims {
            seq: rows.seq,
            sequences: rows.sequences,
            heads,
            kv_heads: groups,
            hd,
        };
        let o = gpu.zeros(&[n, heads * hd])?;
        let lse = gpu.zeros(&[n, heads])?;
        gpu.attention(&q, &k, &v, &o, &lse, dims)?;
        Ok(AttnActs {
            q,
            k,
            v,
            o,
            lse,
            dims,
        })
    }

    pub(crate) fn attn_forward(
        &self,
        gpu: &Gpu,
        h: &Tensor,
        rows: Rows,
    ) -> Result<Tensor, ComputeError> {
        let n = self.check_rows(rows)?;
        let d = self.cfg.hidden_size;
        let (xn, _) = self.norm_forward(gpu, h, n)?;
        let out = gpu.zeros(&[n, d])?;
        for (i, p) in self.pieces.iter().enumerate() {
            let a = self.piece_attention(gpu, p, &xn, rows)?;
            let w = a.dims.heads * a.dims.hd;
            gpu.matmul(Layout::NT, &a.o, &p.slots[3].w, &out, n, d, w, i > 0)?;
        }
        Ok(out)
    }

    pub(crate) fn attn_backward(
        &self,
        gpu: &Gpu,
        h: &Tensor,
        dout: &Tensor,
        rows: Rows,
    ) -> Result<Tensor, ComputeError> {
        let n = self.check_rows(rows)?;
        let (d, hd) = (self.cfg.hidden_size, self.cfg.head_dim);
        let rope = self
            .rope
            .as_ref()
            .ok_or_else(|| ComputeError::Shape("attention shard without RoPE table".into()))?;
        let (xn, rstd) = self.norm_forward(gpu, h, n)?;
        let dxn = gpu.zeros(&[n, d])?;
        for (i, p) in self.pieces.iter().enumerate() {
            let a = self.piece_attention(gpu, p, &xn, rows)?;
            let (heads, groups) = (a.dims.heads, a.dims.kv_heads);
            let (qw, kw) = (heads * hd, groups * hd);
            // Output projection.
            gpu.matmul(Layout::TN, dout, &a.o, &p.slots[3].g, d, qw, n, true)?;
            let d_o = gpu.zeros(&[n, qw])?;
            gpu.matmul(Layout::NN, dout, &p.slots[3].w, &d_o, n, qw, d, false)?;
            // Attention.
            let delta = gpu.zeros(&[n, heads])?;
            let dq = gpu.zeros(&[n, qw])?;
            let dk = gpu.zeros(&[n, kw])?;
            let dv = gpu.zeros(&[n, kw])?;
            gpu.attention_backward(
                &a.q, &a.k, &a.v, &a.o, &a.lse, &d_o, &delta, &dq, &dk, &dv, a.dims,
            )?;
            gpu.rope(&dq, rope, n, heads, hd, rows.seq, true)?;
            gpu.rope(&dk, rope, n, groups, hd, rows.seq, true)?;
            // Projections.
            gpu.matmul(Layout::TN, &dq, &xn, &p.slots[0].g, qw, d, n, true)?;
            gpu.matmul(Layout::TN, &dk, &xn, &p.slots[1].g, kw, d, n, true)?;
            gpu.matmul(Layout::TN, &dv, &xn, &p.slots[2].g, kw, d, n, true)?;
            gpu.matmul(Layout::NN, &dq, &p.slots[0].w, &dxn, n, d, qw, i > 0)?;
            gpu.matmul(Layout::NN, &dk, &p.slots[1].w, &dxn, n, d, kw, true)?;
            gpu.matmul(Layout::NN, &dv, &p.slots[2].w, &dxn, n, d, kw, true)?;
        }
        self.norm_backward(gpu, h, &rstd, &dxn, n)
    }
}

impl GpuShard {
    /// This shard's partial contribution to the residual stream for input `h: [rows, d]`
    /// (`Attn` or `Mlp`). The caller adds the partial outputs of a stage and the residual.
    pub fn block_forward(&self, gpu: &Gpu, h: &Tensor, rows: Rows) -> Result<Tensor, ComputeError> {
        match self.shard {
            MicroShard::Attn { .. } => self.attn_forward(gpu, h, rows),
            MicroShard::Mlp { .. } => self.mlp_forward(gpu, h, rows),
            _ => Err(ComputeError::Shape(format!(
                "{} is not an Attn or Mlp shard",
                self.shard
            ))),
        }
    }

    /// Recomputes the forward from `h` and, given the output gradient `dout`, accumulates the
    /// parameter gradients and returns this shard's partial input gradient (without the
    /// residual path, which the caller adds).
    pub fn block_backward(
        &self,
        gpu: &Gpu,
        h: &Tensor,
        dout: &Tensor,
        rows: Rows,
    ) -> Result<Tensor, ComputeError> {
        match self.shard {
            MicroShard::Attn { .. } => self.attn_backward(gpu, h, dout, rows),
            MicroShard::Mlp { .. } => self.mlp_backward(gpu, h, dout, rows),
            _ => Err(ComputeError::Shape(format!(
                "{} is not an Attn or Mlp shard",
                self.shard
            ))),
        }
    }
}
