//! How far one honest computation's output may sit from another's: the relative L2 distance
//! the coordinator's checks compare against the run's tolerance, and that `tessera calibrate`
//! measures between adapters.

/// Default tolerance of a duplicated pipeline unit (activations and gradient sums): ten times
/// the worst drift `tessera calibrate` measured between an NVIDIA H100 (Vulkan) and lavapipe,
/// 1.08e-6 on an MLP backward (`tests/fixtures/calibration-h100-small-byte.bin`).
pub const UNIT_TOLERANCE: f64 = 1e-5;

/// Default tolerance of a replayed whole-model replica round (its pseudo-gradient after the
/// inner AdamW steps, where drift compounds): about ten times the worst measured between the
/// same two adapters, 2.24e-5.
pub const ROUND_TOLERANCE: f64 = 2.5e-4;

/// `|a - b|₂ / |b|₂`, accumulated in f64. Zero when the two are equal (both zero included);
/// infinite when their lengths differ, when either holds a non-finite value, or when only `b`
/// is zero.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        diff += (x - y) * (x - y);
        norm += y * y;
    }
    if !diff.is_finite() || !norm.is_finite() {
        return f64::INFINITY;
    }
    if diff == 0.0 {
        return 0.0;
    }
    (diff / norm).sqrt()
}

/// The largest elementwise difference over the largest magnitude of `b` (0 when equal).
pub fn rel_max(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let top = b.iter().fold(0.0f64, |m, &y| m.max((y as f64).abs()));
    let worst = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    if worst == 0.0 {
        0.0
    } else if worst.is_finite() {
        worst / top
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert_eq!(rel_l2(&[0.0], &[0.0]), 0.0);
        assert!((rel_l2(&[3.0, 4.0], &[0.0, 0.0])).is_infinite());
        assert!((rel_l2(&[1.0], &[1.0, 2.0])).is_infinite());
        assert!((rel_l2(&[f32::NAN], &[1.0])).is_infinite());
        // |(0.3, 0.4)| / |(3, 4)| = 0.1
        assert!((rel_l2(&[3.3, 4.4], &[3.0, 4.0]) - 0.1).abs() < 1e-6);
        assert!((rel_max(&[3.0, 4.4], &[3.0, 4.0]) - 0.1).abs() < 1e-6);
        assert!(rel_max(&[f32::INFINITY], &[1.0]).is_infinite());
    }
}
