//! The CPU reference work of a whole-model round's checks, as a job the shell runs away from
//! its event loop. When a complete round's updates must be applied alone and their losses
//! measured (`replica_checks`), the core asks with [`Action::Measure`](super::Action::Measure)
//! and goes on serving everything else; the shell runs [`Measurement::run`] on a thread of its
//! choosing and feeds the answer back as [`Input::Measured`](super::Input::Measured). The
//! core uses an answer only while it still matches the round's accepted updates (a ticket and
//! the measured slots' units), so a late answer to a round that moved on changes nothing.
//! An in-process harness runs the job at once (`Core::tick`).

use std::sync::Arc;

use tessera_compute::reference::model::loss;
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::ModelConfig;
use tessera_protocol::PublicKey;
use tessera_train::outer::norm;

/// One update's loss gains, each applied alone to the round's weights at its share of the
/// outer step, per unit of its norm.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Gains {
    pub(super) slot: u64,
    pub(super) key: PublicKey,
    pub(super) drawn: bool,
    /// Drawn updates: gain per unit of norm on its own first batch, loss before, after.
    pub(super) own: Option<(f64, f64, f64)>,
    /// Gain per unit of norm on the held-out sequences (`None`: not measured).
    pub(super) held: Option<f64>,
}

/// What a measurement is of: each update's slot and the unit that filled it, in slot order.
pub(super) type Asked = Vec<(u64, u64)>;

/// One update to measure.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Item {
    pub(super) slot: u64,
    pub(super) unit: u64,
    pub(super) key: PublicKey,
    /// Dense, tensor by tensor in model order.
    pub(super) update: Vec<Vec<f32>>,
    /// Its first inner step's sequences, where it was drawn for the own-batch check.
    pub(super) first_batch: Option<Batch>,
}

/// The measurements a complete round's checks need: what to run, with everything it reads.
#[derive(Clone, PartialEq)]
pub struct Measurement {
    pub(super) ticket: u64,
    pub(super) round: u64,
    /// The version of `weights`.
    pub(super) version: u64,
    pub(super) cfg: ModelConfig,
    /// The weights the round's updates apply to (shared with the core until it changes them).
    pub(super) weights: Arc<ModelParams<f32>>,
    /// Each update's share of the outer step: the outer learning rate over the replicas.
    pub(super) lr: f32,
    /// The held-out sequences, where every update is measured on them.
    pub(super) held: Option<Batch>,
    pub(super) items: Vec<Item>,
}

impl std::fmt::Debug for Measurement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Measurement")
            .field("ticket", &self.ticket)
            .field("round", &self.round)
            .field("updates", &self.items.len())
            .field("held_out", &self.held.is_some())
            .finish_non_exhaustive()
    }
}

/// A [`Measurement`]'s answer, for [`Input::Measured`](super::Input::Measured).
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub(super) ticket: u64,
    pub(super) asked: Asked,
    pub(super) gains: Vec<Gains>,
    /// The held-out loss of the weights the updates apply to, and their version (where the
    /// round measures held-out sequences).
    pub(super) held_loss: Option<(u64, f64)>,
}

impl Measurement {
    /// The round it measures.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Which updates it measures.
    pub(super) fn asked(&self) -> Asked {
        self.items.iter().map(|i| (i.slot, i.unit)).collect()
    }

    /// Runs the CPU reference model: every update applied alone to the weights, the loss of
    /// its own first batch (drawn ones) and of the held-out sequences before and after.
    /// Pure and self-contained: any thread may run it.
    pub fn run(&self) -> Measured {
        let (cfg, w) = (&self.cfg, &*self.weights);
        let held_before = self.held.as_ref().map(|b| loss::<f32>(cfg, w, b));
        let gains = self
            .items
            .iter()
            .map(|item| {
                let mut moved = w.clone();
                for (p, u) in moved.tensors_mut().into_iter().zip(&item.update) {
                    p.iter_mut().zip(u).for_each(|(a, b)| *a -= self.lr * b);
                }
                // Per unit of norm: a small honest update (a new replica's, say) gains less
                // but as efficiently; a random one gains nothing whatever its size.
                let n = norm(&item.update).max(f64::MIN_POSITIVE);
                let own = item.first_batch.as_ref().map(|batch| {
                    let before = loss::<f32>(cfg, w, batch);
                    let after = loss::<f32>(cfg, &moved, batch);
                    ((before - after) / n, before, after)
                });
                let held = self
                    .held
                    .as_ref()
                    .zip(held_before)
                    .map(|(b, before)| (before - loss::<f32>(cfg, &moved, b)) / n);
                Gains {
                    slot: item.slot,
                    key: item.key,
                    drawn: item.first_batch.is_some(),
                    own,
                    held,
                }
            })
            .collect();
        Measured {
            ticket: self.ticket,
            asked: self.asked(),
            gains,
            held_loss: held_before.map(|l| (self.version, l)),
        }
    }
}

/// Where a round's measurement stands.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Measuring {
    /// Asked of the shell, not answered yet, when the round's accepted units were `done`.
    Asked {
        ticket: u64,
        asked: Asked,
        done: Asked,
    },
    /// Answered: the gains of the updates asked about.
    Done { asked: Asked, gains: Vec<Gains> },
}

impl Measuring {
    /// The answer, if it is of exactly `asked`.
    pub(super) fn answer(&self, of: &Asked) -> Option<&[Gains]> {
        match self {
            Measuring::Done { asked, gains } if asked == of => Some(gains),
            _ => None,
        }
    }

    /// Whether `asked` is asked already and not answered yet.
    pub(super) fn waits_for(&self, of: &Asked) -> bool {
        matches!(self, Measuring::Asked { asked, .. } if asked == of)
    }

    /// Whether it was asked when the round's accepted units were `now` and is not answered
    /// yet: nothing the checks read has changed, so they need not run again until it is.
    pub(super) fn pending_at(&self, now: &Asked) -> bool {
        matches!(self, Measuring::Asked { done, .. } if done == now)
    }

    /// Takes an answer: the state it leaves, if the answer is to the question asked (a stale
    /// one, to a question since replaced, is dropped).
    pub(super) fn answered(&self, m: Measured) -> Option<Measuring> {
        match self {
            Measuring::Asked { ticket, asked, .. } if *ticket == m.ticket && *asked == m.asked => {
                Some(Measuring::Done {
                    asked: m.asked,
                    gains: m.gains,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(held: bool) -> Measurement {
        let cfg = crate::config::preset("tiny-byte").expect("a preset");
        let weights = ModelParams::random(&cfg, 3);
        let tokens: Vec<u32> = (0..200u32).map(|i| (i * 7) % 97).collect();
        let batch = |at: usize| Batch::from_rows([&tokens[at..at + 17]], 16);
        // Two updates: one down a loss gradient of its batch (a real inner step), one random.
        let b = batch(0);
        let (_, grads) =
            tessera_compute::reference::model::loss_and_grads::<f32>(&cfg, &weights, &b);
        let honest: Vec<Vec<f32>> = grads.named().into_iter().map(|(_, g)| g.clone()).collect();
        let noise: Vec<Vec<f32>> = honest
            .iter()
            .enumerate()
            .map(|(t, g)| {
                g.iter()
                    .enumerate()
                    .map(|(i, _)| (((i * 31 + t * 7) % 17) as f32 - 8.0) * 1e-3)
                    .collect()
            })
            .collect();
        Measurement {
            ticket: 4,
            round: 2,
            version: 2,
            cfg,
            weights: Arc::new(weights),
            lr: 0.05,
            held: held.then(|| batch(40)),
            items: vec![
                Item {
                    slot: 0,
                    unit: 11,
                    key: PublicKey([1; 32]),
                    update: honest,
                    first_batch: Some(b.clone()),
                },
                Item {
                    slot: 2,
                    unit: 12,
                    key: PublicKey([2; 32]),
                    update: noise,
                    first_batch: None,
                },
            ],
        }
    }

    #[test]
    fn an_update_down_its_batchs_gradient_gains_there_and_a_random_one_is_not_measured_there() {
        let m = job(true).run();
        assert_eq!((m.ticket, m.asked.clone()), (4, vec![(0, 11), (2, 12)]));
        let (gain, before, after) = m.gains[0].own.expect("drawn");
        assert!(after < before && gain > 0.0, "{before} -> {after}");
        assert!(m.gains[0].drawn && !m.gains[1].drawn);
        assert!(m.gains[1].own.is_none());
        assert!(m.gains.iter().all(|g| g.held.is_some_and(f64::is_finite)));
        // The weights' own held-out loss, with their version.
        let (version, loss) = m.held_loss.expect("held-out loss");
        assert!(version == 2 && loss.is_finite() && loss > 0.0);
        // Without held-out data nothing is measured there.
        let none = job(false).run();
        assert!(none.gains.iter().all(|g| g.held.is_none()) && none.held_loss.is_none());
    }

    #[test]
    fn only_the_answer_to_the_question_asked_is_taken() {
        let j = job(true);
        let asked = Measuring::Asked {
            ticket: j.ticket,
            asked: j.asked(),
            done: vec![(0, 11), (1, 5), (2, 12)],
        };
        assert!(asked.waits_for(&j.asked()) && asked.answer(&j.asked()).is_none());
        assert!(asked.pending_at(&vec![(0, 11), (1, 5), (2, 12)]));
        assert!(
            !asked.pending_at(&vec![(0, 11), (2, 12)]),
            "a slot was withdrawn since"
        );
        let answer = j.run();
        // A stale answer (another ticket, or other units) is dropped.
        let mut stale = answer.clone();
        stale.ticket += 1;
        assert!(asked.answered(stale).is_none());
        let mut other = answer.clone();
        other.asked[1].1 = 99;
        assert!(asked.answered(other).is_none());
        let done = asked
            .answered(answer.clone())
            .expect("the answer asked for");
        assert_eq!(done.answer(&j.asked()), Some(&answer.gains[..]));
        assert!(done.answer(&vec![(0, 11)]).is_none() && !done.waits_for(&j.asked()));
        assert!(!done.pending_at(&vec![(0, 11), (1, 5), (2, 12)]));
    }
}
