//! `tessera verify`'s rounds: every whole-model round's `Aggregated` entry against the log
//! before it and the run's rules. Each averaged update must be one the log accepted from
//! that identity and averaged in no earlier round, each slot used once, the count within the
//! rules' least (or quorum) and most, and the weights the median-norm clip can give (each
//! scale in (0, 1], none below 1 where the run does not clip, and at least half of them 1
//! where it does, since no update at or below the median norm is scaled). The entry must be
//! followed by its round's `Closed`, and with the rules at hand every closed round of a
//! whole-model run must have one.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use tessera_coordinator::core::rules::RoundRules;
use tessera_protocol::log::{LogEvent, SignedEntry, Weighed};
use tessera_protocol::PublicKey;

/// What the rounds' check covered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoundsChecked {
    /// Rounds with an `Aggregated` entry.
    pub rounds: u64,
    /// Updates they averaged.
    pub updates: u64,
    /// The fewest and most updates one round averaged.
    pub range: Option<(u64, u64)>,
}

/// The weights one round's entry gives its updates hold: `Err` says what does not.
pub fn weights_hold(updates: &[Weighed], clip: Option<bool>) -> Result<(), String> {
    if let Some(w) = updates
        .iter()
        .find(|w| !(w.scale.is_finite() && w.scale > 0.0 && w.scale <= 1.0))
    {
        return Err(format!(
            "unit {} is weighed by {}, which no clip gives",
            w.unit, w.scale
        ));
    }
    let whole = updates.iter().filter(|w| w.scale == 1.0).count();
    if clip == Some(false) && whole < updates.len() {
        return Err("an update is scaled in a run that does not clip to the median".into());
    }
    if whole < updates.len() / 2 {
        return Err(format!(
            "{whole} of {} updates are unscaled: a clip to the median norm leaves at least half as they are",
            updates.len()
        ));
    }
    Ok(())
}

/// Checks every `Aggregated` entry; an error names the first entry that does not hold.
pub fn check(entries: &[SignedEntry], rules: Option<&RoundRules>) -> Result<RoundsChecked> {
    let mut accepted: BTreeMap<u64, PublicKey> = BTreeMap::new();
    let mut averaged: BTreeSet<u64> = BTreeSet::new();
    let mut out = RoundsChecked::default();
    let mut pending: Option<(u64, u64)> = None;
    for e in entries {
        let at = e.entry.index;
        match &e.entry.event {
            LogEvent::Accepted { key, unit, .. } => {
                accepted.insert(*unit, *key);
            }
            LogEvent::Aggregated { round, updates } => {
                if let Some((i, r)) = pending {
                    bail!("log entry {i}: round {r}'s aggregate is not followed by its close");
                }
                let n = updates.len() as u64;
                if n == 0 {
                    bail!("log entry {at}: round {round} averages no update");
                }
                if let Some(r) = rules {
                    if n > r.most || n < r.fewest() {
                        bail!(
                            "log entry {at}: round {round} averages {n} updates, outside the rules' {} to {}",
                            r.fewest(),
                            r.most
                        );
                    }
                }
                let mut slots = BTreeSet::new();
                for w in updates {
                    match accepted.get(&w.unit) {
                        Some(k) if *k == w.key => {}
                        Some(_) => bail!(
                            "log entry {at}: round {round} averages unit {} as {}'s, which the log accepted from another identity",
                            w.unit, w.key
                        ),
                        None => bail!(
                            "log entry {at}: round {round} averages unit {}, which the log never accepted",
                            w.unit
                        ),
                    }
                    if !averaged.insert(w.unit) {
                        bail!(
                            "log entry {at}: round {round} averages unit {} again",
                            w.unit
                        );
                    }
                    if !slots.insert(w.slot) || rules.is_some_and(|r| w.slot >= r.most) {
                        bail!(
                            "log entry {at}: round {round} fills slot {} twice or beyond the rules' most",
                            w.slot
                        );
                    }
                }
                weights_hold(updates, rules.map(|r| r.clip_to_median))
                    .map_err(|why| anyhow::anyhow!("log entry {at}: round {round}: {why}"))?;
                out.rounds += 1;
                out.updates += n;
                out.range = Some(match out.range {
                    Some((lo, hi)) => (lo.min(n), hi.max(n)),
                    None => (n, n),
                });
                pending = Some((at, *round));
            }
            LogEvent::Closed { round, .. } => match pending.take() {
                Some((_, r)) if r == *round => {}
                Some((i, r)) => bail!(
                    "log entry {at}: closes round {round}, but entry {i} aggregated round {r}"
                ),
                None if rules.is_some() => bail!(
                    "log entry {at}: round {round} closes without the entry saying what it averaged"
                ),
                None => {}
            },
            _ => {}
        }
    }
    Ok(out)
}

/// One line for people.
pub fn describe(r: &RoundsChecked) -> Option<String> {
    let (lo, hi) = r.range?;
    Some(format!(
        "{} rounds' aggregates checked: {} updates, {lo} to {hi} a round, each accepted from its identity once, weighed as a median clip can",
        r.rounds, r.updates
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::log::LogWriter;
    use tessera_protocol::Identity;

    fn key(n: u8) -> PublicKey {
        Identity::from_seed([n; 32]).public()
    }

    fn accepted(k: PublicKey, unit: u64) -> LogEvent {
        LogEvent::Accepted {
            key: k,
            unit,
            seq: unit,
            result: [0; 32],
            tokens: 8,
            flops: 1.0,
            pending: false,
        }
    }

    fn weighed(k: PublicKey, unit: u64, slot: u64, scale: f64) -> Weighed {
        Weighed {
            key: k,
            unit,
            slot,
            scale,
        }
    }

    fn closed(round: u64) -> LogEvent {
        LogEvent::Closed {
            round,
            version: round + 1,
            weights: [0; 32],
            aggregate: [0; 32],
        }
    }

    fn log(events: Vec<LogEvent>) -> Vec<SignedEntry> {
        let id = Identity::from_seed([9; 32]);
        let mut w = LogWriter::after(None);
        events.into_iter().map(|e| w.append(&id, 0, e)).collect()
    }

    const RULES: RoundRules = RoundRules {
        least: 2,
        most: 3,
        quorum: 2,
        clip_to_median: true,
    };

    fn round(updates: Vec<Weighed>) -> Vec<SignedEntry> {
        log(vec![
            accepted(key(1), 1),
            accepted(key(2), 2),
            accepted(key(3), 3),
            LogEvent::Aggregated { round: 0, updates },
            closed(0),
        ])
    }

    #[test]
    fn a_round_of_accepted_updates_weighed_by_a_median_clip_passes() {
        let ok = round(vec![
            weighed(key(1), 1, 0, 1.0),
            weighed(key(2), 2, 1, 0.5),
            weighed(key(3), 3, 2, 1.0),
        ]);
        let r = check(&ok, Some(&RULES)).unwrap();
        assert_eq!((r.rounds, r.updates, r.range), (1, 3, Some((3, 3))));
        assert!(describe(&r).unwrap().contains("3 to 3"));
    }

    #[test]
    fn altered_aggregates_are_refused_naming_their_entry() {
        let cases: Vec<(Vec<Weighed>, &str)> = vec![
            (
                vec![weighed(key(1), 1, 0, 1.0)],
                "outside the rules' 2 to 3",
            ),
            (
                vec![weighed(key(1), 1, 0, 1.0), weighed(key(1), 2, 1, 1.0)],
                "accepted from another identity",
            ),
            (
                vec![weighed(key(1), 1, 0, 1.0), weighed(key(2), 7, 1, 1.0)],
                "never accepted",
            ),
            (
                vec![weighed(key(1), 1, 0, 1.0), weighed(key(2), 2, 0, 1.0)],
                "slot 0 twice",
            ),
            (
                vec![weighed(key(1), 1, 0, 0.5), weighed(key(2), 2, 1, 0.4)],
                "0 of 2 updates are unscaled",
            ),
            (
                vec![weighed(key(1), 1, 0, 1.5), weighed(key(2), 2, 1, 1.0)],
                "no clip gives",
            ),
        ];
        for (updates, says) in cases {
            let err = check(&round(updates), Some(&RULES))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("log entry 3:") && err.contains(says),
                "{err}"
            );
        }
        // A run that does not clip scales nothing.
        let no_clip = RoundRules {
            clip_to_median: false,
            ..RULES
        };
        let scaled = round(vec![weighed(key(1), 1, 0, 1.0), weighed(key(2), 2, 1, 0.5)]);
        assert!(check(&scaled, Some(&no_clip)).is_err());
        assert!(check(&scaled, Some(&RULES)).is_ok());
    }

    #[test]
    fn a_unit_is_averaged_once_and_a_whole_model_close_needs_its_aggregate() {
        let twice = log(vec![
            accepted(key(1), 1),
            accepted(key(2), 2),
            LogEvent::Aggregated {
                round: 0,
                updates: vec![weighed(key(1), 1, 0, 1.0), weighed(key(2), 2, 1, 1.0)],
            },
            closed(0),
            LogEvent::Aggregated {
                round: 1,
                updates: vec![weighed(key(1), 1, 0, 1.0), weighed(key(2), 2, 1, 1.0)],
            },
            closed(1),
        ]);
        let err = check(&twice, Some(&RULES)).unwrap_err().to_string();
        assert!(err.contains("entry 4") && err.contains("again"), "{err}");
        let bare = log(vec![closed(0)]);
        assert!(check(&bare, Some(&RULES)).is_err());
        // Without the rules (a pipeline run's steps, or no checkpoints at hand) a bare close is
        // not evidence of anything.
        assert_eq!(check(&bare, None).unwrap(), RoundsChecked::default());
    }
}
