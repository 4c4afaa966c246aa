//! Hostile contributors in a pipeline run against the real coordinator state machine and real
//! GPU leases (in process): the end-to-end pipeline configuration (tiny byte-level model, built-in
//! corpus, bf16 activations, AdamW) cut into micro-shards of which honest leases hold every one
//! twice, beside hostile leases that send random gradient sums, scaled gradient sums, NaN, another
//! lease's results as their own, wrong forward activations, results computed on earlier weights,
//! or behave for two steps and then send wrong activations. Every message a hostile lease sends
//! is signed with its own key. No tampered result is part of a committed step, the hostile
//! identities end with no credits and are refused, and the held-out loss ends within 2% of the
//! same run with the honest leases alone.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ModelParams;
use tessera_coordinator::core::{Core, Phase, RunSpec};
use tessera_e2e::{data_run, gpu, held_out_loss, identity, Control, Message};
use tessera_protocol::activation::Activation;
use tessera_protocol::log::{LogEvent, SignedEntry};
use tessera_protocol::messages::{SessionMessage, Update};
use tessera_protocol::pipeline::{Pass, PipeResult};
use tessera_protocol::{Identity, ToContributor, ToCoordinator};

const STEPS: u64 = 8;

/// What a hostile lease does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    RandomGrads,
    ScaledGrads,
    NaN,
    /// Sends the latest result another lease sent for the same micro-shards and pass.
    Copy,
    WrongActivations,
    /// Sends, for each unit, the result it sent for the same micro-batch and pass in an earlier
    /// step (computed on older weights): a freeloader.
    Stale,
    /// Honest for its first two steps, then wrong forward activations.
    Turncoat,
}

const ATTACKS: [Attack; 7] = [
    Attack::RandomGrads,
    Attack::ScaledGrads,
    Attack::NaN,
    Attack::Copy,
    Attack::WrongActivations,
    Attack::Stale,
    Attack::Turncoat,
];

fn spec() -> (RunSpec, ModelParams<f32>) {
    let (spec, init) = data_run("pipeline.toml", |cfg| {
        cfg.rounds = STEPS;
        // Fewer, larger micro-shards than the CLI test: two honest holders of each stay few.
        if let Some(p) = cfg.pipeline.as_mut() {
            p.budget = "400KiB".into();
        }
    });
    assert!(spec.checks.is_some(), "checks are on by default");
    (spec, init)
}

/// The budget that fits the largest single micro-shard's lease.
fn budget(spec: &RunSpec) -> u64 {
    spec.pipeline.as_ref().unwrap().single_shard_budget()
}

/// A unit as the watcher saw it go down.
#[derive(Clone, Debug)]
struct UnitInfo {
    step: u64,
    mb: u64,
    pass: Pass,
    shards: Vec<String>,
}

/// A hostile lease's result slot: (contributor, micro-batch, forward, micro-shards).
type OwnKey = (usize, u64, bool, Vec<String>);

#[derive(Default)]
struct Seen {
    units: BTreeMap<u64, UnitInfo>,
    /// Steps whose weights each contributor received.
    steps: BTreeMap<usize, u64>,
    /// The latest result each (micro-shards, pass) got from an honest lease.
    latest: BTreeMap<(Vec<String>, bool), PipeResult>,
    /// Each hostile lease's own results by (micro-batch, pass, micro-shards), with their step.
    own: BTreeMap<OwnKey, (u64, PipeResult)>,
    tampered: BTreeMap<u64, usize>,
    /// Who held each micro-shard.
    holders: BTreeMap<String, BTreeSet<usize>>,
    work_units: u64,
    audit_units: u64,
}

fn perturb(a: &mut Activation, f: impl Fn(usize, f32) -> f32) {
    let shape: Vec<usize> = a.tensor.shape.iter().map(|&d| d as usize).collect();
    let v: Vec<f32> = a
        .decode()
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, x)| f(i, x))
        .collect();
    // NaN does not encode through `Activation::encode` (finite values only): write f32 raw.
    *a = if v.iter().all(|x| x.is_finite()) {
        Activation::encode(&shape, &v, a.encoding)
    } else {
        Activation::encode(
            &shape,
            &vec![0.0; v.len()],
            tessera_protocol::ActEncoding::F32,
        )
    };
    if !v.iter().all(|x| x.is_finite()) {
        a.tensor = tessera_protocol::TensorPayload::from_f32(&shape, &v);
    }
}

fn map_grads(u: &mut Update, mut f: impl FnMut(f32) -> f32) -> bool {
    let Update::Dense(ts) = u else {
        return false;
    };
    for t in ts {
        let shape: Vec<usize> = t.tensor.shape.iter().map(|&d| d as usize).collect();
        let v: Vec<f32> = t.tensor.to_f32().unwrap().into_iter().map(&mut f).collect();
        t.tensor = tessera_protocol::TensorPayload::from_f32(&shape, &v);
    }
    true
}

/// A forward activation result, if `r` is one.
fn forward_activation(r: &mut PipeResult) -> Option<&mut Activation> {
    match r {
        PipeResult::Activation(a) => Some(a),
        PipeResult::Span(v) => v.first_mut(),
        _ => None,
    }
}

/// Rewrites what hostile contributor `k` is about to send; true when it changed anything.
fn tamper(
    attack: Attack,
    k: usize,
    body: &mut SessionMessage,
    seen: &mut Seen,
    rng: &mut SplitMix,
) -> bool {
    let steps = seen.steps.get(&k).copied().unwrap_or(0);
    match body {
        SessionMessage::Grads(g) => match attack {
            Attack::RandomGrads => {
                let mut any = false;
                for s in &mut g.shards {
                    any |= map_grads(&mut s.tensors, |x| {
                        let sign = if rng.next_u64().is_multiple_of(2) {
                            1.0
                        } else {
                            -1.0
                        };
                        sign * x.abs() * (0.5 + (rng.next_u64() % 100) as f32 / 50.0)
                    });
                }
                any
            }
            Attack::ScaledGrads => {
                let mut any = false;
                for s in &mut g.shards {
                    any |= map_grads(&mut s.tensors, |x| 3.0 * x);
                }
                any
            }
            _ => false,
        },
        SessionMessage::Output(o) => {
            let Some(info) = seen.units.get(&o.unit).cloned() else {
                return false;
            };
            let forward = info.pass == Pass::Forward;
            let key = (k, info.mb, forward, info.shards.clone());
            let honest_result = o.result.clone();
            let changed = match attack {
                Attack::NaN => match forward_activation(&mut o.result) {
                    Some(a) => {
                        perturb(a, |i, x| if i == 3 { f32::NAN } else { x });
                        true
                    }
                    None => false,
                },
                Attack::WrongActivations => match (forward, forward_activation(&mut o.result)) {
                    (true, Some(a)) => {
                        perturb(a, |_, x| x + 0.05 * (1.0 + x.abs()));
                        true
                    }
                    _ => false,
                },
                Attack::Turncoat if steps >= 2 => {
                    match (forward, forward_activation(&mut o.result)) {
                        (true, Some(a)) => {
                            perturb(a, |_, x| x + 0.05 * (1.0 + x.abs()));
                            true
                        }
                        _ => false,
                    }
                }
                Attack::Copy => match seen.latest.get(&(info.shards.clone(), forward)) {
                    Some(r) if *r != o.result => {
                        o.result = r.clone();
                        true
                    }
                    _ => false,
                },
                Attack::Stale => match seen.own.get(&key) {
                    Some((step, r)) if *step < info.step && *r != o.result => {
                        o.result = r.clone();
                        true
                    }
                    _ => false,
                },
                _ => false,
            };
            seen.own.entry(key).or_insert((info.step, honest_result));
            changed
        }
        _ => false,
    }
}

struct Outcome {
    core: Core,
    log: Vec<SignedEntry>,
    seen: Seen,
}

fn run(spec: &RunSpec, init: &ModelParams<f32>, roles: &[Option<Attack>]) -> Outcome {
    let g = gpu();
    let mut core = Core::new(spec.clone(), Identity::from_seed([77; 32]), init.clone());
    let mut clients = tessera_e2e::with_budgets(&g, &vec![budget(spec); roles.len()]);
    let seen = Rc::new(RefCell::new(Seen::default()));
    let mut rng = SplitMix(41);
    let watch_seen = seen.clone();
    let ran = tessera_e2e::run_tampered(
        &g,
        &mut core,
        &mut clients,
        |m, k| {
            let mut s = watch_seen.borrow_mut();
            match m {
                Message::Down(ToContributor::Unit(w)) => {
                    s.work_units += 1;
                    s.units.insert(
                        w.unit,
                        UnitInfo {
                            step: w.step,
                            mb: w.micro_batch,
                            pass: w.pass,
                            shards: w.shards.iter().map(|x| format!("{x:?}")).collect(),
                        },
                    );
                }
                Message::Down(ToContributor::Audit(a)) => s.audit_units += a.units.len() as u64,
                Message::Down(ToContributor::Lease(l)) => {
                    for sh in &l.shards {
                        s.holders.entry(format!("{sh:?}")).or_default().insert(k);
                    }
                }
                Message::Down(ToContributor::StepWeights { step, .. }) => {
                    s.steps.insert(k, step + 1);
                }
                Message::Up(ToCoordinator::Session(signed)) if roles[k].is_none() => {
                    if let SessionMessage::Output(o) = &signed.body {
                        if let Some(info) = s.units.get(&o.unit).cloned() {
                            s.latest.insert(
                                (info.shards, info.pass == Pass::Forward),
                                o.result.clone(),
                            );
                        }
                    }
                }
                _ => {}
            }
            Control::Go
        },
        |k, body| {
            let Some(attack) = roles[k] else { return };
            let mut s = seen.borrow_mut();
            if tamper(attack, k, body, &mut s, &mut rng) {
                let unit = match body {
                    SessionMessage::Output(o) => o.unit,
                    SessionMessage::Grads(g) => g.unit,
                    _ => return,
                };
                s.tampered.insert(unit, k);
            }
        },
    )
    .expect("the run");
    let log = ran.log;
    drop(clients);
    let seen = std::mem::take(&mut *seen.borrow_mut());
    Outcome { core, log, seen }
}

/// Units whose results went into a committed step: accepted after the previous step closed or
/// was discarded, and before this one closed.
fn committed_units(log: &[SignedEntry]) -> BTreeSet<u64> {
    let (mut committed, mut open) = (BTreeSet::new(), BTreeSet::new());
    for e in log {
        match &e.entry.event {
            LogEvent::Accepted { unit, .. } => {
                open.insert(*unit);
            }
            LogEvent::Discarded { .. } => open.clear(),
            LogEvent::Closed { .. } => committed.append(&mut open),
            _ => {}
        }
    }
    committed
}

#[test]
fn hostile_pipeline_leases_on_real_gpus_change_nothing_and_earn_nothing() {
    let (spec, init) = spec();
    let shards: usize = spec
        .pipeline
        .as_ref()
        .unwrap()
        .stages
        .iter()
        .map(Vec::len)
        .sum();
    let honest = 2 * shards;
    let before = held_out_loss(&spec, &init);

    let alone = run(&spec, &init, &vec![None; honest]);
    assert_eq!(alone.core.phase(), Phase::Finished);
    let honest_loss = held_out_loss(&spec, alone.core.weights());

    // The hostile leases join first: work goes to the lowest idle connection, so they get
    // their share of every kind of unit, backward ones included. The honest ones then hold every
    // micro-shard twice over.
    let roles: Vec<Option<Attack>> = ATTACKS
        .iter()
        .map(|&a| Some(a))
        .chain((0..honest).map(|_| None))
        .collect();
    let out = run(&spec, &init, &roles);
    assert_eq!(out.core.phase(), Phase::Finished);
    for (shard, holders) in &out.seen.holders {
        let honest_holders = holders.iter().filter(|&&k| roles[k].is_none()).count();
        println!("{shard}: held by {holders:?}");
        assert!(honest_holders >= 2, "{shard} has two honest holders");
    }
    let hostile_loss = held_out_loss(&spec, out.core.weights());
    let diff = (hostile_loss - honest_loss) / honest_loss;
    println!(
        "{shards} micro-shards, {honest} honest leases and {} hostile ({:.0}%); held-out loss {before:.4} -> {honest_loss:.4} honest alone, {hostile_loss:.4} with the hostile ({:+.2}%)",
        ATTACKS.len(),
        100.0 * ATTACKS.len() as f64 / roles.len() as f64,
        100.0 * diff
    );
    let weights_apart = tessera_e2e::rel(
        &out.core
            .weights()
            .named()
            .into_iter()
            .flat_map(|(_, v)| v.clone())
            .collect::<Vec<_>>(),
        &alone
            .core
            .weights()
            .named()
            .into_iter()
            .flat_map(|(_, v)| v.clone())
            .collect::<Vec<_>>(),
    );
    println!("final weights {weights_apart:.2e} apart (relative L2) from the honest-only run's");
    assert!(honest_loss < before - 0.3, "the run trains");
    assert!(diff.abs() < 0.02, "within 2% of the honest-only run");
    // Stronger: every step committed exactly the honest leases' results, so the weights are the
    // honest-only run's up to the order the sums arrived in.
    assert!(weights_apart < 1e-5, "{weights_apart}");

    // Every attack happened, and none is part of a committed step.
    let committed = committed_units(&out.log);
    let mut by_attack: BTreeMap<String, usize> = BTreeMap::new();
    for (&unit, &k) in &out.seen.tampered {
        *by_attack
            .entry(format!("{:?}", roles[k].unwrap()))
            .or_default() += 1;
        assert!(
            !committed.contains(&unit),
            "unit {unit} tampered by {:?} was committed",
            roles[k]
        );
    }
    println!("tampered results: {by_attack:?}");
    assert_eq!(
        by_attack.len(),
        ATTACKS.len(),
        "every attack was made: {by_attack:?}"
    );

    // No credits for the hostile identities, all refused; the honest keep theirs.
    let records = out.core.records();
    for (k, role) in roles.iter().enumerate() {
        let key = identity(k).public();
        let r = records.get(&key).cloned().unwrap_or_default();
        match role {
            Some(a) => {
                println!(
                    "{a:?}: {} accepted, {} rejected, checks passed {} failed {}, credits {} pending {}",
                    r.accepted, r.rejected, r.checks_passed, r.checks_failed, r.flops, r.pending_flops
                );
                assert_eq!((r.flops, r.pending_flops), (0.0, 0.0), "{a:?} kept credits");
                assert!(out.core.is_refused(&key), "{a:?} is refused");
            }
            None => {
                assert_eq!(r.checks_failed, 0, "honest lease {k} was found wrong");
                assert!(!out.core.is_refused(&key));
            }
        }
    }
    let discarded = out
        .log
        .iter()
        .filter(|e| matches!(e.entry.event, LogEvent::Discarded { .. }))
        .count();
    println!(
        "steps discarded and re-run {discarded}; units run {} for steps and {} for checks ({:.0}% recomputed); honest alone: {} and {}",
        out.seen.work_units,
        out.seen.audit_units,
        100.0 * out.seen.audit_units as f64 / out.seen.work_units as f64,
        alone.seen.work_units,
        alone.seen.audit_units
    );
}
