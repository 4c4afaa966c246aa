//! The run log as version 1 wrote it (before reasons had codes), frozen: logs are permanent
//! evidence, so `tessera verify` and `tessera fork` read version-1 logs for good. These types
//! decode a version-1 entry exactly as it was hashed and signed; [`SignedEntryV1::upgrade`]
//! turns it into today's types (each free-text reason with [`Code::Version1`]) for everything
//! that reads a log after its chain was checked. Do not change them: a change would make every
//! version-1 log fail its hashes. Types the entries share with the current log (keys, shard
//! specs, log heads) must stay wire-compatible, or be frozen here too when they change.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{PublicKey, Signature};
use crate::log::{AdminAction, CheckOutcome, LogEntry, LogEvent, SignedEntry};
use crate::reason::{Code, Reason};
use crate::terms::{ContributorKind, LogHead, ShardSpec};

/// Domain of version-1 entry hashes and signatures.
pub const LOG_V1: &str = "log";

/// A version-1 decision (see [`LogEvent`] for the meaning of each).
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogEventV1 {
    Started {
        run: String,
        coordinator: PublicKey,
        config: [u8; 32],
    },
    Joined {
        key: PublicKey,
        kind: ContributorKind,
    },
    Left {
        key: PublicKey,
        reason: String,
    },
    Leased {
        key: PublicKey,
        lease: u64,
        shards: Vec<ShardSpec>,
    },
    Accepted {
        key: PublicKey,
        unit: u64,
        seq: u64,
        result: [u8; 32],
        tokens: u64,
        flops: f64,
        pending: bool,
    },
    Rejected {
        key: PublicKey,
        unit: u64,
        seq: u64,
        reason: String,
    },
    Closed {
        round: u64,
        version: u64,
        weights: [u8; 32],
        aggregate: [u8; 32],
    },
    Checked {
        key: PublicKey,
        step: u64,
        auditors: Vec<PublicKey>,
        outcome: CheckOutcomeV1,
        flops: f64,
        credited: Vec<PublicKey>,
    },
    Discarded {
        step: u64,
        reason: String,
    },
    Admin {
        action: AdminActionV1,
        reason: String,
    },
    Forked {
        parent: PublicKey,
        head: LogHead,
        version: u64,
        weights: [u8; 32],
        round: u64,
    },
}

/// A version-1 check outcome.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckOutcomeV1 {
    Passed,
    Failed(String),
    AuditorFailed(String),
    Skipped(String),
    Disputed(String),
}

/// A version-1 administrator's act.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminActionV1 {
    Pause,
    Resume,
    Stop,
    Set { param: String, value: String },
    Ban { key: PublicKey },
    Unban { key: PublicKey },
    Create { run: String, config: [u8; 32] },
}

/// A version-1 entry.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntryV1 {
    pub index: u64,
    pub prev: [u8; 32],
    pub time_ms: u64,
    pub event: LogEventV1,
}

impl LogEntryV1 {
    /// SHA-256 over the version-1 domain tag and the entry's postcard encoding.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(LOG_V1.as_bytes());
        h.update([0u8]);
        h.update(postcard::to_stdvec(self).unwrap_or_default());
        h.finalize().into()
    }
}

/// A version-1 entry with its hash and signature (domain [`LOG_V1`]).
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedEntryV1 {
    pub entry: LogEntryV1,
    pub hash: [u8; 32],
    pub signature: Signature,
}

fn v1(text: String) -> Reason {
    Reason::new(Code::Version1, text)
}

impl SignedEntryV1 {
    /// The entry in today's types, keeping its version-1 hash and signature (which only
    /// [`SignedEntryV1`] can check): free-text reasons become [`Code::Version1`] reasons (cut
    /// to the bound of today's texts).
    pub fn upgrade(self) -> SignedEntry {
        let outcome = |o: CheckOutcomeV1| match o {
            CheckOutcomeV1::Passed => CheckOutcome::Passed,
            CheckOutcomeV1::Failed(t) => CheckOutcome::Failed(v1(t)),
            CheckOutcomeV1::AuditorFailed(t) => CheckOutcome::AuditorFailed(v1(t)),
            CheckOutcomeV1::Skipped(t) => CheckOutcome::Skipped(v1(t)),
            CheckOutcomeV1::Disputed(t) => CheckOutcome::Disputed(v1(t)),
        };
        let action = |a: AdminActionV1| match a {
            AdminActionV1::Pause => AdminAction::Pause,
            AdminActionV1::Resume => AdminAction::Resume,
            AdminActionV1::Stop => AdminAction::Stop,
            AdminActionV1::Set { param, value } => AdminAction::Set { param, value },
            AdminActionV1::Ban { key } => AdminAction::Ban { key },
            AdminActionV1::Unban { key } => AdminAction::Unban { key },
            AdminActionV1::Create { run, config } => AdminAction::Create { run, config },
        };
        let event = match self.entry.event {
            LogEventV1::Started {
                run,
                coordinator,
                config,
            } => LogEvent::Started {
                run,
                coordinator,
                config,
            },
            LogEventV1::Joined { key, kind } => LogEvent::Joined { key, kind },
            LogEventV1::Left { key, reason } => LogEvent::Left {
                key,
                reason: v1(reason),
            },
            LogEventV1::Leased { key, lease, shards } => LogEvent::Leased { key, lease, shards },
            LogEventV1::Accepted {
                key,
                unit,
                seq,
                result,
                tokens,
                flops,
                pending,
            } => LogEvent::Accepted {
                key,
                unit,
                seq,
                result,
                tokens,
                flops,
                pending,
            },
            LogEventV1::Rejected {
                key,
                unit,
                seq,
                reason,
            } => LogEvent::Rejected {
                key,
                unit,
                seq,
                reason: v1(reason),
            },
            LogEventV1::Closed {
                round,
                version,
                weights,
                aggregate,
            } => LogEvent::Closed {
                round,
                version,
                weights,
                aggregate,
            },
            LogEventV1::Checked {
                key,
                step,
                auditors,
                outcome: o,
                flops,
                credited,
            } => LogEvent::Checked {
                key,
                step,
                auditors,
                outcome: outcome(o),
                flops,
                credited,
            },
            LogEventV1::Discarded { step, reason } => LogEvent::Discarded {
                step,
                reason: v1(reason),
            },
            LogEventV1::Admin { action: a, reason } => LogEvent::Admin {
                action: action(a),
                reason,
            },
            LogEventV1::Forked {
                parent,
                head,
                version,
                weights,
                round,
            } => LogEvent::Forked {
                parent,
                head,
                version,
                weights,
                round,
            },
        };
        SignedEntry {
            entry: LogEntry {
                index: self.entry.index,
                prev: self.entry.prev,
                time_ms: self.entry.time_ms,
                event,
            },
            hash: self.hash,
            signature: self.signature,
        }
    }
}
