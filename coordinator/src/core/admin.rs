//! The administrator's authority over a run: pause, resume, stop, change a parameter, ban and
//! unban an identity (and the record of the run's creation by an administrator, which the
//! idle shell, `crate::idle`, performs). The shell authenticates the request; the core checks it, writes it to the
//! run log, and only then applies it, from the entry (so a restarted coordinator re-applies the
//! same acts from its log). Connected contributors receive the signed entry.

use std::collections::BTreeSet;

use tessera_protocol::log::{AdminAction, LogEvent};
use tessera_protocol::{Code, PublicKey, Reason, ToContributor};

use super::{Action, ConnId, Core, End, RunState};

/// The run parameters an administrator may change while the run goes on.
pub const PARAMETERS: [&str; 3] = ["rounds", "unit_deadline_secs", "silence_secs"];

/// What the administrator's acts have left in force besides the run's state (paused or
/// stopped, which [`RunState`] holds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdminState {
    /// Identities refused.
    pub banned: BTreeSet<PublicKey>,
}

/// Why the core refuses an administrator's act; nothing changed. The HTTP shell answers it
/// with a 409 and its text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    /// No reason given.
    #[error("an administrator's act needs a reason: contributors see it")]
    NoReason,
    /// A reason over [`MAX_REASON_BYTES`].
    #[error("the reason is longer than {MAX_REASON_BYTES} bytes")]
    LongReason,
    /// The run has finished or was stopped.
    #[error("the run has ended")]
    Ended,
    /// `pause` of a paused run.
    #[error("the run is already paused")]
    AlreadyPaused,
    /// `resume` of a run that is not paused.
    #[error("the run is not paused")]
    NotPaused,
    /// `set` of something that is not one of [`PARAMETERS`].
    #[error("{0} is not a parameter that can change during a run (these can: {params})", params = PARAMETERS.join(", "))]
    NotAParameter(String),
    /// `set` with a value that is not a whole number.
    #[error("{param} takes a whole number, not {value:?}")]
    NotANumber {
        /// The parameter.
        param: String,
        /// The value given.
        value: String,
    },
    /// `set rounds` at or below the rounds already closed.
    #[error("rounds must stay above the {done} already closed (the open one is {done})")]
    RoundsClosed {
        /// Rounds (or steps) closed.
        done: u64,
    },
    /// `set` of a time outside one second to one day.
    #[error("{0} must be between 1 and 86400")]
    OutOfRange(String),
    /// `ban` of a banned identity.
    #[error("{0} is already banned")]
    AlreadyBanned(PublicKey),
    /// `unban` of an identity that is not banned.
    #[error("{0} is not banned")]
    NotBanned(PublicKey),
    /// `create` where a run is served already.
    #[error("this coordinator already serves run {0}: an idle coordinator (started without a config) creates runs")]
    RunExists(String),
}

/// The longest reason for an act, in bytes (it goes into the run log).
pub const MAX_REASON_BYTES: usize = 1000;

/// Whether `reason` can go into the run log: given, and at most [`MAX_REASON_BYTES`].
pub fn check_reason(reason: &str) -> Result<(), AdminRefusal> {
    if reason.trim().is_empty() {
        return Err(AdminRefusal::NoReason);
    }
    if reason.len() > MAX_REASON_BYTES {
        return Err(AdminRefusal::LongReason);
    }
    Ok(())
}

impl AdminState {
    /// Whether `action` with `reason` can be applied to run `run` in `state` with `closed`
    /// rounds or steps closed; the refusal when not (a pure decision: nothing changes).
    pub fn check(
        &self,
        action: &AdminAction,
        reason: &str,
        state: RunState,
        closed: u64,
        run: &str,
    ) -> Result<(), AdminRefusal> {
        check_reason(reason)?;
        if !state.is_open() {
            return Err(AdminRefusal::Ended);
        }
        let paused = state == RunState::Paused;
        match action {
            AdminAction::Pause if paused => Err(AdminRefusal::AlreadyPaused),
            AdminAction::Resume if !paused => Err(AdminRefusal::NotPaused),
            AdminAction::Pause | AdminAction::Resume | AdminAction::Stop => Ok(()),
            AdminAction::Set { param, value } => match param.as_str() {
                "rounds" => {
                    let done = closed;
                    if number(param, value)? <= done {
                        return Err(AdminRefusal::RoundsClosed { done });
                    }
                    Ok(())
                }
                "unit_deadline_secs" | "silence_secs" => {
                    let n = number(param, value)?;
                    if n == 0 || n > 86_400 {
                        return Err(AdminRefusal::OutOfRange(param.clone()));
                    }
                    Ok(())
                }
                other => Err(AdminRefusal::NotAParameter(other.into())),
            },
            AdminAction::Ban { key } if self.banned.contains(key) => {
                Err(AdminRefusal::AlreadyBanned(*key))
            }
            AdminAction::Unban { key } if !self.banned.contains(key) => {
                Err(AdminRefusal::NotBanned(*key))
            }
            AdminAction::Ban { .. } | AdminAction::Unban { .. } => Ok(()),
            AdminAction::Create { .. } => Err(AdminRefusal::RunExists(run.into())),
        }
    }
}

fn number(param: &str, value: &str) -> Result<u64, AdminRefusal> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| AdminRefusal::NotANumber {
            param: param.into(),
            value: value.into(),
        })
}

impl Core {
    /// An authenticated administrator's request (id `request`, answered by
    /// [`Action::AdminDone`]): refused with a reason and nothing changed, or logged and applied.
    pub(super) fn admin(&mut self, request: u64, action: AdminAction, reason: String) {
        let result = self
            .cx
            .admin
            .check(
                &action,
                &reason,
                self.cx.state,
                self.round(),
                &self.cx.spec.name,
            )
            .map(|()| {
                let entry = self.cx.log(LogEvent::Admin {
                    action: action.clone(),
                    reason: reason.clone(),
                });
                self.apply_admin(&action, &reason);
                {
                    let conns: Vec<ConnId> = self
                        .cx
                        .sessions
                        .iter()
                        .filter(|(_, s)| s.active().is_some())
                        .map(|(&c, _)| c)
                        .collect();
                    for conn in conns {
                        self.cx.send(
                            conn,
                            ToContributor::Admin {
                                entry: Box::new(entry.clone()),
                            },
                        );
                    }
                }
                self.cx.log.head().index
            });
        self.cx.out.push(Action::AdminDone { request, result });
    }

    /// Puts a logged act into effect.
    fn apply_admin(&mut self, action: &AdminAction, reason: &str) {
        match action {
            AdminAction::Pause => {
                if self.cx.state == RunState::Training {
                    self.cx.state = RunState::Paused;
                }
            }
            AdminAction::Resume => {
                if self.cx.state == RunState::Paused {
                    self.cx.state = RunState::Training;
                }
            }
            AdminAction::Stop => {
                if self.cx.state.is_open() {
                    self.cx.out.push(Action::Finished);
                }
                self.cx.state = RunState::Finished(End::Stopped);
            }
            AdminAction::Set { param, value } => {
                let Ok(n) = number(param, value) else { return };
                match param.as_str() {
                    "rounds" => self.cx.spec.rounds = n,
                    "unit_deadline_secs" => self.cx.spec.unit_deadline_ms = n * 1000,
                    "silence_secs" => self.cx.spec.silence_ms = n * 1000,
                    _ => {}
                }
            }
            AdminAction::Ban { key } => {
                self.cx.admin.banned.insert(*key);
                let conns: Vec<ConnId> = self
                    .cx
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.active() == Some(*key))
                    .map(|(&c, _)| c)
                    .collect();
                for conn in conns {
                    let why = format!("banned by the run's administrator: {reason}");
                    self.fatal(conn, Reason::new(Code::Banned, why));
                }
            }
            AdminAction::Unban { key } => {
                self.cx.admin.banned.remove(key);
            }
            AdminAction::Create { .. } => {}
        }
    }

    /// Records that an administrator created this run (on an idle coordinator), and why: the
    /// entry right after `Started`, carried by the first tick's actions like it.
    pub fn created_by_admin(&mut self, reason: String) {
        let action = AdminAction::Create {
            run: self.cx.spec.name.clone(),
            config: super::rules::RunRules::of(&self.cx.spec).digest(),
        };
        self.cx.log(LogEvent::Admin { action, reason });
    }

    /// After a restart, before any contributor connects: re-applies the administrator's acts
    /// recorded in the log and rebuilds every identity's record from it (credits, checks,
    /// refusals of identities found wrong).
    pub fn restore_from_log<'a>(&mut self, events: impl IntoIterator<Item = &'a LogEvent>) {
        for e in events {
            if let LogEvent::Admin { action, reason } = e {
                self.apply_admin(action, reason);
            }
            self.cx.credits.apply(e);
        }
        self.cx.out.clear();
    }

    /// What the administrator's acts have left in force.
    pub fn admin_state(&self) -> &AdminState {
        &self.cx.admin
    }

    /// Whether `key` is refused from the run: banned, or found wrong by a check.
    pub fn is_refused(&self, key: &PublicKey) -> bool {
        self.cx.admin.banned.contains(key) || self.cx.credits.is_refused(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_act_is_checked_against_the_run_as_it_stands() {
        let key = tessera_protocol::Identity::from_seed([1; 32]).public();
        let mut st = AdminState::default();
        let check = |st: &AdminState, a: AdminAction, state| st.check(&a, "why", state, 3, "r");
        let set = |p: &str, v: &str| AdminAction::Set {
            param: p.into(),
            value: v.into(),
        };
        let training = RunState::Training;
        assert_eq!(
            st.check(&AdminAction::Pause, " ", training, 3, "r"),
            Err(AdminRefusal::NoReason)
        );
        assert_eq!(check(&st, AdminAction::Pause, training), Ok(()));
        assert_eq!(
            check(&st, AdminAction::Pause, RunState::Paused),
            Err(AdminRefusal::AlreadyPaused)
        );
        assert_eq!(
            check(&st, AdminAction::Resume, training),
            Err(AdminRefusal::NotPaused)
        );
        assert_eq!(
            check(&st, AdminAction::Stop, RunState::Finished(End::Completed)),
            Err(AdminRefusal::Ended)
        );
        assert_eq!(check(&st, set("rounds", "4"), training), Ok(()));
        assert_eq!(
            check(&st, set("rounds", "3"), training),
            Err(AdminRefusal::RoundsClosed { done: 3 })
        );
        assert_eq!(
            check(&st, set("silence_secs", "0"), training),
            Err(AdminRefusal::OutOfRange("silence_secs".into()))
        );
        assert_eq!(
            check(&st, set("lr", "1"), training),
            Err(AdminRefusal::NotAParameter("lr".into()))
        );
        assert_eq!(
            check(&st, AdminAction::Unban { key }, training),
            Err(AdminRefusal::NotBanned(key))
        );
        st.banned.insert(key);
        assert_eq!(
            check(&st, AdminAction::Ban { key }, training),
            Err(AdminRefusal::AlreadyBanned(key))
        );
        let create = AdminAction::Create {
            run: "x".into(),
            config: [0; 32],
        };
        assert_eq!(
            check(&st, create, training),
            Err(AdminRefusal::RunExists("r".into()))
        );
    }
}
