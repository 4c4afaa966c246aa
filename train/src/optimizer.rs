//! One optimizer step on a whole set of weights in plain Rust: the step's scalars (the
//! schedule's rate, AdamW's bias corrections, the global-norm clip coefficient: everything that
//! needs `pow`, `cos` or `min`, computed here once), then SGD or AdamW tensor by tensor through
//! `tessera-step`, whose arithmetic rounds alike on every machine. The coordinator's pipeline
//! steps (`rules::apply`, which `tessera verify` replays) and the contributor's CPU reference
//! backend take their steps through it.

use tessera_compute::reference::ops::{clip_coefficient, global_norm};
use tessera_compute::reference::ModelParams;
use tessera_protocol::messages::InnerOptimizer;
use tessera_step::{AdamWConsts, StepError, StepScalars};

/// AdamW's first and second moments, tensor by tensor as the weights.
pub type Moments = (ModelParams<f32>, ModelParams<f32>);

/// The scalars of step `number` (1-based) of `optimizer` at rate `lr` whose gradients are
/// multiplied by `clip` (the global-norm clip coefficient, 1 when nothing is clipped): what the
/// coordinator computes once and every holder of a micro-shard uses alike.
pub fn scalars(optimizer: InnerOptimizer, lr: f64, number: u32, clip: f64) -> StepScalars {
    let (weight_decay, beta1, beta2) = match optimizer {
        InnerOptimizer::Sgd => (0.0, 0.0, 0.0),
        InnerOptimizer::AdamW {
            beta1,
            beta2,
            weight_decay,
            ..
        } => (weight_decay as f64, beta1 as f64, beta2 as f64),
    };
    let t = number.min(i32::MAX as u32) as i32;
    StepScalars {
        lr: lr as f32,
        decay: (1.0 - lr * weight_decay) as f32,
        bias1: (1.0 - beta1.powi(t)) as f32,
        bias2: (1.0 - beta2.powi(t)) as f32,
        clip: clip as f32,
    }
}

/// Step `number` (1-based) of `optimizer` at rate `lr` on `weights` with gradients `grads`,
/// clipped first to global norm `clip`; AdamW's moments are created at the first step. Returns
/// the step's scalars (their `clip` the clip scale, 1 when nothing was clipped). All or
/// nothing: where a value is not finite, or the step overflows, nothing changes and the error
/// says where.
pub fn step(
    optimizer: InnerOptimizer,
    lr: f64,
    clip: Option<f32>,
    number: u32,
    weights: &mut ModelParams<f32>,
    moments: &mut Option<Moments>,
    grads: &ModelParams<f32>,
) -> Result<StepScalars, StepError> {
    let norm = {
        let views: Vec<&[f32]> = grads
            .named()
            .into_iter()
            .map(|(_, v)| v.as_slice())
            .collect();
        global_norm(&views)
    };
    let scale = match clip {
        Some(max) => clip_coefficient(norm, max as f64),
        None => 1.0,
    };
    let s = scalars(optimizer, lr, number, scale);
    let mut w = weights.clone();
    match optimizer {
        InnerOptimizer::Sgd => {
            for (p, g) in w.tensors_mut().into_iter().zip(grads.named()) {
                tessera_step::sgd(p, g.1, &s)?;
            }
            *weights = w;
        }
        InnerOptimizer::AdamW {
            beta1, beta2, eps, ..
        } => {
            let c = AdamWConsts { beta1, beta2, eps };
            let (mut m, mut v) = moments
                .clone()
                .unwrap_or_else(|| (weights.zeros_like(), weights.zeros_like()));
            for (((p, g), m), v) in w
                .tensors_mut()
                .into_iter()
                .zip(grads.named())
                .zip(m.tensors_mut())
                .zip(v.tensors_mut())
            {
                tessera_step::adamw(p, g.1, m, v, &c, &s)?;
            }
            *weights = w;
            *moments = Some((m, v));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AdamW with β₁ 0.9, β₂ 0.95, ε 1e-8 and `weight_decay`.
    fn adamw(weight_decay: f32) -> InnerOptimizer {
        InnerOptimizer::AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
        }
    }

    #[test]
    fn sgd_moves_against_the_gradient_and_clip_scales_it() {
        let cfg = tessera_compute::ModelConfig::tiny();
        let w0 = ModelParams::random(&cfg, 1);
        let g = ModelParams::random(&cfg, 2);
        let mut w = w0.clone();
        let scale = step(InnerOptimizer::Sgd, 0.5, None, 1, &mut w, &mut None, &g).unwrap();
        assert_eq!(scale.clip, 1.0);
        let (a, b, d) = (&w0.named()[0].1[0], &w.named()[0].1[0], &g.named()[0].1[0]);
        assert_eq!(*b, a - 0.5 * d);
        let mut c = w0.clone();
        let scale = step(
            InnerOptimizer::Sgd,
            0.5,
            Some(1e-3),
            1,
            &mut c,
            &mut None,
            &g,
        )
        .unwrap();
        assert!(scale.clip < 1.0);
        assert!((c.named()[0].1[0] - a).abs() < (b - a).abs());
    }

    #[test]
    fn adamw_creates_its_moments_at_the_first_step() {
        let cfg = tessera_compute::ModelConfig::tiny();
        let mut w = ModelParams::random(&cfg, 1);
        let g = ModelParams::random(&cfg, 2);
        let mut m = None;
        let opt = adamw(0.0);
        step(opt, 1e-2, None, 1, &mut w, &mut m, &g).unwrap();
        let (m1, v1) = m.clone().expect("moments");
        assert_ne!(m1, w.zeros_like());
        assert_ne!(v1, w.zeros_like());
    }

    /// The deterministic step reaches exactly what the reference AdamW (with the clip applied
    /// to the gradients first) reaches in f32, over three clipped steps with weight decay.
    #[test]
    fn the_deterministic_step_equals_the_reference_adamw_bit_for_bit() {
        use tessera_compute::reference::ops::{adamw_step, AdamW};
        let cfg = tessera_compute::ModelConfig::tiny();
        let mut w = ModelParams::random(&cfg, 1);
        let mut want = w.clone();
        let (mut m1, mut m2) = (w.zeros_like(), w.zeros_like());
        let mut moments = None;
        let opt = adamw(0.1);
        for n in 1..=3u32 {
            let g = ModelParams::random(&cfg, 10 + n as u64);
            let lr = 3e-3 * n as f64;
            let scale = step(opt, lr, Some(1.0), n, &mut w, &mut moments, &g).unwrap();
            assert!(scale.clip < 1.0, "the clip bites: {}", scale.clip);
            let h = AdamW {
                lr,
                beta1: 0.9f32 as f64,
                beta2: 0.95f32 as f64,
                eps: 1e-8f32 as f64,
                weight_decay: 0.1f32 as f64,
            };
            let mut clipped = g.clone();
            for t in clipped.tensors_mut() {
                t.iter_mut().for_each(|x| *x *= scale.clip);
            }
            for (((p, g), m), v) in want
                .tensors_mut()
                .into_iter()
                .zip(clipped.named())
                .zip(m1.tensors_mut())
                .zip(m2.tensors_mut())
            {
                adamw_step(p, g.1, m, v, h, n);
            }
            assert_eq!(w, want, "step {n}");
            assert_eq!(moments.as_ref().unwrap(), &(m1.clone(), m2.clone()));
        }
    }

    /// A gradient that is not finite changes nothing and says where it is.
    #[test]
    fn a_refused_step_changes_nothing() {
        let cfg = tessera_compute::ModelConfig::tiny();
        let w0 = ModelParams::random(&cfg, 1);
        let mut g = ModelParams::random(&cfg, 2);
        g.layers[1].q[5] = f32::NAN;
        let opt = adamw(0.1);
        let (mut w, mut m) = (w0.clone(), None);
        let e = step(opt, 1e-2, None, 1, &mut w, &mut m, &g).unwrap_err();
        assert!(e.to_string().contains("gradient[5] is NaN"), "{e}");
        assert_eq!(w, w0);
        assert!(m.is_none());
    }

    #[test]
    fn scalars_hold_the_powers_and_the_decay() {
        let opt = InnerOptimizer::AdamW {
            beta1: 0.5,
            beta2: 0.75,
            eps: 1e-8,
            weight_decay: 0.5,
        };
        let s = scalars(opt, 0.25, 2, 0.5);
        assert_eq!(
            (s.lr, s.decay, s.bias1, s.bias2, s.clip),
            (0.25, 0.875, 0.75, 0.4375, 0.5)
        );
    }
}
