//! `sync`: SparseLoCo against dense synchronisation on the same run (the tiny byte-level model,
//! the built-in corpus, 3 replicas, the demo's settings), in process on this machine's adapter.
//! Prints the bytes each replica uploads per round in both modes (and their ratio), and the
//! final held-out loss of each.
//!
//! ```text
//! cargo run --release -p tessera-bench --bin sync -- --rounds 12
//! ```

use anyhow::{bail, Context, Result};
use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::reference::Batch;
use tessera_compute::{Gpu, GpuOptions};
use tessera_coordinator::config::RunConfig;
use tessera_coordinator::core::{Core, Phase};
use tessera_protocol::messages::SessionMessage;
use tessera_protocol::{encode, Identity, ToContributor, ToCoordinator};

const HELD_OUT: &str = include_str!("../../../tests/data/held-out.txt");

struct Outcome {
    upload_per_replica_round: f64,
    download_per_replica_round: f64,
    held_out: f64,
    train_loss: f64,
}

fn run(gpu: &Gpu, sync: &str, rounds: u64, extra: &str) -> Result<Outcome> {
    let mut cfg = RunConfig::from_toml(&format!(
        "name = \"bench\"\nrounds = {rounds}\n[train]\nsync = \"{sync}\"\n{extra}"
    ))?;
    cfg.seed = 5;
    let (spec, init) = cfg.resolve(std::path::Path::new("."))?;
    let model_cfg = spec.model.clone();
    let replicas = spec.replicas as usize;
    let mut core = Core::new(spec, Identity::from_seed([7; 32]), init);
    let mut clients = tessera_e2e::contributors(gpu, replicas);
    let (mut upload, mut submissions) = (0usize, 0usize);
    let (mut download, mut steps) = (0usize, 0usize);
    tessera_e2e::run(gpu, &mut core, &mut clients, |m| {
        if let tessera_e2e::Message::Down(ToContributor::OuterStep { update, .. }) = m {
            download += encode(update).map(|f| f.len()).unwrap_or(0);
            steps += 1;
        }
        if let tessera_e2e::Message::Up(ToCoordinator::Session(s)) = m {
            if let SessionMessage::Submit(sub) = &s.body {
                upload += encode(&sub.result).map(|f| f.len()).unwrap_or(0);
                submissions += 1;
            }
        }
    })
    .context("contributor")?;
    if core.phase() != Phase::Finished {
        bail!("the {sync} run did not finish");
    }
    let seq = model_cfg.max_position_embeddings;
    let toks: Vec<u32> = HELD_OUT.bytes().map(u32::from).collect();
    let n = toks.len() / seq;
    let model = GpuModel::new(gpu, &model_cfg, core.weights(), Slicing::whole(), n * seq)?;
    let held_out =
        pollster::block_on(model.loss(gpu, &Batch::from_sequences(&toks[..n * seq], seq)))?;
    Ok(Outcome {
        upload_per_replica_round: upload as f64 / submissions as f64,
        download_per_replica_round: download as f64 / steps.max(1) as f64,
        held_out,
        train_loss: *core.losses().last().unwrap_or(&f64::NAN),
    })
}

fn main() -> Result<()> {
    let mut rounds = 12;
    let mut extra = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .context("--rounds needs a number")?
                    .parse()
                    .context("--rounds takes a number")?
            }
            "--set" => {
                extra.push_str(
                    &args
                        .next()
                        .context("--set needs key=value (a [train] setting)")?,
                );
                extra.push('\n');
            }
            "-h" | "--help" => {
                println!("sync [--rounds 12] [--set key=value ...]: SparseLoCo vs dense on the demo run ([train] settings, e.g. --set k=256)");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default()))?;
    println!("adapter: {}", gpu.adapter());
    let dense = run(&gpu, "dense", rounds, &extra)?;
    let sparse = run(&gpu, "sparse", rounds, &extra)?;
    println!("upload per replica per round: dense {:.0} bytes, sparseloco {:.0} bytes, ratio dense/sparse {:.1}x", dense.upload_per_replica_round, sparse.upload_per_replica_round, dense.upload_per_replica_round / sparse.upload_per_replica_round);
    println!(
        "outer step download per replica per round: dense {:.0} bytes, sparseloco {:.0} bytes, ratio {:.1}x",
        dense.download_per_replica_round,
        sparse.download_per_replica_round,
        dense.download_per_replica_round / sparse.download_per_replica_round
    );
    println!(
        "final training loss: dense {:.4}, sparseloco {:.4}",
        dense.train_loss, sparse.train_loss
    );
    println!("final held-out loss after {rounds} rounds: dense {:.4}, sparseloco {:.4}, difference (sparse - dense) {:+.4} nats", dense.held_out, sparse.held_out, sparse.held_out - dense.held_out);
    Ok(())
}
