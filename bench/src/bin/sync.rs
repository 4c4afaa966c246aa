//! `sync`: SparseLoCo against dense synchronisation on the same run (the tiny byte-level model,
//! the built-in corpus, 3 replicas, the demo's settings), in process on this machine's adapter,
//! over several seeds (each seed draws the initial weights and the data order). Prints per seed
//! and as mean and spread: the bytes each replica uploads per round in both modes (and their
//! ratio), and the final held-out loss of each (and the relative gap); then the outer step's
//! download per replica per round at several replica counts.
//!
//! ```text
//! cargo run --release -p tessera-bench --bin sync -- --rounds 12 --seeds 3
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

fn run(gpu: &Gpu, sync: &str, rounds: u64, seed: u64, extra: &str) -> Result<Outcome> {
    let mut cfg = RunConfig::from_toml(&format!(
        "name = \"bench\"\nrounds = {rounds}\n[train]\nsync = \"{sync}\"\n{extra}"
    ))?;
    cfg.seed = seed;
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

/// Mean and sample standard deviation.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

struct Args {
    rounds: u64,
    seeds: Vec<u64>,
    both: String,
    sparse: String,
    downloads: Vec<u64>,
    download_rounds: u64,
    variants: Vec<String>,
}

fn args() -> Result<Option<Args>> {
    let mut a = Args {
        rounds: 12,
        seeds: vec![1, 2, 3],
        both: String::new(),
        sparse: String::new(),
        downloads: vec![3, 16, 64],
        download_rounds: 2,
        variants: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, what: &str| -> Result<u64> {
        v.with_context(|| format!("{what} needs a number"))?
            .parse()
            .with_context(|| format!("{what} takes a number"))
    };
    let list = |v: Option<String>, what: &str| -> Result<Vec<u64>> {
        let v = v.with_context(|| format!("{what} needs a list like 3,16,64"))?;
        if v.is_empty() || v == "none" {
            return Ok(Vec::new());
        }
        v.split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .with_context(|| format!("{what}: {x} is not a number"))
            })
            .collect()
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => a.rounds = number(it.next(), "--rounds")?,
            "--seeds" => {
                let n = number(it.next(), "--seeds")?;
                a.seeds = (1..=n.max(1)).collect();
            }
            "--seed" => a.seeds = list(it.next(), "--seed")?,
            "--set" | "--sparse" => {
                let kv = it
                    .next()
                    .with_context(|| format!("{arg} needs key=value (a [train] setting)"))?;
                let to = if arg == "--set" {
                    &mut a.both
                } else {
                    &mut a.sparse
                };
                to.push_str(&kv);
                to.push('\n');
            }
            "--downloads" => a.downloads = list(it.next(), "--downloads")?,
            "--variant" => a.variants.push(
                it.next()
                    .context("--variant needs settings like 'k=32 beta=0.9'")?,
            ),
            "--download-rounds" => a.download_rounds = number(it.next(), "--download-rounds")?,
            "-h" | "--help" => {
                println!(
                    "sync [--rounds 12] [--seeds 3 | --seed 1,5,9] [--set key=value ...] [--sparse key=value ...]\n     [--variant 'key=value ...' ...] [--downloads 3,16,64 | none] [--download-rounds 2]\n\
                     SparseLoCo vs dense on the demo run. --set: a [train] setting for both runs (e.g. --set inner_steps=8);\n\
                     --sparse: for the SparseLoCo run only (e.g. --sparse k=32 --sparse outer_lr=3.0).\n\
                     --variant 'k=32 beta=0.9': a SparseLoCo run with these settings (over --sparse), repeatable; each seed's dense run is shared.\n\
                     --downloads: replica counts at which to measure the outer step's download (SparseLoCo, --download-rounds rounds)."
                );
                return Ok(None);
            }
            other => bail!("unknown argument {other} (--help lists them)"),
        }
    }
    if a.seeds.is_empty() {
        bail!("no seeds to run");
    }
    Ok(Some(a))
}

fn main() -> Result<()> {
    let Some(a) = args()? else { return Ok(()) };
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default()))?;
    println!("adapter: {}", gpu.adapter());
    println!(
        "{} rounds, seeds {:?}{}{}",
        a.rounds,
        a.seeds,
        if a.both.is_empty() {
            String::new()
        } else {
            format!(", both: {}", a.both.trim().replace('\n', " "))
        },
        if a.sparse.is_empty() {
            String::new()
        } else {
            format!(", sparse only: {}", a.sparse.trim().replace('\n', " "))
        },
    );
    // The SparseLoCo settings each variant runs with (the --sparse ones, then its own).
    let variants: Vec<(String, String)> = if a.variants.is_empty() {
        vec![("as set".to_string(), a.sparse.clone())]
    } else {
        a.variants
            .iter()
            .map(|v| {
                let lines: String = v.split_whitespace().map(|kv| format!("{kv}\n")).collect();
                (v.clone(), format!("{}{lines}", a.sparse))
            })
            .collect()
    };
    let mut dense_losses = Vec::new();
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); variants.len()];
    let mut dense_download = 0.0;
    for &seed in &a.seeds {
        let dense = run(&gpu, "dense", a.rounds, seed, &a.both)?;
        println!(
            "seed {seed}: dense upload per replica per round {:.0} B, download {:.0} B, train loss {:.4}, held-out {:.4}",
            dense.upload_per_replica_round,
            dense.download_per_replica_round,
            dense.train_loss,
            dense.held_out
        );
        dense_download = dense.download_per_replica_round;
        dense_losses.push(dense.held_out);
        for ((name, settings), out) in variants.iter().zip(&mut results) {
            let sparse = run(
                &gpu,
                "sparse",
                a.rounds,
                seed,
                &format!("{}{settings}", a.both),
            )?;
            let ratio = dense.upload_per_replica_round / sparse.upload_per_replica_round;
            let gap = (sparse.held_out - dense.held_out) / dense.held_out;
            println!(
                "seed {seed} sparseloco [{name}]: upload {:.0} B ({ratio:.1}x less), download {:.0} B, train loss {:.4}, held-out {:.4} ({:+.2}% against dense)",
                sparse.upload_per_replica_round,
                sparse.download_per_replica_round,
                sparse.train_loss,
                sparse.held_out,
                100.0 * gap
            );
            out.push((ratio, 100.0 * gap));
        }
    }
    let (d, d_sd) = mean_sd(&dense_losses);
    println!(
        "after {} rounds over {} seeds: dense held-out {d:.4} (sd {d_sd:.4})",
        a.rounds,
        a.seeds.len()
    );
    for ((name, _), out) in variants.iter().zip(&results) {
        let ratios: Vec<f64> = out.iter().map(|r| r.0).collect();
        let gaps: Vec<f64> = out.iter().map(|r| r.1).collect();
        let (r, _) = mean_sd(&ratios);
        let (g, g_sd) = mean_sd(&gaps);
        println!(
            "sparseloco [{name}]: upload ratio {r:.1}x; held-out gap (sparse - dense) / dense {g:+.2}% (sd {g_sd:.2}, min {:+.2}%, max {:+.2}%)",
            gaps.iter().cloned().fold(f64::INFINITY, f64::min),
            gaps.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        );
    }
    for &replicas in &a.downloads {
        let extra = format!("{}{}replicas = {replicas}\n", a.both, a.sparse);
        let sparse = run(&gpu, "sparse", a.download_rounds, a.seeds[0], &extra)?;
        println!(
            "{replicas} replicas: outer step download per replica per round {:.0} B sparseloco, {dense_download:.0} B dense ({:.1}x less)",
            sparse.download_per_replica_round,
            dense_download / sparse.download_per_replica_round
        );
    }
    Ok(())
}
