//! The run state machine message by message: handshake, leases, work, receipts, the exact outer
//! step, re-assignment on disconnect and deadline, resume after a crash, and every kind of bad
//! input answered with a clear error while nothing else in the run changes (administrator acts:
//! `admin_flow.rs`).

mod common;

use common::harness::{closed, sends, verdicts, works, Harness};
use common::{core, spec, Client};
use tessera_compute::hf::tensor_shapes;
use tessera_coordinator::core::{Action, Core, Input, Phase};
use tessera_protocol::log::LogEvent;
use tessera_protocol::messages::{
    LogHead, NamedTensor, SessionMessage, SyncMode, Update, Verdict, Work,
};
use tessera_protocol::{Code, Signed, TensorPayload, ToContributor, ToCoordinator};

#[test]
fn handshake_refuses_bad_proofs_and_small_budgets() {
    let mut h = Harness::new(core(spec(2, 3, SyncMode::Dense)));
    let mut alice = Client::new(1);
    // A proof signed for another nonce.
    h.tick(Input::Connected {
        conn: 9,
        nonce: [1; 32],
    });
    let a = h.tick(Input::Message {
        conn: 9,
        msg: alice.hello(1 << 30),
    });
    let ToContributor::Challenge { coordinator, .. } = sends(&a, 9)[0].clone() else {
        panic!()
    };
    let bad = alice.proof([2; 32], &coordinator);
    let a = h.tick(Input::Message { conn: 9, msg: bad });
    assert!(
        matches!(&sends(&a, 9)[0], ToContributor::Error { fatal: true, reason } if reason.code == Code::Handshake)
    );
    assert!(closed(&a, 9));
    assert!(h.core.sessions().is_empty());
    // A session message before the handshake.
    h.tick(Input::Connected {
        conn: 10,
        nonce: [3; 32],
    });
    alice.nonce = Some([3; 32]);
    let early = alice.signed(SessionMessage::Leave);
    let a = h.tick(Input::Message {
        conn: 10,
        msg: early,
    });
    assert!(closed(&a, 10), "unexpected messages close the connection");
    // Too small a budget: told why, no lease, not disconnected.
    let (conn, a) = h.join(&mut alice, 1000);
    let msgs = sends(&a, conn);
    assert!(msgs.iter().any(|m| matches!(m, ToContributor::Error { fatal: false, reason } if reason.code == Code::Budget)));
    assert!(!msgs.iter().any(|m| matches!(m, ToContributor::Lease(_))));
    assert_eq!(h.core.sessions().len(), 1);
}

#[test]
fn replays_and_forged_signatures_are_refused() {
    let mut h = Harness::new(core(spec(2, 3, SyncMode::Dense)));
    let mut alice = Client::new(1);
    let (conn, _) = h.join_ready(&mut alice);
    let beat = alice.signed(SessionMessage::Heartbeat {
        log_head: LogHead::default(),
    });
    assert!(sends(
        &h.tick(Input::Message {
            conn,
            msg: beat.clone()
        }),
        conn
    )
    .is_empty());
    let a = h.tick(Input::Message { conn, msg: beat });
    assert!(
        matches!(&sends(&a, conn)[0], ToContributor::Error { fatal: false, reason } if reason.code == Code::Sequence)
    );
    // Mallory signs and claims to be alice on alice's connection.
    let mallory = Client::new(2);
    let forged = Signed::new(
        &mallory.id,
        &alice.nonce.unwrap(),
        99,
        SessionMessage::Leave,
    )
    .unwrap();
    let mut forged_as_alice = forged.clone();
    forged_as_alice.signer = alice.key();
    for f in [forged, forged_as_alice] {
        let mut h2 = Harness::new(core(spec(2, 3, SyncMode::Dense)));
        let mut a2 = Client::new(1);
        let (c2, _) = h2.join_ready(&mut a2);
        let mut f = f;
        f.seq = 50;
        let _ = &mut f;
        let a = h2.tick(Input::Message {
            conn: c2,
            msg: ToCoordinator::Session(f),
        });
        assert!(matches!(
            &sends(&a, c2)[0],
            ToContributor::Error { fatal: true, .. }
        ));
        assert!(closed(&a, c2));
    }
}

/// Alice and bob (the run's two slots) join and finish round 0, accepted; their connections
/// and units of round 1.
fn accepted_round(
    h: &mut Harness,
    alice: &mut Client,
    bob: &mut Client,
) -> ((u64, Work), (u64, Work)) {
    let cfg = h.core.spec().model.clone();
    let (ca, a) = h.join_ready(alice);
    let (cb, b) = h.join_ready(bob);
    let mut next = Vec::new();
    for (cl, conn, w) in [(alice, ca, works(&a)), (bob, cb, works(&b))] {
        let sub = cl.submission(&cfg, &w[0].1, 0.5);
        let s = h.submit(cl, conn, sub);
        assert_eq!(verdicts(&s), vec![Verdict::Accepted]);
        next.extend(works(&s));
    }
    let of = |conn| {
        next.iter()
            .find(|(c, _)| *c == conn)
            .expect("round 1")
            .1
            .clone()
    };
    ((ca, of(ca)), (cb, of(cb)))
}

#[test]
fn bad_submissions_are_rejected_and_change_nothing() {
    let sp = spec(2, 3, SyncMode::Dense);
    let cfg = sp.model.clone();
    // Each spoils alice's submission, knowing bob's unit.
    type Spoil = Box<dyn Fn(&mut tessera_protocol::messages::Submission, u64)>;
    let dense = |f: fn(&mut Vec<NamedTensor>)| -> Spoil {
        Box::new(move |s: &mut tessera_protocol::messages::Submission, _| {
            if let Update::Dense(ts) = &mut s.result {
                f(ts)
            }
        })
    };
    let cases: Vec<(Code, Spoil)> = vec![
        (
            Code::WrongShape,
            dense(|ts| ts[1].tensor = TensorPayload::from_f32(&[3], &[0.0; 3])),
        ),
        (
            Code::NotFinite,
            dense(|ts| {
                let mut v = vec![0.0; 16 * 8];
                v[0] = f32::NAN;
                ts[0].tensor = TensorPayload::from_f32(&[16, 8], &v);
            }),
        ),
        (Code::WrongShape, dense(|ts| ts.swap(0, 1))),
        // A name of the sender's choosing: refused, and not copied into the log.
        (
            Code::WrongShape,
            dense(|ts| ts[0].name = "ATTACKER-CHOSEN-TEXT ".repeat(12)),
        ),
        (Code::WrongShape, Box::new(|s, _| s.tokens += 1)),
        (Code::WrongVersion, Box::new(|s, _| s.weights += 1)),
        (Code::NotOpen, Box::new(|s, bob| s.unit = bob)),
        (
            Code::WrongShape,
            Box::new(|s, _| {
                s.result = Update::Dense(vec![NamedTensor {
                    name: "x".into(),
                    tensor: TensorPayload::from_f32(&[1], &[1.0]),
                }])
            }),
        ),
    ];
    for (why, spoil) in cases {
        let mut h = Harness::new(core(sp.clone()));
        let (mut alice, mut bob) = (Client::new(1), Client::new(2));
        // Alice has accepted work, so her rejections are logged (an identity with none
        // leaves nothing in the log: `an_identity_that_spends_its_rejections_is_refused`).
        let ((ca, wa), (_, wb)) = accepted_round(&mut h, &mut alice, &mut bob);
        let before = h.core.weights().clone();
        let mut sub = alice.submission(&cfg, &wa, 0.5);
        spoil(&mut sub, wb.unit);
        let a = h.submit(&mut alice, ca, sub);
        match verdicts(&a).as_slice() {
            [Verdict::Rejected(r)] => assert_eq!(r.code, why, "{r}"),
            other => panic!("{why:?}: {other:?}"),
        }
        assert!(!a.iter().any(|x| matches!(x, Action::Accepted(_))));
        assert!(a.iter().any(
            |x| matches!(x, Action::Logged(e) if matches!(e.entry.event, LogEvent::Rejected { .. }))
        ));
        for x in &a {
            if let Action::Logged(e) = x {
                let text = format!("{:?}", e.entry.event);
                assert!(
                    !text.contains("ATTACKER"),
                    "contributor text in the log: {text}"
                );
            }
        }
        assert_eq!(h.core.weights(), &before);
        assert_eq!(h.core.accepted_slots(), Vec::<u64>::new());
        assert_eq!(h.core.records()[&alice.key()].rejected, 1);
        assert_eq!(h.core.records()[&alice.key()].accepted, 1);
        // A refused unit's slot goes back to the queue, but not to alice this round (she
        // still holds her own unit when she sent someone else's).
        assert!(works(&a).is_empty(), "{why:?}: {:?}", works(&a));
    }
}

#[test]
fn outer_step_is_exact_and_disconnects_and_deadlines_reassign() {
    let mut sp = spec(2, 2, SyncMode::Dense);
    sp.clip_to_median = false;
    let cfg = sp.model.clone();
    let mut h = Harness::new(core(sp));
    let w0 = h.core.weights().clone();
    let (mut alice, mut bob, mut carol) = (Client::new(1), Client::new(2), Client::new(3));
    let (ca, a) = h.join_ready(&mut alice);
    let (cb, b) = h.join_ready(&mut bob);
    let (cc, c) = h.join_ready(&mut carol);
    let wa = works(&a)[0].1.clone();
    let wb = works(&b)[0].1.clone();
    assert!(works(&c).is_empty(), "two slots, three contributors");
    // Bob vanishes: his slot goes to carol at once, with the same samples.
    h.now = 2_000;
    let d = h.tick(Input::Disconnected { conn: cb });
    let (to, wc) = works(&d)[0].clone();
    assert_eq!((to, wc.slot, &wc.tokens), (cc, wb.slot, &wb.tokens));
    // Alice misses the deadline: cancelled, and her slot waits for another contributor (an
    // identity whose unit expired does not get that slot back this round).
    h.now = 3_001;
    let t = h.tick(Input::Tick);
    assert!(sends(&t, ca).contains(&ToContributor::Cancel { unit: wa.unit }));
    assert!(
        works(&t).is_empty(),
        "alice is idle, but barred from the slot she let expire"
    );
    // Her late submission of the old unit is rejected.
    let late = alice.submission(&cfg, &wa, 1.0);
    assert!(matches!(
        verdicts(&h.submit(&mut alice, ca, late)).as_slice(),
        [Verdict::Rejected(_)]
    ));
    // Carol finishes bob's slot, then takes alice's, with its samples and a new unit.
    // Both slots done: theta1 = theta0 - 1.0 * mean(0.25, 0.75) = theta0 - 0.5.
    let sub = carol.submission(&cfg, &wc, 0.25);
    let a = h.submit(&mut carol, cc, sub);
    assert_eq!(verdicts(&a), vec![Verdict::Accepted]);
    let (to, wa2) = works(&a)[0].clone();
    assert_eq!((to, wa2.slot, &wa2.tokens), (cc, wa.slot, &wa.tokens));
    assert_ne!(wa2.unit, wa.unit);
    let sub = carol.submission(&cfg, &wa2, 0.75);
    let a = h.submit(&mut carol, cc, sub);
    assert_eq!(verdicts(&a), vec![Verdict::Accepted]);
    let sum = a
        .iter()
        .find_map(|x| match x {
            Action::RoundClosed(s) => Some(s.clone()),
            _ => None,
        })
        .expect("round closed");
    assert_eq!((sum.round, sum.version), (0, 1));
    assert!((sum.loss - 2.5).abs() < 1e-12);
    for ((_, x), (_, y)) in h.core.weights().named().into_iter().zip(w0.named()) {
        assert!(
            x.iter().zip(y).all(|(p, q)| *p == *q - 0.5),
            "outer step theta - lr * mean"
        );
    }
    // Everyone leased hears the outer step, all from one copy of the update.
    let mut steps = Vec::new();
    for conn in [ca, cc] {
        steps.extend(sends(&a, conn).into_iter().filter_map(|m| match m {
            ToContributor::OuterStep {
                round: 0,
                version: 1,
                update,
                ..
            } => Some(update),
            _ => None,
        }));
    }
    assert_eq!(steps.len(), 2);
    assert!(
        std::sync::Arc::ptr_eq(&steps[0], &steps[1]),
        "the update is not copied per session"
    );
    assert_eq!(h.core.round(), 1);
    let _ = tensor_shapes(&cfg);
}

#[test]
fn resumes_after_a_crash_without_losing_accepted_work() {
    let sp = spec(3, 2, SyncMode::Dense);
    let cfg = sp.model.clone();
    let mut h = Harness::new(core(sp.clone()));
    let mut clients: Vec<Client> = (1..=3).map(Client::new).collect();
    let mut assigned = Vec::new();
    for cl in clients.iter_mut() {
        let (conn, a) = h.join_ready(cl);
        assigned.push((conn, works(&a)[0].1.clone()));
    }
    // Two of three slots accepted, then the coordinator dies.
    let mut ledger = Vec::new();
    for i in 0..2 {
        let (conn, w) = assigned[i].clone();
        let sub = clients[i].submission(&cfg, &w, 0.1 * (i + 1) as f32);
        let a = h.submit(&mut clients[i], conn, sub);
        ledger.extend(a.into_iter().filter_map(|x| match x {
            Action::Accepted(c) => Some(c),
            _ => None,
        }));
    }
    let snap = h.core.snapshot();
    let crashed_weights = h.core.weights().clone();
    drop(h);
    let mut h = Harness::new(Core::resume(
        sp.clone(),
        tessera_protocol::Identity::from_seed([200; 32]),
        snap,
        ledger,
    ));
    assert_eq!(
        h.core.accepted_slots(),
        vec![0, 1],
        "accepted work survived the crash"
    );
    assert_eq!(h.core.weights(), &crashed_weights);
    // Contributors reconnect; only the missing slot is handed out.
    let mut third = Client::new(3);
    let (conn, a) = h.join_ready(&mut third);
    let w = works(&a);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].1.slot, 2);
    assert_eq!(
        w[0].1.tokens, assigned[2].1.tokens,
        "the same samples as before the crash"
    );
    let sub = third.submission(&cfg, &w[0].1, 0.3);
    let a = h.submit(&mut third, conn, sub);
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::RoundClosed(s) if s.round == 0)));
    assert_eq!(h.core.phase(), Phase::Training);
}

#[test]
fn a_slot_held_and_never_delivered_cannot_hold_a_round_open_past_its_quorum_deadline() {
    // Three slots, a quorum of two after 20 s; units may run for a minute, so the silent
    // identity's unit does not expire first.
    let sp = spec(3, 2, SyncMode::Dense)
        .with_deadlines(60_000, 600_000)
        .with_quorum(2, 20_000);
    let cfg = sp.model.clone();
    let mut h = Harness::new(core(sp));
    let (mut alice, mut bob, mut carol) = (Client::new(1), Client::new(2), Client::new(3));
    let (ca, a) = h.join_ready(&mut alice);
    let (cb, b) = h.join_ready(&mut bob);
    let (cc, c) = h.join_ready(&mut carol);
    let (wa, wb) = (works(&a)[0].1.clone(), works(&b)[0].1.clone());
    assert_eq!(
        works(&c).len(),
        1,
        "carol holds the third slot and never delivers"
    );
    let sub = alice.submission(&cfg, &wa, 0.5);
    h.submit(&mut alice, ca, sub);
    let sub = bob.submission(&cfg, &wb, 0.25);
    h.submit(&mut bob, cb, sub);
    h.now = 19_999;
    h.tick(Input::Tick);
    assert_eq!(
        h.core.round(),
        0,
        "before the deadline a full round is needed"
    );
    h.now = 20_000;
    let t = h.tick(Input::Tick);
    assert_eq!(
        h.core.round(),
        1,
        "the quorum closes the round at its deadline"
    );
    let closed = t
        .iter()
        .find_map(|x| match x {
            Action::RoundClosed(s) => Some(s.clone()),
            _ => None,
        })
        .expect("a closed round");
    assert_eq!(closed.contributors.len(), 2);
    assert!(
        sends(&t, cc)
            .iter()
            .any(|m| matches!(m, ToContributor::Cancel { .. })),
        "carol's unit is cancelled"
    );
}

/// An identity cannot fill the log with rejections: once 64 of its results were rejected (and
/// more than were accepted) its sessions close with `Refused`, the log holds those 64 entries
/// and no more, and its next handshake is refused; another identity is not touched. An
/// identity with no accepted work is closed after as many, and leaves nothing in the log.
#[test]
fn an_identity_that_spends_its_rejections_is_refused() {
    use tessera_coordinator::core::credits::MAX_REJECTED;
    let sp = spec(2, 3, SyncMode::Dense);
    let cfg = sp.model.clone();
    let mut h = Harness::new(core(sp));
    let (mut alice, mut bob, mut carol) = (Client::new(1), Client::new(2), Client::new(3));
    let ((ca, wa), _) = accepted_round(&mut h, &mut alice, &mut bob);
    let (cc, _) = h.join_ready(&mut carol);
    for (who, conn, logged) in [(&mut carol, cc, 0), (&mut alice, ca, MAX_REJECTED)] {
        let mut logged_rejections = 0;
        let mut closed_at = None;
        for k in 1..=MAX_REJECTED + 5 {
            let mut sub = who.submission(&cfg, &wa, 0.5);
            sub.unit = 999; // never open
            let a = h.submit(who, conn, sub);
            assert_eq!(verdicts(&a).len(), 1, "a signed receipt each time");
            logged_rejections += a
                .iter()
                .filter(|x| matches!(x, Action::Logged(e) if matches!(e.entry.event, LogEvent::Rejected { .. })))
                .count() as u64;
            if closed(&a, conn) {
                let refusal = sends(&a, conn).into_iter().find_map(|m| match m {
                    ToContributor::Error {
                        reason,
                        fatal: true,
                    } => Some(reason),
                    _ => None,
                });
                let r = refusal.expect("a fatal error");
                assert_eq!(r.code, Code::Refused);
                assert!(r.to_string().contains("were rejected"), "{r}");
                closed_at = Some(k);
                break;
            }
        }
        assert_eq!(closed_at, Some(MAX_REJECTED), "closed at the cap");
        assert_eq!(logged_rejections, logged, "entries in the log");
    }
    assert!(
        h.core.records().get(&carol.key()).is_none(),
        "carol left no record"
    );
    let mut again = Client::new(1);
    let (c2, a) = h.join(&mut again, 1 << 30);
    assert!(closed(&a, c2), "refused at the handshake");
    assert!(
        h.core.sessions().iter().any(|s| s.key == bob.key()),
        "bob still takes part"
    );
}

#[test]
fn a_session_the_transport_heard_from_is_not_closed_as_silent_and_one_it_did_not_hear_is() {
    let sp = spec(2, 3, SyncMode::Dense);
    let silence = sp.silence_ms;
    let mut h = Harness::new(core(sp));
    let (mut alice, mut bob) = (Client::new(1), Client::new(2));
    let (ca, _) = h.join_ready(&mut alice);
    let (cb, _) = h.join_ready(&mut bob);
    // Past the silence allowed, both would be closed by the next tick.
    h.now += silence + 1;
    assert_eq!(h.core.looks_silent(h.now), vec![ca, cb]);
    // Alice's connection heard her (heartbeats it took itself) a second ago; bob's heard him
    // last before the silence began, which does not save him.
    let a = h.tick(Input::Alive {
        conn: ca,
        heard: h.now - 1_000,
    });
    assert!(a.is_empty(), "{a:?}");
    h.tick(Input::Alive { conn: cb, heard: 0 });
    assert_eq!(h.core.looks_silent(h.now), vec![cb]);
    let t = h.tick(Input::Tick);
    assert!(closed(&t, cb) && !closed(&t, ca));
    // A time from after the core's now counts as now, not as a credit for later.
    h.tick(Input::Alive {
        conn: ca,
        heard: u64::MAX,
    });
    assert_eq!(h.core.looks_silent(h.now + silence + 1), vec![ca]);
}
