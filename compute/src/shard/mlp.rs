//! `Mlp(layer, hidden columns)`: post-attention RMSNorm, the columns' gate and up projections,
//! SwiGLU, and the columns' rows of the down projection: a partial sum of the MLP block.

use super::kind::Rows;
use super::params::{GpuShard, Piece};
use crate::error::ComputeError;
use crate::gpu::{Gpu, Tensor};
use crate::kernels::Layout;

/// A piece's forward intermediates: gate and up projections and their SwiGLU.
struct MlpActs {
    g: Tensor,
    u: Tensor,
    a: Tensor,
}

impl GpuShard {
    fn piece_mlp(
        &self,
        gpu: &Gpu,
        p: &Piece,
        xn: &Tensor,
        n: usize,
    ) -> Result<MlpActs, ComputeError> {
        let (d, f) = (self.cfg.hidden_size, p.units.len());
        let acts = MlpActs {
            g: gpu.zeros(&[n, f])?,
            u: gpu.zeros(&[n, f])?,
            a: gpu.zeros(&[n, f])?,
        };
        gpu.matmul(Layout::NT, xn, &p.slots[0].w, &acts.g, n, f, d, false)?;
        gpu.matmul(Layout::NT, xn, &p.slots[1].w, &acts.u, n, f, d, false)?;
        gpu.swiglu(&acts.g, &acts.u, &acts.a, n * f)?;
        Ok(acts)
    }

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
            let m = self.piece_mlp(gpu, p, &xn, n)?;
            gpu.matmul(
                Layout::NT,
                &m.a,
                &p.slots[2].w,
                &out,
                n,
                d,
                p.units.len(),
                i > 0,
            )?;
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
            let m = self.piece_mlp(gpu, p, &xn, n)?;
            gpu.matmul(Layout::TN, dout, &m.a, &p.slots[2].g, d, f, n, true)?;
            let da = gpu.zeros(&[n, f])?;
            gpu.matmul(Layout::NN, dout, &p.slots[2].w, &da, n, f, d, false)?;
            let (dg, du) = (gpu.zeros(&[n, f])?, gpu.zeros(&[n, f])?);
            gpu.swiglu_backward(&m.g, &m.u, &da, &dg, &du, n * f)?;
            gpu.matmul(Layout::TN, &dg, &xn, &p.slots[0].g, f, d, n, true)?;
            gpu.matmul(Layout::TN, &du, &xn, &p.slots[1].g, f, d, n, true)?;
            gpu.matmul(Layout::NN, &dg, &p.slots[0].w, &dxn, n, d, f, i > 0)?;
            gpu.matmul(Layout::NN, &du, &p.slots[1].w, &dxn, n, d, f, true)?;
        }
        self.norm_backward(gpu, h, &rstd, &dxn, n)
    }
}
