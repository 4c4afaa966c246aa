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
    /// Chunked top-k with 2-bit values, by name.
    Sparse(#[serde(deserialize_with = "crate::bounded::list")] Vec<SparseTensor>),
    /// Explicit nonzero entries, by name: how the coordinator publishes the mean of sparse
    /// updates.
    Indexed(#[serde(deserialize_with = "crate::bounded::list")] Vec<IndexedTensor>),
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

/// A SparseLoCo-compressed tensor: the tensor is tiled into chunks (64 x 64 by default); per
/// chunk, `k` positions, their 2-bit codes (sign and magnitude level) and two magnitude levels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseTensor {
    /// Tensor name.
    #[serde(deserialize_with = "crate::bounded::name")]
    pub name: String,
    /// Shape of the dense tensor.
    #[serde(deserialize_with = "crate::bounded::shape")]
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
