//! `tessera demo` asked to terminate (SIGTERM, as a service manager or `kill` asks) stops the
//! worker processes it started, as Ctrl-C does: none is left reconnecting to a coordinator that
//! is gone, or joining the next demo on the same port. Killed outright (SIGKILL, or a crash), it
//! takes them with it too (their parent-death signal).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{exe, free_port, scratch, wait_for, Proc};

/// The processes whose command line names `needle`.
fn processes_naming(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // A zombie (exited, not yet reaped) has an empty command line.
        if cmd.contains(&needle) && cmd.contains(" worker ") {
            out.push(pid);
        }
    }
    out
}

/// Starts a demo of two workers in `dir` on `port` and waits until both joined; the demo and
/// its workers' pids.
fn demo_with_two_workers(dir: &Path, port: u16) -> (Proc, Vec<u32>) {
    let demo = Proc(
        Command::new(exe())
            .args(["demo", "--rounds", "100000", "--workers", "2", "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tessera demo starts"),
    );
    wait_for(port, Duration::from_secs(300), "two workers", |s| {
        s["contributors"].as_array().is_some_and(|c| c.len() == 2)
    });
    let workers = processes_naming(dir);
    assert_eq!(workers.len(), 2, "the demo's two workers: {workers:?}");
    (demo, workers)
}

/// Waits up to 10 s for the workers of the demo in `dir` to be gone.
fn workers_gone(dir: &Path) {
    let start = Instant::now();
    while !processes_naming(dir).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "workers left running after the demo stopped: {:?}",
            processes_naming(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "workers gone {:.1} s after the demo",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn a_terminated_demo_stops_its_workers() {
    let dir = scratch("demo-term");
    let (mut demo, _) = demo_with_two_workers(&dir, free_port());
    let pid = demo.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let status = demo.wait_exit(Duration::from_secs(60), "the demo to stop");
    assert!(
        status.success(),
        "a terminated demo exits cleanly: {status}"
    );
    workers_gone(&dir);
}

#[test]
fn a_killed_demo_takes_its_workers_with_it() {
    let dir = scratch("demo-kill");
    let (mut demo, _) = demo_with_two_workers(&dir, free_port());
    demo.0.kill().expect("SIGKILL the demo");
    demo.wait_exit(Duration::from_secs(10), "the killed demo");
    workers_gone(&dir);
}

/// A process's command line, argument by argument.
fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).expect("a command line");
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// A demo's workers work only for its coordinator: a worker started exactly as an earlier
/// demo's was (a stray that outlived it, where nothing killed it) is refused by the next demo on
/// the same port: it signs nothing for it, never shows among its contributors, and exits saying
/// why.
#[test]
fn a_stray_of_an_earlier_demo_is_refused_by_the_next() {
    let port = free_port();
    let first = scratch("demo-stray-1");
    let (mut demo, workers) = demo_with_two_workers(&first, port);
    let stray_args = cmdline(workers[0]);
    let key = std::fs::read_to_string(first.join("coordinator.key")).unwrap();
    let key = tessera_protocol::Identity::from_seed(
        tessera_protocol::identity::parse_hex32(key.trim()).unwrap(),
    )
    .public()
    .to_string();
    assert!(
        stray_args
            .windows(2)
            .any(|w| w[0] == "--coordinator-key" && w[1] == key),
        "the demo pins its workers to its coordinator: {stray_args:?}"
    );
    demo.0.kill().expect("SIGKILL the first demo");
    demo.wait_exit(Duration::from_secs(10), "the first demo");
    workers_gone(&first);

    let second = scratch("demo-stray-2");
    let (_demo2, _) = demo_with_two_workers(&second, port);
    let log = second.with_extension("stray.log");
    let mut stray = Proc(
        Command::new(&stray_args[0])
            .args(&stray_args[1..])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the stray starts"),
    );
    let start = Instant::now();
    let status = stray.wait_exit(Duration::from_secs(120), "the stray to exit");
    let stderr = std::fs::read_to_string(&log).unwrap();
    println!(
        "the stray exited after {:.1} s: {stderr}",
        start.elapsed().as_secs_f64()
    );
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("not the expected {key}")),
        "{stderr}"
    );
    let s = common::status(port).expect("the second demo's status");
    assert_eq!(
        s["contributors"].as_array().map(Vec::len),
        Some(2),
        "only the second demo's own workers: {s}"
    );
}
