//! `false_positives`: how often each check refuses honest work. Runs long, honest-only runs in
//! process on this machine's adapter (real GPU contributors, the real coordinator core): a
//! whole-model run of the end-to-end configuration with dense sync (so replays are on), one
//! with SparseLoCo and no replays where every update is checked every round (so the
//! statistics decide alone), and a pipeline run of the end-to-end pipeline configuration,
//! every contributor honest. Any check that fails, disputes or withholds here is a false
//! positive. Prints, per check, how many times it judged honest work and how many of those it
//! got wrong, with a 95% upper bound on the false-positive rate (the "rule of three" when none
//! was wrong), and how many honest identities each run refused.
//!
//! `--adapter NAME` (repeatable; a part of the name as `tessera adapters` lists it) spreads the
//! contributors over several adapters so the checks compare their work across them: whole-model
//! workers alternate adapters, and a pipeline run's holders of each micro-shard sit on different
//! ones. A name holding `swiftshader` adds Chromium's SwiftShader driver (Debian's `chromium`
//! package), the adapter of a browser tab without a GPU, beside this machine's.
//!
//! ```text
//! cargo run --release -p tessera-bench --bin false_positives -- --rounds 200 --sparse-rounds 100 --steps 100
//! cargo run --release -p tessera-bench --bin false_positives -- --adapter llvmpipe --adapter swiftshader
//! ```

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use tessera_compute::Gpu;
use tessera_coordinator::core::{Core, Phase, RunSpec};
use tessera_e2e::{data_run, Control, Message};
use tessera_protocol::log::{CheckOutcome, LogEvent, SignedEntry};
use tessera_protocol::{Code, Identity, PublicKey, ToContributor};

/// Judgements of one check over honest work: how many, and how many were wrong.
#[derive(Debug, Default, Clone, Copy)]
struct Judged {
    judged: u64,
    wrong: u64,
}

impl Judged {
    /// The 95% upper bound on the rate of wrong judgements (exact for none: 3/n).
    fn upper(&self) -> f64 {
        if self.judged == 0 {
            return 1.0;
        }
        let n = self.judged as f64;
        let p = self.wrong as f64 / n;
        if self.wrong == 0 {
            3.0 / n
        } else {
            (p + 1.96 * (p * (1.0 - p) / n).sqrt()).min(1.0)
        }
    }
}

fn arg(name: &str, default: u64) -> Result<u64> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a number"))?
            .parse()
            .with_context(|| format!("{name} needs a number")),
        None => Ok(default),
    }
}

/// Every `--adapter` given.
fn adapter_names() -> Result<Vec<String>> {
    let args: Vec<String> = std::env::args().collect();
    let mut names = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if a == "--adapter" {
            names.push(
                args.get(i + 1)
                    .context("--adapter needs a name (tessera adapters lists them)")?
                    .clone(),
            );
        }
    }
    Ok(names)
}

/// Runs `spec` with `n` honest contributors of `budget` bytes to its end, contributor `k` on
/// `gpus[on(k)]`; the log, and which adapter each identity was on.
fn run(
    gpus: &[Gpu],
    on: impl Fn(usize) -> usize,
    spec: RunSpec,
    init: tessera_compute::reference::ModelParams<f32>,
    n: usize,
    budget: u64,
    what: &str,
) -> Result<(Vec<SignedEntry>, Adapters)> {
    let total = spec.rounds;
    let mut core = Core::new(spec, Identity::from_seed([77; 32]), init);
    let adapters: Adapters = (0..n)
        .map(|k| (tessera_e2e::identity(k).public(), on(k)))
        .collect();
    let each: Vec<&Gpu> = (0..n).map(|k| &gpus[on(k)]).collect();
    let mut clients = tessera_e2e::with_budgets_on(each.as_slice(), &vec![budget; n]);
    let started = std::time::Instant::now();
    let mut last = u64::MAX;
    let ran = tessera_e2e::run_tampered(
        each.as_slice(),
        &mut core,
        &mut clients,
        |m, _| {
            let closed = match m {
                Message::Down(ToContributor::OuterStep { round, .. }) => Some(*round),
                Message::Down(ToContributor::StepWeights { step, .. }) => Some(*step),
                _ => None,
            };
            if let Some(c) = closed.filter(|&c| c != last && (c + 1) % 10 == 0) {
                eprintln!(
                    "{what}: {} of {total} closed ({:.0} s)",
                    c + 1,
                    started.elapsed().as_secs_f64()
                );
            }
            if let Some(c) = closed {
                last = c;
            }
            Control::Go
        },
        |_, _| {},
    )
    .context("a contributor failed")?;
    if core.phase() != Phase::Finished {
        // Nothing left in flight and the run not over: a round or step waits for what only a
        // clock would bring (a quorum's deadline), say because checks refused too many.
        println!(
            "the {what} run stalled at {} of {total} (below: what its checks found)",
            core.round()
        );
    }
    let on_adapter = |k: &PublicKey| {
        adapters
            .get(k)
            .map_or("?".to_string(), |&i| gpus[i].adapter().name.clone())
    };
    for e in &ran.log {
        let found =
            match &e.entry.event {
                LogEvent::Checked {
                    key, step, outcome, ..
                } => match outcome {
                    CheckOutcome::Passed | CheckOutcome::Skipped(_) => None,
                    other => Some(format!(
                        "{} (on {}) at {step}: {other:?}",
                        key.fingerprint(),
                        on_adapter(key)
                    )),
                },
                LogEvent::Rejected { key, reason, .. } if reason.code == Code::Copy => Some(
                    format!("{} (on {}): {reason}", key.fingerprint(), on_adapter(key)),
                ),
                _ => None,
            };
        if let Some(f) = found {
            println!("{what}: {f}");
        }
    }
    Ok((ran.log, adapters))
}

/// Which adapter (an index into the `--adapter` list) each identity computed on.
type Adapters = BTreeMap<PublicKey, usize>;

/// Of the checks that others ran (replays, audits), how many, and how many of them compared
/// work of one adapter with another's (some auditor on another adapter than the checked).
fn across(log: &[SignedEntry], on: &Adapters) -> (u64, u64) {
    let (mut run_by_others, mut across) = (0, 0);
    for e in log {
        if let LogEvent::Checked { key, auditors, .. } = &e.entry.event {
            if auditors.is_empty() {
                continue;
            }
            run_by_others += 1;
            if auditors.iter().any(|a| on.get(a) != on.get(key)) {
                across += 1;
            }
        }
    }
    (run_by_others, across)
}

fn print_across(what: &str, log: &[SignedEntry], on: &Adapters) {
    let (all, across) = across(log, on);
    println!("{what}: {across} of the {all} replays or audits compared two adapters");
}

/// Which check a whole-model failure came from, by its reason's code.
fn whole_model_check(code: Code) -> &'static str {
    match code {
        Code::NormOutlier => "norm (5x the round's median)",
        Code::LossCheck => "own-batch loss gain",
        Code::HeldOut => "held-out gain",
        Code::Copy => "copy",
        _ => "replay",
    }
}

/// Tallies the whole-model run's judgements.
fn whole_model(log: &[SignedEntry]) -> BTreeMap<&'static str, Judged> {
    let mut t: BTreeMap<&'static str, Judged> = BTreeMap::new();
    let mut updates_in_rounds = 0u64;
    let mut accepted = 0u64;
    for e in log {
        match &e.entry.event {
            LogEvent::Accepted { tokens, .. } if *tokens > 0 => accepted += 1,
            LogEvent::Rejected { reason, .. } if reason.code == Code::Copy => {
                let j = t.entry("copy").or_default();
                j.judged += 1;
                j.wrong += 1;
            }
            LogEvent::Checked {
                auditors, outcome, ..
            } => {
                let check = match (outcome, auditors.is_empty()) {
                    (CheckOutcome::Failed(r) | CheckOutcome::Disputed(r), true) => {
                        whole_model_check(r.code)
                    }
                    (_, true) => "own-batch loss gain",
                    (_, false) => "replay",
                };
                let j = t.entry(check).or_default();
                if check != "norm (5x the round's median)" && check != "held-out gain" {
                    j.judged += 1;
                }
                j.wrong += u64::from(!matches!(
                    outcome,
                    CheckOutcome::Passed | CheckOutcome::Skipped(_)
                ));
            }
            LogEvent::Closed { .. } => updates_in_rounds = accepted,
            _ => {}
        }
    }
    // The norm check judges every update of a closing round, the held-out check every update of
    // a round with a drawn one (here: every round, since new identities are drawn at rate one
    // until their records grow), the copy check every update on arrival.
    t.entry("norm (5x the round's median)").or_default().judged += updates_in_rounds;
    t.entry("held-out gain").or_default().judged += updates_in_rounds;
    t.entry("copy").or_default().judged += accepted;
    t
}

/// Tallies the pipeline run's audits.
fn pipeline(log: &[SignedEntry]) -> Judged {
    let mut j = Judged::default();
    for e in log {
        if let LogEvent::Checked { outcome, .. } = &e.entry.event {
            if !matches!(outcome, CheckOutcome::Skipped(_)) {
                j.judged += 1;
                j.wrong += u64::from(!matches!(outcome, CheckOutcome::Passed));
            }
        }
    }
    j
}

/// Identities a run's log refused (failed checks).
fn refused(log: &[SignedEntry]) -> usize {
    log.iter()
        .filter_map(|e| e.entry.event.failed_check().map(|(k, _)| k))
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

fn print(name: &str, j: &Judged) {
    println!(
        "{name:<32} {:>8} {:>6} {:>10.4} {:>12.4}",
        j.judged,
        j.wrong,
        if j.judged > 0 {
            j.wrong as f64 / j.judged as f64
        } else {
            0.0
        },
        j.upper()
    );
}

fn main() -> Result<()> {
    let rounds = arg("--rounds", 200)?;
    let steps = arg("--steps", 100)?;
    let workers = arg("--workers", 6)? as usize;
    let names = adapter_names()?;
    if names
        .iter()
        .any(|n| n.to_lowercase().contains("swiftshader"))
    {
        tessera_e2e::add_swiftshader().map_err(anyhow::Error::msg)?;
    }
    let gpus: Vec<Gpu> = if names.is_empty() {
        vec![tessera_e2e::gpu()]
    } else {
        names
            .iter()
            .map(|n| tessera_e2e::gpu_named(n).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?
    };
    let a = gpus.len();
    // Whole-model workers alternate adapters.
    let alternate = |k: usize| k % a;
    let (spec, init) = data_run("e2e.toml", |cfg| {
        cfg.rounds = rounds;
        cfg.train.replicas = 4;
        cfg.train.sync = tessera_coordinator::config::Sync::Dense;
    });
    let (whole, whole_on) = run(
        &gpus,
        alternate,
        spec,
        init,
        workers,
        1 << 30,
        "whole-model",
    )?;
    let sparse_rounds = arg("--sparse-rounds", 100)?;
    let (spec, init) = data_run("e2e.toml", |cfg| {
        cfg.rounds = sparse_rounds;
        cfg.checks = Some(tessera_coordinator::config::ChecksSection {
            new_rate: Some(1.0),
            min_rate: Some(1.0),
            replay: Some(false),
            ..tessera_coordinator::config::ChecksSection::on()
        });
    });
    let (sparse, sparse_on) = run(&gpus, alternate, spec, init, 3, 1 << 30, "sparse")?;
    let (spec, init) = data_run("pipeline.toml", |cfg| cfg.rounds = steps);
    let budget = spec
        .pipeline
        .as_ref()
        .context("a pipeline run")?
        .single_shard_budget();
    let leases = spec
        .pipeline
        .as_ref()
        .map_or(0, |p| p.stages.iter().map(Vec::len).sum::<usize>());
    // Leases go out in join order, fewest replicas first: the first holder of each micro-shard
    // on one adapter, the second on the next.
    let (piped, piped_on) = run(
        &gpus,
        |k| (k / leases.max(1)) % a,
        spec,
        init,
        2 * leases,
        budget,
        "pipeline",
    )?;
    for g in &gpus {
        println!("adapter: {}", g.adapter());
    }
    println!(
        "honest work judged by each check: a whole-model run of {rounds} rounds ({workers} workers, 4 replicas, dense sync) and a pipeline run of {steps} steps (two holders of each micro-shard)"
    );
    println!(
        "{:<32} {:>8} {:>6} {:>10} {:>12}",
        "check", "judged", "wrong", "rate", "95% bound"
    );
    for (name, j) in whole_model(&whole) {
        print(name, &j);
    }
    println!("identities refused: {}", refused(&whole));
    if a > 1 {
        print_across("whole-model", &whole, &whole_on);
    }
    println!(
        "a whole-model run of {sparse_rounds} rounds (3 workers, 3 replicas, SparseLoCo, no replays, every update checked every round; a wrong judgement withholds the update)"
    );
    for (name, j) in whole_model(&sparse) {
        print(name, &j);
    }
    println!("identities refused: {}", refused(&sparse));
    if a > 1 {
        print_across("sparse", &sparse, &sparse_on);
    }
    print("pipeline audit", &pipeline(&piped));
    println!("identities refused: {}", refused(&piped));
    if a > 1 {
        print_across("pipeline", &piped, &piped_on);
    }
    Ok(())
}
