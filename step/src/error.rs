//! Why a step was refused.

/// A step that was not taken; nothing was changed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StepError {
    /// An input (weight, gradient, moment or scalar) is NaN or infinite.
    #[error("{what}[{index}] is {value}: a step takes finite values only")]
    NotFinite {
        /// Which input.
        what: &'static str,
        /// Where in it.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The step's result overflowed.
    #[error("the step's {what}[{index}] overflowed to {value}")]
    Overflow {
        /// Which output.
        what: &'static str,
        /// Where in it.
        index: usize,
        /// The value.
        value: f32,
    },
    /// Tensors of different lengths.
    #[error("{what}: {got} values where the weights have {want}")]
    Length {
        /// Which input.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The weights' length.
        want: usize,
    },
    /// This machine flushes subnormal numbers to zero: its steps would differ from others'.
    #[error("this machine flushes subnormal floats to zero; its optimizer steps would differ from other holders'")]
    FlushesSubnormals,
}

/// Fails on the first value of `x` that is not finite, with the error `kind` makes of it
/// ([`StepError::NotFinite`] for an input, [`StepError::Overflow`] for an output).
pub(crate) fn all_finite(
    what: &'static str,
    x: &[f32],
    kind: fn(&'static str, usize, f32) -> StepError,
) -> Result<(), StepError> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(kind(what, index, x[index])),
        None => Ok(()),
    }
}

/// Fails on the first input of `x` that is not finite.
pub(crate) fn finite(what: &'static str, x: &[f32]) -> Result<(), StepError> {
    all_finite(what, x, |what, index, value| StepError::NotFinite {
        what,
        index,
        value,
    })
}

/// Fails unless `x` has `want` values.
pub(crate) fn length(what: &'static str, x: &[f32], want: usize) -> Result<(), StepError> {
    if x.len() == want {
        Ok(())
    } else {
        Err(StepError::Length {
            what,
            got: x.len(),
            want,
        })
    }
}
