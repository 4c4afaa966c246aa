//! `tessera admin`: an administrator's requests to a coordinator (create a run on an idle one;
//! pause, resume, stop, set a parameter, ban or unban an identity), each with a reason that goes
//! into the run log and to every connected contributor. The token comes from `--token-file` or
//! `TESSERA_ADMIN_TOKEN`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use tessera_coordinator::server::AdminRequest;

/// Options of `admin`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The coordinator (`http://HOST:PORT` or `https://...`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub coordinator: String,
    /// File holding the admin token (first line); default: `TESSERA_ADMIN_TOKEN`.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Why: recorded in the run log and shown to every contributor.
    #[arg(long)]
    pub reason: String,
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// An administrator's act.
#[derive(Subcommand, Debug)]
pub enum Action {
    /// Create the run on an idle coordinator (one started without `--config`): it validates
    /// the configuration, starts the run, and records the act after the run's start.
    Create {
        /// The run's configuration (TOML); relative data paths in it resolve on the
        /// coordinator, against its working directory.
        #[arg(long)]
        config: PathBuf,
    },
    /// Hand out no new work until `resume`.
    Pause,
    /// Hand out work again.
    Resume,
    /// End the run at its last closed round or step.
    Stop,
    /// Change a run parameter: `rounds`, `unit_deadline_secs` or `silence_secs`.
    Set {
        /// The parameter.
        param: String,
        /// Its new value.
        value: String,
    },
    /// Refuse an identity (hex public key, as `/api/status` lists it): its sessions close and
    /// its work goes to others.
    Ban {
        /// The identity.
        key: String,
    },
    /// Lift a ban.
    Unban {
        /// The identity.
        key: String,
    },
}

/// Sends the request and prints the log entry that put it into effect.
pub fn run(a: Args) -> Result<()> {
    let token = crate::keys::admin_secret(a.token_file.as_deref())?
        .context("no admin token: pass --token-file or set TESSERA_ADMIN_TOKEN")?;
    let mut config = None;
    let (action, param, value, key) = match a.action {
        Action::Create { config: path } => {
            config = Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            );
            ("create", None, None, None)
        }
        Action::Pause => ("pause", None, None, None),
        Action::Resume => ("resume", None, None, None),
        Action::Stop => ("stop", None, None, None),
        Action::Set { param, value } => ("set", Some(param), Some(value), None),
        Action::Ban { key } => ("ban", None, None, Some(key)),
        Action::Unban { key } => ("unban", None, None, Some(key)),
    };
    let req = AdminRequest {
        action: action.into(),
        param,
        value,
        key,
        config,
        reason: a.reason,
    };
    let url = format!("{}/api/admin", a.coordinator.trim_end_matches('/'));
    match ureq::post(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(&req)
    {
        Ok(resp) => {
            let body: serde_json::Value = resp.into_json().context("reading the answer")?;
            println!(
                "done: {} (run log entry {})",
                body["done"].as_str().unwrap_or(action),
                body["log_index"]
            );
            Ok(())
        }
        Err(ureq::Error::Status(code, resp)) => {
            let body: serde_json::Value = resp.into_json().unwrap_or_default();
            bail!(
                "refused ({code}): {}",
                body["error"].as_str().unwrap_or("no reason given")
            )
        }
        Err(e) => Err(e).with_context(|| format!("reaching {url}")),
    }
}
