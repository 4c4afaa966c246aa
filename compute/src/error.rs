//! Errors of the compute crate.

/// Everything that can go wrong in the compute crate.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// No adapter was found.
    #[error("no WebGPU adapter: {0}")]
    NoAdapter(String),
    /// The device could not be created with the requested limits or features.
    #[error("could not create a GPU device: {0}")]
    Device(String),
    /// The GPU reported a validation or out-of-memory error.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// The device was lost (driver reset, `device.destroy()`, tab backgrounded too long).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// A buffer would exceed the adapter's limits even after chunking.
    #[error("{what} needs {bytes} bytes in one binding, above this adapter's limit of {limit}")]
    TooLarge {
        /// What did not fit.
        what: String,
        /// Bytes needed.
        bytes: u64,
        /// Limit in bytes.
        limit: u64,
    },
    /// Shapes or ranges that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A model configuration that cannot work.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// Tile sizes that the adapter cannot run.
    #[error("invalid tile sizes: {0}")]
    InvalidTiles(String),
    /// A Hugging Face checkpoint or config that cannot be read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} at position {pos} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// Its position in the batch.
        pos: usize,
        /// Vocabulary size.
        vocab: usize,
    },
}
