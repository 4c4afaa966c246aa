//! Administrator acts through the core: each takes effect only through its log entry,
//! contributors are told, a refused act changes nothing, and a ban closes the banned identity's
//! sessions and refuses its work.

mod common;

use common::harness::{closed, sends, verdicts, works, Harness};
use common::{core, spec, Client};
use tessera_compute::ModelConfig;
use tessera_coordinator::core::admin::AdminRefusal;
use tessera_coordinator::core::{Action, ConnId, End, Input, Phase, RunSpec, RunState};
use tessera_protocol::log::{AdminAction, LogEvent};
use tessera_protocol::messages::Work;
use tessera_protocol::messages::{SyncMode, Verdict};
use tessera_protocol::{Code, ToContributor};

fn admin_done(actions: &[Action]) -> Result<u64, AdminRefusal> {
    actions
        .iter()
        .find_map(|a| match a {
            Action::AdminDone { request: 7, result } => Some(result.clone()),
            _ => None,
        })
        .expect("the request is answered")
}

fn admin(
    h: &mut Harness,
    action: AdminAction,
    reason: &str,
) -> (Result<u64, AdminRefusal>, Vec<Action>) {
    let a = h.tick(Input::Admin {
        request: 7,
        action,
        reason: reason.into(),
    });
    (admin_done(&a), a)
}

fn logged_admin(actions: &[Action]) -> Vec<AdminAction> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Logged(e) => match &e.entry.event {
                LogEvent::Admin { action, .. } => Some(action.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A run of 2 slots and 3 rounds with alice joined and working on her slot: the harness, the
/// run, its model, alice, bob, alice's connection and work, and the actions so far.
type Start = (
    Harness,
    RunSpec,
    ModelConfig,
    Client,
    Client,
    ConnId,
    Work,
    Vec<Action>,
);

fn start() -> Start {
    let run = spec(2, 3, SyncMode::Dense);
    let mut h = Harness::new(core(run.clone()));
    let mut alice = Client::new(1);
    let (ca, a) = h.join_ready(&mut alice);
    let wa = works(&a)[0].1.clone();
    let cfg = run.model.clone();
    (h, run, cfg, alice, Client::new(2), ca, wa, a)
}

#[test]
fn admin_acts_take_effect_through_the_log_and_refusals_change_nothing() {
    let (mut h, run, cfg, mut alice, mut bob, ca, wa, mut log) = start();

    // Refusals: each answered, nothing logged, nothing changed.
    for (action, reason, why) in [
        (AdminAction::Pause, " ", AdminRefusal::NoReason),
        (AdminAction::Resume, "go", AdminRefusal::NotPaused),
        (
            AdminAction::Set {
                param: "lr".into(),
                value: "1".into(),
            },
            "faster",
            AdminRefusal::NotAParameter("lr".into()),
        ),
        (
            AdminAction::Set {
                param: "rounds".into(),
                value: "0".into(),
            },
            "shorter",
            AdminRefusal::RoundsClosed { done: 0 },
        ),
        (
            AdminAction::Set {
                param: "silence_secs".into(),
                value: "soon".into(),
            },
            "x",
            AdminRefusal::NotANumber {
                param: "silence_secs".into(),
                value: "soon".into(),
            },
        ),
        (
            AdminAction::Unban { key: bob.key() },
            "x",
            AdminRefusal::NotBanned(bob.key()),
        ),
    ] {
        let (r, acts) = admin(&mut h, action.clone(), reason);
        assert_eq!(r, Err(why), "{action}");
        assert!(logged_admin(&acts).is_empty() && sends(&acts, ca).is_empty());
    }
    assert_eq!(h.core.spec().rounds, 3);

    // Pause: logged first, then every contributor hears it; no new work is handed out.
    let (r, acts) = admin(&mut h, AdminAction::Pause, "maintenance");
    let index = r.expect("paused");
    assert_eq!(logged_admin(&acts), vec![AdminAction::Pause]);
    let notice = sends(&acts, ca);
    let [ToContributor::Admin { entry }] = notice.as_slice() else {
        panic!("alice hears of it: {notice:?}")
    };
    assert_eq!(entry.entry.index, index);
    assert!(
        matches!(&entry.entry.event, LogEvent::Admin { reason, .. } if reason == "maintenance")
    );
    log.extend(acts);
    let (cb, b) = h.join_ready(&mut bob);
    assert!(works(&b).is_empty(), "no work while paused");
    log.extend(b);
    // Work in flight is still accepted, and its slot is not handed out again.
    let sub = alice.submission(&cfg, &wa, 0.5);
    let s = h.submit(&mut alice, ca, sub);
    assert_eq!(verdicts(&s), vec![Verdict::Accepted]);
    assert!(works(&s).is_empty());
    log.extend(s);
    assert_eq!(
        admin(&mut h, AdminAction::Pause, "again").0,
        Err(AdminRefusal::AlreadyPaused)
    );

    // Resume: the open slot goes out.
    let (r, acts) = admin(&mut h, AdminAction::Resume, "done");
    r.expect("resumed");
    assert_eq!(works(&acts).len(), 1);
    log.extend(acts);

    // Ban bob: his session closes with the reason; he cannot come back.
    let (r, acts) = admin(&mut h, AdminAction::Ban { key: bob.key() }, "sent garbage");
    r.expect("banned");
    assert!(closed(&acts, cb));
    assert!(sends(&acts, cb).iter().any(|m| matches!(
        m,
        ToContributor::Error { reason, fatal: true }
            if reason.code == Code::Banned && reason.text.as_str().ends_with("sent garbage")
    )));
    log.extend(acts);
    let (cb2, again) = h.join(&mut bob, 1 << 30);
    assert!(
        closed(&again, cb2),
        "a banned identity is refused at the handshake"
    );
    assert_eq!(
        admin(&mut h, AdminAction::Ban { key: bob.key() }, "twice").0,
        Err(AdminRefusal::AlreadyBanned(bob.key()))
    );

    // A parameter: more rounds.
    let (r, acts) = admin(
        &mut h,
        AdminAction::Set {
            param: "rounds".into(),
            value: "5".into(),
        },
        "more data arrived",
    );
    r.expect("set");
    assert_eq!(h.core.spec().rounds, 5);
    log.extend(acts);

    // Stop with the round in progress: the run is stopping (work for the round may finish);
    // a second stop ends it at once; then nothing more can be done to it.
    let (r, acts) = admin(&mut h, AdminAction::Stop, "after this round");
    r.expect("stopping");
    assert!(!acts.iter().any(|a| matches!(a, Action::Finished)));
    assert_eq!(h.core.state(), RunState::Stopping);
    log.extend(acts);
    assert_eq!(
        admin(&mut h, AdminAction::Pause, "wait").0,
        Err(AdminRefusal::Stopping)
    );
    let (r, acts) = admin(&mut h, AdminAction::Stop, "done for today");
    r.expect("stopped");
    assert!(acts.iter().any(|a| matches!(a, Action::Finished)));
    assert_eq!(h.core.phase(), Phase::Finished);
    log.extend(acts);
    assert_eq!(
        admin(&mut h, AdminAction::Resume, "oops").0,
        Err(AdminRefusal::Ended)
    );

    // A restarted coordinator re-applies the acts from its log.
    let events: Vec<LogEvent> = log
        .iter()
        .filter_map(|a| match a {
            Action::Logged(e) => Some(e.entry.event.clone()),
            _ => None,
        })
        .collect();
    let mut again = core(run);
    again.restore_from_log(&events);
    assert_eq!(again.spec().rounds, 5);
    assert!(again.admin_state().banned.contains(&bob.key()));
    assert_eq!(again.state(), RunState::Finished(End::Stopped));
    assert_eq!(again.phase(), Phase::Finished);
}

#[test]
fn a_stopped_round_in_progress_closes_and_ends_the_run() {
    let (mut h, run, cfg, mut alice, mut bob, ca, wa, mut log) = start();
    let (cb, b) = h.join_ready(&mut bob);
    let wb = works(&b)[0].1.clone();
    log.extend(b);

    let (r, acts) = admin(&mut h, AdminAction::Stop, "after this round");
    r.expect("stopping");
    assert_eq!(h.core.state(), RunState::Stopping);
    assert_eq!(h.core.phase(), Phase::Training);
    log.extend(acts);
    // The round's work still comes in; its close ends the run instead of opening round 1.
    let sub = alice.submission(&cfg, &wa, 0.5);
    let s = h.submit(&mut alice, ca, sub);
    assert_eq!(verdicts(&s), vec![Verdict::Accepted]);
    assert!(!s.iter().any(|a| matches!(a, Action::Finished)));
    log.extend(s);
    let sub = bob.submission(&cfg, &wb, 0.25);
    let s = h.submit(&mut bob, cb, sub);
    assert_eq!(verdicts(&s), vec![Verdict::Accepted]);
    assert!(s.iter().any(|a| matches!(a, Action::Finished)));
    assert!(works(&s).is_empty(), "no round after the stop");
    let events: Vec<LogEvent> = log
        .iter()
        .chain(&s)
        .filter_map(|a| match a {
            Action::Logged(e) => Some(e.entry.event.clone()),
            _ => None,
        })
        .collect();
    assert!(
        matches!(events.last(), Some(LogEvent::Closed { round: 0, .. })),
        "the round closed after the stop: {:?}",
        events.last()
    );
    assert_eq!(h.core.state(), RunState::Finished(End::Stopped));
    assert_eq!(h.core.round(), 1);

    // A restarted coordinator finds the run stopped.
    let mut again = core(run);
    again.restore_from_log(&events);
    assert_eq!(again.state(), RunState::Finished(End::Stopped));
}
