//! What `tessera` processes write to standard error. With `--log-format json` every line is one
//! JSON object (a log event with its level and fields), for a machine to read, the coordinator's
//! and the worker's alike; in the default text format there are no colour codes when standard
//! error is not a terminal. Either way no line comes from Mesa's Vulkan driver complaining about
//! a missing `XDG_RUNTIME_DIR` (the workers here run without one).

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{data, exe, free_port, scratch, wait_for};

/// All `child` wrote to standard error, once killed.
fn stderr_of(mut child: Child) -> String {
    let _ = child.kill();
    let mut text = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut text)
        .expect("read stderr");
    let _ = child.wait();
    text
}

/// A coordinator and one worker in log format `format` (the coordinator at level debug, the
/// worker at info, without `XDG_RUNTIME_DIR`), run until the worker holds a lease: what each
/// wrote to standard error.
fn run(format: &str) -> (String, String) {
    let dir = scratch(&format!("log-format-{format}"));
    let port = free_port();
    let coordinator = Command::new(exe())
        .args(["--log-format", format, "coordinator", "--config"])
        .arg(data("e2e.toml"))
        .args(["--bind", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.join("run"))
        .args(["--admission-bits", "0"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the coordinator");
    wait_for(port, Duration::from_secs(60), "the coordinator", |_| true);
    let worker = Command::new(exe())
        .args(["--log-format", format, "worker", "--coordinator"])
        .arg(format!("ws://127.0.0.1:{port}/ws"))
        .args(["--quiet", "--identity"])
        .arg(dir.join("w.key"))
        .env("RUST_LOG", "info")
        .env_remove("XDG_RUNTIME_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a worker");
    wait_for(port, Duration::from_secs(120), "a leased worker", |s| {
        s["contributors"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["lease"].is_string()))
    });
    let w = stderr_of(worker);
    (stderr_of(coordinator), w)
}

#[test]
fn json_logs_are_one_object_a_line_and_text_logs_have_no_colour_or_driver_noise() {
    let (coordinator, worker) = run("json");
    for (who, text) in [("coordinator", &coordinator), ("worker", &worker)] {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "the {who} logged something");
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a {who} line that is not JSON ({e}): {l}"));
            assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
        }
        println!("{who}: {} JSON lines", lines.len());
    }
    let (coordinator, worker) = run("text");
    for (who, text) in [("coordinator", &coordinator), ("worker", &worker)] {
        assert!(
            !text.contains('\u{1b}'),
            "colour codes from the {who} in a pipe: {text}"
        );
        assert!(
            !text.contains("XDG_RUNTIME_DIR"),
            "driver noise from the {who}: {text}"
        );
    }
}
