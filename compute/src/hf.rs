//! Hugging Face interchange: `config.json` of `LlamaForCausalLM` (as transformers 4.x and 5.x
//! write it) and `model.safetensors`, so checkpoints move between Tessera and transformers
//! unchanged.

use std::borrow::Cow;

use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::ComputeError;
use crate::reference::ModelParams;

fn bad(msg: impl Into<String>) -> ComputeError {
    ComputeError::Checkpoint(msg.into())
}

impl ModelConfig {
    /// Reads a transformers `config.json` of a LLaMA model. `rope_theta` is read at the top level
    /// (transformers 4.x) or under `rope_parameters` (5.x). Features this model does not have
    /// (biases, RoPE scaling) are refused rather than ignored.
    pub fn from_hf_json(text: &str) -> Result<Self, ComputeError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("config.json is not JSON: {e}")))?;
        let int = |k: &str| -> Result<Option<usize>, ComputeError> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| bad(format!("config.json: {k} must be a non-negative integer"))),
            }
        };
        let need = |k: &str| -> Result<usize, ComputeError> {
            int(k)?.ok_or_else(|| bad(format!("config.json: missing {k}")))
        };
        if let Some(t) = v.get("model_type").and_then(Value::as_str) {
            if t != "llama" {
                return Err(bad(format!(
                    "config.json: model_type {t:?} is not \"llama\""
                )));
            }
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if v.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(bad(format!(
                    "config.json: {flag} = true is not supported (Tessera's LLaMA has no biases)"
                )));
            }
        }
        // transformers' default is tied (`PretrainedConfig`), but `LlamaConfig` defaults to
        // untied, and every LLaMA config.json names it.
        let tie = match v.get("tie_word_embeddings") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(bad(
                    "config.json: tie_word_embeddings must be true or false",
                ))
            }
        };
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(bad(format!(
                    "config.json: hidden_act {act:?} is not supported, only \"silu\""
                )));
            }
        }
        let rope = v
            .get("rope_parameters")
            .or_else(|| v.get("rope_scaling"))
            .filter(|r| !r.is_null());
        if let Some(kind) = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(Value::as_str)
        {
            if kind != "default" {
                return Err(bad(format!(
                    "config.json: rope_type {kind:?} is not supported, only \"default\""
                )));
            }
        }
        let theta = v
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| {
                rope.and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10000.0);
        let hidden = need("hidden_size")?;
        let heads = need("num_attention_heads")?;
        let cfg = ModelConfig {
            vocab_size: need("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: need("intermediate_size")?,
            num_hidden_layers: need("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: int("num_key_value_heads")?.unwrap_or(heads),
            head_dim: int("head_dim")?.unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            rope_theta: theta,
            max_position_embeddings: int("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: tie,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A `config.json` that transformers 4.x and 5.x both load as this model.
    pub fn to_hf_json(&self) -> String {
        let v = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
            "dtype": "float32",
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

/// Expected shape of every tensor of the model, in [`ModelParams::named`] order.
pub fn tensor_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let d = cfg.hidden_size;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, d],
    )];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![d]));
        out.push((
            format!("{p}.self_attn.q_proj.weight"),
            vec![cfg.q_width(), d],
        ));
        out.push((
            format!("{p}.self_attn.k_proj.weight"),
            vec![cfg.kv_width(), d],
        ));
        out.push((
            format!("{p}.self_attn.v_proj.weight"),
            vec![cfg.kv_width(), d],
        ));
        out.push((
            format!("{p}.self_attn.o_proj.weight"),
            vec![d, cfg.q_width()],
        ));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        out.push((
            format!("{p}.mlp.gate_proj.weight"),
            vec![cfg.intermediate_size, d],
        ));
        out.push((
            format!("{p}.mlp.up_proj.weight"),
            vec![cfg.intermediate_size, d],
        ));
        out.push((
            format!("{p}.mlp.down_proj.weight"),
            vec![d, cfg.intermediate_size],
        ));
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, d]));
    out
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: renormalise.
            let mut e = 127 - 15 + 1;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Decodes a tensor of f32, bf16 or f16 little-endian values to f32.
pub fn decode_f32(dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, ComputeError> {
    match dtype {
        Dtype::F32 => Ok(data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Dtype::BF16 => Ok(data
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect()),
        Dtype::F16 => Ok(data
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect()),
        other => Err(bad(format!(
            "dtype {other:?} is not a float type Tessera reads"
        ))),
    }
}

/// The head's tensor name, which a checkpoint of a model with tied embeddings leaves out.
pub(crate) const HEAD: &str = "lm_head.weight";

/// Reads every parameter of the model from `model.safetensors` bytes (f32, bf16 or f16).
/// Missing, extra-shaped or non-finite tensors are errors. With tied embeddings the head is the
/// embedding (a checkpoint that holds `lm_head.weight` anyway must hold the same values).
pub fn params_from_safetensors(
    cfg: &ModelConfig,
    bytes: &[u8],
) -> Result<ModelParams<f32>, ComputeError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("model.safetensors: {e}")))?;
    params_from_tensors(cfg, "model.safetensors", |name| Ok(st.tensor(name).ok()))
}

/// Every parameter of the model from the tensors `lookup` finds by name (`None`: not there) in
/// the checkpoint `what` names, as [`params_from_safetensors`] reads them.
pub(crate) fn params_from_tensors<'a>(
    cfg: &ModelConfig,
    what: &str,
    lookup: impl Fn(&str) -> Result<Option<TensorView<'a>>, ComputeError>,
) -> Result<ModelParams<f32>, ComputeError> {
    let mut params = ModelParams::<f32>::zeros(cfg);
    for ((name, shape), slot) in tensor_shapes(cfg).into_iter().zip(params.tensors_mut()) {
        let found = lookup(&name)?;
        if cfg.tie_word_embeddings && name == HEAD && found.is_none() {
            continue;
        }
        let t = found.ok_or_else(|| bad(format!("{what} has no tensor {name}")))?;
        if t.shape() != shape.as_slice() {
            return Err(bad(format!(
                "{name} has shape {:?}, the config says {shape:?}",
                t.shape()
            )));
        }
        let v = decode_f32(t.dtype(), t.data())?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(bad(format!("{name} holds NaN or infinity")));
        }
        *slot = v;
    }
    if cfg.tie_word_embeddings {
        if lookup(HEAD)?.is_some() && params.head != params.embed {
            return Err(bad(
                "the config ties the embeddings, but lm_head.weight differs from \
                 model.embed_tokens.weight",
            ));
        }
        params.tie();
    }
    Ok(params)
}

pub(crate) struct F32View<'a> {
    shape: Vec<usize>,
    pub(crate) data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Writes every parameter as f32 `model.safetensors` bytes in Hugging Face naming (with tied
/// embeddings, without `lm_head.weight`, as transformers writes such a model).
pub fn params_to_safetensors(
    cfg: &ModelConfig,
    params: &ModelParams<f32>,
) -> Result<Vec<u8>, ComputeError> {
    serialize_f32(f32_views(cfg, params))
}

/// Every parameter as a named f32 view in Hugging Face naming, in model order (with tied
/// embeddings, without `lm_head.weight`).
pub(crate) fn f32_views<'a>(
    cfg: &ModelConfig,
    params: &'a ModelParams<f32>,
) -> Vec<(String, F32View<'a>)> {
    tensor_shapes(cfg)
        .into_iter()
        .zip(params.named())
        .filter(|((name, _), _)| !(cfg.tie_word_embeddings && name == HEAD))
        .map(|((name, shape), (_, data))| (name, F32View { shape, data }))
        .collect()
}

/// `views` as safetensors bytes, with the metadata transformers writes (`format: pt`).
pub(crate) fn serialize_f32(views: Vec<(String, F32View)>) -> Result<Vec<u8>, ComputeError> {
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| bad(e.to_string()))
}
