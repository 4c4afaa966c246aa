//! The closes a run log records: for each weights version, the `Closed` entry that stands for
//! it. `tessera verify` checks checkpoints and replays aggregates against them; `tessera fork`
//! starts from one.

use std::collections::BTreeMap;

use tessera_protocol::log::{LogEvent, SignedEntry};
use tessera_protocol::messages::LogHead;

/// A version's close, as the log records it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Close {
    /// The `Closed` entry's head.
    pub head: LogHead,
    /// The round or step that closed.
    pub round: u64,
    /// SHA-256 of the weights it produced.
    pub weights: [u8; 32],
    /// SHA-256 of the aggregate that produced them.
    pub aggregate: [u8; 32],
}

/// The close that stands for each version: the last `Closed` entry for it (a coordinator that
/// crashed after logging a close but before committing its checkpoint redoes that round).
pub fn closes(entries: &[SignedEntry]) -> BTreeMap<u64, Close> {
    let mut out = BTreeMap::new();
    for e in entries {
        if let LogEvent::Closed {
            round,
            version,
            weights,
            aggregate,
        } = &e.entry.event
        {
            let close = Close {
                head: e.head(),
                round: *round,
                weights: *weights,
                aggregate: *aggregate,
            };
            out.insert(*version, close);
        }
    }
    out
}
