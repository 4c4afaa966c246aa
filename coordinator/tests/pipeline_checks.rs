//! Checks of untrusted pipeline work, in a deterministic simulation: 14 honest scripted
//! contributors (each with its own "adapter": results off by a relative 1e-7, as different GPUs
//! are) and 7 hostile ones (a third) that send random gradient sums, scaled gradient sums, NaN,
//! copies of an earlier result, wrong forward activations, results of stale weights, or behave
//! well for two steps and then attack. Each contributor reports, as its gradient sum for a
//! micro-shard, the number of backward units it ran on it; with SGD at learning rate 1 the
//! weights then move by exactly steps x micro-batches per element only if no hostile sum was
//! ever applied. Also: every hostile identity is found, refused and left without credits, no
//! honest one is, the log records each check, and the share of work recomputed for checks and
//! the bias an attacker under the tolerance can cause are reported.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{tiny_model, Client};
use tessera_compute::model::{shards, Slicing};
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ModelParams;
use tessera_compute::shard::{MicroShard, ShardTensors};
use tessera_coordinator::core::spec::{ChecksSpec, PipelineSpec};
use tessera_coordinator::core::{Action, ConnId, Core, Input, Phase, RunSpec};
use tessera_protocol::log::{CheckOutcome, LogEvent};
use tessera_protocol::messages::{LogHead, SessionMessage, Update};
use tessera_protocol::pipeline::{
    AuditResult, HeadSlice, Pass, PipeResult, PipeWork, StepGrads, UnitOutput,
};
use tessera_protocol::{
    ActEncoding, Activation, Identity, PublicKey, TensorPayload, ToContributor,
};
use tessera_train::schedule::Schedule;
use tessera_train::shards::{from_wire, grads_to_wire};

const STEPS: u64 = 8;
const MICRO: u64 = 4;
const SEQ: usize = 8;
/// The head's stage: embed, attention, MLP, head.
const HEAD: u64 = 3;

fn spec(checks: ChecksSpec) -> RunSpec {
    let mut sp = common::spec(1, STEPS, tessera_protocol::messages::SyncMode::Dense);
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

/// What a contributor does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Honest,
    RandomGrads,
    ScaledGrads,
    NaN,
    Copier,
    WrongActivations,
    Stale,
    /// Honest for its first two steps, then sends wrong activations.
    Turncoat,
    /// Scales its gradient sums by 1 + tolerance / 2: under the tolerance.
    Subtle,
}

struct Sim {
    role: Role,
    client: Client,
    /// This contributor's "adapter": a relative offset of its results.
    drift: f32,
    conn: Option<ConnId>,
    lease: Option<(u64, Vec<MicroShard>)>,
    frames: u32,
    /// Backward units since the last gradient sums, with their micro-shards.
    owed: Vec<(u64, Vec<MicroShard>)>,
    /// Steps whose weights it received.
    steps_seen: u64,
    /// Its first result, which a copier sends again and again.
    copy: Option<PipeResult>,
    /// Results computed, sent at the next tick (work takes time).
    outbox: Vec<tessera_protocol::ToCoordinator>,
}

impl Sim {
    fn attacking(&self) -> bool {
        match self.role {
            Role::Honest | Role::Subtle => false,
            Role::Turncoat => self.steps_seen >= 2,
            _ => true,
        }
    }
}

/// The values a correct computation of `w` gives on weights `version` (the simulation's
/// stand-in for a forward or backward: a fixed function of the inputs and the weights).
fn values(w: &PipeWork, version: u64) -> Vec<f32> {
    let d = tiny_model().hidden_size;
    let shift = 0.01 * version as f32 + 0.001 * w.shards.len() as f32;
    if let Some(g) = &w.grad {
        return g
            .decode()
            .unwrap()
            .iter()
            .map(|x| 0.5 * x + 0.25 + shift)
            .collect();
    }
    if let Some(x) = &w.input {
        return x
            .decode()
            .unwrap()
            .iter()
            .map(|x| 0.5 * x + 1.0 + shift)
            .collect();
    }
    let ids = w.tokens.as_ref().unwrap().to_u32().unwrap();
    (0..SEQ * d)
        .map(|k| ids[k / d] as f32 / 64.0 + (k % d) as f32 / 100.0 + shift)
        .collect()
}

/// A unit's result as `s` computes it.
fn result(s: &Sim, w: &PipeWork, rng: &mut SplitMix) -> PipeResult {
    let cfg = tiny_model();
    let d = cfg.hidden_size;
    let attack = s.attacking();
    let version = if attack && s.role == Role::Stale {
        w.weights.saturating_sub(1) + 7
    } else {
        w.weights
    };
    match (w.stages[0], w.pass) {
        (0, Pass::Backward) => PipeResult::Accumulated,
        (HEAD, Pass::Forward) => {
            let targets = w.tokens.as_ref().unwrap().to_u32().unwrap();
            PipeResult::HeadStats(
                w.shards
                    .iter()
                    .map(|sh| {
                        let MicroShard::Head { cols } = from_wire(sh, &cfg).unwrap() else {
                            panic!("head stage")
                        };
                        let mut stats = Vec::new();
                        let mut owned = Vec::new();
                        for &t in &targets {
                            let mut m = (1.0 + 0.01 * version as f32) * (1.0 + s.drift);
                            if attack && matches!(s.role, Role::WrongActivations | Role::Turncoat) {
                                m += 0.05;
                            }
                            stats.extend([m, cols.len() as f32, 0.0]);
                            owned.push(u8::from(cols.contains(&(t as usize))));
                        }
                        HeadSlice {
                            shard: sh.clone(),
                            stats: TensorPayload::from_f32(&[SEQ, 3], &stats),
                            owned: TensorPayload::from_u8(&[SEQ], owned),
                        }
                    })
                    .collect(),
            )
        }
        _ => {
            let mut v: Vec<f32> = values(w, version)
                .iter()
                .map(|x| x * (1.0 + s.drift))
                .collect();
            if attack {
                match s.role {
                    Role::WrongActivations | Role::Turncoat if w.pass == Pass::Forward => {
                        v.iter_mut().for_each(|x| *x += 0.05 * (1.0 + x.abs()));
                    }
                    Role::NaN => v[3] = f32::NAN,
                    Role::RandomGrads if w.pass == Pass::Backward => {
                        v.iter_mut()
                            .for_each(|x| *x = (rng.next_u64() % 1000) as f32 / 100.0 - 5.0);
                    }
                    _ => {}
                }
            }
            PipeResult::Activation(Activation::encode(&[SEQ, d], &v, w.output))
        }
    }
}

/// Gradient sums as `s` reports them for backward units over `owed` of `held`.
fn sums(
    s: &Sim,
    held: &[MicroShard],
    owed: &[(u64, Vec<MicroShard>)],
    rng: &mut SplitMix,
) -> Vec<tessera_protocol::pipeline::ShardGrads> {
    let cfg = tiny_model();
    let tol = ChecksSpec::default().tolerance as f32;
    held.iter()
        .map(|h| {
            let n = owed.iter().filter(|o| o.1.contains(h)).count() as f32;
            let mut t = ShardTensors::zeros(&cfg, h).unwrap();
            for x in t.tensors.iter_mut().flat_map(|t| t.data.iter_mut()) {
                *x = n * (1.0 + s.drift);
                if s.attacking() {
                    match s.role {
                        Role::RandomGrads => *x = (rng.next_u64() % 1000) as f32 / 100.0 - 5.0,
                        Role::ScaledGrads => *x *= 3.0,
                        _ => {}
                    }
                }
                if s.role == Role::Subtle {
                    *x *= 1.0 + tol / 2.0;
                }
            }
            grads_to_wire(&t)
        })
        .collect()
}

struct Run {
    core: Core,
    now: u64,
    next_conn: ConnId,
    rng: SplitMix,
    log: Vec<tessera_protocol::log::SignedEntry>,
    /// Units run for the step's work, and for checks.
    work_units: u64,
    audit_units: u64,
}

impl Run {
    fn feed(&mut self, sims: &mut [Sim], input: Input) {
        let mut queue = vec![input];
        while !queue.is_empty() {
            let input = queue.remove(0);
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
                            let replies = self.answer(&mut sims[k], msg);
                            if later {
                                sims[k].outbox.extend(replies);
                            } else {
                                for reply in replies {
                                    queue.push(Input::Message { conn, msg: reply });
                                }
                            }
                        }
                    }
                    Action::Logged(e) => self.log.push(e),
                    Action::Close { conn, .. } => {
                        if let Some(s) = sims.iter_mut().find(|s| s.conn == Some(conn)) {
                            s.conn = None;
                            s.lease = None;
                            s.owed.clear();
                            s.outbox.clear();
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn answer(&mut self, s: &mut Sim, msg: ToContributor) -> Vec<tessera_protocol::ToCoordinator> {
        let cfg = tiny_model();
        if matches!(msg, ToContributor::StepWeights { .. }) {
            s.steps_seen += 1;
        }
        if let Some(r) = common::lease_download(&mut s.client, &mut s.lease, &mut s.frames, &msg) {
            return r;
        }
        match msg {
            ToContributor::Unit(w) => {
                self.work_units += 1;
                let mut r = result(s, &w, &mut self.rng);
                if s.role == Role::Copier {
                    match &s.copy {
                        Some(c) if std::mem::discriminant(c) == std::mem::discriminant(&r) => {
                            r = c.clone()
                        }
                        _ => s.copy = Some(r.clone()),
                    }
                }
                if w.pass == Pass::Backward {
                    s.owed.push((
                        w.unit,
                        w.shards
                            .iter()
                            .map(|x| from_wire(x, &cfg).unwrap())
                            .collect(),
                    ));
                }
                vec![s.client.signed(SessionMessage::Output(UnitOutput {
                    unit: w.unit,
                    lease: w.lease,
                    weights: w.weights,
                    result: r,
                    log_head: LogHead::default(),
                }))]
            }
            ToContributor::Audit(a) => {
                self.audit_units += a.units.len() as u64;
                let Some((_, held)) = s.lease.clone() else {
                    return vec![];
                };
                let outputs = a
                    .units
                    .iter()
                    .map(|w| result(s, w, &mut self.rng))
                    .collect();
                let owed: Vec<(u64, Vec<MicroShard>)> = a
                    .units
                    .iter()
                    .filter(|w| w.pass == Pass::Backward)
                    .map(|w| {
                        (
                            w.unit,
                            w.shards
                                .iter()
                                .map(|x| from_wire(x, &cfg).unwrap())
                                .collect(),
                        )
                    })
                    .collect();
                let grads = sums(s, &held, &owed, &mut self.rng);
                vec![s.client.signed(SessionMessage::Audited(AuditResult {
                    audit: a.audit,
                    lease: a.lease,
                    outputs,
                    grads,
                    log_head: LogHead::default(),
                }))]
            }
            ToContributor::Collect { unit, lease, step } => {
                let Some((_, held)) = s.lease.clone() else {
                    return vec![];
                };
                let units = s.owed.iter().map(|o| o.0).collect();
                let mut shards = sums(s, &held, &s.owed, &mut self.rng);
                if s.role == Role::NaN {
                    if let Update::Dense(ts) = &mut shards[0].tensors {
                        let mut v = ts[0].tensor.to_f32().unwrap();
                        v[0] = f32::NAN;
                        ts[0].tensor = TensorPayload::from_f32(
                            &ts[0]
                                .tensor
                                .shape
                                .iter()
                                .map(|&x| x as usize)
                                .collect::<Vec<_>>(),
                            &v,
                        );
                    }
                }
                s.owed.clear();
                vec![s.client.signed(SessionMessage::Grads(StepGrads {
                    unit,
                    lease,
                    step,
                    units,
                    shards,
                    log_head: LogHead::default(),
                }))]
            }
            _ => vec![],
        }
    }
}

/// Runs the simulation with `roles`; the run, the contributors and the weights it started from.
fn simulate(roles: &[Role], checks: ChecksSpec) -> (Run, Vec<Sim>, ModelParams<f32>) {
    let cfg = tiny_model();
    let init = ModelParams::random(&cfg, 3);
    let mut run = Run {
        core: Core::new(spec(checks), Identity::from_seed([200; 32]), init.clone()),
        now: 0,
        next_conn: 1,
        rng: SplitMix(42),
        log: Vec::new(),
        work_units: 0,
        audit_units: 0,
    };
    let mut sims: Vec<Sim> = roles
        .iter()
        .enumerate()
        .map(|(i, &role)| Sim {
            role,
            client: Client::new(9000 + i as u64),
            drift: (i as f32 - 10.0) * 1e-8,
            conn: None,
            lease: None,
            frames: 0,
            owed: Vec::new(),
            steps_seen: 0,
            copy: None,
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
        let hello = sims[k].client.hello(1000);
        run.feed(&mut sims, Input::Message { conn, msg: hello });
    }
    let mut ticks = 0;
    while run.core.phase() != Phase::Finished {
        ticks += 1;
        assert!(ticks < 20_000, "the run did not finish");
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
        let key = s.client.key();
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
        .map(|s| records.get(&s.client.key()).map_or(0.0, |r| r.flops))
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
    println!(
        "checks passed {passed}, failed {}, steps discarded and re-run {discarded}; units run {} for the steps and {} for checks: {:.0}% of the work recomputed",
        failed.len(),
        run.work_units,
        run.audit_units,
        100.0 * run.audit_units as f64 / run.work_units as f64
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
        let key = s.client.key();
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
    let want = (STEPS * MICRO) as f64;
    let (lo, hi) = moved(&run.core, &init);
    let bias = (hi - want).abs().max((lo - want).abs()) / want;
    println!(
        "4 of 18 contributors scale their gradient sums by 1 + {:.1e}: undetected; the weights' update is off by at most {bias:.2e} relative (tolerance {tol:.0e})",
        tol / 2.0
    );
    let records = run.core.records();
    for s in &sims {
        assert_eq!(
            records.get(&s.client.key()).map_or(0, |r| r.checks_failed),
            0,
            "nobody under the tolerance is flagged"
        );
    }
    assert!(bias > 0.0, "the attackers did move the update");
    assert!(bias <= tol, "bias {bias:e} beyond the tolerance {tol:e}");
}
