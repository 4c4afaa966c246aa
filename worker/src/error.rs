//! Errors of a contributor.

/// Why the contributor could not go on.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The GPU failed.
    #[error(transparent)]
    Compute(#[from] tessera_compute::ComputeError),
    /// A message did not fit the protocol.
    #[error(transparent)]
    Protocol(#[from] tessera_protocol::ProtocolError),
    /// An update did not fit.
    #[error(transparent)]
    Train(#[from] tessera_train::TrainError),
    /// The coordinator sent something this contributor cannot act on.
    #[error("coordinator: {0}")]
    Coordinator(String),
    /// The coordinator refused this contributor and ended the session (its code says why:
    /// `Refused` and `Banned` identities are not taken back).
    #[error("coordinator: {0}")]
    Refused(tessera_protocol::Reason),
}
