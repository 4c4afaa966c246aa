//! A run trained with a Hugging Face tokenizer keeps it beside its checkpoints
//! (`checkpoints/tokenizer.json`), and `tessera generate` on any of its checkpoints finds it
//! there: the prompt is encoded and the new tokens decoded with the run's own vocabulary. A
//! fork of the run keeps the tokenizer its configuration names beside its own checkpoints.
//! Real `tessera coordinator` and three `tessera worker` processes train a one-layer model whose
//! 16-word vocabulary is a word-level tokenizer's.

mod common;

use common::{checkpoint, scratch, train_to_the_end};

const ROUNDS: u64 = 3;

#[test]
fn generate_finds_the_runs_tokenizer_beside_its_checkpoints() {
    let dir = scratch("tokenizer-run");
    let tokenizer = common::word_tokenizer_json(16);
    std::fs::write(dir.join("tokenizer.json"), &tokenizer).unwrap();
    let model = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 16, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 8, "hidden_act": "silu", "max_position_embeddings": 16,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), model.to_string()).unwrap();
    // A corpus the model can learn: the words counting up, over and over.
    let corpus: Vec<String> = (0..4000).map(|i| format!("w{}", 1 + i % 15)).collect();
    std::fs::write(dir.join("corpus.txt"), corpus.join(" ")).unwrap();
    let run = format!(
        "name = \"words\"\nseed = 3\nrounds = {ROUNDS}\n[model]\nconfig = \"config.json\"\n\
         [data]\npath = \"corpus.txt\"\ntokenizer = \"tokenizer.json\"\n[train]\nreplicas = 3\n\
         inner_steps = 2\nbatch = 2\nseq = 16\nunit_deadline_secs = 60\nsilence_secs = 30\n"
    );
    let data_dir = train_to_the_end(&dir, &run);

    let checkpoints = data_dir.join("checkpoints");
    assert_eq!(
        std::fs::read_to_string(checkpoints.join("tokenizer.json")).unwrap(),
        tokenizer,
        "the run keeps its tokenizer beside its checkpoints"
    );
    let last = checkpoint(&checkpoints, ROUNDS);
    let (ok, text) = common::tessera(&[
        "generate",
        "--checkpoint",
        last.to_str().unwrap(),
        "--prompt",
        "w1 w2 w3",
        "--max-tokens",
        "6",
    ]);
    println!("{text}");
    assert!(ok, "{text}");
    assert!(text.contains("checkpoints/tokenizer.json"), "{text}");
    let written = text.lines().next().unwrap();
    let words: Vec<&str> = written.split_whitespace().collect();
    assert_eq!(words.len(), 3 + 6, "the prompt and six words: {written:?}");
    assert_eq!(&words[..3], &["w1", "w2", "w3"]);
    assert!(
        words.iter().all(|w| w
            .strip_prefix('w')
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n < 16)),
        "every token decodes to a word of the vocabulary: {written:?}"
    );

    // A fork from version 2 (its configuration names the same tokenizer, as its data needs).
    let fork_toml = dir.join("fork.toml");
    std::fs::write(
        &fork_toml,
        run.replace("name = \"words\"", "name = \"words-fork\""),
    )
    .unwrap();
    let forked = dir.join("forked");
    let (ok, text) = common::tessera(&[
        "fork".as_ref(),
        "--log".as_ref(),
        data_dir.as_os_str(),
        "--at".as_ref(),
        "2".as_ref(),
        "--config".as_ref(),
        fork_toml.as_os_str(),
        "--data-dir".as_ref(),
        forked.as_os_str(),
    ]);
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read_to_string(forked.join("checkpoints/tokenizer.json")).unwrap(),
        tokenizer,
        "the fork keeps its tokenizer beside its checkpoints: {text}"
    );
}
