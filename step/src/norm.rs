//! The pieces of the global-norm clip a holder computes: its gradients' sum of squares, in
//! index order in f64 (the coordinator adds the holders' partial sums in a fixed order and
//! computes the clip coefficient), and the check that this machine keeps subnormal numbers.

use crate::error::{finite, StepError};

/// The sum of the squares of `g`, each square and sum in f64, in index order.
pub fn sum_squares(g: &[f32]) -> Result<f64, StepError> {
    finite("gradient", g)?;
    let mut s = 0.0f64;
    for &x in g {
        let x = x as f64;
        s += x * x;
    }
    Ok(s)
}

/// Whether this machine keeps subnormal f32 results (no flush-to-zero): IEEE 754's default, and
/// what every holder must do for their steps to agree.
pub fn subnormals_kept() -> bool {
    let tiny = std::hint::black_box(f32::MIN_POSITIVE);
    let half = tiny / std::hint::black_box(2.0f32);
    half != 0.0 && half * std::hint::black_box(2.0f32) == tiny
}
