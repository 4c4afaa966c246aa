//! Tessera compute: WGSL kernels for a LLaMA-style decoder, their dispatch on wgpu (native and
//! wasm32), the forward and backward of each micro-shard kind, and a plain-Rust CPU reference.

pub mod config;
pub mod error;
pub mod reference;
pub mod rope_table;

pub use config::ModelConfig;
pub use error::ComputeError;
pub mod generate;
pub mod gpu;
pub mod hf;
pub mod hf_shards;
pub mod kernels;
pub mod model;
pub mod sampling;
pub mod shaders;
pub mod shard;
mod tied;
pub mod tiles;
pub mod tune;

pub use gpu::{AdapterSummary, Gpu, GpuOptions, Tensor};
pub use tiles::{MatmulKernel, MatmulTiles, Tiles};
