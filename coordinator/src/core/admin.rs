//! The administrator's authority over a run: pause, resume, stop, change a parameter, ban and
//! unban an identity (and the record of the run's creation by an administrator, which the
//! idle shell, `crate::idle`, performs). The shell authenticates the request; the core checks it, writes it to the
//! run log, and only then applies it, from the entry (so a restarted coordinator re-applies the
//! same acts from its log). Connected contributors receive the signed entry.

use tessera_protocol::log::{AdminAction, LogEvent, SignedEntry};
use tessera_protocol::{Code, Reason, ToContributor};

use super::admin_state::number;
pub use super::admin_state::{
    check_reason, AdminRefusal, AdminState, MAX_REASON_BYTES, PARAMETERS,
};
use super::context::Context;
use super::{Action, ConnId, End, RunState};

/// Puts a logged act into effect on the run's state and parameters; returns the sessions a
/// ban closes, with the reason (the dispatcher closes them through their regime).
/// `in_progress`: the open round or step has work out or in, which a stop lets finish.
pub(super) fn apply(
    cx: &mut Context,
    action: &AdminAction,
    reason: &str,
    in_progress: bool,
) -> Vec<(ConnId, Reason)> {
    match action {
        AdminAction::Pause => {
            if cx.state == RunState::Training {
                cx.state = RunState::Paused;
            }
        }
        AdminAction::Resume => {
            if cx.state == RunState::Paused {
                cx.state = RunState::Training;
            }
        }
        AdminAction::Stop => match cx.state {
            RunState::Training if in_progress => cx.state = RunState::Stopping,
            RunState::Finished(_) => {}
            _ => {
                cx.state = RunState::Finished(End::Stopped);
                cx.out.push(Action::Finished);
            }
        },
        AdminAction::Set { param, value } => {
            let Ok(n) = number(param, value) else {
                return Vec::new();
            };
            match param.as_str() {
                "rounds" => cx.spec.rounds = n,
                "unit_deadline_secs" => cx.spec.unit_deadline_ms = n * 1000,
                "silence_secs" => cx.spec.silence_ms = n * 1000,
                _ => {}
            }
        }
        AdminAction::Ban { key } => {
            cx.admin.banned.insert(*key);
            let why = format!("banned by the run's administrator: {reason}");
            let why = Reason::new(Code::Banned, why);
            return cx
                .conns_of(*key)
                .into_iter()
                .map(|c| (c, why.clone()))
                .collect();
        }
        AdminAction::Unban { key } => {
            cx.admin.banned.remove(key);
        }
        AdminAction::Create { .. } => {}
    }
    Vec::new()
}

/// Tells every active session of a logged act.
pub(super) fn announce(cx: &mut Context, entry: &SignedEntry) {
    let conns: Vec<ConnId> = cx
        .sessions
        .iter()
        .filter(|(_, s)| s.active().is_some())
        .map(|(&c, _)| c)
        .collect();
    for conn in conns {
        let msg = ToContributor::Admin {
            entry: Box::new(entry.clone()),
        };
        cx.send(conn, msg);
    }
}

/// The log entry of an administrator's creation of the run (on an idle coordinator).
pub(super) fn created(cx: &Context, reason: String) -> LogEvent {
    let action = AdminAction::Create {
        run: cx.spec.name.clone(),
        config: cx.rules_digest,
    };
    LogEvent::Admin { action, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_applied_act_changes_the_run_and_a_ban_names_the_sessions_to_close() {
        use super::super::context::testing::{active, context, spec};
        let mut cx = context(spec(1));
        let set = |p: &str, v: &str| AdminAction::Set {
            param: p.into(),
            value: v.into(),
        };
        assert!(apply(&mut cx, &AdminAction::Pause, "why", false).is_empty());
        assert_eq!(cx.state, RunState::Paused);
        apply(&mut cx, &AdminAction::Resume, "why", false);
        assert_eq!(cx.state, RunState::Training);
        apply(&mut cx, &set("silence_secs", "7"), "why", false);
        apply(&mut cx, &set("rounds", "9"), "why", false);
        assert_eq!((cx.spec.silence_ms, cx.spec.rounds), (7_000, 9));
        let key = active(&mut cx, 4, 1, None);
        active(&mut cx, 5, 2, None);
        let closes = apply(&mut cx, &AdminAction::Ban { key }, "spam", false);
        assert_eq!(closes.len(), 1);
        assert_eq!(closes[0].0, 4);
        assert_eq!(closes[0].1.code, Code::Banned);
        assert!(closes[0].1.text.as_str().contains("spam"));
        assert!(cx.is_refused(&key));
        apply(&mut cx, &AdminAction::Unban { key }, "ok", false);
        assert!(!cx.is_refused(&key));
        assert!(cx.out.is_empty());
        apply(&mut cx, &AdminAction::Stop, "done", false);
        assert_eq!(cx.state, RunState::Finished(End::Stopped));
        assert!(matches!(cx.out[..], [Action::Finished]));
    }

    /// An administrator's `set rounds` changes the run's rules as `RunRules::of` reads them,
    /// but not the chain its draws derive from: a coordinator restarted after the act (its
    /// draws derived afresh) reveals values that hash to the tips the run committed.
    #[test]
    fn a_set_leaves_the_draw_chain_the_run_started_with() {
        use super::super::context::testing::{context, spec};
        use super::super::spec::ChecksSpec;
        use tessera_protocol::log::LogEvent;
        let mut cx = context(spec(1).with_checks(ChecksSpec::default()));
        cx.start_draws();
        let started = cx.rules_digest;
        let set = AdminAction::Set {
            param: "rounds".into(),
            value: "9".into(),
        };
        apply(&mut cx, &set, "longer", false);
        assert_ne!(
            super::super::rules::RunRules::of(&cx.spec).digest(),
            started
        );
        assert_eq!(cx.rules_digest, started);
        cx.draws = super::super::draws::Draws::new();
        cx.reveal();
        let mut fold = super::super::credits::Credits::default();
        let mut revealed = 0;
        for a in &cx.out {
            if let Action::Logged(e) = a {
                revealed += usize::from(matches!(e.entry.event, LogEvent::Revealed { .. }));
                fold.apply_drawn(&e.entry.event)
                    .1
                    .expect("every draw holds against the committed chain");
            }
        }
        assert_eq!(revealed, 1);
    }

    #[test]
    fn a_stop_lets_the_round_in_progress_finish_and_a_second_stop_ends_the_run_now() {
        use super::super::context::testing::{context, spec};
        let mut cx = context(spec(1));
        apply(&mut cx, &AdminAction::Stop, "after this round", true);
        assert_eq!(cx.state, RunState::Stopping);
        assert!(cx.out.is_empty(), "the run has not ended yet");
        apply(&mut cx, &AdminAction::Stop, "now", true);
        assert_eq!(cx.state, RunState::Finished(End::Stopped));
        assert!(matches!(cx.out[..], [Action::Finished]));
        // A paused run hands out no work, so its round cannot finish: it ends at once.
        let mut cx = context(spec(1));
        apply(&mut cx, &AdminAction::Pause, "wait", true);
        apply(&mut cx, &AdminAction::Stop, "done", true);
        assert_eq!(cx.state, RunState::Finished(End::Stopped));
    }
}
