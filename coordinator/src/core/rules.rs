//! How a closed round or step turns its aggregate into the next weights: the run's rules (what
//! the log's `Started` entry commits to) and the one function that applies an aggregate. The
//! coordinator closes every round and step through [`apply`], and `tessera verify` replays the
//! kept aggregates through it from a checkpoint, so the weights a replay reaches are the
//! coordinator's bit for bit, or the coordinator did something else than its log says.

use serde::{Deserialize, Serialize};
use tessera_compute::reference::ModelParams;
use tessera_compute::ModelConfig;
use tessera_protocol::messages::InnerOptimizer;
use tessera_step::StepScalars;
use tessera_train::schedule::Schedule;

use super::RunSpec;

/// What a run is bound to from its first log entry: its identity and how each step's aggregate
/// moves the weights. Kept as `rules.json` beside the checkpoints; its digest is the `config`
/// of the log's `Started` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRules {
    /// Run name.
    pub run: String,
    /// The model, as its Hugging Face `config.json`.
    pub model: String,
    /// Seed of the weights and the data order.
    pub seed: u64,
    /// Rounds or steps the run was started for.
    pub rounds: u64,
    /// How an aggregate is applied.
    pub step: StepRule,
    /// Whole-model runs: how many updates a round averages and how each is weighed (absent
    /// in pipeline runs and in the rules of runs started before rounds followed their
    /// contributors; left out of the encoding when absent, so those runs' digests stand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds_of: Option<RoundRules>,
    /// What the run's log records beyond what every run's does ([`RECORDS`] for runs started
    /// now; 0, and left out of the encoding, in the rules of runs started before): from 1,
    /// every replayer and auditor is picked by a logged draw (a `Picked` entry before the work
    /// it checks goes out) and every pipeline step's optimizer scalars are logged (`Stepped`),
    /// so `tessera verify` refuses a check by anyone not picked, or a step without its scalars.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub records: u32,
}

/// What the logs of runs started now record (see [`RunRules::records`]).
pub const RECORDS: u32 = 1;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How many updates a whole-model round averages and how (each round's `Aggregated` log
/// entry shows what it did).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRules {
    /// Slots a round opens with: a full round has at least this many.
    pub least: u64,
    /// Slots a round grows to at most.
    pub most: u64,
    /// Accepted updates that close a round once its deadline has passed.
    pub quorum: u64,
    /// Each update clipped to the round's median norm before the mean.
    pub clip_to_median: bool,
}

impl RoundRules {
    /// The fewest updates a closed round may average: a full round's least, or its quorum.
    pub fn fewest(&self) -> u64 {
        self.least.min(self.quorum).max(1)
    }
}

/// How one closed round or step applies its aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepRule {
    /// Whole-model rounds: outer SGD, `theta -= lr * aggregate` (the aggregate being the
    /// replicas' updates, clipped as the run says, averaged).
    Outer {
        /// Outer learning rate.
        lr: f32,
    },
    /// Pipeline steps: the summed gradients clipped to a global norm, then the optimizer.
    Optimizer {
        /// SGD or AdamW and its settings.
        optimizer: InnerOptimizer,
        /// Learning rate by step (the step after step `n` uses `lr.at(n + 1)`).
        lr: Schedule,
        /// Global-norm clip of the summed gradients.
        clip: Option<f32>,
    },
}

impl RunRules {
    /// The rules of a run.
    pub fn of(spec: &RunSpec) -> Self {
        RunRules {
            run: spec.name.clone(),
            model: spec.model.to_hf_json(),
            seed: spec.seed,
            rounds: spec.rounds,
            step: match spec.pipeline {
                Some(_) => StepRule::Optimizer {
                    optimizer: spec.optimizer,
                    lr: spec.inner_lr,
                    clip: spec.inner_clip,
                },
                None => StepRule::Outer { lr: spec.outer_lr },
            },
            rounds_of: match spec.pipeline {
                Some(_) => None,
                None => Some(RoundRules {
                    least: spec.replicas,
                    most: spec.max_replicas,
                    quorum: spec.quorum.min(spec.replicas),
                    clip_to_median: spec.clip_to_median,
                }),
            },
            records: RECORDS,
        }
    }

    /// SHA-256 of the rules' postcard encoding: the `config` of the `Started` entry.
    pub fn digest(&self) -> [u8; 32] {
        super::digest(self)
    }

    /// The model the rules name.
    pub fn model_config(&self) -> Result<ModelConfig, String> {
        ModelConfig::from_hf_json(&self.model).map_err(|e| e.to_string())
    }
}

/// Moves `weights` (and, for AdamW, `moments`, created at zero on the first step) one version
/// on by `aggregate`, as step or round `number` does. Returns an optimizer step's scalars
/// (what its `Stepped` log entry records; their `clip` the scale the clip applied, 1 when
/// none), or `None` for an outer step. An optimizer step is all or nothing: where a value is not finite or the step
/// overflows, nothing changes and the error says where (`tessera-step`).
///
/// With `tied` embeddings (the model's `tie_word_embeddings`) the head is the embedding: an
/// outer step moves the embedding and copies it to the head (whatever the aggregate's head part
/// says); an optimizer step takes the matrix's gradient as the sum of the aggregate's embedding
/// and head parts, counted once by the global-norm clip, and copies the embedding's weights and
/// moments to the head after it.
pub fn apply(
    rule: &StepRule,
    number: u64,
    weights: &mut ModelParams<f32>,
    moments: &mut Option<(ModelParams<f32>, ModelParams<f32>)>,
    aggregate: &ModelParams<f32>,
    tied: bool,
) -> Result<Option<StepScalars>, tessera_step::StepError> {
    let scalars = match *rule {
        StepRule::Outer { lr } => {
            for (p, (_, u)) in weights.tensors_mut().into_iter().zip(aggregate.named()) {
                tessera_train::outer::apply(std::slice::from_mut(p), std::slice::from_ref(u), lr);
            }
            None
        }
        StepRule::Optimizer {
            optimizer,
            lr,
            clip,
        } => {
            let folded;
            let grads = if tied {
                let mut g = aggregate.clone();
                g.fold_tied();
                folded = g;
                &folded
            } else {
                aggregate
            };
            Some(tessera_train::optimizer::step(
                optimizer,
                lr.at(number + 1),
                clip,
                number as u32 + 1,
                weights,
                moments,
                grads,
            )?)
        }
    };
    if tied {
        weights.tie();
        if let Some((m, v)) = moments.as_mut() {
            m.tie();
            v.tie();
        }
    }
    Ok(scalars)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of a run started before rounds followed their contributors (its
    /// `rules.json` without `rounds_of`) keep the digest its log's first entry committed; a
    /// whole-model run's rules now carry its round rules, and they change the digest.
    #[test]
    fn rules_without_round_rules_keep_their_earlier_digest() {
        #[derive(Serialize)]
        struct Earlier {
            run: String,
            model: String,
            seed: u64,
            rounds: u64,
            step: StepRule,
        }
        let spec = RunSpec::new("r", ModelConfig::tiny(), vec![1u32; 64]).with_replica_range(3, 16);
        let now = RunRules::of(&spec);
        assert_eq!(
            now.rounds_of,
            Some(RoundRules {
                least: 3,
                most: 16,
                quorum: 3,
                clip_to_median: false
            })
        );
        let earlier = Earlier {
            run: now.run.clone(),
            model: now.model.clone(),
            seed: now.seed,
            rounds: now.rounds,
            step: now.step,
        };
        let json = serde_json::to_string(&earlier).unwrap();
        let read: RunRules = serde_json::from_str(&json).unwrap();
        assert_eq!(read.rounds_of, None);
        assert_eq!(read.digest(), super::super::digest(&earlier));
        assert_ne!(now.digest(), read.digest());
        // Written and read back, the rules are the same rules.
        let again: RunRules = serde_json::from_str(&serde_json::to_string(&now).unwrap()).unwrap();
        assert_eq!(again, now);
        assert_eq!(again.rounds_of.unwrap().fewest(), 3);
    }

    /// An outer step moves a tied model's embedding by the aggregate's embedding part and
    /// copies it to the head, whatever the aggregate's head part says.
    #[test]
    fn an_outer_step_of_a_tied_model_moves_the_head_with_the_embedding() {
        let cfg = ModelConfig {
            tie_word_embeddings: true,
            ..ModelConfig::tiny()
        };
        let w0 = ModelParams::random(&cfg, 1);
        let agg = ModelParams::random(&ModelConfig::tiny(), 2);
        assert_ne!(agg.head, agg.embed);
        let rule = StepRule::Outer { lr: 0.5 };
        let mut w = w0.clone();
        assert_eq!(apply(&rule, 0, &mut w, &mut None, &agg, true), Ok(None));
        assert_eq!(w.head, w.embed);
        let mut untied = w0.clone();
        apply(&rule, 0, &mut untied, &mut None, &agg, false).unwrap();
        assert_eq!(untied.embed, w.embed);
        assert_eq!(untied.layers, w.layers);
        assert_ne!(untied.head, w.head, "untied, the head part moves the head");
    }
}
