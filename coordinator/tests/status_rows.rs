//! The status as the coordinator's task builds it — row by row, making anew only the rows of
//! what the core marked changed — is the status built whole after every step of a scripted
//! run, and the row of a session nothing happened to is the same row, not a new one.

mod common;

use std::sync::Arc;

use common::harness::{verdicts, works, Harness};
use common::{core, spec, Client};
use tessera_coordinator::core::Input;
use tessera_coordinator::status::{status_of, Status, StatusRows};
use tessera_protocol::messages::{SyncMode, Verdict};

/// The status built from the marks, checked against one built whole.
fn build(h: &mut Harness, rows: &mut StatusRows) -> Status {
    let st = rows.build(&mut h.core);
    assert_eq!(st, status_of(&h.core), "the rows built from the marks");
    st
}

#[test]
fn only_the_rows_of_what_changed_are_made_anew_and_the_status_is_the_whole_one() {
    let sp = spec(2, 3, SyncMode::Dense);
    let cfg = sp.model.clone();
    let mut h = Harness::new(core(sp));
    let mut rows = StatusRows::default();
    assert!(build(&mut h, &mut rows).contributors.is_empty());

    let (mut alice, mut bob, mut carol) = (Client::new(1), Client::new(2), Client::new(3));
    let (ca, a) = h.join_ready(&mut alice);
    h.join_ready(&mut bob);
    let (cc, _) = h.join(&mut carol, 1 << 30);
    let wa = works(&a)[0].1.clone();
    let before = build(&mut h, &mut rows);
    assert_eq!(before.contributors.len(), 3);
    let row = |st: &Status, client: &Client| {
        st.contributors
            .iter()
            .find(|r| r.key == client.key().to_string())
            .cloned()
            .expect("a row")
    };
    assert_eq!(row(&before, &alice).unit, Some(wa.unit));

    // Alice's accepted unit changes her session and her record; nothing happens to Carol.
    let sub = alice.submission(&cfg, &wa, 0.5);
    assert_eq!(
        verdicts(&h.submit(&mut alice, ca, sub)),
        vec![Verdict::Accepted]
    );
    let after = build(&mut h, &mut rows);
    assert_eq!(row(&after, &alice).accepted, 1);
    assert!(!Arc::ptr_eq(&row(&before, &alice), &row(&after, &alice)));
    assert!(
        Arc::ptr_eq(&row(&before, &carol), &row(&after, &carol)),
        "an unchanged session keeps its row"
    );
    assert_eq!(after.credits.len(), 1, "alice's credit line");

    // A build with nothing changed since makes no row anew.
    let again = build(&mut h, &mut rows);
    for (x, y) in after.contributors.iter().zip(&again.contributors) {
        assert!(Arc::ptr_eq(x, y));
    }

    // A session that leaves takes its row with it.
    h.tick(Input::Disconnected { conn: cc });
    let gone = build(&mut h, &mut rows);
    assert_eq!(gone.contributors.len(), 2);
    assert!(gone
        .contributors
        .iter()
        .all(|r| r.key != carol.key().to_string()));

    // Time passing (units expire, slots move) is marked like any other change.
    h.now += 60_000;
    h.tick(Input::Tick);
    build(&mut h, &mut rows);
}
