//! The deterministic optimizer step: what every holder of a micro-shard computes from the
//! step's gradient sums, so that all of them reach the same weights and AdamW moments bit for
//! bit, on any machine (x86, ARM, a browser's wasm32), and the coordinator can log one hash for
//! them all.
//!
//! The rule, enforced by this crate's `clippy.toml` (`disallowed-methods`): only `+ - * /` and
//! `sqrt` on f32 and f64 (each correctly rounded by IEEE 754 everywhere Rust runs) and f64→f32
//! casts, in a fixed order; no fused multiply-add, no `pow*`, `exp`, `ln` or trigonometry
//! (library functions whose last bit differs between platforms), no `min`/`max` (the sign of a
//! zero result is unspecified). What needs those (the learning rate's schedule, the bias
//! corrections `1 - beta^t`, the global-norm clip coefficient) the coordinator computes once as
//! [`StepScalars`], and holders receive their bits. Non-finite values are refused before
//! anything is computed (a NaN's bits differ between platforms, wasm32 among them), and a
//! machine that flushes subnormal numbers to zero is refused ([`subnormals_kept`]).

mod adamw;
mod error;
mod norm;
mod scalars;

pub use adamw::{adamw, sgd, AdamWConsts};
pub use error::StepError;
pub use norm::{subnormals_kept, sum_squares};
pub use scalars::StepScalars;
