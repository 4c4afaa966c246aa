//! Saved run logs for the tests of `tessera verify`: save one (`verify_saving`), read it, and
//! write one re-signed with the coordinator's own key, as a coordinator that rewrites its log
//! could (whole, or with one entry edited); and the cases of forged picks of who checks
//! (`pick_cases`).

use std::path::Path;

use tessera_protocol::identity::parse_hex32;
use tessera_protocol::log::{LogEvent, LogWriter, SignedEntry};
use tessera_protocol::log_store::StoredEntry;
use tessera_protocol::{Identity, PublicKey};

/// A log saved by `tessera verify --save`: the file and its decoded entries.
pub fn saved_log(path: &Path) -> (serde_json::Value, Vec<SignedEntry>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let entries = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            StoredEntry::decode(e["signed"].as_str().unwrap())
                .unwrap()
                .upgrade()
        })
        .collect();
    (v, entries)
}

/// What a coordinator holding its key can do: sign `events` (with their times) as a new
/// chain and save it as a log file at `path`, naming the coordinator of `saved`.
pub fn write_resigned(
    dir: &Path,
    saved: &serde_json::Value,
    path: &Path,
    events: impl Iterator<Item = (u64, LogEvent)>,
) {
    let key = std::fs::read_to_string(dir.join("coordinator.key")).unwrap();
    let id = Identity::from_seed(parse_hex32(&key).unwrap());
    let mut w = LogWriter::default();
    let entries: Vec<serde_json::Value> = events
        .map(|(time, event)| {
            let s = w.append(&id, time, event);
            serde_json::json!({"index": s.entry.index, "signed": StoredEntry::encode(&s)})
        })
        .collect();
    std::fs::write(
        path,
        serde_json::json!({"coordinator": saved["coordinator"], "entries": entries}).to_string(),
    )
    .unwrap();
}

/// Runs `tessera verify --log DIR ARGS --save SAVED`, which must pass; what it printed.
pub fn verify_saving(dir: &Path, saved: &Path, args: &[&str]) -> String {
    let mut all: Vec<&std::ffi::OsStr> = vec!["verify".as_ref(), "--log".as_ref(), dir.as_ref()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    all.extend(["--save".as_ref(), saved.as_os_str()]);
    let (ok, text) = super::tessera(&all);
    assert!(ok, "the run's log verifies: {text}");
    text
}

/// [`write_resigned`] of the saved log `entries` with entry `at`'s event changed by `edit`.
pub fn write_edited(
    dir: &Path,
    saved: &serde_json::Value,
    path: &Path,
    entries: &[SignedEntry],
    at: usize,
    edit: &dyn Fn(&mut LogEvent),
) {
    let events = entries.iter().enumerate().map(|(i, e)| {
        let mut event = e.entry.event.clone();
        if i == at {
            edit(&mut event);
        }
        (e.entry.time_ms, event)
    });
    write_resigned(dir, saved, path, events);
}

/// Verify's checks of who replays or audits: the run's log (in `dir`) holds `Picked` entries
/// and a check whose auditors were picked, and a coordinator that re-signs its log around a pick out of turn, a pick listing
/// the identity it checks, a ranking the latest reveal does not give, or a check by an auditor
/// it never picked is named at the first bad entry.
pub fn pick_cases(dir: &Path) {
    let saved = dir.with_extension("log.json");
    let text = verify_saving(dir, &saved, &["--no-replay"]);
    let (v, entries) = saved_log(&saved);
    let picks: Vec<usize> = (0..entries.len())
        .filter(|&i| matches!(entries[i].entry.event, LogEvent::Picked { .. }))
        .collect();
    assert!(!picks.is_empty(), "the run's checks are picked: {text}");
    let audited = (0..entries.len()).find(|&i| {
        matches!(&entries[i].entry.event, LogEvent::Checked { auditors, .. } if !auditors.is_empty())
    });
    let audited = audited.expect("a check with auditors");
    println!(
        "{} picks, the first check with auditors at entry {audited}",
        picks.len()
    );
    let workers: Vec<PublicKey> = entries
        .iter()
        .filter_map(|e| match &e.entry.event {
            LogEvent::Leased { key, .. } | LogEvent::Accepted { key, .. } => Some(*key),
            _ => None,
        })
        .collect();
    let forged = dir.with_extension("forged-picks.json");
    let refused_at = |at: usize, edit: &dyn Fn(&mut LogEvent)| -> Option<String> {
        write_edited(dir, &v, &forged, &entries, at, edit);
        let (ok, text) = super::tessera(&["verify".as_ref(), "--log".as_ref(), forged.as_os_str()]);
        (!ok).then_some(text)
    };
    let case = |what: &str, at: usize, edit: &dyn Fn(&mut LogEvent), named: usize| {
        let text = refused_at(at, edit).unwrap_or_else(|| panic!("{what} is caught"));
        println!("{what}: {}", text.trim());
        assert!(
            text.contains(&format!("log entry {named}:")),
            "{what}: {text}"
        );
    };
    let first = picks[0];
    case(
        "a pick out of turn",
        first,
        &|e| {
            if let LogEvent::Picked { nth, .. } = e {
                *nth += 1;
            }
        },
        first,
    );
    case(
        "a pick listing whose work it checks",
        first,
        &|e| {
            if let LogEvent::Picked {
                subject,
                candidates,
                ..
            } = e
            {
                candidates.truncate(1);
                candidates.push(*subject);
            }
        },
        first,
    );
    let LogEvent::Checked {
        key: whose, step, ..
    } = &entries[audited].entry.event
    else {
        unreachable!()
    };
    let picked_for_it: Vec<PublicKey> = entries[..audited]
        .iter()
        .filter_map(|e| match &e.entry.event {
            LogEvent::Picked {
                check,
                subject,
                candidates,
                ..
            } if subject == whose && check.round() == *step => Some(candidates[0]),
            _ => None,
        })
        .collect();
    let stranger = *workers
        .iter()
        .find(|k| *k != whose && !picked_for_it.contains(k))
        .expect("an identity not picked for that check");
    case(
        "a check by an auditor never picked",
        audited,
        &|e| {
            if let LogEvent::Checked { auditors, .. } = e {
                auditors[0] = stranger;
            }
        },
        audited,
    );
    // A ranking of the coordinator's choice: the first two candidates of a pick swapped.
    let listed = picks
        .iter()
        .copied()
        .find(|&i| matches!(&entries[i].entry.event, LogEvent::Picked { candidates, .. } if candidates.len() >= 2))
        .expect("a pick among two candidates or more");
    let text = refused_at(listed, &|e| {
        if let LogEvent::Picked { candidates, .. } = e {
            candidates.swap(0, 1);
        }
    })
    .expect("a swapped ranking is caught");
    println!("a ranking of the coordinator's choice: {}", text.trim());
    assert!(
        text.contains(&format!("log entry {listed}:"))
            && text.contains("does not rank its candidates as the latest reveal does"),
        "{text}"
    );
}
