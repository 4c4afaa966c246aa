//! The micro-shard optimizer state of a pipeline run behind one interface ([`StepState`]): the
//! step that moves the weights with a step's gradient sums, and what a snapshot keeps of it.
//!
//! Today the coordinator holds the one authoritative AdamW state ([`HeldByCoordinator`]) and
//! applies `rules::apply`, the same function `tessera verify` replays. At scale the holders of
//! each micro-shard keep its moments and take the step themselves (the global-norm clip needs
//! one squared norm from each holder and sends back one scale); that state lives behind this
//! same interface (docs/ARCHITECTURE.md, "The 72B plan on paper").

use tessera_compute::reference::ModelParams;

use tessera_step::StepScalars;

use crate::core::rules::{apply, StepRule};

/// AdamW's first and second moments, tensor by tensor as the weights.
pub(in crate::core) type Moments = (ModelParams<f32>, ModelParams<f32>);

/// Where a pipeline run's optimizer state lives and how a step moves the weights.
pub(in crate::core) trait StepState: std::fmt::Debug + Send + Sync {
    /// Takes step `number` of `rule` on `weights` with the step's gradient sums `grads`;
    /// returns the scalars it used (its `clip` the global-norm clip scale, 1 when nothing was
    /// clipped; `None` for a rule without an optimizer). A refused step (a value not finite, an
    /// overflow) changes nothing.
    fn step(
        &mut self,
        rule: &StepRule,
        number: u64,
        weights: &mut ModelParams<f32>,
        grads: &ModelParams<f32>,
    ) -> Result<Option<StepScalars>, tessera_step::StepError>;
    /// The moments a snapshot keeps (`None` before the first AdamW step).
    fn moments(&self) -> Option<&Moments>;
}

/// The coordinator holds the moments of every micro-shard.
#[derive(Clone, Debug, Default)]
pub(in crate::core) struct HeldByCoordinator {
    moments: Option<Moments>,
    /// Whether the model's head is its embedding (`tie_word_embeddings`).
    tied: bool,
}

impl HeldByCoordinator {
    /// A fresh state for a model whose head is its embedding when `tied`.
    pub(in crate::core) fn new(tied: bool) -> Self {
        HeldByCoordinator {
            moments: None,
            tied,
        }
    }

    /// The state a snapshot kept.
    pub(in crate::core) fn resume(moments: Option<Moments>, tied: bool) -> Self {
        HeldByCoordinator { moments, tied }
    }
}

impl StepState for HeldByCoordinator {
    fn step(
        &mut self,
        rule: &StepRule,
        number: u64,
        weights: &mut ModelParams<f32>,
        grads: &ModelParams<f32>,
    ) -> Result<Option<StepScalars>, tessera_step::StepError> {
        apply(rule, number, weights, &mut self.moments, grads, self.tied)
    }

    fn moments(&self) -> Option<&Moments> {
        self.moments.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::messages::InnerOptimizer;
    use tessera_train::schedule::Schedule;

    fn adamw() -> StepRule {
        StepRule::Optimizer {
            optimizer: InnerOptimizer::AdamW {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            lr: Schedule::constant(0.01),
            clip: Some(1e-3),
        }
    }

    #[test]
    fn a_step_moves_the_weights_keeps_the_moments_and_resumes_from_them() {
        let cfg = tessera_compute::ModelConfig::tiny();
        let w0 = ModelParams::random(&cfg, 3);
        let grads = ModelParams::random(&cfg, 4);
        let mut held = HeldByCoordinator::new(false);
        assert!(held.moments().is_none());
        let mut w = w0.clone();
        let scale = held
            .step(&adamw(), 0, &mut w, &grads)
            .unwrap()
            .unwrap()
            .clip;
        assert!(scale < 1.0, "random gradients are clipped to 1e-3: {scale}");
        assert_ne!(w, w0);
        let kept = held.moments().cloned().expect("moments after a step");
        // A state resumed from the snapshot takes the next step as the original does.
        let mut resumed = HeldByCoordinator::resume(Some(kept), false);
        let (mut a, mut b) = (w.clone(), w.clone());
        held.step(&adamw(), 1, &mut a, &grads).unwrap();
        resumed.step(&adamw(), 1, &mut b, &grads).unwrap();
        assert_eq!(a, b);
        assert_eq!(held.moments(), resumed.moments());
    }

    /// With tied embeddings the one matrix steps on the sum of its embedding and head gradient
    /// parts, clipped with the matrix counted once, and the head follows it bit for bit.
    #[test]
    fn a_tied_matrix_steps_on_the_sum_of_its_parts() {
        let cfg = tessera_compute::ModelConfig {
            tie_word_embeddings: true,
            ..tessera_compute::ModelConfig::tiny()
        };
        let w0 = ModelParams::random(&cfg, 3);
        assert_eq!(w0.head, w0.embed);
        let grads = ModelParams::random(&tessera_compute::ModelConfig::tiny(), 4);
        assert_ne!(grads.head, grads.embed);
        let mut held = HeldByCoordinator::new(true);
        let mut w = w0.clone();
        let scale = held
            .step(&adamw(), 0, &mut w, &grads)
            .unwrap()
            .unwrap()
            .clip;
        assert_eq!(w.head, w.embed);
        let (m, v) = held.moments().expect("moments");
        assert_eq!((&m.head, &v.head), (&m.embed, &v.embed));
        // The same step on the folded gradients by hand, untied.
        let mut folded = grads.clone();
        folded.fold_tied();
        let mut by_hand = HeldByCoordinator::new(false);
        let mut w2 = w0.clone();
        let scale2 = by_hand
            .step(&adamw(), 0, &mut w2, &folded)
            .unwrap()
            .unwrap()
            .clip;
        assert_eq!(scale, scale2, "the clip counts the matrix once");
        assert_eq!(w.embed, w2.embed);
        assert_eq!(w.layers, w2.layers);
        // Untied, the head part would have been counted (and moved the head) on its own.
        let mut untied = HeldByCoordinator::new(false);
        let mut w3 = w0.clone();
        assert_ne!(
            untied
                .step(&adamw(), 0, &mut w3, &grads)
                .unwrap()
                .unwrap()
                .clip,
            scale
        );
    }
}
