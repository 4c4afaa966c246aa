//! `tessera tune` end to end: it prints the table of every candidate tiling and caches the
//! winner under this adapter's name; a worker started with that cache uses the cached tiling
//! without measuring again; bad arguments and a damaged cache are clear errors or warnings.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tessera(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera")
}

/// Starts a worker against a closed port with `cache`, collects its standard error until
/// `until` appears (or 60 s), and stops it.
fn worker_says(cache: &str, until: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["worker", "--coordinator", "ws://127.0.0.1:9/ws", "--quiet"])
        .args(["--tuning", cache, "--identity"])
        .arg(std::env::temp_dir().join(format!("tessera-tune-{}.key", std::process::id())))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a worker");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) && !seen.contains(until) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen += &l;
            seen.push('\n');
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

#[test]
fn tune_prints_the_table_caches_the_winner_and_a_worker_uses_it() {
    let dir = std::env::temp_dir().join(format!("tessera-tune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("tuning.json");
    let cache_s = cache.to_str().unwrap();
    let out = tessera(&[
        "tune",
        "--model",
        "tiny-byte",
        "--rows",
        "64",
        "--min-ms",
        "2",
        "--cache",
        cache_s,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = stdout
        .lines()
        .filter(|l| {
            l.len() > 2
                && ["Vec4 ", "Direct ", "Shared "]
                    .iter()
                    .any(|k| l[2..].starts_with(k))
        })
        .count();
    assert!(rows >= 10, "a row per candidate:\n{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("* ")).count(), 1);
    let adapter = stdout
        .lines()
        .find_map(|l| l.strip_prefix("adapter: "))
        .expect("the adapter line");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache).unwrap()).expect("the cache is JSON");
    let entry = &json[adapter];
    let chosen = entry["chosen"].as_u64().expect("a chosen row") as usize;
    let kernel = entry["rows"][chosen]["tiles"]["kernel"]
        .as_str()
        .unwrap()
        .to_string();

    // The worker reads it and measures nothing.
    let said = worker_says(cache_s, "tuned for");
    assert!(
        said.contains("tuned for") && said.contains(&kernel),
        "{said}"
    );
    assert!(!said.contains("tuning: candidate"), "{said}");

    // A damaged cache is named, the worker tunes anew and repairs it.
    std::fs::write(&cache, b"{ not json").unwrap();
    let said = worker_says(cache_s, "tuned for");
    assert!(said.contains("is not a tuning cache"), "{said}");
    assert!(said.contains("tuning: candidate 1 of"), "{said}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache).unwrap()).expect("repaired");
    assert!(json[adapter]["chosen"].is_u64());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_tune_arguments_are_refused() {
    for (args, says) in [
        (&["tune", "--rows", "0"][..], "--rows must be"),
        (&["tune", "--min-ms", "0"][..], "--min-ms must be"),
        (&["tune", "--model", "no-such-model"][..], "not one of"),
        (
            &["tune", "--adapter", "no such adapter 7f3a"][..],
            "no adapter's name contains",
        ),
    ] {
        let out = tessera(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
