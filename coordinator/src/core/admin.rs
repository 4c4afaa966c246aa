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

fn number(param: &str, value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{param} takes a whole number, not {value:?}"))
}

impl Core {
    /// An authenticated administrator's request (id `request`, answered by
    /// [`Action::AdminDone`]): refused with a reason and nothing changed, or logged and applied.
    pub(super) fn admin(&mut self, request: u64, action: AdminAction, reason: String) {
        let result = self.check_admin(&action, &reason).map(|()| {
            let entry = self.log(LogEvent::Admin {
                action: action.clone(),
                reason: reason.clone(),
            });
            self.apply_admin(&action, &reason);
            {
                let conns: Vec<ConnId> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.active().is_some())
                    .map(|(&c, _)| c)
                    .collect();
                for conn in conns {
                    self.send(
                        conn,
                        ToContributor::Admin {
                            entry: Box::new(entry.clone()),
                        },
                    );
                }
            }
            self.log.head().index
        });
        self.out.push(Action::AdminDone { request, result });
    }

    /// Whether `action` can be applied now; the reason when not.
    fn check_admin(&self, action: &AdminAction, reason: &str) -> Result<(), String> {
        if reason.trim().is_empty() {
            return Err("an administrator's act needs a reason: contributors see it".into());
        }
        if reason.len() > 1000 {
            return Err("the reason is longer than 1000 bytes".into());
        }
        if !self.state.is_open() {
            return Err("the run has ended".into());
        }
        let paused = self.state == RunState::Paused;
        match action {
            AdminAction::Pause if paused => Err("the run is already paused".into()),
            AdminAction::Resume if !paused => Err("the run is not paused".into()),
            AdminAction::Pause | AdminAction::Resume | AdminAction::Stop => Ok(()),
            AdminAction::Set { param, value } => match param.as_str() {
                "rounds" => {
                    let n = number(param, value)?;
                    let done = self.round();
                    if n <= done {
                        return Err(format!(
                            "rounds must stay above the {done} already closed (the open one is {done})"
                        ));
                    }
                    Ok(())
                }
                "unit_deadline_secs" | "silence_secs" => {
                    let n = number(param, value)?;
                    if n == 0 || n > 86_400 {
                        return Err(format!("{param} must be between 1 and 86400"));
                    }
                    Ok(())
                }
                other => Err(format!(
                    "{other} is not a parameter that can change during a run (these can: {})",
                    PARAMETERS.join(", ")
                )),
            },
            AdminAction::Ban { key } if self.admin.banned.contains(key) => {
                Err(format!("{key} is already banned"))
            }
            AdminAction::Unban { key } if !self.admin.banned.contains(key) => {
                Err(format!("{key} is not banned"))
            }
            AdminAction::Ban { .. } | AdminAction::Unban { .. } => Ok(()),
            AdminAction::Create { .. } => Err(format!(
                "this coordinator already serves run {}: an idle coordinator (started without a config) creates runs",
                self.spec.name
            )),
        }
    }

    /// Puts a logged act into effect.
    fn apply_admin(&mut self, action: &AdminAction, reason: &str) {
        match action {
            AdminAction::Pause => {
                if self.state == RunState::Training {
                    self.state = RunState::Paused;
                }
            }
            AdminAction::Resume => {
                if self.state == RunState::Paused {
                    self.state = RunState::Training;
                }
            }
            AdminAction::Stop => {
                if self.state.is_open() {
                    self.out.push(Action::Finished);
                }
                self.state = RunState::Finished(End::Stopped);
            }
            AdminAction::Set { param, value } => {
                let Ok(n) = number(param, value) else { return };
                match param.as_str() {
                    "rounds" => self.spec.rounds = n,
                    "unit_deadline_secs" => self.spec.unit_deadline_ms = n * 1000,
                    "silence_secs" => self.spec.silence_ms = n * 1000,
                    _ => {}
                }
            }
            AdminAction::Ban { key } => {
                self.admin.banned.insert(*key);
                let conns: Vec<ConnId> = self
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
                self.admin.banned.remove(key);
            }
            AdminAction::Create { .. } => {}
        }
    }

    /// Records that an administrator created this run (on an idle coordinator), and why: the
    /// entry right after `Started`, carried by the first tick's actions like it.
    pub fn created_by_admin(&mut self, reason: String) {
        let action = AdminAction::Create {
            run: self.spec.name.clone(),
            config: super::rules::RunRules::of(&self.spec).digest(),
        };
        self.log(LogEvent::Admin { action, reason });
    }

    /// After a restart, before any contributor connects: re-applies the administrator's acts
    /// recorded in the log and rebuilds every identity's record from it (credits, checks,
    /// refusals of identities found wrong).
    pub fn restore_from_log<'a>(&mut self, events: impl IntoIterator<Item = &'a LogEvent>) {
        for e in events {
            if let LogEvent::Admin { action, reason } = e {
                self.apply_admin(action, reason);
            }
            self.credits.apply(e);
        }
        self.out.clear();
    }

    /// What the administrator's acts have left in force.
    pub fn admin_state(&self) -> &AdminState {
        &self.admin
    }

    /// Whether `key` is refused from the run: banned, or found wrong by a check.
    pub fn is_refused(&self, key: &PublicKey) -> bool {
        self.admin.banned.contains(key) || self.credits.is_refused(key)
    }
}
