//! Exactness of pipeline training end to end through the real coordinator state machine and
//! real GPU contributors holding micro-shards (in process, no network): with fp32 activations
//! and no compression, the coordinator's weights after each step equal single-device AdamW on
//! the same data order (per tensor ‖a−b‖/‖b‖ ≤ 1e-5), gradient clipping by the global norm
//! across micro-shards included. Every stage is tensor-sliced in two, so partial sums, the
//! summed norm-weight gradients and the three-pass head are all exercised. Also: a contributor
//! killed mid-step (its units re-run elsewhere, nothing double-counted or dropped), several
//! replicas per micro-shard, and a heavy lease for a big budget.

use std::collections::BTreeMap;

use tessera_compute::model::{shards, GpuModel, Slicing};
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ops::AdamW;
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::shard::Optimizer;
use tessera_compute::{Gpu, ModelConfig};
use tessera_coordinator::core::spec::PipelineSpec;
use tessera_coordinator::core::{Core, Phase, RunSpec};
use tessera_e2e::{compare, gpu};
use tessera_e2e::{Control, Message};
use tessera_protocol::messages::{InnerOptimizer, SyncMode};
use tessera_protocol::pipeline::Pass;
use tessera_protocol::{ActEncoding, Identity, ToContributor};
use tessera_train::schedule::Schedule;

const SEQ: usize = 8;
const MICRO: u64 = 3;
const STEPS: u64 = 4;

fn model() -> ModelConfig {
    ModelConfig {
        vocab_size: 96,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 8,
        tie_word_embeddings: false,
    }
}

fn slicing() -> Slicing {
    Slicing {
        embed: 2,
        attn: 2,
        mlp: 2,
        head: 2,
    }
}

/// Resident bytes of a micro-shard as these tests count them: f32 weights and gradients.
fn state_bytes(cfg: &ModelConfig, s: &tessera_compute::shard::MicroShard) -> u64 {
    s.parameters(cfg) as u64 * 8
}

fn pipeline(cfg: &ModelConfig) -> PipelineSpec {
    let stages = shards(cfg, slicing()).unwrap();
    let state_bytes = stages
        .iter()
        .map(|st| st.iter().map(|s| state_bytes(cfg, s)).collect())
        .collect();
    let work_bytes = stages.iter().map(|st| vec![0; st.len()]).collect();
    PipelineSpec {
        stages,
        state_bytes,
        work_bytes,
        micro_batches: MICRO,
        activations: ActEncoding::F32,
        grads: SyncMode::Dense,
        max_activation: tessera_coordinator::core::spec::DEFAULT_MAX_ACTIVATION,
    }
}

fn adamw() -> InnerOptimizer {
    InnerOptimizer::AdamW {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    }
}

fn lr() -> Schedule {
    Schedule {
        peak: 1e-2,
        warmup: 2,
        total: STEPS,
        floor: 0.1,
    }
}

fn spec(clip: Option<f32>) -> RunSpec {
    spec_of(model(), clip)
}

fn spec_of(cfg: ModelConfig, clip: Option<f32>) -> RunSpec {
    let mut r = SplitMix(5);
    let tokens: Vec<u32> = (0..3000).map(|_| (r.next_u64() % 96) as u32).collect();
    RunSpec::new("pipeline-exact", cfg.clone(), tokens)
        .with_pipeline(pipeline(&cfg))
        .with_seed(11)
        .with_rounds(STEPS)
        .with_units(1, 1, SEQ as u64)
        .with_optimizer(adamw(), lr(), clip)
        .with_weights_frame(100)
}

/// What the run handed out, for the reference to replay.
#[derive(Default)]
struct Seen {
    /// (step, micro-batch) → ids, targets.
    data: BTreeMap<(u64, u64), (Vec<u32>, Vec<u32>)>,
    /// Units handed out: (step, stage, pass, shards in the unit).
    units: Vec<(u64, u64, Pass, usize)>,
    /// Units that span several whole stages.
    spans: usize,
    /// Backward units handed out: (contributor, step, micro-batch, stage, micro-shard).
    backward: Vec<(usize, u64, u64, u64, String)>,
    /// Units handed out per contributor.
    per: BTreeMap<usize, usize>,
}

fn watch(seen: &mut Seen, m: &Message, k: usize) {
    if let Message::Down(ToContributor::Unit(w)) = m {
        let t = w.tokens.as_ref().map(|t| t.to_u32().unwrap());
        let e = seen.data.entry((w.step, w.micro_batch)).or_default();
        if w.stages[0] == 0 {
            e.0 = t.unwrap();
        } else if let Some(t) = t {
            e.1 = t;
        }
        seen.units
            .push((w.step, w.stages[0], w.pass, w.shards.len()));
        if w.stages[1] - w.stages[0] > 1 {
            seen.spans += 1;
        }
        if w.pass == Pass::Backward {
            for sh in &w.shards {
                seen.backward
                    .push((k, w.step, w.micro_batch, w.stages[0], format!("{sh:?}")));
            }
        }
        *seen.per.entry(k).or_default() += 1;
    }
}

/// Single-device AdamW on the same data order, with the same kernels, unsliced.
fn reference(g: &Gpu, init: &ModelParams<f32>, seen: &Seen, clip: Option<f32>) -> ModelParams<f32> {
    reference_of(g, &model(), init, seen, clip)
}

fn reference_of(
    g: &Gpu,
    cfg: &ModelConfig,
    init: &ModelParams<f32>,
    seen: &Seen,
    clip: Option<f32>,
) -> ModelParams<f32> {
    let mut m = GpuModel::new(g, cfg, init, Slicing::whole(), SEQ * MICRO as usize).unwrap();
    for step in 0..STEPS {
        let mut ids = Vec::new();
        let mut targets = Vec::new();
        for mb in 0..MICRO {
            let (i, t) = &seen.data[&(step, mb)];
            assert_eq!((i.len(), t.len()), (SEQ, SEQ));
            ids.extend_from_slice(i);
            targets.extend_from_slice(t);
        }
        m.zero_grads(g).unwrap();
        pollster::block_on(m.loss_and_grads(
            g,
            &Batch {
                ids,
                targets,
                seq: SEQ,
            },
        ))
        .unwrap();
        let h = AdamW {
            lr: lr().at(step + 1),
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        pollster::block_on(m.optimizer_step(
            g,
            Optimizer::AdamW(h),
            step as u32 + 1,
            clip.map(f64::from),
        ))
        .unwrap();
    }
    pollster::block_on(m.read_params(g)).unwrap()
}

/// Budget that fits the largest single micro-shard of the plan but no stage of two.
fn small_budget(cfg: &ModelConfig) -> u64 {
    let p = pipeline(cfg);
    let largest = p.state_bytes.iter().flatten().copied().max().unwrap();
    let smallest_pair = p
        .state_bytes
        .iter()
        .map(|s| s.iter().sum::<u64>())
        .min()
        .unwrap();
    assert!(
        largest < smallest_pair,
        "each small lease holds one micro-shard"
    );
    largest
}

/// A finished run of model `cfg` from `init` with one small lease per micro-shard, what it
/// handed out, and its contributors.
fn small_leases(
    g: &Gpu,
    cfg: &ModelConfig,
    init: &ModelParams<f32>,
    clip: Option<f32>,
) -> (Core, Seen, Vec<tessera_worker::contributor::Contributor>) {
    let mut core = Core::new(
        spec_of(cfg.clone(), clip),
        Identity::from_seed([9; 32]),
        init.clone(),
    );
    let n = pipeline(cfg).stages.iter().map(Vec::len).sum::<usize>();
    let mut clients = tessera_e2e::with_budgets(g, &vec![small_budget(cfg); n]);
    let mut seen = Seen::default();
    tessera_e2e::run_with(g, &mut core, &mut clients, |m, k| {
        watch(&mut seen, m, k);
        Control::Go
    })
    .unwrap();
    assert_eq!(core.phase(), Phase::Finished);
    (core, seen, clients)
}

#[test]
fn one_replica_per_micro_shard_equals_single_device_adamw_with_clipping() {
    let g = gpu();
    let cfg = model();
    let init: ModelParams<f32> = ModelParams::random(&cfg, 23);
    let clip = Some(0.5f32);
    assert_eq!(
        pipeline(&cfg).stages.iter().map(Vec::len).sum::<usize>(),
        12,
        "six stages, each cut in two"
    );
    let (core, seen, clients) = small_leases(&g, &cfg, &init, clip);
    for s in core.sessions() {
        assert_eq!(
            s.shards.len(),
            1,
            "a small budget holds one micro-shard: {:?}",
            s.shards
        );
    }
    assert!(
        seen.units.iter().all(|u| u.3 == 1),
        "every stage fans out to two leases"
    );
    let want = reference(&g, &init, &seen, clip);
    compare("pipeline, 12 leases, clip 0.5", core.weights(), &want);
    // The clip must have been active: the first step's gradient norm exceeds 0.5.
    let cfg2 = model();
    let mut m = GpuModel::new(&g, &cfg2, &init, Slicing::whole(), SEQ * MICRO as usize).unwrap();
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    for mb in 0..MICRO {
        let (i, t) = &seen.data[&(0, mb)];
        ids.extend_from_slice(i);
        targets.extend_from_slice(t);
    }
    pollster::block_on(m.loss_and_grads(
        &g,
        &Batch {
            ids,
            targets,
            seq: SEQ,
        },
    ))
    .unwrap();
    let norm = pollster::block_on(m.optimizer_step(&g, Optimizer::Sgd { lr: 0.0 }, 1, Some(1e9)))
        .unwrap()
        .unwrap();
    assert!(norm > 0.5, "gradient norm {norm} should exceed the clip");
    println!("step losses: {:?}", core.losses());
    // Every replica holds the coordinator's weights.
    for c in &clients {
        let p = c.pipeline().expect("a pipeline lease");
        assert_eq!(p.version(), STEPS);
    }
}

/// Tied embeddings: the embedding and head micro-shards are held by different leases, whose
/// gradient sums the coordinator adds into the one matrix's gradient (counted once by the
/// clip) before its one AdamW step; the weights equal single-device AdamW of the tied model and
/// every lease of a head micro-shard holds the embedding's rows.
#[test]
fn tied_embeddings_held_by_different_leases_equal_single_device_adamw() {
    let g = gpu();
    let cfg = ModelConfig {
        tie_word_embeddings: true,
        ..model()
    };
    let init: ModelParams<f32> = ModelParams::random(&cfg, 23);
    assert_eq!(init.head, init.embed);
    let clip = Some(0.5f32);
    let (core, seen, _) = small_leases(&g, &cfg, &init, clip);
    assert_eq!(core.weights().head, core.weights().embed);
    let want = reference_of(&g, &cfg, &init, &seen, clip);
    compare("tied pipeline, 12 leases, clip 0.5", core.weights(), &want);
    // Untied training from the same start on the same data ends elsewhere: the tie mattered.
    let untied = reference_of(&g, &model(), &init, &seen, clip);
    let e = tessera_e2e::rel(&untied.embed, &want.embed);
    assert!(
        e > 1e-3,
        "untied training moves the embedding differently ({e:.2e})"
    );
}

#[test]
fn replicas_a_heavy_lease_and_a_worker_killed_mid_step_still_equal_adamw() {
    let g = gpu();
    let cfg = model();
    let init: ModelParams<f32> = ModelParams::random(&cfg, 24);
    let mut core = Core::new(spec(None), Identity::from_seed([9; 32]), init.clone());
    let small = small_budget(&cfg);
    // 12 small leases (one micro-shard each), then a second replica of each via 12 more, and a
    // heavy lease that fits the whole model.
    let mut budgets = vec![small; 24];
    budgets.push(1 << 30);
    let mut clients = tessera_e2e::with_budgets(&g, &budgets);
    let mut seen = Seen::default();
    let mut killed = None;
    let mut owed_at_kill = 0;
    tessera_e2e::run_with(&g, &mut core, &mut clients, |m, k| {
        watch(&mut seen, m, k);
        // Kill a small worker when the coordinator asks it for its gradient sums: its backward
        // units are done and accepted, but their sums exist only on it.
        if killed.is_none() && k < 24 {
            if let Message::Down(ToContributor::Collect { step, .. }) = m {
                killed = Some((k, *step));
                owed_at_kill = seen.backward.len();
                return Control::Kill(k);
            }
        }
        Control::Go
    })
    .unwrap();
    assert_eq!(core.phase(), Phase::Finished);
    let (k, step) = killed.expect("a worker was killed mid-step");
    println!(
        "killed contributor {k} in step {step} after {owed_at_kill} backward micro-shard runs"
    );
    // Everything the killed contributor ran backward in that step ran again on someone else.
    let lost: Vec<_> = seen.backward[..owed_at_kill]
        .iter()
        .filter(|b| b.0 == k && b.1 == step)
        .collect();
    assert!(!lost.is_empty());
    for b in &lost {
        assert!(
            seen.backward[owed_at_kill..]
                .iter()
                .any(|a| a.0 != k && (a.1, a.2, a.3, &a.4) == (b.1, b.2, b.3, &b.4)),
            "{b:?} was re-run elsewhere"
        );
    }
    let heavy = core
        .sessions()
        .into_iter()
        .map(|s| s.shards.len())
        .max()
        .unwrap();
    assert!(
        heavy > 2,
        "the big budget holds whole stages ({heavy} micro-shards)"
    );
    let want = reference(&g, &init, &seen, None);
    println!("{} span units among {}", seen.spans, seen.units.len());
    compare(
        "pipeline with replicas, a heavy lease and a kill",
        core.weights(),
        &want,
    );
}

#[test]
fn a_coordinator_restarted_between_steps_resumes_with_its_adamw_state() {
    let g = gpu();
    let cfg = model();
    let init: ModelParams<f32> = ModelParams::random(&cfg, 25);
    let mut core = Core::new(spec(Some(0.5)), Identity::from_seed([9; 32]), init.clone());
    let n = 12;
    let mut clients = tessera_e2e::with_budgets(&g, &vec![small_budget(&cfg); n]);
    let mut seen = Seen::default();
    // Step 1 closed: the coordinator dies as it sends the new weights.
    tessera_e2e::run_with(&g, &mut core, &mut clients, |m, k| {
        watch(&mut seen, m, k);
        match m {
            Message::Down(ToContributor::StepWeights { step: 1, .. }) => Control::Stop,
            _ => Control::Go,
        }
    })
    .unwrap();
    let snap = core.snapshot();
    assert_eq!((snap.round, snap.version), (2, 2));
    assert!(
        snap.moments.is_some(),
        "the snapshot carries the AdamW moments"
    );
    let mut core = Core::resume(
        spec(Some(0.5)),
        Identity::from_seed([9; 32]),
        snap,
        Vec::new(),
    );
    let mut clients = tessera_e2e::with_budgets(&g, &vec![small_budget(&cfg); n]);
    tessera_e2e::run_with(&g, &mut core, &mut clients, |m, k| {
        watch(&mut seen, m, k);
        Control::Go
    })
    .unwrap();
    assert_eq!(core.phase(), Phase::Finished);
    let want = reference(&g, &init, &seen, Some(0.5));
    compare("pipeline restarted after step 1", core.weights(), &want);
}

#[test]
fn a_heavy_lease_runs_spans_of_whole_stages_with_fewer_hops() {
    let g = gpu();
    let cfg = model();
    let init: ModelParams<f32> = ModelParams::random(&cfg, 26);
    let mut core = Core::new(spec(Some(0.5)), Identity::from_seed([9; 32]), init.clone());
    let mut clients = tessera_e2e::with_budgets(&g, &[1 << 30]);
    let mut seen = Seen::default();
    tessera_e2e::run_with(&g, &mut core, &mut clients, |m, k| {
        watch(&mut seen, m, k);
        Control::Go
    })
    .unwrap();
    assert_eq!(core.phase(), Phase::Finished);
    // Per micro-batch: one forward span (embedding through the last MLP), the head's forward
    // and backward, one backward span.
    assert_eq!(
        seen.units.len() as u64,
        STEPS * MICRO * 4,
        "{:?}",
        seen.units
    );
    assert_eq!(seen.spans as u64, STEPS * MICRO * 2);
    let want = reference(&g, &init, &seen, Some(0.5));
    compare("one heavy lease running spans", core.weights(), &want);
}

#[test]
fn a_heavy_lease_lost_after_its_spans_has_them_re_run_stage_by_stage() {
    let g = gpu();
    let cfg = model();
    let init: ModelParams<f32> = ModelParams::random(&cfg, 27);
    let mut core = Core::new(spec(None), Identity::from_seed([9; 32]), init.clone());
    // The heavy lease joins first, so it is offered work first and runs spans; twelve small
    // leases hold one micro-shard each.
    let mut budgets = vec![1 << 30];
    budgets.extend(vec![small_budget(&cfg); 12]);
    let mut clients = tessera_e2e::with_budgets(&g, &budgets);
    let mut seen = Seen::default();
    let mut killed = false;
    let mut spans_before_kill = 0;
    let mut backward_before_kill = 0;
    tessera_e2e::run_with(&g, &mut core, &mut clients, |m, k| {
        watch(&mut seen, m, k);
        if !killed && k == 0 {
            if let Message::Down(ToContributor::Collect { .. }) = m {
                killed = true;
                spans_before_kill = seen.spans;
                backward_before_kill = seen.backward.len();
                return Control::Kill(0);
            }
        }
        Control::Go
    })
    .unwrap();
    assert_eq!(core.phase(), Phase::Finished);
    assert!(
        killed && spans_before_kill > 0,
        "the heavy lease ran spans, then died"
    );
    let rerun = seen.backward[backward_before_kill..]
        .iter()
        .filter(|b| b.1 == 0)
        .count();
    println!(
        "{spans_before_kill} spans before the kill; {rerun} micro-shard backward runs of step 0 after it"
    );
    assert!(
        rerun > 0,
        "its backward units ran again on the small leases"
    );
    let want = reference(&g, &init, &seen, None);
    compare("heavy lease lost after its spans", core.weights(), &want);
}

#[test]
fn a_spare_replica_moves_onto_a_micro_shard_whose_only_holder_died() {
    let g = gpu();
    let cfg = model();
    let init: ModelParams<f32> = ModelParams::random(&cfg, 28);
    let mut core = Core::new(spec(None), Identity::from_seed([9; 32]), init.clone());
    // Twelve leases of one micro-shard each, and a thirteenth: a second replica of one of them.
    let mut clients = tessera_e2e::with_budgets(&g, &[small_budget(&cfg); 13]);
    let mut seen = Seen::default();
    let mut killed = false;
    let mut leases_after_kill = 0;
    tessera_e2e::run_with(&g, &mut core, &mut clients, |m, k| {
        watch(&mut seen, m, k);
        if let Message::Down(ToContributor::Lease(l)) = m {
            if killed {
                println!("after the kill, lease {} to {k}: {:?}", l.lease, l.shards);
                leases_after_kill += 1;
            }
        }
        // Contributor 5 is the only holder of its micro-shard: kill it as it is asked for its
        // gradient sums. Nobody new joins.
        if !killed && k == 5 {
            if let Message::Down(ToContributor::Collect { .. }) = m {
                killed = true;
                return Control::Kill(5);
            }
        }
        Control::Go
    })
    .unwrap();
    assert!(killed);
    assert_eq!(
        core.phase(),
        Phase::Finished,
        "the run finished without a newcomer"
    );
    assert_eq!(
        leases_after_kill, 1,
        "one of the two replicas of Embed(0..48) was moved, once"
    );
    let want = reference(&g, &init, &seen, None);
    compare(
        "spare replica moved onto an orphaned micro-shard",
        core.weights(),
        &want,
    );
}

#[test]
fn checks_by_second_replicas_pass_and_leave_the_weights_equal_to_adamw() {
    let g = gpu();
    let cfg = model();
    let init: ModelParams<f32> = ModelParams::random(&cfg, 25);
    let mut sp = spec(None);
    sp.checks = Some(tessera_coordinator::core::spec::ChecksSpec::default());
    let mut core = Core::new(sp, Identity::from_seed([9; 32]), init.clone());
    // Two replicas of every micro-shard: each lease's step can be run again by the other.
    let mut clients = tessera_e2e::with_budgets(&g, &[small_budget(&cfg); 24]);
    let mut seen = Seen::default();
    let (mut audits, mut answers) = (0, 0);
    tessera_e2e::run_with(&g, &mut core, &mut clients, |m, k| {
        watch(&mut seen, m, k);
        match m {
            Message::Down(ToContributor::Audit(_)) => audits += 1,
            Message::Up(tessera_protocol::ToCoordinator::Session(s))
                if matches!(
                    s.body,
                    tessera_protocol::messages::SessionMessage::Audited(_)
                ) =>
            {
                answers += 1
            }
            _ => {}
        }
        Control::Go
    })
    .unwrap();
    assert_eq!(core.phase(), Phase::Finished);
    let passed: u64 = core.records().values().map(|r| r.checks_passed).sum();
    let failed: u64 = core.records().values().map(|r| r.checks_failed).sum();
    let credits: f64 = core.records().values().map(|r| r.flops).sum();
    println!("{audits} audits sent, {answers} answered; checks passed {passed}, failed {failed}; verified credits {:.3} GFLOP", credits / 1e9);
    assert!(audits > 0 && answers == audits);
    assert!(
        passed > 0 && failed == 0,
        "honest GPUs pass each other's checks"
    );
    assert!(credits > 0.0);
    // Running other leases' units for checks did not touch anyone's own gradient sums.
    let want = reference(&g, &init, &seen, None);
    compare("pipeline with checks", core.weights(), &want);
}
