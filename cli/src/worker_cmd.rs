//! `tessera worker`: contributes this machine's GPU to a run.

use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_protocol::messages::{Capabilities, ContributorKind};
use tessera_worker::contributor::Contributor;
use tokio::sync::watch;

use crate::keys;

/// Options of `worker`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The coordinator's WebSocket address.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub coordinator: String,
    /// Memory a lease may use, e.g. `2GiB`, `512MiB`.
    #[arg(long, default_value = "2GiB")]
    pub memory_budget: String,
    /// Identity file (created on first use).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Also trust the certificates in this PEM file for `wss://` (e.g. a coordinator's
    /// self-signed certificate); the public web's roots are always trusted.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Keep the coordinator's signed receipts in this file (one JSON line each, appended):
    /// `tessera verify --log ... --receipts FILE` then proves what the coordinator recorded of
    /// this worker's submissions.
    #[arg(long)]
    pub receipts: Option<PathBuf>,
    /// Work only for the coordinator with this public key (64 hex digits, as its log and
    /// status name it): a coordinator with another key at the address gets nothing signed and
    /// the worker exits (`tessera demo` pins its workers to its own coordinator this way).
    #[arg(long)]
    pub coordinator_key: Option<String>,
    /// The GPU and its matmul tiling (a worker's, for calibrate).
    #[command(flatten)]
    pub gpu: crate::tuning::GpuArgs,
}

/// Runs until Ctrl-C.
pub async fn run(a: Args) -> Result<()> {
    let budget = tessera_plan::units::parse_bytes(&a.memory_budget)?;
    let pinned = match &a.coordinator_key {
        Some(hex) => Some(tessera_protocol::PublicKey(
            tessera_protocol::identity::parse_hex32(hex).ok_or_else(|| {
                anyhow::anyhow!(
                    "--coordinator-key must be 64 hex digits (a public key), not {hex:?}"
                )
            })?,
        )),
        None => None,
    };
    let path = match a.identity {
        Some(p) => p,
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".tessera")
            .join("worker.key"),
    };
    let id = keys::load_or_create(&path)?;
    let gpu = a.gpu.open().await?;
    println!("worker {} on {}", id.public().fingerprint(), gpu.adapter());
    let caps = Capabilities {
        adapter: gpu.adapter().name.clone(),
        backend: gpu.adapter().backend.clone(),
        max_binding_bytes: gpu.max_binding_bytes(),
        memory_budget_bytes: budget,
    };
    let mut contributor = Contributor::new(id, ContributorKind::Native, caps);
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(true);
        }
    });
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} weight frames")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("downloading weights");
    let mut last = (0u64, 0u64);
    let tls = match &a.ca {
        Some(ca) => Some(tessera_worker::native::tls_config(Some(ca))?),
        None => None,
    };
    let mut receipts_failed = false;
    let (session, mut backend) = contributor.parts(&gpu);
    if let Some(key) = pinned {
        session.expect_coordinator(key);
    }
    tessera_worker::native::run(&a.coordinator, tls, session, &mut backend, rx, |c| {
        if let Some(path) = &a.receipts {
            if let Err(e) = crate::receipts::append(path, &c.take_receipts()) {
                if !receipts_failed {
                    bar.println(format!("cannot keep receipts: {e:#}"));
                    receipts_failed = true;
                }
            }
        }
        let s = c.stats();
        if s.frames_total > 0 {
            bar.set_length(s.frames_total as u64);
            bar.set_position(s.frames_received as u64);
        }
        if (s.submitted, s.accepted) != last {
            last = (s.submitted, s.accepted);
            bar.println(format!(
                "units submitted {} accepted {} rejected {} tokens {}",
                s.submitted, s.accepted, s.rejected, s.tokens
            ));
        }
    })
    .await?;
    bar.finish_and_clear();
    let s = contributor.stats();
    println!(
        "worker stopped: {} units accepted, {} tokens",
        s.accepted, s.tokens
    );
    Ok(())
}
