//! Stored log entries of both formats: today's round-trip through their text and verify;
//! version-1 entries (the saved fixtures, written by the version-1 code) verify by version 1's
//! hashes and come out in today's types, every free-text reason with `Code::Version1`; a log
//! mixing the two formats is refused at the first entry of the other format.

use tessera_protocol::log::{CheckOutcome, LogEvent, LogWriter};
use tessera_protocol::log_store::{verify_stored, StoredEntry};
use tessera_protocol::{Code, Identity, PublicKey, Reason};

/// The `"coordinator"` and each `"signed"` string of a saved log file.
fn saved(name: &str) -> (PublicKey, Vec<String>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/v1-logs")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let strings = |field: &str| -> Vec<String> {
        let tag = format!("\"{field}\": \"");
        text.match_indices(&tag)
            .map(|(at, _)| {
                let from = at + tag.len();
                text[from..from + text[from..].find('"').unwrap()].to_string()
            })
            .collect()
    };
    let key = PublicKey::from_hex(&strings("coordinator")[0]).unwrap();
    (key, strings("signed"))
}

fn current_log(n: u64) -> (Identity, Vec<StoredEntry>) {
    let id = Identity::from_seed([5; 32]);
    let mut w = LogWriter::default();
    let mut out = vec![w.append(
        &id,
        0,
        LogEvent::Started {
            run: "t".into(),
            coordinator: id.public(),
            config: [0; 32],
        },
    )];
    for i in 1..n {
        out.push(w.append(
            &id,
            i,
            LogEvent::Left {
                key: id.public(),
                reason: Reason::new(Code::Silent, "silent"),
            },
        ));
    }
    let stored = out
        .iter()
        .map(|e| StoredEntry::decode(&StoredEntry::encode(e)).unwrap())
        .collect();
    (id, stored)
}

#[test]
fn todays_entries_round_trip_through_their_text_and_verify() {
    let (id, stored) = current_log(4);
    assert!(stored.iter().all(|e| e.version() == 2));
    let log = verify_stored(stored, &id.public(), None).unwrap();
    assert_eq!((log.version, log.entries.len()), (2, 4));
    assert_eq!(log.head, Some(log.entries[3].head()));
}

#[test]
fn version_1_logs_verify_by_their_own_hashes_and_upgrade() {
    for name in ["demo-run.json", "every-event.json"] {
        let (key, lines) = saved(name);
        let stored: Vec<StoredEntry> = lines
            .iter()
            .map(|l| StoredEntry::decode(l).unwrap())
            .collect();
        assert!(stored.iter().all(|e| e.version() == 1), "{name}");
        let log = verify_stored(stored.clone(), &key, None).unwrap();
        assert_eq!(log.version, 1);
        assert_eq!(log.entries.len(), lines.len());
        let reasons: Vec<&Reason> = log
            .entries
            .iter()
            .filter_map(|e| match &e.entry.event {
                LogEvent::Left { reason, .. }
                | LogEvent::Rejected { reason, .. }
                | LogEvent::Discarded { reason, .. } => Some(reason),
                LogEvent::Checked {
                    outcome:
                        CheckOutcome::Failed(r)
                        | CheckOutcome::AuditorFailed(r)
                        | CheckOutcome::Skipped(r)
                        | CheckOutcome::Disputed(r),
                    ..
                } => Some(r),
                _ => None,
            })
            .collect();
        assert!(!reasons.is_empty(), "{name} has reasons");
        assert!(reasons.iter().all(|r| r.code == Code::Version1), "{name}");
        // A version-1 entry under another key, or altered, fails as it did.
        let other = Identity::from_seed([9; 32]).public();
        assert_eq!(
            verify_stored(stored.clone(), &other, None)
                .unwrap_err()
                .index,
            0
        );
    }
}

#[test]
fn a_log_of_mixed_formats_is_refused_at_the_first_other_entry() {
    let (key, lines) = saved("every-event.json");
    let mut stored: Vec<StoredEntry> = lines
        .iter()
        .map(|l| StoredEntry::decode(l).unwrap())
        .collect();
    let (_, current) = current_log(1);
    stored[3] = current[0].clone();
    let err = verify_stored(stored, &key, None).unwrap_err();
    assert_eq!(
        (err.index, err.fault),
        (3, tessera_protocol::log::LogFault::MixedVersions),
        "{err}"
    );
}

#[test]
fn texts_that_are_not_entries_are_refused() {
    assert!(StoredEntry::decode("v2:zz").is_err());
    assert!(StoredEntry::decode("v2:00").is_err());
    assert!(StoredEntry::decode("0").is_err());
}

#[test]
fn an_entry_over_the_cap_is_refused_before_it_is_decoded() {
    use tessera_protocol::log::MAX_ENTRY_BYTES;
    let (_, current) = current_log(1);
    let StoredEntry::Current(e) = &current[0] else {
        panic!("today's entry");
    };
    let text = StoredEntry::encode(e);
    // The largest text the cap allows is read: here an entry followed by bytes it refuses.
    let at_cap = format!(
        "{text}{}",
        "0".repeat(StoredEntry::MAX_TEXT_CHARS - text.len())
    );
    let err = StoredEntry::decode(&at_cap).unwrap_err();
    assert!(err.contains("bytes follow the version-2 entry"), "{err}");
    for text in [
        format!("{text}00"),
        format!("v2:{}", "00".repeat(MAX_ENTRY_BYTES + 1)),
        "f".repeat(StoredEntry::MAX_TEXT_CHARS + 1),
    ] {
        let err = StoredEntry::decode(&text).unwrap_err();
        if text.len() > StoredEntry::MAX_TEXT_CHARS {
            assert!(
                err.contains(&format!("an entry of {} characters", text.len())),
                "{err}"
            );
            assert!(err.contains("at most 65536 bytes"), "{err}");
        } else {
            // Within the cap: refused by what it holds, not its length.
            assert!(!err.contains("characters stored"), "{err}");
        }
    }
}
