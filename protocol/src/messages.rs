//! Every message between the coordinator and a contributor.
//!
//! A session: the contributor sends [`ToCoordinator::Hello`]; the coordinator answers
//! [`ToContributor::Challenge`] with a fresh nonce; the contributor proves its key with
//! [`ToCoordinator::Proof`]; from then on every contributor message is [`Signed`] over that nonce
//! with strictly increasing sequence numbers, and echoes the latest run-log head it has seen.

use serde::{Deserialize, Serialize};

use crate::activation::ActEncoding;
use crate::identity::{PublicKey, Signature};
use crate::pipeline::{AuditResult, AuditWork, PipeWork, StepGrads, UnitOutput};
use crate::signed::Signed;
use crate::tensor::TensorPayload;
pub use crate::terms::{ContributorKind, LogHead, ShardSpec};
pub use crate::update::{IndexedTensor, NamedTensor, SparseMean, SparseUpdate, Update};

/// The contributor's adapter and what it may hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Adapter name as the driver or browser reports it.
    #[serde(deserialize_with = "crate::bounded::name")]
    pub adapter: String,
    /// Backend (Vulkan, Metal, BrowserWebGpu, ...).
    #[serde(deserialize_with = "crate::bounded::name")]
    pub backend: String,
    /// Largest storage binding, bytes.
    pub max_binding_bytes: u64,
    /// Memory the contributor lets a lease use, bytes.
    pub memory_budget_bytes: u64,
}

/// Contributor → coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// Opens a session.
    Hello {
        /// The contributor's identity.
        key: PublicKey,
        /// Native or browser.
        kind: ContributorKind,
        /// Client software and version.
        #[serde(deserialize_with = "crate::bounded::name")]
        software: String,
        /// Adapter and budget.
        capabilities: Capabilities,
    },
    /// Signature over [`crate::identity::handshake_message`] in domain `handshake`.
    Proof {
        /// The signature.
        signature: Signature,
    },
    /// Every message after the handshake.
    Session(Signed<SessionMessage>),
}

/// A signed contributor message within a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionMessage {
    /// Weights of a lease are loaded; ready for work.
    Ready {
        /// The lease.
        lease: u64,
        /// Latest log head seen.
        log_head: LogHead,
    },
    /// A finished work unit.
    Submit(Submission),
    /// A finished pipeline unit.
    Output(UnitOutput),
    /// A lease's gradient sums for a step.
    Grads(StepGrads),
    /// Still alive.
    Heartbeat {
        /// Latest log head seen.
        log_head: LogHead,
    },
    /// Leaving cleanly.
    Leave,
    /// The results of an audit this lease was asked to run.
    Audited(AuditResult),
}

/// A finished work unit's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The work unit.
    pub unit: u64,
    /// The lease it ran under.
    pub lease: u64,
    /// Weight version it used.
    pub weights: u64,
    /// Tokens it trained on.
    pub tokens: u64,
    /// Sum of the token losses (nats), for the loss curve.
    pub loss_sum: f64,
    /// The tensors.
    pub result: Update,
    /// Latest log head seen.
    pub log_head: LogHead,
}

/// The inner optimizer a replica runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum InnerOptimizer {
    /// Plain SGD.
    Sgd,
    /// AdamW with decoupled weight decay.
    AdamW {
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Denominator epsilon.
        eps: f32,
        /// Weight decay.
        weight_decay: f32,
    },
}

/// How a replica's pseudo-gradient travels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum SyncMode {
    /// Whole f32 tensors.
    Dense,
    /// SparseLoCo: chunked top-k, 2-bit values, error feedback.
    Sparse {
        /// Chunk rows and columns.
        chunk: [u32; 2],
        /// Entries kept per chunk.
        k: u32,
        /// Error-feedback decay.
        beta: f32,
    },
}

/// What a lease holds and how to train it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Lease id.
    pub lease: u64,
    /// The model, as a Hugging Face `config.json`.
    #[serde(deserialize_with = "crate::bounded::string")]
    pub config_json: String,
    /// The micro-shards held (a whole-model lease holds every one).
    #[serde(deserialize_with = "crate::bounded::list")]
    pub shards: Vec<ShardSpec>,
    /// Inner optimizer.
    pub optimizer: InnerOptimizer,
    /// Global-norm clip of inner gradients, if any.
    pub clip: Option<f32>,
    /// Pseudo-gradient transport.
    pub sync: SyncMode,
    /// Tokens per micro-batch (sequences times sequence length) the replica must hold.
    pub rows: u64,
    /// Weight version the following `Weights` frames carry.
    pub version: u64,
    /// How many `Weights` frames follow.
    pub frames: u32,
    /// `None` for a whole-model replica; for a pipeline lease, how activations travel.
    pub activations: Option<ActEncoding>,
    /// Whole-model replicas: each unit starts from fresh inner state (zero AdamW moments and
    /// step count, no error feedback carried in or out), so that a unit is a function of its
    /// weights and data alone and anyone can replay it (runs that replay units to check them).
    pub fresh_units: bool,
}

/// A work unit for a whole-model replica: `steps` inner steps from the round's weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Work {
    /// Unit id.
    pub unit: u64,
    /// The lease it runs under.
    pub lease: u64,
    /// The round (outer step).
    pub round: u64,
    /// The replica slot of the round; with the round and the run's seed it determines the
    /// samples, so anyone can recompute what the unit trained on.
    pub slot: u64,
    /// Weight version it must start from.
    pub weights: u64,
    /// Token ids `[steps, batch, seq + 1]` (u32): each row's first `seq` are inputs, last `seq`
    /// targets.
    pub tokens: TensorPayload,
    /// Learning rate of each inner step.
    #[serde(deserialize_with = "crate::bounded::list")]
    pub lrs: Vec<f32>,
    /// Send the update dense even where the run compresses updates: the coordinator checks a
    /// compressed update against a dense replay of its unit (runs with fresh units only).
    pub dense: bool,
}

/// The coordinator's verdict on a submission, signed with its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// The work unit.
    pub unit: u64,
    /// Who submitted.
    pub contributor: PublicKey,
    /// Sequence number of the submission.
    pub seq: u64,
    /// Accepted, or why not.
    pub verdict: Verdict,
    /// Log head after recording the verdict.
    pub log_head: LogHead,
}

/// Accepted or rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Verdict {
    /// Accepted into the round.
    Accepted,
    /// Rejected, with the reason.
    Rejected(crate::reason::Reason),
}

/// Coordinator → contributor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToContributor {
    /// Prove your key: sign the handshake message with this nonce.
    Challenge {
        /// Fresh random nonce; also the session nonce for signed messages.
        nonce: [u8; 32],
        /// The coordinator's key.
        coordinator: PublicKey,
        /// Run name.
        #[serde(deserialize_with = "crate::bounded::string")]
        run: String,
    },
    /// The handshake succeeded.
    Welcome {
        /// Run name.
        #[serde(deserialize_with = "crate::bounded::string")]
        run: String,
        /// Latest log head.
        log_head: LogHead,
        /// How often the session should send a heartbeat when it sends nothing else
        /// (milliseconds) while it holds a lease: often enough for the run's silence limit,
        /// and no oftener, since every heartbeat costs the coordinator (protocol 3).
        heartbeat_ms: u32,
        /// How often while it holds no lease (milliseconds): such a session has nothing the
        /// run would wait for, so it is given a longer silence and heartbeats rarer; a crowd
        /// of idle contributors costs the coordinator that much less (protocol 4).
        idle_heartbeat_ms: u32,
    },
    /// A lease; `frames` `Weights` messages follow.
    Lease(Lease),
    /// Part of a lease's weights: elements `offset..offset + len` of a tensor.
    Weights {
        /// The lease.
        lease: u64,
        /// Weight version.
        version: u64,
        /// Index of the micro-shard in the lease (0 for a whole-model lease).
        shard: u32,
        /// Tensor name.
        #[serde(deserialize_with = "crate::bounded::name")]
        name: String,
        /// Full tensor shape (of the micro-shard's slice, for a pipeline lease).
        #[serde(deserialize_with = "crate::bounded::shape")]
        shape: Vec<u64>,
        /// First element carried.
        offset: u64,
        /// The elements.
        values: TensorPayload,
    },
    /// A work unit.
    Work(Work),
    /// A pipeline work unit.
    Unit(Box<PipeWork>),
    /// End of a step's computation: send the lease's gradient sums ([`StepGrads`]).
    Collect {
        /// Id of this request (the receipt names it).
        unit: u64,
        /// The lease.
        lease: u64,
        /// The step.
        step: u64,
    },
    /// A step closed: the lease's new weights follow in `frames` `Weights` messages.
    StepWeights {
        /// The lease.
        lease: u64,
        /// The step that closed.
        step: u64,
        /// The weight version the frames carry.
        version: u64,
        /// How many `Weights` frames follow.
        frames: u32,
    },
    /// The verdict on a submission, signed by the coordinator (domain `receipt`).
    Receipt {
        /// The verdict.
        receipt: Receipt,
        /// Coordinator signature over the postcard encoding of `receipt`.
        signature: Signature,
    },
    /// The outer step of a round: every replica applies `theta -= lr * update`.
    OuterStep {
        /// The round it closes.
        round: u64,
        /// The weight version it produces.
        version: u64,
        /// Outer learning rate.
        lr: f32,
        /// The averaged pseudo-gradient (one copy, shared by every session it goes to; on the
        /// wire as the update itself).
        update: std::sync::Arc<Update>,
    },
    /// Stop working on a unit (reassigned, or its round closed).
    Cancel {
        /// The unit.
        unit: u64,
    },
    /// A refusal: the session ends when `fatal`.
    Error {
        /// What went wrong: a code and a bounded text.
        reason: crate::reason::Reason,
        /// Whether the connection is closed after this.
        fatal: bool,
    },
    /// An administrator's act, as the signed run-log entry that put it into effect (so the
    /// contributor sees what was done, why, and where it stands in the log).
    Admin {
        /// The entry (its event is `LogEvent::Admin`).
        entry: Box<crate::log::SignedEntry>,
    },
    /// Run another lease's units again, to check them.
    Audit(Box<AuditWork>),
}
