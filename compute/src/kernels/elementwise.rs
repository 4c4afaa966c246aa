//! Elementwise kernels: SwiGLU forward/backward, residual add, scaling.

use super::{need, u32_of};
use crate::error::ComputeError;
use crate::gpu::{Gpu, Params, Tensor};

impl Gpu {
    /// `h = silu(g) * u` over `n` elements.
    pub fn swiglu(&self, g: &Tensor, u: &Tensor, h: &Tensor, n: usize) -> Result<(), ComputeError> {
        for (w, t) in [("g", g), ("u", u), ("h", h)] {
            need(&format!("swiglu {w}"), t, n)?;
        }
        let p = Params::new().u(u32_of("n", n)?);
        self.dispatch(
            "swiglu_forward",
            &self.wg_consts(),
            &[&g.buf, &u.buf, &h.buf],
            p,
            self.elementwise_grid(n)?,
        )
    }

    /// SwiGLU gradients `dg, du` from the output gradient `dh`.
    pub fn swiglu_backward(
        &self,
        g: &Tensor,
        u: &Tensor,
        dh: &Tensor,
        dg: &Tensor,
        du: &Tensor,
        n: usize,
    ) -> Result<(), ComputeError> {
        for (w, t) in [("g", g), ("u", u), ("dh", dh), ("dg", dg), ("du", du)] {
            need(&format!("swiglu backward {w}"), t, n)?;
        }
        let p = Params::new().u(u32_of("n", n)?);
        self.dispatch(
            "swiglu_backward",
            &self.wg_consts(),
            &[&g.buf, &u.buf, &dh.buf, &dg.buf, &du.buf],
            p,
            self.elementwise_grid(n)?,
        )
    }

    /// `y += x` over the first `n` elements (the residual add).
    pub fn add_assign(&self, y: &Tensor, x: &Tensor, n: usize) -> Result<(), ComputeError> {
        self.add_scaled(y, x, 1.0, n)
    }

    /// `y += alpha * x` over the first `n` elements (SGD with `alpha = -lr`).
    pub fn add_scaled(
        &self,
        y: &Tensor,
        x: &Tensor,
        alpha: f32,
        n: usize,
    ) -> Result<(), ComputeError> {
        self.add_region_scaled(y, 0, x, 0, alpha, n)
    }

    /// `y[y_off..y_off + n] += x[x_off..x_off + n]`.
    pub fn add_region(
        &self,
        y: &Tensor,
        y_off: usize,
        x: &Tensor,
        x_off: usize,
        n: usize,
    ) -> Result<(), ComputeError> {
        self.add_region_scaled(y, y_off, x, x_off, 1.0, n)
    }

    fn add_region_scaled(
        &self,
        y: &Tensor,
        y_off: usize,
        x: &Tensor,
        x_off: usize,
        alpha: f32,
        n: usize,
    ) -> Result<(), ComputeError> {
        need("add x", x, x_off.saturating_add(n))?;
        need("add y", y, y_off.saturating_add(n))?;
        if n == 0 {
            return Ok(());
        }
        let p = Params::new()
            .u(u32_of("n", n)?)
            .f(alpha)
            .u(u32_of("x offset", x_off)?)
            .u(u32_of("y offset", y_off)?);
        self.dispatch(
            "add",
            &self.wg_consts(),
            &[&x.buf, &y.buf],
            p,
            self.elementwise_grid(n)?,
        )
    }

    /// `x *= factor` over the whole tensor.
    pub fn scale(&self, x: &Tensor, factor: f32) -> Result<(), ComputeError> {
        let n = x.len();
        let p = Params::new().u(u32_of("n", n)?).f(factor);
        self.dispatch(
            "scale",
            &self.wg_consts(),
            &[&x.buf],
            p,
            self.elementwise_grid(n)?,
        )
    }
}
