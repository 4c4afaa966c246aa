//! `tessera`: the project's front door, one binary with subcommands.

mod adapters_cmd;
mod admin_cmd;
mod bounded_json;
mod calibrate_cmd;
mod closes;
mod coordinator_cmd;
mod demo;
mod eval;
mod export_cmd;
mod fork_cmd;
mod generate_cmd;
mod keys;
/// The contributor page as `build.rs` embedded it (or not).
mod page {
    include!(concat!(env!("OUT_DIR"), "/page.rs"));
}
mod plan_cmd;
mod receipts;
mod train_local;
mod tune_cmd;
mod tuning;
mod verify_cmd;
mod verify_credits;
mod verify_draws;
mod verify_replay;
mod verify_rounds;
mod worker_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Train large language models on the GPUs people already have.
#[derive(Parser)]
#[command(name = "tessera", version, about)]
struct Cli {
    /// How log events are written to standard error: `text` for people (colours only on a
    /// terminal) or `json`, one object a line, for machines. `RUST_LOG` picks which (default:
    /// warnings).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log events are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start a coordinator with embedded defaults and local native workers, and train the tiny
    /// byte-level model on the built-in corpus; one line per round.
    Demo(demo::Args),
    /// Serve a run described by a TOML config; resumes from its data directory after a crash.
    Coordinator(coordinator_cmd::Args),
    /// Contribute this machine's GPU to a run.
    Worker(worker_cmd::Args),
    /// Mean next-token cross-entropy of a checkpoint on a text file.
    Eval(eval::Args),
    /// Write a checkpoint as a Hugging Face LLaMA checkpoint folder (config.json, safetensors
    /// cut into files above a size with their index, the run's tokenizer).
    Export(export_cmd::Args),
    /// Continue a prompt with a checkpoint on this machine's GPU (key/value cache; greedy, or
    /// sampled at a temperature with top-p and a seed).
    Generate(generate_cmd::Args),
    /// Check a run's log (chain, hashes, the coordinator's signatures) and its checkpoints
    /// against it, replay its aggregates and recompute its credits; names the first bad entry.
    Verify(verify_cmd::Args),
    /// Start a new run from a verified checkpoint of another: verifies the parent's log up to
    /// it and writes a data directory that `tessera coordinator` serves under a new key.
    Fork(fork_cmd::Args),
    /// Train a small model on the built-in corpus on this machine's GPU, cut into micro-shards
    /// exactly as contributors would hold them, printing the training and held-out loss.
    TrainLocal(train_local::Args),
    /// Split a model into micro-shards and leases for given memory budgets, and print its costs.
    Plan(plan_cmd::Args),
    /// Measure how far this GPU drifts from another on the same work, to set the tolerance of
    /// the coordinator's checks.
    Calibrate(calibrate_cmd::Args),
    /// List this machine's GPU adapters, as `--adapter` of `worker` and `calibrate` matches
    /// them.
    Adapters(adapters_cmd::Args),
    /// Time this GPU's matmul kernel tilings on a model layer's matmuls, print the table and
    /// cache the fastest correct one for `tessera worker`.
    Tune(tune_cmd::Args),
    /// Act as a run's administrator: pause, resume, stop, change a parameter, ban or unban;
    /// every act goes into the run log with its reason.
    Admin(admin_cmd::Args),
}

fn multi_thread() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs the command; an error is printed as its chain of causes on one line (never a
/// backtrace, whatever `RUST_BACKTRACE` says) and the process exits with status 1.
fn main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    quiet_mesa();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Gives Mesa's Vulkan drivers a runtime directory when the environment has none (a service, a
/// container, a login without a session): without one they print `error: XDG_RUNTIME_DIR is
/// invalid or not set` on every device they open, outside the log's format. The directory is
/// the user's own under the temporary folder, used only if it is theirs and private.
#[cfg(target_os = "linux")]
fn quiet_mesa() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir()) {
        return;
    }
    // SAFETY: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("tessera-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let private = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0);
    if private {
        // SAFETY: the first thing `main` does, before any thread is started.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,wgpu_hal::gles=off".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Colour codes only for a person at a terminal, not in a log file or a pipe.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    match cli.command {
        Command::Demo(a) => multi_thread()?.block_on(demo::run(a, cli.log_format)),
        Command::Coordinator(a) => multi_thread()?.block_on(coordinator_cmd::run(a)),
        // GPU work blocks its thread while the driver computes: one thread is enough.
        Command::Worker(a) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(worker_cmd::run(a)),
        Command::Eval(a) => pollster::block_on(eval::run(a)),
        Command::Export(a) => export_cmd::run(a),
        Command::Generate(a) => pollster::block_on(generate_cmd::run(a)),
        Command::TrainLocal(a) => train_local::run(a),
        Command::Verify(a) => multi_thread()?.block_on(verify_cmd::run(a)),
        Command::Fork(a) => multi_thread()?.block_on(fork_cmd::run(a)),
        Command::Plan(a) => plan_cmd::run(a),
        Command::Calibrate(a) => calibrate_cmd::run(a),
        Command::Adapters(a) => adapters_cmd::run(a),
        Command::Tune(a) => tune_cmd::run(a),
        Command::Admin(a) => admin_cmd::run(a),
    }
}
