//! `Mlp(layer, hidden columns)`: post-attention RMSNorm, the columns' gate and up projections,
//! SwiGLU, and the columns' rows of the down projection: a partial sum of the MLP block.

use super::kind::Rows;
use super::params::GpuShard;
use crate::error::ComputeError;
use crate::gpu::{Gpu, Tensor};
use crate::kernels::Layout;

impl GpuShard {
    pub(crate) fn mlp_forward(
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
            let f = p.units.len();
            let (g, u, a) = (
                gpu.zeros(&[n, f])?,
                gpu.zeros(&[n, f])?,
                gpu.zeros(&[n, f])?,
            );
            gpu.matmul(Layout::NT, &xn, &p.slots[0].w, &g, n, f, d, false)?;
            gpu.matmul(Layout::NT, &xn, &p.slots[1].w, &u, n, f, d, false)?;
            gpu.swiglu(&g, &u, &a, n * f)?;
            gpu.matmul(Layout::NT, &a, &p.slots[2].w, &out, n, d, f, i > 0)?;
        }
        Ok(out)
    }

    pub(crate) fn mlp_backward(
        &self,
        gpu: &Gpu,
        h: &Tensor,
        dout: &Tensor,
        rows: Rows,
    ) -> Result<Tensor, ComputeError> {
        let n = self.check_rows(rows)?;
        let d = self.cfg.hidden_size;
        let (xn, rstd) = self.norm_forward(gpu, h, n)?;
        let dxn = gpu.zeros(&[n, d])?;
        for (i, p) in self.pieces.iter().enumerate() {
            let f = p.units.len();
            let (g, u, a) = (
                gpu.zeros(&[n, f])?,
                gpu.zeros(&[n, f])?,
                gpu.zeros(&[n, f])?,
            );
            gpu.matmul(Layout::NT, &xn, &p.slots[0].w, &g, n, f, d, false)?;
            gpu.matmul(Layout::NT, &xn, &p.slots[1].w, &u, n, f, d, false)?;
            gpu.swiglu(&g, &u, &a, n * f)?;
            gpu.matmul(Layout::TN, dout, &a, &p.slots[2].g, d, f, n, true)?;
            let da = gpu.zeros(&[n, f])?;
            gpu.matmul(Layout::NN, dout, &p.slots[2].w, &da, n, f, d, false)?;
            let (dg, du) = (gpu.zeros(&[n, f])?, gpu.zeros(&[n, f])?);
            gpu.swiglu_backward(&g, &u, &da, &dg, &du, n * f)?;
            gpu.matmul(Layout::TN, &dg, &xn, &p.slots[0].g, f, d, n, true)?;
            gpu.matmul(Layout::TN, &du, &xn, &p.slots[1].g, f, d, n, true)?;
            gpu.matmul(Layout::NN, &dg, &p.slots[0].w, &dxn, n, d, f, i > 0)?;
            gpu.matmul(Layout::NN, &du, &p.slots[1].w, &dxn, n, d, f, true)?;
        }
        self.norm_backward(gpu, h, &rstd, &dxn, n)
    }
}
