//! `tessera plan` end to end: the real binary prints the 72B plan, and refuses a bad budget
//! with a clear message.

use std::process::Command;

#[test]
fn plan_prints_the_72b_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["plan", "--model", "covenant-72b", "--budget", "0.6GiB"])
        .output()
        .expect("run tessera");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("72.7B parameters (72747327488)"),
        "the total parameters are named"
    );
    assert!(stdout.contains("Leases for a 614 MiB budget"));
    assert!(stdout.contains("binding limit: "));
    assert!(stdout.contains("estimates from the model shape"));
}

#[test]
fn a_bad_budget_fails_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["plan", "--model", "covenant-72b", "--budget", "lots"])
        .output()
        .expect("run tessera");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad budget must fail");
    assert!(
        stderr.contains("--budget") && stderr.contains("cannot read a memory size \"lots\""),
        "unclear error: {stderr}"
    );
}

#[test]
fn a_budget_too_small_for_one_micro_shard_fails_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["plan", "--model", "covenant-72b", "--budget", "100MiB"])
        .output()
        .expect("run tessera");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("over the budget"),
        "unclear error: {stderr}"
    );
}
