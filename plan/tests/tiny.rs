//! Costs cross-checked by hand on the tiny model, and the errors of impossible budgets.

use tessera_compute::shard::MicroShard;
use tessera_compute::ModelConfig;
use tessera_plan::{Plan, PlanError, PlanOptions, ShardCost};

fn options(budget: u64) -> PlanOptions {
    PlanOptions {
        seq: 16,
        budget,
        act_bytes: 4,
        ..PlanOptions::default()
    }
}

#[test]
fn parameters_sum_to_the_model_for_any_cut() {
    let cfg = ModelConfig::tiny();
    for budget in [40_000, 60_000, 200_000, 1 << 30] {
        let plan = Plan::new(&cfg, options(budget)).expect("tiny plan");
        assert_eq!(
            plan.total_params(),
            cfg.parameter_count(),
            "budget {budget}"
        );
        let sum: u64 = plan.shards().map(|c| c.params).sum();
        assert_eq!(sum, cfg.parameter_count());
    }
    let whole = Plan::new(&cfg, options(1 << 30)).expect("tiny plan");
    assert_eq!(
        whole.shard_count(),
        2 + 2 * cfg.num_hidden_layers,
        "one slice per stage"
    );
    let cut = Plan::new(&cfg, options(40_000)).expect("tiny plan");
    assert!(cut.shard_count() > whole.shard_count());
}

#[test]
fn mlp_costs_match_a_hand_computation() {
    let cfg = ModelConfig::tiny();
    let o = options(1 << 30);
    let (n, d, f) = (16u64, 24u64, 10u64);
    let c = ShardCost::new(
        &cfg,
        &MicroShard::Mlp {
            layer: 1,
            cols: 10..20,
        },
        4,
        &o,
    );
    // Forward: gate, up and down products. Backward: gate and up again, then the weight and
    // input gradients of all three.
    assert_eq!(c.fwd_flops, 3 * 2 * n * d * f);
    assert_eq!(c.bwd_flops, (2 + 6) * 2 * n * d * f);
    // Not the first slice: the norm weight is held but counted in slice 0.
    assert_eq!(c.params, 3 * d * f);
    assert_eq!(c.state_bytes, 2 * 4 * (3 * d * f + d));
    // f32 on the wire: input and output forward; input, output gradient, input gradient back.
    assert_eq!(c.fwd_bytes, 2 * n * d * 4);
    assert_eq!(c.bwd_bytes, 3 * n * d * 4);
    // h, dout, xn, dxn, dh and rstd; gate, up, act and their gradients.
    assert_eq!(c.work_bytes, 4 * n * (5 * d + 1 + 6 * f));
    let first = ShardCost::new(
        &cfg,
        &MicroShard::Mlp {
            layer: 1,
            cols: 0..10,
        },
        4,
        &o,
    );
    assert_eq!(first.params, 3 * d * f + d);
}

#[test]
fn head_and_embed_wire_formats() {
    let cfg = ModelConfig::tiny();
    let o = options(1 << 30);
    let (n, d) = (16u64, 24u64);
    let head = ShardCost::new(&cfg, &MicroShard::Head { cols: 0..67 }, 5, &o);
    // Input and targets in; max, sum-exp and target logit out.
    assert_eq!(head.fwd_bytes, n * d * 4 + n * 4 + n * 12);
    // Input, targets and log-sum-exp in; input gradient out.
    assert_eq!(head.bwd_bytes, n * d * 4 + n * 4 + n * 4 + n * d * 4);
    assert_eq!(head.fwd_flops, 2 * n * d * 67);
    let embed = ShardCost::new(&cfg, &MicroShard::Embed { rows: 0..67 }, 0, &o);
    assert_eq!(embed.fwd_bytes, n * 4 + n * d * 4);
    assert_eq!(embed.bwd_bytes, n * 4 + n * d * 4);
    assert_eq!(embed.fwd_flops + embed.bwd_flops, 0);
}

#[test]
fn too_small_a_budget_names_the_shard_and_its_bytes() {
    let cfg = ModelConfig::tiny();
    let err = Plan::new(&cfg, options(1000)).expect_err("1000 bytes cannot hold anything");
    match &err {
        PlanError::ShardTooLarge {
            shard,
            bytes,
            budget,
        } => {
            assert_eq!(shard, "Embed(0..1)");
            assert!(*bytes > 1000);
            assert_eq!(*budget, 1000);
        }
        other => panic!("unexpected error {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("Embed(0..1)") && text.contains("budget"),
        "{text}"
    );
    // A budget the plan fits but a packing does not.
    let plan = Plan::new(&cfg, options(40_000)).expect("tiny plan");
    assert!(matches!(
        plan.pack(1000),
        Err(PlanError::ShardTooLarge { .. })
    ));
}

#[test]
fn a_tiny_binding_limit_is_an_error() {
    let cfg = ModelConfig::tiny();
    let o = PlanOptions {
        max_binding: 64,
        ..options(1 << 30)
    };
    let err = Plan::new(&cfg, o).expect_err("64-byte bindings");
    assert!(matches!(err, PlanError::TensorTooLarge { .. }), "{err}");
}

#[test]
fn bad_options_are_refused() {
    let cfg = ModelConfig::tiny();
    let cases = [
        PlanOptions {
            seq: 0,
            ..options(1 << 20)
        },
        PlanOptions {
            seq: 65,
            ..options(1 << 20)
        },
        PlanOptions {
            budget: 0,
            ..options(1 << 20)
        },
        PlanOptions {
            act_bytes: 3,
            ..options(1 << 20)
        },
        PlanOptions {
            bandwidth: 0.0,
            ..options(1 << 20)
        },
        PlanOptions {
            flops: f64::NAN,
            ..options(1 << 20)
        },
        PlanOptions {
            micro_batches: 0,
            ..options(1 << 20)
        },
    ];
    for o in cases {
        let err = Plan::new(&cfg, o.clone()).expect_err("invalid options");
        assert!(matches!(err, PlanError::Option { .. }), "{o:?}: {err}");
    }
}

#[test]
fn bigger_budgets_make_fewer_heavier_leases() {
    let cfg = ModelConfig::tiny();
    let plan = Plan::new(&cfg, options(40_000)).expect("tiny plan");
    let small = plan.pack(40_000).expect("pack");
    let big = plan.pack(1 << 30).expect("pack");
    assert!(small.len() > big.len());
    assert_eq!(big.len(), 1, "the whole tiny model fits one lease");
    assert_eq!(big[0].stages, 0..plan.stages.len());
    for l in &small {
        assert!(l.bytes <= 40_000);
    }
}
