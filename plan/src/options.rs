//! What the planner assumes about a run and its contributors, with defaults and validation.

use tessera_compute::ModelConfig;

use crate::PlanError;

/// One GiB.
pub const GIB: u64 = 1 << 30;
/// One MiB.
pub const MIB: u64 = 1 << 20;

/// The run's and the contributors' parameters the plan is computed for.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanOptions {
    /// Tokens per micro-batch (one sequence).
    pub seq: usize,
    /// Memory budget of the smallest contributor's lease, in bytes: sizes the micro-shards.
    pub budget: u64,
    /// Bytes per activation element on the wire: 4 (f32), 2 (bf16) or 1 (int8).
    pub act_bytes: u64,
    /// Largest storage buffer binding, in bytes (WebGPU's default is 128 MiB).
    pub max_binding: u64,
    /// A contributor's link, bytes per second, shared by what it receives and sends.
    pub bandwidth: f64,
    /// The coordinator's link, bytes per second, shared by what it receives and sends.
    pub coordinator_bandwidth: f64,
    /// A contributor's sustained compute, FLOP per second.
    pub flops: f64,
    /// Micro-batches in flight per optimizer step.
    pub micro_batches: usize,
}

impl Default for PlanOptions {
    /// The 72B defaults: 2048-token sequences, a 0.6 GiB browser budget, bf16 activations,
    /// 128 MiB bindings, 100 Mbit/s contributors, a 10 Gbit/s coordinator, 1 TFLOP/s, 8
    /// micro-batches per step.
    fn default() -> Self {
        PlanOptions {
            seq: 2048,
            budget: GIB * 6 / 10,
            act_bytes: 2,
            max_binding: 128 * MIB,
            bandwidth: 100e6 / 8.0,
            coordinator_bandwidth: 10e9 / 8.0,
            flops: 1e12,
            micro_batches: 8,
        }
    }
}

impl PlanOptions {
    /// Checks every option against the model.
    pub fn validate(&self, model: &ModelConfig) -> Result<(), PlanError> {
        let bad = |name: &'static str, why: String| Err(PlanError::Option { name, why });
        if self.seq == 0 {
            return bad("seq", "a micro-batch needs at least one token".into());
        }
        if self.seq > model.max_position_embeddings {
            return bad(
                "seq",
                format!(
                    "{} tokens is longer than the model's {} positions",
                    self.seq, model.max_position_embeddings
                ),
            );
        }
        if self.budget == 0 {
            return bad("budget", "the memory budget must be positive".into());
        }
        if ![1, 2, 4].contains(&self.act_bytes) {
            return bad(
                "act_bytes",
                format!(
                    "{} bytes per activation; use 4 (f32), 2 (bf16) or 1 (int8)",
                    self.act_bytes
                ),
            );
        }
        if self.max_binding == 0 {
            return bad("max_binding", "the binding limit must be positive".into());
        }
        for (name, v) in [
            ("bandwidth", self.bandwidth),
            ("coordinator_bandwidth", self.coordinator_bandwidth),
            ("flops", self.flops),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return bad(name, format!("{v} must be positive and finite"));
            }
        }
        if self.micro_batches == 0 {
            return bad(
                "micro_batches",
                "a step needs at least one micro-batch".into(),
            );
        }
        Ok(())
    }
}
