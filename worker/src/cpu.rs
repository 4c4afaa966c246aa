//! A backend on the plain-Rust reference model (no GPU): whole-model leases, trained with the
//! same round state, samples and pseudo-gradients as the GPU replica and the reference model's
//! loss and gradients, each inner step clipped and taken by `tessera_train::optimizer`. The
//! coordinator's simulations drive real sessions with it. Pipeline jobs are refused: the
//! micro-shard kernels have no CPU backend yet.

use tessera_compute::reference::model::loss_and_grads;
use tessera_compute::ModelConfig;
use tessera_train::optimizer::Moments;

use crate::backend::{no_lease, Backend, Done, Job};
use crate::error::WorkerError;
use crate::replica::{Rounds, UnitResult};

/// A whole-model lease on the CPU.
struct CpuReplica {
    rounds: Rounds,
    moments: Option<Moments>,
}

/// Runs whole-model jobs on the CPU reference model.
#[derive(Default)]
pub struct CpuBackend {
    replica: Option<CpuReplica>,
}

impl CpuReplica {
    fn work(&mut self, w: &tessera_protocol::messages::Work) -> Result<UnitResult, WorkerError> {
        let (samples, fresh) = self.rounds.begin(w)?;
        if fresh {
            self.moments = None;
        }
        let r = &mut self.rounds;
        let cfg: &ModelConfig = &r.cfg;
        let mut params = r.start.clone();
        let mut loss_sum = 0.0;
        for (h, &lr) in w.lrs.iter().enumerate() {
            let bt = samples.step(h);
            let (loss, grads) = loss_and_grads(cfg, &params, &bt);
            loss_sum += loss * bt.counted() as f64;
            r.steps += 1;
            tessera_train::optimizer::step(
                r.optimizer,
                lr as f64,
                r.clip,
                r.steps,
                &mut params,
                &mut self.moments,
                &grads,
            )
            .map_err(|e| WorkerError::Local(format!("inner step {}: {e}", r.steps)))?;
        }
        Ok(r.result(w, &samples, &params, loss_sum))
    }
}

impl Backend for CpuBackend {
    async fn run(&mut self, job: Job) -> Result<Done, WorkerError> {
        Ok(match job {
            Job::LoadReplica {
                cfg,
                lease,
                weights,
                ..
            } => {
                self.replica = Some(CpuReplica {
                    rounds: Rounds::new(cfg, &lease, weights)?,
                    moments: None,
                });
                Done::Loaded
            }
            Job::Train(w) => {
                let r = self.replica.as_mut().ok_or_else(|| no_lease("work"))?;
                Done::Trained(r.work(&w)?)
            }
            Job::OuterStep {
                version,
                lr,
                update,
            } => {
                let r = self
                    .replica
                    .as_mut()
                    .ok_or_else(|| no_lease("an outer step"))?;
                r.rounds.outer_step(version, lr, &update)?;
                Done::Stepped
            }
            Job::LoadShards { .. }
            | Job::StepWeights { .. }
            | Job::Unit(_)
            | Job::Audit(_)
            | Job::Collect => {
                return Err(WorkerError::Local(
                    "the CPU reference backend runs whole-model leases only".into(),
                ))
            }
        })
    }
}
