//! What a micro-shard is: its kind and the range of the model it covers.

use std::fmt;
use std::ops::Range;

use crate::config::ModelConfig;
use crate::error::ComputeError;

/// One micro-shard of the model (see docs/ARCHITECTURE.md, "Words").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MicroShard {
    /// Embedding rows `rows` of the vocabulary.
    Embed {
        /// Vocabulary rows.
        rows: Range<usize>,
    },
    /// Attention of `layer` for key/value groups `groups` (with their query heads), including
    /// the layer's input RMSNorm.
    Attn {
        /// Layer index.
        layer: usize,
        /// Key/value head groups.
        groups: Range<usize>,
    },
    /// SwiGLU MLP of `layer` for hidden columns `cols`, including the post-attention RMSNorm.
    Mlp {
        /// Layer index.
        layer: usize,
        /// Hidden (intermediate) columns.
        cols: Range<usize>,
    },
    /// LM head for vocabulary columns `cols`, including the final RMSNorm.
    Head {
        /// Vocabulary columns.
        cols: Range<usize>,
    },
}

impl fmt::Display for MicroShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MicroShard::Embed { rows } => write!(f, "Embed({}..{})", rows.start, rows.end),
            MicroShard::Attn { layer, groups } => {
                write!(f, "Attn({layer}, {}..{})", groups.start, groups.end)
            }
            MicroShard::Mlp { layer, cols } => {
                write!(f, "Mlp({layer}, {}..{})", cols.start, cols.end)
            }
            MicroShard::Head { cols } => write!(f, "Head({}..{})", cols.start, cols.end),
        }
    }
}

impl MicroShard {
    /// The range of units (rows, groups or columns) the shard covers.
    pub fn units(&self) -> Range<usize> {
        match self {
            MicroShard::Embed { rows } => rows.clone(),
            MicroShard::Attn { groups, .. } => groups.clone(),
            MicroShard::Mlp { cols, .. } => cols.clone(),
            MicroShard::Head { cols } => cols.clone(),
        }
    }

    /// Checks the shard against the model.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<(), ComputeError> {
        let (r, max, what) = match self {
            MicroShard::Embed { rows } => (rows, cfg.vocab_size, "vocabulary rows"),
            MicroShard::Attn { groups, .. } => (groups, cfg.num_key_value_heads, "kv groups"),
            MicroShard::Mlp { cols, .. } => (cols, cfg.intermediate_size, "hidden columns"),
            MicroShard::Head { cols } => (cols, cfg.vocab_size, "vocabulary columns"),
        };
        if r.start >= r.end || r.end > max {
            return Err(ComputeError::Shape(format!(
                "{self}: {what} must be a non-empty range within 0..{max}"
            )));
        }
        if let MicroShard::Attn { layer, .. } | MicroShard::Mlp { layer, .. } = self {
            if *layer >= cfg.num_hidden_layers {
                return Err(ComputeError::Shape(format!(
                    "{self}: the model has {} layers",
                    cfg.num_hidden_layers
                )));
            }
        }
        Ok(())
    }
}

/// How the rows of an activation are laid out: `sequences` sequences of `seq` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    /// Tokens per sequence.
    pub seq: usize,
    /// Number of sequences.
    pub sequences: usize,
}

impl Rows {
    /// Total rows.
    pub fn count(&self) -> usize {
        self.seq * self.sequences
    }
}
