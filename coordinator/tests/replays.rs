//! Replays of whole-model units through the real state machine, with scripted contributors that
//! train honestly on the CPU reference (inner SGD from the round's weights on the unit's
//! tokens): a drawn unit runs again on another contributor, which cannot tell it from any other
//! unit; an update scaled by 1.5 (under every other check) fails its replay twice over and its
//! slot runs again; an auditor that lies is outvoted by a third and refused; a contributor alone
//! is not held up by a replay nobody can run. In a SparseLoCo run the replay comes back dense and
//! the original's compression is checked against it: honest ones pass, a scaled one fails. An
//! attacker under the round tolerance goes undetected and moves the round's step by less than
//! the tolerance.

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::{core, spec, Client};
use tessera_compute::hf::tensor_shapes;
use tessera_compute::reference::model::loss_and_grads;
use tessera_compute::reference::{Batch, ModelParams};
use tessera_coordinator::core::spec::ChecksSpec;
use tessera_coordinator::core::{Action, ConnId, Core, Input, Phase};
use tessera_protocol::log::{CheckOutcome, LogEvent};
use tessera_protocol::messages::{
    LogHead, NamedTensor, SessionMessage, Submission, SyncMode, Update, Work,
};
use tessera_protocol::{PublicKey, TensorPayload, ToContributor};
use tessera_train::sparse_wire::pack;
use tessera_train::sparseloco::{compress, SparseConfig};
use tessera_train::update::two_d;

/// A scripted contributor: honest, or scaling everything it sends by `scale`.
struct Sim {
    client: Client,
    scale: f32,
    dead: bool,
    /// Answers its next unit first, with the update of another contributor's queued unit.
    copies: bool,
}

/// The unit trained honestly from `weights`: inner SGD on its tokens; the pseudo-gradient and
/// the loss sum.
fn train(weights: &ModelParams<f32>, w: &Work) -> (Vec<Vec<f32>>, f64, u64) {
    let cfg = common::tiny_model();
    let [steps, batch, row] = [
        w.tokens.shape[0] as usize,
        w.tokens.shape[1] as usize,
        w.tokens.shape[2] as usize,
    ];
    let tokens = w.tokens.to_u32().unwrap();
    let seq = row - 1;
    let mut p = weights.clone();
    let mut loss_sum = 0.0;
    for (h, &lr) in w.lrs.iter().enumerate().take(steps) {
        let step = &tokens[h * batch * row..(h + 1) * batch * row];
        let batch = Batch::from_rows(step.chunks(row), seq);
        let (loss, g) = loss_and_grads::<f32>(&cfg, &p, &batch);
        loss_sum += loss * batch.counted() as f64;
        for (t, (_, gt)) in p.tensors_mut().into_iter().zip(g.named()) {
            t.iter_mut().zip(gt).for_each(|(a, b)| *a -= lr * b);
        }
    }
    let delta = weights
        .named()
        .into_iter()
        .zip(p.named())
        .map(|((_, a), (_, b))| a.iter().zip(b).map(|(x, y)| x - y).collect())
        .collect();
    (delta, loss_sum, (steps * batch * seq) as u64)
}

/// The unit's submission: its update scaled by `scale`, compressed (with fresh, zero error
/// feedback) when the run is sparse and the work does not ask for it dense.
fn submission(
    w: &Work,
    delta: &[Vec<f32>],
    loss_sum: f64,
    tokens: u64,
    scale: f32,
    sparse: Option<SparseConfig>,
) -> Submission {
    let cfg = common::tiny_model();
    let scaled = delta
        .iter()
        .map(|d| d.iter().map(|x| x * scale).collect::<Vec<f32>>());
    let result = match sparse {
        Some(sc) if !w.dense => Update::Sparse(Box::new(pack(
            &tensor_shapes(&cfg)
                .into_iter()
                .zip(scaled)
                .map(|((_, shape), d)| compress(&d, two_d(&shape), &sc))
                .collect::<Vec<_>>(),
            &sc,
        ))),
        _ => Update::Dense(
            tensor_shapes(&cfg)
                .into_iter()
                .zip(scaled)
                .map(|((name, shape), d)| NamedTensor {
                    name,
                    tensor: TensorPayload::from_f32(&shape, &d),
                })
                .collect(),
        ),
    };
    Submission {
        unit: w.unit,
        lease: w.lease,
        weights: w.weights,
        tokens,
        loss_sum,
        result,
        log_head: LogHead::default(),
    }
}

/// Scripted contributors around one coordinator, joined as connections 1, 2, ... in order:
/// every unit sent is answered in turn, and what happened is kept.
struct Run {
    core: Core,
    sims: Vec<Sim>,
    sparse: Option<SparseConfig>,
    queue: VecDeque<(ConnId, Work)>,
    log: Vec<LogEvent>,
    by_key: BTreeMap<PublicKey, usize>,
    /// Accepted contributions of open rounds: (round, slot) -> contributor index.
    standing: BTreeMap<(u64, u64), usize>,
    /// Contributions standing when their round closed: (round, slot) -> contributor index.
    applied: BTreeMap<(u64, u64), usize>,
}

/// Contributors with identities from `first` on, scaling their updates by `scales`.
fn sims(first: u64, scales: &[f32]) -> Vec<Sim> {
    scales
        .iter()
        .enumerate()
        .map(|(i, &scale)| Sim {
            client: Client::new(first + i as u64),
            scale,
            dead: false,
            copies: false,
        })
        .collect()
}

impl Run {
    fn new(core: Core, sims: Vec<Sim>) -> Self {
        Run {
            sparse: core.spec().sparse(),
            by_key: sims
                .iter()
                .enumerate()
                .map(|(i, s)| (s.client.key(), i))
                .collect(),
            core,
            sims,
            queue: VecDeque::new(),
            log: Vec::new(),
            standing: BTreeMap::new(),
            applied: BTreeMap::new(),
        }
    }

    /// Takes in what the coordinator did.
    fn take(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Logged(e) => self.log.push(e.entry.event),
                Action::Send {
                    conn,
                    msg: ToContributor::Work(w),
                } => self.queue.push_back((conn, w)),
                Action::Send {
                    conn,
                    msg: ToContributor::Cancel { unit },
                } => self.queue.retain(|(c, w)| !(*c == conn && w.unit == unit)),
                Action::Send {
                    conn,
                    msg: ToContributor::Error { fatal: true, .. },
                }
                | Action::Close { conn, .. } => {
                    self.sims[conn as usize - 1].dead = true;
                    self.queue.retain(|(c, _)| *c != conn);
                }
                Action::Accepted(c) => {
                    self.standing
                        .insert((c.round, c.slot), self.by_key[&c.contributor]);
                }
                Action::Withdrawn { round, slot } => {
                    self.standing.remove(&(round, slot));
                }
                Action::RoundClosed(sum) => {
                    let done: Vec<(u64, u64)> = self
                        .standing
                        .keys()
                        .filter(|k| k.0 == sum.round)
                        .copied()
                        .collect();
                    for k in done {
                        let by = self.standing.remove(&k).unwrap();
                        self.applied.insert(k, by);
                    }
                }
                _ => {}
            }
        }
    }

    /// Joins every contributor (all ready at once).
    fn join_all(&mut self) {
        for i in 0..self.sims.len() {
            let actions = join(&mut self.core, &mut self.sims[i].client, i as ConnId + 1);
            self.take(actions);
        }
    }

    /// Answers every unit until the run finishes or nothing more happens.
    fn drain(&mut self) {
        let mut answered = 0;
        loop {
            // A copier answers first.
            let first = self
                .queue
                .iter()
                .position(|(c, _)| self.sims[*c as usize - 1].copies)
                .unwrap_or(0);
            let Some((conn, w)) = self.queue.remove(first) else {
                break;
            };
            answered += 1;
            assert!(answered < 100_000, "the run goes on without end");
            let k = conn as usize - 1;
            if self.sims[k].dead || w.round != self.core.round() {
                continue;
            }
            let victim = self
                .queue
                .iter()
                .find(|(c, v)| *c != conn && v.round == w.round)
                .map(|(_, v)| v.clone())
                .filter(|_| self.sims[k].copies);
            self.sims[k].copies = false;
            let (delta, loss_sum, tokens) =
                train(self.core.weights(), victim.as_ref().unwrap_or(&w));
            let sub = submission(
                &w,
                &delta,
                loss_sum,
                tokens,
                self.sims[k].scale,
                self.sparse,
            );
            let msg = self.sims[k].client.signed(SessionMessage::Submit(sub));
            let actions = self.core.tick(0, Input::Message { conn, msg });
            self.take(actions);
        }
    }
}

/// Connects `client` as `conn`, completes the handshake and declares its lease ready; every
/// action the core took. The lease must ask for fresh units (the run replays).
fn join(core: &mut Core, client: &mut Client, conn: ConnId) -> Vec<Action> {
    let mut actions = core.tick(
        0,
        Input::Connected {
            conn,
            nonce: [conn as u8; 32],
        },
    );
    let a = core.tick(
        0,
        Input::Message {
            conn,
            msg: client.hello(1 << 30),
        },
    );
    let (nonce, coordinator) = a
        .iter()
        .find_map(|x| match x {
            Action::Send {
                msg:
                    ToContributor::Challenge {
                        nonce, coordinator, ..
                    },
                ..
            } => Some((*nonce, *coordinator)),
            _ => None,
        })
        .expect("a challenge");
    actions.extend(a);
    let proof = client.proof(nonce, &coordinator);
    let a = core.tick(0, Input::Message { conn, msg: proof });
    let lease = a
        .iter()
        .find_map(|x| match x {
            Action::Send {
                msg: ToContributor::Lease(l),
                ..
            } => Some(l.clone()),
            _ => None,
        })
        .expect("a lease");
    assert!(lease.fresh_units, "a run that replays asks for fresh units");
    actions.extend(a);
    let ready = client.signed(SessionMessage::Ready {
        lease: lease.lease,
        log_head: LogHead::default(),
    });
    actions.extend(core.tick(0, Input::Message { conn, msg: ready }));
    actions
}

/// The contributors, scaling their updates by `scales`, join in order and answer every unit
/// until the run finishes or nothing more happens.
fn run(replicas: u64, rounds: u64, scales: &[f32]) -> Run {
    run_with(replicas, rounds, scales, SyncMode::Dense)
}

fn run_with(replicas: u64, rounds: u64, scales: &[f32], sync: SyncMode) -> Run {
    let mut sp = spec(replicas, rounds, sync);
    sp.checks = Some(ChecksSpec::default());
    sp.clip_to_median = false;
    let mut r = Run::new(core(sp), sims(40, scales));
    r.join_all();
    r.drain();
    r
}

fn checked(log: &[LogEvent]) -> Vec<(PublicKey, Vec<PublicKey>, CheckOutcome)> {
    log.iter()
        .filter_map(|e| match e {
            LogEvent::Checked {
                key,
                auditors,
                outcome,
                ..
            } => Some((*key, auditors.clone(), outcome.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_scaled_update_fails_its_replay_and_its_slot_runs_again() {
    // Two slots; the cheat takes the second; a third honest contributor is idle to replay.
    let r = run(2, 2, &[1.0, 1.5, 1.0]);
    assert_eq!(r.core.phase(), Phase::Finished);
    let cheat = Client::new(41).key();
    let honest = [Client::new(40).key(), Client::new(42).key()];
    let checks = checked(&r.log);
    for c in &checks {
        println!(
            "{} by {:?}: {:?}",
            c.0.fingerprint(),
            c.1.iter().map(|k| k.fingerprint()).collect::<Vec<_>>(),
            c.2
        );
    }
    assert!(
        checks.iter().any(|(k, auditors, o)| *k == cheat
            && matches!(o, CheckOutcome::Failed(_))
            && auditors.len() == 2
            && auditors.iter().all(|a| honest.contains(a))),
        "the cheat fails its replay, confirmed by a third"
    );
    assert!(
        checks
            .iter()
            .filter(|(k, _, _)| honest.contains(k))
            .all(|(_, _, o)| *o == CheckOutcome::Passed),
        "honest units pass their replays"
    );
    assert!(r.core.is_refused(&cheat));
    let rec = r.core.records().get(&cheat).cloned().unwrap_or_default();
    assert_eq!((rec.flops, rec.pending_flops), (0.0, 0.0));
    assert!(
        r.applied.values().all(|&k| k != 1),
        "no update of the cheat was applied: {:?}",
        r.applied
    );
    assert_eq!(r.applied.len(), 4, "both rounds closed with both slots");
    let honest_credits: f64 = honest
        .iter()
        .map(|k| r.core.records().get(k).map_or(0.0, |r| r.flops))
        .sum();
    assert!(honest_credits > 0.0);
}

#[test]
fn a_lying_auditor_is_outvoted_and_refused() {
    // Four honest contributors and a liar that scales every replay it runs: replayers are
    // picked among the idle ones by the draw chain, so it gets some. It disagrees with the
    // unit; two more replays agree with the unit (the run's agreement of two): it is refused.
    let r = run(2, 3, &[1.0, 1.0, 1.0, 1.0, 1.5]);
    assert_eq!(r.core.phase(), Phase::Finished);
    let liar = Client::new(44).key();
    let checks = checked(&r.log);
    assert!(
        checks.iter().any(
            |(_, auditors, o)| matches!(o, CheckOutcome::AuditorFailed(_))
                && auditors.first() == Some(&liar)
                && auditors.len() == 3
        ),
        "{checks:?}"
    );
    assert!(r.core.is_refused(&liar));
    assert_eq!(
        r.core
            .records()
            .get(&liar)
            .map_or(0.0, |r| r.flops + r.pending_flops),
        0.0
    );
    for k in (40..44).map(|i| Client::new(i).key()) {
        assert!(!r.core.is_refused(&k));
    }
    assert_eq!(r.applied.len(), 6, "three rounds of two updates");
}

#[test]
fn a_pair_that_disputes_every_replay_cannot_stall_a_round() {
    // Two contributors, two slots: each replays the other's unit, the cheat scales what it
    // computes, and no third can settle it. Each disputed slot runs again a bounded number of
    // times, then its update stands unverified; the run finishes and nobody is refused.
    let r = run(2, 2, &[1.0, 1.5]);
    assert_eq!(r.core.phase(), Phase::Finished, "the run finished");
    let checks = checked(&r.log);
    let disputed = checks
        .iter()
        .filter(|(_, _, o)| matches!(o, CheckOutcome::Disputed(_)))
        .count();
    println!("{disputed} disputed replays of {}", checks.len());
    assert!(disputed > 0, "{checks:?}");
    for k in [Client::new(40).key(), Client::new(41).key()] {
        assert!(!r.core.is_refused(&k));
    }
}

#[test]
fn a_copier_that_sends_its_victim_s_update_first_is_the_one_refused() {
    // The copier computes the victim's unit (every input is public) and sends that update, as
    // its own slot's, before the victim sends it. The two are near-identical: a replay of each
    // decides which is not its slot's, not the order they came in.
    let mut sp = spec(2, 2, SyncMode::Dense);
    sp.checks = Some(ChecksSpec::default());
    sp.clip_to_median = false;
    let mut r = Run::new(core(sp), sims(40, &[1.0, 1.0, 1.0]));
    r.sims[1].copies = true;
    r.join_all();
    r.drain();
    assert_eq!(r.core.phase(), Phase::Finished);
    let (victim, copier) = (Client::new(40).key(), Client::new(41).key());
    let checks = checked(&r.log);
    assert!(r.core.is_refused(&copier), "{checks:?}");
    assert!(
        !r.core.is_refused(&victim),
        "the victim is not refused: {checks:?}"
    );
    assert!(
        checks
            .iter()
            .any(|(k, _, o)| *k == copier && matches!(o, CheckOutcome::Failed(_))),
        "the copier failed its replay: {checks:?}"
    );
    assert!(
        checks
            .iter()
            .filter(|(k, _, _)| *k == victim)
            .all(|(_, _, o)| *o == CheckOutcome::Passed),
        "{checks:?}"
    );
    assert!(r.applied.values().all(|&k| k != 1), "{:?}", r.applied);
}

#[test]
fn a_contributor_alone_is_not_held_up_by_a_replay_nobody_can_run() {
    let r = run(1, 2, &[1.0]);
    assert_eq!(r.core.phase(), Phase::Finished);
    let checks = checked(&r.log);
    assert!(
        checks
            .iter()
            .any(|(_, _, o)| matches!(o, CheckOutcome::Skipped(_))),
        "{checks:?}"
    );
    assert_eq!(r.applied.len(), 2);
}

#[test]
fn in_sparseloco_runs_a_compression_is_checked_against_a_dense_replay() {
    let sync = SyncMode::Sparse {
        chunk: [4, 4],
        k: 4,
        beta: 0.95,
    };
    let r = run_with(2, 2, &[1.0, 1.5, 1.0], sync);
    assert_eq!(r.core.phase(), Phase::Finished);
    let cheat = Client::new(41).key();
    let checks = checked(&r.log);
    for c in &checks {
        println!("{} by {}: {:?}", c.0.fingerprint(), c.1.len(), c.2);
    }
    assert!(
        checks
            .iter()
            .any(|(k, a, o)| *k == cheat && a.len() == 2 && matches!(o, CheckOutcome::Failed(_))),
        "the scaled compression fails against two dense replays"
    );
    assert!(
        checks
            .iter()
            .filter(|(k, a, _)| *k != cheat && !a.is_empty())
            .all(|(_, _, o)| *o == CheckOutcome::Passed),
        "honest compressions pass"
    );
    assert!(r.core.is_refused(&cheat));
    assert!(r.applied.values().all(|&k| k != 1));
    assert_eq!(r.applied.len(), 4);
}

#[test]
fn an_attacker_under_the_round_tolerance_biases_a_round_by_at_most_it() {
    let tol = ChecksSpec::default().round_tolerance;
    let honest = run(2, 1, &[1.0, 1.0, 1.0]);
    let subtle = run(2, 1, &[1.0, 1.0 + 0.5 * tol as f32, 1.0]);
    assert!(
        checked(&subtle.log)
            .iter()
            .all(|(_, _, o)| *o == CheckOutcome::Passed),
        "scaling by 1 + tolerance / 2 passes its replay"
    );
    let w0 = ModelParams::<f32>::random(&common::tiny_model(), 3);
    let step = |c: &Core| -> Vec<f32> {
        c.weights()
            .named()
            .into_iter()
            .zip(w0.named())
            .flat_map(|((_, a), (_, b))| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>())
            .collect()
    };
    let bias = tessera_train::drift::rel_l2(&step(&subtle.core), &step(&honest.core));
    println!(
        "one of 2 replicas scaling its update by 1 + {:.1e}: undetected; the round's step moves {bias:.2e} relative (round tolerance {tol:.1e})",
        0.5 * tol
    );
    assert!(bias > 0.0 && bias < tol, "{bias}");
}

#[test]
fn a_restarted_coordinator_replays_the_open_rounds_restored_contributions() {
    let mut sp = spec(3, 1, SyncMode::Dense);
    sp.checks = Some(ChecksSpec::default());
    let mut first = core(sp.clone());
    let (mut alice, mut bob) = (Client::new(60), Client::new(61));
    // Two of three slots are accepted; the coordinator dies before any replay is answered.
    let mut works: Vec<(ConnId, Work)> = Vec::new();
    for (conn, cl) in [(1, &mut alice), (2, &mut bob)] {
        for a in join(&mut first, cl, conn) {
            if let Action::Send {
                msg: ToContributor::Work(w),
                ..
            } = a
            {
                works.push((conn, w));
            }
        }
    }
    let mut accepted = Vec::new();
    for (conn, w) in works.clone() {
        let cl = if conn == 1 { &mut alice } else { &mut bob };
        let (delta, loss_sum, tokens) = train(first.weights(), &w);
        let msg = cl.signed(SessionMessage::Submit(submission(
            &w, &delta, loss_sum, tokens, 1.0, None,
        )));
        for a in first.tick(0, Input::Message { conn, msg }) {
            if let Action::Accepted(c) = a {
                accepted.push(c);
            }
        }
    }
    assert_eq!(accepted.len(), 2);
    let mut again = Core::resume(
        sp,
        tessera_protocol::Identity::from_seed([200; 32]),
        first.snapshot(),
        accepted.clone(),
    );
    again.continue_log(None);
    // Three newcomers: the open slot and both restored units' replays go out.
    let mut r = Run::new(again, sims(70, &[1.0; 3]));
    r.join_all();
    let restored: Vec<(u64, u64)> = accepted.iter().map(|c| (c.round, c.slot)).collect();
    let replays = r
        .queue
        .iter()
        .filter(|(_, w)| restored.contains(&(w.round, w.slot)))
        .count();
    assert_eq!(replays, 2, "both restored units are replayed");
    r.drain();
    assert_eq!(r.core.phase(), Phase::Finished);
    for key in [alice.key(), bob.key()] {
        assert!(
            checked(&r.log)
                .iter()
                .any(|(k, a, o)| *k == key && a.len() == 1 && *o == CheckOutcome::Passed),
            "{} was replayed after the restart",
            key.fingerprint()
        );
    }
}
