//! Deterministic simulation of the run state machine with 1000 scripted contributors joining,
//! leaving, crashing, going silent and missing deadlines at random. Invariants checked
//! throughout: no unit or lease is held by a vanished contributor, every slot of a round is
//! accepted exactly once (so every sample is trained once per round, re-runs carrying the same
//! samples), the accepted contribution is recorded before its receipt, and every round
//! completes. The same seed gives the same trace; the test sweeps seeds (see `common::sweep`:
//! `TESSERA_SIM_SEED=N` reruns one).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::{core, spec, Client};
use tessera_compute::reference::model::SplitMix;
use tessera_coordinator::core::{Action, ConnId, Input, Phase};
use tessera_protocol::messages::{LogHead, SessionMessage, SyncMode, Verdict, Work};
use tessera_protocol::ToContributor;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Honest,
    Slow,
    Flaky,
    Silent,
}

struct Sim {
    client: Client,
    behaviour: Behaviour,
    conn: Option<ConnId>,
    join_at: u64,
    lease: Option<(u64, u32)>,
    work: Option<(u64, Work)>,
    mute: bool,
    next_beat: u64,
}

struct Outcome {
    trace: u64,
    rounds: u64,
    accepted: usize,
    reassigned: usize,
}

fn run(seed: u64, contributors: usize, replicas: u64, rounds: u64) -> Outcome {
    let sp = spec(replicas, rounds, SyncMode::Dense);
    let cfg = sp.model.clone();
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
                client: Client::new(seed * 100_000 + i as u64),
                behaviour,
                conn: None,
                join_at: rng.next_u64() % 20_000,
                lease: None,
                work: None,
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
                s.lease = None;
                s.work = None;
                by_conn.insert(conn, i);
                let mut nonce = [0u8; 32];
                nonce[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
                inputs.push(Input::Connected { conn, nonce });
                inputs.push(Input::Message {
                    conn,
                    msg: s.client.hello(1 << 30),
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
            if let Some((due, w)) = &s.work {
                if now >= *due {
                    let sub = s.client.submission(&cfg, w, 0.001);
                    s.work = None;
                    inputs.push(Input::Message {
                        conn,
                        msg: s.client.signed(SessionMessage::Submit(sub)),
                    });
                    continue;
                }
            }
            if s.client.nonce.is_some() && now >= s.next_beat {
                s.next_beat = now + 4_000;
                inputs.push(Input::Message {
                    conn,
                    msg: s.client.signed(SessionMessage::Heartbeat {
                        log_head: LogHead::default(),
                    }),
                });
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
                        assert_eq!(
                            accepted.get(&sum.round).map(|s| s.len()),
                            Some(replicas as usize),
                            "round {} closed without every slot",
                            sum.round
                        );
                        assert_eq!(sum.contributors.len(), replicas as usize);
                    }
                    Action::Finished
                    | Action::Logged(_)
                    | Action::AdminDone { .. }
                    | Action::Withdrawn { .. } => {}
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
                        match msg {
                            ToContributor::Challenge {
                                nonce, coordinator, ..
                            } => {
                                assert_eq!(coordinator, coord_key);
                                queue.push_back(Input::Message {
                                    conn,
                                    msg: s.client.proof(nonce, &coordinator),
                                });
                            }
                            ToContributor::Lease(l) => s.lease = Some((l.lease, l.frames)),
                            ToContributor::Weights { lease, .. } => {
                                if let Some((id, left)) = &mut s.lease {
                                    assert_eq!(*id, lease);
                                    *left -= 1;
                                    if *left == 0 {
                                        let msg = s.client.signed(SessionMessage::Ready {
                                            lease,
                                            log_head: LogHead::default(),
                                        });
                                        queue.push_back(Input::Message { conn, msg });
                                    }
                                }
                            }
                            ToContributor::Work(w) => {
                                works_sent += 1;
                                unit_slot.insert(w.unit, (w.round, w.slot));
                                // A re-run of a slot carries exactly the same samples.
                                let entry = slot_tokens
                                    .entry((w.round, w.slot))
                                    .or_insert_with(|| w.tokens.data.clone());
                                assert_eq!(entry, &w.tokens.data);
                                let delay = match s.behaviour {
                                    Behaviour::Slow => 2_000 + rng.next_u64() % 4_000,
                                    _ => 200 + rng.next_u64() % 1_300,
                                };
                                s.work = Some((now + delay, w));
                            }
                            ToContributor::Cancel { unit }
                                if s.work.as_ref().map(|(_, w)| w.unit) == Some(unit) =>
                            {
                                s.work = None;
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
                                assert!(!fatal, "an honest scripted client was refused: {reason}")
                            }
                            _ => {}
                        }
                    }
                }
            }
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
    }
}

#[test]
fn thousand_contributors_churning() {
    // Three seeds by default; `TESSERA_SIM_SEED=N` reruns one, `TESSERA_SIM_SEEDS=N` sweeps N.
    common::sweep(1, 3, |seed| {
        let out = run(seed, 1000, 16, 12);
        println!(
            "rounds {} accepted units {} re-run or abandoned units {}",
            out.rounds, out.accepted, out.reassigned
        );
        assert_eq!(out.rounds, 12);
        assert_eq!(out.accepted, 16 * 12);
        assert!(out.reassigned > 0, "churn must have forced re-assignment");
        assert_eq!(
            run(seed, 1000, 16, 12).trace,
            out.trace,
            "same seed, same trace"
        );
    });
}
