//! RoPE forward and backward (the inverse rotation), in place.

use super::{need, u32_of};
use crate::error::ComputeError;
use crate::gpu::{Gpu, Params, Tensor};
use crate::rope_table::RopeTable;

/// A RoPE table on the GPU.
pub struct GpuRope {
    cos: Tensor,
    sin: Tensor,
    seq: usize,
    half: usize,
}

impl GpuRope {
    /// Uploads the table for `seq` positions.
    pub fn new(gpu: &Gpu, table: &RopeTable) -> Result<Self, ComputeError> {
        let seq = table.cos.len() / table.half.max(1);
        Ok(GpuRope {
            cos: gpu.upload(&table.cos, &[table.cos.len()])?,
            sin: gpu.upload(&table.sin, &[table.sin.len()])?,
            seq,
            half: table.half,
        })
    }
    /// Positions covered.
    pub fn seq(&self) -> usize {
        self.seq
    }
}

impl Gpu {
    /// Rotates `x: [rows, heads * hd]` in place; position `row % seq`. `inverse` is the backward.
    pub fn rope(
        &self,
        x: &Tensor,
        table: &GpuRope,
        rows: usize,
        heads: usize,
        hd: usize,
        seq: usize,
        inverse: bool,
    ) -> Result<(), ComputeError> {
        self.rope_at(x, table, rows, heads, hd, seq, 0, inverse)
    }

    /// [`Gpu::rope`] with positions `offset + row % seq`: the new rows of a generation, after
    /// `offset` cached ones.
    pub fn rope_at(
        &self,
        x: &Tensor,
        table: &GpuRope,
        rows: usize,
        heads: usize,
        hd: usize,
        seq: usize,
        offset: usize,
        inverse: bool,
    ) -> Result<(), ComputeError> {
        need("rope x", x, rows * heads * hd)?;
        if hd != 2 * table.half || seq == 0 || offset.saturating_add(seq) > table.seq {
            return Err(ComputeError::Shape(format!(
                "rope table for head width {} and {} positions, called with {hd} and positions \
                 {offset}..{}",
                2 * table.half,
                table.seq,
                offset.saturating_add(seq)
            )));
        }
        let p = Params::new()
            .u(u32_of("rows", rows)?)
            .u(u32_of("heads", heads)?)
            .u(u32_of("hd", hd)?)
            .u(u32_of("seq", seq)?)
            .u(inverse as u32)
            .u(u32_of("offset", offset)?);
        let n = rows * heads * table.half;
        self.dispatch(
            "rope",
            &self.wg_consts(),
            &[&x.buf, &table.cos.buf, &table.sin.buf],
            p,
            self.elementwise_grid(n)?,
        )
    }
}
