//! AdamW, the global gradient norm (fixed-order reduction, summed across tensors in f64 on the
//! host) and clipping.

use super::u32_of;
use crate::error::ComputeError;
use crate::gpu::{Gpu, Params, Tensor};
use crate::reference::ops::AdamW;
use crate::shaders::Const;

impl Gpu {
    /// One AdamW step at 1-based `step` on `param` with `grad`, moments `m`, `v`.
    pub fn adamw(
        &self,
        param: &Tensor,
        grad: &Tensor,
        m: &Tensor,
        v: &Tensor,
        h: AdamW,
        step: u32,
    ) -> Result<(), ComputeError> {
        let n = param.len();
        if grad.len() != n || m.len() != n || v.len() != n {
            return Err(ComputeError::Shape(format!(
                "adamw on {:?} with grad {:?}",
                param.shape(),
                grad.shape()
            )));
        }
        if step == 0 {
            return Err(ComputeError::Shape("adamw step is 1-based".into()));
        }
        let bc1 = 1.0 - h.beta1.powi(step as i32);
        let bc2 = 1.0 - h.beta2.powi(step as i32);
        let p = Params::new()
            .u(u32_of("n", n)?)
            .f(h.lr as f32)
            .f(h.beta1 as f32)
            .f(h.beta2 as f32)
            .f(h.eps as f32)
            .f(h.weight_decay as f32)
            .f(bc1 as f32)
            .f(bc2 as f32);
        self.dispatch(
            "adamw",
            &self.wg_consts(),
            &[&param.buf, &grad.buf, &m.buf, &v.buf],
            p,
            self.elementwise_grid(n)?,
        )
    }

    /// Sum of squares of a tensor, reduced on the GPU in a fixed order.
    pub async fn sum_squares(&self, x: &Tensor) -> Result<f64, ComputeError> {
        let t = self.tiles();
        let consts = [Const::U32("WG", t.wg), Const::U32("ITEMS", t.reduce_items)];
        let per = (t.wg * t.reduce_items) as usize;
        let mut n = x.len();
        let mut cur = x.clone();
        let mut squares = true;
        loop {
            let groups = n.div_ceil(per).max(1);
            let out = self.zeros(&[groups])?;
            let p = Params::new().u(u32_of("n", n)?).u(squares as u32);
            self.dispatch(
                "sum_squares",
                &consts,
                &[&cur.buf, &out.buf],
                p,
                self.grid(groups as u64)?,
            )?;
            squares = false;
            cur = out;
            n = groups;
            if groups == 1 {
                break;
            }
        }
        Ok(self.read(&cur).await?[0] as f64)
    }

    /// Global L2 norm over several tensors.
    pub async fn global_norm(&self, xs: &[&Tensor]) -> Result<f64, ComputeError> {
        let mut s = 0.0;
        for x in xs {
            s += self.sum_squares(x).await?;
        }
        Ok(s.sqrt())
    }

    /// Clips tensors to a global norm of at most `max_norm` (PyTorch `clip_grad_norm_`);
    /// returns the norm before clipping.
    pub async fn clip_global_norm(
        &self,
        xs: &[&Tensor],
        max_norm: f64,
    ) -> Result<f64, ComputeError> {
        let norm = self.global_norm(xs).await?;
        let c = crate::reference::ops::clip_coefficient(norm, max_norm);
        if c < 1.0 {
            for x in xs {
                self.scale(x, c as f32)?;
            }
        }
        Ok(norm)
    }
}
