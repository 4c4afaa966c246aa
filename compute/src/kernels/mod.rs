//! Typed host-side launchers for each WGSL kernel, one file per concern. Each checks shapes
//! before recording, so a bad call is an error, not a GPU fault.

pub mod attention;
pub mod attention_cached;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod matmul;
pub mod norm;
pub mod optimizer;
pub mod rope;

pub use matmul::{Layout, View};

use crate::error::ComputeError;
use crate::gpu::Tensor;

/// Fails unless `t` holds at least `n` elements.
pub(crate) fn need(what: &str, t: &Tensor, n: usize) -> Result<(), ComputeError> {
    if t.len() < n {
        return Err(ComputeError::Shape(format!(
            "{what}: needs {n} elements, tensor has {:?}",
            t.shape()
        )));
    }
    Ok(())
}

pub(crate) fn u32_of(what: &str, v: usize) -> Result<u32, ComputeError> {
    u32::try_from(v).map_err(|_| ComputeError::Shape(format!("{what} = {v} does not fit in u32")))
}
