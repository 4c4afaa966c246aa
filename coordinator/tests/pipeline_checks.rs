//! Checks of untrusted pipeline work, in a deterministic simulation: 14 honest contributors
//! (each the worker's real protocol session over scripted compute, each with its own "adapter": results off by a relative 1e-7, as different GPUs
//! are) and 7 hostile ones (a third) that send random gradient sums, scaled gradient sums, NaN,
//! copies of an earlier result, wrong forward activations, results of stale weights, or behave
//! well for two steps and then attack. Each contributor reports, as its gradient sum for a
//! micro-shard, the number of backward units it ran on it; with SGD at learning rate 1 the
//! weights then move by exactly steps x micro-batches per element only if no hostile sum was
//! ever applied. Also: every hostile identity is found, refused and left without credits, no
//! honest one is, the log records each check, and the share of work recomputed for checks and
//! the bias an attacker under the tolerance can cause are reported.

mod common;
#[path = "pipeline_checks/roles.rs"]
mod roles;
#[path = "pipeline_checks/sybils.rs"]
mod sybils;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use common::tiny_model;
use roles::{Role, RoleCompute, Sim};
use tessera_compute::model::{shards, Slicing};
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ModelParams;
use tessera_coordinator::core::spec::{ChecksSpec, PipelineSpec};
use tessera_coordinator::core::{Action, ConnId, Core, Input, Phase, RunSpec};
use tessera_protocol::log::{CheckOutcome, LogEvent};
use tessera_protocol::messages::ContributorKind;
use tessera_protocol::{ActEncoding, Identity, PublicKey, ToContributor};
use tessera_train::schedule::Schedule;
use tessera_worker::session::Session;
use tessera_worker::{exchange, WorkerError};

const STEPS: u64 = 8;
const MICRO: u64 = 4;
const SEQ: usize = 8;
/// The head's stage: embed, attention, MLP, head.
const HEAD: u64 = 3;

fn spec(checks: ChecksSpec) -> RunSpec {
    spec_for(checks, STEPS)
}

fn spec_for(checks: ChecksSpec, steps: u64) -> RunSpec {
    let mut sp = common::spec(1, steps, tessera_protocol::messages::SyncMode::Dense);
    let cfg = tiny_model();
    let stages = shards(
        &cfg,
        Slicing {
            embed: 2,
            attn: 1,
            mlp: 2,
            head: 2,
        },
    )
    .unwrap();
    sp.pipeline = Some(PipelineSpec {
        state_bytes: stages.iter().map(|s| vec![1000; s.len()]).collect(),
        work_bytes: stages.iter().map(|s| vec![0; s.len()]).collect(),
        stages,
        micro_batches: MICRO,
        activations: ActEncoding::Bf16,
        grads: tessera_protocol::messages::SyncMode::Dense,
        max_activation: tessera_coordinator::core::spec::DEFAULT_MAX_ACTIVATION,
    });
    sp.checks = Some(checks);
    sp.inner_lr = Schedule::constant(1.0);
    sp.optimizer = tessera_protocol::messages::InnerOptimizer::Sgd;
    sp.inner_clip = None;
    sp.unit_deadline_ms = 2_000;
    sp.silence_ms = 60_000;
    sp
}

struct Run {
    core: Core,
    now: u64,
    next_conn: ConnId,
    log: Vec<tessera_protocol::log::SignedEntry>,
}

impl Run {
    fn feed(&mut self, sims: &mut [Sim], input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            for a in self.core.tick(self.now, input) {
                match a {
                    Action::Send { conn, msg } => {
                        if let Some(k) = sims.iter().position(|s| s.conn == Some(conn)) {
                            let later = matches!(
                                msg,
                                ToContributor::Unit(_)
                                    | ToContributor::Audit(_)
                                    | ToContributor::Collect { .. }
                            );
                            let replies = answer(&mut sims[k], msg);
                            if later {
                                sims[k].outbox.extend(replies);
                            } else {
                                queue.extend(
                                    replies.into_iter().map(|msg| Input::Message { conn, msg }),
                                );
                            }
                        }
                    }
                    Action::Logged(e) => self.log.push(e),
                    Action::Close { conn, .. } => {
                        if let Some(s) = sims.iter_mut().find(|s| s.conn == Some(conn)) {
                            s.conn = None;
                            s.outbox.clear();
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `msg` handled by `s`'s session and compute: what it sends. A refusal ends its session (the
/// coordinator closes the connection); nothing else may fail.
fn answer(s: &mut Sim, msg: ToContributor) -> Vec<tessera_protocol::ToCoordinator> {
    match pollster::block_on(exchange(&mut s.session, &mut s.compute, msg)) {
        Ok(sent) => sent,
        Err(WorkerError::Refused(_)) => Vec::new(),
        Err(e) => panic!("{:?}'s session failed: {e}", s.role),
    }
}

/// Runs the simulation with `roles`; the run, the contributors and the weights it started from.
fn simulate(roles: &[Role], checks: ChecksSpec) -> (Run, Vec<Sim>, ModelParams<f32>) {
    simulate_with(roles, spec(checks), 200)
}

/// Runs `roles` in a run of `sp` whose coordinator's key is drawn from `coordinator`.
fn simulate_with(
    roles: &[Role],
    sp: RunSpec,
    coordinator: u8,
) -> (Run, Vec<Sim>, ModelParams<f32>) {
    let cfg = tiny_model();
    let init = ModelParams::random(&cfg, 3);
    let mut run = Run {
        core: Core::new(sp, Identity::from_seed([coordinator; 32]), init.clone()),
        now: 0,
        next_conn: 1,
        log: Vec::new(),
    };
    let mut sims: Vec<Sim> = roles
        .iter()
        .enumerate()
        .map(|(i, &role)| Sim {
            role,
            session: Session::new(
                Identity::from_seed([i as u8 + 1; 32]),
                ContributorKind::Native,
                common::scripted_caps(1000),
            ),
            compute: RoleCompute {
                role,
                drift: (i as f32 - 10.0) * 1e-8,
                held: Vec::new(),
                owed: Vec::new(),
                steps_seen: 0,
                copy: None,
                rng: SplitMix(42 + i as u64),
                work_units: 0,
                audit_units: 0,
                step: 0,
                attacked: Default::default(),
            },
            conn: None,
            outbox: Vec::new(),
        })
        .collect();
    // Everyone joins, then the run goes on; refused contributors do not come back.
    for k in 0..sims.len() {
        let conn = run.next_conn;
        run.next_conn += 1;
        sims[k].conn = Some(conn);
        let mut nonce = [0u8; 32];
        nonce[..8].copy_from_slice(&conn.to_le_bytes());
        run.feed(&mut sims, Input::Connected { conn, nonce });
        let hello = sims[k].session.hello();
        run.feed(&mut sims, Input::Message { conn, msg: hello });
    }
    let mut ticks = 0;
    while run.core.phase() != Phase::Finished {
        ticks += 1;
        assert!(ticks < 200_000, "the run did not finish");
        run.now += 50;
        for k in 0..sims.len() {
            let Some(conn) = sims[k].conn else { continue };
            for msg in std::mem::take(&mut sims[k].outbox) {
                run.feed(&mut sims, Input::Message { conn, msg });
            }
        }
        run.feed(&mut sims, Input::Tick);
    }
    (run, sims, init)
}

/// How far the weights' update after `steps` steps lies, relative, from the one the honest
/// gradient sums alone make (each weight moved by steps x micro-batches).
fn bias(core: &Core, init: &ModelParams<f32>, steps: u64) -> f64 {
    let want = (steps * MICRO) as f64;
    let (lo, hi) = moved(core, init);
    (hi - want).abs().max((lo - want).abs()) / want
}

/// Every honest contributor of the run with coordinator key `seed` passed its checks and is
/// still connected.
fn honest_stayed(run: &Run, sims: &[Sim], seed: u8) {
    for s in sims.iter().filter(|s| s.role == Role::Honest) {
        let failed = run
            .core
            .records()
            .get(&s.session.key())
            .map_or(0, |r| r.checks_failed);
        assert_eq!(
            failed, 0,
            "seed {seed}: an honest contributor failed a check"
        );
        assert!(
            s.conn.is_some(),
            "seed {seed}: an honest contributor was refused"
        );
    }
}

/// How far every weight moved, per element (one value when the run was exact).
fn moved(core: &Core, init: &ModelParams<f32>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for ((name, a), (_, b)) in core.weights().named().into_iter().zip(init.named()) {
        // Replicated norm weights get one sum per slice sharing them: skip them here.
        if name.contains("norm") {
            continue;
        }
        for (x, y) in a.iter().zip(b) {
            let m = (*y - *x) as f64;
            lo = lo.min(m);
            hi = hi.max(m);
        }
    }
    (lo, hi)
}

#[test]
fn hostile_pipeline_work_is_caught_never_applied_and_earns_nothing() {
    // The hostile join first: work goes to the lowest connection first, so they get plenty.
    let mut roles = vec![
        Role::RandomGrads,
        Role::ScaledGrads,
        Role::NaN,
        Role::Copier,
        Role::WrongActivations,
        Role::Stale,
        Role::Turncoat,
    ];
    roles.extend([Role::Honest; 14]);
    let (run, sims, init) = simulate(&roles, ChecksSpec::default());
    let want = (STEPS * MICRO) as f64;
    let (lo, hi) = moved(&run.core, &init);
    println!("every weight moved by {lo}..{hi}; exactly {want} if only honest sums were applied");
    assert!(
        (lo - want).abs() <= want * 1e-5 && (hi - want).abs() <= want * 1e-5,
        "a hostile gradient sum was applied: weights moved by {lo}..{hi}, not {want}"
    );

    // Every hostile identity was found, refused and left without credits; no honest one was.
    let records = run.core.records();
    let failed: BTreeMap<PublicKey, String> = run
        .log
        .iter()
        .filter_map(|e| e.entry.event.failed_check())
        .map(|(key, why)| (key, why.to_string()))
        .collect();
    let left: BTreeMap<PublicKey, String> = run
        .log
        .iter()
        .filter_map(|e| match &e.entry.event {
            LogEvent::Left { key, reason } => Some((*key, reason.to_string())),
            _ => None,
        })
        .collect();
    for s in &sims {
        let key = s.session.key();
        let r = records.get(&key).cloned().unwrap_or_default();
        println!(
            "{:?}: credits {:.2} MFLOP, pending {:.2}, checks passed {} failed {}; {}",
            s.role,
            r.flops / 1e6,
            r.pending_flops / 1e6,
            r.checks_passed,
            r.checks_failed,
            failed
                .get(&key)
                .or(left.get(&key))
                .map_or("-".to_string(), |w| w.clone())
        );
        if s.role == Role::Honest {
            assert_eq!(r.checks_failed, 0, "{:?} was found wrong", s.role);
            assert!(s.conn.is_some(), "an honest contributor was refused");
        } else {
            assert!(r.checks_failed > 0, "{:?} was not caught", s.role);
            assert_eq!(
                (r.flops, r.pending_flops),
                (0.0, 0.0),
                "{:?} kept credits",
                s.role
            );
            assert!(s.conn.is_none(), "{:?} is still connected", s.role);
        }
    }
    let honest_credits: f64 = sims
        .iter()
        .filter(|s| s.role == Role::Honest)
        .map(|s| records.get(&s.session.key()).map_or(0.0, |r| r.flops))
        .sum();
    assert!(honest_credits > 0.0, "honest work earns verified credits");
    let passed = run
        .log
        .iter()
        .filter(|e| {
            matches!(
                e.entry.event,
                LogEvent::Checked {
                    outcome: CheckOutcome::Passed,
                    ..
                }
            )
        })
        .count();
    let discarded = run
        .log
        .iter()
        .filter(|e| matches!(e.entry.event, LogEvent::Discarded { .. }))
        .count();
    let work_units: u64 = sims.iter().map(|s| s.compute.work_units).sum();
    let audit_units: u64 = sims.iter().map(|s| s.compute.audit_units).sum();
    println!(
        "checks passed {passed}, failed {}, steps discarded and re-run {discarded}; units run {} for the steps and {} for checks: {:.0}% of the work recomputed",
        failed.len(),
        work_units,
        audit_units,
        100.0 * audit_units as f64 / work_units as f64
    );
    assert!(passed > 0 && discarded > 0);
    // The log holds it all, chained and signed.
    let head = tessera_protocol::log::verify_chain(&run.log, &run.core.public_key(), None)
        .expect("an intact log");
    assert_eq!(head, Some(run.core.log_head()));
    // Every hostile identity's failed check is in the log (NaN senders too), so a restarted
    // coordinator refuses them all again, and nobody else.
    let distrusted: BTreeSet<PublicKey> = failed.keys().copied().collect();
    let events: Vec<LogEvent> = run.log.iter().map(|e| e.entry.event.clone()).collect();
    let mut again = Core::new(
        spec(ChecksSpec::default()),
        Identity::from_seed([200; 32]),
        init.clone(),
    );
    again.restore_from_log(&events);
    for s in &sims {
        let key = s.session.key();
        let hostile = s.role != Role::Honest;
        assert_eq!(distrusted.contains(&key), hostile, "{:?}", s.role);
        assert_eq!(
            again.is_refused(&key),
            hostile,
            "{:?} after a restart",
            s.role
        );
    }
    // Every record, credits included, is a fold of the log: a restarted coordinator has them
    // all back, to the bit.
    assert_eq!(again.records(), run.core.records());
    assert_eq!(again.credits(), run.core.credits());
}

#[test]
fn an_attacker_under_the_tolerance_biases_a_step_by_at_most_the_tolerance() {
    let tol = ChecksSpec::default().tolerance;
    let mut roles = vec![Role::Subtle; 4];
    roles.extend([Role::Honest; 14]);
    let (run, sims, init) = simulate(&roles, ChecksSpec::default());
    let bias = bias(&run.core, &init, STEPS);
    println!(
        "4 of 18 contributors scale their gradient sums by 1 + {:.1e}: undetected; the weights' update is off by at most {bias:.2e} relative (tolerance {tol:.0e})",
        tol / 2.0
    );
    let records = run.core.records();
    for s in &sims {
        assert_eq!(
            records.get(&s.session.key()).map_or(0, |r| r.checks_failed),
            0,
            "nobody under the tolerance is flagged"
        );
    }
    assert!(bias > 0.0, "the attackers did move the update");
    assert!(bias <= tol, "bias {bias:e} beyond the tolerance {tol:e}");
}

#[test]
fn a_pair_that_disputes_every_check_cannot_stall_the_run() {
    // Fourteen contributors, one micro-shard each: every one of the seven micro-shards has two
    // holders, so each check is run by the other holder and no third can settle a
    // disagreement. The second holder of the first micro-shard sends random gradient sums:
    // the checks of that micro-shard's two leases end disputed. A disputed step runs again a
    // bounded number of times, then commits unverified, and the run finishes.
    let mut roles = vec![Role::Honest; 14];
    roles[7] = Role::RandomGrads;
    let (run, sims, _) = simulate(&roles, ChecksSpec::default());
    let count = |f: fn(&LogEvent) -> bool| run.log.iter().filter(|e| f(&e.entry.event)).count();
    let disputed = count(|e| {
        matches!(
            e,
            LogEvent::Checked {
                outcome: CheckOutcome::Disputed(_),
                ..
            }
        )
    });
    let discarded = count(|e| matches!(e, LogEvent::Discarded { .. }));
    let closed = count(|e| matches!(e, LogEvent::Closed { .. }));
    println!("{disputed} disputed checks, {discarded} steps run again, {closed} closed");
    assert_eq!(closed, STEPS as usize, "every step closed");
    assert!(disputed > 0, "the checks were disputed");
    assert!(discarded > 0, "disputed steps ran again first");
    // Nobody was found wrong, so nobody was refused; both stay on probation.
    for s in &sims {
        assert!(!run.core.is_refused(&s.session.key()), "{:?}", s.role);
    }
}

#[test]
fn patient_attackers_are_caught_as_often_as_the_draws_predict() {
    // Six of twenty contributors behave until step 20, when their clean records have made
    // their checks rare, then triple their gradient sums for six steps. Whether a step is
    // checked is drawn only once its work is in, so they cannot pick unchecked steps: each
    // attacked step is caught with the probability its identity's rate gives at that point.
    // Eight runs, each with its own coordinator key (so its own draw chain); `TESSERA_SEED`
    // (1..=255) reruns one. (Over 25 other keys: 128 attacked steps drawn, 120.5 predicted.)
    use roles::{PATIENT_FOR, PATIENT_FROM};
    use tessera_coordinator::core::beacon::rate;
    use tessera_coordinator::core::credits::Credits;
    let seeds: Vec<u8> = match std::env::var("TESSERA_SEED") {
        Ok(s) => vec![s.parse().expect("TESSERA_SEED is a number in 1..=255")],
        Err(_) => (201..=208).collect(),
    };
    let steps = PATIENT_FROM + PATIENT_FOR + 4;
    let mut roles = vec![Role::Patient; 6];
    roles.extend([Role::Honest; 14]);
    let (mut predicted, mut variance, mut caught, mut draws) = (0.0, 0.0, 0u64, 0u64);
    let mut refused = 0;
    for seed in seeds {
        let (run, sims, init) = simulate_with(&roles, spec_for(ChecksSpec::default(), steps), seed);
        let attacked: BTreeMap<PublicKey, BTreeSet<u64>> = sims
            .iter()
            .filter(|s| s.role == Role::Patient)
            .map(|s| (s.session.key(), s.compute.attacked.clone()))
            .collect();
        assert!(
            attacked.values().all(|a| !a.is_empty()),
            "every patient attacker attacked"
        );
        // The draws of the attacked steps, from the log as `tessera verify` folds it.
        let (mut credits, mut step) = (Credits::default(), 0u64);
        let (mut p_seed, mut caught_seed) = (0.0, 0);
        for e in &run.log {
            match &e.entry.event {
                LogEvent::Revealed { drawn, .. } => {
                    let beacon = credits.beacon();
                    for (i, k) in beacon.subjects().iter().enumerate() {
                        if !attacked.get(k).is_some_and(|a| a.contains(&step)) {
                            continue;
                        }
                        let rates = beacon.rates().expect("committed");
                        let p = rate(&rates, credits.clean_steps(k)).rate();
                        p_seed += p;
                        variance += p * (1.0 - p);
                        draws += 1;
                        caught_seed += u64::from(drawn[i / 8] >> (i % 8) & 1);
                    }
                }
                LogEvent::Closed { .. } => step += 1,
                _ => {}
            }
            credits
                .apply_drawn(&e.entry.event)
                .1
                .expect("the draws hold");
        }
        let records = run.core.records();
        let refused_seed = sims
            .iter()
            .filter(|s| s.role == Role::Patient)
            .filter(|s| {
                records
                    .get(&s.session.key())
                    .is_some_and(|r| r.checks_failed > 0)
            })
            .count();
        honest_stayed(&run, &sims, seed);
        let bias = bias(&run.core, &init, steps);
        println!(
            "seed {seed}: attacked steps drawn {caught_seed} of {} (the rates predict {p_seed:.2}); {refused_seed} of 6 attackers refused; the largest weight update off by {bias:.3} relative (tolerance {:.0e})",
            attacked.values().map(BTreeSet::len).sum::<usize>(),
            ChecksSpec::default().tolerance
        );
        predicted += p_seed;
        caught += caught_seed;
        refused += refused_seed;
    }
    let sd = variance.sqrt();
    println!(
        "in all: {caught} attacked steps drawn for a check, {predicted:.2} predicted by the rates (sd {sd:.2}), of {draws} draws; {refused} attackers refused"
    );
    assert!(draws > 0 && caught > 0, "the attackers were drawn");
    assert!(
        (caught as f64 - predicted).abs() <= 4.0 * sd + 1.0,
        "drawn {caught} times where the rates predict {predicted:.2} (sd {sd:.2})"
    );
    // An attacker is also refused when, auditing an honest lease while it attacks, it
    // disagrees with a third party.
    assert!(refused > 0);
}
