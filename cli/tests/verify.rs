//! `tessera verify` on a real run's log: a coordinator SIGKILLed and restarted mid-run still
//! leaves one intact chain whose aggregates replay from the first checkpoint to every later
//! one; a live coordinator's credits are the ones its log gives; the log saved to a file
//! verifies again; and any altered entry, signature, removed entry, checkpoint byte, aggregate
//! byte or rule fails, as does a coordinator that re-signs its log around weights it did not
//! reach by its aggregates or around draws its draw chain does not give, naming the first bad
//! entry.

mod common;

use std::path::Path;
use std::time::Duration;

use common::log_files::{saved_log, write_edited, write_resigned};
use common::{
    checkpoint, coordinator, copy_dir, data, flip_byte, free_port, scratch, wait_for, worker,
};
use tessera_protocol::log::LogEvent;

const FIVE_MINUTES: Duration = Duration::from_secs(300);

fn verify(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let mut all = vec![std::ffi::OsStr::new("verify")];
    all.extend(args);
    common::tessera(&all)
}

fn tampered(saved: &Path, to: &Path, edit: impl Fn(&mut Vec<serde_json::Value>)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved).unwrap()).unwrap();
    edit(v["entries"].as_array_mut().unwrap());
    std::fs::write(to, v.to_string()).unwrap();
}

fn flip(hex: &str, at: usize) -> String {
    let mut b: Vec<char> = hex.chars().collect();
    b[at] = if b[at] == '0' { '1' } else { '0' };
    b.into_iter().collect()
}

#[test]
fn the_log_of_a_restarted_run_verifies_and_any_tampering_is_named() {
    let dir = scratch("verify");
    let port = free_port();
    let c = coordinator(&data("e2e.toml"), port, &dir);
    let _w: Vec<_> = (0..3)
        .map(|i| worker(port, &dir.join(format!("w{i}.key"))))
        .collect();
    wait_for(port, FIVE_MINUTES, "round 3", |s| {
        s["round"].as_u64() >= Some(3)
    });
    // Live: what the coordinator's status shows of credits is what its log gives.
    let url = format!("http://127.0.0.1:{port}");
    let (ok, text) = verify(&["--log".as_ref(), url.as_ref(), "--credits".as_ref()]);
    println!("{text}");
    assert!(ok, "a live coordinator's log and credits verify: {text}");
    assert!(
        text.contains(
            "the coordinator's status shows exactly the credits its log gives (3 identities"
        ),
        "{text}"
    );
    drop(c); // SIGKILL
    let mut c2 = coordinator(&data("e2e.toml"), port, &dir);
    assert!(c2.wait_exit(FIVE_MINUTES, "the run to finish").success());

    let saved = dir.with_extension("log.json");
    let (ok, text) = verify(&[
        "--log".as_ref(),
        dir.as_os_str(),
        "--save".as_ref(),
        saved.as_os_str(),
    ]);
    println!("{text}");
    assert!(ok, "an honest run's log verifies: {text}");
    assert!(text.contains("12 checkpoints checked"), "{text}");
    assert!(
        text.contains("replayed 12 closed versions from checkpoint 0 by the run's rules"),
        "{text}"
    );
    let verified: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("credits recomputed from the log: 3 identities, "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("three workers' credits: {text}"));
    assert!(verified > 0.0, "{text}");
    assert!(
        text.contains("draws recomputed from the draw chain: ") && text.contains("each as logged"),
        "the run checks work, so its log holds draws: {text}"
    );
    let (ok, text) = verify(&["--log".as_ref(), saved.as_os_str()]);
    assert!(ok, "the saved log verifies: {text}");
    draw_cases(&dir, &saved);

    let bad = dir.with_extension("bad.json");
    let case = |what: &str, edit: &dyn Fn(&mut Vec<serde_json::Value>), index: u64| {
        tampered(&saved, &bad, edit);
        let (ok, text) = verify(&["--log".as_ref(), bad.as_os_str()]);
        println!("{what}: {}", text.trim());
        assert!(!ok, "{what} is caught");
        assert!(
            text.contains(&format!("log entry {index}:")),
            "{what}: {text}"
        );
    };
    case(
        "an altered entry",
        &|es| {
            let s = es[5]["signed"].as_str().unwrap().to_string();
            es[5]["signed"] = flip(&s, 40).into();
        },
        5,
    );
    case(
        "an altered signature",
        &|es| {
            let s = es[7]["signed"].as_str().unwrap().to_string();
            let at = s.len() - 3;
            es[7]["signed"] = flip(&s, at).into();
        },
        7,
    );
    case("a removed entry", &|es| drop(es.remove(3)), 3);

    replay_cases(&dir, &saved);

    // A checkpoint byte altered: the entry that closed that version is named.
    flip_byte(
        &checkpoint(&dir.join("checkpoints"), 5).join("model.safetensors"),
        7,
    );
    let (ok, text) = verify(&["--log".as_ref(), dir.as_os_str()]);
    println!("an altered checkpoint: {}", text.trim());
    assert!(
        !ok && text.contains("log entry") && text.contains("round-5"),
        "{text}"
    );
}

#[test]
fn a_workers_receipts_prove_what_the_coordinator_recorded_even_against_a_re_signed_log() {
    let dir = scratch("receipts");
    let port = free_port();
    let c = coordinator(&data("e2e.toml"), port, &dir);
    let receipts = dir.with_extension("receipts.jsonl");
    let _w: Vec<_> = (0..3)
        .map(|i| {
            common::worker_at(
                &format!("ws://127.0.0.1:{port}/ws"),
                &dir.join(format!("w{i}.key")),
                "1GiB",
                &["--receipts".as_ref(), receipts.as_os_str()],
            )
        })
        .collect();
    wait_for(port, FIVE_MINUTES, "round 2", |s| {
        s["round"].as_u64() >= Some(2)
    });
    drop(_w);
    drop(c);
    let saved = dir.with_extension("log.json");
    let (ok, text) = verify(&[
        "--log".as_ref(),
        dir.as_os_str(),
        "--save".as_ref(),
        saved.as_os_str(),
        "--receipts".as_ref(),
        receipts.as_os_str(),
    ]);
    println!("{text}");
    assert!(ok, "{text}");
    let n: usize = text
        .lines()
        .find_map(|l| l.strip_suffix(" receipts match the log"))
        .and_then(|n| n.parse().ok())
        .expect("a count of receipts");
    assert!(n >= 6, "three workers kept receipts for two rounds: {n}");

    // The coordinator (it holds its key) rewrites its history without one accepted
    // submission and signs the new chain: the round that averaged it names a unit the log
    // never accepted (and the draws made after it no longer hold).
    let (v, entries) = saved_log(&saved);
    let drop_at = entries
        .iter()
        .position(|e| matches!(e.entry.event, LogEvent::Accepted { .. }))
        .unwrap();
    let forged_path = dir.with_extension("forged.json");
    let resign = |edit: &dyn Fn(usize, &LogEvent) -> Option<LogEvent>| {
        write_resigned(
            &dir,
            &v,
            &forged_path,
            entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| Some((e.entry.time_ms, edit(i, &e.entry.event)?))),
        )
    };
    resign(&|i, e| (i != drop_at).then(|| e.clone()));
    let (ok, text) = verify(&["--log".as_ref(), forged_path.as_os_str()]);
    println!("an accepted submission removed: {}", text.trim());
    assert!(
        !ok && text.contains("averages unit") && text.contains("never accepted"),
        "{text}"
    );
    // It records another result for that submission instead (its identity being new, every
    // draw of it is drawn whatever the value): the log alone verifies, the receipts do not.
    resign(&|i, e| {
        let mut e = e.clone();
        if let (true, LogEvent::Accepted { result, .. }) = (i == drop_at, &mut e) {
            result[0] ^= 1;
        }
        Some(e)
    });
    let (ok, text) = verify(&["--log".as_ref(), forged_path.as_os_str()]);
    assert!(ok, "the re-signed chain is a valid chain: {text}");
    let (ok, text) = verify(&[
        "--log".as_ref(),
        forged_path.as_os_str(),
        "--receipts".as_ref(),
        receipts.as_os_str(),
    ]);
    println!("{}", text.trim());
    assert!(!ok, "the receipts contradict the rewritten log");
    assert!(
        text.contains("was rewritten after the fact")
            || text.contains("does not record this verdict"),
        "{text}"
    );
}

/// A coordinator (it holds its key) that alters its draws and re-signs the chain: one draw
/// of who is checked turned, or a value of its choice revealed; `tessera verify` names the
/// reveal.
fn draw_cases(dir: &Path, saved: &Path) {
    let (v, entries) = saved_log(saved);
    let reveals: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(&e.entry.event, LogEvent::Revealed { drawn, .. } if !drawn.is_empty()))
        .map(|(i, _)| i)
        .collect();
    assert!(reveals.len() >= 12, "a reveal after each accepted update");
    let at = reveals[reveals.len() / 2];
    type Edit<'a> = (&'a str, &'a dyn Fn(&mut LogEvent));
    let edits: [Edit; 3] = [
        ("a draw turned", &|e| {
            if let LogEvent::Revealed { drawn, .. } = e {
                drawn[0] ^= 1;
            }
        }),
        ("a value of the coordinator's choice", &|e| {
            if let LogEvent::Revealed { value, .. } = e {
                value[0] ^= 1;
            }
        }),
        ("a segment committed again", &|e| {
            *e = LogEvent::DrawChain {
                segment: 0,
                tip: [0; 32],
                rates: None,
            }
        }),
    ];
    for (what, edit) in edits {
        let forged = dir.with_extension("forged-draws.json");
        write_edited(dir, &v, &forged, &entries, at, edit);
        let (ok, text) = verify(&["--log".as_ref(), forged.as_os_str()]);
        println!("{what}: {}", text.trim());
        assert!(!ok, "{what} is caught: {text}");
        assert!(text.contains(&format!("log entry {at}:")), "{what}: {text}");
    }
}

/// The replay's cases, on copies of the run's checkpoints.
fn replay_cases(dir: &Path, saved: &Path) {
    use tessera_compute::hf::params_from_safetensors;
    use tessera_compute::ModelConfig;
    use tessera_coordinator::core::weights_digest;

    let checkpoints = dir.join("checkpoints");
    let run = |log: &Path, cks: &Path, extra: &[&str]| {
        let mut args = vec![
            "--log".as_ref(),
            log.as_os_str(),
            "--checkpoints".as_ref(),
            cks.as_os_str(),
        ];
        args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
        verify(&args)
    };
    let (v, entries) = saved_log(saved);
    let closing = |version: u64| {
        entries
            .iter()
            .rposition(
                |e| matches!(e.entry.event, LogEvent::Closed { version: v, .. } if v == version),
            )
            .unwrap()
    };

    // An aggregate byte altered.
    let copy = dir.with_extension("ck-aggregate");
    copy_dir(&checkpoints, &copy);
    flip_byte(&checkpoint(&copy, 7).join("aggregate.safetensors"), 9);
    let (ok, text) = run(saved, &copy, &[]);
    println!("an altered aggregate: {}", text.trim());
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("log entry {}:", closing(7)))
            && text.contains("is not the aggregate the log recorded"),
        "{text}"
    );

    // Other rules than the run started with (a larger outer step).
    let copy = dir.with_extension("ck-rules");
    copy_dir(&checkpoints, &copy);
    let rules = std::fs::read_to_string(copy.join("rules.json")).unwrap();
    let mut r: serde_json::Value = serde_json::from_str(&rules).unwrap();
    let lr = r["step"]["Outer"]["lr"]
        .as_f64()
        .expect("whole-model rules");
    r["step"]["Outer"]["lr"] = (lr * 2.0).into();
    std::fs::write(copy.join("rules.json"), r.to_string()).unwrap();
    let (ok, text) = run(saved, &copy, &[]);
    println!("other rules: {}", text.trim());
    assert!(
        !ok && text.contains("log entry 0:") && text.contains("rules.json"),
        "{text}"
    );

    // The coordinator (it holds its key) slips other weights into version 5, records their
    // hash in the log and re-signs the whole chain: every checkpoint matches its log entry, but
    // the replay of the recorded aggregates does not reach those weights.
    let copy = dir.with_extension("ck-forged");
    copy_dir(&checkpoints, &copy);
    let ck = checkpoint(&copy, 5);
    flip_byte(&ck.join("model.safetensors"), 11);
    let cfg = ModelConfig::from_hf_json(&std::fs::read_to_string(ck.join("config.json")).unwrap())
        .unwrap();
    let forged_weights = weights_digest(
        &params_from_safetensors(&cfg, &std::fs::read(ck.join("model.safetensors")).unwrap())
            .unwrap(),
    );
    // Its folder is named by its weights: the forger renames it too.
    let renamed = copy.join(tessera_coordinator::store::checkpoint_name(
        5,
        &forged_weights,
    ));
    std::fs::rename(&ck, &renamed).unwrap();
    let at = closing(5);
    let forged_log = dir.with_extension("forged-weights.json");
    write_edited(dir, &v, &forged_log, &entries, at, &|e| {
        if let LogEvent::Closed { weights, .. } = e {
            *weights = forged_weights;
        }
    });
    let (ok, text) = run(&forged_log, &copy, &["--no-replay"]);
    assert!(ok, "the checkpoints alone match the re-signed log: {text}");
    let (ok, text) = run(&forged_log, &copy, &[]);
    println!("weights the aggregates do not reach: {}", text.trim());
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("log entry {at}:")) && text.contains("does not give the weights"),
        "{text}"
    );
}

/// A server that answers `/api/status` with an empty status page and every other path with
/// an endless JSON array; it counts the bytes it managed to send.
fn endless_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                if line.contains("/api/status") {
                    let body = r#"{"log_head":0,"credits":[]}"#;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    return;
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{{\"coordinator\":\"\",\"entries\":["
                );
                let chunk = "{\"index\":0,\"signed\":\"v2:00\"},".repeat(1000);
                while conn.write_all(chunk.as_bytes()).is_ok() {
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (base, sent)
}

#[test]
fn a_hostile_log_is_refused_by_its_size() {
    // A "coordinator" whose log page never ends: refused once it passes the page bound,
    // without reading the rest.
    let (base, sent) = endless_server();
    let (ok, text) = verify(&["--log".as_ref(), base.as_ref()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("sent a page of the log over 16 MiB"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 64 << 20, "the verifier was sent {sent} bytes");

    // A saved log with an entry over the entry cap: refused by its length, named by its index.
    let dir = scratch("hostile-log");
    let file = dir.join("log.json");
    let entry = format!("v2:{}", "ab".repeat(150_000));
    std::fs::write(
        &file,
        serde_json::json!({
            "coordinator": tessera_protocol::Identity::from_seed([1; 32]).public().to_string(),
            "entries": [{"index": 0, "signed": entry}],
        })
        .to_string(),
    )
    .unwrap();
    let (ok, text) = verify(&["--log".as_ref(), file.as_os_str()]);
    assert!(!ok, "{text}");
    assert!(text.contains("log entry 0"), "{text}");
    assert!(text.contains("an entry of 300003 characters"), "{text}");
}
