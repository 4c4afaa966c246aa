//! What the administrator's acts leave in force (the banned identities), and the pure check of
//! an act against the run as it stands ([`AdminState::check`]): which acts, parameters,
//! values and reasons the core takes, and the typed refusal ([`AdminRefusal`]) of any other.
//! Applying a logged act is `admin.rs`.

use std::collections::BTreeSet;

use tessera_protocol::log::AdminAction;
use tessera_protocol::PublicKey;

use super::RunState;

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
    /// `pause` or `resume` of a run that is stopping.
    #[error(
        "the run is stopping: the round or step in progress ends it (stop again to end it now)"
    )]
    Stopping,
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
            AdminAction::Pause | AdminAction::Resume if state == RunState::Stopping => {
                Err(AdminRefusal::Stopping)
            }
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

/// `value` as the whole number `param` takes.
pub(super) fn number(param: &str, value: &str) -> Result<u64, AdminRefusal> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| AdminRefusal::NotANumber {
            param: param.into(),
            value: value.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::super::End;
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
        let stopping = RunState::Stopping;
        for act in [AdminAction::Pause, AdminAction::Resume] {
            assert_eq!(check(&st, act, stopping), Err(AdminRefusal::Stopping));
        }
        assert_eq!(check(&st, AdminAction::Stop, stopping), Ok(()));
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

    #[test]
    fn a_reason_is_given_and_bounded_and_numbers_are_whole() {
        assert_eq!(check_reason(""), Err(AdminRefusal::NoReason));
        assert_eq!(check_reason("x".repeat(MAX_REASON_BYTES).as_str()), Ok(()));
        assert_eq!(
            check_reason("x".repeat(MAX_REASON_BYTES + 1).as_str()),
            Err(AdminRefusal::LongReason)
        );
        assert_eq!(number("rounds", " 12 "), Ok(12));
        assert_eq!(
            number("rounds", "-1"),
            Err(AdminRefusal::NotANumber {
                param: "rounds".into(),
                value: "-1".into()
            })
        );
        let st = AdminState::default();
        let huge = AdminAction::Set {
            param: "unit_deadline_secs".into(),
            value: "86401".into(),
        };
        assert_eq!(
            st.check(&huge, "why", RunState::Training, 0, "r"),
            Err(AdminRefusal::OutOfRange("unit_deadline_secs".into()))
        );
        assert_eq!(
            st.check(
                &AdminAction::Pause,
                "why",
                RunState::Finished(End::Stopped),
                0,
                "r"
            ),
            Err(AdminRefusal::Ended)
        );
    }
}
