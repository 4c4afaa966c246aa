//! The printed report of a plan: micro-shards by kind, their costs per micro-batch, and for
//! each budget the lease shapes, traffic, tokens/s ceilings and step latency.

use std::collections::BTreeMap;
use std::fmt;

use tessera_compute::shard::MicroShard;

use crate::cost::{Kind, ShardCost};
use crate::pack::Lease;
use crate::pipeline::Throughput;
use crate::units::{bandwidth, bytes, count, flop, flop_rate, rate, seconds, traffic};
use crate::{Plan, PlanError};

/// Leases listed one by one when there are at most this many.
const LIST_LEASES: usize = 40;

/// A plan's report for a set of lease budgets; print it with `Display`.
pub struct Report<'a> {
    plan: &'a Plan,
    name: String,
    budgets: Vec<(u64, Vec<Lease<'a>>, Throughput)>,
}

impl<'a> Report<'a> {
    /// Packs `plan` for every budget in `budgets`; `name` names the model in the heading.
    pub fn new(plan: &'a Plan, name: &str, budgets: &[u64]) -> Result<Report<'a>, PlanError> {
        let budgets = budgets
            .iter()
            .map(|&b| {
                let leases = plan.leases(b)?;
                let t = plan.throughput_of(&leases);
                Ok((b, leases, t))
            })
            .collect::<Result<_, PlanError>>()?;
        Ok(Report {
            plan,
            name: name.to_string(),
            budgets,
        })
    }
}

/// `a`, or `a-b` when they read differently.
fn range<T>(lo: T, hi: T, show: impl Fn(T) -> String) -> String {
    let (lo, hi) = (show(lo), show(hi));
    if lo == hi {
        lo
    } else {
        format!("{lo}-{hi}")
    }
}

/// `min..=max` of `f` over `items` as text.
fn span<I: Clone, T: PartialOrd + Copy>(
    items: &[I],
    f: impl Fn(&I) -> T,
    show: impl Fn(T) -> String,
) -> String {
    let mut it = items.iter().map(f);
    let Some(first) = it.next() else {
        return "-".into();
    };
    let (lo, hi) = it.fold((first, first), |(lo, hi), x| {
        (if x < lo { x } else { lo }, if x > hi { x } else { hi })
    });
    range(lo, hi, show)
}

/// A stage's name: `Embed`, `Attn 3`, `Mlp 3`, `Head`.
fn stage_name(shard: &MicroShard) -> String {
    match shard {
        MicroShard::Embed { .. } => "Embed".into(),
        MicroShard::Attn { layer, .. } => format!("Attn {layer}"),
        MicroShard::Mlp { layer, .. } => format!("Mlp {layer}"),
        MicroShard::Head { .. } => "Head".into(),
    }
}

impl Report<'_> {
    fn heading(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, m, o) = (self.plan, &self.plan.model, &self.plan.options);
        writeln!(
            f,
            "Plan for {}: {} parameters ({}); {} layers, hidden {}, {} query / {} kv heads of {}, MLP {}, vocab {}",
            self.name,
            count(p.total_params()),
            p.total_params(),
            m.num_hidden_layers,
            m.hidden_size,
            m.num_attention_heads,
            m.num_key_value_heads,
            m.head_dim,
            m.intermediate_size,
            m.vocab_size
        )?;
        let act = match o.act_bytes {
            4 => "f32",
            2 => "bf16",
            _ => "int8",
        };
        writeln!(
            f,
            "Micro-batch: one sequence of {} tokens; activations on the wire {act} ({} B); micro-shards sized for {}; binding limit {}",
            o.seq,
            o.act_bytes,
            bytes(o.budget),
            bytes(o.max_binding)
        )?;
        writeln!(
            f,
            "Contributors: {}, {}; coordinator {}; {} micro-batches per step",
            bandwidth(o.bandwidth),
            flop_rate(o.flops),
            bandwidth(o.coordinator_bandwidth),
            o.micro_batches
        )?;
        writeln!(
            f,
            "All figures are estimates from the model shape, not measurements: f32 weights and gradient"
        )?;
        writeln!(
            f,
            "accumulators resident (AdamW moments stay with the coordinator), working memory of the kernels'"
        )?;
        writeln!(
            f,
            "buffers for one sequence, matmul FLOPs only (backward recomputes the forward)."
        )
    }

    fn by_kind(&self) -> BTreeMap<Kind, Vec<&ShardCost>> {
        let mut kinds: BTreeMap<Kind, Vec<&ShardCost>> = BTreeMap::new();
        for c in self.plan.shards() {
            kinds.entry(c.kind()).or_default().push(c);
        }
        kinds
    }

    fn shards(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.plan;
        writeln!(
            f,
            "\nMicro-shards: {} in {} stages",
            p.shard_count(),
            p.stages.len()
        )?;
        writeln!(
            f,
            "  {:<6} {:>6} {:>7}  {:<25} {:<12} {:<14} {:<14} alone",
            "kind",
            "stages",
            "shards",
            "units per shard",
            "params each",
            "resident each",
            "working each",
        )?;
        for (kind, cs) in self.by_kind() {
            let stages = p
                .stages
                .iter()
                .filter(|s| s.first().map(|c| c.kind()) == Some(kind))
                .count();
            let units = span(&cs, |c| c.shard.units().len(), |u| u.to_string());
            let plural = if units == "1" { "" } else { "s" };
            writeln!(
                f,
                "  {:<6} {:>6} {:>7}  {:<25} {:<12} {:<14} {:<14} {}",
                kind.to_string(),
                stages,
                cs.len(),
                format!("{units} {}{plural}", kind.unit()),
                span(&cs, |c| c.params, count),
                span(&cs, |c| c.state_bytes, bytes),
                span(&cs, |c| c.work_bytes, bytes),
                span(&cs, |c| c.bytes(), bytes),
            )?;
        }
        if let Some(big) = p.shards().max_by_key(|c| c.largest_tensor) {
            writeln!(
                f,
                "  largest single buffer: {} in {} (binding limit {}, {})",
                bytes(big.largest_tensor),
                big.shard,
                bytes(p.options.max_binding),
                if big.largest_tensor <= p.options.max_binding {
                    "fits"
                } else {
                    "OVER"
                }
            )?;
        }
        Ok(())
    }

    fn costs(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.plan.options;
        writeln!(
            f,
            "\nPer micro-shard and micro-batch ({} tokens), the largest of each kind:",
            o.seq
        )?;
        writeln!(
            f,
            "  {:<6} {:>11} {:>11} {:>10} {:>10} {:>12} {:>12}",
            "kind", "fwd FLOP", "bwd FLOP", "fwd wire", "bwd wire", "compute", "transfer"
        )?;
        for (kind, cs) in self.by_kind() {
            let Some(c) = cs
                .iter()
                .max_by_key(|c| c.fwd_flops + c.bwd_flops + c.fwd_bytes)
            else {
                continue;
            };
            let wire = (c.fwd_bytes + c.bwd_bytes) as f64;
            writeln!(
                f,
                "  {:<6} {:>11} {:>11} {:>10} {:>10} {:>12} {:>12}",
                kind.to_string(),
                flop(c.fwd_flops as f64),
                flop(c.bwd_flops as f64),
                traffic(c.fwd_bytes as f64),
                traffic(c.bwd_bytes as f64),
                seconds((c.fwd_flops + c.bwd_flops) as f64 / o.flops),
                seconds(wire / o.bandwidth),
            )?;
        }
        writeln!(
            f,
            "  (compute at {}, transfer at {}, forward and backward together)",
            flop_rate(o.flops),
            bandwidth(o.bandwidth)
        )
    }

    fn leases(
        &self,
        f: &mut fmt::Formatter<'_>,
        budget: u64,
        leases: &[Lease<'_>],
        t: &Throughput,
    ) -> fmt::Result {
        let (p, o) = (self.plan, &self.plan.options);
        let seq = o.seq as f64;
        writeln!(
            f,
            "\nLeases for a {} budget: {} lease{}, {} pipeline hop{}",
            bytes(budget),
            leases.len(),
            if leases.len() == 1 { "" } else { "s" },
            t.hops,
            if t.hops == 1 { "" } else { "s" },
        )?;
        writeln!(
            f,
            "  {:>6} {:>13} {:>7}  {:<20} {:<17} whole stages",
            "leases", "micro-shards", "stages", "memory each", "wire/token each",
        )?;
        // Group by (micro-shards, stages, whole stages).
        let mut shapes: BTreeMap<(usize, usize, bool), Vec<usize>> = BTreeMap::new();
        for (i, l) in leases.iter().enumerate() {
            shapes
                .entry((l.costs.len(), l.stages.len(), l.whole_stages(p)))
                .or_default()
                .push(i);
        }
        for ((n, s, whole), idx) in &shapes {
            writeln!(
                f,
                "  {:>6} {:>13} {:>7}  {:<20} {:<17} {}",
                idx.len(),
                n,
                s,
                span(idx, |&i| Plan::lease_bytes(&leases[i].costs), bytes),
                span(idx, |&i| t.loads[i].wire_bytes as f64 / seq, traffic),
                if *whole { "yes" } else { "no" }
            )?;
        }
        if leases.len() <= LIST_LEASES {
            for (l, load) in leases.iter().zip(&t.loads) {
                let (Some(a), Some(b)) = (l.costs.first(), l.costs.last()) else {
                    continue;
                };
                let (first, last) = (stage_name(&a.shard), stage_name(&b.shard));
                let stages = if first == last {
                    first
                } else {
                    format!("{first}..{last}")
                };
                writeln!(
                    f,
                    "    {:<17} {:>4} micro-shard{}  {:>10}  {:>9}/token",
                    stages,
                    l.costs.len(),
                    if l.costs.len() == 1 { " " } else { "s" },
                    bytes(Plan::lease_bytes(&l.costs)),
                    traffic(load.wire_bytes as f64 / seq)
                )?;
            }
        }
        writeln!(
            f,
            "  through a relaying coordinator: {}/token (every lease's input and output, summed)",
            traffic(t.coordinator_bytes_per_token)
        )?;
        writeln!(f, "  tokens/s ceilings, one replica per lease (a pool of k replicas lifts the first and last up to k times):")?;
        writeln!(
            f,
            "    contributor bandwidth {:>12}: {:>9} tokens/s",
            bandwidth(o.bandwidth),
            rate(t.contributor_ceiling)
        )?;
        writeln!(
            f,
            "    coordinator bandwidth {:>12}: {:>9} tokens/s",
            bandwidth(o.coordinator_bandwidth),
            rate(t.coordinator_ceiling)
        )?;
        writeln!(
            f,
            "    compute               {:>12}: {:>9} tokens/s",
            flop_rate(o.flops),
            rate(t.compute_ceiling)
        )?;
        let (limit, tps) = t.binding();
        writeln!(f, "  binding limit: {limit} ({} tokens/s)", rate(tps))?;
        writeln!(
            f,
            "  step latency: {} for {} micro-batches x {} tokens (one micro-batch through {} hop(s), relayed, plus {} x the slowest hop): {} tokens/s",
            seconds(t.step_seconds),
            o.micro_batches,
            o.seq,
            t.hops,
            o.micro_batches.saturating_sub(1),
            rate(t.step_tokens_per_second(p))
        )
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.heading(f)?;
        self.shards(f)?;
        self.costs(f)?;
        for (budget, leases, t) in &self.budgets {
            self.leases(f, *budget, leases, t)?;
        }
        Ok(())
    }
}
