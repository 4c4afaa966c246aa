//! AdamW and SGD on one tensor with a step's scalars, in one fixed order of correctly rounded
//! operations: the clip's product, the decay's, the moments' updates, the bias corrections'
//! divisions, the update's division by `sqrt(v̂) + eps`.

use crate::error::{all_finite, finite, length, StepError};
use crate::norm::subnormals_kept;
use crate::scalars::StepScalars;

/// A run's AdamW constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConsts {
    /// First moment's decay.
    pub beta1: f32,
    /// Second moment's decay.
    pub beta2: f32,
    /// Added to the second moment's root.
    pub eps: f32,
}

/// Refuses a step before anything is changed: lengths, finiteness, this machine's subnormals.
fn ready(p: &[f32], g: &[f32], moments: &[(&'static str, &[f32])]) -> Result<(), StepError> {
    if !subnormals_kept() {
        return Err(StepError::FlushesSubnormals);
    }
    length("gradient", g, p.len())?;
    for (what, m) in moments {
        length(what, m, p.len())?;
    }
    finite("weight", p)?;
    finite("gradient", g)?;
    for (what, m) in moments {
        finite(what, m)?;
    }
    Ok(())
}

/// Fails on the first output that overflowed.
fn overflowed(what: &'static str, x: &[f32]) -> Result<(), StepError> {
    all_finite(what, x, |what, index, value| StepError::Overflow {
        what,
        index,
        value,
    })
}

/// One AdamW step on weights `p` with gradient `g` (multiplied by `s.clip` first) and moments
/// `m`, `v`: per element, `p ← p·decay`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + ((1−β₂)g)g`,
/// `p ← p − (lr·m/bias1) / (sqrt(v/bias2) + eps)`, each operation rounded to f32. Nothing
/// changes when it fails; the outputs are checked after.
pub fn adamw(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    c: &AdamWConsts,
    s: &StepScalars,
) -> Result<(), StepError> {
    s.check()?;
    finite("constants", &[c.beta1, c.beta2, c.eps])?;
    ready(p, g, &[("first moment", &*m), ("second moment", &*v)])?;
    let one_minus_b1 = (1.0 - c.beta1 as f64) as f32;
    let one_minus_b2 = (1.0 - c.beta2 as f64) as f32;
    for i in 0..p.len() {
        let gi = g[i] * s.clip;
        p[i] *= s.decay;
        m[i] = c.beta1 * m[i] + one_minus_b1 * gi;
        v[i] = c.beta2 * v[i] + one_minus_b2 * gi * gi;
        let mh = m[i] / s.bias1;
        let vh = v[i] / s.bias2;
        p[i] -= s.lr * mh / (vh.sqrt() + c.eps);
    }
    overflowed("weight", p)?;
    overflowed("first moment", m)?;
    overflowed("second moment", v)
}

/// One SGD step: `p ← p − lr·(g·clip)`.
pub fn sgd(p: &mut [f32], g: &[f32], s: &StepScalars) -> Result<(), StepError> {
    s.check()?;
    ready(p, g, &[])?;
    for i in 0..p.len() {
        p[i] -= s.lr * (g[i] * s.clip);
    }
    overflowed("weight", p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalars() -> StepScalars {
        StepScalars {
            lr: 1e-2,
            decay: (1.0 - 1e-2f64 * 0.1) as f32,
            bias1: (1.0 - 0.9f64) as f32,
            bias2: (1.0 - 0.95f64) as f32,
            clip: 0.5,
        }
    }

    const C: AdamWConsts = AdamWConsts {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
    };

    #[test]
    fn refuses_what_would_differ_between_machines_and_changes_nothing() {
        let p0 = vec![1.0f32, -2.0, 0.5];
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; 3], vec![0.0; 3]);
        let bad = [0.1, f32::NAN, 0.2];
        let e = adamw(&mut p, &bad, &mut m, &mut v, &C, &scalars()).unwrap_err();
        assert!(
            matches!(
                e,
                StepError::NotFinite {
                    what: "gradient",
                    index: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(p, p0);
        let e = adamw(&mut p, &[0.1, 0.2], &mut m, &mut v, &C, &scalars()).unwrap_err();
        assert!(matches!(e, StepError::Length { .. }), "{e}");
        let mut s = scalars();
        s.lr = f32::INFINITY;
        assert!(adamw(&mut p, &[0.1; 3], &mut m, &mut v, &C, &s).is_err());
        assert!(StepScalars::from_bits(s.to_bits()).is_err());
        assert_eq!(
            StepScalars::from_bits(scalars().to_bits()).unwrap(),
            scalars()
        );
        // An update that overflows is an error, not a weight of infinity.
        let mut big = vec![3e38f32; 3];
        let mut s = scalars();
        s.lr = -3e38;
        let e = sgd(&mut big, &[1.0; 3], &s).unwrap_err();
        assert!(matches!(e, StepError::Overflow { .. }), "{e}");
        assert!(subnormals_kept());
    }

    #[test]
    fn sgd_moves_against_the_clipped_gradient() {
        let mut p = vec![1.0f32, 2.0];
        sgd(&mut p, &[1.0, -2.0], &scalars()).unwrap();
        assert_eq!(p, vec![1.0 - 0.01 * 0.5, 2.0 + 0.01 * 1.0]);
    }

    #[test]
    fn sums_of_squares_in_f64() {
        assert_eq!(sum_squares(&[3.0, 4.0]).unwrap(), 25.0);
        assert!(sum_squares(&[f32::INFINITY]).is_err());
    }

    use crate::norm::sum_squares;
}
