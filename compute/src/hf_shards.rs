//! Checkpoints cut into several safetensors files, as Hugging Face writes a large model: files
//! `model-0000i-of-0000N.safetensors` of at most a given size each (a tensor larger than that
//! alone in its file) and `model.safetensors.index.json`, which maps every tensor to its file;
//! a model that fits in one file is written as `model.safetensors` alone. The reader takes the
//! files an index names and finds each tensor in exactly one of them.

use std::collections::BTreeMap;

use safetensors::tensor::SafeTensors;
use serde_json::json;

use crate::config::ModelConfig;
use crate::error::ComputeError;
use crate::hf::{f32_views, params_from_tensors, serialize_f32, F32View};
use crate::reference::ModelParams;

/// The index file of a checkpoint cut into several files.
pub const INDEX: &str = "model.safetensors.index.json";

/// The most files an index may name (a reader refuses more before reading any).
pub const MAX_SHARD_FILES: usize = 100_000;

fn bad(msg: impl Into<String>) -> ComputeError {
    ComputeError::Checkpoint(msg.into())
}

/// A checkpoint's files: each file's name and bytes, and the index's text when there are
/// several.
#[derive(Debug)]
pub struct Sharded {
    /// `(file name, safetensors bytes)`, in order.
    pub files: Vec<(String, Vec<u8>)>,
    /// `model.safetensors.index.json`'s text, for more than one file.
    pub index: Option<String>,
}

/// Every parameter as f32 safetensors in Hugging Face naming (with tied embeddings, without
/// `lm_head.weight`), in files of at most `max_file_bytes` of tensor data each, tensors in
/// model order.
pub fn params_to_shards(
    cfg: &ModelConfig,
    params: &ModelParams<f32>,
    max_file_bytes: u64,
) -> Result<Sharded, ComputeError> {
    let tensors = f32_views(cfg, params);
    let mut groups: Vec<Vec<(String, F32View)>> = vec![Vec::new()];
    let mut size = 0u64;
    let mut total = 0u64;
    for (name, view) in tensors {
        let bytes = view.data.len() as u64 * 4;
        total += bytes;
        let last = groups.last_mut().expect("a group");
        if !last.is_empty() && size + bytes > max_file_bytes {
            groups.push(Vec::new());
            size = 0;
        }
        size += bytes;
        groups.last_mut().expect("a group").push((name, view));
    }
    let n = groups.len();
    let mut files = Vec::with_capacity(n);
    let mut map = BTreeMap::new();
    for (i, group) in groups.into_iter().enumerate() {
        let file = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        };
        for (name, _) in &group {
            map.insert(name.clone(), file.clone());
        }
        files.push((file, serialize_f32(group)?));
    }
    let index = (n > 1)
        .then(|| json!({ "metadata": { "total_size": total }, "weight_map": map }).to_string());
    Ok(Sharded { files, index })
}

/// The distinct files an index's text names, sorted by name; refused when it is not
/// an index, names a file outside its folder, or names more than [`MAX_SHARD_FILES`].
pub fn index_files(index: &str) -> Result<Vec<String>, ComputeError> {
    let v: serde_json::Value =
        serde_json::from_str(index).map_err(|e| bad(format!("{INDEX}: {e}")))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| bad(format!("{INDEX} has no weight_map")))?;
    let mut files = std::collections::BTreeSet::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("{INDEX}: the file of {name} is not a string")))?;
        let plain = !file.is_empty()
            && !file.starts_with('.')
            && file.ends_with(".safetensors")
            && file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !plain {
            return Err(bad(format!(
                "{INDEX}: {file:?} is not a safetensors file in the checkpoint's folder"
            )));
        }
        files.insert(file.to_string());
        if files.len() > MAX_SHARD_FILES {
            return Err(bad(format!(
                "{INDEX} names more than {MAX_SHARD_FILES} files"
            )));
        }
    }
    Ok(files.into_iter().collect())
}

/// Every parameter of the model from the files of a checkpoint cut into several (`(name,
/// bytes)` each), as [`crate::hf::params_from_safetensors`] reads one; a tensor found in two
/// files is an error.
pub fn params_from_shards(
    cfg: &ModelConfig,
    files: &[(String, Vec<u8>)],
) -> Result<ModelParams<f32>, ComputeError> {
    let parsed = files
        .iter()
        .map(|(name, bytes)| {
            SafeTensors::deserialize(bytes)
                .map(|st| (name.as_str(), st))
                .map_err(|e| bad(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    params_from_tensors(cfg, "the checkpoint's files", |tensor| {
        let mut found = None;
        for (file, st) in &parsed {
            if let Ok(t) = st.tensor(tensor) {
                if found.is_some() {
                    return Err(bad(format!(
                        "{tensor} is in more than one file ({file} too)"
                    )));
                }
                found = Some(t);
            }
        }
        Ok(found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::{tensor_shapes, HEAD};

    #[test]
    fn a_model_cut_into_files_reads_back_as_it_was() {
        let cfg = ModelConfig::tiny();
        let params = ModelParams::random(&cfg, 7);
        let whole = params_to_shards(&cfg, &params, u64::MAX).unwrap();
        assert_eq!(whole.files.len(), 1);
        assert_eq!(whole.files[0].0, "model.safetensors");
        assert!(whole.index.is_none());
        assert_eq!(
            whole.files[0].1,
            crate::hf::params_to_safetensors(&cfg, &params).unwrap(),
            "one file is the plain checkpoint"
        );
        let biggest = params
            .named()
            .iter()
            .map(|(_, v)| v.len() * 4)
            .max()
            .unwrap() as u64;
        let cut = params_to_shards(&cfg, &params, biggest).unwrap();
        let n = cut.files.len();
        assert!(n > 3, "{n} files");
        assert_eq!(cut.files[0].0, format!("model-00001-of-{n:05}.safetensors"));
        let index = cut.index.as_deref().expect("an index");
        let names = index_files(index).unwrap();
        assert_eq!(
            names,
            cut.files.iter().map(|f| f.0.clone()).collect::<Vec<_>>()
        );
        let v: serde_json::Value = serde_json::from_str(index).unwrap();
        assert_eq!(
            v["weight_map"].as_object().unwrap().len(),
            tensor_shapes(&cfg).len()
        );
        let total: u64 = params.named().iter().map(|(_, t)| t.len() as u64 * 4).sum();
        assert_eq!(v["metadata"]["total_size"], total);
        assert_eq!(params_from_shards(&cfg, &cut.files).unwrap(), params);
        // A file missing: its tensors are missing.
        let err = params_from_shards(&cfg, &cut.files[1..]).unwrap_err();
        assert!(err.to_string().contains("has no tensor"), "{err}");
        // A tensor in two files is refused.
        let mut twice = cut.files.clone();
        twice.push(whole.files[0].clone());
        let err = params_from_shards(&cfg, &twice).unwrap_err();
        assert!(err.to_string().contains("more than one file"), "{err}");
    }

    #[test]
    fn tied_models_leave_the_head_out_of_every_file() {
        let cfg = ModelConfig {
            tie_word_embeddings: true,
            ..ModelConfig::tiny()
        };
        let params = ModelParams::random(&cfg, 3);
        let cut = params_to_shards(&cfg, &params, 1).unwrap();
        assert!(!cut.index.unwrap().contains(HEAD));
        assert_eq!(params_from_shards(&cfg, &cut.files).unwrap(), params);
    }

    #[test]
    fn an_index_naming_files_elsewhere_is_refused() {
        for file in [
            "../x.safetensors",
            "/etc/passwd",
            "a/b.safetensors",
            "x.bin",
            "",
        ] {
            let index = json!({ "weight_map": { "t": file } }).to_string();
            assert!(index_files(&index).is_err(), "{file}");
        }
        assert!(index_files("{}").is_err());
        let ok = json!({ "weight_map": { "a": "m-1.safetensors", "b": "m-1.safetensors" } });
        assert_eq!(
            index_files(&ok.to_string()).unwrap(),
            vec!["m-1.safetensors"]
        );
    }
}
