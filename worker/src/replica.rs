//! A whole-model replica: inner steps on a work unit's samples, the pseudo-gradient
//! (round-start weights minus trained weights, dense or SparseLoCo-compressed with error
//! feedback), and the outer step every replica applies. Optimizer moments and error feedback
//! persist across rounds, unless the lease asks for fresh units (runs that replay units).
//! [`Rounds`] is what every replica keeps whatever computes its steps; [`Replica`] computes
//! them on the GPU (`cpu.rs` on the reference model).

use tessera_compute::hf::tensor_shapes;
use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::reference::ops::AdamW;
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::shard::Optimizer;
use tessera_compute::{Gpu, ModelConfig};
use tessera_protocol::messages::{InnerOptimizer, Lease, NamedTensor, Update, Work};
use tessera_protocol::{Code, TensorPayload};
use tessera_train::sparse_wire::pack;
use tessera_train::sparseloco::{ErrorFeedback, SparseConfig};
use tessera_train::update::{to_dense, two_d};

use crate::error::WorkerError;

/// What a finished unit produced.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitResult {
    /// The pseudo-gradient.
    pub update: Update,
    /// Tokens trained on.
    pub tokens: u64,
    /// Sum of the token losses.
    pub loss_sum: f64,
}

/// What a whole-model replica keeps whatever computes its inner steps: the round-start
/// weights and their version, the lease's optimizer and sync, and error feedback.
pub(crate) struct Rounds {
    pub(crate) cfg: ModelConfig,
    pub(crate) lease: u64,
    pub(crate) start: ModelParams<f32>,
    pub(crate) version: u64,
    pub(crate) optimizer: InnerOptimizer,
    pub(crate) clip: Option<f32>,
    sparse: Option<(SparseConfig, Vec<ErrorFeedback>)>,
    /// Inner steps taken since the moments were last reset.
    pub(crate) steps: u32,
    fresh: bool,
}

/// A unit's samples: `[steps, batch, seq + 1]` token rows.
pub(crate) struct Samples {
    pub(crate) tokens: Vec<u32>,
    pub(crate) batch: usize,
    pub(crate) row: usize,
}

impl Samples {
    /// The batch of inner step `h`.
    pub(crate) fn step(&self, h: usize) -> Batch {
        let n = self.batch * self.row;
        Batch::from_rows(
            self.tokens[h * n..(h + 1) * n].chunks(self.row),
            self.row - 1,
        )
    }
}

impl Rounds {
    /// A lease's round-start state.
    pub(crate) fn new(
        cfg: ModelConfig,
        lease: &Lease,
        weights: ModelParams<f32>,
    ) -> Result<Self, WorkerError> {
        let sparse = match SparseConfig::from_sync(&lease.sync) {
            None => None,
            Some(sc) => {
                sc.validate()?;
                Some((
                    sc,
                    tensor_shapes(&cfg)
                        .iter()
                        .map(|(_, s)| ErrorFeedback::new(two_d(s)))
                        .collect(),
                ))
            }
        };
        Ok(Rounds {
            cfg,
            lease: lease.lease,
            start: weights,
            version: lease.version,
            optimizer: lease.optimizer,
            clip: lease.clip,
            sparse,
            steps: 0,
            fresh: lease.fresh_units,
        })
    }

    /// Unit `w`'s samples, checked against the weights held and the model; `true` with them
    /// when the unit starts fresh (moments and error feedback reset, as here already done).
    pub(crate) fn begin(&mut self, w: &Work) -> Result<(Samples, bool), WorkerError> {
        if w.weights != self.version {
            return Err(WorkerError::unexpected(
                Code::WrongVersion,
                format!(
                    "unit {} needs weights {} but this replica holds {}",
                    w.unit, w.weights, self.version
                ),
            ));
        }
        let shape = &w.tokens.shape;
        let tokens = w.tokens.to_u32()?;
        let [steps, batch, row] = shape[..] else {
            return Err(WorkerError::unexpected(
                Code::WrongShape,
                format!("work tokens of shape {shape:?}, expected [steps, batch, seq + 1]"),
            ));
        };
        let (steps, batch, row) = (steps as usize, batch as usize, row as usize);
        if row < 2
            || w.lrs.len() != steps
            || tokens.iter().any(|&t| t as usize >= self.cfg.vocab_size)
        {
            return Err(WorkerError::unexpected(Code::WrongShape, format!("unit {} is malformed: {} learning rates for {steps} steps, or token ids outside the vocabulary", w.unit, w.lrs.len())));
        }
        if self.fresh {
            self.steps = 0;
            if let Some((_, feedback)) = &mut self.sparse {
                for (ef, (_, shape)) in feedback.iter_mut().zip(tensor_shapes(&self.cfg)) {
                    *ef = ErrorFeedback::new(two_d(&shape));
                }
            }
        }
        Ok((Samples { tokens, batch, row }, self.fresh))
    }

    /// Unit `w`'s result, trained on `samples` to `end` with token losses summing to
    /// `loss_sum`: the pseudo-gradient from the round-start weights, SparseLoCo-compressed with
    /// error feedback when the lease syncs sparse, except a dense replay (`w.dense` of a fresh
    /// unit), which the coordinator checks the original's compression against.
    pub(crate) fn result(
        &mut self,
        w: &Work,
        samples: &Samples,
        end: &ModelParams<f32>,
        loss_sum: f64,
    ) -> UnitResult {
        let shapes = tensor_shapes(&self.cfg);
        let deltas: Vec<Vec<f32>> = self
            .start
            .named()
            .into_iter()
            .zip(end.named())
            .map(|((_, s), (_, e))| s.iter().zip(e).map(|(a, b)| a - b).collect())
            .collect();
        let update = match (&mut self.sparse, w.dense && self.fresh) {
            (Some((sc, feedback)), false) => {
                let sent: Vec<_> = deltas
                    .iter()
                    .zip(feedback.iter_mut())
                    .map(|(d, ef)| ef.step(d, sc))
                    .collect();
                Update::Sparse(Box::new(pack(&sent, sc)))
            }
            _ => Update::Dense(
                shapes
                    .iter()
                    .zip(&deltas)
                    .map(|((name, shape), d)| NamedTensor {
                        name: name.clone(),
                        tensor: TensorPayload::from_f32(shape, d),
                    })
                    .collect(),
            ),
        };
        let seq = samples.row - 1;
        UnitResult {
            update,
            tokens: (w.lrs.len() * samples.batch * seq) as u64,
            loss_sum,
        }
    }

    /// A round's outer step `theta -= lr * update` on the round-start weights.
    pub(crate) fn outer_step(
        &mut self,
        version: u64,
        lr: f32,
        update: &Update,
    ) -> Result<(), WorkerError> {
        let dense = to_dense(
            update,
            &tensor_shapes(&self.cfg),
            self.sparse.as_ref().map(|(c, _)| c),
        )?;
        for (p, u) in self.start.tensors_mut().into_iter().zip(&dense) {
            p.iter_mut().zip(u).for_each(|(a, b)| *a -= lr * b);
        }
        self.version = version;
        Ok(())
    }
}

/// A whole-model lease on the GPU.
pub struct Replica {
    rounds: Rounds,
    model: GpuModel,
}

impl Replica {
    /// Uploads a lease's weights for micro-batches of at most `max_rows` tokens.
    pub fn new(
        gpu: &Gpu,
        cfg: ModelConfig,
        lease: &Lease,
        weights: ModelParams<f32>,
        max_rows: usize,
    ) -> Result<Self, WorkerError> {
        let model = GpuModel::new(gpu, &cfg, &weights, Slicing::whole(), max_rows)?;
        Ok(Replica {
            rounds: Rounds::new(cfg, lease, weights)?,
            model,
        })
    }

    /// The lease.
    pub fn lease(&self) -> u64 {
        self.rounds.lease
    }

    /// Weight version the replica holds at round start.
    pub fn version(&self) -> u64 {
        self.rounds.version
    }

    /// Round-start weights.
    pub fn weights(&self) -> &ModelParams<f32> {
        &self.rounds.start
    }

    /// Runs a unit's inner steps from the round-start weights and returns the pseudo-gradient.
    pub async fn work(&mut self, gpu: &Gpu, w: &Work) -> Result<UnitResult, WorkerError> {
        let (samples, fresh) = self.rounds.begin(w)?;
        let r = &mut self.rounds;
        self.model.write_params(gpu, &r.start)?;
        if fresh {
            self.model.reset_moments();
        }
        let mut loss_sum = 0.0;
        for (h, &lr) in w.lrs.iter().enumerate() {
            let bt = samples.step(h);
            self.model.zero_grads(gpu)?;
            let loss = self.model.loss_and_grads(gpu, &bt).await?;
            loss_sum += loss * bt.counted() as f64;
            r.steps += 1;
            let opt = match r.optimizer {
                InnerOptimizer::Sgd => Optimizer::Sgd { lr },
                InnerOptimizer::AdamW {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => Optimizer::AdamW(AdamW {
                    lr: lr as f64,
                    beta1: beta1 as f64,
                    beta2: beta2 as f64,
                    eps: eps as f64,
                    weight_decay: weight_decay as f64,
                }),
            };
            self.model
                .optimizer_step(gpu, opt, r.steps, r.clip.map(f64::from))
                .await?;
        }
        let end = self.model.read_params(gpu).await?;
        Ok(r.result(w, &samples, &end, loss_sum))
    }

    /// Applies a round's outer step `theta -= lr * update` to the round-start weights.
    pub fn outer_step(
        &mut self,
        gpu: &Gpu,
        version: u64,
        lr: f32,
        update: &Update,
    ) -> Result<(), WorkerError> {
        self.rounds.outer_step(version, lr, update)?;
        self.model.write_params(gpu, &self.rounds.start)?;
        Ok(())
    }
}
