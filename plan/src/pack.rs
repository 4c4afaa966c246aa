//! Lease packing: grouping a plan's micro-shards, in pipeline order, into leases that fit a
//! contributor's memory budget.

use std::ops::Range;

use tessera_compute::model::split;
use tessera_compute::shard::MicroShard;

use crate::cost::ShardCost;
use crate::{Plan, PlanError};

/// What one lease holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseShape {
    /// Its micro-shards, in pipeline order.
    pub shards: Vec<MicroShard>,
    /// The stages it touches (a range of stage indices).
    pub stages: Range<usize>,
    /// Its memory: everything resident plus the largest working set ([`Plan::lease_bytes`]).
    pub bytes: u64,
}

/// A lease with the costs of its micro-shards.
#[derive(Clone, Debug)]
pub(crate) struct Lease<'a> {
    /// The micro-shards' costs in pipeline order.
    pub(crate) costs: Vec<&'a ShardCost>,
    /// The stages it touches.
    pub(crate) stages: Range<usize>,
}

impl Lease<'_> {
    /// Whether it holds whole stages (every micro-shard of each stage it touches).
    pub(crate) fn whole_stages(&self, plan: &Plan) -> bool {
        let held: usize = plan.stages[self.stages.clone()].iter().map(Vec::len).sum();
        held == self.costs.len()
    }

    fn shape(&self) -> LeaseShape {
        LeaseShape {
            shards: self.costs.iter().map(|c| c.shard.clone()).collect(),
            stages: self.stages.clone(),
            bytes: Plan::lease_bytes(&self.costs),
        }
    }
}

impl Plan {
    /// Packs the micro-shards into leases of at most `budget` bytes each, in pipeline order.
    /// Where a whole stage fits, a lease takes whole stages and extends over as many
    /// consecutive whole stages as fit (a native worker takes several layers); otherwise a
    /// stage is spread over the fewest balanced leases of consecutive micro-shards.
    pub fn pack(&self, budget: u64) -> Result<Vec<LeaseShape>, PlanError> {
        Ok(self.leases(budget)?.iter().map(Lease::shape).collect())
    }

    pub(crate) fn leases(&self, budget: u64) -> Result<Vec<Lease<'_>>, PlanError> {
        let stage = |s: usize| self.stages[s].iter().collect::<Vec<_>>();
        let mut out = Vec::new();
        let mut s = 0;
        while s < self.stages.len() {
            let mut costs = stage(s);
            if Plan::lease_bytes(&costs) <= budget {
                let mut end = s + 1;
                while end < self.stages.len() {
                    let mut more = costs.clone();
                    more.extend(stage(end));
                    if Plan::lease_bytes(&more) > budget {
                        break;
                    }
                    costs = more;
                    end += 1;
                }
                out.push(Lease {
                    costs,
                    stages: s..end,
                });
                s = end;
                continue;
            }
            if let Some(big) = costs.iter().find(|c| c.bytes() > budget) {
                return Err(PlanError::ShardTooLarge {
                    shard: big.shard.to_string(),
                    bytes: big.bytes(),
                    budget,
                });
            }
            // Some k <= len always fits: one micro-shard per lease does.
            for k in 2..=costs.len() {
                let groups: Vec<Vec<&ShardCost>> = split(costs.len(), k)?
                    .into_iter()
                    .map(|r| costs[r].to_vec())
                    .collect();
                if groups.iter().all(|g| Plan::lease_bytes(g) <= budget) {
                    out.extend(groups.into_iter().map(|costs| Lease {
                        costs,
                        stages: s..s + 1,
                    }));
                    break;
                }
            }
            s += 1;
        }
        Ok(out)
    }
}
