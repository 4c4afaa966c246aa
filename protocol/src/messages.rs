//! Every message between the coordinator and a contributor.
//!
//! A session: the contributor sends [`ToCoordinator::Hello`]; the coordinator answers
//! [`ToContributor::Challenge`] with a fresh nonce; the contributor proves its key with
//! [`ToCoordinator::Proof`]; from then on every contributor message is [`Signed`] over that nonce
//! with strictly increasing sequence numbers, and echoes the latest run-log head it has seen.

use serde::{Deserialize, Serialize};

use crate::identity::{PublicKey, Signature};
use crate::signed::Signed;
use crate::tensor::TensorPayload;

/// What kind of contributor is connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContributorKind {
    /// A native worker (`tessera worker`).
    Native,
    /// A browser tab.
    Browser,
}

/// The contributor's adapter and what it may hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Adapter name as the driver or browser reports it.
    pub adapter: String,
    /// Backend (Vulkan, Metal, BrowserWebGpu, ...).
    pub backend: String,
    /// Largest storage binding, bytes.
    pub max_binding_bytes: u64,
    /// Memory the contributor lets a lease use, bytes.
    pub memory_budget_bytes: u64,
}

/// The latest run-log entry a party has seen: index and hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHead {
    /// Entry index.
    pub index: u64,
    /// Hash of the entry.
    pub hash: [u8; 32],
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
    /// Still alive.
    Heartbeat {
        /// Latest log head seen.
        log_head: LogHead,
    },
    /// Leaving cleanly.
    Leave,
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

/// A set of tensor updates: dense, or SparseLoCo-compressed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Update {
    /// Whole tensors by name.
    Dense(Vec<NamedTensor>),
    /// Chunked top-k with 2-bit values, by name.
    Sparse(Vec<SparseTensor>),
}

/// A tensor with its Hugging Face name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    /// Tensor name.
    pub name: String,
    /// Values.
    pub tensor: TensorPayload,
}

/// A SparseLoCo-compressed tensor: the tensor is tiled into chunks (64 x 64 by default); per
/// chunk, `k` positions, their 2-bit codes (sign and magnitude level) and two magnitude levels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseTensor {
    /// Tensor name.
    pub name: String,
    /// Shape of the dense tensor.
    pub shape: Vec<u64>,
    /// Chunk rows and columns.
    pub chunk: [u32; 2],
    /// Positions kept per chunk (fewer in chunks smaller than that).
    pub k: u32,
    /// Positions within each chunk, row-major in the chunk (u16 payload).
    pub indices: TensorPayload,
    /// 2-bit codes, four per byte (u8 payload).
    pub codes: TensorPayload,
    /// Low and high magnitude level per chunk (f32 payload `[chunks, 2]`).
    pub levels: TensorPayload,
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
        run: String,
    },
    /// The handshake succeeded.
    Welcome {
        /// Run name.
        run: String,
        /// Latest log head.
        log_head: LogHead,
    },
    /// A refusal: the session ends when `fatal`.
    Error {
        /// What went wrong, for people.
        message: String,
        /// Whether the connection is closed after this.
        fatal: bool,
    },
}
