//! A lease's weights (or a step's new weights) arriving in `Weights` frames: where each frame's
//! values go, refusals of frames that do not fit, and once the last arrived, the backend job
//! that loads them. A part of the session (`session.rs`) with its own tests.

use tessera_compute::hf::tensor_shapes;
use tessera_compute::reference::ModelParams;
use tessera_compute::shard::{MicroShard, ShardTensors};
use tessera_compute::ModelConfig;
use tessera_protocol::messages::Lease;
use tessera_protocol::{Code, TensorPayload};
use tessera_train::shards::{from_wire, to_wire};

use crate::backend::Job;
use crate::error::WorkerError;

/// Weights still arriving: a whole model, or a pipeline lease's micro-shards.
enum Weights {
    Whole(ModelParams<f32>),
    Shards(Vec<ShardTensors>),
}

/// A download in progress.
pub(crate) struct Download {
    lease: Lease,
    cfg: ModelConfig,
    weights: Weights,
    frames_left: u32,
    /// A step's new weights for the loaded pipeline lease, rather than a new lease.
    update: bool,
}

/// A finished download: the job that loads it, and what the session then holds.
pub(crate) struct Loading {
    pub(crate) job: Job,
    pub(crate) lease: u64,
    pub(crate) cfg: ModelConfig,
    /// The micro-shards; `None` for a whole-model lease.
    pub(crate) shards: Option<Vec<MicroShard>>,
    /// New weights for the loaded lease (no `Ready` follows).
    pub(crate) update: bool,
}

impl Download {
    /// A new lease's weights, in its `frames` frames.
    pub(crate) fn lease(lease: Lease) -> Result<Self, WorkerError> {
        let cfg = ModelConfig::from_hf_json(&lease.config_json)?;
        let weights = if lease.activations.is_some() {
            Weights::Shards(
                lease
                    .shards
                    .iter()
                    .map(|s| Ok(ShardTensors::zeros(&cfg, &from_wire(s, &cfg)?)?))
                    .collect::<Result<_, WorkerError>>()?,
            )
        } else {
            Weights::Whole(ModelParams::zeros(&cfg))
        };
        Ok(Download {
            frames_left: lease.frames,
            lease,
            cfg,
            weights,
            update: false,
        })
    }

    /// A closed step's new weights for pipeline lease `lease` of `cfg` holding `shards`.
    pub(crate) fn step(
        cfg: ModelConfig,
        shards: &[MicroShard],
        (lease, version, frames): (u64, u64, u32),
    ) -> Result<Self, WorkerError> {
        Ok(Download {
            weights: Weights::Shards(
                shards
                    .iter()
                    .map(|s| ShardTensors::zeros(&cfg, s))
                    .collect::<Result<_, _>>()?,
            ),
            lease: Lease {
                lease,
                config_json: String::new(),
                shards: shards.iter().map(to_wire).collect(),
                optimizer: tessera_protocol::messages::InnerOptimizer::Sgd,
                clip: None,
                sync: tessera_protocol::messages::SyncMode::Dense,
                rows: 0,
                version,
                frames,
                activations: None,
                fresh_units: false,
            },
            cfg,
            frames_left: frames,
            update: true,
        })
    }

    /// One frame: `values` at `offset` of tensor `name` of micro-shard `shard` of `lease` at
    /// `version` (`at`).
    pub(crate) fn frame(
        &mut self,
        (lease, version, shard): (u64, u64, u32),
        name: &str,
        offset: u64,
        values: &TensorPayload,
    ) -> Result<(), WorkerError> {
        if self.lease.lease != lease || self.lease.version != version {
            return Err(WorkerError::unexpected(
                Code::WrongVersion,
                format!(
                    "weights for lease {lease} v{version}, expected lease {} v{}",
                    self.lease.lease, self.lease.version
                ),
            ));
        }
        let vals = values.to_f32()?;
        let unknown =
            || WorkerError::unexpected(Code::WrongShape, format!("unknown tensor {name}"));
        let dst: &mut Vec<f32> = match &mut self.weights {
            Weights::Whole(w) => {
                let idx = tensor_shapes(&self.cfg)
                    .iter()
                    .position(|(n, _)| *n == name)
                    .ok_or_else(unknown)?;
                w.tensors_mut().into_iter().nth(idx).ok_or_else(unknown)?
            }
            Weights::Shards(ts) => ts
                .get_mut(shard as usize)
                .and_then(|t| t.tensors.iter_mut().find(|x| x.name == name))
                .map(|x| &mut x.data)
                .ok_or_else(|| {
                    WorkerError::unexpected(
                        Code::WrongShape,
                        format!("no tensor {name} in micro-shard {shard} of the lease"),
                    )
                })?,
        };
        let start = offset as usize;
        let end = start
            .checked_add(vals.len())
            .filter(|&e| e <= dst.len())
            .ok_or_else(|| {
                WorkerError::unexpected(
                    Code::WrongShape,
                    format!("{name}: elements {start}.. run past the tensor"),
                )
            })?;
        dst[start..end].copy_from_slice(&vals);
        self.frames_left = self.frames_left.saturating_sub(1);
        Ok(())
    }

    /// Whether every frame arrived.
    pub(crate) fn complete(&self) -> bool {
        self.frames_left == 0
    }

    /// The job that loads the downloaded weights.
    pub(crate) fn finish(self) -> Result<Loading, WorkerError> {
        let rows = usize::try_from(self.lease.rows)
            .map_err(|_| WorkerError::unexpected(Code::WrongShape, "lease rows out of range"))?;
        let (lease, cfg, update) = (self.lease.lease, self.cfg.clone(), self.update);
        let (shards, job) = match self.weights {
            Weights::Whole(weights) => (
                None,
                Job::LoadReplica {
                    cfg: self.cfg,
                    lease: self.lease,
                    weights,
                    rows,
                },
            ),
            Weights::Shards(ts) => {
                let shards = Some(ts.iter().map(|t| t.shard.clone()).collect());
                let job = if update {
                    Job::StepWeights {
                        version: self.lease.version,
                        shards: ts,
                    }
                } else {
                    Job::LoadShards {
                        cfg: self.cfg,
                        lease: self.lease,
                        shards: ts,
                        rows,
                    }
                };
                (shards, job)
            }
        };
        Ok(Loading {
            job,
            lease,
            cfg,
            shards,
            update,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(frames: u32) -> Lease {
        Lease {
            lease: 4,
            config_json: ModelConfig::tiny().to_hf_json(),
            shards: Vec::new(),
            optimizer: tessera_protocol::messages::InnerOptimizer::Sgd,
            clip: None,
            sync: tessera_protocol::messages::SyncMode::Dense,
            rows: 8,
            version: 2,
            frames,
            activations: None,
            fresh_units: false,
        }
    }

    #[test]
    fn frames_fill_the_named_tensor_and_the_last_one_loads() {
        let cfg = ModelConfig::tiny();
        let (name, _) = tensor_shapes(&cfg)[0].clone();
        let mut d = Download::lease(lease(2)).unwrap();
        let v = TensorPayload::from_f32(&[2], &[1.5, -2.0]);
        d.frame((4, 2, 0), &name, 0, &v).unwrap();
        assert!(!d.complete());
        d.frame((4, 2, 0), &name, 2, &v).unwrap();
        assert!(d.complete());
        let Loading { job, lease, .. } = d.finish().unwrap();
        let Job::LoadReplica { weights, rows, .. } = job else {
            panic!("a whole-model lease loads a replica")
        };
        assert_eq!((lease, rows), (4, 8));
        assert_eq!(&weights.named()[0].1[..4], &[1.5, -2.0, 1.5, -2.0]);
    }

    #[test]
    fn frames_that_do_not_fit_are_refused_with_their_code() {
        let cfg = ModelConfig::tiny();
        let (name, shape) = tensor_shapes(&cfg)[0].clone();
        let n: usize = shape.iter().product();
        let mut d = Download::lease(lease(3)).unwrap();
        let v = TensorPayload::from_f32(&[2], &[1.0, 1.0]);
        let code = |e: WorkerError| e.code();
        assert_eq!(
            code(d.frame((4, 3, 0), &name, 0, &v).unwrap_err()),
            Some(Code::WrongVersion)
        );
        assert_eq!(
            code(d.frame((4, 2, 0), "nope", 0, &v).unwrap_err()),
            Some(Code::WrongShape)
        );
        let past = d.frame((4, 2, 0), &name, n as u64 - 1, &v).unwrap_err();
        assert_eq!(code(past), Some(Code::WrongShape));
        assert!(!d.complete(), "refused frames count for nothing");
    }
}
