//! The 72B plan: every micro-shard and every lease fits its budget, the cut partitions each
//! stage, and the parameters add up to the model's.

use tessera_compute::ModelConfig;
use tessera_plan::{Kind, Plan, PlanOptions, GIB, MIB};

fn plan() -> Plan {
    let options = PlanOptions {
        seq: 2048,
        budget: GIB * 6 / 10,
        ..PlanOptions::default()
    };
    Plan::new(&ModelConfig::covenant_72b(), options).expect("a 72B plan for 0.6 GiB")
}

#[test]
fn parameters_add_up() {
    let p = plan();
    let total = p.total_params();
    assert_eq!(total, p.model.parameter_count());
    assert!(
        (total as f64 - 72.75e9).abs() / 72.75e9 < 1e-3,
        "{total} is not ~72.75B"
    );
}

#[test]
fn every_micro_shard_fits_the_budget_and_the_binding_limit() {
    let p = plan();
    assert!(p.shard_count() > 1000, "{} micro-shards", p.shard_count());
    for c in p.shards() {
        let alone = Plan::lease_bytes(&[c]);
        assert!(alone <= p.options.budget, "{} needs {alone}", c.shard);
        assert!(
            c.largest_tensor <= 128 * MIB,
            "{}: {}",
            c.shard,
            c.largest_tensor
        );
        assert!(c.params > 0 && c.work_bytes > 0 && c.state_bytes >= 8 * c.params);
    }
}

#[test]
fn stages_are_in_pipeline_order_and_partition_their_units() {
    let p = plan();
    let m = &p.model;
    assert_eq!(p.stages.len(), 2 * m.num_hidden_layers + 2);
    for (i, stage) in p.stages.iter().enumerate() {
        let kind = stage[0].kind();
        let expected = match i {
            0 => Kind::Embed,
            i if i == p.stages.len() - 1 => Kind::Head,
            i if i % 2 == 1 => Kind::Attn,
            _ => Kind::Mlp,
        };
        assert_eq!(kind, expected, "stage {i}");
        let total = match kind {
            Kind::Embed | Kind::Head => m.vocab_size,
            Kind::Attn => m.num_key_value_heads,
            Kind::Mlp => m.intermediate_size,
        };
        let mut next = 0;
        for c in stage {
            assert_eq!(c.stage, i);
            assert_eq!(c.kind(), kind);
            let u = c.shard.units();
            assert_eq!(u.start, next, "gap or overlap at {}", c.shard);
            assert!(u.end > u.start);
            next = u.end;
        }
        assert_eq!(next, total, "stage {i} ends at {next}");
        // Balanced: slice sizes differ by at most one unit.
        let lens: Vec<usize> = stage.iter().map(|c| c.shard.units().len()).collect();
        let (lo, hi) = (lens.iter().min(), lens.iter().max());
        assert!(
            hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
            "stage {i}: {lens:?}"
        );
    }
}

#[test]
fn the_cut_is_the_fewest_slices_that_fit() {
    let p = plan();
    // One kv group per attention shard: two would not fit 0.6 GiB.
    assert!(p.stages[1].iter().all(|c| c.shard.units().len() == 1));
    // Coarser MLP slices than the plan's would not fit.
    let mlp = &p.stages[2];
    let widest = mlp.iter().map(|c| c.shard.units().len()).max().unwrap_or(0);
    let coarser = tessera_plan::ShardCost::new(
        &p.model,
        &tessera_compute::shard::MicroShard::Mlp {
            layer: 0,
            cols: 0..p.model.intermediate_size.div_ceil(mlp.len() - 1),
        },
        2,
        &p.options,
    );
    assert!(
        coarser.bytes() > p.options.budget,
        "{widest} columns per shard is not the widest"
    );
}

#[test]
fn leases_fit_their_budgets() {
    let p = plan();
    for budget in [GIB * 6 / 10, 24 * GIB] {
        let leases = p.pack(budget).expect("packing");
        let held: usize = leases.iter().map(|l| l.shards.len()).sum();
        assert_eq!(
            held,
            p.shard_count(),
            "every micro-shard in exactly one lease"
        );
        for l in &leases {
            let costs: Vec<_> = p.shards().filter(|c| l.shards.contains(&c.shard)).collect();
            assert_eq!(costs.len(), l.shards.len());
            assert_eq!(Plan::lease_bytes(&costs), l.bytes);
            assert!(l.bytes <= budget, "{} > {budget}", l.bytes);
        }
    }
}

#[test]
fn native_leases_take_several_whole_stages() {
    let p = plan();
    let leases = p.pack(24 * GIB).expect("packing");
    assert!(leases.len() < 40, "{} leases", leases.len());
    let mut next = 0;
    for l in &leases {
        assert_eq!(l.stages.start, next, "leases follow pipeline order");
        next = l.stages.end;
        let whole: usize = p.stages[l.stages.clone()].iter().map(Vec::len).sum();
        assert_eq!(
            whole,
            l.shards.len(),
            "lease over {:?} holds whole stages",
            l.stages
        );
        assert!(
            l.stages.len() > 1,
            "lease over {:?} spans one stage",
            l.stages
        );
    }
    assert_eq!(next, p.stages.len());
}

#[test]
fn a_relaying_coordinator_is_the_bottleneck_of_the_browser_plan() {
    let p = plan();
    let t = p.throughput(GIB * 6 / 10).expect("throughput");
    // DESIGN: the sliced pipeline moves ~250 MB per token; relay gives a few tokens/s.
    assert!(
        (1e8..5e8).contains(&t.coordinator_bytes_per_token),
        "{} B/token",
        t.coordinator_bytes_per_token
    );
    assert_eq!(t.binding().0, tessera_plan::Limit::CoordinatorBandwidth);
    let native = p.throughput(24 * GIB).expect("throughput");
    assert!(native.coordinator_bytes_per_token < t.coordinator_bytes_per_token / 10.0);
    assert!(native.step_seconds < t.step_seconds);
}
