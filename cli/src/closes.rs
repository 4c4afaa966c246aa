//! The closes a run log records: for each weights version, the `Closed` entry that stands for
//! it. `tessera verify` checks checkpoints and replays aggregates against them; `tessera fork`
//! starts from one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

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
    /// A pipeline step's scalars as its `Stepped` entry (right before the close) records them,
    /// with that entry's index.
    pub scalars: Option<(u64, [u32; 5])>,
}

/// Where the checkpoint of `version` lies in `dir` (a run's `checkpoints/` folder): the
/// folder its version and weights digest name (`tessera_coordinator::store::checkpoint_name`)
/// when the log recorded the digest; else the one folder of that version (`round-N-HASH`, or
/// `round-N` as runs named them before their names carried the digest). When there is none,
/// the path it would have, so that a missing file's error names it.
pub fn checkpoint_dir(dir: &Path, version: u64, weights: Option<&[u8; 32]>) -> Result<PathBuf> {
    use tessera_coordinator::store::{checkpoint_name, parse_checkpoint_name};
    if let Some(w) = weights {
        let exact = dir.join(checkpoint_name(version, w));
        let legacy = dir.join(format!("round-{version}"));
        return Ok(if !exact.exists() && legacy.exists() {
            legacy
        } else {
            exact
        });
    }
    let mut found: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(parse_checkpoint_name)
                    .is_some_and(|(v, _)| v == version)
            })
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    };
    found.sort();
    match found.len() {
        0 => Ok(dir.join(format!("round-{version}"))),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "{} holds {} checkpoints of version {version} ({}) and the log does not say which: a coordinator that crashed before committing one collects the other when it starts",
            dir.display(),
            found.len(),
            found
                .iter()
                .filter_map(|p| p.file_name()?.to_str().map(String::from))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The close that stands for each version: the last `Closed` entry for it (a coordinator that
/// crashed after logging a close but before committing its checkpoint redoes that round).
pub fn closes(entries: &[SignedEntry]) -> BTreeMap<u64, Close> {
    let mut out = BTreeMap::new();
    let mut stepped = None;
    for e in entries {
        if let LogEvent::Stepped { step, scalars } = &e.entry.event {
            stepped = Some((*step, e.entry.index, *scalars));
            continue;
        }
        let before = stepped.take();
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
                scalars: before
                    .filter(|(step, ..)| step == round)
                    .map(|(_, index, bits)| (index, bits)),
            };
            out.insert(*version, close);
        }
    }
    out
}
