//! Unit tests of the run's shared context (`context.rs`): the log, lazy joins and leases,
//! receipts, closes and refusals.

use tessera_protocol::log::LogEvent;
use tessera_protocol::messages::Verdict;
use tessera_protocol::signed::{signing_bytes, RECEIPT};
use tessera_protocol::{Code, Reason, ToContributor};

use super::testing::{active, context, spec};
use super::Action;
use super::{Context, MAX_UNLOGGED_LEASES};

#[test]
fn a_receipt_names_the_logged_verdict_and_is_signed_by_the_coordinator() {
    let mut cx = context(spec(1));
    let key = active(&mut cx, 1, 1, Some(1));
    cx.receipt(1, 7, key, 3, Verdict::Accepted, [5; 32], (8, 2.0));
    let [Action::Logged(entry), Action::Send { conn: 1, msg }] = &cx.out[..] else {
        panic!("{:?}", cx.out);
    };
    assert!(matches!(
        entry.entry.event,
        LogEvent::Accepted {
            unit: 7,
            seq: 3,
            tokens: 8,
            pending: false,
            ..
        }
    ));
    let ToContributor::Receipt { receipt, signature } = msg else {
        panic!("{msg:?}");
    };
    assert_eq!(receipt.log_head, cx.log_head());
    let bytes = signing_bytes(receipt).unwrap();
    assert!(cx.id.public().verify(RECEIPT, &bytes, signature).is_ok());
    cx.out.clear();
    cx.reject_unopen(1, 8, key, 4);
    assert!(matches!(
        &cx.out[0],
        Action::Logged(e) if matches!(&e.entry.event, LogEvent::Rejected { reason, .. } if reason.code == Code::NotOpen)
    ));
}

#[test]
fn a_join_is_logged_before_the_first_entry_its_session_causes_and_an_idle_one_leaves_nothing() {
    let mut cx = context(spec(1));
    let idle = active(&mut cx, 1, 1, None);
    let worker = active(&mut cx, 2, 2, None);
    let shards = Vec::new();
    cx.log(LogEvent::Leased {
        key: worker,
        lease: 1,
        shards,
    });
    cx.log(LogEvent::Leased {
        key: worker,
        lease: 2,
        shards: Vec::new(),
    });
    cx.forget(1, None);
    cx.forget(2, None);
    let events: Vec<&LogEvent> = cx
        .out
        .iter()
        .filter_map(|a| match a {
            Action::Logged(e) => Some(&e.entry.event),
            _ => None,
        })
        .collect();
    assert!(matches!(events[0], LogEvent::Joined { key, .. } if *key == worker));
    assert!(matches!(events[1], LogEvent::Leased { lease: 1, .. }));
    assert!(matches!(events[2], LogEvent::Leased { lease: 2, .. }));
    assert!(matches!(events[3], LogEvent::Left { key, .. } if *key == worker));
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(cx.credits.records().get(&idle).is_none());
    // A new session of the same identity is logged again once it does something.
    active(&mut cx, 3, 2, None);
    cx.out.clear();
    cx.log(LogEvent::Leased {
        key: worker,
        lease: 3,
        shards: Vec::new(),
    });
    assert!(
        matches!(&cx.out[0], Action::Logged(e) if matches!(e.entry.event, LogEvent::Joined { .. }))
    );
}

/// The logged events among the actions so far.
fn logged(cx: &Context) -> Vec<&LogEvent> {
    cx.out
        .iter()
        .filter_map(|a| match a {
            Action::Logged(e) => Some(&e.entry.event),
            _ => None,
        })
        .collect()
}

#[test]
fn a_lease_is_logged_only_once_its_identity_has_a_verdict() {
    let mut cx = context(spec(1));
    let idler = active(&mut cx, 1, 1, None);
    let worker = active(&mut cx, 2, 2, None);
    // More leases than a session keeps: only the newest wait.
    for lease in 1..=MAX_UNLOGGED_LEASES as u64 + 2 {
        cx.log_lease(1, lease, Vec::new());
    }
    cx.log_lease(2, 40, Vec::new());
    assert!(logged(&cx).is_empty(), "{:?}", logged(&cx));
    assert_eq!(cx.unlogged[&1].len(), MAX_UNLOGGED_LEASES);
    // The idler leaves without a verdict: nothing in the log, no record.
    cx.forget(1, None);
    assert!(logged(&cx).is_empty());
    assert!(!cx.unlogged.contains_key(&1));
    assert!(cx.credits.records().get(&idler).is_none());
    // A rejection of an identity with no accepted work logs nothing: it is counted on
    // the session. The first acceptance brings the join and the lease first; later
    // leases and rejections go at once.
    cx.reject_unopen(2, 8, worker, 4);
    assert!(logged(&cx).is_empty(), "{:?}", logged(&cx));
    assert_eq!(cx.sessions[&2].unlogged_rejections, 1);
    cx.receipt(2, 9, worker, 5, Verdict::Accepted, [1; 32], (8, 1.0));
    let events = logged(&cx);
    assert!(matches!(events[0], LogEvent::Joined { key, .. } if *key == worker));
    assert!(matches!(events[1], LogEvent::Leased { lease: 40, .. }));
    assert!(matches!(events[2], LogEvent::Accepted { unit: 9, .. }));
    assert_eq!(events.len(), 3, "{events:?}");
    cx.log_lease(2, 41, Vec::new());
    cx.reject_unopen(2, 10, worker, 6);
    let events = logged(&cx);
    assert!(matches!(events[3], LogEvent::Leased { lease: 41, .. }));
    assert!(matches!(events[4], LogEvent::Rejected { unit: 10, .. }));
    assert!(cx.unlogged.is_empty());
}

#[test]
fn an_identity_with_only_rejected_results_leaves_nothing_and_is_refused_after_its_budget() {
    let mut cx = context(spec(1));
    let key = active(&mut cx, 3, 3, None);
    for unit in 0..crate::core::credits::MAX_REJECTED {
        assert!(!cx.rejections_spent(3, &key), "after {unit}");
        cx.reject_unopen(3, unit, key, unit + 1);
    }
    assert!(cx.rejections_spent(3, &key));
    // Each rejection was answered by a signed receipt naming the log as it stands.
    let receipts = cx
        .out
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Send {
                    msg: ToContributor::Receipt { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(receipts as u64, crate::core::credits::MAX_REJECTED);
    cx.forget(3, None);
    assert!(logged(&cx).is_empty(), "{:?}", logged(&cx));
    assert!(cx.credits.records().get(&key).is_none());
}

#[test]
fn closing_a_session_tells_the_peer_logs_that_it_left_and_hands_it_back_once() {
    let mut cx = context(spec(1));
    let key = active(&mut cx, 4, 2, Some(1));
    active(&mut cx, 5, 3, None);
    assert_eq!(cx.conns_of(key), vec![4]);
    let s = cx
        .close(4, Reason::new(Code::Silent, "late"))
        .expect("open");
    assert_eq!(s.lease, Some(1));
    assert!(matches!(
        &cx.out[0],
        Action::Send { conn: 4, msg: ToContributor::Error { fatal: true, reason } } if reason.code == Code::Silent
    ));
    assert!(matches!(&cx.out[1], Action::Close { conn: 4, .. }));
    assert!(matches!(
        &cx.out[2],
        Action::Logged(e) if matches!(&e.entry.event, LogEvent::Left { reason, .. } if reason.code == Code::Silent)
    ));
    cx.out.clear();
    assert!(cx.close(4, Reason::new(Code::Silent, "again")).is_none());
    assert!(cx.out.is_empty());
    assert_eq!(cx.sessions.len(), 1);
    assert!(
        cx.conns_of(key).is_empty(),
        "the index forgets a closed session"
    );
}

#[test]
fn an_identitys_sessions_are_found_by_its_key_once_active_and_until_forgotten() {
    let mut cx = context(spec(1));
    let key = active(&mut cx, 7, 2, None);
    active(&mut cx, 3, 2, None);
    active(&mut cx, 5, 9, None);
    assert_eq!(cx.conns_of(key), vec![3, 7], "lowest first");
    // A session still in its handshake is not found by the key it claims.
    super::super::sessions::connected(&mut cx, 9, [0; 32]);
    cx.sessions.get_mut(&9).unwrap().key = Some(key);
    assert_eq!(cx.conns_of(key), vec![3, 7]);
    cx.activate(9);
    assert_eq!(cx.conns_of(key), vec![3, 7, 9]);
    cx.forget(3, None);
    cx.forget(9, None);
    assert_eq!(cx.conns_of(key), vec![7]);
    cx.forget(7, None);
    assert!(cx.conns_of(key).is_empty() && !cx.active_by_key.contains_key(&key));
}
