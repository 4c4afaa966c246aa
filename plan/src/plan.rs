//! The plan: a model's stages in pipeline order, each cut into micro-shards with their costs.

use tessera_compute::ModelConfig;

use crate::cost::ShardCost;
use crate::slicing::{self, Stage};
use crate::{PlanError, PlanOptions};

/// The ordered stages of a model, each cut into micro-shards that fit the options' budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The model.
    pub model: ModelConfig,
    /// What the plan was computed for.
    pub options: PlanOptions,
    /// Stages in pipeline order (Embed, Attn 0, Mlp 0, ..., Head), each its micro-shards in
    /// unit order.
    pub stages: Vec<Vec<ShardCost>>,
}

impl Plan {
    /// Cuts every stage of `model` into the fewest balanced micro-shards such that each one's
    /// [`Plan::lease_bytes`] fits `options.budget` and each of its buffers fits
    /// `options.max_binding`.
    pub fn new(model: &ModelConfig, options: PlanOptions) -> Result<Plan, PlanError> {
        model.validate()?;
        options.validate(model)?;
        let mut stages: Vec<Vec<ShardCost>> = Vec::new();
        for (index, stage) in Stage::all(model).into_iter().enumerate() {
            // Every layer has the same shape: reuse the previous layer's cut.
            let same_as = match stage {
                Stage::Attn(l) | Stage::Mlp(l) if l > 0 => stages.get(index - 2),
                _ => None,
            };
            let costs = match same_as {
                Some(prev) => prev
                    .iter()
                    .map(|c| ShardCost::new(model, &stage.shard(c.shard.units()), index, &options))
                    .collect(),
                None => slicing::cut(model, &options, stage, index)?,
            };
            stages.push(costs);
        }
        Ok(Plan {
            model: model.clone(),
            options,
            stages,
        })
    }

    /// Parameters over every micro-shard: the model's parameter count.
    pub fn total_params(&self) -> u64 {
        self.shards().map(|c| c.params).sum()
    }

    /// How many micro-shards the plan has.
    pub fn shard_count(&self) -> usize {
        self.stages.iter().map(Vec::len).sum()
    }

    /// Every micro-shard, stage by stage.
    pub fn shards(&self) -> impl Iterator<Item = &ShardCost> {
        self.stages.iter().flatten()
    }

    /// Memory of a lease holding `shards`: everything resident, plus the largest working set
    /// (a lease runs its micro-shards one at a time).
    pub fn lease_bytes(shards: &[&ShardCost]) -> u64 {
        let state: u64 = shards.iter().map(|c| c.state_bytes).sum();
        let work = shards.iter().map(|c| c.work_bytes).max().unwrap_or(0);
        state + work
    }
}
