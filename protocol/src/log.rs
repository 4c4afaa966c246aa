//! The run log: every decision of the coordinator as a hash-chained, signed entry, so anyone
//! holding the log and the coordinator's public key can check that nothing was altered,
//! removed or reordered ([`verify_chain`]), and a contributor holding a receipt's log head can
//! prove what the coordinator recorded at that point.
//!
//! Entry `i` carries the hash of entry `i - 1` (zero for the first); its own hash is SHA-256
//! over a domain tag and its postcard encoding; the coordinator signs that hash.
//!
//! This is version [`LOG_VERSION`] of the format (reasons with codes, domain [`LOG`]). How
//! entries are stored and served, and how logs of earlier versions are read, is
//! [`crate::log_store`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{Identity, PublicKey, Signature};
use crate::reason::Reason;
use crate::terms::{ContributorKind, LogHead, ShardSpec};

/// Domain of log entry hashes and signatures (version 1 used `log`).
pub const LOG: &str = "log/2";

/// The log format this build writes.
pub const LOG_VERSION: u32 = 2;

/// The most bytes one signed entry takes in its postcard encoding. Every field an entry holds
/// is bounded (reasons by [`crate::reason::MAX_TEXT_BYTES`], an administrator's reason by the
/// coordinator's 1,000 bytes, keys and hashes by their size, a lease's micro-shards by the
/// model's), so the coordinator never writes a larger
/// one; a reader refuses a larger one before it decodes it, so that a hostile store or server
/// cannot make a verifier allocate without bound.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// A decision of the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogEvent {
    /// The run began: its name, the coordinator's key and a hash of the run's configuration.
    Started {
        /// Run name.
        run: String,
        /// The coordinator's key, which signs every entry.
        coordinator: PublicKey,
        /// SHA-256 of the run's configuration.
        config: [u8; 32],
    },
    /// A contributor joined.
    Joined {
        /// Who.
        key: PublicKey,
        /// Native or browser.
        kind: ContributorKind,
    },
    /// A contributor left or was dropped, and why.
    Left {
        /// Who.
        key: PublicKey,
        /// Why.
        reason: Reason,
    },
    /// A lease was given.
    Leased {
        /// To whom.
        key: PublicKey,
        /// Lease id.
        lease: u64,
        /// Its micro-shards.
        shards: Vec<ShardSpec>,
    },
    /// A result was accepted.
    Accepted {
        /// From whom.
        key: PublicKey,
        /// The unit.
        unit: u64,
        /// The submission's sequence number.
        seq: u64,
        /// SHA-256 of the result as received.
        result: [u8; 32],
        /// Tokens the unit covered.
        tokens: u64,
        /// Floating-point operations the unit is credited with (estimated from the model
        /// shape; zero for an audit answer, whose credit comes with its check).
        flops: f64,
        /// Whether the credit waits for a passed check of this identity (runs that check
        /// work) rather than counting at once.
        pending: bool,
    },
    /// A result was rejected, and why.
    Rejected {
        /// From whom.
        key: PublicKey,
        /// The unit.
        unit: u64,
        /// The submission's sequence number.
        seq: u64,
        /// Why.
        reason: Reason,
    },
    /// A round or step closed: the weights it produced.
    Closed {
        /// Round or step.
        round: u64,
        /// Weight version produced.
        version: u64,
        /// SHA-256 of the checkpoint's weights.
        weights: [u8; 32],
        /// SHA-256 of the aggregate that produced them from the previous version's weights
        /// (whole-model rounds: the clipped mean of the replicas' updates; pipeline steps: the
        /// summed gradients), kept beside the checkpoint so anyone can replay the step.
        aggregate: [u8; 32],
    },
    /// A contributor's work was checked: a lease's step run again on other leases, or the checks
    /// of a whole-model update (then `step` is the round and there are no auditors).
    Checked {
        /// Whose work.
        key: PublicKey,
        /// The step.
        step: u64,
        /// Who ran the check (the first, then the third party on a mismatch).
        auditors: Vec<PublicKey>,
        /// What came of it.
        outcome: CheckOutcome,
        /// Floating-point operations of the recomputation, credited to each of `credited`.
        flops: f64,
        /// The auditors whose results agreed with the verdict, credited for the check.
        credited: Vec<PublicKey>,
    },
    /// A step's results were thrown away (every result descending from a rejected one) and
    /// the step runs again from the same weights.
    Discarded {
        /// The step.
        step: u64,
        /// Why.
        reason: Reason,
    },
    /// An administrator acted, and why. The act takes effect only once this entry is written.
    Admin {
        /// What was done.
        action: AdminAction,
        /// The reason given.
        reason: String,
    },
    /// The run is a fork: it starts from a checkpoint of another run, whose log its founder
    /// verified up to `head` (the entry that closed `version`, or the parent's first entry for
    /// its initial weights). Follows `Started`.
    Forked {
        /// The parent run's coordinator key.
        parent: PublicKey,
        /// The parent log's entry the fork starts after.
        head: LogHead,
        /// The parent's weight version the fork starts from.
        version: u64,
        /// SHA-256 of those weights.
        weights: [u8; 32],
        /// The round or step the fork trains next.
        round: u64,
    },
    /// A segment of the run's draw chain, committed before any of its values is revealed:
    /// `tip` is the SHA-256 of the segment's first value, each value the SHA-256 of the next
    /// (see [`DRAW_SEGMENT`]). The first commitment also fixes the check rates the draws use.
    DrawChain {
        /// Segment: it holds values `segment * DRAW_SEGMENT + 1 ..= (segment + 1) * DRAW_SEGMENT`.
        segment: u64,
        /// SHA-256 of the segment's first value.
        tip: [u8; 32],
        /// The check rates of every draw (the run's first commitment only).
        rates: Option<DrawRates>,
    },
    /// The chain's next value, revealed once the work it decides about was accepted: of the
    /// identities whose work (an `Accepted` entry with tokens) was accepted since the previous
    /// reveal, in the order of their first such entry, `drawn` marks those whose work is
    /// checked. Each identity's draw is the first 8 bytes of
    /// SHA-256(`value` ‖ those entries' root ‖ its key) against its rate.
    Revealed {
        /// Position in the chain, from 1.
        index: u64,
        /// The value: its SHA-256 is the value before it (or its segment's tip).
        value: [u8; 32],
        /// One bit per identity (bit `i % 8` of byte `i / 8`), set when drawn.
        drawn: Vec<u8>,
    },
    /// A whole-model round's outer step is about to close it (the `Closed` entry follows): the
    /// updates it averages, whose they are and how each was weighed. The round's count follows
    /// its contributors between the run's least and most replicas; the aggregate is
    /// `sum(scale_i * update_i) / updates.len()`.
    Aggregated {
        /// The round.
        round: u64,
        /// Each averaged update, in slot order.
        updates: Vec<Weighed>,
    },
    /// Who runs a check, drawn once the checked work is in: the free contributors that may run
    /// it (not `subject`, not refused) ranked by the first 8 bytes of SHA-256(the latest
    /// reveal's seed ‖ SHA-256 of the postcard encoding of (`check`, `nth`) ‖ key), lowest
    /// first (ties by key). The first is picked; the list holds at most [`MAX_PICK_LIST`] of
    /// them, the lowest numbers, so that anyone passed over can see it and `tessera verify`
    /// recomputes the order.
    Picked {
        /// The check the pick is for.
        check: CheckOf,
        /// Picks made for that check before this one.
        nth: u32,
        /// Whose work is checked.
        subject: PublicKey,
        /// The candidates, ranked: the first is picked.
        candidates: Vec<PublicKey>,
    },
    /// A pipeline step's optimizer scalars, as the coordinator computed them once for every
    /// holder (the `Closed` entry follows): the bits of the learning rate, the decay factor
    /// `1 - lr * weight_decay`, AdamW's bias corrections `1 - beta1^t` and `1 - beta2^t`, and
    /// the global-norm clip coefficient, in that order (f32). A holder's step uses only these
    /// and `+ - * / sqrt` (the `tessera-step` crate), so every holder reaches the same state.
    Stepped {
        /// The step.
        step: u64,
        /// The scalars' f32 bits.
        scalars: [u32; 5],
    },
}

/// The most candidates a [`LogEvent::Picked`] entry lists.
pub const MAX_PICK_LIST: usize = 16;

/// What a pick of a checker is for (see [`LogEvent::Picked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CheckOf {
    /// A replay of a whole-model unit of a round.
    Replay {
        /// The round.
        round: u64,
        /// The unit replayed (its `Accepted` entry names whose it is).
        unit: u64,
    },
    /// An audit of a lease's step.
    Audit {
        /// The step.
        step: u64,
        /// The lease audited (its `Leased` entry names whose it is).
        lease: u64,
    },
}

impl CheckOf {
    /// The round or step the check belongs to (a `Checked` entry's `step`).
    pub fn round(&self) -> u64 {
        match self {
            CheckOf::Replay { round, .. } => *round,
            CheckOf::Audit { step, .. } => *step,
        }
    }
}

/// One update of a round's outer step (see [`LogEvent::Aggregated`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Weighed {
    /// Whose update.
    pub key: PublicKey,
    /// The unit that produced it (its `Accepted` entry names it).
    pub unit: u64,
    /// Its replica slot in the round.
    pub slot: u64,
    /// The factor its median-norm clip scaled it by (1: not clipped).
    pub scale: f64,
}

/// Values in one segment of the run's draw chain.
pub const DRAW_SEGMENT: u64 = 1024;

/// The check rates a run's draws use, as shares of 2^64 (see the coordinator's `Share`): a new
/// identity's work is drawn below `new`, halved for every `halving` clean steps or rounds of
/// its record, never below `min`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrawRates {
    /// A new identity's share (`u64::MAX`: every draw).
    pub new: u64,
    /// The least share.
    pub min: u64,
    /// Clean steps that halve the share (at least 1).
    pub halving: u64,
}

impl LogEvent {
    /// The identity a failed check found wrong, and why (`None` for any other event).
    pub fn failed_check(&self) -> Option<(PublicKey, &Reason)> {
        match self {
            LogEvent::Checked {
                key,
                outcome: CheckOutcome::Failed(why),
                ..
            } => Some((*key, why)),
            _ => None,
        }
    }
}

/// What a check of a lease's step found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckOutcome {
    /// The results agree within the tolerance.
    Passed,
    /// The checked lease's results are wrong (the auditors agree with each other, not with it).
    Failed(Reason),
    /// The first auditor's results were wrong (the third party agrees with the checked lease).
    AuditorFailed(Reason),
    /// No lease could run the check.
    Skipped(Reason),
    /// The two disagree and no third party was there.
    Disputed(Reason),
}

/// What a run's administrator can do; each takes effect through its log entry. With the
/// `clap` feature these are also `tessera admin`'s subcommands (all but `Create`, which an
/// idle coordinator records itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Subcommand))]
#[serde(rename_all = "snake_case")]
pub enum AdminAction {
    /// Hand out no new work (work in flight may still be submitted).
    Pause,
    /// Hand out work again.
    Resume,
    /// End the run at its last closed round or step.
    Stop,
    /// Change a run parameter: `rounds`, `unit_deadline_secs` or `silence_secs`.
    Set {
        /// The parameter.
        param: String,
        /// Its new value, as text.
        value: String,
    },
    /// Refuse an identity (its hex public key, as `/api/status` lists it): its sessions
    /// close, its work in flight goes to others.
    Ban {
        /// The identity (its public key, 64 hex characters).
        key: PublicKey,
    },
    /// Lift a ban.
    Unban {
        /// The identity (its public key, 64 hex characters).
        key: PublicKey,
    },
    /// Create the run on an idle coordinator (the entry follows the run's `Started`).
    #[cfg_attr(feature = "clap", command(skip))]
    Create {
        /// The run's name.
        run: String,
        /// The digest of its rules (the `config` of `Started`).
        config: [u8; 32],
    },
}

impl std::fmt::Display for AdminAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAction::Pause => write!(f, "pause"),
            AdminAction::Resume => write!(f, "resume"),
            AdminAction::Stop => write!(f, "stop"),
            AdminAction::Set { param, value } => write!(f, "set {param} = {value}"),
            AdminAction::Ban { key } => write!(f, "ban {key}"),
            AdminAction::Unban { key } => write!(f, "unban {key}"),
            AdminAction::Create { run, .. } => write!(f, "create run {run}"),
        }
    }
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Position, from 0.
    pub index: u64,
    /// Hash of the previous entry (zero for the first).
    pub prev: [u8; 32],
    /// Milliseconds since the run's coordinator started (its monotonic clock).
    pub time_ms: u64,
    /// The decision.
    pub event: LogEvent,
}

impl LogEntry {
    /// SHA-256 over the domain tag and the postcard encoding of the entry.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(LOG.as_bytes());
        h.update([0u8]);
        // Encoding an owned, plain value cannot fail.
        h.update(postcard::to_stdvec(self).unwrap_or_default());
        h.finalize().into()
    }
}

/// An entry with its hash and the coordinator's signature over the hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedEntry {
    /// The entry.
    pub entry: LogEntry,
    /// Its hash.
    pub hash: [u8; 32],
    /// The coordinator's signature over `hash` (domain [`LOG`]).
    pub signature: Signature,
}

impl SignedEntry {
    /// Hashes and signs `entry`.
    pub fn seal(entry: LogEntry, id: &Identity) -> Self {
        let hash = entry.hash();
        SignedEntry {
            signature: id.sign(LOG, &hash),
            entry,
            hash,
        }
    }

    /// The head this entry makes.
    pub fn head(&self) -> LogHead {
        LogHead {
            index: self.entry.index,
            hash: self.hash,
        }
    }

    /// The length of its postcard encoding, in bytes (at most [`MAX_ENTRY_BYTES`] for any
    /// entry a coordinator writes).
    pub fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(usize::MAX)
    }
}

/// Why a log does not verify: the first bad entry, the kind of fault and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("log entry {index}: {why}")]
pub struct LogError {
    /// Index of the first bad entry (its position in the log).
    pub index: u64,
    /// The kind of fault.
    pub fault: LogFault,
    /// What is wrong.
    pub why: String,
}

/// The kinds of fault a log can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFault {
    /// An entry missing or out of order.
    Missing,
    /// An entry that does not link to the one before it.
    Unlinked,
    /// Contents that do not match their hash.
    Altered,
    /// A signature that does not verify under the coordinator's key.
    Signature,
    /// An entry of another format than the log's first.
    MixedVersions,
    /// Text that is not an entry at all.
    Undecodable,
}

impl LogError {
    /// A fault of `kind` at entry `index`.
    pub fn new(index: u64, fault: LogFault, why: impl Into<String>) -> Self {
        LogError {
            index,
            fault,
            why: why.into(),
        }
    }
}

/// Appends entries: the coordinator's side.
#[derive(Clone, Debug, Default)]
pub struct LogWriter {
    head: Option<LogHead>,
}

impl LogWriter {
    /// A writer continuing after `head` (`None` for an empty log).
    pub fn after(head: Option<LogHead>) -> Self {
        LogWriter { head }
    }

    /// The latest head (index and hash), or the zero head for an empty log.
    pub fn head(&self) -> LogHead {
        self.head.unwrap_or_default()
    }

    /// Seals the next entry.
    pub fn append(&mut self, id: &Identity, time_ms: u64, event: LogEvent) -> SignedEntry {
        let (index, prev) = match self.head {
            Some(h) => (h.index + 1, h.hash),
            None => (0, [0; 32]),
        };
        let e = SignedEntry::seal(
            LogEntry {
                index,
                prev,
                time_ms,
                event,
            },
            id,
        );
        self.head = Some(e.head());
        e
    }
}

/// Checks that `entries` continue the log after `after` (`None`: they start it), each linked
/// to the one before, hashed right and signed by `coordinator`. Returns the last head.
pub fn verify_chain(
    entries: &[SignedEntry],
    coordinator: &PublicKey,
    after: Option<LogHead>,
) -> Result<Option<LogHead>, LogError> {
    let mut head = after;
    for (pos, e) in entries.iter().enumerate() {
        let sealed = Sealed {
            index: e.entry.index,
            prev: e.entry.prev,
            recomputed: e.entry.hash(),
            hash: e.hash,
            signature: &e.signature,
            domain: LOG,
        };
        head = Some(check_entry(pos, sealed, coordinator, head)?);
    }
    Ok(head)
}

/// What checking one stored entry needs, whatever its format version.
pub(crate) struct Sealed<'a> {
    /// Its index.
    pub(crate) index: u64,
    /// The hash it links to.
    pub(crate) prev: [u8; 32],
    /// Its hash, recomputed from its contents.
    pub(crate) recomputed: [u8; 32],
    /// Its hash as stored.
    pub(crate) hash: [u8; 32],
    /// The coordinator's signature over `hash`.
    pub(crate) signature: &'a Signature,
    /// The signature's domain.
    pub(crate) domain: &'static str,
}

/// That the entry at position `pos` follows `head`, is hashed right and signed by
/// `coordinator`; its head.
pub(crate) fn check_entry(
    pos: usize,
    e: Sealed<'_>,
    coordinator: &PublicKey,
    head: Option<LogHead>,
) -> Result<LogHead, LogError> {
    check_link(pos, e.index, e.prev, head)?;
    if e.recomputed != e.hash {
        return Err(LogError::new(
            e.index,
            LogFault::Altered,
            "its contents do not match its hash (altered)",
        ));
    }
    coordinator
        .verify(e.domain, &e.hash, e.signature)
        .map_err(|err| LogError::new(e.index, LogFault::Signature, format!("signature: {err}")))?;
    Ok(LogHead {
        index: e.index,
        hash: e.hash,
    })
}

/// That the entry at position `pos` (index `index`, linking to `prev`) follows `head`.
fn check_link(
    pos: usize,
    index: u64,
    prev: [u8; 32],
    head: Option<LogHead>,
) -> Result<(), LogError> {
    let (want_index, want_prev) = match head {
        Some(h) => (h.index + 1, h.hash),
        None => (0, [0; 32]),
    };
    if index != want_index {
        return Err(LogError::new(
            want_index,
            LogFault::Missing,
            format!(
                "position {pos} holds entry {index}, expected {want_index} (an entry is missing or out of order)"
            ),
        ));
    }
    if prev != want_prev {
        return Err(LogError::new(
            index,
            LogFault::Unlinked,
            "does not link to the entry before it",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: usize) -> (Identity, Vec<SignedEntry>) {
        let id = Identity::from_seed([3; 32]);
        let someone = Identity::from_seed([4; 32]).public();
        let mut w = LogWriter::default();
        let mut out = vec![w.append(
            &id,
            0,
            LogEvent::Started {
                run: "t".into(),
                coordinator: id.public(),
                config: [1; 32],
            },
        )];
        for i in 1..n as u64 {
            out.push(w.append(
                &id,
                i,
                LogEvent::Accepted {
                    key: someone,
                    unit: i,
                    seq: i,
                    result: [i as u8; 32],
                    tokens: 8,
                    flops: 1e6,
                    pending: false,
                },
            ));
        }
        (id, out)
    }

    #[test]
    fn the_largest_bounded_entries_fit_the_cap() {
        use crate::reason::{Code, MAX_TEXT_BYTES};
        let id = Identity::from_seed([3; 32]);
        let key = Identity::from_seed([4; 32]).public();
        let huge = "é".repeat(100_000);
        let events = [
            LogEvent::Left {
                key,
                reason: Reason::new(Code::Left, huge.clone()),
            },
            LogEvent::Checked {
                key,
                step: u64::MAX,
                auditors: vec![key; 3],
                outcome: CheckOutcome::Failed(Reason::new(Code::CheckFailed, huge.clone())),
                flops: f64::MAX,
                credited: vec![key; 3],
            },
            LogEvent::Admin {
                action: AdminAction::Set {
                    param: "silence_secs".into(),
                    value: "9".repeat(1000),
                },
                reason: "r".repeat(1000),
            },
            LogEvent::Leased {
                key,
                lease: u64::MAX,
                shards: (0..1000)
                    .map(|_| ShardSpec::Attn {
                        layer: u64::MAX,
                        groups: [u64::MAX, u64::MAX],
                    })
                    .collect(),
            },
        ];
        let mut w = LogWriter::default();
        for (i, event) in events.into_iter().enumerate() {
            let e = w.append(&id, u64::MAX, event);
            let len = postcard::to_stdvec(&e).unwrap().len();
            assert_eq!(e.encoded_len(), len);
            assert!(len <= MAX_ENTRY_BYTES, "entry {i} takes {len} bytes");
            if i == 0 {
                // The reason was cut when it was made: the entry holds no more than its cap.
                assert!(
                    len < 2 * MAX_TEXT_BYTES,
                    "a cut reason's entry takes {len} bytes"
                );
            }
        }
    }

    #[test]
    fn an_honest_log_verifies_in_one_go_and_in_pages() {
        let (id, entries) = log(6);
        let head = verify_chain(&entries, &id.public(), None).unwrap();
        assert_eq!(head, Some(entries[5].head()));
        let first = verify_chain(&entries[..3], &id.public(), None).unwrap();
        assert_eq!(
            verify_chain(&entries[3..], &id.public(), first).unwrap(),
            head
        );
    }

    #[test]
    fn any_alteration_names_the_first_bad_entry() {
        let (id, entries) = log(6);
        let key = id.public();
        // Altered contents.
        let mut e = entries.clone();
        if let LogEvent::Accepted { unit, .. } = &mut e[3].entry.event {
            *unit = 99;
        }
        let fault = |e: &[SignedEntry]| {
            let err = verify_chain(e, &key, None).unwrap_err();
            (err.index, err.fault)
        };
        assert_eq!(fault(&e), (3, LogFault::Altered));
        // Contents and hash both rewritten: the signature no longer matches.
        let mut e = entries.clone();
        e[2].entry.time_ms = 77;
        e[2].hash = e[2].entry.hash();
        assert_eq!(fault(&e), (2, LogFault::Signature));
        // Re-signed by another key.
        let mut e = entries.clone();
        e[4] = SignedEntry::seal(e[4].entry.clone(), &Identity::from_seed([9; 32]));
        assert_eq!(fault(&e), (4, LogFault::Signature));
        // A removed entry.
        let mut e = entries.clone();
        e.remove(2);
        assert_eq!(fault(&e), (2, LogFault::Missing));
        // A forked history: a different entry 3 sealed properly, then the old 4.
        let mut e = entries.clone();
        let mut w = LogWriter::after(Some(e[2].head()));
        e[3] = w.append(
            &id,
            3,
            LogEvent::Admin {
                action: AdminAction::Pause,
                reason: "test".into(),
            },
        );
        assert_eq!(fault(&e), (4, LogFault::Unlinked));
        // A flipped signature byte.
        let mut e = entries;
        let mut bytes = postcard::to_stdvec(&e[1].signature).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        e[1].signature = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(fault(&e), (1, LogFault::Signature));
    }
}
