//! Errors of the training algorithms (mostly: an update from a peer that does not fit).

/// Why an update or a configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    /// An update that does not match the tensor it claims to update.
    #[error("bad update for {name}: {why}")]
    BadUpdate {
        /// Tensor name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A malformed payload.
    #[error(transparent)]
    Protocol(#[from] tessera_protocol::ProtocolError),
    /// A configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}
