//! What a packing implies for traffic and speed: bytes per token per lease and through a
//! relaying coordinator, the tokens/s ceilings of bandwidth and compute, and step latency.
//!
//! A *hop* is one step of the pipeline: the leases that share a span of stages work on the
//! same micro-batch in parallel. Every figure assumes one replica per lease; a pool of `k`
//! replicas per lease multiplies the contributor and compute ceilings by up to `k` (not the
//! coordinator's).

use crate::cost::wire_bytes;
use crate::pack::Lease;
use crate::{Plan, PlanError};

/// Traffic and compute of one lease per micro-batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeaseLoad {
    /// Wire bytes, forward and backward, in and out.
    pub wire_bytes: u64,
    /// FLOPs, forward and backward (with recomputation).
    pub flops: u64,
}

/// The speed limits of a packing.
#[derive(Clone, Debug, PartialEq)]
pub struct Throughput {
    /// Per lease, in pipeline order.
    pub loads: Vec<LeaseLoad>,
    /// Pipeline hops (groups of leases over the same stages).
    pub hops: usize,
    /// Wire bytes per token through the coordinator when it relays every activation: the sum
    /// over every lease of what it receives and sends.
    pub coordinator_bytes_per_token: f64,
    /// Tokens/s that the busiest contributor link allows.
    pub contributor_ceiling: f64,
    /// Tokens/s that the coordinator's link allows when it relays everything.
    pub coordinator_ceiling: f64,
    /// Tokens/s that the slowest lease's compute allows (the leases of a hop run in parallel).
    pub compute_ceiling: f64,
    /// Seconds for one optimizer step: one micro-batch's forward and backward through every
    /// hop (compute, contributor transfer and coordinator relay per hop), plus
    /// `micro_batches - 1` times the slowest hop.
    pub step_seconds: f64,
}

/// Which limit binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The contributors' links.
    ContributorBandwidth,
    /// The coordinator's link.
    CoordinatorBandwidth,
    /// The contributors' compute.
    Compute,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::ContributorBandwidth => "contributor bandwidth",
            Limit::CoordinatorBandwidth => "coordinator bandwidth",
            Limit::Compute => "compute",
        })
    }
}

impl Throughput {
    /// The lowest ceiling and what sets it.
    pub fn binding(&self) -> (Limit, f64) {
        [
            (Limit::ContributorBandwidth, self.contributor_ceiling),
            (Limit::CoordinatorBandwidth, self.coordinator_ceiling),
            (Limit::Compute, self.compute_ceiling),
        ]
        .into_iter()
        .fold((Limit::Compute, f64::INFINITY), |best, x| {
            if x.1 < best.1 {
                x
            } else {
                best
            }
        })
    }

    /// Tokens per second of whole steps: the step's tokens over its latency.
    pub fn step_tokens_per_second(&self, plan: &Plan) -> f64 {
        (plan.options.micro_batches * plan.options.seq) as f64 / self.step_seconds
    }
}

impl Plan {
    /// The traffic and speed limits of the leases [`Plan::pack`] makes for `budget`.
    pub fn throughput(&self, budget: u64) -> Result<Throughput, PlanError> {
        Ok(self.throughput_of(&self.leases(budget)?))
    }

    pub(crate) fn throughput_of(&self, leases: &[Lease<'_>]) -> Throughput {
        let o = &self.options;
        let seq = o.seq as f64;
        let loads: Vec<LeaseLoad> = leases
            .iter()
            .map(|l| {
                let (first, last) = match (l.costs.first(), l.costs.last()) {
                    (Some(f), Some(t)) => (&f.shard, &t.shard),
                    _ => {
                        return LeaseLoad {
                            wire_bytes: 0,
                            flops: 0,
                        }
                    }
                };
                let (fwd, bwd) = wire_bytes(&self.model, o, first, last);
                LeaseLoad {
                    wire_bytes: fwd + bwd,
                    flops: l.costs.iter().map(|c| c.fwd_flops + c.bwd_flops).sum(),
                }
            })
            .collect();
        // Hops: runs of leases over the same stages.
        let mut hop_times = Vec::new();
        let mut i = 0;
        while i < leases.len() {
            let mut j = i;
            while j < leases.len() && leases[j].stages == leases[i].stages {
                j += 1;
            }
            let hop = &loads[i..j];
            let lease_time = hop
                .iter()
                .map(|l| l.flops as f64 / o.flops + l.wire_bytes as f64 / o.bandwidth)
                .fold(0.0, f64::max);
            let relay: u64 = hop.iter().map(|l| l.wire_bytes).sum();
            hop_times.push(lease_time + relay as f64 / o.coordinator_bandwidth);
            i = j;
        }
        let slowest_hop = hop_times.iter().copied().fold(0.0, f64::max);
        let max_wire = loads.iter().map(|l| l.wire_bytes).max().unwrap_or(0) as f64;
        let max_flops = loads.iter().map(|l| l.flops).max().unwrap_or(0) as f64;
        let total_wire: u64 = loads.iter().map(|l| l.wire_bytes).sum();
        let ceiling = |seconds: f64| {
            if seconds > 0.0 {
                seq / seconds
            } else {
                f64::INFINITY
            }
        };
        Throughput {
            hops: hop_times.len(),
            coordinator_bytes_per_token: total_wire as f64 / seq,
            contributor_ceiling: ceiling(max_wire / o.bandwidth),
            coordinator_ceiling: ceiling(total_wire as f64 / o.coordinator_bandwidth),
            compute_ceiling: ceiling(max_flops / o.flops),
            step_seconds: hop_times.iter().sum::<f64>()
                + (o.micro_batches.saturating_sub(1)) as f64 * slowest_hop,
            loads,
        }
    }
}
