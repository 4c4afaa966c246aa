//! Named model shapes the planner knows.

use tessera_compute::ModelConfig;

/// The names [`preset`] accepts.
pub const PRESETS: [&str; 4] = ["covenant-72b", "tiny-byte", "small-byte", "tiny"];

/// The model shape called `name`, if there is one: `covenant-72b`, the byte-level run presets
/// `tiny-byte` (d 64, 2 layers) and `small-byte` (d 128, 4 layers), or the test shape `tiny`.
pub fn preset(name: &str) -> Option<ModelConfig> {
    match name {
        "covenant-72b" => Some(ModelConfig::covenant_72b()),
        "tiny-byte" => Some(byte_level(64, 2)),
        "small-byte" => Some(byte_level(128, 4)),
        "tiny" => Some(ModelConfig::tiny()),
        _ => None,
    }
}

/// A byte-level model (vocabulary 256) of width `d` and `layers` layers, heads of 16.
fn byte_level(d: usize, layers: usize) -> ModelConfig {
    let heads = d / 16;
    ModelConfig {
        vocab_size: 256,
        hidden_size: d,
        intermediate_size: (d * 8 / 3).div_ceil(8) * 8,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: heads / 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
    }
}

/// Default options for `model`: the 72B defaults, with the sequence no longer than the model's
/// positions.
pub fn default_options(model: &ModelConfig) -> crate::PlanOptions {
    let defaults = crate::PlanOptions::default();
    crate::PlanOptions {
        seq: defaults.seq.min(model.max_position_embeddings),
        ..defaults
    }
}
