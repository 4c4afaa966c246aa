//! Logs written by the version-1 code still verify (`tests/data/v1-logs`, see its README):
//! the chain, the credits folded from it and the administrator's acts come out as the
//! version-1 `tessera verify` printed them, and an altered entry is still named.

mod common;

use common::{data, scratch, tessera};

fn verify(log: &std::path::Path) -> (bool, String) {
    let (ok, text) = tessera(&[
        "verify".as_ref(),
        "--log".as_ref(),
        log.as_os_str(),
        "--credits".as_ref(),
    ]);
    println!("{text}");
    (ok, text)
}

#[test]
fn version_1_logs_verify_as_they_did() {
    for name in ["demo-run", "every-event"] {
        let log = data(&format!("v1-logs/{name}.json"));
        let (ok, text) = verify(&log);
        assert!(ok, "{name} verifies: {text}");
        assert!(
            text.contains("log format version 1 (an earlier format"),
            "{name}: verify says which version it read: {text}"
        );
        let before = std::fs::read_to_string(data(&format!("v1-logs/{name}.verify.txt"))).unwrap();
        for line in before.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                text.lines().any(|l| l == line),
                "{name}: the version-1 verify printed {line:?}; now:\n{text}"
            );
        }
    }
}

#[test]
fn an_altered_version_1_entry_is_named() {
    let text = std::fs::read_to_string(data("v1-logs/every-event.json")).unwrap();
    let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Entry 11 is the rejection: change one hex digit of its encoding (inside its reason).
    let signed = file["entries"][11]["signed"].as_str().unwrap().to_string();
    let at = signed.len() - 200;
    let digit = if &signed[at..at + 1] == "0" { "1" } else { "0" };
    let altered = format!("{}{digit}{}", &signed[..at], &signed[at + 1..]);
    file["entries"][11]["signed"] = serde_json::Value::String(altered);
    let dir = scratch("v1-altered");
    let path = dir.join("log.json");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let (ok, text) = verify(&path);
    assert!(!ok, "an altered log fails: {text}");
    assert!(text.contains("log entry 11"), "{text}");
}
