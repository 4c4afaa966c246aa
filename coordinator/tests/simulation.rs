//! Deterministic simulation of the run state machine with 1000 contributors joining, leaving,
//! crashing, going silent and missing deadlines at random. Each contributor is the real
//! protocol session of the worker (`tessera_worker::session::Session`) training on the CPU
//! reference backend; the simulation only decides when it connects, stays silent or answers
//! late. Invariants checked
//! throughout: no unit or lease is held by a vanished contributor, every slot of a round is
//! accepted exactly once (so every sample is trained once per round, re-runs carrying the same
//! samples), the accepted contribution is recorded before its receipt, the status built from
//! the core's marks of what changed is the status built whole, and every round completes.
//! Rounds of a fixed count, and elastic rounds (a slot more for each further ready
//! contributor, up to the most) whose every grown slot is accepted once. The same seed gives
//! the same trace; the tests sweep seeds (see `common::sweep`: `TESSERA_SIM_SEED=N` reruns
//! one).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use common::{core, spec};
use tessera_compute::reference::model::SplitMix;
use tessera_coordinator::core::{Action, ConnId, Input, Phase};
use tessera_coordinator::status::{status_of, StatusRows};
use tessera_protocol::messages::{Capabilities, ContributorKind, SyncMode, Verdict};
use tessera_protocol::{Identity, ToContributor, ToCoordinator};
use tessera_worker::cpu::CpuBackend;
use tessera_worker::session::Session;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Honest,
    Slow,
    Flaky,
    Silent,
}

struct Sim {
    session: Session,
    backend: CpuBackend,
    behaviour: Behaviour,
    conn: Option<ConnId>,
    join_at: u64,
    /// Messages not yet taken by the session: a contributor takes one at a time, and a unit
    /// at the front keeps it busy until it is done (its submission signed when it is sent).
    inbox: VecDeque<ToContributor>,
    /// While a unit is worked on: when it is done, and the unit.
    busy: Option<(u64, u64)>,
    mute: bool,
    next_beat: u64,
}

/// The session of contributor `seed`, with a budget for any lease of the tiny model.
fn session(seed: u64) -> Session {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8] = 1;
    let caps = Capabilities {
        adapter: "reference".into(),
        backend: "cpu".into(),
        max_binding_bytes: 1 << 27,
        memory_budget_bytes: 1 << 30,
    };
    Session::new(Identity::from_seed(s), ContributorKind::Native, caps)
}

/// `msg` handled by `s`'s session and backend: the replies.
fn answer(s: &mut Sim, msg: ToContributor) -> Vec<ToCoordinator> {
    pollster::block_on(tessera_worker::exchange(
        &mut s.session,
        &mut s.backend,
        msg,
    ))
    .expect("an honest session handles every message")
}

/// What `s` sends by `now`: the messages of its inbox taken in order, a unit taking its time
/// (drawn from `rng` by behaviour) before it and what follows it are taken.
fn drain(s: &mut Sim, now: u64, rng: &mut SplitMix) -> Vec<ToCoordinator> {
    let mut out = Vec::new();
    loop {
        if let Some((due, _)) = s.busy {
            if now < due {
                break;
            }
            s.busy = None;
            if let Some(work) = s.inbox.pop_front() {
                out.extend(answer(s, work));
            }
            continue;
        }
        match s.inbox.front() {
            None => break,
            Some(ToContributor::Work(w)) => {
                let delay = match s.behaviour {
                    Behaviour::Slow => 2_000 + rng.next_u64() % 4_000,
                    _ => 200 + rng.next_u64() % 1_300,
                };
                s.busy = Some((now + delay, w.unit));
            }
            Some(_) => {
                if let Some(msg) = s.inbox.pop_front() {
                    out.extend(answer(s, msg));
                }
            }
        }
    }
    out
}

struct Outcome {
    trace: u64,
    rounds: u64,
    accepted: usize,
    reassigned: usize,
    /// Updates each closed round averaged.
    sizes: Vec<usize>,
}

/// Runs the simulation; rounds of `least..=most` replica slots (one count: a fixed round).
fn run(seed: u64, contributors: usize, (least, most): (u64, u64), rounds: u64) -> Outcome {
    let sp = spec(least, rounds, SyncMode::Dense).with_replica_range(least, most);
    let mut c = core(sp);
    let coord_key = c.public_key();
    let mut rng = SplitMix(seed);
    let mut sims: Vec<Sim> = (0..contributors)
        .map(|i| {
            let behaviour = match rng.next_u64() % 20 {
                0..=11 => Behaviour::Honest,
                12..=14 => Behaviour::Slow,
                15..=17 => Behaviour::Flaky,
                _ => Behaviour::Silent,
            };
            Sim {
                session: session(seed * 100_000 + i as u64),
                backend: CpuBackend::default(),
                behaviour,
                conn: None,
                join_at: rng.next_u64() % 20_000,
                inbox: VecDeque::new(),
                busy: None,
                mute: false,
                next_beat: 0,
            }
        })
        .collect();
    let mut by_conn: HashMap<ConnId, usize> = HashMap::new();
    let mut next_conn: ConnId = 1;
    let mut trace = 0xcbf2_9ce4_8422_2325u64;
    let mut slot_tokens: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut unit_slot: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut accepted: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut accepted_units: BTreeSet<u64> = BTreeSet::new();
    let mut works_sent = 0usize;
    let mut sizes: Vec<usize> = Vec::new();
    let mut status = StatusRows::default();
    let mut now = 0u64;
    let step = 100;
    while c.phase() != Phase::Finished {
        assert!(
            now < 2_000_000,
            "the run did not finish: round {} of {rounds}",
            c.round()
        );
        let mut inputs: Vec<Input> = vec![Input::Tick];
        for (i, s) in sims.iter_mut().enumerate() {
            if s.conn.is_none() && now >= s.join_at {
                let conn = next_conn;
                next_conn += 1;
                s.conn = Some(conn);
                s.mute = false;
                s.inbox.clear();
                s.busy = None;
                by_conn.insert(conn, i);
                let mut nonce = [0u8; 32];
                nonce[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
                inputs.push(Input::Connected { conn, nonce });
                inputs.push(Input::Message {
                    conn,
                    msg: s.session.hello(),
                });
                continue;
            }
            let Some(conn) = s.conn else { continue };
            if s.mute {
                continue;
            }
            // Random misbehaviour.
            let roll = rng.next_u64() % 10_000;
            match s.behaviour {
                Behaviour::Flaky if roll < 20 => {
                    inputs.push(Input::Disconnected { conn });
                    by_conn.remove(&conn);
                    s.conn = None;
                    s.join_at = now + 500 + rng.next_u64() % 5_000;
                    continue;
                }
                Behaviour::Silent if roll < 10 => {
                    s.mute = true;
                    continue;
                }
                _ => {}
            }
            let sent = drain(s, now, &mut rng);
            if !sent.is_empty() {
                inputs.extend(sent.into_iter().map(|msg| Input::Message { conn, msg }));
                continue;
            }
            if now >= s.next_beat {
                // Before the handshake the session has nothing to sign yet.
                if let Ok(msg) = s.session.heartbeat() {
                    s.next_beat = now + 4_000;
                    inputs.push(Input::Message { conn, msg });
                }
            }
        }
        let mut queue: std::collections::VecDeque<Input> = inputs.into();
        while let Some(input) = queue.pop_front() {
            let actions = c.tick(now, input);
            let mut pending_accept: Option<u64> = None;
            for a in actions {
                trace = (trace ^ format!("{a:?}").len() as u64).wrapping_mul(0x100_0000_01b3);
                match a {
                    Action::Accepted(contrib) => {
                        assert!(
                            accepted
                                .entry(contrib.round)
                                .or_default()
                                .insert(contrib.slot),
                            "slot {} of round {} accepted twice",
                            contrib.slot,
                            contrib.round
                        );
                        assert_eq!(
                            unit_slot.get(&contrib.unit),
                            Some(&(contrib.round, contrib.slot))
                        );
                        accepted_units.insert(contrib.unit);
                        pending_accept = Some(contrib.unit);
                    }
                    Action::RoundClosed(sum) => {
                        let n = sum.contributors.len();
                        assert_eq!(
                            accepted.get(&sum.round).map(|s| s.len()),
                            Some(n),
                            "round {} closed without every slot",
                            sum.round
                        );
                        assert!(
                            (least as usize..=most as usize).contains(&n),
                            "round {} averaged {n} updates",
                            sum.round
                        );
                        // Every accepted slot is one the round had: 0..n.
                        assert_eq!(
                            accepted[&sum.round].iter().next_back(),
                            Some(&(n as u64 - 1)),
                            "round {}'s slots",
                            sum.round
                        );
                        sizes.push(n);
                    }
                    Action::Finished
                    | Action::Logged(_)
                    | Action::AdminDone { .. }
                    | Action::Withdrawn { .. } => {}
                    Action::SendWeights { .. } => panic!("Core::tick spells weight streams out"),
                    Action::Measure(_) => panic!("Core::tick runs measurements itself"),
                    Action::Close { conn, .. } => {
                        if let Some(i) = by_conn.remove(&conn) {
                            let s = &mut sims[i];
                            s.conn = None;
                            s.join_at = now + 1_000 + rng.next_u64() % 5_000;
                        }
                    }
                    Action::Send { conn, msg } => {
                        let Some(&i) = by_conn.get(&conn) else {
                            continue;
                        };
                        let s = &mut sims[i];
                        if s.mute {
                            continue;
                        }
                        // What the coordinator asks, checked before the session sees it.
                        match &msg {
                            ToContributor::Challenge { coordinator, .. } => {
                                assert_eq!(*coordinator, coord_key);
                            }
                            ToContributor::Work(w) => {
                                works_sent += 1;
                                unit_slot.insert(w.unit, (w.round, w.slot));
                                // A re-run of a slot carries exactly the same samples.
                                let entry = slot_tokens
                                    .entry((w.round, w.slot))
                                    .or_insert_with(|| w.tokens.data.clone());
                                assert_eq!(entry, &w.tokens.data);
                            }
                            // A cancelled unit in the works is abandoned.
                            ToContributor::Cancel { unit }
                                if s.busy.is_some_and(|(_, u)| u == *unit) =>
                            {
                                s.busy = None;
                                s.inbox.pop_front();
                            }
                            ToContributor::Receipt { receipt, .. }
                                if receipt.verdict == Verdict::Accepted =>
                            {
                                assert_eq!(
                                    pending_accept,
                                    Some(receipt.unit),
                                    "the contribution is recorded before its receipt"
                                );
                            }
                            ToContributor::Error { fatal, reason } => {
                                assert!(!fatal, "an honest contributor was refused: {reason}")
                            }
                            _ => {}
                        }
                        s.inbox.push_back(msg);
                        let replies = drain(s, now, &mut rng);
                        queue.extend(replies.into_iter().map(|msg| Input::Message { conn, msg }));
                    }
                }
            }
        }
        // Now and then, the status as the coordinator's task builds it (from the core's
        // marks of what changed since its last build) is the status built whole.
        if now.is_multiple_of(2_000) {
            assert_eq!(
                status.build(&mut c),
                status_of(&c),
                "the status from marks at {now} ms"
            );
        }
        // After this instant's inputs: no session, lease or unit on a vanished contributor.
        for v in c.sessions() {
            assert!(
                by_conn.contains_key(&v.conn),
                "session {} outlived its connection",
                v.conn
            );
        }
        now += step;
    }
    Outcome {
        trace,
        rounds: c.round(),
        accepted: accepted_units.len(),
        reassigned: works_sent - accepted_units.len(),
        sizes,
    }
}

#[test]
fn thousand_contributors_churning() {
    // Three seeds by default; `TESSERA_SIM_SEED=N` reruns one, `TESSERA_SIM_SEEDS=N` sweeps N.
    common::sweep(1, 3, |seed| {
        let out = run(seed, 1000, (16, 16), 12);
        println!(
            "rounds {} accepted units {} re-run or abandoned units {}",
            out.rounds, out.accepted, out.reassigned
        );
        assert_eq!(out.rounds, 12);
        assert_eq!(out.accepted, 16 * 12);
        assert!(out.reassigned > 0, "churn must have forced re-assignment");
        assert_eq!(
            run(seed, 1000, (16, 16), 12).trace,
            out.trace,
            "same seed, same trace"
        );
    });
}

#[test]
fn elastic_rounds_follow_churning_contributors() {
    // Forty contributors joining over 20 s, leaving, crashing and going silent; rounds open
    // with 3 slots and grow to 24: every round still closes with every slot it grew to
    // accepted once, the first (few joined yet) small, later ones large.
    common::sweep(1, 3, |seed| {
        let out = run(seed, 40, (3, 24), 10);
        println!("updates per round: {:?}", out.sizes);
        assert_eq!(out.rounds, 10);
        assert_eq!(out.sizes.len(), 10);
        assert_eq!(out.accepted, out.sizes.iter().sum::<usize>());
        let most = *out.sizes.iter().max().expect("rounds");
        assert!(
            most > 3 && most <= 24,
            "the rounds grew with their contributors: {:?}",
            out.sizes
        );
        assert_eq!(
            run(seed, 40, (3, 24), 10).trace,
            out.trace,
            "same seed, same trace"
        );
    });
}
