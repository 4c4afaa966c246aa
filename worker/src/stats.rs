//! What a contributor counts of its own work: the counters a user interface shows, and the
//! tokens a pipeline unit counts for.

use tessera_protocol::pipeline::{Pass, PipeWork};

/// Tokens a pipeline unit processed: a forward unit's sequence length (backward units redo the
/// same tokens and are not counted again).
pub(crate) fn self_tokens(w: &PipeWork) -> u64 {
    if w.pass != Pass::Forward {
        return 0;
    }
    w.tokens
        .as_ref()
        .map(|t| t.shape.iter().product())
        .or_else(|| {
            w.input
                .as_ref()
                .and_then(|a| a.tensor.shape.first().copied())
        })
        .unwrap_or(0)
}

/// Counters a user interface shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Weight frames received of the current download.
    pub frames_received: u32,
    /// Weight frames in the current download.
    pub frames_total: u32,
    /// Units finished and submitted.
    pub submitted: u64,
    /// Units accepted.
    pub accepted: u64,
    /// Units rejected.
    pub rejected: u64,
    /// Tokens trained.
    pub tokens: u64,
    /// Audits of other leases' work run.
    pub audits: u64,
}
