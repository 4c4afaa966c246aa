//! A model with tied embeddings (`tie_word_embeddings: true`, as Llama 3.2 1B/3B and SmolLM2)
//! through the real binaries: a SparseLoCo whole-model run of the tiny byte-level shape with a
//! tied head trains with three native workers; its checkpoints leave out `lm_head.weight` as
//! transformers writes such a model; `tessera verify` replays every round from the log; `eval`
//! finds the held-out loss fallen and `generate` continues a prompt from the last checkpoint.

mod common;

use common::{checkpoint, data, scratch, train_to_the_end};

const ROUNDS: u64 = 6;

/// The tensor names in a safetensors file's header (8 bytes of length, then JSON).
fn tensor_names(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect()
}

#[test]
fn a_tied_model_trains_checkpoints_verifies_evaluates_and_generates() {
    let dir = scratch("tied");
    let cfg: serde_json::Value = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 176,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "hidden_act": "silu", "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let run = format!(
        "name = \"tied\"\nseed = 3\nrounds = {ROUNDS}\n[model]\nconfig = \"config.json\"\n\
         [data]\nbuiltin = true\n[train]\nreplicas = 3\ninner_steps = 4\nbatch = 4\nseq = 64\n\
         sync = \"sparse\"\nunit_deadline_secs = 60\nsilence_secs = 30\n"
    );
    let data_dir = train_to_the_end(&dir, &run);

    let checkpoints = data_dir.join("checkpoints");
    let last = checkpoint(&checkpoints, ROUNDS);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(last.join("config.json")).unwrap()).unwrap();
    assert_eq!(written["tie_word_embeddings"], true);
    let names = tensor_names(&last.join("model.safetensors"));
    assert!(!names.contains(&"lm_head.weight".to_string()), "{names:?}");
    assert!(names.contains(&"model.embed_tokens.weight".to_string()));

    let (ok, text) = common::tessera(&["verify", "--log", data_dir.to_str().unwrap()]);
    println!("{text}");
    assert!(ok, "the tied run's log verifies: {text}");
    assert!(
        text.contains(&format!(
            "replayed {ROUNDS} closed versions from checkpoint 0 by the run's rules"
        )),
        "{text}"
    );

    let held_out = data("held-out.txt");
    let loss = |ck: &std::path::Path| -> f64 {
        let (ok, text) = common::tessera(&[
            "eval",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--data",
            held_out.to_str().unwrap(),
        ]);
        assert!(ok, "{text}");
        text.lines().last().unwrap().trim().parse().unwrap()
    };
    let (before, after) = (loss(&checkpoint(&checkpoints, 0)), loss(&last));
    println!("held-out loss {before:.4} -> {after:.4}");
    assert!(after < before - 0.5, "held-out loss {before} -> {after}");

    let (ok, text) = common::tessera(&[
        "generate",
        "--checkpoint",
        last.to_str().unwrap(),
        "--prompt",
        "The ",
        "--max-tokens",
        "20",
    ]);
    println!("{text}");
    assert!(ok, "{text}");
    assert!(text.starts_with("The "), "{text}");
    assert!(text.contains("20 new tokens after a prompt of 4"), "{text}");
}
