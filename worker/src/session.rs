//! The contributor's side of the protocol, independent of transport and of compute: answers the
//! challenge, assembles a lease's weights from `Weights` frames, turns work units, audits and
//! outer steps into [`Job`]s for a backend and the backend's answers into signed messages, with
//! increasing sequence numbers. It never computes (see `backend.rs`).

use tessera_compute::shard::MicroShard;
use tessera_compute::ModelConfig;
use tessera_protocol::identity::{handshake_message, HANDSHAKE};
use tessera_protocol::log::{LogEvent, SignedEntry, LOG};
use tessera_protocol::messages::{
    Capabilities, ContributorKind, Lease, LogHead, Receipt, SessionMessage, Submission, Verdict,
};
use tessera_protocol::pipeline::{AuditResult, PipeWork, StepGrads, UnitOutput};
use tessera_protocol::signed::{signing_bytes, RECEIPT};
use tessera_protocol::{
    Code, Identity, PublicKey, Signature, Signed, ToContributor, ToCoordinator,
};

use crate::backend::{no_lease, Done, Job};
use crate::download::Download;
use crate::error::WorkerError;
use crate::stats::self_tokens;
pub use crate::stats::Stats;

/// The lease the backend holds, as the session knows it.
#[derive(Clone, Debug)]
struct Loaded {
    lease: u64,
    cfg: ModelConfig,
    /// Its micro-shards; `None` for a whole-model lease.
    shards: Option<Vec<MicroShard>>,
}

/// The job in flight, and what its answer becomes.
#[derive(Clone, Debug)]
enum Running {
    /// A lease loading (`update`: a step's new weights for the loaded one).
    Load {
        loaded: Loaded,
        update: bool,
    },
    Train {
        unit: u64,
        lease: u64,
        weights: u64,
    },
    OuterStep,
    Unit {
        unit: u64,
        lease: u64,
        weights: u64,
        tokens: u64,
    },
    Audit {
        audit: u64,
        lease: u64,
    },
    Collect {
        unit: u64,
        lease: u64,
        step: u64,
    },
}

/// What handling one message gives: messages to send now, then at most one job whose answer
/// goes to [`Session::finish`].
#[derive(Debug, Default)]
pub struct Reply {
    /// To send, in order.
    pub send: Vec<ToCoordinator>,
    /// To run.
    pub job: Option<Job>,
}

impl Reply {
    fn send(msgs: Vec<ToCoordinator>) -> Self {
        Reply {
            send: msgs,
            job: None,
        }
    }
}

/// One contributor's protocol state.
pub struct Session {
    id: Identity,
    kind: ContributorKind,
    caps: Capabilities,
    nonce: Option<[u8; 32]>,
    coordinator: Option<PublicKey>,
    /// The only coordinator this contributor works for, when it was told one.
    expect: Option<PublicKey>,
    seq: u64,
    log_head: LogHead,
    pending: Option<Download>,
    loaded: Option<Loaded>,
    running: Option<Running>,
    stats: Stats,
    last_error: Option<String>,
    last_notice: Option<String>,
    /// Signed receipts not yet taken.
    receipts: Vec<(Receipt, Signature)>,
    /// How often to send a heartbeat holding a lease, as the coordinator's `Welcome` asked.
    heartbeat: std::time::Duration,
    /// How often holding none, as the `Welcome` asked.
    idle_heartbeat: std::time::Duration,
}

impl Session {
    /// A contributor with identity `id`.
    pub fn new(id: Identity, kind: ContributorKind, caps: Capabilities) -> Self {
        Session {
            id,
            kind,
            caps,
            nonce: None,
            coordinator: None,
            expect: None,
            seq: 0,
            log_head: LogHead::default(),
            pending: None,
            loaded: None,
            running: None,
            stats: Stats::default(),
            last_error: None,
            last_notice: None,
            receipts: Vec::new(),
            heartbeat: crate::heartbeat::DEFAULT,
            idle_heartbeat: crate::heartbeat::DEFAULT,
        }
    }

    /// The public key.
    pub fn key(&self) -> PublicKey {
        self.id.public()
    }

    /// Works only for the coordinator whose key is `key`: a challenge from any other is
    /// answered with nothing and ends the session with [`WorkerError::WrongCoordinator`].
    pub fn expect_coordinator(&mut self, key: PublicKey) {
        self.expect = Some(key);
    }

    /// How often to send a heartbeat: what the coordinator's `Welcome` asked (within 1 s to
    /// 60 s) for a session holding a lease, or holding none, [`crate::heartbeat::DEFAULT`]
    /// before it.
    pub fn heartbeat_every(&self) -> std::time::Duration {
        if self.pending.is_some() || self.loaded.is_some() {
            self.heartbeat
        } else {
            self.idle_heartbeat
        }
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
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
        self.loaded = None;
        self.running = None;
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

    /// Handles one message: the replies to send now and at most one job for the backend,
    /// whose answer goes to [`Session::finish`] before the next message. A fatal error from
    /// the coordinator is returned as an error.
    pub fn handle(&mut self, msg: ToContributor) -> Result<Reply, WorkerError> {
        if self.running.is_some() {
            return Err(WorkerError::Local(
                "a message arrived before the last job's answer was given to the session".into(),
            ));
        }
        match msg {
            ToContributor::Challenge {
                nonce,
                coordinator,
                run,
            } => {
                if let Some(expected) = self.expect.filter(|&k| k != coordinator) {
                    return Err(WorkerError::WrongCoordinator {
                        expected,
                        got: coordinator,
                        run,
                    });
                }
                self.nonce = Some(nonce);
                self.coordinator = Some(coordinator);
                let signature = self.id.sign(
                    HANDSHAKE,
                    &handshake_message(&nonce, &coordinator, &self.id.public()),
                );
                Ok(Reply::send(vec![ToCoordinator::Proof { signature }]))
            }
            ToContributor::Welcome {
                log_head,
                heartbeat_ms,
                idle_heartbeat_ms,
                ..
            } => {
                self.log_head = log_head;
                self.heartbeat = crate::heartbeat::every(heartbeat_ms);
                self.idle_heartbeat = crate::heartbeat::every(idle_heartbeat_ms);
                Ok(Reply::default())
            }
            ToContributor::Lease(lease) => self.lease(lease),
            ToContributor::StepWeights {
                lease,
                version,
                frames,
                ..
            } => self.step_weights(lease, version, frames),
            ToContributor::Weights {
                lease,
                version,
                shard,
                name,
                offset,
                values,
                ..
            } => self.weights((lease, version, shard), &name, offset, &values),
            ToContributor::Work(w) => self.work(Box::new(w)),
            ToContributor::Unit(w) => self.unit(w),
            ToContributor::Audit(a) => self.audit(a),
            ToContributor::Collect { unit, lease, step } => self.collect(unit, lease, step),
            ToContributor::OuterStep {
                version,
                lr,
                update,
                ..
            } => {
                if self.loaded.as_ref().is_none_or(|l| l.shards.is_some()) {
                    return Ok(Reply::default());
                }
                self.running = Some(Running::OuterStep);
                Ok(Reply {
                    send: vec![],
                    job: Some(Job::OuterStep {
                        version,
                        lr,
                        update: std::sync::Arc::unwrap_or_clone(update),
                    }),
                })
            }
            ToContributor::Receipt { receipt, signature } => self.receipt(receipt, signature),
            ToContributor::Cancel { .. } => Ok(Reply::default()),
            ToContributor::Admin { entry } => self.admin_notice(&entry),
            ToContributor::Error { reason, fatal } => {
                if fatal {
                    return Err(WorkerError::Refused(reason));
                }
                tracing::warn!(code = ?reason.code, "coordinator: {reason}");
                self.last_error = Some(reason.to_string());
                Ok(Reply::default())
            }
        }
    }

    /// The backend's answer to the job of the last [`Reply`]: the messages it makes.
    pub fn finish(&mut self, done: Done) -> Result<Vec<ToCoordinator>, WorkerError> {
        let running = self.running.take().ok_or_else(|| {
            WorkerError::Local("an answer for a job the session did not ask for".into())
        })?;
        let log_head = self.log_head;
        let body = match (running, done) {
            (Running::Load { loaded, update }, Done::Loaded) => {
                let lease = loaded.lease;
                self.loaded = Some(loaded);
                if update {
                    return Ok(vec![]);
                }
                SessionMessage::Ready { lease, log_head }
            }
            (Running::OuterStep, Done::Stepped) => return Ok(vec![]),
            (
                Running::Train {
                    unit,
                    lease,
                    weights,
                },
                Done::Trained(r),
            ) => {
                self.stats.submitted += 1;
                self.stats.tokens += r.tokens;
                SessionMessage::Submit(Submission {
                    unit,
                    lease,
                    weights,
                    tokens: r.tokens,
                    loss_sum: r.loss_sum,
                    result: r.update,
                    log_head,
                })
            }
            (
                Running::Unit {
                    unit,
                    lease,
                    weights,
                    tokens,
                },
                Done::Unit(result),
            ) => {
                self.stats.submitted += 1;
                self.stats.tokens += tokens;
                SessionMessage::Output(UnitOutput {
                    unit,
                    lease,
                    weights,
                    result,
                    log_head,
                })
            }
            (Running::Audit { audit, lease }, Done::Audited(outputs, grads)) => {
                self.stats.audits += 1;
                SessionMessage::Audited(AuditResult {
                    audit,
                    lease,
                    outputs,
                    grads,
                    log_head,
                })
            }
            (Running::Collect { unit, lease, step }, Done::Collected(units, shards)) => {
                SessionMessage::Grads(StepGrads {
                    unit,
                    lease,
                    step,
                    units,
                    shards,
                    log_head,
                })
            }
            (running, done) => {
                return Err(WorkerError::Local(format!(
                    "the backend answered {running:?} with {}",
                    done_kind(&done)
                )))
            }
        };
        Ok(vec![self.signed(body)?])
    }

    /// Asks the backend for `job`, whose answer `running` describes.
    fn ask(&mut self, running: Running, job: Job) -> Result<Reply, WorkerError> {
        self.running = Some(running);
        Ok(Reply {
            send: vec![],
            job: Some(job),
        })
    }

    /// The loaded pipeline lease `lease`: its model and micro-shards.
    fn pipe_lease(
        &self,
        lease: u64,
        what: &str,
    ) -> Result<(&ModelConfig, &[MicroShard]), WorkerError> {
        let l = self.loaded.as_ref().ok_or_else(|| no_lease(what))?;
        let shards = l.shards.as_ref().ok_or_else(|| no_lease(what))?;
        if l.lease != lease {
            return Err(WorkerError::unexpected(
                Code::NotYourLease,
                format!(
                    "{what} for lease {lease}, this contributor holds lease {}",
                    l.lease
                ),
            ));
        }
        Ok((&l.cfg, shards))
    }

    /// A new lease: its weights download in the `Weights` frames that follow.
    fn lease(&mut self, lease: Lease) -> Result<Reply, WorkerError> {
        self.stats.frames_received = 0;
        self.stats.frames_total = lease.frames;
        self.loaded = None;
        self.pending = Some(Download::lease(lease)?);
        self.finish_download()
    }

    /// A closed step: the pipeline lease's new weights follow in `frames` frames.
    fn step_weights(
        &mut self,
        lease: u64,
        version: u64,
        frames: u32,
    ) -> Result<Reply, WorkerError> {
        let (cfg, shards) = self.pipe_lease(lease, "step weights")?;
        let download = Download::step(cfg.clone(), shards, (lease, version, frames))?;
        self.stats.frames_received = 0;
        self.stats.frames_total = frames;
        self.pending = Some(download);
        self.finish_download()
    }

    /// One frame of a download.
    fn weights(
        &mut self,
        at: (u64, u64, u32),
        name: &str,
        offset: u64,
        values: &tessera_protocol::TensorPayload,
    ) -> Result<Reply, WorkerError> {
        let p = self.pending.as_mut().ok_or_else(|| {
            WorkerError::unexpected(Code::NotYourLease, "weights without a lease")
        })?;
        p.frame(at, name, offset, values)?;
        self.stats.frames_received += 1;
        self.finish_download()
    }

    /// A whole-model unit: its inner steps for the backend, then submitted.
    fn work(&mut self, w: Box<tessera_protocol::messages::Work>) -> Result<Reply, WorkerError> {
        if self.loaded.as_ref().is_none_or(|l| l.shards.is_some()) {
            return Err(no_lease("work"));
        }
        let running = Running::Train {
            unit: w.unit,
            lease: w.lease,
            weights: w.weights,
        };
        self.ask(running, Job::Train(w))
    }

    /// A pipeline unit: run by the backend, its output sent.
    fn unit(&mut self, w: Box<PipeWork>) -> Result<Reply, WorkerError> {
        if self.loaded.as_ref().is_none_or(|l| l.shards.is_none()) {
            return Err(no_lease("a pipeline unit"));
        }
        let running = Running::Unit {
            unit: w.unit,
            lease: w.lease,
            weights: w.weights,
            tokens: self_tokens(&w),
        };
        self.ask(running, Job::Unit(w))
    }

    /// Another lease's units, run again to check them.
    fn audit(
        &mut self,
        a: Box<tessera_protocol::pipeline::AuditWork>,
    ) -> Result<Reply, WorkerError> {
        self.pipe_lease(a.lease, "an audit")?;
        let running = Running::Audit {
            audit: a.audit,
            lease: a.lease,
        };
        self.ask(running, Job::Audit(a))
    }

    /// The end of a step's computation: the lease's gradient sums.
    fn collect(&mut self, unit: u64, lease: u64, step: u64) -> Result<Reply, WorkerError> {
        self.pipe_lease(lease, "a collect request")?;
        self.ask(Running::Collect { unit, lease, step }, Job::Collect)
    }

    /// A signed verdict on a submission, kept as evidence.
    fn receipt(&mut self, receipt: Receipt, signature: Signature) -> Result<Reply, WorkerError> {
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
        Ok(Reply::default())
    }

    /// An administrator's act, as its signed log entry.
    fn admin_notice(&mut self, entry: &SignedEntry) -> Result<Reply, WorkerError> {
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
        Ok(Reply::default())
    }

    /// Once every frame of a download arrived: the job that loads it.
    fn finish_download(&mut self) -> Result<Reply, WorkerError> {
        if self.pending.as_ref().is_none_or(|p| !p.complete()) {
            return Ok(Reply::default());
        }
        let Some(p) = self.pending.take() else {
            return Ok(Reply::default());
        };
        let l = p.finish()?;
        let loaded = Loaded {
            lease: l.lease,
            cfg: l.cfg,
            shards: l.shards,
        };
        let running = Running::Load {
            loaded,
            update: l.update,
        };
        self.ask(running, l.job)
    }
}

fn done_kind(d: &Done) -> &'static str {
    match d {
        Done::Loaded => "a load",
        Done::Trained(_) => "a trained unit",
        Done::Stepped => "an outer step",
        Done::Unit(_) => "a unit's result",
        Done::Audited(..) => "an audit",
        Done::Collected(..) => "gradient sums",
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
