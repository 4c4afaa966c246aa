//! `tessera`: the project's front door, one binary with subcommands.

mod corpus;
mod train_local;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Train large language models on the GPUs people already have.
#[derive(Parser)]
#[command(name = "tessera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a small model on the built-in corpus on this machine's GPU, cut into micro-shards
    /// exactly as contributors would hold them, printing the training and held-out loss.
    TrainLocal(train_local::Args),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::TrainLocal(a) => train_local::run(a),
    }
}
