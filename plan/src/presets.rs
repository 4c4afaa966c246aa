//! Named model shapes the planner knows.

use tessera_compute::ModelConfig;

/// The names [`preset`] accepts.
pub const PRESETS: [&str; 2] = ["covenant-72b", "tiny"];

/// The model shape called `name` (`covenant-72b` or `tiny`), if there is one.
pub fn preset(name: &str) -> Option<ModelConfig> {
    match name {
        "covenant-72b" => Some(ModelConfig::covenant_72b()),
        "tiny" => Some(ModelConfig::tiny()),
        _ => None,
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
