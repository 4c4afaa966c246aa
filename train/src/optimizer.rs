//! One optimizer step on a whole set of weights in plain Rust: global-norm clip, then SGD or
//! AdamW. The coordinator's pipeline steps (`rules::apply`, which `tessera verify` replays) and
//! the contributor's CPU reference backend take their steps through it.

use tessera_compute::reference::ops::{adamw_step, clip_coefficient, global_norm, AdamW};
use tessera_compute::reference::ModelParams;
use tessera_protocol::messages::InnerOptimizer;

/// AdamW's first and second moments, tensor by tensor as the weights.
pub type Moments = (ModelParams<f32>, ModelParams<f32>);

/// Step `number` (1-based) of `optimizer` at rate `lr` on `weights` with gradients `grads`,
/// clipped first to global norm `clip`; AdamW's moments are created at the first step. Returns
/// the clip scale (1 when nothing was clipped).
pub fn step(
    optimizer: InnerOptimizer,
    lr: f64,
    clip: Option<f32>,
    number: u32,
    weights: &mut ModelParams<f32>,
    moments: &mut Option<Moments>,
    grads: &ModelParams<f32>,
) -> f64 {
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
    let mut clipped = grads.clone();
    if scale < 1.0 {
        for t in clipped.tensors_mut() {
            t.iter_mut().for_each(|x| *x *= scale as f32);
        }
    }
    match optimizer {
        InnerOptimizer::Sgd => {
            for (p, g) in weights.tensors_mut().into_iter().zip(clipped.named()) {
                p.iter_mut().zip(g.1).for_each(|(a, b)| *a -= lr as f32 * b);
            }
        }
        InnerOptimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let h = AdamW {
                lr,
                beta1: beta1 as f64,
                beta2: beta2 as f64,
                eps: eps as f64,
                weight_decay: weight_decay as f64,
            };
            let (m, v) =
                moments.get_or_insert_with(|| (weights.zeros_like(), weights.zeros_like()));
            for (((p, g), m), v) in weights
                .tensors_mut()
                .into_iter()
                .zip(clipped.named())
                .zip(m.tensors_mut())
                .zip(v.tensors_mut())
            {
                adamw_step(p, g.1, m, v, h, number);
            }
        }
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_moves_against_the_gradient_and_clip_scales_it() {
        let cfg = tessera_compute::ModelConfig::tiny();
        let w0 = ModelParams::random(&cfg, 1);
        let g = ModelParams::random(&cfg, 2);
        let mut w = w0.clone();
        let scale = step(InnerOptimizer::Sgd, 0.5, None, 1, &mut w, &mut None, &g);
        assert_eq!(scale, 1.0);
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
        );
        assert!(scale < 1.0);
        assert!((c.named()[0].1[0] - a).abs() < (b - a).abs());
    }

    #[test]
    fn adamw_creates_its_moments_at_the_first_step() {
        let cfg = tessera_compute::ModelConfig::tiny();
        let mut w = ModelParams::random(&cfg, 1);
        let g = ModelParams::random(&cfg, 2);
        let mut m = None;
        let adamw = InnerOptimizer::AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        step(adamw, 1e-2, None, 1, &mut w, &mut m, &g);
        let (m1, v1) = m.clone().expect("moments");
        assert_ne!(m1, w.zeros_like());
        assert_ne!(v1, w.zeros_like());
    }
}
