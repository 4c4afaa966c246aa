//! Tessera's planner: cuts a model into micro-shards that fit the smallest contributor's
//! memory budget, packs them into leases for bigger budgets, and estimates from the model's
//! shape what each costs in memory, FLOPs and wire bytes, and what that implies for tokens/s
//! and step latency (docs/ARCHITECTURE.md, "The 72B plan on paper").
//!
//! Every figure is an estimate from the model shape and the buffers the compute crate's
//! kernels allocate, not a measurement.

pub mod cost;
pub mod error;
pub mod options;
pub mod pack;
pub mod pipeline;
pub mod plan;
pub mod presets;
pub mod report;
pub mod slicing;
pub mod units;

pub use cost::{Kind, ShardCost};
pub use error::PlanError;
pub use options::{PlanOptions, GIB, MIB};
pub use pack::LeaseShape;
pub use pipeline::{Limit, Throughput};
pub use plan::Plan;
pub use presets::{default_options, preset, PRESETS};
pub use report::Report;
