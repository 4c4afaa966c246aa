//! Sybils that collude and frame, against checks that refuse only on a unanimous side of
//! `agree` auditors: ten holders per micro-shard, of which a share are one attacker's sybils.
//! Each sybil triples its gradient sums in its own work and in every audit it runs, so sybils
//! agree with one another: a sybil auditing a fellow passes its cheat (collusion), a sybil
//! auditing an honest lease disagrees with it (framing), and its fellows then side with it.
//!
//! Where the run's agreement exceeds the sybils in a micro-shard's pool, honest work cannot be
//! refused however the auditors fall: the simulation checks that none is, and prints, check by
//! check, what the auditors' draws predict against what happened: sybil work refused, passed by
//! a colluding auditor, or disputed, and the bias the sybils' unrefused sums left on the
//! weights against the tolerance. The prediction takes each check's auditors uniformly among
//! the micro-shard's other holders still in the run (the draw picks among the free ones).

use std::collections::BTreeMap;

use tessera_coordinator::core::spec::ChecksSpec;
use tessera_protocol::log::{CheckOutcome, LogEvent};
use tessera_protocol::PublicKey;

use super::roles::Role;
use super::{bias, honest_stayed, simulate_with, spec_for};

/// Micro-shards of the simulated model (one per contributor's lease).
const SHARDS: usize = 7;
/// Holders per micro-shard.
const POOL: usize = 10;
const STEPS: u64 = 10;

/// The chance that `k` auditors drawn without replacement from `n` candidates, `bad` of them
/// sybils, are all sybils.
fn all_bad(n: usize, bad: usize, k: usize) -> f64 {
    (0..k)
        .map(|i| bad.saturating_sub(i) as f64 / (n - i) as f64)
        .product()
}

/// What one configuration's checks came to.
#[derive(Debug, Default)]
struct Tally {
    honest_checks: usize,
    honest_refused: usize,
    honest_refused_predicted: f64,
    sybil_checks: usize,
    sybil_refused: usize,
    sybil_refused_predicted: f64,
    sybil_passed: usize,
    sybil_passed_predicted: f64,
    disputed: usize,
}

fn run(sybils: usize, agree: u64, seed: u8) -> (Tally, f64) {
    // Contributor i joins i-th and takes micro-shard i % 7 (the least replicated first), so
    // each pool's first `sybils` are the attacker's.
    let roles: Vec<Role> = (0..SHARDS * POOL)
        .map(|i| {
            if i / SHARDS < sybils {
                Role::Sybil
            } else {
                Role::Honest
            }
        })
        .collect();
    let checks = ChecksSpec {
        agree,
        ..ChecksSpec::default()
    };
    let (run, sims, init) = simulate_with(&roles, spec_for(checks, STEPS), seed);
    let role: BTreeMap<PublicKey, Role> = sims.iter().map(|s| (s.session.key(), s.role)).collect();
    // Each pool as it was: sybils among the holders of each micro-shard.
    let mut pools: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut pool_of: BTreeMap<PublicKey, String> = BTreeMap::new();
    for s in &sims {
        let shard = format!("{:?}", s.compute.held);
        let p = pools.entry(shard.clone()).or_default();
        p.0 += 1;
        p.1 += usize::from(s.role == Role::Sybil);
        pool_of.insert(s.session.key(), shard);
    }
    assert_eq!(pools.len(), SHARDS, "one micro-shard a lease: {pools:?}");
    assert!(
        pools.values().all(|&(n, b)| n == POOL && b == sybils),
        "{pools:?}"
    );
    let mut t = Tally::default();
    let k = agree as usize;
    let mut left = std::collections::BTreeSet::new();
    for e in &run.log {
        let LogEvent::Checked {
            key,
            outcome,
            auditors,
            credited,
            ..
        } = &e.entry.event
        else {
            continue;
        };
        let (n, bad) = pools[&pool_of[key]];
        // Whoever this check finds wrong leaves its pool for the checks after it.
        let gone: Vec<PublicKey> = match outcome {
            CheckOutcome::Failed(_) => vec![*key],
            CheckOutcome::AuditorFailed(_) => auditors
                .iter()
                .filter(|a| !credited.contains(a))
                .copied()
                .collect(),
            _ => Vec::new(),
        };
        for g in gone {
            if !left.insert(g) {
                continue;
            }
            let p = pools.get_mut(&pool_of[&g]).expect("a pool");
            p.0 -= 1;
            p.1 -= usize::from(role[&g] == Role::Sybil);
        }
        let candidates = n.saturating_sub(1).max(1);
        match role[key] {
            Role::Sybil => {
                t.sybil_checks += 1;
                let fellows = bad.saturating_sub(1);
                t.sybil_passed_predicted += fellows as f64 / candidates.max(1) as f64;
                t.sybil_refused_predicted += all_bad(candidates, candidates - fellows, k);
                match outcome {
                    CheckOutcome::Failed(_) => t.sybil_refused += 1,
                    CheckOutcome::Passed => t.sybil_passed += 1,
                    CheckOutcome::Disputed(_) => t.disputed += 1,
                    _ => {}
                }
            }
            _ => {
                t.honest_checks += 1;
                t.honest_refused_predicted += all_bad(candidates, bad, k);
                match outcome {
                    CheckOutcome::Failed(_) => t.honest_refused += 1,
                    CheckOutcome::Disputed(_) => t.disputed += 1,
                    _ => {}
                }
            }
        }
    }
    honest_stayed(&run, &sims, seed);
    let bias = bias(&run.core, &init, STEPS);
    (t, bias)
}

#[test]
fn colluding_and_framing_sybils_get_no_honest_work_refused() {
    // Two and four sybils in each pool of ten (20% and 40% of the contributors), with an
    // agreement of three and five. `TESSERA_SEED` (1..=255) reruns one coordinator key.
    let seeds: Vec<u8> = match std::env::var("TESSERA_SEED") {
        Ok(s) => vec![s.parse().expect("TESSERA_SEED is a number in 1..=255")],
        Err(_) => vec![211, 212],
    };
    let tol = ChecksSpec::default().tolerance;
    for (sybils, agree) in [(2usize, 3u64), (4, 5)] {
        for &seed in &seeds {
            let (t, bias) = run(sybils, agree, seed);
            println!(
                "sybils {}% (agreement {agree}), seed {seed}: honest checks {}, refused {} (predicted {:.3}); sybil checks {}, refused {} (predicted {:.2}), passed by a fellow {} (predicted {:.2}); disputed {}; largest weight update off by {bias:.3} relative (tolerance {tol:.0e})",
                sybils * 10,
                t.honest_checks,
                t.honest_refused,
                t.honest_refused_predicted,
                t.sybil_checks,
                t.sybil_refused,
                t.sybil_refused_predicted,
                t.sybil_passed,
                t.sybil_passed_predicted,
                t.disputed,
            );
            assert_eq!(
                t.honest_refused_predicted, 0.0,
                "the agreement exceeds the pool's sybils"
            );
            assert_eq!(t.honest_refused, 0);
            assert!(t.sybil_checks > 0 && t.honest_checks > 0);
            assert!(t.sybil_refused + t.sybil_passed + t.disputed > 0);
        }
    }
}
