//! `tessera fork` on a real run: a parent trains four rounds; a fork from its version 2 under a
//! new coordinator key trains on with real workers, its log names the parent's entry and
//! verifies (its checkpoints replay from the forked one), and its loss keeps falling. A fork
//! from a parent whose checkpoint was altered, into a data directory that holds a run, of a
//! version never closed, or with another model, is refused and writes nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    checkpoint, coordinator, copy_dir, data, eval, flip_byte, free_port, scratch, tessera,
    verify_dir, worker,
};

const FIVE_MINUTES: Duration = Duration::from_secs(300);

/// The end-to-end config under another name and number of rounds (and model preset).
fn config(dir: &Path, name: &str, rounds: u64, preset: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(data("e2e.toml")).unwrap();
    let text = text
        .replace("name = \"e2e\"", &format!("name = \"{name}\""))
        .replace("rounds = 12", &format!("rounds = {rounds}"))
        .replace("preset = \"tiny-byte\"", &format!("preset = \"{preset}\""));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn train(config: &Path, dir: &Path) {
    let port = free_port();
    let mut c = coordinator(config, port, dir);
    let _w: Vec<_> = (0..3)
        .map(|i| worker(port, &dir.with_extension(format!("w{i}.key"))))
        .collect();
    assert!(c.wait_exit(FIVE_MINUTES, "the run to finish").success());
}

#[test]
fn a_fork_of_a_verified_checkpoint_trains_on_under_its_own_log() {
    let root = scratch("fork");
    let parent = root.join("parent");
    train(&config(&root, "parent", 4, "tiny-byte"), &parent);

    let child = root.join("child");
    let child_cfg = config(&root, "child", 5, "tiny-byte");
    let fork = |log: &Path, at: &str, cfg: &Path, into: &Path, extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "fork".as_ref(),
            "--log".as_ref(),
            log.as_os_str(),
            "--at".as_ref(),
            at.as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "--data-dir".as_ref(),
            into.as_os_str(),
        ];
        args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
        tessera(&args)
    };

    // Refused: a version the parent never closed, another model.
    let (ok, text) = fork(&parent, "9", &child_cfg, &child, &[]);
    assert!(!ok && text.contains("closed no version 9"), "{text}");
    let other = config(&root, "other", 5, "small-byte");
    let (ok, text) = fork(&parent, "2", &other, &child, &[]);
    assert!(!ok && text.contains("not the parent's"), "{text}");
    // Refused: a parent whose checkpoint 1 was altered (the replay to version 2 passes it).
    let bad = root.join("bad-checkpoints");
    copy_dir(&parent.join("checkpoints"), &bad);
    flip_byte(&checkpoint(&bad, 1).join("model.safetensors"), 5);
    let (ok, text) = fork(
        &parent,
        "2",
        &child_cfg,
        &child,
        &["--checkpoints", bad.to_str().unwrap()],
    );
    println!("an altered parent: {}", text.trim());
    assert!(
        !ok && text.contains("log entry") && text.contains("round-1"),
        "{text}"
    );
    assert!(!child.exists(), "a refused fork writes nothing");

    // The fork.
    let (ok, text) = fork(&parent, "2", &child_cfg, &child, &[]);
    println!("{text}");
    assert!(ok, "{text}");
    assert!(text.contains("forked run child from version 2"), "{text}");
    // Once: the data directory now holds a run.
    let (ok, text) = fork(&parent, "2", &child_cfg, &child, &[]);
    assert!(!ok && text.contains("already holds a run"), "{text}");

    train(&child_cfg, &child);
    let text = verify_dir(&child);
    assert!(
        text.contains("a fork: from version 2 of the run whose coordinator is"),
        "{text}"
    );
    assert!(
        text.contains("replayed 3 closed versions from checkpoint 2"),
        "{text}"
    );
    assert!(text.contains("4 checkpoints checked"), "{text}");
    let parent_key = std::fs::read_to_string(parent.join("coordinator.key")).unwrap();
    let child_key = std::fs::read_to_string(child.join("coordinator.key")).unwrap();
    assert_ne!(parent_key, child_key, "the fork signs with its own key");

    let held_out = data("held-out.txt");
    let at_fork = eval(&checkpoint(&parent.join("checkpoints"), 2), &held_out);
    let after = eval(&checkpoint(&child.join("checkpoints"), 5), &held_out);
    println!("held-out loss at the fork {at_fork:.4}, after three more rounds {after:.4}");
    assert!(after < at_fork, "{at_fork} -> {after}");
}
