//! Unit tests of the replica round (`rounds.rs`): assignment, bars, deadlines and leases.

use tessera_protocol::messages::{Capabilities, Work};
use tessera_protocol::ToContributor;

use super::super::context::testing::{active, context, spec};
use super::super::context::Context;
use super::super::part::Part;
use super::super::{Action, Replicas};
use super::Slot;

/// The work units sent in the tick so far: `(connection, unit, slot)`.
fn sent_work(cx: &mut Context) -> Vec<(u64, u64, u64)> {
    std::mem::take(&mut cx.out)
        .into_iter()
        .filter_map(|a| match a {
            Action::Send {
                conn,
                msg: ToContributor::Work(Work { unit, slot, .. }),
            } => Some((conn, unit, slot)),
            _ => None,
        })
        .collect()
}

#[test]
fn open_slots_go_to_ready_leased_idle_sessions_and_come_back_when_one_is_lost() {
    let mut cx = context(spec(2));
    let mut r = Replicas::new(0, 2);
    active(&mut cx, 3, 3, Some(1));
    active(&mut cx, 1, 1, Some(2));
    active(&mut cx, 2, 2, None);
    r.schedule(&mut cx);
    // Lowest connection first, one unit each; the unleased session gets none.
    let sent = sent_work(&mut cx);
    assert_eq!(sent, vec![(1, 1, 0), (3, 2, 1)]);
    let holder = 1;
    assert_eq!(
        r.round.slots[0],
        Slot::Assigned(cx.sessions[&holder].unit.unwrap())
    );
    let s = cx.sessions.remove(&holder).unwrap();
    r.session_lost(&mut cx, s);
    assert_eq!(r.round.slots[0], Slot::Open);
    active(&mut cx, 4, 4, Some(3));
    r.schedule(&mut cx);
    assert_eq!(sent_work(&mut cx), vec![(4, 3, 0)]);
}

#[test]
fn an_identity_whose_unit_expired_does_not_get_that_slot_again_this_round() {
    let mut cx = context(spec(1).with_deadlines(1_000, 600_000));
    let mut r = Replicas::new(0, 1);
    active(&mut cx, 1, 1, Some(1));
    r.schedule(&mut cx);
    assert_eq!(sent_work(&mut cx), vec![(1, 1, 0)]);
    cx.now = 1_001;
    r.expire_units(&mut cx);
    cx.out.clear();
    r.schedule(&mut cx);
    assert!(
        sent_work(&mut cx).is_empty(),
        "the slot went back to the same identity"
    );
    // Someone else may take it.
    active(&mut cx, 2, 2, Some(2));
    r.schedule(&mut cx);
    assert_eq!(sent_work(&mut cx), vec![(2, 2, 0)]);
    // The next round forgets the bar.
    let mut next = Replicas::new(1, 1);
    cx.sessions.remove(&2);
    next.schedule(&mut cx);
    assert_eq!(sent_work(&mut cx), vec![(1, 3, 0)]);
}

#[test]
fn a_unit_past_its_deadline_is_cancelled_and_its_slot_reopens() {
    let mut cx = context(spec(1).with_deadlines(1_000, 60_000));
    let mut r = Replicas::new(0, 1);
    active(&mut cx, 1, 1, Some(1));
    r.schedule(&mut cx);
    assert_eq!(sent_work(&mut cx), vec![(1, 1, 0)]);
    cx.now = 1_000;
    r.expire_units(&mut cx);
    assert!(cx.out.is_empty());
    cx.now = 1_001;
    r.expire_units(&mut cx);
    assert!(matches!(
        cx.out[..],
        [Action::Send {
            conn: 1,
            msg: ToContributor::Cancel { unit: 1 }
        }]
    ));
    assert_eq!(cx.sessions[&1].unit, None);
    assert_eq!(r.round.slots[0], Slot::Open);
}

#[test]
fn a_lease_needs_the_budget_of_a_whole_replica() {
    let mut cx = context(spec(1));
    let r = Replicas::new(0, 1);
    let need = cx.spec.replica_bytes();
    for (conn, budget) in [(1, need - 1), (2, need)] {
        active(&mut cx, conn, conn as u8, None);
        cx.sessions.get_mut(&conn).unwrap().caps = Some(Capabilities {
            adapter: "a".into(),
            backend: "b".into(),
            max_binding_bytes: 1 << 30,
            memory_budget_bytes: budget,
        });
    }
    r.offer_lease(&mut cx, 1);
    assert!(matches!(
        &cx.out[..],
        [Action::Send { msg: ToContributor::Error { reason, fatal: false }, .. }] if reason.code == tessera_protocol::Code::Budget
    ));
    assert_eq!(cx.sessions[&1].lease, None);
    cx.out.clear();
    r.offer_lease(&mut cx, 2);
    assert_eq!(cx.sessions[&2].lease, Some(1));
    // Nothing is logged yet: the join and the lease wait for the identity's first verdict.
    let ToContributor::Lease(lease) = (match &cx.out[0] {
        Action::Send { msg, .. } => msg,
        other => panic!("{other:?}"),
    }) else {
        panic!("no lease");
    };
    let [.., Action::SendWeights { conn: 2, weights }] = &cx.out[..] else {
        panic!("no weights after the lease: {:?}", cx.out.last());
    };
    assert_eq!(cx.out.len(), 2);
    assert_eq!(lease.frames, weights.len());
    assert_eq!(weights.frames().count(), lease.frames as usize);
    assert_eq!(cx.unlogged[&2].len(), 1);
}

#[test]
fn a_complete_rounds_checks_wait_for_their_measurement_and_take_only_its_answer() {
    use super::super::spec::ChecksSpec;
    use super::super::Contribution;
    use tessera_protocol::messages::Update;
    let checks = ChecksSpec {
        replay: false,
        ..ChecksSpec::default()
    };
    let mut cx = context(spec(3).with_checks(checks));
    let mut r = Replicas::new(0, 3);
    let zeros: Vec<Vec<f32>> = cx
        .weights
        .named()
        .iter()
        .map(|(_, t)| vec![0.0; t.len()])
        .collect();
    for slot in 0..3u64 {
        let c = Contribution {
            round: 0,
            slot,
            unit: 10 + slot,
            contributor: tessera_protocol::PublicKey([slot as u8 + 1; 32]),
            tokens: 1,
            loss_sum: 1.0,
            update: Update::Dense(Vec::new()),
        };
        r.round.slots[slot as usize] = Slot::Done(Box::new(c), zeros.clone());
    }
    r.round.drawn.insert(0);
    let measures = |cx: &mut Context| {
        std::mem::take(&mut cx.out)
            .into_iter()
            .filter_map(|a| match a {
                Action::Measure(m) => Some(m),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // Complete: the measurement is asked for once, and the round waits for it.
    r.maybe_close_round(&mut cx);
    let asked = measures(&mut cx);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].round(), 0);
    r.maybe_close_round(&mut cx);
    assert!(measures(&mut cx).is_empty(), "asked twice");
    assert_eq!(r.round.number, 0, "closed before its checks were measured");
    // An answer to another question changes nothing.
    let answer = asked[0].run();
    let mut stale = answer.clone();
    stale.ticket += 1;
    r.measured(&mut cx, stale);
    assert!(cx.out.is_empty() && r.round.number == 0);
    // The answer: the drawn zero update gains nothing on its own batch and is thrown out.
    r.measured(&mut cx, answer);
    assert!(
        cx.out
            .iter()
            .any(|a| matches!(a, Action::Withdrawn { round: 0, slot: 0 })),
        "{:?}",
        cx.out
    );
    assert_eq!(r.round.slots[0], Slot::Open);
    assert_eq!(r.round.number, 0);
}

#[test]
fn open_slots_go_to_the_sessions_that_have_waited_longest_not_the_lowest_connection() {
    let mut cx = context(spec(2));
    let mut r = Replicas::new(0, 2);
    cx.now = 5_000;
    for (conn, since) in [(1, 4_000), (2, 900), (3, 2_500)] {
        active(&mut cx, conn, conn as u8, Some(conn));
        cx.sessions.get_mut(&conn).unwrap().waiting_since = since;
    }
    r.schedule(&mut cx);
    assert_eq!(sent_work(&mut cx), vec![(2, 1, 0), (3, 2, 1)]);
    // Taking a unit puts a session at the back of the queue.
    assert_eq!(cx.sessions[&2].waiting_since, 5_000);
    // The next round: conn 1 has waited longest, then the two that worked, in the order
    // they took their units.
    let mut next = Replicas::new(1, 3);
    for conn in [2, 3] {
        cx.sessions.get_mut(&conn).unwrap().unit = None;
    }
    cx.now = 9_000;
    next.schedule(&mut cx);
    assert_eq!(sent_work(&mut cx), vec![(1, 3, 0), (2, 4, 1), (3, 5, 2)]);
}

/// The `NoSlot` notices sent in the tick so far, by connection.
fn told(cx: &Context) -> Vec<u64> {
    cx.out
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                conn,
                msg: ToContributor::Error { reason, fatal },
            } if reason.code == tessera_protocol::Code::NoSlot => {
                assert!(!fatal, "a notice ends nobody's session");
                Some(*conn)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_round_grows_a_slot_for_each_further_ready_contributor_up_to_its_most() {
    let mut cx = context(spec(2).with_replica_range(2, 4));
    let mut r = Replicas::new(0, 2);
    for conn in 1..=5 {
        active(&mut cx, conn, conn as u8, Some(conn));
    }
    r.schedule(&mut cx);
    // Two slots it opened with, two it grew to; the fifth contributor is told why it waits.
    assert_eq!(told(&cx), vec![5]);
    assert_eq!(
        sent_work(&mut cx),
        vec![(1, 1, 0), (2, 2, 1), (3, 3, 2), (4, 4, 3)]
    );
    assert_eq!(r.round.slot_count(), 4);
    // Told once a round, however often the round schedules.
    r.schedule(&mut cx);
    assert!(told(&cx).is_empty());
    // A contributor that had a unit of the round gets no slot of its own again: a lost
    // session's slot reopens for whoever is idle, the fifth first.
    let s = cx.sessions.remove(&2).unwrap();
    r.session_lost(&mut cx, s);
    cx.sessions.get_mut(&1).unwrap().unit = None;
    r.schedule(&mut cx);
    assert_eq!(sent_work(&mut cx), vec![(5, 5, 1)]);
    assert_eq!(r.round.slot_count(), 4);
}

#[test]
fn a_contributor_ready_mid_round_gets_a_slot_while_the_round_computes() {
    let mut cx = context(spec(1).with_replica_range(1, 8).with_quorum(1, 10_000));
    let mut r = Replicas::new(0, 1);
    active(&mut cx, 1, 1, Some(1));
    r.schedule(&mut cx);
    assert_eq!(sent_work(&mut cx), vec![(1, 1, 0)]);
    cx.now = 4_000;
    active(&mut cx, 2, 2, Some(2));
    r.schedule(&mut cx);
    assert_eq!(sent_work(&mut cx), vec![(2, 2, 1)]);
    // Past the round's deadline it no longer grows: a quorum may close it any moment.
    cx.now = 10_000;
    active(&mut cx, 3, 3, Some(3));
    r.schedule(&mut cx);
    assert_eq!(told(&cx), vec![3]);
    assert!(sent_work(&mut cx).is_empty());
    assert_eq!(r.round.slot_count(), 2);
}

#[test]
fn identities_on_probation_hold_at_most_their_share_of_an_established_runs_round() {
    use super::super::spec::ChecksSpec;
    use tessera_protocol::log::{CheckOutcome, LogEvent};
    let checks = ChecksSpec {
        replay: false,
        halving: 2,
        probation_share: 0.4,
        ..ChecksSpec::default()
    };
    let mut cx = context(spec(3).with_replica_range(3, 16).with_checks(checks));
    // Six fresh identities in a young run: every one gets a slot (no cap before the run has
    // three established contributors).
    let mut young = Replicas::new(0, 3);
    for conn in 1..=6 {
        active(&mut cx, conn, conn as u8, Some(conn));
    }
    young.schedule(&mut cx);
    assert_eq!(sent_work(&mut cx).len(), 6);
    // Three of them pass two rounds of checks: established.
    for seed in 1..=3u8 {
        let key = tessera_protocol::Identity::from_seed([seed; 32]).public();
        for round in 0..2 {
            cx.credits.apply(&LogEvent::Checked {
                key,
                step: round,
                auditors: vec![],
                outcome: CheckOutcome::Passed,
                flops: 0.0,
                credited: vec![],
            });
        }
        assert_eq!(cx.credits.clean_steps(&key), 2);
    }
    // The next round: the three established ones, then two of the newcomers (0.4 of five);
    // the third newcomer is told why, and the established ones came first although they
    // waited least.
    for conn in 1..=6 {
        let s = cx.sessions.get_mut(&conn).unwrap();
        s.unit = None;
        s.waiting_since = 10 - conn;
    }
    cx.out.clear();
    let mut next = Replicas::new(1, 3);
    next.schedule(&mut cx);
    assert_eq!(told(&cx), vec![4]);
    let conns: Vec<u64> = sent_work(&mut cx).iter().map(|w| w.0).collect();
    assert_eq!(conns, vec![3, 2, 1, 6, 5]);
    // A fourth established identity makes room for no more than 4 * 0.4 / 0.6 = 2 newcomers.
    assert_eq!(super::super::round_size::newcomer_cap(4, 3, 400), Some(2));
}
