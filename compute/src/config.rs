//! Model hyperparameters of a LLaMA-style decoder, named as Hugging Face's `LlamaConfig` names them.

use crate::error::ComputeError;

/// Shape and numerics of a decoder-only LLaMA-style model (Hugging Face `LlamaForCausalLM`).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Vocabulary size (rows of the embedding, rows of the head).
    pub vocab_size: usize,
    /// Residual width `d`.
    pub hidden_size: usize,
    /// SwiGLU hidden width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    pub num_attention_heads: usize,
    /// Key/value heads per layer (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Longest sequence the model is trained on.
    pub max_position_embeddings: usize,
    /// Whether the head is the embedding matrix (`lm_head.weight` is
    /// `model.embed_tokens.weight`): Llama 3.2 1B/3B, SmolLM2. Tessera keeps both tensors, equal
    /// at every step: the one matrix's gradient is the sum of its embedding and head parts,
    /// counted once in the global norm, and one optimizer state moves both.
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// Query heads that share one key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Width of the concatenated query heads.
    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// The same shape with the head as a tensor of its own: how gradients and aggregates of a
    /// model with tied embeddings are stored, since their embedding and head parts differ.
    pub fn untied(&self) -> Self {
        ModelConfig {
            tie_word_embeddings: false,
            ..self.clone()
        }
    }

    /// Checks that the shape is internally consistent.
    pub fn validate(&self) -> Result<(), ComputeError> {
        let bad = |why: &str| Err(ComputeError::InvalidConfig(why.to_string()));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.intermediate_size == 0
            || self.num_hidden_layers == 0
            || self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || self.head_dim == 0
        {
            return bad("every size must be positive");
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad("num_attention_heads must be a multiple of num_key_value_heads");
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad("head_dim must be even for RoPE");
        }
        if self.vocab_size > u32::MAX as usize - 1 {
            return bad("vocab_size must fit in u32");
        }
        if self.rms_norm_eps.is_nan()
            || self.rms_norm_eps <= 0.0
            || self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
        {
            return bad("rms_norm_eps and rope_theta must be positive");
        }
        Ok(())
    }

    /// Total number of parameters (a tied embedding and head counted once; no biases).
    pub fn parameter_count(&self) -> u64 {
        let d = self.hidden_size as u64;
        let attn = d * (self.q_width() as u64) * 2 + d * (self.kv_width() as u64) * 2;
        let mlp = 3 * d * self.intermediate_size as u64;
        let layer = attn + mlp + 2 * d;
        let tables = if self.tie_word_embeddings { 1 } else { 2 };
        tables * self.vocab_size as u64 * d + self.num_hidden_layers as u64 * layer + d
    }

    /// The Covenant-72B shape (docs/ARCHITECTURE.md, "The 72B plan on paper"): 80 layers, d=8192, 64
    /// query heads over 8 key/value heads of width 128, SwiGLU width 28672, vocabulary 262144,
    /// untied embedding and head; 72.75B parameters.
    pub fn covenant_72b() -> Self {
        ModelConfig {
            vocab_size: 262_144,
            hidden_size: 8192,
            intermediate_size: 28_672,
            num_hidden_layers: 80,
            num_attention_heads: 64,
            num_key_value_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
        }
    }

    /// A tiny configuration used by tests and examples.
    pub fn tiny() -> Self {
        ModelConfig {
            vocab_size: 67,
            hidden_size: 24,
            intermediate_size: 40,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 6,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ModelConfig;

    #[test]
    fn covenant_72b_has_72_75b_parameters() {
        let cfg = ModelConfig::covenant_72b();
        cfg.validate().expect("valid shape");
        assert_eq!(cfg.parameter_count(), 72_747_327_488);
        let rel = (cfg.parameter_count() as f64 - 72.75e9).abs() / 72.75e9;
        assert!(rel < 1e-3, "{} is not ~72.75B", cfg.parameter_count());
    }
}
