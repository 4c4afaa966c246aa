//! Choosing the cut: each stage into the fewest balanced micro-shards that fit the budget and
//! the binding limit.

use std::ops::Range;

use tessera_compute::model::split;
use tessera_compute::shard::MicroShard;
use tessera_compute::ModelConfig;

use crate::cost::ShardCost;
use crate::{PlanError, PlanOptions};

/// One stage of the pipeline, before it is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The embedding, cut by vocabulary rows.
    Embed,
    /// Attention of a layer, cut by kv groups.
    Attn(usize),
    /// MLP of a layer, cut by hidden columns.
    Mlp(usize),
    /// The LM head, cut by vocabulary columns.
    Head,
}

impl Stage {
    /// Every stage of `model` in pipeline order: Embed, Attn 0, Mlp 0, Attn 1, ..., Head.
    pub fn all(model: &ModelConfig) -> Vec<Stage> {
        let layers = (0..model.num_hidden_layers).flat_map(|l| [Stage::Attn(l), Stage::Mlp(l)]);
        std::iter::once(Stage::Embed)
            .chain(layers)
            .chain(std::iter::once(Stage::Head))
            .collect()
    }

    /// How many units the stage has.
    pub fn units(self, model: &ModelConfig) -> usize {
        match self {
            Stage::Embed | Stage::Head => model.vocab_size,
            Stage::Attn(_) => model.num_key_value_heads,
            Stage::Mlp(_) => model.intermediate_size,
        }
    }

    /// The stage's micro-shard over `units`.
    pub fn shard(self, units: Range<usize>) -> MicroShard {
        match self {
            Stage::Embed => MicroShard::Embed { rows: units },
            Stage::Attn(layer) => MicroShard::Attn {
                layer,
                groups: units,
            },
            Stage::Mlp(layer) => MicroShard::Mlp { layer, cols: units },
            Stage::Head => MicroShard::Head { cols: units },
        }
    }
}

/// Whether a micro-shard alone fits the budget and the binding limit.
fn fits(cost: &ShardCost, options: &PlanOptions) -> bool {
    cost.bytes() <= options.budget && cost.largest_tensor <= options.max_binding
}

/// Cuts `stage` (index `index` in pipeline order) into the fewest balanced micro-shards that
/// each fit `options.budget` and `options.max_binding`, with their costs.
pub fn cut(
    model: &ModelConfig,
    options: &PlanOptions,
    stage: Stage,
    index: usize,
) -> Result<Vec<ShardCost>, PlanError> {
    let total = stage.units(model);
    let cost = |units: Range<usize>| ShardCost::new(model, &stage.shard(units), index, options);
    let finest = cost(0..1);
    if finest.bytes() > options.budget {
        return Err(PlanError::ShardTooLarge {
            shard: finest.shard.to_string(),
            bytes: finest.bytes(),
            budget: options.budget,
        });
    }
    if finest.largest_tensor > options.max_binding {
        return Err(PlanError::TensorTooLarge {
            shard: finest.shard.to_string(),
            bytes: finest.largest_tensor,
            limit: options.max_binding,
        });
    }
    // Memory grows with the units, so the widest slice that fits is found by bisection.
    let (mut lo, mut hi) = (1, total);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(&cost(0..mid), options) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let mut slices = total.div_ceil(lo);
    loop {
        let costs: Vec<ShardCost> = split(total, slices)?.into_iter().map(cost).collect();
        if costs.iter().all(|c| fits(c, options)) || slices == total {
            return Ok(costs);
        }
        slices += 1;
    }
}
