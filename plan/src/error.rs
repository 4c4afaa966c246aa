//! The planner's error type.

use tessera_compute::ComputeError;

/// Why a plan, a packing or a parsed quantity could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The model configuration is inconsistent.
    #[error("invalid model: {0}")]
    Model(#[from] ComputeError),
    /// An option is out of range.
    #[error("invalid option {name}: {why}")]
    Option {
        /// The option's name.
        name: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// Even the finest cut of a stage (one unit) does not fit the memory budget.
    #[error(
        "{shard} needs {bytes} bytes ({}) resident and working, over the budget of {budget} bytes ({}); it is the finest cut of its stage",
        crate::units::bytes(*bytes),
        crate::units::bytes(*budget)
    )]
    ShardTooLarge {
        /// The smallest micro-shard of the stage, e.g. `Mlp(0, 0..1)`.
        shard: String,
        /// What it needs.
        bytes: u64,
        /// The budget it misses.
        budget: u64,
    },
    /// Even the finest cut of a stage holds a single buffer over the binding limit.
    #[error(
        "{shard} holds a {bytes}-byte buffer ({}), over the storage binding limit of {limit} bytes ({}); it is the finest cut of its stage",
        crate::units::bytes(*bytes),
        crate::units::bytes(*limit)
    )]
    TensorTooLarge {
        /// The smallest micro-shard of the stage.
        shard: String,
        /// Its largest buffer.
        bytes: u64,
        /// The binding limit.
        limit: u64,
    },
    /// A quantity on the command line could not be read.
    #[error("cannot read {what} {text:?}: {why}")]
    Parse {
        /// What was expected (a memory size, a bandwidth, a FLOP rate).
        what: &'static str,
        /// The text given.
        text: String,
        /// What is wrong and what would be accepted.
        why: String,
    },
}
