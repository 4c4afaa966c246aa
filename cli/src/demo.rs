//! `tessera demo`: a coordinator with embedded defaults (the tiny byte-level model, the
//! built-in corpus, SparseLoCo) plus local native workers, until `--rounds` rounds are done.
//! With `--pipeline`, the same model cut into 15 micro-shards trained by workers of mixed
//! memory budgets: one heavy lease of whole stages and six single micro-shards.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use tessera_coordinator::config::RunConfig;
use tessera_coordinator::server::Outcome;

use crate::coordinator_cmd;

/// Options of `demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rounds to train.
    #[arg(long, default_value_t = 20)]
    pub rounds: u64,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Local native workers to start.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Run directory (default: a fresh one under the system temp directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Train micro-shard leases in a pipeline instead of whole-model replicas (`--workers` is
    /// then ignored: one 900 KiB worker and six 220 KiB workers start).
    #[arg(long)]
    pub pipeline: bool,
}

/// The pipeline demo's run: the tiny byte-level model cut for 250 KiB leases, four 64-token
/// sequences per step, bf16 activations.
pub const PIPELINE_DEMO: &str = r#"
name = "pipeline-demo"
[model]
preset = "tiny-byte"
[train]
seq = 64
lr = 1e-2
warmup = 2
[pipeline]
budget = "250KiB"
micro_batches = 4
activations = "bf16"
"#;

/// The demo's run configuration.
pub fn demo_config(rounds: u64) -> RunConfig {
    let mut cfg = RunConfig::from_toml("name = \"demo\"").expect("the empty config parses");
    cfg.rounds = rounds;
    cfg
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Resolves when the process is asked to terminate (SIGTERM or SIGHUP), so that the demo
/// stops its workers then as on Ctrl-C; never where there are no such signals.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(mut term), Ok(mut hup)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await
}

/// Runs the demo; its workers write their logs in `log_format` too.
pub async fn run(a: Args, log_format: crate::LogFormat) -> Result<()> {
    let dir = a.data_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tessera-demo-{}", std::process::id()))
    });
    let cfg = if a.pipeline {
        let mut c = RunConfig::from_toml(PIPELINE_DEMO)?;
        c.rounds = a.rounds;
        c
    } else {
        demo_config(a.rounds)
    };
    let page = coordinator_cmd::web_page(None)?;
    let serving = coordinator_cmd::Serving {
        page,
        admission_bits: tessera_coordinator::admission::DEFAULT_BITS,
        ..Default::default()
    };
    let mut running = coordinator_cmd::start(&cfg, &dir, a.bind, &dir, None, serving, None).await?;
    let exe = std::env::current_exe().context("locating the tessera binary")?;
    let url = format!("ws://{}/ws", running.addr);
    // The workers work for this coordinator only: one left over from an earlier demo on the
    // same port (pinned to that demo's key) gets nothing signed here and exits.
    let key = crate::keys::load_or_create(&dir.join("coordinator.key"))?
        .public()
        .to_string();
    let budgets: Vec<&str> = if a.pipeline {
        std::iter::once("900KiB")
            .chain(std::iter::repeat_n("220KiB", 6))
            .collect()
    } else {
        vec!["1GiB"; a.workers]
    };
    // Tuned once here (on a first run), so that the workers find the choice cached instead
    // of each measuring at once.
    let tuned = crate::tuning::open(
        tessera_compute::GpuOptions::default(),
        crate::tuning::TuneMode::Auto,
        &crate::tuning::default_path(),
    )
    .await;
    if let Err(e) = tuned {
        tracing::warn!("tuning the kernels: {e:#}");
    }
    let mut workers = Workers(Vec::new());
    for (i, budget) in budgets.iter().enumerate() {
        let mut cmd = Command::new(&exe);
        dies_with_this_process(&mut cmd);
        let child = cmd
            .args([
                "worker",
                "--coordinator",
                &url,
                "--memory-budget",
                budget,
                "--quiet",
                "--coordinator-key",
                &key,
                "--identity",
            ])
            .arg(dir.join(format!("worker-{i}.key")))
            .args(match log_format {
                crate::LogFormat::Json => &["--log-format", "json"][..],
                crate::LogFormat::Text => &[],
            })
            .stdout(Stdio::null())
            .spawn()
            .context("starting a worker")?;
        workers.0.push(child);
        if a.pipeline && i == 0 {
            // The heavy lease goes to whoever asks first: let the big worker join alone.
            let start = std::time::Instant::now();
            while running
                .status
                .lock()
                .map(|s| s.contributors.iter().all(|c| c.lease.is_none()))
                .unwrap_or(true)
            {
                if start.elapsed() > std::time::Duration::from_secs(60) {
                    anyhow::bail!("the first worker did not get a lease within a minute");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    println!(
        "started {} local workers; the run lives in {}",
        budgets.len(),
        dir.display()
    );
    tokio::select! {
        r = running.finished.wait_for(|f| *f != Outcome::Running) => {
            if let Ok(Outcome::Failed(why)) = r.map(|o| o.clone()) {
                anyhow::bail!("{why}");
            }
        }
        _ = tokio::signal::ctrl_c() => println!("stopped"),
        _ = terminated() => println!("stopped (terminated)"),
    }
    drop(workers);
    let status = running.status.lock().map(|s| s.clone()).unwrap_or_default();
    if let (Some(first), Some(last)) = (status.loss_history.first(), status.loss_history.last()) {
        println!(
            "demo done: {} {}, training loss {first:.4} -> {last:.4}; checkpoints in {}",
            status.loss_history.len(),
            if a.pipeline { "steps" } else { "rounds" },
            dir.join("checkpoints").display()
        );
    }
    Ok(())
}

/// Makes the process `cmd` starts end (SIGTERM) when this one does, however it ends (a crash or
/// SIGKILL included): Linux's parent-death signal. A worker whose demo is gone would otherwise
/// reconnect forever, and join the next demo on the same port. (The signal follows the thread
/// that started the child: the demo starts its workers from a runtime worker thread, which lives
/// as long as the demo.)
#[cfg(target_os = "linux")]
fn dies_with_this_process(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The demo may have died between the fork and the prctl.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere the workers are stopped when the demo stops cleanly (see [`Workers`]).
#[cfg(not(target_os = "linux"))]
fn dies_with_this_process(_: &mut Command) {}
