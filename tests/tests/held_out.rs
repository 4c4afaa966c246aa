//! The held-out loss check against real GPU replicas (in process): a whole-model run of the
//! end-to-end configuration (tiny byte-level model, built-in corpus, six slots a round, dense
//! sync) with replays off, so that the held-out check is the one that has to catch what follows.
//! Two hostile workers memorize: each trains, on its GPU, on the first sequence of its unit over
//! and over (every sequence of every inner step), and sends what comes out. Their updates lower
//! the loss of their own first batch (the own-batch check passes them) and stay under the norm
//! check; on the held-out sequences they gain far less than the round's other updates, and
//! that refuses them. Honest workers are never refused, no memorized update is
//! applied, and the held-out loss ends within 2% of the same run with the honest workers alone.

use std::collections::BTreeSet;

use tessera_compute::reference::ModelParams;
use tessera_coordinator::config::ChecksSection;
use tessera_coordinator::core::{Core, Phase, RunSpec};
use tessera_e2e::{data_run, gpu, held_out_loss, identity};
use tessera_protocol::messages::SessionMessage;
use tessera_protocol::{Code, Identity, PublicKey, Reason, TensorPayload, ToContributor};

const ROUNDS: u64 = 8;
const HONEST: usize = 9;

fn spec() -> (RunSpec, ModelParams<f32>) {
    let (spec, init) = data_run("e2e.toml", |cfg| {
        cfg.rounds = ROUNDS;
        cfg.train.replicas = 6;
        cfg.train.sync = tessera_coordinator::config::Sync::Dense;
        cfg.checks = Some(ChecksSection {
            replay: Some(false),
            ..ChecksSection::on()
        });
    });
    let checks = spec.checks.as_ref().expect("checks are on");
    assert!(
        !checks.replay,
        "replays are off: the held-out check has to catch it"
    );
    assert!(checks.held_out >= 4, "the run holds data out by default");
    (spec, init)
}

/// Who memorizes: connections 1 and 4 (of the six that get the first round's slots).
fn memorizer(k: usize) -> bool {
    k == 1 || k == 4
}

/// Work for a memorizer: every sequence of every inner step is the unit's first sequence.
fn memorize(msg: &mut ToContributor) {
    let ToContributor::Work(w) = msg else {
        return;
    };
    let shape: Vec<usize> = w.tokens.shape.iter().map(|&d| d as usize).collect();
    let tokens = w.tokens.to_u32().expect("work tokens");
    let row = shape[2];
    let again: Vec<u32> = (0..tokens.len() / row)
        .flat_map(|_| tokens[..row].iter().copied())
        .collect();
    w.tokens = TensorPayload::from_u32(&shape, &again);
}

struct Outcome {
    core: Core,
    /// Units a memorizer submitted.
    memorized: BTreeSet<u64>,
    /// Units applied by closed rounds.
    applied: BTreeSet<u64>,
    /// Refusals by check, with their reasons.
    failed: Vec<(PublicKey, Reason)>,
}

fn run(spec: RunSpec, init: &ModelParams<f32>, hostile: bool) -> Outcome {
    let g = gpu();
    let mut core = Core::new(spec, Identity::from_seed([9; 32]), init.clone());
    let n = HONEST + if hostile { 2 } else { 0 };
    let mut clients = tessera_e2e::contributors(&g, n);
    let hostile_k = |k: usize| hostile && memorizer(k);
    let mut memorized = BTreeSet::new();
    let ran = tessera_e2e::run_misled(
        &g,
        &mut core,
        &mut clients,
        |_, _| tessera_e2e::Control::Go,
        |k, msg| {
            if hostile_k(k) {
                memorize(msg);
            }
        },
        |k, body| {
            if let (true, SessionMessage::Submit(sub)) = (hostile_k(k), body) {
                memorized.insert(sub.unit);
            }
        },
    )
    .unwrap();
    assert_eq!(core.phase(), Phase::Finished);
    let failed = ran
        .log
        .iter()
        .filter_map(|e| e.entry.event.failed_check())
        .map(|(key, why)| (key, why.clone()))
        .collect();
    Outcome {
        core,
        memorized,
        applied: ran.applied.iter().map(|c| c.unit).collect(),
        failed,
    }
}

#[test]
fn memorizers_fail_the_held_out_check_and_honest_workers_pass_it() {
    let (spec, init) = spec();
    let honest = run(spec.clone(), &init, false);
    let hostile = run(spec.clone(), &init, true);
    let bad: BTreeSet<PublicKey> = (0..HONEST + 2)
        .filter(|&k| memorizer(k))
        .map(|k| identity(k).public())
        .collect();
    // Every held-out score, honest and memorized, for the record.
    let mut worst_honest = f64::INFINITY;
    for (name, o, h) in [
        ("honest-only", &honest, false),
        ("with memorizers", &hostile, true),
    ] {
        for s in o.core.held_out_scores() {
            let memorized = h && bad.contains(&s.key);
            let who = if memorized { "memorizer" } else { "honest" };
            println!(
                "{name}: round {} slot {} {who}{}: held-out gain {:+.4} per unit of norm, median {:+.4}, spread {:.4}, z {:+.2}",
                s.round,
                s.slot,
                if s.drawn { ", drawn" } else { "" },
                s.gain,
                s.median,
                s.spread,
                s.z
            );
            if !memorized {
                worst_honest = worst_honest.min(s.z);
            }
        }
    }
    println!("lowest z of an honest update: {worst_honest:+.2}");
    for (k, why) in &hostile.failed {
        println!(
            "failed {}: {why}",
            if bad.contains(k) {
                "memorizer"
            } else {
                "honest"
            }
        );
    }
    assert!(
        honest.failed.is_empty(),
        "an honest worker was refused: {:?}",
        honest.failed
    );
    assert!(
        hostile.failed.iter().all(|(k, _)| bad.contains(k)),
        "an honest worker was refused"
    );
    let records = hostile.core.records();
    for key in &bad {
        let r = records.get(key).cloned().unwrap_or_default();
        assert!(
            hostile
                .failed
                .iter()
                .any(|(k, why)| k == key && why.code == Code::HeldOut),
            "a memorizer failed the held-out check"
        );
        assert_eq!(
            (r.flops, r.pending_flops),
            (0.0, 0.0),
            "a memorizer kept credits"
        );
    }
    assert!(!hostile.memorized.is_empty(), "the memorizers sent updates");
    let applied: Vec<_> = hostile.memorized.intersection(&hostile.applied).collect();
    assert!(applied.is_empty(), "memorized updates applied: {applied:?}");
    let own: Vec<&PublicKey> = hostile
        .failed
        .iter()
        .filter(|(_, why)| why.code == Code::LossCheck)
        .map(|(k, _)| k)
        .collect();
    assert!(
        own.is_empty(),
        "the own-batch check passes memorizers: {own:?}"
    );
    let (a, b) = (
        held_out_loss(&spec, honest.core.weights()),
        held_out_loss(&spec, hostile.core.weights()),
    );
    println!("held-out loss: honest workers alone {a:.4}, with memorizers {b:.4}");
    assert!(
        (a - b).abs() <= 0.02 * a,
        "within 2% of the honest-only run"
    );
}
