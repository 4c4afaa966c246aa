//! What an administrator asks of a coordinator, as one type: [`AdminCommand`] is both the
//! subcommands of `tessera admin` (clap, with this crate's `clap` feature) and what the body of
//! `POST /api/admin` holds, read and checked by serde:
//!
//! ```json
//! {"action": "set", "param": "rounds", "value": "40", "reason": "a longer run"}
//! {"action": "ban", "key": "<64 hex characters>", "reason": "sent garbage"}
//! {"action": "create", "config": "<the run's TOML>", "reason": "the first run"}
//! ```
//!
//! The answers are [`AdminResponse`] (200) and [`AdminErrorBody`] (any refusal, see
//! `admin_http.rs`).

use serde::{Deserialize, Serialize};
use tessera_protocol::log::AdminAction;
use tessera_protocol::PublicKey;

/// An administrator's act, as asked: creating a run (on an idle coordinator), or an act on
/// the run a coordinator serves (the log's own [`AdminAction`], with its doc as the help).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Subcommand))]
pub enum AdminCommand {
    /// Create the run on an idle coordinator (one started without `--config`): it validates
    /// the configuration, starts the run, and records the act after the run's start.
    Create {
        /// The run's configuration (TOML). On the command line: the file that holds it, which
        /// `tessera admin` reads; relative data paths in it resolve on the coordinator,
        /// against its working directory.
        #[cfg_attr(
            feature = "clap",
            arg(long = "config", value_name = "FILE", value_parser = read_config)
        )]
        config: String,
    },
    /// An act on the run.
    #[cfg_attr(feature = "clap", command(flatten))]
    Act(AdminAction),
}

/// The TOML text of the file at `path` (clap's parser of `create --config FILE`).
#[cfg(feature = "clap")]
fn read_config(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))
}

impl AdminCommand {
    /// Its name in a request's `action` field.
    pub fn name(&self) -> &'static str {
        match self {
            AdminCommand::Create { .. } | AdminCommand::Act(AdminAction::Create { .. }) => "create",
            AdminCommand::Act(AdminAction::Pause) => "pause",
            AdminCommand::Act(AdminAction::Resume) => "resume",
            AdminCommand::Act(AdminAction::Stop) => "stop",
            AdminCommand::Act(AdminAction::Set { .. }) => "set",
            AdminCommand::Act(AdminAction::Ban { .. }) => "ban",
            AdminCommand::Act(AdminAction::Unban { .. }) => "unban",
        }
    }

    /// The act a run's core checks, logs and applies; `None` for `create`, which only an
    /// idle coordinator performs (its log entry names the run and its rules' digest).
    pub fn act(&self) -> Option<AdminAction> {
        match self {
            AdminCommand::Create { .. } | AdminCommand::Act(AdminAction::Create { .. }) => None,
            AdminCommand::Act(a) => Some(a.clone()),
        }
    }
}

/// The body of `POST /api/admin`: an act and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Body", into = "Body")]
pub struct AdminRequest {
    /// What to do.
    pub command: AdminCommand,
    /// Why; contributors see it in the run log.
    pub reason: String,
}

/// The JSON form of an [`AdminRequest`]: one object, the fields an action takes and no other.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<String>,
    reason: String,
}

impl TryFrom<Body> for AdminRequest {
    type Error = String;

    fn try_from(b: Body) -> Result<Self, String> {
        let action = b.action.as_str();
        // Every field a request may carry, and whether this action takes it.
        let takes = |field: &str| match action {
            "create" => field == "config",
            "set" => field == "param" || field == "value",
            "ban" | "unban" => field == "key",
            _ => false,
        };
        let known = ["create", "pause", "resume", "stop", "set", "ban", "unban"];
        if !known.contains(&action) {
            return Err(format!("unknown action {action:?} ({})", known.join(", ")));
        }
        for (field, given) in [
            ("param", b.param.is_some()),
            ("value", b.value.is_some()),
            ("key", b.key.is_some()),
            ("config", b.config.is_some()),
        ] {
            if given && !takes(field) {
                return Err(format!("{action} takes no {field}"));
            }
            if !given && takes(field) {
                return Err(format!("{action} needs a {field}"));
            }
        }
        let key = || -> Result<PublicKey, String> {
            PublicKey::from_hex(b.key.as_deref().unwrap_or_default())
                .map_err(|e| format!("key: {e}"))
        };
        let command = match action {
            "create" => AdminCommand::Create {
                config: b.config.unwrap_or_default(),
            },
            "pause" => AdminCommand::Act(AdminAction::Pause),
            "resume" => AdminCommand::Act(AdminAction::Resume),
            "stop" => AdminCommand::Act(AdminAction::Stop),
            "set" => AdminCommand::Act(AdminAction::Set {
                param: b.param.unwrap_or_default(),
                value: b.value.unwrap_or_default(),
            }),
            "ban" => AdminCommand::Act(AdminAction::Ban { key: key()? }),
            _ => AdminCommand::Act(AdminAction::Unban { key: key()? }),
        };
        Ok(AdminRequest {
            command,
            reason: b.reason,
        })
    }
}

impl From<AdminRequest> for Body {
    fn from(r: AdminRequest) -> Body {
        let mut b = Body {
            action: r.command.name().into(),
            reason: r.reason,
            ..Body::default()
        };
        match r.command {
            AdminCommand::Create { config } => b.config = Some(config),
            AdminCommand::Act(AdminAction::Set { param, value }) => {
                (b.param, b.value) = (Some(param), Some(value))
            }
            AdminCommand::Act(AdminAction::Ban { key } | AdminAction::Unban { key }) => {
                b.key = Some(key.to_string())
            }
            AdminCommand::Act(_) => {}
        }
        b
    }
}

/// The answer of `POST /api/admin` to an act put into effect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdminResponse {
    /// What was done.
    pub done: String,
    /// The run-log entry that put it into effect.
    pub log_index: u64,
}

/// The body of every refusal of `POST /api/admin` (4xx, 5xx).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdminErrorBody {
    /// What kind of refusal (`bad_request`, `refused`, `no_token`, ...): stable, for scripts.
    pub code: String,
    /// Why, for people.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<AdminRequest, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn every_command_goes_to_json_and_back() {
        let key = tessera_protocol::Identity::from_seed([3; 32]).public();
        for command in [
            AdminCommand::Create {
                config: "name = \"x\"".into(),
            },
            AdminCommand::Act(AdminAction::Pause),
            AdminCommand::Act(AdminAction::Resume),
            AdminCommand::Act(AdminAction::Stop),
            AdminCommand::Act(AdminAction::Set {
                param: "rounds".into(),
                value: "9".into(),
            }),
            AdminCommand::Act(AdminAction::Ban { key }),
            AdminCommand::Act(AdminAction::Unban { key }),
        ] {
            let r = AdminRequest {
                command,
                reason: "why".into(),
            };
            let json = serde_json::to_string(&r).unwrap();
            assert!(json.contains(&format!("\"action\":\"{}\"", r.command.name())));
            assert_eq!(read(&json), Ok(r));
        }
    }

    #[test]
    fn a_request_carries_the_fields_its_action_takes_and_no_other() {
        let e = read(r#"{"action":"fly","reason":"x"}"#).unwrap_err();
        assert!(e.contains("unknown action \"fly\""), "{e}");
        let e = read(r#"{"action":"pause","key":"00","reason":"x"}"#).unwrap_err();
        assert!(e.contains("pause takes no key"), "{e}");
        let e = read(r#"{"action":"set","param":"rounds","reason":"x"}"#).unwrap_err();
        assert!(e.contains("set needs a value"), "{e}");
        let e = read(r#"{"action":"ban","key":"zz","reason":"x"}"#).unwrap_err();
        assert!(e.contains("key:"), "{e}");
        let e = read(r#"{"action":"stop","reason":"x","extra":1}"#).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        assert!(
            read(r#"{"action":"stop"}"#).is_err(),
            "a reason is required"
        );
    }

    #[test]
    fn create_is_not_a_run_act() {
        assert_eq!(
            AdminCommand::Create {
                config: String::new()
            }
            .act(),
            None
        );
        assert_eq!(
            AdminCommand::Act(AdminAction::Stop).act(),
            Some(AdminAction::Stop)
        );
    }
}
