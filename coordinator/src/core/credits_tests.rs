//! Unit tests of the credits' fold (`credits.rs`): pending and verified work, draws, checks
//! passed, failed, disputed and skipped, and logs from before the draw chain.

use super::*;
use tessera_protocol::messages::ContributorKind;
use tessera_protocol::Identity;

fn key(n: u8) -> PublicKey {
    Identity::from_seed([n; 32]).public()
}

fn accepted(k: PublicKey, flops: f64, pending: bool) -> LogEvent {
    LogEvent::Accepted {
        key: k,
        unit: 1,
        seq: 1,
        result: [0; 32],
        tokens: 10,
        flops,
        pending,
    }
}

fn checked(k: PublicKey, auditors: Vec<PublicKey>, outcome: CheckOutcome) -> LogEvent {
    LogEvent::Checked {
        key: k,
        step: 0,
        credited: match &outcome {
            CheckOutcome::Passed => auditors.clone(),
            CheckOutcome::AuditorFailed(_) | CheckOutcome::Failed(_) => {
                auditors.iter().skip(1).copied().collect()
            }
            _ => Vec::new(),
        },
        auditors,
        outcome,
        flops: 5.0,
    }
}

#[test]
fn a_dispute_puts_its_parties_on_probation_and_verifies_nothing() {
    let (a, b, outsider) = (key(1), key(2), key(3));
    let passed = |k, step| LogEvent::Checked {
        key: k,
        step,
        auditors: Vec::new(),
        outcome: CheckOutcome::Passed,
        flops: 0.0,
        credited: Vec::new(),
    };
    let mut log = vec![accepted(a, 10.0, false), accepted(b, 10.0, false)];
    log.extend((0..5).flat_map(|s| [passed(a, s), passed(b, s)]));
    log.push(accepted(a, 7.0, true));
    let mut cr = Credits::from_log(&log);
    assert_eq!((cr.clean_steps(&a), cr.clean_steps(&b)), (5, 5));
    let why = tessera_protocol::Reason::new(tessera_protocol::Code::Disputed, "no third");
    let touched = cr.apply(&checked(a, vec![b, outsider], CheckOutcome::Disputed(why)));
    assert_eq!((cr.clean_steps(&a), cr.clean_steps(&b)), (0, 0));
    assert_eq!(touched, vec![a, b], "the parties' records changed");
    assert!(
        !cr.records().contains_key(&outsider),
        "no record made for a stranger"
    );
    let r = &cr.records()[&a];
    assert_eq!(
        (r.flops, r.pending_flops),
        (10.0, 7.0),
        "nothing verified by a dispute"
    );
    assert!(!cr.is_refused(&a) && !cr.is_refused(&b), "nobody refused");
}

#[test]
fn pending_work_counts_once_checked_and_a_failure_takes_everything() {
    let (a, b, c) = (key(1), key(2), key(3));
    let log = vec![
        LogEvent::Joined {
            key: a,
            kind: ContributorKind::Native,
        },
        accepted(a, 100.0, true),
        accepted(a, 50.0, true),
        accepted(b, 70.0, true),
        LogEvent::Rejected {
            key: b,
            unit: 2,
            seq: 2,
            reason: tessera_protocol::Reason::new(tessera_protocol::Code::NotOpen, "late"),
        },
        checked(a, vec![b], CheckOutcome::Passed),
        accepted(a, 1.0, true),
        checked(
            b,
            vec![a, c],
            CheckOutcome::Failed(tessera_protocol::Reason::new(
                tessera_protocol::Code::CheckFailed,
                "wrong",
            )),
        ),
    ];
    let cr = Credits::from_log(&log);
    let ra = &cr.records()[&a];
    assert_eq!(ra.kind, Some(ContributorKind::Native));
    assert_eq!((ra.accepted, ra.tokens, ra.checks_passed), (3, 30, 1));
    assert_eq!((ra.flops, ra.pending_flops), (150.0, 1.0));
    let rb = &cr.records()[&b];
    assert_eq!((rb.flops, rb.pending_flops, rb.rejected), (0.0, 0.0, 1));
    assert_eq!(rb.checks_failed, 1);
    assert_eq!(cr.records()[&c].flops, 5.0, "the agreeing third party");
    assert!(cr.is_refused(&b) && !cr.is_refused(&a));
    assert_eq!(cr.records().keys().filter(|k| cr.is_refused(k)).count(), 1);
}

#[test]
fn a_lying_auditor_is_refused_and_the_checked_lease_cleared() {
    let (a, liar, judge) = (key(1), key(2), key(3));
    let log = vec![
        accepted(a, 10.0, true),
        accepted(liar, 10.0, false),
        checked(
            a,
            vec![liar, judge],
            CheckOutcome::AuditorFailed(tessera_protocol::Reason::new(
                tessera_protocol::Code::AuditorWrong,
                "x",
            )),
        ),
    ];
    let cr = Credits::from_log(&log);
    assert_eq!(cr.records()[&a].flops, 10.0);
    assert_eq!(cr.records()[&liar].flops, 0.0);
    assert_eq!(cr.records()[&judge].flops, 5.0);
    assert!(cr.is_refused(&liar));
    assert_eq!(cr.clean_steps(&a), 1);
}

#[test]
fn unchecked_runs_credit_at_once() {
    let a = key(1);
    let cr = Credits::from_log(&[accepted(a, 3.0, false), accepted(a, 4.0, false)]);
    assert_eq!(
        (cr.records()[&a].flops, cr.records()[&a].pending_flops),
        (7.0, 0.0)
    );
}

/// A log with a draw chain of check rate one half: each of `n` identities' `face` FLOPs,
/// then a reveal; the log and which identities it drew.
fn drawn_log(n: u8, face: f64) -> (Vec<LogEvent>, Vec<(PublicKey, bool)>) {
    drawn_log_after(Vec::new(), n, face)
}

/// [`drawn_log`] after the entries `before` (which come before the chain starts).
fn drawn_log_after(
    before: Vec<LogEvent>,
    n: u8,
    face: f64,
) -> (Vec<LogEvent>, Vec<(PublicKey, bool)>) {
    use super::super::beacon::{pack, Chain};
    let id = Identity::from_seed([9; 32]);
    let rates = tessera_protocol::log::DrawRates {
        new: 1 << 63,
        min: 1 << 63,
        halving: 4,
    };
    let mut log = before;
    log.extend((0..2).map(|s| LogEvent::DrawChain {
        segment: s,
        tip: Chain::derive(&id, "run", &[0; 32], s).tip(),
        rates: (s == 0).then_some(rates),
    }));
    log.extend((1..=n).map(|i| accepted(key(i), face, true)));
    let mut b = Beacon::new();
    for e in &log {
        b.apply(e, |_| 0).unwrap();
    }
    let value = Chain::derive(&id, "run", &[0; 32], 0).value(1).unwrap();
    let bits = b.draws(&value, |_| 0);
    log.push(LogEvent::Revealed {
        index: 1,
        value,
        drawn: pack(&bits),
    });
    let who = b.subjects().iter().copied().zip(bits).collect();
    (log, who)
}

#[test]
fn only_work_a_check_covered_earns_credit_at_its_flops_over_its_rate() {
    let (mut log, who) = drawn_log(16, 10.0);
    assert!(
        who.iter().any(|w| w.1) && who.iter().any(|w| !w.1),
        "{who:?}"
    );
    let cr = Credits::from_log(&log);
    for (k, drawn) in &who {
        // Drawn work waits for its check; work not drawn is never credited.
        let want = if *drawn { 10.0 } else { 0.0 };
        assert_eq!(
            (cr.records()[k].flops, cr.records()[k].pending_flops),
            (0.0, want)
        );
    }
    // Each drawn identity's check: the first passes, the second is disputed.
    let drawn: Vec<PublicKey> = who.iter().filter(|w| w.1).map(|w| w.0).collect();
    log.push(checked(drawn[0], vec![key(99)], CheckOutcome::Passed));
    if let Some(&other) = drawn.get(1) {
        log.push(checked(
            other,
            vec![key(99)],
            CheckOutcome::Disputed(tessera_protocol::Reason::new(
                tessera_protocol::Code::Disputed,
                "x",
            )),
        ));
        let cr = Credits::from_log(&log);
        assert_eq!(
            (
                cr.records()[&other].flops,
                cr.records()[&other].pending_flops
            ),
            (0.0, 0.0)
        );
    }
    let cr = Credits::from_log(&log);
    // Drawn at one half: a passed check is worth twice the work it covered.
    assert_eq!(
        (
            cr.records()[&drawn[0]].flops,
            cr.records()[&drawn[0]].pending_flops
        ),
        (20.0, 0.0)
    );
    // Work accepted after the reveal waits for the next.
    log.push(accepted(drawn[0], 3.0, true));
    let cr = Credits::from_log(&log);
    assert_eq!(cr.records()[&drawn[0]].pending_flops, 3.0);
}

#[test]
fn drawn_work_nobody_could_check_stays_unverified_after_a_later_pass() {
    let (mut log, who) = drawn_log(16, 10.0);
    let k = who.iter().find(|w| w.1).expect("a drawn identity").0;
    log.push(checked(
        k,
        vec![],
        CheckOutcome::Skipped(tessera_protocol::Reason::new(
            tessera_protocol::Code::NoAuditor,
            "x",
        )),
    ));
    let cr = Credits::from_log(&log);
    assert_eq!(
        (cr.records()[&k].flops, cr.records()[&k].pending_flops),
        (0.0, 0.0),
        "skipped: no credit, nothing pending"
    );
    // A later check of other work passes: the skipped work is not credited by it.
    log.push(checked(k, vec![key(99)], CheckOutcome::Passed));
    assert_eq!(Credits::from_log(&log).records()[&k].flops, 0.0);
}

#[test]
fn work_pending_before_the_draw_chain_started_is_verified_by_the_next_passed_check() {
    // A run resumed across the change: pending work, then the chain, a reveal, a check.
    let old = key(50);
    let (mut log, who) = drawn_log_after(vec![accepted(old, 7.0, true)], 4, 10.0);
    assert!(
        who.iter().any(|w| w.0 == old),
        "a subject of the first reveal"
    );
    let cr = Credits::from_log(&log);
    assert_eq!(
        cr.records()[&old].pending_flops,
        7.0,
        "still pending, drawn or not"
    );
    log.push(checked(old, vec![key(99)], CheckOutcome::Passed));
    let cr = Credits::from_log(&log);
    assert_eq!(
        (cr.records()[&old].flops, cr.records()[&old].pending_flops),
        (7.0, 0.0)
    );
}
