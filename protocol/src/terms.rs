//! The small terms every message and the run log share: what kind a contributor is, a point in
//! the run log ([`LogHead`]) and a micro-shard as the wire names it ([`ShardSpec`]).

use serde::{Deserialize, Serialize};

/// What kind of contributor is connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContributorKind {
    /// A native worker (`tessera worker`).
    Native,
    /// A browser tab.
    Browser,
}

/// The latest run-log entry a party has seen: index and hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHead {
    /// Entry index.
    pub index: u64,
    /// Hash of the entry.
    pub hash: [u8; 32],
}

/// A micro-shard on the wire (see docs/ARCHITECTURE.md, "Words"): the kind and its half-open range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardSpec {
    /// Embedding vocabulary rows.
    Embed {
        /// Rows `[start, end)`.
        rows: [u64; 2],
    },
    /// Attention kv groups of a layer.
    Attn {
        /// Layer.
        layer: u64,
        /// Groups `[start, end)`.
        groups: [u64; 2],
    },
    /// MLP hidden columns of a layer.
    Mlp {
        /// Layer.
        layer: u64,
        /// Columns `[start, end)`.
        cols: [u64; 2],
    },
    /// LM head vocabulary columns.
    Head {
        /// Columns `[start, end)`.
        cols: [u64; 2],
    },
}
