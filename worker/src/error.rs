//! Errors of a contributor.

use tessera_protocol::{Code, Reason};

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
    /// The coordinator sent something this contributor cannot act on; the code says what kind
    /// (`NotYourLease`, `WrongVersion`, `WrongShape`, `UnexpectedMessage`, ...).
    #[error("coordinator: {0}")]
    Unexpected(tessera_protocol::Reason),
    /// This machine cannot take part as set up: TLS roots, randomness for a key.
    #[error("{0}")]
    Local(String),
    /// Calibration work that cannot run or outputs that cannot be compared.
    #[error("calibration: {0}")]
    Calibration(String),
    /// The coordinator refused this contributor and ended the session (its code says why:
    /// `Refused` and `Banned` identities are not taken back).
    #[error("coordinator: {0}")]
    Refused(tessera_protocol::Reason),
    /// The coordinator at the address is not the one this contributor was told to work for
    /// (its key differs): nothing was signed for it, and connecting again cannot help.
    #[error(
        "the coordinator at this address has key {got} (run {run:?}), not the expected {expected}: \
         this worker contributes only to the coordinator it was started for"
    )]
    WrongCoordinator {
        /// The key the contributor was told to expect.
        expected: tessera_protocol::PublicKey,
        /// The key the coordinator's challenge named.
        got: tessera_protocol::PublicKey,
        /// The run the challenge named (bounded by the protocol's string limit).
        run: String,
    },
}

impl WorkerError {
    /// The coordinator sent something that cannot be acted on, of kind `code`.
    pub fn unexpected(code: Code, text: impl Into<String>) -> Self {
        WorkerError::Unexpected(Reason::new(code, text))
    }

    /// Whether connecting again cannot help: the coordinator is not the expected one, or it
    /// ended the session for good (this identity refused by a check, banned, not invited to an
    /// invite-only run, or speaking another protocol version).
    pub fn is_final(&self) -> bool {
        match self {
            WorkerError::WrongCoordinator { .. } => true,
            WorkerError::Refused(r) => matches!(
                r.code,
                Code::Refused | Code::Banned | Code::NotInvited | Code::ProtocolVersion
            ),
            _ => false,
        }
    }

    /// The refusal code, for errors about the coordinator's messages.
    pub fn code(&self) -> Option<Code> {
        match self {
            WorkerError::Unexpected(r) | WorkerError::Refused(r) => Some(r.code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_that_a_new_connection_cannot_change_are_final() {
        let refused = |code| WorkerError::Refused(Reason::new(code, "x"));
        for code in [
            Code::Refused,
            Code::Banned,
            Code::NotInvited,
            Code::ProtocolVersion,
        ] {
            assert!(refused(code).is_final(), "{code:?}");
        }
        for code in [Code::Replaced, Code::Silent, Code::Budget, Code::TimedOut] {
            assert!(!refused(code).is_final(), "{code:?}");
        }
        assert!(!WorkerError::unexpected(Code::Banned, "x").is_final());
    }
}
