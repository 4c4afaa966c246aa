//! The contributor's side of the protocol, independent of transport: answers the challenge,
//! assembles a lease's weights from `Weights` frames, runs work units on its replica, applies
//! outer steps, and signs every message of the session with increasing sequence numbers.

use tessera_compute::hf::tensor_shapes;
use tessera_compute::reference::ModelParams;
use tessera_compute::shard::ShardTensors;
use tessera_compute::{Gpu, ModelConfig};
use tessera_protocol::identity::{handshake_message, HANDSHAKE};
use tessera_protocol::log::{LogEvent, SignedEntry, LOG};
use tessera_protocol::messages::{
    Capabilities, ContributorKind, Lease, LogHead, Receipt, SessionMessage, Submission, Verdict,
};
use tessera_protocol::pipeline::{AuditResult, Pass, PipeWork, StepGrads, UnitOutput};
use tessera_protocol::signed::{signing_bytes, RECEIPT};
use tessera_protocol::{
    Code, Identity, PublicKey, Signature, Signed, ToContributor, ToCoordinator,
};
use tessera_train::shards::{from_wire, to_wire};

use crate::error::WorkerError;
use crate::pipeline::PipeReplica;
use crate::replica::Replica;

/// Tokens a pipeline unit processed: a forward unit's sequence length (backward units redo the
/// same tokens and are not counted again).
fn self_tokens(w: &PipeWork) -> u64 {
    if w.pass != Pass::Forward {
        return 0;
    }
    w.tokens
        .as_ref()
        .map(|t| t.shape.iter().product())
        .or_else(|| {
            w.input
                .as_ref()
                .and_then(|a| a.tensor.shape.first().copied())
        })
        .unwrap_or(0)
}

fn pipe_cfg(p: &PipeReplica) -> Result<ModelConfig, WorkerError> {
    Ok(p.config().clone())
}

/// Weights still arriving: a whole model, or a pipeline lease's micro-shards.
enum Download {
    Whole(ModelParams<f32>),
    Shards(Vec<ShardTensors>),
}

/// A lease (or a step's new weights) whose frames are still arriving.
struct Pending {
    lease: Lease,
    cfg: ModelConfig,
    weights: Download,
    frames_left: u32,
    /// A step's new weights for the loaded pipeline lease, rather than a new lease.
    update: bool,
}

/// Counters a user interface shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Weight frames received of the current download.
    pub frames_received: u32,
    /// Weight frames in the current download.
    pub frames_total: u32,
    /// Units finished and submitted.
    pub submitted: u64,
    /// Units accepted.
    pub accepted: u64,
    /// Units rejected.
    pub rejected: u64,
    /// Tokens trained.
    pub tokens: u64,
    /// Audits of other leases' work run.
    pub audits: u64,
}

/// One contributor's protocol state.
pub struct Contributor {
    id: Identity,
    kind: ContributorKind,
    caps: Capabilities,
    nonce: Option<[u8; 32]>,
    coordinator: Option<PublicKey>,
    seq: u64,
    log_head: LogHead,
    pending: Option<Pending>,
    replica: Option<Replica>,
    pipe: Option<PipeReplica>,
    stats: Stats,
    last_error: Option<String>,
    last_notice: Option<String>,
    /// Signed receipts not yet taken.
    receipts: Vec<(Receipt, Signature)>,
}

impl Contributor {
    /// A contributor with identity `id`.
    pub fn new(id: Identity, kind: ContributorKind, caps: Capabilities) -> Self {
        Contributor {
            id,
            kind,
            caps,
            nonce: None,
            coordinator: None,
            seq: 0,
            log_head: LogHead::default(),
            pending: None,
            replica: None,
            pipe: None,
            stats: Stats::default(),
            last_error: None,
            last_notice: None,
            receipts: Vec::new(),
        }
    }

    /// The public key.
    pub fn key(&self) -> PublicKey {
        self.id.public()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The replica, once a lease is loaded.
    pub fn replica(&self) -> Option<&Replica> {
        self.replica.as_ref()
    }

    /// The pipeline lease, once loaded.
    pub fn pipeline(&self) -> Option<&PipeReplica> {
        self.pipe.as_ref()
    }

    /// The last non-fatal error the coordinator reported.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The coordinator's signed receipts received since the last call (each checked against
    /// its key): keep them to prove later what the coordinator recorded of this contributor's
    /// work (`tessera verify --receipts`).
    pub fn take_receipts(&mut self) -> Vec<(Receipt, Signature)> {
        std::mem::take(&mut self.receipts)
    }

    /// The last administrator's act the coordinator announced (verified against its key).
    pub fn last_notice(&self) -> Option<&str> {
        self.last_notice.as_deref()
    }

    /// The first message of a session. Any previous session state is forgotten (a reconnect
    /// starts over: new challenge, new lease, weights downloaded again).
    pub fn hello(&mut self) -> ToCoordinator {
        self.nonce = None;
        self.seq = 0;
        self.pending = None;
        self.replica = None;
        self.pipe = None;
        ToCoordinator::Hello {
            key: self.id.public(),
            kind: self.kind,
            software: format!("tessera {}", env!("CARGO_PKG_VERSION")),
            capabilities: self.caps.clone(),
        }
    }

    fn signed(&mut self, body: SessionMessage) -> Result<ToCoordinator, WorkerError> {
        let nonce = self
            .nonce
            .ok_or_else(|| WorkerError::unexpected(Code::Handshake, "no session yet"))?;
        self.seq += 1;
        Ok(ToCoordinator::Session(Signed::new(
            &self.id, &nonce, self.seq, body,
        )?))
    }

    /// A heartbeat, once the session is open.
    pub fn heartbeat(&mut self) -> Result<ToCoordinator, WorkerError> {
        let log_head = self.log_head;
        self.signed(SessionMessage::Heartbeat { log_head })
    }

    /// A clean goodbye.
    pub fn leave(&mut self) -> Result<ToCoordinator, WorkerError> {
        self.signed(SessionMessage::Leave)
    }

    /// Handles one message; returns the replies to send, in order. Work units run on the GPU
    /// here. A fatal error from the coordinator is returned as an error.
    pub async fn handle(
        &mut self,
        gpu: &Gpu,
        msg: ToContributor,
    ) -> Result<Vec<ToCoordinator>, WorkerError> {
        match msg {
            ToContributor::Challenge {
                nonce, coordinator, ..
            } => {
                self.nonce = Some(nonce);
                self.coordinator = Some(coordinator);
                let signature = self.id.sign(
                    HANDSHAKE,
                    &handshake_message(&nonce, &coordinator, &self.id.public()),
                );
                Ok(vec![ToCoordinator::Proof { signature }])
            }
            ToContributor::Welcome { log_head, .. } => {
                self.log_head = log_head;
                Ok(vec![])
            }
            ToContributor::Lease(lease) => self.lease(gpu, lease),
            ToContributor::StepWeights {
                lease,
                version,
                frames,
                ..
            } => self.step_weights(gpu, lease, version, frames),
            ToContributor::Weights {
                lease,
                version,
                shard,
                name,
                offset,
                values,
                ..
            } => self.weights(gpu, (lease, version, shard), &name, offset, &values),
            ToContributor::Work(w) => self.work(gpu, &w).await,
            ToContributor::Unit(w) => self.unit(gpu, &w).await,
            ToContributor::Audit(a) => self.audit(gpu, &a).await,
            ToContributor::Collect { unit, lease, step } => {
                self.collect(gpu, unit, lease, step).await
            }
            ToContributor::OuterStep {
                version,
                lr,
                update,
                ..
            } => {
                if let Some(r) = self.replica.as_mut() {
                    r.outer_step(gpu, version, lr, &update)?;
                }
                Ok(vec![])
            }
            ToContributor::Receipt { receipt, signature } => self.receipt(receipt, signature),
            ToContributor::Cancel { .. } => Ok(vec![]),
            ToContributor::Admin { entry } => self.admin_notice(&entry),
            ToContributor::Error { reason, fatal } => {
                if fatal {
                    return Err(WorkerError::Refused(reason));
                }
                tracing::warn!(code = ?reason.code, "coordinator: {reason}");
                self.last_error = Some(reason.to_string());
                Ok(vec![])
            }
        }
    }

    /// A new lease: its weights download in the `Weights` frames that follow.
    fn lease(&mut self, gpu: &Gpu, lease: Lease) -> Result<Vec<ToCoordinator>, WorkerError> {
        let cfg = ModelConfig::from_hf_json(&lease.config_json)?;
        self.stats.frames_received = 0;
        self.stats.frames_total = lease.frames;
        let frames_left = lease.frames;
        self.replica = None;
        self.pipe = None;
        let weights = if lease.activations.is_some() {
            Download::Shards(
                lease
                    .shards
                    .iter()
                    .map(|s| Ok(ShardTensors::zeros(&cfg, &from_wire(s, &cfg)?)?))
                    .collect::<Result<_, WorkerError>>()?,
            )
        } else {
            Download::Whole(ModelParams::zeros(&cfg))
        };
        self.pending = Some(Pending {
            weights,
            cfg,
            lease,
            frames_left,
            update: false,
        });
        self.finish_download(gpu)
    }

    /// A closed step: the pipeline lease's new weights follow in `frames` frames.
    fn step_weights(
        &mut self,
        gpu: &Gpu,
        lease: u64,
        version: u64,
        frames: u32,
    ) -> Result<Vec<ToCoordinator>, WorkerError> {
        let pipe = self.pipe.as_ref().ok_or_else(|| {
            WorkerError::unexpected(Code::NotYourLease, "step weights without a pipeline lease")
        })?;
        if pipe.lease() != lease {
            return Err(WorkerError::unexpected(
                Code::NotYourLease,
                format!(
                    "step weights for lease {lease}, this contributor holds {}",
                    pipe.lease()
                ),
            ));
        }
        let cfg = pipe_cfg(pipe)?;
        let shards = pipe.shards();
        self.stats.frames_received = 0;
        self.stats.frames_total = frames;
        self.pending = Some(Pending {
            weights: Download::Shards(
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
        });
        self.finish_download(gpu)
    }

    /// One frame of a download: `values` at `offset` of tensor `name` of micro-shard `shard`
    /// of `lease` at `version` (`at`).
    fn weights(
        &mut self,
        gpu: &Gpu,
        (lease, version, shard): (u64, u64, u32),
        name: &str,
        offset: u64,
        values: &tessera_protocol::TensorPayload,
    ) -> Result<Vec<ToCoordinator>, WorkerError> {
        let p = self.pending.as_mut().ok_or_else(|| {
            WorkerError::unexpected(Code::NotYourLease, "weights without a lease")
        })?;
        if p.lease.lease != lease || p.lease.version != version {
            return Err(WorkerError::unexpected(
                Code::WrongVersion,
                format!(
                    "weights for lease {lease} v{version}, expected lease {} v{}",
                    p.lease.lease, p.lease.version
                ),
            ));
        }
        let vals = values.to_f32()?;
        let dst: &mut Vec<f32> = match &mut p.weights {
            Download::Whole(w) => {
                let idx = tensor_shapes(&p.cfg)
                    .iter()
                    .position(|(n, _)| *n == name)
                    .ok_or_else(|| {
                        WorkerError::unexpected(Code::WrongShape, format!("unknown tensor {name}"))
                    })?;
                w.tensors_mut().into_iter().nth(idx).ok_or_else(|| {
                    WorkerError::unexpected(Code::WrongShape, format!("unknown tensor {name}"))
                })?
            }
            Download::Shards(ts) => ts
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
        p.frames_left = p.frames_left.saturating_sub(1);
        self.stats.frames_received += 1;
        self.finish_download(gpu)
    }

    /// A whole-model unit: trained on the GPU, submitted.
    async fn work(
        &mut self,
        gpu: &Gpu,
        w: &tessera_protocol::messages::Work,
    ) -> Result<Vec<ToCoordinator>, WorkerError> {
        let replica = self.replica.as_mut().ok_or_else(|| {
            WorkerError::unexpected(Code::NotYourLease, "work without a loaded lease")
        })?;
        let r = replica.work(gpu, w).await?;
        self.stats.submitted += 1;
        self.stats.tokens += r.tokens;
        let sub = Submission {
            unit: w.unit,
            lease: w.lease,
            weights: w.weights,
            tokens: r.tokens,
            loss_sum: r.loss_sum,
            result: r.update,
            log_head: self.log_head,
        };
        Ok(vec![self.signed(SessionMessage::Submit(sub))?])
    }

    /// A pipeline unit: run on the GPU, its output sent.
    async fn unit(
        &mut self,
        gpu: &Gpu,
        w: &tessera_protocol::pipeline::PipeWork,
    ) -> Result<Vec<ToCoordinator>, WorkerError> {
        let pipe = self.pipe.as_mut().ok_or_else(|| {
            WorkerError::unexpected(Code::NotYourLease, "a pipeline unit without a loaded lease")
        })?;
        let result = pipe.work(gpu, w).await?;
        self.stats.submitted += 1;
        self.stats.tokens += self_tokens(w);
        let out = UnitOutput {
            unit: w.unit,
            lease: w.lease,
            weights: w.weights,
            result,
            log_head: self.log_head,
        };
        Ok(vec![self.signed(SessionMessage::Output(out))?])
    }

    /// Another lease's units, run again to check them.
    async fn audit(
        &mut self,
        gpu: &Gpu,
        a: &tessera_protocol::pipeline::AuditWork,
    ) -> Result<Vec<ToCoordinator>, WorkerError> {
        let pipe = self.pipe.as_mut().ok_or_else(|| {
            WorkerError::unexpected(Code::NotYourLease, "an audit without a pipeline lease")
        })?;
        if a.lease != pipe.lease() {
            return Err(WorkerError::unexpected(
                Code::NotYourLease,
                format!(
                    "an audit for lease {}, this contributor holds lease {}",
                    a.lease,
                    pipe.lease()
                ),
            ));
        }
        let (outputs, grads) = pipe.audit(gpu, &a.units).await?;
        self.stats.audits += 1;
        let r = AuditResult {
            audit: a.audit,
            lease: a.lease,
            outputs,
            grads,
            log_head: self.log_head,
        };
        Ok(vec![self.signed(SessionMessage::Audited(r))?])
    }

    /// The end of a step's computation: the lease's gradient sums.
    async fn collect(
        &mut self,
        gpu: &Gpu,
        unit: u64,
        lease: u64,
        step: u64,
    ) -> Result<Vec<ToCoordinator>, WorkerError> {
        let pipe = self.pipe.as_mut().ok_or_else(|| {
            WorkerError::unexpected(
                Code::NotYourLease,
                "a collect request without a pipeline lease",
            )
        })?;
        let (units, shards) = pipe.take_grads(gpu).await?;
        let g = StepGrads {
            unit,
            lease,
            step,
            units,
            shards,
            log_head: self.log_head,
        };
        Ok(vec![self.signed(SessionMessage::Grads(g))?])
    }

    /// A signed verdict on a submission, kept as evidence.
    fn receipt(
        &mut self,
        receipt: Receipt,
        signature: Signature,
    ) -> Result<Vec<ToCoordinator>, WorkerError> {
        if let Some(c) = self.coordinator {
            c.verify(RECEIPT, &signing_bytes(&receipt)?, &signature)?;
        }
        self.receipts.push((receipt.clone(), signature));
        self.log_head = receipt.log_head;
        match receipt.verdict {
            Verdict::Accepted => self.stats.accepted += 1,
            Verdict::Rejected(why) => {
                self.stats.rejected += 1;
                self.last_error = Some(format!("unit {} rejected: {why}", receipt.unit));
            }
        }
        Ok(vec![])
    }

    /// An administrator's act, as its signed log entry.
    fn admin_notice(&mut self, entry: &SignedEntry) -> Result<Vec<ToCoordinator>, WorkerError> {
        let LogEvent::Admin { action, reason } = &entry.entry.event else {
            return Err(WorkerError::unexpected(
                Code::UnexpectedMessage,
                "an admin notice that is not an administrator's log entry",
            ));
        };
        if let Some(c) = self.coordinator {
            if entry.entry.hash() != entry.hash {
                return Err(WorkerError::unexpected(
                    Code::BadSignature,
                    "an admin notice whose log entry does not match its hash",
                ));
            }
            c.verify(LOG, &entry.hash, &entry.signature)?;
        }
        let note = format!(
            "the run's administrator: {action} because {reason:?} (run log entry {})",
            entry.entry.index
        );
        tracing::warn!("{note}");
        self.log_head = entry.head();
        self.last_notice = Some(note);
        Ok(vec![])
    }

    fn finish_download(&mut self, gpu: &Gpu) -> Result<Vec<ToCoordinator>, WorkerError> {
        if self.pending.as_ref().is_none_or(|p| p.frames_left > 0) {
            return Ok(vec![]);
        }
        let p = self.pending.take().expect("checked above");
        let lease = p.lease.lease;
        let rows = usize::try_from(p.lease.rows)
            .map_err(|_| WorkerError::unexpected(Code::WrongShape, "lease rows out of range"))?;
        match p.weights {
            Download::Whole(w) => {
                self.replica = Some(Replica::new(gpu, p.cfg, &p.lease, w, rows)?);
            }
            Download::Shards(ts) if p.update => {
                if let Some(pipe) = self.pipe.as_mut() {
                    pipe.set_weights(gpu, p.lease.version, &ts)?;
                }
                return Ok(vec![]);
            }
            Download::Shards(ts) => {
                self.pipe = Some(PipeReplica::new(
                    gpu,
                    p.cfg,
                    lease,
                    p.lease.version,
                    rows,
                    &ts,
                    &p.lease.sync,
                )?);
            }
        }
        let log_head = self.log_head;
        Ok(vec![self.signed(SessionMessage::Ready { lease, log_head })?])
    }
}
