//! `tessera fork`: starts a new run from a verified checkpoint of another. The parent's log is
//! checked (chain, signatures, checkpoints, and the replay of its aggregates from the first
//! checkpoint to the one forked), then a new data directory gets that checkpoint as its
//! committed state and a new log, signed by a new coordinator key, whose second entry names the
//! parent's coordinator, log entry, version and weights. `tessera coordinator` then serves the
//! fork as it resumes any run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tessera_coordinator::config::RunConfig;
use tessera_coordinator::core::rules::RunRules;
use tessera_coordinator::core::{weights_digest, Snapshot};
use tessera_coordinator::store::{Store, Write};
use tessera_protocol::log::{LogEvent, LogWriter, SignedEntry};
use tessera_protocol::messages::LogHead;

use crate::keys;
use crate::verify_cmd::{check_chain, check_checkpoints, read_log, LogSource};

/// Options of `fork`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The parent run's log, checkpoints and coordinator key.
    #[command(flatten)]
    pub parent: LogSource,
    /// The weight version to start from (default: the parent's last closed one).
    #[arg(long)]
    pub at: Option<u64>,
    /// The new run's configuration (TOML). Its model must be the parent's; its name, rounds,
    /// learning rates, checks and the rest may differ.
    #[arg(long)]
    pub config: PathBuf,
    /// The new run's data directory (must not hold a run yet).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new run's database (default: SQLite in the data directory).
    #[arg(long)]
    pub database: Option<String>,
}

/// Where the fork starts: the parent's entry, version, weights hash and the next round.
#[derive(Debug, PartialEq)]
struct ForkPoint {
    head: LogHead,
    version: u64,
    weights: Option<[u8; 32]>,
    round: u64,
}

/// The parent log's point for version `at` (its last closed version by default).
fn fork_point(entries: &[SignedEntry], at: Option<u64>) -> Result<ForkPoint> {
    let closed = crate::closes::closes(entries);
    let first = entries
        .first()
        .context("the parent's log is empty: nothing to fork")?;
    let version = at.unwrap_or_else(|| closed.keys().next_back().copied().unwrap_or(0));
    if version == 0 {
        return Ok(ForkPoint {
            head: first.head(),
            version: 0,
            weights: None,
            round: 0,
        });
    }
    match closed.get(&version) {
        Some(c) => Ok(ForkPoint {
            head: c.head,
            version,
            weights: Some(c.weights),
            round: c.round + 1,
        }),
        None => bail!(
            "the parent's log closed no version {version} (its last is {})",
            closed.keys().next_back().copied().unwrap_or(0)
        ),
    }
}

/// Verifies the parent and writes the fork's data directory.
pub async fn run(a: Args) -> Result<()> {
    let (file, data_dir) = read_log(&a.parent.log).await?;
    let (parent, entries, _) = check_chain(&file, a.parent.coordinator_key.as_deref())?;
    let Some(dir) = a.parent.checkpoints(data_dir) else {
        bail!("a fork starts from a checkpoint: give the parent's --checkpoints");
    };
    let point = fork_point(&entries, a.at)?;
    // Verify the parent up to the fork: the checkpoints it holds and the replay of every
    // aggregate up to the version forked (for the initial weights, which the log names by no
    // hash, up to the first version replayed from them).
    let limit = match point.version {
        0 => entries
            .iter()
            .find(|e| matches!(e.entry.event, LogEvent::Closed { version: 1, .. }))
            .map_or(0, |e| e.entry.index),
        _ => point.head.index,
    };
    let upto: Vec<SignedEntry> = entries
        .iter()
        .filter(|e| e.entry.index <= limit)
        .cloned()
        .collect();
    check_checkpoints(&upto, &dir)?;
    let parent_rules = crate::verify_replay::rules(&entries, &dir)?;
    let replayed = crate::verify_replay::replay(&upto, &dir, &parent_rules)?;
    println!(
        "parent verified: {} log entries up to entry {}, {} versions replayed",
        upto.len(),
        point.head.index,
        replayed.versions
    );

    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let cfg = RunConfig::from_toml(&text)?;
    let base = a.config.parent().map(Path::to_path_buf).unwrap_or_default();
    let (spec, _) = cfg.resolve(&base)?;
    let rules = RunRules::of(&spec);
    if rules.model != parent_rules.model {
        bail!(
            "{}: the fork's model is not the parent's: a fork continues the parent's weights",
            a.config.display()
        );
    }
    if spec.rounds <= point.round {
        bail!(
            "{}: rounds = {} leaves nothing to train after the fork's round {}",
            a.config.display(),
            spec.rounds,
            point.round
        );
    }
    let model = &spec.model;
    let ck = crate::closes::checkpoint_dir(&dir, point.version, point.weights.as_ref())?;
    let (_, weights, moments) = crate::verify_replay::checkpoint(model, &ck, point.version)?
        .with_context(|| format!("{} holds no weights", ck.display()))?;
    // A whole-model fork has no use for a pipeline parent's AdamW moments.
    let moments = moments.filter(|_| spec.pipeline.is_some());
    let digest = weights_digest(&weights);
    if point.weights.is_some_and(|w| w != digest) {
        bail!(
            "{} does not hold the weights the parent's log recorded",
            ck.display()
        );
    }

    let store = Store::open(&a.data_dir, a.database.as_deref()).await?;
    let _lock = store.lock().await?;
    if store.log_head().await?.is_some() || store.open_round().await?.is_some() {
        bail!(
            "{} already holds a run: a fork needs a new data directory",
            a.data_dir.display()
        );
    }
    let id = keys::load_or_create(&a.data_dir.join("coordinator.key"))?;
    let mut log = LogWriter::default();
    let started = log.append(
        &id,
        0,
        LogEvent::Started {
            run: spec.name.clone(),
            coordinator: id.public(),
            config: rules.digest(),
        },
    );
    let forked = log.append(
        &id,
        0,
        LogEvent::Forked {
            parent,
            head: point.head,
            version: point.version,
            weights: digest,
            round: point.round,
        },
    );
    store.write_rules(&rules).await?;
    crate::coordinator_cmd::keep_tokenizer(&cfg, &base, &store).await?;
    let snap = Snapshot {
        round: point.round,
        version: point.version,
        weights,
        digest,
        losses: Vec::new(),
        next_unit: 1,
        next_lease: 1,
        moments,
        aggregate: None,
    };
    // The new log's first two entries and its first commit, in one transaction.
    let written = store
        .write(&[
            Write::Log(&started),
            Write::Log(&forked),
            Write::Commit {
                run: &spec.name,
                cfg: model,
                snap: &snap,
            },
        ])
        .await?
        .pop()
        .context("the fork's checkpoint was not written")?;
    println!(
        "forked run {} from version {} of the run whose coordinator is {} (its log entry {}); checkpoint {}",
        spec.name,
        point.version,
        parent,
        point.head.index,
        written.display()
    );
    println!(
        "new coordinator key {}; serve it with: tessera coordinator --config {} --data-dir {}",
        id.public(),
        a.config.display(),
        a.data_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::Identity;

    #[test]
    fn the_fork_point_is_the_last_close_of_a_version() {
        let id = Identity::from_seed([1; 32]);
        let mut w = LogWriter::default();
        let mut entries = vec![w.append(
            &id,
            0,
            LogEvent::Started {
                run: "p".into(),
                coordinator: id.public(),
                config: [0; 32],
            },
        )];
        for (round, version, b) in [(0, 1, 1u8), (1, 2, 2), (1, 2, 3), (2, 3, 4)] {
            entries.push(w.append(
                &id,
                0,
                LogEvent::Closed {
                    round,
                    version,
                    weights: [b; 32],
                    aggregate: [0; 32],
                },
            ));
        }
        let p = fork_point(&entries, Some(2)).unwrap();
        assert_eq!((p.head.index, p.weights, p.round), (3, Some([3; 32]), 2));
        let last = fork_point(&entries, None).unwrap();
        assert_eq!((last.version, last.round), (3, 3));
        let initial = fork_point(&entries, Some(0)).unwrap();
        assert_eq!((initial.head.index, initial.weights), (0, None));
        assert!(fork_point(&entries, Some(9)).is_err());
    }
}
