//! `tessera generate` end to end: the real binary continues the greedy fixture's prompt on the
//! golden checkpoint (written by Hugging Face transformers) and writes the fixture's tokens
//! (`compute/tests/fixtures/generate/greedy.json`, whose every step has a top-1/top-2 margin
//! the compute tests assert), as ids and as text; bad input is a clear error.

mod common;

use std::process::{Command, Output};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../compute/tests/fixtures/golden"
);
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../compute/tests/fixtures/generate/greedy.json"
);

fn generate(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["generate", "--checkpoint", GOLDEN])
        .args(args)
        .output()
        .expect("run tessera");
    println!("stdout: {}", String::from_utf8_lossy(&out.stdout));
    println!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The ids a successful `--ids` run printed.
fn ids_of(out: &Output) -> Vec<u32> {
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect()
}

fn fixture() -> (String, Vec<u32>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let prompt = v["prompt"].as_str().unwrap().to_string();
    let tokens = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    (prompt, tokens)
}

#[test]
fn greedy_ids_and_text_equal_the_fixture() {
    let (prompt, tokens) = fixture();
    let n = tokens.len().to_string();
    let out = generate(&["--prompt", &prompt, "--max-tokens", &n, "--ids"]);
    assert_eq!(ids_of(&out), tokens);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("greedy"), "says how it chooses: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{n} new tokens after a prompt of {}",
            prompt.len()
        )),
        "{stderr}"
    );
    // As text: the prompt, then the new tokens as bytes (all ASCII here), then a newline.
    let out = generate(&["--prompt", &prompt, "--max-tokens", &n]);
    assert!(out.status.success());
    let mut want = prompt.into_bytes();
    want.extend(tokens.iter().map(|&t| t as u8));
    want.push(b'\n');
    assert_eq!(out.stdout, want);
}

/// A word-level `tokenizer.json` whose word `wI` is token I, for the golden model's 67 ids.
fn word_tokenizer(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, common::word_tokenizer_json(67)).unwrap();
    path
}

#[test]
fn a_hugging_face_tokenizer_encodes_the_prompt_and_decodes_the_tokens() {
    let (prompt, tokens) = fixture();
    let dir = common::scratch("generate-tokenizer");
    let tok = word_tokenizer(&dir);
    // The fixture's prompt bytes as words: the same ids, so the same greedy tokens.
    let words: Vec<String> = prompt.bytes().map(|b| format!("w{b}")).collect();
    let n = tokens.len().to_string();
    let args = [
        "--prompt",
        &words.join(" "),
        "--max-tokens",
        &n,
        "--tokenizer",
        tok.to_str().unwrap(),
    ];
    let out = generate(&[&args[..], &["--ids"]].concat());
    assert_eq!(ids_of(&out), tokens);
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenizer.json"));
    let out = generate(&args);
    assert!(out.status.success());
    let all: Vec<String> = words
        .into_iter()
        .chain(tokens.iter().map(|t| format!("w{t}")))
        .collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), all.join(" ") + "\n");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sampling_repeats_by_seed() {
    let run = |seed: &str| {
        let out = generate(&[
            "--prompt",
            "1+1=",
            "--temperature",
            "1.2",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--ids",
        ]);
        assert!(out.status.success());
        out.stdout
    };
    assert_eq!(run("5"), run("5"));
    assert_ne!(run("5"), run("6"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let cases: [(&[&str], &str); 5] = [
        // Byte 'x' (120) is outside the golden model's vocabulary of 67.
        (
            &["--prompt", "xyz"],
            "token 120 of the prompt (byte-level tokens) is outside",
        ),
        (&["--prompt", ""], "the prompt is empty"),
        (
            &["--prompt", &"1".repeat(64)],
            "the model's context is 64 positions",
        ),
        (&["--prompt", "1", "--temperature=-1"], "temperature -1"),
        (
            &["--prompt", "1", "--temperature", "1", "--top-p", "0"],
            "top-p 0",
        ),
    ];
    for (args, want) in cases {
        let out = generate(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["generate", "--checkpoint", "/nonexistent", "--prompt", "a"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}
