//! Training data from text, JSON Lines and Parquet files, byte-level or through a Hugging Face
//! `tokenizer.json`, resolved by the run configuration; bad records are clear errors.

use std::collections::HashMap;
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use tessera_coordinator::config::RunConfig;
use tessera_coordinator::data::{documents, Format, Tokenizer};

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-data-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_parquet(path: &std::path::Path, docs: &[&str]) {
    let schema = Arc::new(
        parse_message_type("message docs { REQUIRED BYTE_ARRAY text (UTF8); REQUIRED INT32 n; }")
            .unwrap(),
    );
    let mut w = SerializedFileWriter::new(
        std::fs::File::create(path).unwrap(),
        schema,
        Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let vals: Vec<ByteArray> = docs.iter().map(|d| ByteArray::from(*d)).collect();
    col.typed::<ByteArrayType>()
        .write_batch(&vals, None, None)
        .unwrap();
    col.close().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let ns: Vec<i32> = (0..docs.len() as i32).collect();
    col.typed::<parquet::data_type::Int32Type>()
        .write_batch(&ns, None, None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
}

/// Saves a word-level `tokenizer.json` with whitespace pre-tokenization; word i gets id i.
fn word_level(path: &std::path::Path, words: &[&str]) {
    let vocab: HashMap<String, u32> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut t = tokenizers::Tokenizer::new(model);
    t.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    t.save(path, false).unwrap();
}

#[test]
fn text_jsonl_and_parquet_documents() {
    let d = dir();
    std::fs::write(d.join("a.txt"), "plain text").unwrap();
    assert_eq!(
        documents(&d.join("a.txt"), Format::Text, "text").unwrap(),
        vec!["plain text"]
    );
    std::fs::write(
        d.join("b.jsonl"),
        "{\"text\": \"one\"}\n\n{\"text\": \"two\", \"id\": 3}\n",
    )
    .unwrap();
    let fmt = Format::pick(None, &d.join("b.jsonl"));
    assert_eq!(
        documents(&d.join("b.jsonl"), fmt, "text").unwrap(),
        vec!["one", "two"]
    );
    std::fs::write(
        d.join("bad.jsonl"),
        "{\"text\": \"one\"}\n{\"body\": \"two\"}\n",
    )
    .unwrap();
    let e = documents(&d.join("bad.jsonl"), Format::JsonLines, "text")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("record 2") && e.contains("no string field"),
        "{e}"
    );
    write_parquet(&d.join("c.parquet"), &["first row", "second row"]);
    let fmt = Format::pick(None, &d.join("c.parquet"));
    assert_eq!(
        documents(&d.join("c.parquet"), fmt, "text").unwrap(),
        vec!["first row", "second row"]
    );
    assert!(documents(&d.join("c.parquet"), fmt, "body")
        .unwrap_err()
        .to_string()
        .contains("no column"));
    assert!(documents(&d.join("c.parquet"), fmt, "n")
        .unwrap_err()
        .to_string()
        .contains("not a string"));
    assert_eq!(
        Format::pick(Some(Format::Parquet), &d.join("x.txt")),
        Format::Parquet
    );
    assert_eq!(Format::pick(None, &d.join("x")), Format::Text);
    // An unknown format is refused when the configuration is read, naming the known ones.
    let e = RunConfig::from_toml("[data]\nformat = \"csv\"").unwrap_err();
    assert!(
        matches!(&e, tessera_coordinator::config::ConfigError::Parse(m) if m.contains("jsonl")),
        "{e}"
    );
}

#[test]
fn hugging_face_tokenizer_json() {
    let d = dir();
    word_level(
        &d.join("tokenizer.json"),
        &["[UNK]", "the", "lamp", "was", "lit"],
    );
    let tok = Tokenizer::from_file(&d.join("tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), 5);
    assert_eq!(
        tok.encode(&["the lamp was lit".into(), "the moon".into()])
            .unwrap(),
        vec![1, 2, 3, 4, 1, 0]
    );
    assert_eq!(
        Tokenizer::Bytes.encode(&["hi".into()]).unwrap(),
        vec![104, 105]
    );
    // Through the run config: JSON Lines data, this tokenizer, a model with a 16-token vocabulary.
    let cfg_json = tessera_compute::ModelConfig {
        vocab_size: 16,
        max_position_embeddings: 4,
        tie_word_embeddings: false,
        ..tessera_compute::ModelConfig::tiny()
    }
    .to_hf_json();
    std::fs::write(d.join("config.json"), cfg_json).unwrap();
    let lines: String = (0..40)
        .map(|i| format!("{{\"text\": \"the lamp was lit {i}\"}}\n"))
        .collect();
    std::fs::write(d.join("data.jsonl"), lines).unwrap();
    let toml = "[model]\nconfig = \"config.json\"\n[data]\npath = \"data.jsonl\"\ntokenizer = \"tokenizer.json\"\n[train]\nseq = 4\nbatch = 2\n";
    let (spec, _) = RunConfig::from_toml(toml).unwrap().resolve(&d).unwrap();
    assert_eq!(&spec.tokens[..5], &[1, 2, 3, 4, 0]);
    // Byte-level data into that 16-token model is refused.
    let bytes = "[model]\nconfig = \"config.json\"\n[data]\npath = \"data.jsonl\"\n";
    let e = RunConfig::from_toml(bytes)
        .unwrap()
        .resolve(&d)
        .expect_err("refused");
    assert!(
        matches!(
            e,
            tessera_coordinator::config::ConfigError::Vocabulary { model: 16, .. }
        ),
        "{e}"
    );
    assert!(
        RunConfig::from_toml("[data]\nbogus = 1").is_err(),
        "unknown fields are errors"
    );
}

/// `init_from` starts a run from a checkpoint transformers wrote (the golden fixture), reading
/// its transformers-5 `config.json`.
#[test]
fn init_from_a_transformers_checkpoint() {
    let d = dir();
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../compute/tests/fixtures/golden");
    word_level(&d.join("tok2.json"), &["[UNK]", "a"]);
    std::fs::write(d.join("a.txt"), "a ".repeat(500)).unwrap();
    let toml = format!("[model]\ninit_from = {:?}\n[data]\npath = \"a.txt\"\ntokenizer = \"tok2.json\"\n[train]\nseq = 8\n", golden.display().to_string());
    let (spec, weights) = RunConfig::from_toml(&toml).unwrap().resolve(&d).unwrap();
    assert_eq!(
        (spec.model.vocab_size, spec.model.num_key_value_heads),
        (67, 3)
    );
    let st = std::fs::read(golden.join("model.safetensors")).unwrap();
    assert_eq!(
        weights,
        tessera_compute::hf::params_from_safetensors(&spec.model, &st).unwrap()
    );
    let both = "[model]\npreset = \"tiny-byte\"\ninit_from = \"x\"\n";
    assert!(
        matches!(
            RunConfig::from_toml(both).unwrap().resolve(&d),
            Err(tessera_coordinator::config::ConfigError::ModelSources)
        ),
        "one model source only"
    );
}
