//! Run-log entries as stored and served, of either format version: text that says its version
//! ([`StoredEntry::encode`]: today's as `v2:` and the hex of the signed entry, version 1's as
//! bare hex), and [`verify_stored`], which checks a log of either version by that version's
//! hashes and gives it in today's types (version 1's from [`crate::log_v1`]).

use crate::identity::PublicKey;
use crate::log::{
    check_entry, LogError, LogFault, Sealed, SignedEntry, LOG, LOG_VERSION, MAX_ENTRY_BYTES,
};
use crate::log_v1::SignedEntryV1;
use crate::terms::LogHead;

/// A log entry as stored and served: of today's format, or of version 1.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredEntry {
    /// Version 1 (free-text reasons, domain `log`).
    V1(SignedEntryV1),
    /// Today's format.
    Current(SignedEntry),
}

/// The prefix of a stored entry of today's format (version 1's are bare hex).
const STORED_PREFIX: &str = "v2:";

impl StoredEntry {
    /// The most characters a stored entry takes: its prefix and the hex of an entry of at most
    /// [`MAX_ENTRY_BYTES`] bytes. [`StoredEntry::decode`] refuses longer text unread.
    pub const MAX_TEXT_CHARS: usize = STORED_PREFIX.len() + 2 * MAX_ENTRY_BYTES;

    /// Today's entry as text: `v2:` and the hex of its postcard encoding.
    pub fn encode(e: &SignedEntry) -> String {
        let bytes = postcard::to_stdvec(e).unwrap_or_default();
        format!("{STORED_PREFIX}{}", crate::identity::hex(&bytes))
    }

    /// A stored entry of either version.
    pub fn decode(text: &str) -> Result<StoredEntry, String> {
        let text = text.trim();
        if text.len() > Self::MAX_TEXT_CHARS {
            return Err(format!(
                "an entry of {} characters (a log entry is at most {MAX_ENTRY_BYTES} bytes, {} characters stored)",
                text.len(),
                Self::MAX_TEXT_CHARS
            ));
        }
        let (v2, digits) = match text.strip_prefix(STORED_PREFIX) {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let bytes = crate::identity::unhex(digits)?;
        let version = if v2 { LOG_VERSION } else { 1 };
        let fail =
            |e: postcard::Error| format!("does not decode as a version-{version} entry: {e}");
        let (entry, rest) = if v2 {
            postcard::take_from_bytes(&bytes)
                .map(|(e, rest)| (StoredEntry::Current(e), rest))
                .map_err(fail)?
        } else {
            postcard::take_from_bytes(&bytes)
                .map(|(e, rest)| (StoredEntry::V1(e), rest))
                .map_err(fail)?
        };
        if !rest.is_empty() {
            return Err(format!(
                "{} bytes follow the version-{version} entry",
                rest.len()
            ));
        }
        Ok(entry)
    }

    /// Its format version.
    pub fn version(&self) -> u32 {
        match self {
            StoredEntry::V1(_) => 1,
            StoredEntry::Current(_) => LOG_VERSION,
        }
    }

    /// What checking it needs: index, links, hashes, signature and its version's domain.
    fn sealed(&self) -> Sealed<'_> {
        match self {
            StoredEntry::V1(e) => Sealed {
                index: e.entry.index,
                prev: e.entry.prev,
                recomputed: e.entry.hash(),
                hash: e.hash,
                signature: &e.signature,
                domain: crate::log_v1::LOG_V1,
            },
            StoredEntry::Current(e) => Sealed {
                index: e.entry.index,
                prev: e.entry.prev,
                recomputed: e.entry.hash(),
                hash: e.hash,
                signature: &e.signature,
                domain: LOG,
            },
        }
    }

    /// In today's types (a version-1 entry keeps its version-1 hash and signature).
    pub fn upgrade(self) -> SignedEntry {
        match self {
            StoredEntry::V1(e) => e.upgrade(),
            StoredEntry::Current(e) => e,
        }
    }
}

/// A checked log: its format version and its entries in today's types.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedLog {
    /// The format all its entries are written in.
    pub version: u32,
    /// The entries.
    pub entries: Vec<SignedEntry>,
    /// The last head (as `after` when there are no entries).
    pub head: Option<LogHead>,
}

/// [`verify_chain`] for a stored log of either version: every entry must be of the version
/// of the first (one log, one format), hashed and signed as that version does it.
pub fn verify_stored(
    entries: Vec<StoredEntry>,
    coordinator: &PublicKey,
    after: Option<LogHead>,
) -> Result<CheckedLog, LogError> {
    let version = entries.first().map_or(LOG_VERSION, StoredEntry::version);
    let mut head = after;
    for (pos, e) in entries.iter().enumerate() {
        if e.version() != version {
            // Named by where it sits: its own index may be anything.
            let at = head.map_or(0, |h| h.index + 1);
            return Err(LogError::new(
                at,
                LogFault::MixedVersions,
                format!("a version-{} entry in a version-{version} log", e.version()),
            ));
        }
        head = Some(check_entry(pos, e.sealed(), coordinator, head)?);
    }
    Ok(CheckedLog {
        version,
        entries: entries.into_iter().map(StoredEntry::upgrade).collect(),
        head,
    })
}
