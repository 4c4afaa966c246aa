//! `tessera export` on a real run's checkpoint: the folder it writes is a Hugging Face LLaMA
//! checkpoint (`config.json`, f32 safetensors), cut into several files with their
//! `model.safetensors.index.json` above `--max-file-size`, with the run's `tokenizer.json`; the
//! weights read back from either form give the loss the checkpoint gives; a folder in the way is
//! refused and left as it was.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use common::{checkpoint, coordinator, data, eval, free_port, scratch, tessera, wait_for};

#[test]
fn a_checkpoint_exports_whole_or_cut_and_evaluates_alike() {
    let dir = scratch("export");
    let port = free_port();
    // A new run commits its first checkpoint (version 0) before it serves.
    let c = coordinator(&data("e2e.toml"), port, &dir);
    wait_for(port, Duration::from_secs(120), "the coordinator", |_| true);
    drop(c);
    let ck = checkpoint(&dir.join("checkpoints"), 0);
    let held_out = data("held-out.txt");
    let want = eval(&ck, &held_out);

    // `tessera export` of the checkpoint into `out`, with `more` arguments.
    let export = |out: &Path, more: &[&str]| -> (bool, String) {
        let mut args: Vec<&OsStr> = vec![
            "export".as_ref(),
            "--checkpoint".as_ref(),
            ck.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        args.extend(more.iter().map(OsStr::new));
        tessera(&args)
    };
    let whole = dir.with_extension("whole");
    let (ok, text) = export(&whole, &[]);
    println!("{text}");
    assert!(ok, "{text}");
    assert!(text.contains("1 weights file of"), "{text}");
    assert_eq!(
        std::fs::read(whole.join("model.safetensors")).unwrap(),
        std::fs::read(ck.join("model.safetensors")).unwrap(),
        "one file: the checkpoint's own weights file"
    );
    assert!(whole.join("config.json").is_file());
    assert!(!whole.join("model.safetensors.index.json").exists());
    assert_eq!(eval(&whole, &held_out), want);

    // The run's tokenizer (kept beside its checkpoints) goes with it; the weights are cut.
    std::fs::write(dir.join("checkpoints/tokenizer.json"), b"{\"model\":{}}").unwrap();
    let cut = dir.with_extension("cut");
    let (ok, text) = export(&cut, &["--max-file-size", "64KiB"]);
    println!("{text}");
    assert!(ok, "{text}");
    let files: Vec<String> = std::fs::read_dir(&cut)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("model-"))
        .collect();
    assert!(files.len() > 2, "{files:?}");
    assert!(!cut.join("model.safetensors").exists());
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cut.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let named: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(named.len(), files.len(), "{named:?} {files:?}");
    assert_eq!(
        std::fs::read(cut.join("tokenizer.json")).unwrap(),
        b"{\"model\":{}}"
    );
    assert_eq!(
        eval(&cut, &held_out),
        want,
        "the cut weights evaluate alike"
    );

    // A file of a cut checkpoint missing: named, not silently zero.
    let gone = cut.join(files.iter().min().unwrap());
    std::fs::remove_file(&gone).unwrap();
    let (ok, text) = tessera(&[
        "eval".as_ref(),
        "--checkpoint".as_ref(),
        cut.as_os_str(),
        "--data".as_ref(),
        held_out.as_os_str(),
    ]);
    assert!(!ok && text.contains(&gone.display().to_string()), "{text}");

    // A folder in the way: refused, left as it was.
    let (ok, text) = export(&whole, &[]);
    assert!(!ok && text.contains("is not empty"), "{text}");
    assert!(whole.join("model.safetensors").is_file());
    let (ok, text) = export(&dir.with_extension("zero"), &["--max-file-size", "0"]);
    assert!(!ok && text.contains("must be a positive"), "{text}");
}
