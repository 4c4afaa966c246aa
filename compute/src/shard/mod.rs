//! Micro-shards: the atomic units of parameter placement whose outputs add into the residual
//! stream (`Embed`, `Attn`, `Mlp`, `Head`), their parameters as slices of the Hugging Face
//! tensors, and their forward and backward on the GPU.
//!
//! Inside a shard, tensors are split further into *pieces* so that no buffer exceeds the
//! adapter's binding limit; the split is invisible to callers.

mod attn;
mod attn_cached;
mod embed;
mod head;
mod kind;
mod layout;
mod mlp;
mod params;
mod pre_norm;

pub use attn_cached::ShardCache;
pub use head::{combine, HeadStats};
pub use kind::{MicroShard, Rows};
pub use layout::{Axis, TensorLayout};
pub(crate) use params::Piece;
pub use params::{GpuShard, Optimizer, ShardTensor, ShardTensors};
