//! A set of tensor updates as contributors send them and the coordinator publishes them:
//! whole tensors, SparseLoCo-compressed ones (chunked top-k with 2-bit codes), or explicit
//! nonzero entries.

use serde::{Deserialize, Serialize};

use crate::tensor::TensorPayload;

/// A set of tensor updates: dense, or SparseLoCo-compressed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Update {
    /// Whole tensors by name.
    Dense(#[serde(deserialize_with = "crate::bounded::list")] Vec<NamedTensor>),
    /// Chunked top-k with 2-bit values, packed, in the receiver's tensor order.
    Sparse(Box<SparseUpdate>),
    /// Explicit nonzero entries, by name: how the coordinator publishes the mean of sparse
    /// updates when that is smaller than [`Update::SparseMean`].
    Indexed(#[serde(deserialize_with = "crate::bounded::list")] Vec<IndexedTensor>),
    /// The mean of SparseLoCo updates given by the updates themselves: how the coordinator
    /// publishes an outer step while that is smaller than its explicit entries (a few replicas).
    SparseMean(Box<SparseMean>),
}

/// The weighted mean of packed SparseLoCo updates, `sum_r scale_r * part_r / parts`, summed in
/// f64 in the order given, so every receiver computes the same f32 mean as the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseMean {
    /// Each part's weight (its median-norm clip scale, in `(0, 1]`).
    #[serde(deserialize_with = "crate::bounded::list")]
    pub scales: Vec<f64>,
    /// The replicas' updates as they sent them.
    #[serde(deserialize_with = "crate::bounded::list")]
    pub parts: Vec<SparseUpdate>,
}

/// A tensor given by its nonzero entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexedTensor {
    /// Tensor name.
    #[serde(deserialize_with = "crate::bounded::name")]
    pub name: String,
    /// Shape of the dense tensor.
    #[serde(deserialize_with = "crate::bounded::shape")]
    pub shape: Vec<u64>,
    /// Flat positions, strictly increasing (u32 payload).
    pub indices: TensorPayload,
    /// The values at those positions (f32 payload).
    pub values: TensorPayload,
}

/// A tensor with its Hugging Face name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    /// Tensor name.
    #[serde(deserialize_with = "crate::bounded::name")]
    pub name: String,
    /// Values.
    pub tensor: TensorPayload,
}

/// SparseLoCo-compressed tensors, packed for the wire: every tensor the receiver expects (the
/// model's or the micro-shard's, in its order; no names), each tiled into chunks (64 x 64 by
/// default), per chunk the `k` kept positions, their 2-bit codes (sign and magnitude level) and
/// two magnitude levels. A chunk that keeps all its entries sends no positions; the others send
/// their positions ascending as Rice-coded gaps (about 8 bits each for 64 of 4096, against 16 as
/// plain `u16`s). The receiver's tensor list gives every count, so nothing here is trusted to size
/// anything.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseUpdate {
    /// Chunk rows and columns.
    pub chunk: [u32; 2],
    /// Positions kept per chunk (all of a chunk smaller than that).
    pub k: u32,
    /// Low and high magnitude level of every chunk, tensor after tensor (f32 `[chunks, 2]`).
    pub levels: TensorPayload,
    /// 2-bit codes of every kept entry in position order, four per byte (bit 0: negative; bit 1:
    /// the high level), padded with zeros.
    #[serde(
        serialize_with = "serde_bytes::serialize",
        deserialize_with = "crate::bounded::bytes"
    )]
    pub codes: Vec<u8>,
    /// The kept positions of the chunks that keep fewer than all entries, ascending within each
    /// chunk: the gap before each (one less than the distance from the previous, or the position
    /// itself for the first) Rice-coded with the parameter `floor(log2(chunk entries / kept))`,
    /// quotient in unary (ones ended by a zero) then the remainder's low bits, least significant
    /// bit first, padded with zeros.
    #[serde(
        serialize_with = "serde_bytes::serialize",
        deserialize_with = "crate::bounded::bytes"
    )]
    pub positions: Vec<u8>,
}
