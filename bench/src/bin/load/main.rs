//! `load`: a real coordinator process holding N idle contributor connections beside real
//! workers (every update checked every round, so the run's own work per round is the same in
//! both phases). The connections come from many 127.x source addresses (so the per-address limit
//! stays at its default), each doing the real handshake and a signed heartbeat as often as the
//! coordinator's `Welcome` asks (`--heartbeat-secs` overrides it); three `tessera worker`s
//! train the end-to-end run meanwhile. Measured twice, without
//! and with the crowd: connections held, probe handshake and `/api/status` latency (p50/p99),
//! the coordinator's CPU-seconds per closed round and its resident memory (per connection
//! under load). The ratio of CPU per round loaded/unloaded is the figure to watch: the
//! coordinator's work per round should not grow with idle contributors.
//!
//! ```text
//! cargo build --release -p tessera -p tessera-bench --bin tessera --bin load
//! target/release/load --connections 10000
//! ```
//!
//! Everything runs on this machine: the crowd, the workers (on its wgpu adapter) and the
//! coordinator share it, so absolute times say little; compare the two phases. `--pin` (two
//! CPUs or more) puts the coordinator alone on the first and everything else on the others
//! (`taskset`), so that the crowd's clients, which a public coordinator would not host, do not
//! take the coordinator's CPU in the loaded phase only; its rounds are slower then (the workers
//! share fewer CPUs). Besides the ratio per round, the benchmark prints what the crowd costs the
//! coordinator per second, which does not depend on how long a round takes.

mod client;
mod procs;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tessera_protocol::Identity;

const E2E: &str = include_str!("../../../../tests/data/e2e.toml");

struct Options {
    connections: usize,
    per_address: usize,
    heartbeat: Option<Duration>,
    silence_secs: u64,
    probes: usize,
    rounds: u64,
    workers: usize,
    ramp: usize,
    tessera: Option<PathBuf>,
    pin: bool,
}

fn options() -> Result<Options> {
    let mut o = Options {
        connections: 10_000,
        per_address: 10,
        heartbeat: None,
        silence_secs: 60,
        probes: 40,
        rounds: 12,
        workers: 3,
        ramp: 64,
        tessera: None,
        pin: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--connections" => o.connections = value()?.parse()?,
            "--per-address" => o.per_address = value()?.parse::<usize>()?.max(1),
            "--heartbeat-secs" => o.heartbeat = Some(Duration::from_secs_f64(value()?.parse()?)),
            "--silence-secs" => o.silence_secs = value()?.parse::<u64>()?.max(1),
            "--probes" => o.probes = value()?.parse::<usize>()?.max(1),
            "--rounds" => o.rounds = value()?.parse::<u64>()?.max(1),
            "--workers" => o.workers = value()?.parse()?,
            "--ramp" => o.ramp = value()?.parse::<usize>()?.max(1),
            "--tessera" => o.tessera = Some(value()?.into()),
            "--pin" => o.pin = true,
            "--help" | "-h" => {
                println!("load [--connections N] [--per-address 10] [--heartbeat-secs S (default: as the coordinator asks)] [--silence-secs 60] [--probes 40] [--rounds 12] [--workers 3] [--ramp 64] [--tessera PATH] [--pin]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    Ok(o)
}

/// The `i`th source address of a group (`group` 1: the crowd, 200: the probes).
fn source(group: u8, i: usize) -> Ipv4Addr {
    let a = i as u32 + 1;
    Ipv4Addr::new(127, group + (a >> 16) as u8, (a >> 8) as u8, a as u8)
}

/// Median and 99th percentile, milliseconds.
fn percentiles(v: &mut [Duration]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort();
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5).as_secs_f64() * 1e3, at(0.99).as_secs_f64() * 1e3)
}

/// What one phase measured.
struct Phase {
    held: usize,
    handshake: (f64, f64),
    status: (f64, f64),
    cpu_per_round: f64,
    secs_per_round: f64,
    resident: u64,
}

fn round_of(v: &serde_json::Value) -> u64 {
    v["round"].as_u64().unwrap_or(0)
}

/// Probes (one handshake, one status, a short pause) while `rounds` rounds close; the
/// coordinator's CPU time is read when the first and the last of those rounds are seen closed.
async fn measure(port: u16, pid: u32, o: &Options, crowd: &client::Crowd) -> Result<Phase> {
    let (mut hs, mut st) = (Vec::new(), Vec::new());
    let (_, v) = client::status(port).await?;
    let start_round = round_of(&v);
    let mut first: Option<(u64, f64, Instant)> = None;
    let started = Instant::now();
    for k in 0.. {
        hs.push(client::probe_handshake(port, source(200, k), fresh(1 << 30 | k)).await?);
        let (took, v) = client::status(port).await?;
        st.push(took);
        let round = round_of(&v);
        match first {
            None if round > start_round => {
                first = Some((round, procs::cpu_seconds(pid)?, Instant::now()))
            }
            Some((r0, cpu0, t0)) if round >= r0 + o.rounds && hs.len() >= o.probes => {
                let n = (round - r0) as f64;
                return Ok(Phase {
                    held: crowd.held.load(Ordering::Relaxed),
                    handshake: percentiles(&mut hs),
                    status: percentiles(&mut st),
                    cpu_per_round: (procs::cpu_seconds(pid)? - cpu0) / n,
                    secs_per_round: t0.elapsed().as_secs_f64() / n,
                    resident: procs::resident(pid)?,
                });
            }
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "{} rounds did not close in 10 minutes (open round {round})",
                o.rounds
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    unreachable!()
}

/// A fresh identity for contributor `n` of this benchmark.
fn fresh(n: usize) -> Identity {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(n as u64).to_le_bytes());
    Identity::from_seed(seed)
}

fn print(label: &str, p: &Phase) {
    println!(
        "{label:>9}: {:>6} connections held | probe handshake p50 {:>6.1} ms p99 {:>6.1} ms | /api/status p50 {:>6.1} ms p99 {:>6.1} ms | coordinator {:.3} CPU-s/round ({:.2} s/round) | resident {} MiB",
        p.held, p.handshake.0, p.handshake.1, p.status.0, p.status.1, p.cpu_per_round, p.secs_per_round, p.resident >> 20
    );
}

/// Waits until the run's open round is at least `round`.
async fn until_round(port: u16, round: u64, limit: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        if let Ok((_, v)) = client::status(port).await {
            if round_of(&v) >= round {
                return Ok(());
            }
        }
        if t.elapsed() > limit {
            bail!("round {round} did not open in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Opens the crowd, at most `ramp` handshakes at once, from `per_address` connections per
/// source address; returns once every one is welcomed or failed, printing progress.
async fn open_crowd(
    port: u16,
    o: &Options,
    crowd: &Arc<client::Crowd>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Duration> {
    let t = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(o.ramp));
    let mut shown = Instant::now();
    for i in 0..o.connections {
        let permit = gate.clone().acquire_owned().await?;
        let (c, stop) = (crowd.clone(), stop.clone());
        let beat = (o.heartbeat, i as f64 / o.connections as f64);
        let src = source(1, i / o.per_address);
        tokio::spawn(client::idle(port, src, fresh(i), beat, c, stop, permit));
        if shown.elapsed() > Duration::from_secs(5) {
            shown = Instant::now();
            let held = crowd.held.load(Ordering::Relaxed);
            println!(
                "  opening: {i} started, {held} held after {:.0} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    let _all = gate.acquire_many(o.ramp as u32).await?;
    Ok(t.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = options()?;
    let exe = procs::tessera_exe(o.tessera.clone())?;
    let dir = std::env::temp_dir().join(format!("tessera-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("run.toml");
    anyhow::ensure!(
        E2E.contains("silence_secs = 30")
            && E2E.contains("rounds = 12")
            && !E2E.contains("[checks]"),
        "tests/data/e2e.toml changed: update the load benchmark's edits of it"
    );
    // The end-to-end run with the default silence limit (the tests' is shorter), which sets
    // how often the crowd is asked to heartbeat.
    // Every update is checked every round (the checks' share would otherwise fall as the
    // workers' records grow, so a later phase would do less work per round than an earlier
    // one whatever the crowd): the run's own work per round stays the same through both
    // phases, at its heaviest.
    let run = E2E.replace("rounds = 12", "rounds = 1000000").replace(
        "silence_secs = 30",
        &format!("silence_secs = {}", o.silence_secs),
    ) + "\n[checks]\nnew_rate = 1.0\nmin_rate = 1.0\n";
    std::fs::write(&config, run)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let pins = procs::pinning(o.pin);
    if let Some(p) = &pins {
        procs::pin_self(&p.rest)?;
        println!(
            "pinned: the coordinator on CPU {}, the workers and the crowd on CPUs {}",
            p.coordinator, p.rest
        );
    }
    let coordinator = procs::coordinator(
        &exe,
        &config,
        port,
        &dir,
        pins.as_ref().map(|p| p.coordinator.as_str()),
    )?;
    let pid = coordinator.0.id();
    println!(
        "coordinator pid {pid} on 127.0.0.1:{port}, data and log in {}",
        dir.display()
    );
    until_round(port, 0, Duration::from_secs(60))
        .await
        .context("the coordinator did not serve (see its log)")?;
    let _workers: Vec<procs::Proc> = (0..o.workers)
        .map(|n| procs::worker(&exe, port, &dir, n, pins.as_ref().map(|p| p.rest.as_str())))
        .collect::<Result<_>>()?;
    println!("{} workers training; waiting for round 2", o.workers);
    until_round(port, 2, Duration::from_secs(600)).await?;

    let crowd = Arc::new(client::Crowd::default());
    let unloaded = measure(port, pid, &o, &crowd).await?;
    print("unloaded", &unloaded);

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let took = open_crowd(port, &o, &crowd, &stop).await?;
    let held = crowd.held.load(Ordering::Relaxed);
    let (p50, p99) = percentiles(&mut crowd.joins.lock().unwrap_or_else(|p| p.into_inner()));
    println!(
        "  crowd: {held} of {} welcomed in {:.1} s (handshake p50 {p50:.1} ms p99 {p99:.1} ms, {} at once), {} failed",
        o.connections,
        took.as_secs_f64(),
        o.ramp,
        crowd.failed.load(Ordering::Relaxed)
    );
    // Every connection has heartbeated at least once before the loaded phase is measured.
    let every = Duration::from_millis(crowd.heartbeat_ms.load(Ordering::Relaxed));
    println!("  the crowd heartbeats every {:.1} s", every.as_secs_f64());
    tokio::time::sleep(every).await;
    let loaded = measure(port, pid, &o, &crowd).await?;
    print("loaded", &loaded);

    stop_tx.send(true)?;
    let left = Instant::now();
    while crowd.held.load(Ordering::Relaxed) > 0 && left.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, after) = client::status(port).await?;
    let dropped = crowd.dropped.load(Ordering::Relaxed);
    let first = crowd
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();

    let cpu_ratio = loaded.cpu_per_round / unloaded.cpu_per_round;
    let per_conn = (loaded.resident as f64 - unloaded.resident as f64) / loaded.held.max(1) as f64;
    println!(
        "loaded/unloaded: CPU per round {cpu_ratio:.2}, round time {:.2}; resident {:.1} KiB per held connection",
        loaded.secs_per_round / unloaded.secs_per_round,
        per_conn / 1024.0
    );
    // CPU per second of each phase: the crowd's cost whatever a round's length.
    let per_sec = |p: &Phase| p.cpu_per_round / p.secs_per_round;
    let extra = per_sec(&loaded) - per_sec(&unloaded);
    println!(
        "coordinator CPU per second: unloaded {:.1} ms/s, loaded {:.1} ms/s; the crowd's {:.1} ms/s is {:.2} ms/s per 1,000 held connections",
        per_sec(&unloaded) * 1e3,
        per_sec(&loaded) * 1e3,
        extra * 1e3,
        extra * 1e3 / (loaded.held.max(1) as f64 / 1000.0)
    );
    println!(
        "the crowd left: {:.1} s later the status lists {} contributors; {dropped} crowd sessions were closed by the coordinator{}",
        left.elapsed().as_secs_f64(),
        after["contributors_total"].as_u64().unwrap_or(0),
        first.map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    let met = loaded.held >= 10_000
        && loaded.handshake.1 < 50.0
        && loaded.status.1 < 50.0
        && cpu_ratio <= 1.10;
    println!(
        "goal (10,000 held, probe handshake and status p99 under 50 ms, CPU per round within 10%): {}",
        if met { "met" } else { "not met" }
    );
    Ok(())
}
