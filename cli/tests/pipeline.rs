//! End to end with real processes: a pipeline run of the tiny byte-level model cut into 15
//! micro-shards in 6 stages (2 attention groups and 4 MLP column ranges per layer, 2 head
//! vocabulary slices), trained by `tessera worker` processes with mixed memory budgets: one big
//! budget that takes a heavy lease (the embedding and the first layer and a half: several whole
//! stages), and six small ones that each hold one micro-shard of the last MLP stage or of the
//! head. Activations travel as bf16. The held-out loss must fall at least a nat within 5
//! minutes, and `/api/status` must show the heavy lease.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::log_files::{saved_log, verify_saving, write_edited, write_resigned};
use common::{
    checkpoint, coordinator, data, eval, free_port, scratch, wait_for, worker_with_budget,
};

use tessera_protocol::log::LogEvent;

const FIVE_MINUTES: Duration = Duration::from_secs(300);

fn shards(c: &serde_json::Value) -> Vec<String> {
    c["shards"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn mixed_budget_workers_train_a_sliced_pipeline() {
    let dir = scratch("pipeline");
    let port = free_port();
    let start = Instant::now();
    let mut c = coordinator(&data("pipeline.toml"), port, &dir);
    let _big = worker_with_budget(port, &dir.join("big.key"), "900KiB");
    let first = wait_for(port, FIVE_MINUTES, "the big worker's lease", |s| {
        s["contributors"]
            .as_array()
            .is_some_and(|cs| cs.len() == 1 && shards(&cs[0]).len() > 4)
    });
    println!("heavy lease: {}", first["contributors"][0]["lease"]);
    let _small: Vec<_> = (0..6)
        .map(|i| worker_with_budget(port, &dir.join(format!("s{i}.key")), "220KiB"))
        .collect();
    let mid = wait_for(
        port,
        FIVE_MINUTES,
        "seven contributors with accepted work",
        |s| {
            let cs = s["contributors"].as_array().cloned().unwrap_or_default();
            cs.len() == 7 && cs.iter().all(|c| c["accepted"].as_u64() > Some(0))
        },
    );
    let cs = mid["contributors"].as_array().cloned().unwrap_or_default();
    let mut held: Vec<Vec<String>> = cs.iter().map(shards).collect();
    held.sort_by_key(|h| std::cmp::Reverse(h.len()));
    for h in &held {
        println!("lease: {}", h.join(", "));
    }
    assert_eq!(held[0].len(), 9, "the big budget holds stages 0..4 whole");
    assert!(
        held[1..].iter().all(|h| h.len() == 1),
        "small budgets hold one micro-shard each"
    );
    let all: Vec<&String> = held.iter().flatten().collect();
    for name in [
        "Attn(0, 0..1)",
        "Attn(0, 1..2)",
        "Mlp(1, 0..44)",
        "Mlp(1, 132..176)",
        "Head(0..128)",
        "Head(128..256)",
    ] {
        assert!(all.iter().any(|s| *s == name), "{name} is held");
    }
    assert!(c.wait_exit(FIVE_MINUTES, "the run to finish").success());
    let held_out = data("held-out.txt");
    let before = eval(&checkpoint(&dir.join("checkpoints"), 0), &held_out);
    let after = eval(&checkpoint(&dir.join("checkpoints"), 24), &held_out);
    println!(
        "held-out loss {before:.4} -> {after:.4} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        before - after >= 1.0,
        "held-out loss fell by only {:.3} nats",
        before - after
    );
    assert!(start.elapsed() < FIVE_MINUTES);
    // Every step replays: from the initial weights, each step's kept gradient sums through
    // clipping and AdamW reach exactly the weights the log recorded.
    let text = common::verify_dir(&dir);
    assert!(
        text.contains("replayed 24 closed versions from checkpoint 0"),
        "{text}"
    );
    stepped_cases(&dir);
}

/// Each step's scalars are in the log (`Stepped`, right before its `Closed`), and verify's
/// replay holds them to what the rules and the kept gradient sums give: a re-signed log with a
/// learning rate's bit turned, or without a step's scalars, is named at the entry.
fn stepped_cases(dir: &Path) {
    let saved = dir.with_extension("log.json");
    verify_saving(dir, &saved, &["--no-replay"]);
    let (v, entries) = saved_log(&saved);
    let stepped: Vec<usize> = (0..entries.len())
        .filter(|&i| matches!(entries[i].entry.event, LogEvent::Stepped { .. }))
        .collect();
    assert_eq!(stepped.len(), 24, "a Stepped entry a step");
    for &i in &stepped {
        assert!(
            matches!(entries[i + 1].entry.event, LogEvent::Closed { .. }),
            "its Closed follows"
        );
    }
    let at = stepped[stepped.len() / 2];
    let forged = dir.with_extension("forged-steps.json");
    let checkpoints = dir.join("checkpoints");
    // Verify the forged log: refused at entry `named`, saying `says`.
    let check = |what: &str, named: usize, says: &str| {
        let (ok, text) = common::tessera(&[
            "verify".as_ref(),
            "--log".as_ref(),
            forged.as_os_str(),
            "--checkpoints".as_ref(),
            checkpoints.as_os_str(),
        ]);
        println!("{what}: {}", text.trim());
        assert!(!ok, "{what} is caught");
        assert!(
            text.contains(&format!("log entry {named}:")) && text.contains(says),
            "{what}: {text}"
        );
    };
    write_edited(dir, &v, &forged, &entries, at, &|e| {
        if let LogEvent::Stepped { scalars, .. } = e {
            scalars[0] ^= 1;
        }
    });
    check("a learning rate's bit turned", at, "logged scalars");
    let without = entries
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != at)
        .map(|(_, e)| (e.entry.time_ms, e.entry.event.clone()));
    write_resigned(dir, &v, &forged, without);
    check(
        "a step without its scalars",
        at,
        "closed without a Stepped entry",
    );
}
