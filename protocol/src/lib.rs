//! Tessera's wire protocol: every message between the coordinator and contributors (native
//! workers and browsers), serde + postcard inside a versioned, size-limited frame; tensor payloads
//! as raw little-endian bytes with dtype and shape; ed25519 identities with a challenge–response
//! handshake, signed submissions and replay protection.
//!
//! This crate does no I/O and draws no randomness: callers pass nonces and key seeds in, so it
//! builds unchanged for native and wasm32.

pub mod activation;
pub mod admission;
pub mod bounded;
pub mod error;
pub mod frame;
pub mod identity;
pub mod log;
pub mod log_store;
pub mod log_v1;
pub mod messages;
pub mod pipeline;
pub mod reason;
pub mod signed;
pub mod tensor;
pub mod terms;
pub mod update;

pub use activation::{ActEncoding, Activation};
pub use error::ProtocolError;
pub use frame::{
    decode, decode_since, encode, encoded_len, MAX_FRAME_BYTES, PROTOCOL_VERSION, WORK_FORMAT_SINCE,
};
pub use identity::{Identity, PublicKey, Signature};
pub use messages::{ToContributor, ToCoordinator};
pub use reason::{Code, Reason};
pub use signed::{ReplayGuard, Signed};
pub use tensor::{DType, TensorPayload};
