//! Hostile contributors against the real coordinator state machine and real GPU replicas (in
//! process): whole-model runs of the end-to-end configuration (tiny byte-level model, built-in
//! corpus; six replica slots a round, dense sync) with checks on, replays of drawn units
//! included. Honest workers run beside hostile ones that send random updates, scaled updates,
//! NaN, copies of another's update, their own stale update again, an update scaled by only 1.5
//! (which only a replay catches), or behave for two rounds and then send random updates; every
//! message a hostile worker sends is signed with its own key, replays it is asked to run
//! included. No tampered update is applied, the hostile identities end with no credits, and the
//! held-out loss ends within 2% of the same run with the honest workers alone.

use std::collections::{BTreeMap, BTreeSet};

use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ModelParams;
use tessera_coordinator::core::{Core, Phase, Record, RunSpec};
use tessera_e2e::{data_run, gpu, held_out_loss, identity, Control, Message};
use tessera_protocol::log::{CheckOutcome, LogEvent};
use tessera_protocol::messages::{SessionMessage, Update};
use tessera_protocol::{Identity, PublicKey, TensorPayload, ToContributor};

const ROUNDS: u64 = 8;
const HONEST: usize = 12;

/// What a hostile worker does to its submissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    Random,
    Scaled,
    NaN,
    Copy,
    Stale,
    /// Honest for its first two submissions, then random.
    Turncoat,
    /// Its honest update scaled by 1.5: under the norm check, and still lowering the loss.
    Biased,
}

const ATTACKS: [Attack; 7] = [
    Attack::Turncoat,
    Attack::Stale,
    Attack::Copy,
    Attack::NaN,
    Attack::Random,
    Attack::Scaled,
    Attack::Biased,
];

fn spec() -> (RunSpec, ModelParams<f32>) {
    let (spec, init) = data_run("e2e.toml", |cfg| {
        cfg.rounds = ROUNDS;
        // Six slots a round: with honest and hostile workers alternating, each round mixes
        // both.
        cfg.train.replicas = 6;
        // Dense sync: which replica ran a slot then matters less to the result (no private
        // error feedback), so the runs with and without hostile workers can be compared closely.
        cfg.train.sync = tessera_coordinator::config::Sync::Dense;
    });
    assert!(spec.checks.is_some(), "checks are on by default");
    (spec, init)
}

/// Each value of a dense update, through `f`.
fn map_dense(u: &mut Update, mut f: impl FnMut(f32) -> f32) {
    let Update::Dense(ts) = u else {
        panic!("the run syncs dense updates")
    };
    for t in ts {
        let shape: Vec<usize> = t.tensor.shape.iter().map(|&d| d as usize).collect();
        let v: Vec<f32> = t.tensor.to_f32().unwrap().into_iter().map(&mut f).collect();
        t.tensor = TensorPayload::from_f32(&shape, &v);
    }
}

/// Random values of the update's own magnitudes: random signs, each scaled by 0.5..2.5.
fn randomize(u: &mut Update, r: &mut SplitMix) {
    map_dense(u, |x| {
        let sign = if r.next_u64().is_multiple_of(2) {
            1.0
        } else {
            -1.0
        };
        sign * x.abs() * (0.5 + (r.next_u64() % 100) as f32 / 50.0)
    });
}

fn scale(u: &mut Update, by: f32) {
    map_dense(u, |x| x * by);
}

fn poison(u: &mut Update) {
    if let Update::Dense(ts) = u {
        ts[0].tensor.data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
}

struct Outcome {
    core: Core,
    /// Units whose submission a hostile worker tampered with, and by whom.
    tampered: BTreeMap<u64, usize>,
    /// Units whose update went into a closed round: accepted, and not thrown out by a check
    /// before the round closed.
    applied: BTreeSet<u64>,
    /// Replays run (units sent again to another contributor) and their verdicts.
    replays: usize,
}

/// Who does what: three honest workers, the hostile ones, then the other honest ones. Units go
/// to the lowest idle connection first, so the first round's six slots go to the three honest
/// workers and the first three hostile ones (two of which behave at first), and each refused
/// attacker's slot goes to the next attacker: every attacker gets work, one at a time.
fn roles(hostile: &[Attack]) -> Vec<Option<Attack>> {
    (0..HONEST + hostile.len())
        .map(|k| k.checked_sub(3).and_then(|i| hostile.get(i).copied()))
        .collect()
}

fn run(spec: RunSpec, init: &ModelParams<f32>, hostile: &[Attack]) -> Outcome {
    let g = gpu();
    let mut core = Core::new(spec, Identity::from_seed([9; 32]), init.clone());
    let roles = roles(hostile);
    let mut clients = tessera_e2e::contributors(&g, roles.len());
    let attack = |k: usize| roles[k];
    let mut rng = SplitMix(99);
    let mut last_honest: Option<Update> = None;
    let mut own: BTreeMap<usize, Update> = BTreeMap::new();
    let mut sent: BTreeMap<usize, usize> = BTreeMap::new();
    let mut tampered = BTreeMap::new();
    let mut slots: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    let ran = tessera_e2e::run_tampered(
        &g,
        &mut core,
        &mut clients,
        |m, _| {
            if let Message::Down(ToContributor::Error {
                reason,
                fatal: true,
            }) = m
            {
                println!("refused ({:?}): {reason}", reason.code);
            }
            if let Message::Down(ToContributor::Work(w)) = m {
                *slots.entry((w.round, w.slot)).or_default() += 1;
            }
            Control::Go
        },
        |k, body| {
            let SessionMessage::Submit(sub) = body else {
                return;
            };
            let Some(a) = attack(k) else {
                last_honest = Some(sub.result.clone());
                return;
            };
            let count = sent.entry(k).or_default();
            *count += 1;
            let honest = sub.result.clone();
            match a {
                Attack::Random => randomize(&mut sub.result, &mut rng),
                Attack::Turncoat if *count > 2 => randomize(&mut sub.result, &mut rng),
                Attack::Turncoat => return,
                Attack::Scaled => scale(&mut sub.result, 10.0),
                Attack::Biased => scale(&mut sub.result, 1.5),
                Attack::NaN => poison(&mut sub.result),
                Attack::Copy => match &last_honest {
                    Some(u) => sub.result = u.clone(),
                    None => return,
                },
                Attack::Stale => match own.get(&k) {
                    Some(u) => sub.result = u.clone(),
                    None => {
                        own.insert(k, honest);
                        return;
                    }
                },
            }
            tampered.insert(sub.unit, k);
        },
    )
    .unwrap();
    assert_eq!(core.phase(), Phase::Finished);
    let replays = ran
        .log
        .iter()
        .filter(|e| {
            matches!(&e.entry.event, LogEvent::Checked { auditors, .. } if !auditors.is_empty())
        })
        .count();
    let outcomes: BTreeMap<String, usize> = ran.log.iter().fold(BTreeMap::new(), |mut m, e| {
        if let LogEvent::Checked {
            auditors, outcome, ..
        } = &e.entry.event
        {
            if !auditors.is_empty() {
                let name = match outcome {
                    CheckOutcome::Passed => "passed",
                    CheckOutcome::Failed(_) => "failed",
                    CheckOutcome::AuditorFailed(_) => "auditor failed",
                    CheckOutcome::Skipped(_) => "skipped",
                    CheckOutcome::Disputed(_) => "disputed",
                };
                *m.entry(name.to_string()).or_default() += 1;
            }
        }
        m
    });
    let sent_again: usize = slots.values().map(|n| n.saturating_sub(1)).sum();
    println!(
        "{} hostile: {replays} replays resolved {outcomes:?}; units sent for slots already sent once (replays and re-runs): {sent_again}",
        hostile.len()
    );
    Outcome {
        core,
        tampered,
        applied: ran.applied.iter().map(|c| c.unit).collect(),
        replays,
    }
}

/// An identity's record, for people.
fn describe(r: &Record) -> String {
    format!(
        "{} accepted, {} rejected, credits {:.3} GFLOP (pending {:.3}), checks passed {} failed {}",
        r.accepted,
        r.rejected,
        r.flops / 1e9,
        r.pending_flops / 1e9,
        r.checks_passed,
        r.checks_failed
    )
}

#[test]
fn hostile_whole_model_workers_change_nothing_and_earn_nothing() {
    let (spec, init) = spec();
    let before = held_out_loss(&spec, &init);
    let honest = run(spec.clone(), &init, &[]);
    let honest_loss = held_out_loss(&spec, honest.core.weights());
    let hostile = run(spec.clone(), &init, &ATTACKS);
    let hostile_loss = held_out_loss(&spec, hostile.core.weights());
    println!(
        "held-out loss {before:.4} -> honest workers alone {honest_loss:.4}, with {} hostile of {} {hostile_loss:.4} ({:+.2}%)",
        ATTACKS.len(),
        ATTACKS.len() + HONEST,
        100.0 * (hostile_loss - honest_loss) / honest_loss
    );
    assert!(
        honest.replays > 0 && hostile.replays > 0,
        "drawn units were replayed"
    );
    // No tampered update was applied.
    let applied: Vec<_> = hostile
        .tampered
        .iter()
        .filter(|(u, _)| hostile.applied.contains(u))
        .collect();
    assert!(applied.is_empty(), "tampered updates accepted: {applied:?}");
    // Every hostile identity ends refused and without credits; honest ones keep theirs.
    let records = hostile.core.records();
    let roles = roles(&ATTACKS);
    for (k, a) in roles
        .iter()
        .enumerate()
        .filter_map(|(k, a)| a.map(|a| (k, a)))
    {
        let key: PublicKey = identity(k).public();
        let r = records.get(&key).cloned().unwrap_or_default();
        println!("{a:?}: {}", describe(&r));
        assert!(r.checks_failed > 0, "{a:?} was caught");
        assert_eq!((r.flops, r.pending_flops), (0.0, 0.0), "{a:?} kept credits");
    }
    let mut honest_verified = 0.0;
    for k in (0..roles.len()).filter(|&k| roles[k].is_none()) {
        let r = records
            .get(&identity(k).public())
            .cloned()
            .unwrap_or_default();
        println!("honest {k}: {}", describe(&r));
        assert_eq!(r.checks_failed, 0, "honest worker {k} was found wrong");
        assert!(
            r.accepted == 0 || r.flops + r.pending_flops > 0.0,
            "honest worker {k} keeps its credits"
        );
        honest_verified += r.flops;
    }
    assert!(honest_verified > 0.0, "honest work earns verified credits");
    assert!(before - honest_loss > 0.1, "the run learns");
    assert!(
        (hostile_loss - honest_loss).abs() <= 0.02 * honest_loss,
        "within 2% of the honest-only run"
    );
}
