//! Honest work on two different adapters is never refused by the checks that compare it across
//! them: lavapipe (or this machine's first adapter) beside Chromium's SwiftShader, opened
//! natively, the adapter a browser tab without a GPU computes on. A whole-model run that
//! replays units (half its contributors on each adapter) and a pipeline run in which each
//! micro-shard's two holders sit on different adapters, against the real coordinator state
//! machine: every check passes (or is skipped), nobody is refused, and a part of the checks
//! really compared one adapter's work with the other's (counted from the log: whose work, who
//! checked it). The long version of this is `false_positives --adapter ... --adapter ...`.

use std::collections::BTreeMap;

use tessera_compute::Gpu;
use tessera_coordinator::core::{Core, Phase, RunSpec};
use tessera_e2e::{data_run, identity, two_adapters, Control};
use tessera_protocol::log::{CheckOutcome, LogEvent, SignedEntry};
use tessera_protocol::{Identity, PublicKey};

/// Runs `spec` to its end with contributor `k` on `on[k]`; its log.
fn run(
    spec: RunSpec,
    init: tessera_compute::reference::ModelParams<f32>,
    on: &[&Gpu],
    budget: u64,
) -> Vec<SignedEntry> {
    let total = spec.rounds;
    let mut core = Core::new(spec, Identity::from_seed([77; 32]), init);
    let mut clients = tessera_e2e::with_budgets_on(on, &vec![budget; on.len()]);
    let ran = tessera_e2e::run_tampered(on, &mut core, &mut clients, |_, _| Control::Go, |_, _| {})
        .expect("honest contributors do not fail");
    assert_eq!(core.phase(), Phase::Finished, "the run reached its end");
    assert_eq!(core.round(), total);
    ran.log
}

/// `(checks judged, of which across adapters)`; panics on any check honest work failed.
fn judged(what: &str, log: &[SignedEntry], adapter_of: &BTreeMap<PublicKey, usize>) -> (u64, u64) {
    let (mut judged, mut across) = (0, 0);
    for e in log {
        match &e.entry.event {
            LogEvent::Checked {
                key,
                step,
                auditors,
                outcome,
                ..
            } => match outcome {
                CheckOutcome::Passed => {
                    judged += 1;
                    if auditors.iter().any(|a| adapter_of[a] != adapter_of[key]) {
                        across += 1;
                    }
                }
                CheckOutcome::Skipped(_) => {}
                other => panic!(
                    "{what}: honest work of {} at {step} judged {other:?}",
                    key.fingerprint()
                ),
            },
            LogEvent::Rejected { key, reason, .. } => {
                panic!(
                    "{what}: honest work of {} rejected: {reason}",
                    key.fingerprint()
                )
            }
            _ => {}
        }
        assert!(
            e.entry.event.failed_check().is_none(),
            "{what}: an honest identity was refused"
        );
    }
    println!("{what}: {judged} checks passed, {across} of them across the two adapters");
    (judged, across)
}

#[test]
fn checks_across_lavapipe_and_swiftshader_pass_honest_work() {
    let gpus = two_adapters().expect("two adapters");
    assert_ne!(gpus[0].adapter().name, gpus[1].adapter().name);

    // Whole model: six workers alternating adapters, four replicas a round, dense sync (so
    // units are replayed by another worker).
    let (spec, init) = data_run("e2e.toml", |cfg| {
        cfg.rounds = 4;
        cfg.train.replicas = 4;
        cfg.train.sync = tessera_coordinator::config::Sync::Dense;
    });
    let on: Vec<&Gpu> = (0..6).map(|k| &gpus[k % 2]).collect();
    let adapter_of: BTreeMap<PublicKey, usize> = (0..on.len())
        .map(|k| (identity(k).public(), k % 2))
        .collect();
    let log = run(spec, init, &on, 1 << 30);
    let (j, across) = judged("whole-model", &log, &adapter_of);
    assert!(j > 0 && across > 0, "replays compared the two adapters");

    // Pipeline: every micro-shard held twice, the first holder of each on one adapter and the
    // second on the other (leases go out in join order, fewest replicas first).
    let (spec, init) = data_run("pipeline.toml", |cfg| {
        cfg.rounds = 4;
        if let Some(p) = cfg.pipeline.as_mut() {
            p.budget = "400KiB".into();
        }
    });
    let p = spec.pipeline.as_ref().expect("a pipeline run");
    let leases: usize = p.stages.iter().map(Vec::len).sum();
    let budget = p.single_shard_budget();
    let on: Vec<&Gpu> = (0..2 * leases).map(|k| &gpus[k / leases]).collect();
    let adapter_of: BTreeMap<PublicKey, usize> = (0..on.len())
        .map(|k| (identity(k).public(), k / leases))
        .collect();
    let log = run(spec, init, &on, budget);
    let (j, across) = judged("pipeline", &log, &adapter_of);
    assert!(j > 0 && across > 0, "audits compared the two adapters");
}
