//! A coordinator killed (SIGKILL) at several moments before its first round closes, and
//! restarted on the same data directory each time, resumes the same run: one `Started` entry,
//! a log that verifies, and a first round that closes once a worker comes. A second
//! coordinator on the same data directory is refused while the first serves.

mod common;

use std::time::Duration;

use common::{
    coordinator, data, free_port, scratch, status, tessera, verify_dir, wait_for, worker,
};

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn a_coordinator_killed_before_its_first_round_closes_resumes_the_run() {
    let dir = scratch("early-restart");
    let port = free_port();
    let config = data("e2e.toml");
    // Killed while starting, just after it serves, and with a worker leased mid-round.
    for pause in [Duration::from_millis(300), Duration::ZERO] {
        let c = coordinator(&config, port, &dir);
        if pause.is_zero() {
            wait_for(port, LIMIT, "the coordinator serving", |_| true);
        } else {
            std::thread::sleep(pause);
        }
        drop(c);
    }
    let c = coordinator(&config, port, &dir);
    let w = worker(port, &dir.join("w1.key"));
    wait_for(port, LIMIT, "a leased worker", |s| {
        s["contributors"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x["lease"].is_string()))
    });
    drop(c);
    drop(w);
    assert!(status(port).is_none(), "the coordinator is gone");

    let _c = coordinator(&config, port, &dir);
    let _w = worker(port, &dir.join("w2.key"));
    wait_for(port, LIMIT, "the first round closed", |s| {
        s["round"].as_u64() >= Some(1)
    });
    let log = std::fs::read_to_string(dir.with_extension("coordinator.log")).unwrap_or_default();
    println!("{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("resuming run e2e at round 0")),
        "a restart resumed the run"
    );
    let text = verify_dir(&dir);
    assert!(text.contains("verified"), "{text}");

    // A second coordinator on the same data directory is refused while this one serves.
    let other = format!("127.0.0.1:{}", free_port());
    let args: [&std::ffi::OsStr; 7] = [
        "coordinator".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--bind".as_ref(),
        other.as_ref(),
        "--data-dir".as_ref(),
        dir.as_os_str(),
    ];
    let (ok, text) = tessera(&args);
    assert!(!ok, "a second coordinator served the same run: {text}");
    assert!(
        text.contains("another coordinator is serving the data directory"),
        "{text}"
    );
}
