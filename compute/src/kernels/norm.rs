//! RMSNorm forward, input gradient and weight gradient.

use super::{need, u32_of};
use crate::error::ComputeError;
use crate::gpu::{Gpu, Params, Tensor};

impl Gpu {
    /// `y = rmsnorm(x) * w` over rows of width `d`; writes per-row `rstd`.
    pub fn rmsnorm(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        rstd: &Tensor,
        rows: usize,
        d: usize,
        eps: f64,
    ) -> Result<(), ComputeError> {
        need("rmsnorm x", x, rows * d)?;
        need("rmsnorm w", w, d)?;
        need("rmsnorm y", y, rows * d)?;
        need("rmsnorm rstd", rstd, rows)?;
        let p = Params::new()
            .u(u32_of("rows", rows)?)
            .u(u32_of("d", d)?)
            .f(eps as f32);
        self.dispatch(
            "rmsnorm_forward",
            &self.wg_consts(),
            &[&x.buf, &w.buf, &y.buf, &rstd.buf],
            p,
            self.grid(rows as u64)?,
        )
    }

    /// `dx (+)= d rmsnorm / dx` given the forward's `rstd` and the output gradient `dy`.
    pub fn rmsnorm_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        rows: usize,
        d: usize,
        accumulate: bool,
    ) -> Result<(), ComputeError> {
        need("rmsnorm x", x, rows * d)?;
        need("rmsnorm dy", dy, rows * d)?;
        need("rmsnorm dx", dx, rows * d)?;
        need("rmsnorm w", w, d)?;
        need("rmsnorm rstd", rstd, rows)?;
        let p = Params::new()
            .u(u32_of("rows", rows)?)
            .u(u32_of("d", d)?)
            .u(accumulate as u32);
        self.dispatch(
            "rmsnorm_backward",
            &self.wg_consts(),
            &[&x.buf, &w.buf, &rstd.buf, &dy.buf, &dx.buf],
            p,
            self.grid(rows as u64)?,
        )
    }

    /// `dw (+)= sum over rows of dy * x * rstd`.
    pub fn rmsnorm_weight_grad(
        &self,
        x: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
        dw: &Tensor,
        rows: usize,
        d: usize,
        accumulate: bool,
    ) -> Result<(), ComputeError> {
        need("rmsnorm x", x, rows * d)?;
        need("rmsnorm dy", dy, rows * d)?;
        need("rmsnorm dw", dw, d)?;
        need("rmsnorm rstd", rstd, rows)?;
        let p = Params::new()
            .u(u32_of("rows", rows)?)
            .u(u32_of("d", d)?)
            .u(accumulate as u32);
        let groups = d.div_ceil(self.tiles().wg as usize) as u64;
        self.dispatch(
            "rmsnorm_weight_grad",
            &self.wg_consts(),
            &[&x.buf, &rstd.buf, &dy.buf, &dw.buf],
            p,
            self.grid(groups)?,
        )
    }
}
