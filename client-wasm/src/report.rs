//! What the client tells the page: one JSON object per event, posted from the Web Worker.

use serde::Serialize;

/// An event for the page.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    /// The GPU: the adapter's name and the limits that size the lease.
    Adapter {
        /// Name as the browser reports it (may be empty: browsers hide it).
        name: String,
        /// Backend.
        backend: String,
        /// Largest storage binding, bytes.
        max_binding_bytes: u64,
        /// Largest buffer, bytes.
        max_buffer_bytes: u64,
    },
    /// Kernel tuning in progress: candidate tiling `candidate` of `of` is being timed.
    Tuning {
        /// Which candidate (from 1).
        candidate: u32,
        /// How many.
        of: u32,
    },
    /// Kernel tuning done: the page keeps `keep` and hands it back on later visits.
    Tuned {
        /// What to keep (JSON: the adapter and the winning tiling).
        keep: String,
        /// The winner, for people.
        tiles: String,
        /// Its GFLOP/s over the tuned matmuls.
        gflops: f64,
        /// Every candidate's figures (`tessera tune`'s table).
        table: String,
    },
    /// The contributor's public key (hex): how the run's status and log name it.
    Identity {
        /// The key.
        key: String,
    },
    /// No usable GPU: why, for people.
    NoGpu {
        /// What went wrong and what to do.
        message: String,
    },
    /// Where the connection stands.
    Connection {
        /// `connecting`, `connected`, `reconnecting`, `paused`, or `stopped` (the coordinator
        /// ended this contributor's part: it does not connect again).
        state: String,
        /// Details for people.
        detail: String,
    },
    /// The coordinator's admission puzzle was solved before connecting.
    Admission {
        /// Zero bits it asked for.
        bits: u8,
        /// Hashes tried.
        hashes: u64,
        /// Milliseconds the solving took.
        ms: f64,
    },
    /// The run joined and the micro-shards leased.
    Lease {
        /// Run name.
        run: String,
        /// The micro-shards held.
        shards: Vec<String>,
    },
    /// Counters.
    Stats {
        /// Weight frames received of the current download.
        frames_received: u32,
        /// Weight frames in the current download.
        frames_total: u32,
        /// Units finished and submitted.
        units: u64,
        /// Units accepted.
        accepted: u64,
        /// Units rejected.
        rejected: u64,
        /// Tokens trained.
        tokens: u64,
        /// Estimated GFLOP/s of the last unit.
        gflops: f64,
        /// Share of wall time the GPU was busy.
        busy: f64,
        /// The longest a GPU submission took, ms (kept near 50 ms or less).
        longest_submit_ms: f64,
        /// Dispatches per submission now.
        dispatches_per_submit: u32,
    },
    /// A message from the coordinator or the client for people.
    Note {
        /// The text.
        text: String,
    },
}

impl Report {
    /// The JSON the page receives.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"type\":\"note\",\"text\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_tagged_json() {
        let r = Report::Connection {
            state: "connecting".into(),
            detail: "ws://x/ws".into(),
        };
        assert_eq!(
            r.to_json(),
            r#"{"type":"connection","state":"connecting","detail":"ws://x/ws"}"#
        );
    }
}
