//! The RMSNorm that `Attn`, `Mlp` and `Head` shards apply to their input, forward and backward.
//! Its weight is replicated in every slice of a stage; each slice's gradient is partial.

use super::params::GpuShard;
use crate::error::ComputeError;
use crate::gpu::{Gpu, Tensor};

impl GpuShard {
    pub(crate) fn norm_weight(&self) -> Result<&super::params::Slot, ComputeError> {
        self.replicated
            .first()
            .ok_or_else(|| ComputeError::Shape(format!("{} has no norm weight", self.shard)))
    }

    /// `(xn, rstd)` of the input `h: [n, d]`.
    pub(crate) fn norm_forward(
        &self,
        gpu: &Gpu,
        h: &Tensor,
        n: usize,
    ) -> Result<(Tensor, Tensor), ComputeError> {
        let d = self.cfg.hidden_size;
        let xn = gpu.zeros(&[n, d])?;
        let rstd = gpu.zeros(&[n])?;
        gpu.rmsnorm(
            h,
            &self.norm_weight()?.w,
            &xn,
            &rstd,
            n,
            d,
            self.cfg.rms_norm_eps,
        )?;
        Ok((xn, rstd))
    }

    /// The input gradient from `dxn`, accumulating the norm weight's (partial) gradient.
    pub(crate) fn norm_backward(
        &self,
        gpu: &Gpu,
        h: &Tensor,
        rstd: &Tensor,
        dxn: &Tensor,
        n: usize,
    ) -> Result<Tensor, ComputeError> {
        let d = self.cfg.hidden_size;
        let slot = self.norm_weight()?;
        let dh = gpu.zeros(&[n, d])?;
        gpu.rmsnorm_backward(h, &slot.w, rstd, dxn, &dh, n, d, false)?;
        gpu.rmsnorm_weight_grad(h, rstd, dxn, &slot.g, n, d, true)?;
        Ok(dh)
    }
}
