//! The data of whole-model units, from the seed alone: where each sequence of a slot's inner
//! steps lies in the token stream, and the work message of a slot (its samples and learning
//! rates). A re-run of a slot, or its replay, carries exactly the same samples.

use std::ops::Range;

use tessera_protocol::messages::Work;
use tessera_protocol::TensorPayload;
use tessera_train::data::{draw_index, Sampler};

use super::RunSpec;

/// Where in the token stream sequence `mb` of inner step `step` of `slot` in `round` lies
/// (`seq + 1` tokens).
pub(super) fn slot_sample(
    spec: &RunSpec,
    sampler: &mut Sampler,
    round: u64,
    (slot, step, mb): (u64, u64, u64),
) -> Range<usize> {
    let n = draw_index(
        round,
        slot,
        spec.max_replicas,
        step,
        spec.inner_steps,
        mb,
        spec.batch,
    );
    let s = sampler.sample(n);
    sampler.span(s)
}

/// Unit `unit` of lease `lease` for `slot` of `round` on weights `version`: its samples and
/// learning rates.
pub(super) fn work(
    spec: &RunSpec,
    sampler: &mut Sampler,
    (round, version): (u64, u64),
    (unit, lease, slot): (u64, u64, u64),
) -> Work {
    let (h, b, seq) = (spec.inner_steps, spec.batch, spec.seq as usize);
    let mut tokens = Vec::with_capacity((h * b) as usize * (seq + 1));
    for step in 0..h {
        for mb in 0..b {
            let span = slot_sample(spec, sampler, round, (slot, step, mb));
            tokens.extend_from_slice(&spec.tokens[span]);
        }
    }
    let lrs = (0..h)
        .map(|step| spec.inner_lr.at(round * h + step + 1) as f32)
        .collect();
    Work {
        unit,
        lease,
        round,
        slot,
        weights: version,
        tokens: TensorPayload::from_u32(&[h as usize, b as usize, seq + 1], &tokens),
        lrs,
        dense: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        let tokens: Vec<u32> = (0..2000).map(|i| (i * 7 % 64) as u32).collect();
        RunSpec::new("samples", tessera_compute::ModelConfig::tiny(), tokens)
            .with_replicas(3)
            .with_units(2, 2, 8)
    }

    #[test]
    fn a_slot_always_gets_the_same_samples_and_slots_differ() {
        let sp = spec();
        let mut sampler = Sampler::new(sp.seed, sp.training_tokens(), sp.seq as usize);
        let a = work(&sp, &mut sampler, (4, 9), (1, 2, 0));
        let again = work(&sp, &mut sampler, (4, 9), (77, 5, 0));
        let other = work(&sp, &mut sampler, (4, 9), (78, 5, 1));
        assert_eq!(a.tokens, again.tokens, "a re-run carries the same samples");
        assert_ne!(a.tokens, other.tokens);
        assert_eq!(a.tokens.shape, vec![2, 2, 9]);
        assert_eq!((a.round, a.weights, a.lrs.len()), (4, 9, 2));
        // Each sequence is the token stream at the span the sampler gives.
        let span = slot_sample(&sp, &mut sampler, 4, (0, 1, 1));
        assert_eq!(&a.tokens.to_u32().unwrap()[3 * 9..4 * 9], &sp.tokens[span]);
    }
}
