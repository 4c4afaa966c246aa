//! End to end with real processes on this machine's adapter: `tessera coordinator` plus three
//! `tessera worker` processes over WebSockets. The held-out loss must fall by at least a nat
//! (from about ln 256) within 5 minutes, the checkpoint must load with `tessera eval`, a worker
//! killed mid-round must not stop the run, and a coordinator killed with SIGKILL and restarted
//! must resume without losing accepted contributions.

mod common;

use std::time::{Duration, Instant};

use tessera_coordinator::store::Store;

use common::{checkpoint, coordinator, data, eval, free_port, scratch, status, wait_for, worker};

const FIVE_MINUTES: Duration = Duration::from_secs(300);

/// Accepted contributions of the open round that the run's store holds durably, read without
/// disturbing the coordinator that serves it.
fn durable_accepted(rt: &tokio::runtime::Runtime, store: &Store) -> u64 {
    rt.block_on(store.open_round())
        .expect("read the run's store")
        .map_or(0, |(_, accepted)| accepted)
}

/// Rounds committed: the highest `checkpoints/round-N-HASH` holding a model.
fn rounds_done(dir: &std::path::Path) -> Option<usize> {
    std::fs::read_dir(dir.join("checkpoints"))
        .ok()?
        .flatten()
        .filter(|e| e.path().join("model.safetensors").exists())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            tessera_coordinator::store::parse_checkpoint_name(&name).map(|(v, _)| v as usize)
        })
        .max()
}

#[test]
fn three_workers_train_and_the_checkpoint_evaluates() {
    let dir = scratch("train");
    let port = free_port();
    let start = Instant::now();
    let mut c = coordinator(&data("e2e.toml"), port, &dir);
    let _w: Vec<_> = (0..3)
        .map(|i| worker(port, &dir.join(format!("w{i}.key"))))
        .collect();
    // While training, /api/status lists three native contributors with leases and accepted work.
    let mid = wait_for(
        port,
        FIVE_MINUTES,
        "three contributors with accepted work",
        |s| {
            let cs = s["contributors"].as_array().cloned().unwrap_or_default();
            cs.len() == 3
                && cs.iter().all(|c| {
                    c["kind"] == "native"
                        && c["lease"].is_string()
                        && c["accepted"].as_u64() > Some(0)
                })
        },
    );
    println!("status while training: {mid}");
    assert!(c.wait_exit(FIVE_MINUTES, "the run to finish").success());
    assert_eq!(rounds_done(&dir), Some(12));
    let held = data("held-out.txt");
    let before = eval(&checkpoint(&dir.join("checkpoints"), 0), &held);
    let after = eval(&checkpoint(&dir.join("checkpoints"), 12), &held);
    println!(
        "held-out loss {before:.4} -> {after:.4} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        (before - (256f64).ln()).abs() < 0.5,
        "the start is near ln 256"
    );
    assert!(
        before - after >= 1.0,
        "held-out loss fell by only {:.3} nats",
        before - after
    );
    assert!(start.elapsed() < FIVE_MINUTES);
}

#[test]
fn a_worker_killed_mid_round_does_not_stop_the_run() {
    let dir = scratch("kill-worker");
    let port = free_port();
    let mut c = coordinator(&data("e2e.toml"), port, &dir);
    let mut ws: Vec<_> = (0..3)
        .map(|i| worker(port, &dir.join(format!("w{i}.key"))))
        .collect();
    wait_for(port, FIVE_MINUTES, "round 2 with a unit in flight", |s| {
        s["round"].as_u64() >= Some(2)
            && s["contributors"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["unit"].is_u64()))
    });
    drop(ws.remove(0)); // SIGKILL
    let late = wait_for(port, FIVE_MINUTES, "two rounds after the kill", |s| {
        s["round"].as_u64() >= Some(4)
    });
    assert_eq!(
        late["contributors"].as_array().map(|c| c.len()),
        Some(2),
        "the killed worker's session is gone"
    );
    assert!(c
        .wait_exit(FIVE_MINUTES, "the run to finish with two workers")
        .success());
    assert_eq!(rounds_done(&dir), Some(12));
}

#[test]
fn a_coordinator_killed_and_restarted_resumes_without_losing_work() {
    let dir = scratch("kill-coordinator");
    let port = free_port();
    let c = coordinator(&data("e2e.toml"), port, &dir);
    let _w: Vec<_> = (0..3)
        .map(|i| worker(port, &dir.join(format!("w{i}.key"))))
        .collect();
    wait_for(port, FIVE_MINUTES, "round 3", |s| {
        s["round"].as_u64() >= Some(3)
    });
    // Kill as soon as the open round holds an accepted contribution.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = rt
        .block_on(Store::open(&dir, None))
        .expect("open the run's store");
    let start = Instant::now();
    while durable_accepted(&rt, &store) == 0 {
        assert!(
            start.elapsed() < FIVE_MINUTES,
            "no contribution was ever recorded"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(c); // SIGKILL
    let durable = durable_accepted(&rt, &store);
    drop(store);
    assert!(status(port).is_none(), "the coordinator is gone");
    let mut c2 = coordinator(&data("e2e.toml"), port, &dir);
    assert!(c2
        .wait_exit(FIVE_MINUTES, "the resumed run to finish")
        .success());
    assert_eq!(rounds_done(&dir), Some(12));
    let log = std::fs::read_to_string(dir.with_extension("coordinator.log")).unwrap_or_default();
    let resumed = log
        .lines()
        .find(|l| l.starts_with("resuming"))
        .unwrap_or_else(|| panic!("no resume line in {log}"));
    println!("{resumed} (ledger held {durable} at the kill)");
    assert!(
        resumed.contains(&format!(
            "({durable} accepted contributions in the open round)"
        )),
        "{resumed}"
    );
    assert!(durable >= 1);
}

#[test]
fn a_worker_interrupted_with_ctrl_c_leaves_cleanly() {
    let dir = scratch("ctrl-c");
    let port = free_port();
    let _c = coordinator(&data("e2e.toml"), port, &dir);
    let mut w = worker(port, &dir.join("w.key"));
    wait_for(port, FIVE_MINUTES, "the worker to hold a lease", |s| {
        s["contributors"]
            .as_array()
            .is_some_and(|c| c.len() == 1 && c[0]["lease"].is_string())
    });
    let pid = w.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    let st = w.wait_exit(Duration::from_secs(120), "the worker to exit after Ctrl-C");
    assert!(st.success(), "Ctrl-C is a clean exit, got {st}");
    wait_for(
        port,
        Duration::from_secs(30),
        "the coordinator to see it leave",
        |s| s["contributors"].as_array().is_some_and(|c| c.is_empty()),
    );
}
