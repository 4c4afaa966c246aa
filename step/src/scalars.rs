//! The scalars of one step, computed once by the coordinator (which may use `pow` and `cos`,
//! since it alone computes them) and given to every holder as bits.

use crate::error::{finite, StepError};

/// One step's scalars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepScalars {
    /// The learning rate of this step (the schedule's value).
    pub lr: f32,
    /// Decoupled weight decay's factor, `1 - lr * weight_decay` (computed in f64 from the
    /// schedule's f64 rate, then rounded once).
    pub decay: f32,
    /// AdamW's first bias correction, `1 - beta1^t`.
    pub bias1: f32,
    /// AdamW's second bias correction, `1 - beta2^t`.
    pub bias2: f32,
    /// The global-norm clip coefficient every gradient is multiplied by (1: not clipped).
    pub clip: f32,
}

impl StepScalars {
    /// The scalars as bits, in field order (what a log entry records).
    pub fn to_bits(&self) -> [u32; 5] {
        [self.lr, self.decay, self.bias1, self.bias2, self.clip].map(f32::to_bits)
    }

    /// The scalars of `bits` ([`StepScalars::to_bits`]); refused where one is not finite.
    pub fn from_bits(bits: [u32; 5]) -> Result<Self, StepError> {
        let v = bits.map(f32::from_bits);
        finite("scalars", &v)?;
        Ok(StepScalars {
            lr: v[0],
            decay: v[1],
            bias1: v[2],
            bias2: v[3],
            clip: v[4],
        })
    }

    pub(crate) fn check(&self) -> Result<(), StepError> {
        finite(
            "scalars",
            &[self.lr, self.decay, self.bias1, self.bias2, self.clip],
        )
    }
}
