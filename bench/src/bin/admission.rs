//! What an admission ticket costs (see `tessera_protocol::admission`): the native solver's
//! hashes per second on one core, against the plain one-shot hash as its peer in the same run
//! (the solver hashes the nonce-free first block once), the mean time of a ticket at a
//! difficulty over many puzzles, and what the same difficulty costs a solver of a given rate
//! (a GPU's rate is an input here, not a measurement). The browser tab's time is printed by
//! the browser test (`cargo test -p tessera --test browser -- --nocapture`).
//!
//! ```text
//! cargo run --release -p tessera-bench --bin admission -- [--bits 20] [--puzzles 32] [--gpu-rate 2.2e10]
//! ```

use std::time::Instant;

use anyhow::{Context, Result};
use tessera_coordinator::admission::{Admission, DEFAULT_BITS};
use tessera_protocol::admission::{leading_zero_bits, work_hash, Solver};
use tessera_protocol::Identity;

struct Opts {
    bits: u8,
    puzzles: usize,
    gpu_rate: f64,
}

fn parse() -> Result<Opts> {
    let mut o = Opts {
        bits: DEFAULT_BITS,
        puzzles: 32,
        // hashcat's published SHA-256 rate for one RTX 4090 is about 2.2e10 hashes a second;
        // not measured here.
        gpu_rate: 2.2e10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bits" => o.bits = val()?.parse().context("--bits takes 1..=40")?,
            "--puzzles" => o.puzzles = val()?.parse().context("--puzzles takes a number")?,
            "--gpu-rate" => o.gpu_rate = val()?.parse().context("--gpu-rate takes hashes/s")?,
            other => anyhow::bail!(
                "unknown option {other}: --bits N, --puzzles N, --gpu-rate HASHES_PER_SECOND"
            ),
        }
    }
    anyhow::ensure!((1..=40).contains(&o.bits), "--bits takes 1..=40");
    anyhow::ensure!(o.puzzles > 0, "--puzzles takes at least 1");
    Ok(o)
}

fn main() -> Result<()> {
    let o = parse()?;
    let admission = Admission::new(o.bits).context("no system randomness")?;
    let key = Identity::from_seed([1; 32]).public();
    let puzzle = admission.issue().context("admission is on")?;

    // Rates: the solver (first block hashed once) against the plain hash of all 116 bytes.
    let n = 1u64 << 21;
    let t = Instant::now();
    let mut zeros = 0u32;
    for nonce in 0..n {
        zeros = zeros.max(leading_zero_bits(&work_hash(&puzzle, &key, nonce)));
    }
    let plain = n as f64 / t.elapsed().as_secs_f64();
    let hard = tessera_protocol::admission::Puzzle {
        bits: 255,
        ..puzzle
    };
    let mut s = Solver::new(hard, key, 0);
    let t = Instant::now();
    let none = s.step(n);
    let solver = n as f64 / t.elapsed().as_secs_f64();
    assert!(none.is_none() && zeros < 255);
    println!(
        "one core: solver {:.2} M hashes/s, plain SHA-256 of the same bytes {:.2} M hashes/s, ratio solver/plain {:.2}",
        solver / 1e6,
        plain / 1e6,
        solver / plain
    );

    // Tickets at the difficulty, each a fresh puzzle checked by the coordinator's own check.
    let (mut secs, mut hashes) = (0.0f64, 0u64);
    for i in 0..o.puzzles {
        let p = admission.issue().context("admission is on")?;
        let t = Instant::now();
        let (ticket, tries) = tessera_protocol::admission::solve(p, key);
        secs += t.elapsed().as_secs_f64();
        hashes += tries;
        anyhow::ensure!(
            admission.check(Some(&ticket.to_hex())).is_ok(),
            "ticket {i} was refused"
        );
    }
    let expected = 2f64.powi(i32::from(o.bits));
    println!(
        "{} puzzles of {} bits: mean {:.0} hashes (2^{} = {:.0} expected), mean {:.3} s a ticket on one native core",
        o.puzzles,
        o.bits,
        hashes as f64 / o.puzzles as f64,
        o.bits,
        expected,
        secs / o.puzzles as f64
    );
    println!(
        "a solver of {:.1e} hashes/s (an input, not measured: --gpu-rate) pays {:.2e} s a ticket: {:.0} tickets/s",
        o.gpu_rate,
        expected / o.gpu_rate,
        o.gpu_rate / expected
    );
    Ok(())
}
