//! `tessera train-local` end to end: the real binary trains a micro-sharded model on this
//! machine's adapter and the held-out loss falls by more than a nat.

use std::process::Command;

#[test]
fn train_local_lowers_held_out_loss() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["train-local", "--steps", "30", "--every", "10"])
        .output()
        .expect("run tessera");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "train-local failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Attn(0, 0..1) Attn(0, 1..2)"),
        "the model is cut into micro-shards"
    );
    let last = stdout.lines().last().expect("a summary line");
    // "held-out loss A -> B (D nats) in S s"
    let drop: f64 = last
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no loss change in {last:?}"));
    assert!(drop < -1.0, "held-out loss fell by only {drop} nats");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["train-local", "--slices", "2,2"])
        .output()
        .expect("run tessera");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--slices takes four numbers"), "{err}");
}
