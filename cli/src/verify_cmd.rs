//! `tessera verify`: checks a run's log — every entry linked to the one before, hashed right and
//! signed by the coordinator — and, given the checkpoints, that each closed round's or step's
//! checkpoint holds exactly the weights the log recorded and that replaying the kept aggregates
//! from a checkpoint reaches them; recomputes every draw of who is checked from the log's draw
//! chain, and every identity's credits (holding a live coordinator's status to them). Names the
//! first bad entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tessera_compute::hf::params_from_safetensors;
use tessera_compute::ModelConfig;
use tessera_coordinator::core::weights_digest;
use tessera_coordinator::store::Store;
use tessera_protocol::identity::hex;
use tessera_protocol::log::{LogError, LogEvent, LogFault, SignedEntry, LOG_VERSION};

use crate::closes::closes;
use tessera_protocol::log_store::{verify_stored, StoredEntry};
use tessera_protocol::messages::LogHead;
use tessera_protocol::signed::signing_bytes;
use tessera_protocol::PublicKey;

/// Where a run's log and checkpoints are, and whose key holds the log (`verify`, `fork`).
#[derive(clap::Args, Debug)]
pub struct LogSource {
    /// The log: a coordinator (`http://host:port` or `https://...`, read page by page from
    /// `/api/log`), a run's data directory, or a file written with `tessera verify --save`.
    #[arg(long)]
    pub log: String,
    /// The checkpoints (`round-N-HASH/`, `rules.json`): each closed round's or step's
    /// checkpoint is checked against the weights the log recorded, and its aggregate
    /// (`round-N-HASH/aggregate`)
    /// replayed from the checkpoint before it by the run's rules to reach them (default:
    /// `checkpoints/` of a data directory given as `--log`).
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
    /// The coordinator's public key (hex) to hold the log to (default: the key its first entry
    /// names).
    #[arg(long)]
    pub coordinator_key: Option<String>,
}

impl LogSource {
    /// The checkpoints directory: the one given, else that of the data directory the log was
    /// read from.
    pub fn checkpoints(&self, data_dir: Option<PathBuf>) -> Option<PathBuf> {
        self.checkpoints
            .clone()
            .or_else(|| data_dir.map(|d| d.join("checkpoints")))
    }
}

/// Options of `verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The log, checkpoints and coordinator key.
    #[command(flatten)]
    pub source: LogSource,
    /// Also write the log to this file (JSON), to verify later or elsewhere.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Check the checkpoints' hashes only, without replaying the aggregates.
    #[arg(long)]
    pub no_replay: bool,
    /// Print every identity's recomputed credits (by default only the totals).
    #[arg(long)]
    pub credits: bool,
    /// A worker's receipts file (`tessera worker --receipts`): each receipt must be signed by
    /// the coordinator and name the log entry that records its verdict, unchanged (a
    /// rejection before the identity's first accepted work is not logged: its receipt names
    /// the log as it stood). A receipt the log contradicts proves the coordinator dropped or
    /// rewrote that submission's record.
    #[arg(long)]
    pub receipts: Option<PathBuf>,
}

/// Each receipt against the verified log; the number checked and how many of them are
/// rejections not logged (of an identity with no accepted work), or the first contradiction.
fn check_receipts(entries: &[SignedEntry], key: &PublicKey, path: &Path) -> Result<(usize, usize)> {
    use tessera_protocol::messages::Verdict;
    let receipts = crate::receipts::read(path)?;
    // Each identity's first accepted work in the log (its index), found in one pass.
    let mut first_accepted: BTreeMap<PublicKey, u64> = BTreeMap::new();
    for e in entries {
        if let LogEvent::Accepted { key, .. } = &e.entry.event {
            first_accepted.entry(*key).or_insert(e.entry.index);
        }
    }
    let mut unlogged_rejections = 0;
    for (line, r, sig) in &receipts {
        let what = format!(
            "receipt on line {line} (unit {}, submission {} by {})",
            r.unit,
            r.seq,
            r.contributor.fingerprint()
        );
        key.verify(tessera_protocol::signed::RECEIPT, &signing_bytes(r)?, sig)
            .with_context(|| format!("{what}: not signed by this coordinator"))?;
        let at = r.log_head.index;
        let Some(e) = entries.iter().find(|e| e.entry.index == at) else {
            bail!("{what}: the coordinator signed it at log entry {at}, which the log does not hold: the log was cut short after the fact");
        };
        if e.hash != r.log_head.hash {
            bail!("{what}: the coordinator signed it at log entry {at}, but that entry is now different: the log was rewritten after the fact");
        }
        let recorded = match (&e.entry.event, &r.verdict) {
            (LogEvent::Accepted { key, unit, seq, .. }, Verdict::Accepted)
            | (LogEvent::Rejected { key, unit, seq, .. }, Verdict::Rejected(_)) => {
                *key == r.contributor && *unit == r.unit && *seq == r.seq
            }
            _ => false,
        };
        // The coordinator does not log the rejections of an identity with no accepted work
        // (such an identity leaves nothing permanent): its receipt names the log as it stood.
        let unlogged = matches!(r.verdict, Verdict::Rejected(_))
            && first_accepted
                .get(&r.contributor)
                .is_none_or(|&first| first > at);
        if !recorded && !unlogged {
            bail!("{what}: log entry {at} does not record this verdict");
        }
        unlogged_rejections += usize::from(!recorded);
    }
    Ok((receipts.len(), unlogged_rejections))
}

/// The log as a file: the coordinator's key and every signed entry as stored (see
/// `StoredEntry::encode`; bare hex in a version-1 log).
#[derive(Debug, Serialize, Deserialize)]
pub struct LogFile {
    coordinator: String,
    entries: Vec<Line>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    index: u64,
    signed: String,
}

/// A coordinator's base URL from what a user may give: the base itself, or a URL of its log
/// or status (`http://host:port/api/log`, with or without a query or trailing slash).
pub fn base_url(given: &str) -> &str {
    let no_query = given.split(['?', '#']).next().unwrap_or(given);
    let trimmed = no_query.trim_end_matches('/');
    ["/api/log", "/api/status", "/api/credits"]
        .iter()
        .find_map(|tail| trimmed.strip_suffix(tail))
        .unwrap_or(trimmed)
}

fn fetch(given: &str) -> Result<LogFile> {
    let base = base_url(given);
    let mut out = LogFile {
        coordinator: String::new(),
        entries: Vec::new(),
    };
    let mut from = 0u64;
    loop {
        let url = format!(
            "{}/api/log?from={from}&limit=1000",
            base.trim_end_matches('/')
        );
        let page: serde_json::Value = crate::bounded_json::get_json(&url, "a page of the log")?;
        out.coordinator = page["coordinator"].as_str().unwrap_or_default().to_string();
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        for e in &entries {
            out.entries.push(Line {
                index: e["index"].as_u64().unwrap_or(u64::MAX),
                signed: e["signed"].as_str().unwrap_or_default().to_string(),
            });
        }
        match page["next"].as_u64() {
            Some(n) if !entries.is_empty() => from = n,
            _ => return Ok(out),
        }
    }
}

async fn from_store(dir: &Path) -> Result<LogFile> {
    let store = Store::open(dir, None).await?;
    let mut entries = Vec::new();
    let mut from = 0;
    loop {
        let page = store.read_log_stored(from, 1000).await?;
        if page.is_empty() {
            break;
        }
        from += page.len() as u64;
        entries.extend(
            page.into_iter()
                .map(|(index, signed)| Line { index, signed }),
        );
    }
    let coordinator = entries
        .first()
        .and_then(|l| StoredEntry::decode(&l.signed).ok())
        .and_then(|e| match e.upgrade().entry.event {
            LogEvent::Started { coordinator, .. } => Some(coordinator.to_string()),
            _ => None,
        })
        .unwrap_or_default();
    Ok(LogFile {
        coordinator,
        entries,
    })
}

fn decode(file: &LogFile) -> Result<Vec<StoredEntry>, LogError> {
    file.entries
        .iter()
        .map(|l| {
            StoredEntry::decode(&l.signed)
                .map_err(|why| LogError::new(l.index, LogFault::Undecodable, why))
        })
        .collect()
}

/// Each version's checkpoint against the close that stands for it, and a fork's first
/// checkpoint against its `Forked` entry.
pub fn check_checkpoints(entries: &[SignedEntry], dir: &Path) -> Result<usize> {
    let mut last: BTreeMap<u64, (u64, [u8; 32])> = closes(entries)
        .into_iter()
        .map(|(v, c)| (v, (c.head.index, c.weights)))
        .collect();
    for e in entries {
        if let LogEvent::Forked {
            version, weights, ..
        } = &e.entry.event
        {
            last.insert(*version, (e.entry.index, *weights));
        }
    }
    let mut checked = 0;
    for (version, &(index, weights)) in &last {
        let ck = crate::closes::checkpoint_dir(dir, *version, Some(&weights))?;
        let cfg_text = std::fs::read_to_string(ck.join("config.json")).with_context(|| {
            format!("log entry {}: reading {}/config.json", index, ck.display())
        })?;
        let cfg = ModelConfig::from_hf_json(&cfg_text)?;
        let bytes = std::fs::read(ck.join("model.safetensors")).with_context(|| {
            format!(
                "log entry {}: reading {}/model.safetensors",
                index,
                ck.display()
            )
        })?;
        let got = match params_from_safetensors(&cfg, &bytes) {
            Ok(p) => weights_digest(&p),
            Err(err) => bail!(
                "log entry {}: checkpoint {} does not load: {err}",
                index,
                ck.display()
            ),
        };
        if got != weights {
            bail!(
                "log entry {}: checkpoint {} does not hold the weights the log recorded for version {version}",
                index,
                ck.display()
            );
        }
        checked += 1;
    }
    Ok(checked)
}

/// Reads a log from a coordinator (`http(s)://`), a run's data directory (also returned) or a
/// saved file.
pub async fn read_log(log: &str) -> Result<(LogFile, Option<PathBuf>)> {
    if log.starts_with("http://") || log.starts_with("https://") {
        Ok((fetch(log)?, None))
    } else if Path::new(log).is_dir() {
        Ok((from_store(Path::new(log)).await?, Some(PathBuf::from(log))))
    } else {
        let text = std::fs::read_to_string(log).with_context(|| format!("reading {log}"))?;
        Ok((
            serde_json::from_str(&text).with_context(|| format!("{log} is not a saved log"))?,
            None,
        ))
    }
}

/// Decodes a log and checks its chain against the coordinator's key (`key_hex`, else the one
/// the file names) and that it starts with that coordinator's start: the key, the entries and
/// the head.
pub fn check_chain(
    file: &LogFile,
    key_hex: Option<&str>,
) -> Result<(PublicKey, Vec<SignedEntry>, Option<LogHead>)> {
    let key_hex = key_hex.unwrap_or(&file.coordinator);
    let key = PublicKey::from_hex(key_hex)
        .with_context(|| format!("{key_hex:?} is not a coordinator key"))?;
    let checked = verify_stored(decode(file)?, &key, None)?;
    let (entries, head) = (checked.entries, checked.head);
    println!(
        "log format version {}{}",
        checked.version,
        if checked.version < LOG_VERSION {
            format!(" (an earlier format; this build writes version {LOG_VERSION})")
        } else {
            String::new()
        }
    );
    if let Some(first) = entries.first() {
        match &first.entry.event {
            LogEvent::Started { coordinator, .. } if *coordinator == key => {}
            _ => bail!(
                "log entry 0: the log does not start with the run's start by this coordinator"
            ),
        }
    }
    Ok((key, entries, head))
}

/// Runs the check; an error names the first bad entry.
pub async fn run(a: Args) -> Result<()> {
    let src = &a.source;
    let live = src.log.starts_with("http://") || src.log.starts_with("https://");
    // What the coordinator claims is read before its log, so the log holds the claimed head.
    let claimed = if live {
        Some(crate::verify_credits::fetch_claimed(base_url(&src.log))?)
    } else {
        None
    };
    let (file, data_dir) = read_log(&src.log).await?;
    if let Some(path) = &a.save {
        std::fs::write(path, serde_json::to_string_pretty(&file)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let (key, entries, head) = check_chain(&file, src.coordinator_key.as_deref())?;
    if let Some(f) = entries.iter().take(2).find_map(|e| match &e.entry.event {
        LogEvent::Forked {
            parent,
            head,
            version,
            ..
        } => Some((parent, head, version)),
        _ => None,
    }) {
        println!(
            "a fork: from version {} of the run whose coordinator is {}, after its log entry {} ({})",
            f.2,
            f.0,
            f.1.index,
            hex(&f.1.hash)
        );
    }
    let checkpoints = src.checkpoints(data_dir);
    let checked = match &checkpoints {
        Some(dir) => check_checkpoints(&entries, dir)?,
        None => 0,
    };
    // The run's rules, where its checkpoints folder is at hand.
    let rules = match &checkpoints {
        Some(dir) if dir.join("rules.json").exists() => {
            Some(crate::verify_replay::rules(&entries, dir)?)
        }
        _ => None,
    };
    let rounds =
        crate::verify_rounds::check(&entries, rules.as_ref().and_then(|r| r.rounds_of.as_ref()))?;
    let picks =
        crate::verify_draws::picks_required(&entries, rules.as_ref().map(|r| r.records >= 1));
    if let Some(line) = crate::verify_rounds::describe(&rounds) {
        println!("{line}");
    }
    if let (Some(dir), false) = (&checkpoints, a.no_replay) {
        let rules = match rules {
            Some(r) => r,
            None => crate::verify_replay::rules(&entries, dir)?,
        };
        let r = crate::verify_replay::replay(&entries, dir, &rules)?;
        let starts: Vec<String> = r.starts.iter().map(|v| v.to_string()).collect();
        println!(
            "replayed {} closed versions from checkpoint {} by the run's rules: each reaches the weights the log recorded{}",
            r.versions,
            if starts.is_empty() { "-".into() } else { starts.join(", ") },
            if r.scalars > 0 {
                format!(", and each of {} steps used the scalars its Stepped entry records", r.scalars)
            } else {
                String::new()
            }
        );
    }
    let draws = crate::verify_draws::check(&entries, picks)?;
    println!("{}", crate::verify_draws::describe(&draws));
    let credits = crate::verify_credits::recompute(&entries, None);
    crate::verify_credits::print(&credits, a.credits);
    if let Some(c) = &claimed {
        let n = crate::verify_credits::check_claimed(&entries, c)?;
        println!(
            "the coordinator's status shows exactly the credits its log gives ({n} identities, at entry {})",
            c.log_head
        );
    }
    let closed = entries
        .iter()
        .filter(|e| matches!(e.entry.event, LogEvent::Closed { .. }))
        .count();
    if let Some(path) = &a.receipts {
        let (n, unlogged) = check_receipts(&entries, &key, path)?;
        println!("{n} receipts match the log");
        if unlogged > 0 {
            println!("{unlogged} of them are rejections before the identity's first accepted work, which the log does not hold");
        }
    }
    for e in &entries {
        if let LogEvent::Admin { action, reason } = &e.entry.event {
            println!(
                "entry {}: the administrator: {action}, because {reason:?}",
                e.entry.index
            );
        }
    }
    match head {
        Some(h) => println!(
            "log verified: {} entries signed by {}, {closed} closed rounds ({checked} checkpoints checked); head {} {}",
            entries.len(),
            key,
            h.index,
            hex(&h.hash)
        ),
        None => println!("log verified: empty"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{base_url, check_receipts};
    use tessera_protocol::log::{LogEvent, LogWriter};
    use tessera_protocol::messages::{Receipt, Verdict};
    use tessera_protocol::signed::{signing_bytes, RECEIPT};
    use tessera_protocol::{Code, Identity, Reason};

    /// A rejection receipt the log does not hold passes only while its identity had no
    /// accepted work in the log: afterwards the coordinator logs every verdict.
    #[test]
    fn a_rejection_is_missing_from_the_log_only_before_the_identitys_first_accepted_work() {
        let coordinator = Identity::from_seed([7; 32]);
        let (other, worker) = (
            Identity::from_seed([1; 32]).public(),
            Identity::from_seed([2; 32]).public(),
        );
        let accepted = |key, unit| LogEvent::Accepted {
            key,
            unit,
            seq: unit,
            result: [0; 32],
            tokens: 1,
            flops: 1.0,
            pending: false,
        };
        let mut log = LogWriter::after(None);
        let first = log.append(&coordinator, 0, accepted(other, 1));
        let second = log.append(&coordinator, 0, accepted(worker, 2));
        let entries = [first.clone(), second.clone()];
        let path = std::env::temp_dir().join(format!(
            "tessera-receipts-{}-{:?}.jsonl",
            std::process::id(),
            std::thread::current().id()
        ));
        let check = |unit: u64, head: tessera_protocol::messages::LogHead| {
            let receipt = Receipt {
                unit,
                contributor: worker,
                seq: unit,
                verdict: Verdict::Rejected(Reason::new(Code::NotOpen, "late")),
                log_head: head,
            };
            let signature = coordinator.sign(RECEIPT, &signing_bytes(&receipt).unwrap());
            let _ = std::fs::remove_file(&path);
            crate::receipts::append(&path, &[(receipt, signature)]).unwrap();
            check_receipts(&entries, &coordinator.public(), &path)
        };
        let head = |e: &tessera_protocol::log::SignedEntry| tessera_protocol::messages::LogHead {
            index: e.entry.index,
            hash: e.hash,
        };
        assert_eq!(check(5, head(&first)).unwrap(), (1, 1));
        let err = check(6, head(&second)).unwrap_err().to_string();
        assert!(err.contains("does not record this verdict"), "{err}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_coordinator_is_found_from_its_base_or_its_log_or_status_url() {
        for given in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/api/log",
            "http://h:1/api/log/",
            "http://h:1/api/log?from=5&limit=10",
            "http://h:1/api/status",
        ] {
            assert_eq!(base_url(given), "http://h:1", "{given}");
        }
        assert_eq!(base_url("https://h/run/api/log"), "https://h/run");
    }
}
