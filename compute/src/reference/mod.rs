//! Plain-Rust CPU reference of the model: every kernel's forward and backward, and the whole
//! model, generic over `f32` and `f64` (the latter for finite-difference gradient checks).

pub mod model;
pub mod ops;
pub mod scalar;

pub use model::{Batch, LayerParams, ModelGrads, ModelParams};
pub use scalar::Float;
