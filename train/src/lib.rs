//! Training algorithms shared by the coordinator and contributors, with no I/O: SparseLoCo
//! compression (chunked top-k, 2-bit values, error feedback) and aggregation (median-norm clip,
//! mean, outer SGD), one optimizer step on whole weights (clip, SGD or AdamW), learning-rate
//! schedules, and the deterministic assignment of samples to
//! replicas and steps.

mod bits;
pub mod data;
pub mod drift;
pub mod error;
pub mod optimizer;
pub mod outer;
pub mod schedule;
pub mod shards;
pub mod sparse_wire;
pub mod sparseloco;
pub mod update;

pub use error::TrainError;
