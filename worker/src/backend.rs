//! The compute a contributor's session asks for, as values: a [`Job`] goes to a [`Backend`],
//! which answers with [`Done`], which goes back to the session (`Session::finish`). The
//! session speaks the protocol and never computes; a backend computes and never speaks the
//! protocol. [`GpuState`] is the backend of the native worker and the browser (whole-model
//! replicas and pipeline leases on a wgpu device); `cpu.rs` holds one on the plain-Rust
//! reference model, which the coordinator's simulations drive.

use tessera_compute::reference::ModelParams;
use tessera_compute::shard::ShardTensors;
use tessera_compute::{Gpu, ModelConfig};
use tessera_protocol::messages::{Lease, Update, Work};
use tessera_protocol::pipeline::{AuditWork, PipeResult, PipeWork, ShardGrads};
use tessera_protocol::Code;

use crate::error::WorkerError;
use crate::pipeline::PipeReplica;
use crate::replica::{Replica, UnitResult};

/// Compute a session asks for.
#[derive(Clone, Debug)]
pub enum Job {
    /// Build a whole-model replica from a lease's downloaded weights, for micro-batches of at
    /// most `rows` tokens (any earlier lease is dropped).
    LoadReplica {
        /// The model.
        cfg: ModelConfig,
        /// The lease.
        lease: Lease,
        /// Its weights.
        weights: ModelParams<f32>,
        /// Tokens per micro-batch.
        rows: usize,
    },
    /// Build a pipeline lease's micro-shards from their downloaded weights (any earlier lease
    /// is dropped).
    LoadShards {
        /// The model.
        cfg: ModelConfig,
        /// The lease.
        lease: Lease,
        /// Its micro-shards' weights.
        shards: Vec<ShardTensors>,
        /// Tokens per sequence.
        rows: usize,
    },
    /// A closed step's new weights for the loaded pipeline lease.
    StepWeights {
        /// The weights' version.
        version: u64,
        /// The micro-shards' weights, in the lease's order.
        shards: Vec<ShardTensors>,
    },
    /// A whole-model unit's inner steps.
    Train(Box<Work>),
    /// A round's outer step on the loaded replica.
    OuterStep {
        /// The version it makes.
        version: u64,
        /// Outer learning rate.
        lr: f32,
        /// The round's aggregate.
        update: Update,
    },
    /// A pipeline unit.
    Unit(Box<PipeWork>),
    /// Another lease's units, run again to check them.
    Audit(Box<AuditWork>),
    /// The pipeline lease's gradient sums.
    Collect,
}

/// What a backend did with a job, by kind.
#[derive(Clone, Debug)]
pub enum Done {
    /// A lease was loaded, or new weights written.
    Loaded,
    /// A whole-model unit's result.
    Trained(UnitResult),
    /// The outer step was applied.
    Stepped,
    /// A pipeline unit's result.
    Unit(PipeResult),
    /// An audit's results and dense gradient sums.
    Audited(Vec<PipeResult>, Vec<ShardGrads>),
    /// The lease's gradient sums and the backward units they cover.
    Collected(Vec<u64>, Vec<ShardGrads>),
}

/// Something that runs a session's jobs.
#[allow(
    async_fn_in_trait,
    reason = "backends are used generically, never as trait objects"
)]
pub trait Backend {
    /// Runs `job`.
    async fn run(&mut self, job: Job) -> Result<Done, WorkerError>;
}

/// A job that needs a lease the backend does not hold.
pub(crate) fn no_lease(what: &str) -> WorkerError {
    WorkerError::unexpected(Code::NotYourLease, format!("{what} without a loaded lease"))
}

/// The GPU state of a contributor: its whole-model replica or its pipeline lease.
#[derive(Default)]
pub struct GpuState {
    replica: Option<Replica>,
    pipe: Option<PipeReplica>,
}

impl GpuState {
    /// The replica, once a whole-model lease is loaded.
    pub fn replica(&self) -> Option<&Replica> {
        self.replica.as_ref()
    }

    /// The pipeline lease, once loaded.
    pub fn pipeline(&self) -> Option<&PipeReplica> {
        self.pipe.as_ref()
    }

    /// This state on `gpu`, as a backend.
    pub fn on<'a>(&'a mut self, gpu: &'a Gpu) -> OnGpu<'a> {
        OnGpu { gpu, state: self }
    }
}

/// [`GpuState`] with its device: the backend that runs jobs on the GPU.
pub struct OnGpu<'a> {
    gpu: &'a Gpu,
    state: &'a mut GpuState,
}

impl Backend for OnGpu<'_> {
    async fn run(&mut self, job: Job) -> Result<Done, WorkerError> {
        let (gpu, s) = (self.gpu, &mut *self.state);
        Ok(match job {
            Job::LoadReplica {
                cfg,
                lease,
                weights,
                rows,
            } => {
                (s.replica, s.pipe) = (None, None);
                s.replica = Some(Replica::new(gpu, cfg, &lease, weights, rows)?);
                Done::Loaded
            }
            Job::LoadShards {
                cfg,
                lease,
                shards,
                rows,
            } => {
                (s.replica, s.pipe) = (None, None);
                let p = PipeReplica::new(
                    gpu,
                    cfg,
                    lease.lease,
                    lease.version,
                    rows,
                    &shards,
                    &lease.sync,
                )?;
                s.pipe = Some(p);
                Done::Loaded
            }
            Job::StepWeights { version, shards } => {
                let p = s.pipe.as_mut().ok_or_else(|| no_lease("step weights"))?;
                p.set_weights(gpu, version, &shards)?;
                Done::Loaded
            }
            Job::Train(w) => {
                let r = s.replica.as_mut().ok_or_else(|| no_lease("work"))?;
                Done::Trained(r.work(gpu, &w).await?)
            }
            Job::OuterStep {
                version,
                lr,
                update,
            } => {
                let r = s
                    .replica
                    .as_mut()
                    .ok_or_else(|| no_lease("an outer step"))?;
                r.outer_step(gpu, version, lr, &update)?;
                Done::Stepped
            }
            Job::Unit(w) => {
                let p = s.pipe.as_mut().ok_or_else(|| no_lease("a pipeline unit"))?;
                Done::Unit(p.work(gpu, &w).await?)
            }
            Job::Audit(a) => {
                let p = s.pipe.as_mut().ok_or_else(|| no_lease("an audit"))?;
                let (outputs, grads) = p.audit(gpu, &a.units).await?;
                Done::Audited(outputs, grads)
            }
            Job::Collect => {
                let p = s
                    .pipe
                    .as_mut()
                    .ok_or_else(|| no_lease("a collect request"))?;
                let (units, shards) = p.take_grads(gpu).await?;
                Done::Collected(units, shards)
            }
        })
    }
}
