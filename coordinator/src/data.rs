//! Training data from local files: plain text, JSON Lines (one object per line, a text field)
//! or Parquet (a string column), tokenized byte-level by default or with a Hugging Face
//! `tokenizer.json` through the `tokenizers` crate. Documents are concatenated into one token
//! stream; nothing is downloaded.

use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

/// Why data could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file that cannot be read.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A record without the text field, or not text.
    #[error("{path}, record {record}: {why}")]
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based record (line or row) number.
        record: usize,
        /// Why.
        why: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// File formats; in a run configuration `text`, `jsonl` or `parquet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub enum Format {
    /// The whole file is one document.
    #[serde(rename = "text")]
    Text,
    /// One JSON object per line.
    #[serde(rename = "jsonl")]
    JsonLines,
    /// A Parquet table.
    #[serde(rename = "parquet")]
    Parquet,
}

impl Format {
    /// `given`, or when `None` the one the file extension names (`.jsonl`, `.ndjson` and
    /// `.json` are JSON Lines, `.parquet` Parquet, anything else text).
    pub fn pick(given: Option<Format>, path: &Path) -> Format {
        given.unwrap_or_else(
            || match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
                "jsonl" | "ndjson" | "json" => Format::JsonLines,
                "parquet" => Format::Parquet,
                _ => Format::Text,
            },
        )
    }
}

fn file_err(path: &Path, why: impl ToString) -> DataError {
    DataError::File {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// The documents of a file; `field` names the text field (JSON Lines, Parquet).
pub fn documents(path: &Path, format: Format, field: &str) -> Result<Vec<String>, DataError> {
    match format {
        Format::Text => Ok(vec![
            std::fs::read_to_string(path).map_err(|e| file_err(path, e))?
        ]),
        Format::JsonLines => {
            let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
            let mut docs = Vec::new();
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let rec = |why: String| DataError::Record {
                    path: path.to_path_buf(),
                    record: i + 1,
                    why,
                };
                let v: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| rec(format!("not JSON: {e}")))?;
                let s = v
                    .get(field)
                    .and_then(|s| s.as_str())
                    .ok_or_else(|| rec(format!("no string field {field:?}")))?;
                docs.push(s.to_string());
            }
            Ok(docs)
        }
        Format::Parquet => {
            let f = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
            let reader = SerializedFileReader::new(f).map_err(|e| file_err(path, e))?;
            let has = reader
                .metadata()
                .file_metadata()
                .schema_descr()
                .columns()
                .iter()
                .any(|c| c.name() == field);
            if !has {
                return Err(file_err(path, format!("no column {field:?}")));
            }
            let mut docs = Vec::new();
            for (i, row) in reader.into_iter().enumerate() {
                let rec = |why: String| DataError::Record {
                    path: path.to_path_buf(),
                    record: i + 1,
                    why,
                };
                let row = row.map_err(|e| rec(e.to_string()))?;
                match row
                    .get_column_iter()
                    .find(|(name, _)| name.as_str() == field)
                    .map(|(_, v)| v)
                {
                    Some(Field::Str(s)) => docs.push(s.clone()),
                    Some(Field::Null) => {}
                    other => {
                        return Err(rec(format!(
                            "column {field:?} holds {other:?}, not a string"
                        )))
                    }
                }
            }
            Ok(docs)
        }
    }
}

/// A tokenizer.
pub enum Tokenizer {
    /// UTF-8 bytes are the token ids (vocabulary 256).
    Bytes,
    /// A Hugging Face `tokenizer.json`.
    Hf(Box<tokenizers::Tokenizer>),
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        tokenizers::Tokenizer::from_file(path)
            .map(|t| Tokenizer::Hf(Box::new(t)))
            .map_err(|e| file_err(path, e))
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::Hf(t) => t.get_vocab_size(true),
        }
    }

    /// The text of `ids` (special tokens left out; bytes that form no character as U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        match self {
            Tokenizer::Bytes => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .map(|&i| u8::try_from(i).unwrap_or(0xFF))
                    .collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Tokenizer::Hf(t) => t
                .decode(ids, true)
                .map_err(|e| DataError::Tokenizer(e.to_string())),
        }
    }

    /// Token ids of the documents, concatenated.
    pub fn encode(&self, docs: &[String]) -> Result<Vec<u32>, DataError> {
        let mut out = Vec::new();
        for d in docs {
            match self {
                Tokenizer::Bytes => out.extend(d.bytes().map(u32::from)),
                Tokenizer::Hf(t) => out.extend_from_slice(
                    t.encode(d.as_str(), true)
                        .map_err(|e| DataError::Tokenizer(e.to_string()))?
                        .get_ids(),
                ),
            }
        }
        Ok(out)
    }
}
