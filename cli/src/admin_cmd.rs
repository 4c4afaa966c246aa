//! `tessera admin`: an administrator's requests to a coordinator (create a run on an idle one;
//! pause, resume, stop, set a parameter, ban or unban an identity), each with a reason that goes
//! into the run log and to every connected contributor. The token comes from `--token-file` or
//! `TESSERA_ADMIN_TOKEN`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tessera_coordinator::admin_request::{
    AdminCommand, AdminErrorBody, AdminRequest, AdminResponse,
};

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
    pub command: AdminCommand,
}

/// Sends the request and prints the log entry that put it into effect.
pub fn run(a: Args) -> Result<()> {
    let token = crate::keys::admin_secret(a.token_file.as_deref())?
        .context("no admin token: pass --token-file or set TESSERA_ADMIN_TOKEN")?;
    let req = AdminRequest {
        command: a.command,
        reason: a.reason,
    };
    let url = format!("{}/api/admin", a.coordinator.trim_end_matches('/'));
    match ureq::post(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(&req)
    {
        Ok(resp) => {
            let body: AdminResponse = resp.into_json().context("reading the answer")?;
            println!("done: {} (run log entry {})", body.done, body.log_index);
            Ok(())
        }
        Err(ureq::Error::Status(status, resp)) => match resp.into_json::<AdminErrorBody>() {
            Ok(b) => bail!("refused ({status} {}): {}", b.code, b.error),
            Err(_) => bail!("refused ({status}) without a reason"),
        },
        Err(e) => Err(e).with_context(|| format!("reaching {url}")),
    }
}
