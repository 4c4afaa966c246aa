//! Whether two answers to the same pipeline units agree: pure comparisons of results
//! (activations, spans, head statistics) and gradient sums within a tolerance, beyond the
//! rounding of the activation encoding; and whether an answer holds NaN or infinity. The
//! pipeline's checks (`audit.rs`) and its result intake (`units.rs`, `step.rs`) call them.

use tessera_compute::shard::ShardTensors;
use tessera_protocol::pipeline::PipeResult;
use tessera_protocol::{ActEncoding, Activation};

/// The quantum of an encoding at `x`: how far two honest roundings of nearly equal values can
/// sit apart.
fn quantum(a: &Activation, x: f32) -> f32 {
    match a.encoding {
        ActEncoding::F32 => 0.0,
        ActEncoding::Bf16 if x == 0.0 || !x.is_finite() => 0.0,
        ActEncoding::Bf16 => 2f32.powf(x.abs().log2().floor() - 7.0),
        ActEncoding::Int8 => a.scale,
    }
}

/// The relative L2 distance of `got` from `want` beyond the rounding of their encodings.
fn act_distance(got: &Activation, want: &Activation) -> Result<f64, String> {
    let (g, w) = (
        got.decode().map_err(|e| e.to_string())?,
        want.decode().map_err(|e| e.to_string())?,
    );
    if g.len() != w.len() || got.tensor.shape != want.tensor.shape {
        return Err("results of different shapes".into());
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&x, &y) in g.iter().zip(&w) {
        let q = quantum(got, y).max(quantum(want, y)) as f64;
        let e = ((x as f64 - y as f64).abs() - q).max(0.0);
        diff += e * e;
        norm += (y as f64) * (y as f64);
    }
    if !diff.is_finite() || !norm.is_finite() {
        return Err("a result is not finite".into());
    }
    Ok(if diff == 0.0 {
        0.0
    } else {
        (diff / norm).sqrt()
    })
}

/// How far result `got` sits from `want`; an error when they cannot be compared.
fn distance(got: &PipeResult, want: &PipeResult) -> Result<f64, String> {
    match (got, want) {
        (PipeResult::Activation(a), PipeResult::Activation(b)) => act_distance(a, b),
        (PipeResult::Span(a), PipeResult::Span(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .map(|(x, y)| act_distance(x, y))
            .try_fold(0.0f64, |m, d| d.map(|d| m.max(d))),
        (PipeResult::HeadStats(a), PipeResult::HeadStats(b)) if a.len() == b.len() => {
            let mut worst = 0.0f64;
            for (x, y) in a.iter().zip(b) {
                if x.shard != y.shard || x.owned != y.owned {
                    return Err("head statistics of different slices or targets".into());
                }
                let (u, v) = (
                    x.stats.to_f32().map_err(|e| e.to_string())?,
                    y.stats.to_f32().map_err(|e| e.to_string())?,
                );
                worst = worst.max(tessera_train::drift::rel_l2(&u, &v));
            }
            Ok(worst)
        }
        (PipeResult::Accumulated, PipeResult::Accumulated) => Ok(0.0),
        _ => Err("results of different kinds".into()),
    }
}

/// Whether `got` (results and gradient sums of the same units) agrees with `want` within
/// `tol`; the first disagreement otherwise.
pub(super) fn agree(
    got: (&[PipeResult], &[ShardTensors]),
    want: (&[PipeResult], Option<&[ShardTensors]>),
    units: &[u64],
    tol: f64,
) -> Result<(), String> {
    if got.0.len() != want.0.len() {
        return Err(format!(
            "{} results for {} units",
            got.0.len(),
            want.0.len()
        ));
    }
    for ((g, w), unit) in got.0.iter().zip(want.0).zip(units) {
        let d = distance(g, w).map_err(|e| format!("unit {unit}: {e}"))?;
        if d > tol {
            return Err(format!(
                "unit {unit}: results {d:.2e} apart, tolerance {tol:.1e}"
            ));
        }
    }
    if let Some(sums) = want.1 {
        for s in sums {
            let Some(other) = got.1.iter().find(|o| o.shard == s.shard) else {
                return Err(format!("no gradient sums of {}", s.shard));
            };
            let flat = |t: &ShardTensors| -> Vec<f32> {
                t.tensors
                    .iter()
                    .flat_map(|x| x.data.iter().copied())
                    .collect()
            };
            let d = tessera_train::drift::rel_l2(&flat(other), &flat(s));
            if d > tol {
                return Err(format!(
                    "gradient sums of {}: {d:.2e} apart, tolerance {tol:.1e}",
                    s.shard
                ));
            }
        }
    }
    Ok(())
}

/// Whether a unit's result holds a NaN or an infinity.
pub(super) fn result_non_finite(r: &PipeResult) -> bool {
    let act = |a: &Activation| {
        crate::core::validate::payload_non_finite(&a.tensor) || !a.scale.is_finite()
    };
    match r {
        PipeResult::Activation(a) => act(a),
        PipeResult::Span(parts) => parts.iter().any(act),
        PipeResult::HeadStats(s) => s
            .iter()
            .any(|x| crate::core::validate::payload_non_finite(&x.stats)),
        PipeResult::Accumulated => false,
    }
}

/// Whether gradient sums hold a NaN or an infinity.
pub(super) fn grads_non_finite(g: &tessera_protocol::pipeline::StepGrads) -> bool {
    g.shards
        .iter()
        .any(|s| crate::core::validate::update_non_finite(&s.tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(values: &[f32], enc: ActEncoding) -> PipeResult {
        PipeResult::Activation(Activation::encode(&[1, values.len()], values, enc))
    }

    #[test]
    fn the_same_values_agree_and_rounding_of_the_encoding_is_forgiven() {
        let x = [1.0, -2.0, 0.5, 3.25];
        let a = act(&x, ActEncoding::F32);
        assert_eq!(distance(&a, &a), Ok(0.0));
        // One bf16 step apart in each entry: within the encoding's rounding, so no distance.
        let nudged: Vec<f32> = x.iter().map(|v| v * (1.0 + 1.0 / 256.0)).collect();
        let (b, c) = (act(&x, ActEncoding::Bf16), act(&nudged, ActEncoding::Bf16));
        assert_eq!(distance(&b, &c), Ok(0.0));
        // The same nudge in f32 is a distance of about 1/256.
        let d = distance(&a, &act(&nudged, ActEncoding::F32)).unwrap();
        assert!((d - 1.0 / 256.0).abs() < 1e-4, "{d}");
    }

    #[test]
    fn different_kinds_or_shapes_cannot_be_compared() {
        let a = act(&[1.0, 2.0], ActEncoding::F32);
        assert!(distance(&a, &act(&[1.0, 2.0, 3.0], ActEncoding::F32)).is_err());
        assert!(distance(&a, &PipeResult::Accumulated).is_err());
        assert_eq!(
            distance(&PipeResult::Accumulated, &PipeResult::Accumulated),
            Ok(0.0)
        );
    }

    #[test]
    fn agree_names_the_first_unit_beyond_the_tolerance() {
        let ok = act(&[1.0, 2.0], ActEncoding::F32);
        let off = act(&[1.0, 2.5], ActEncoding::F32);
        let got = [ok.clone(), off.clone()];
        let want = [ok.clone(), ok.clone()];
        assert_eq!(agree((&want, &[]), (&want, None), &[4, 5], 1e-5), Ok(()));
        let e = agree((&got, &[]), (&want, None), &[4, 5], 1e-5).unwrap_err();
        assert!(e.starts_with("unit 5: results"), "{e}");
        assert!(agree((&got, &[]), (&want, None), &[4, 5], 0.5).is_ok());
        let e = agree((&got[..1], &[]), (&want, None), &[4, 5], 1e-5).unwrap_err();
        assert_eq!(e, "1 results for 2 units");
    }

    #[test]
    fn non_finite_results_are_found() {
        assert!(!result_non_finite(&act(&[1.0, 2.0], ActEncoding::F32)));
        assert!(result_non_finite(&act(&[1.0, f32::NAN], ActEncoding::F32)));
        assert!(!result_non_finite(&PipeResult::Accumulated));
    }
}
