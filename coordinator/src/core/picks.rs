//! Who checks whom: the ranking by which a replayer of a whole-model unit or an auditor of a
//! lease's step is picked among the free candidates, and the fold of the log's `Picked` entries
//! that the coordinator keeps (each check's next `nth`) and `tessera verify` runs (each pick in
//! turn, not listing its subject, ranked as the latest reveal ranks it).
//!
//! A candidate's number is the first 8 bytes of SHA-256(seed ‖ SHA-256 of (check, nth) ‖ key),
//! the seed being the latest reveal's: nobody knows it before the checked work is in, and the
//! coordinator cannot choose it. The lowest number is picked, whatever order the coordinator
//! holds its candidates in; `nth` counts the check's earlier picks in the log, so the
//! coordinator cannot draw again until it likes the result.

use std::collections::BTreeMap;

use tessera_protocol::log::{CheckOf, LogEvent, MAX_PICK_LIST};
use tessera_protocol::PublicKey;

use super::beacon::{number, sha};

/// Why a logged pick does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// A pick whose `nth` is not the count of the check's earlier picks.
    #[error("pick {got} of {check:?} is logged where pick {want} is next")]
    OutOfTurn {
        /// The check.
        check: CheckOf,
        /// The `nth` logged.
        got: u32,
        /// The `nth` due.
        want: u32,
    },
    /// A pick without candidates, or with more than a `Picked` entry may list.
    #[error("the pick for {check:?} lists {n} candidates (1 to {MAX_PICK_LIST})")]
    List {
        /// The check.
        check: CheckOf,
        /// Candidates listed.
        n: usize,
    },
    /// A pick whose candidates include the identity whose work is checked.
    #[error("the pick for {check:?} lists the identity whose work it checks")]
    Itself {
        /// The check.
        check: CheckOf,
    },
    /// A pick whose candidates are not in the order the latest reveal gives (or repeat one).
    #[error("the pick for {check:?} does not rank its candidates as the latest reveal does")]
    Altered {
        /// The check.
        check: CheckOf,
    },
}

/// What the log says of the picks so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Picks {
    /// Picks logged for each check of the rounds or steps not closed yet (pruned as they close).
    open: BTreeMap<CheckOf, u32>,
    /// Picks whose ranking was recomputed and found as logged.
    pub checked: u64,
}

impl Picks {
    /// Picks logged for `check` so far: the next one's `nth`.
    pub fn of(&self, check: &CheckOf) -> u32 {
        self.open.get(check).copied().unwrap_or(0)
    }

    /// Round or step `round` closed: the counts of checks of earlier ones are dropped (a
    /// late pick for one starts again at 0, in the coordinator and in a verifier alike).
    pub fn closed(&mut self, round: u64) {
        self.open.retain(|c, _| c.round() >= round);
    }

    /// Folds a `Picked` entry made after the reveal whose seed is `latest`, checking it; one
    /// that fails changes nothing. Any other event is ignored.
    pub fn apply(&mut self, latest: Option<[u8; 32]>, event: &LogEvent) -> Result<(), PickError> {
        let LogEvent::Picked {
            check,
            nth,
            subject,
            candidates,
        } = event
        else {
            return Ok(());
        };
        let check = *check;
        let want = self.of(&check);
        if *nth != want {
            return Err(PickError::OutOfTurn {
                check,
                got: *nth,
                want,
            });
        }
        if candidates.is_empty() || candidates.len() > MAX_PICK_LIST {
            return Err(PickError::List {
                check,
                n: candidates.len(),
            });
        }
        if candidates.contains(subject) {
            return Err(PickError::Itself { check });
        }
        if ranked(latest, &check, *nth, candidates.iter().copied()) != *candidates {
            return Err(PickError::Altered { check });
        }
        *self.open.entry(check).or_default() += 1;
        self.checked += 1;
        Ok(())
    }
}

/// The candidates of a pick for `check` (its `nth`), ranked as a `Picked` log entry lists
/// them: by the first 8 bytes of SHA-256(`seed` ‖ SHA-256 of (`check`, `nth`) ‖ key), lowest
/// first, ties by key, each key once. `seed` is the latest reveal's ([`super::beacon::Beacon::latest`]), zero
/// before the first. The whole ranking: a log entry keeps its first [`MAX_PICK_LIST`].
pub fn ranked(
    seed: Option<[u8; 32]>,
    check: &CheckOf,
    nth: u32,
    keys: impl IntoIterator<Item = PublicKey>,
) -> Vec<PublicKey> {
    let seed = seed.unwrap_or_default();
    let purpose = super::digest(&(check, nth));
    let mut numbered: Vec<(u64, PublicKey)> = keys
        .into_iter()
        .map(|k| (number(&sha(&[&seed, &purpose, &k.0])), k))
        .collect();
    numbered.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1 .0.cmp(&b.1 .0)));
    numbered.dedup_by(|a, b| a.1 == b.1);
    numbered.into_iter().map(|(_, k)| k).collect()
}

/// The `Picked` entry of a pick for `check` (its `nth`) of `subject`'s work among the free
/// candidates `ranked` ([`ranked`]), or `None` when there is none.
pub fn picked(
    check: CheckOf,
    nth: u32,
    subject: PublicKey,
    mut ranked: Vec<PublicKey>,
) -> Option<LogEvent> {
    if ranked.is_empty() {
        return None;
    }
    ranked.truncate(MAX_PICK_LIST);
    Some(LogEvent::Picked {
        check,
        nth,
        subject,
        candidates: ranked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::Identity;

    fn key(n: u8) -> PublicKey {
        Identity::from_seed([n; 32]).public()
    }

    const AUDIT: CheckOf = CheckOf::Audit { step: 4, lease: 2 };

    #[test]
    fn the_ranking_depends_on_the_seed_the_check_and_the_turn_not_the_order() {
        let keys: Vec<PublicKey> = (1..=12).map(key).collect();
        let seed = Some([7; 32]);
        let r = ranked(seed, &AUDIT, 0, keys.iter().copied());
        assert_eq!(r.len(), 12);
        assert_eq!(r, ranked(seed, &AUDIT, 0, keys.iter().rev().copied()));
        assert_eq!(
            r,
            ranked(seed, &AUDIT, 0, keys.iter().chain(&keys).copied()),
            "each key once"
        );
        let firsts: std::collections::BTreeSet<PublicKey> = (0..40u64)
            .map(|step| ranked(seed, &CheckOf::Audit { step, lease: 2 }, 0, keys.clone())[0])
            .collect();
        assert!(firsts.len() >= 6, "{} different firsts", firsts.len());
        assert_ne!(r, ranked(Some([8; 32]), &AUDIT, 0, keys.clone()));
        assert_ne!(r, ranked(seed, &AUDIT, 1, keys.clone()));
    }

    #[test]
    fn a_pick_holds_in_turn_without_its_subject_and_in_rank_order() {
        let seed = Some([3; 32]);
        let cands: Vec<PublicKey> = (1..=20).map(key).collect();
        let subject = key(30);
        let entry = |nth, list: Vec<PublicKey>| LogEvent::Picked {
            check: AUDIT,
            nth,
            subject,
            candidates: list,
        };
        let good = picked(AUDIT, 0, subject, ranked(seed, &AUDIT, 0, cands.clone())).unwrap();
        let LogEvent::Picked { candidates, .. } = &good else {
            panic!()
        };
        assert_eq!(candidates.len(), MAX_PICK_LIST, "the list is cut");
        let mut p = Picks::default();
        assert_eq!(
            p.apply(seed, &entry(1, candidates.clone())),
            Err(PickError::OutOfTurn {
                check: AUDIT,
                got: 1,
                want: 0
            })
        );
        assert_eq!(
            p.apply(seed, &entry(0, vec![])),
            Err(PickError::List { check: AUDIT, n: 0 })
        );
        let mut with_subject = candidates[..2].to_vec();
        with_subject.push(subject);
        assert_eq!(
            p.apply(seed, &entry(0, with_subject)),
            Err(PickError::Itself { check: AUDIT })
        );
        let mut swapped = candidates.clone();
        swapped.swap(0, 1);
        assert_eq!(
            p.apply(seed, &entry(0, swapped)),
            Err(PickError::Altered { check: AUDIT })
        );
        assert_eq!(
            p.apply(Some([4; 32]), &good),
            Err(PickError::Altered { check: AUDIT }),
            "another seed ranks them otherwise"
        );
        assert_eq!(p, Picks::default(), "a failed pick changes nothing");
        assert_eq!(p.apply(seed, &good), Ok(()));
        assert_eq!(p.of(&AUDIT), 1);
        let second = picked(AUDIT, 1, subject, ranked(seed, &AUDIT, 1, cands.clone())).unwrap();
        assert_eq!(p.apply(seed, &second), Ok(()));
        assert_eq!((p.of(&AUDIT), p.checked), (2, 2));
        p.closed(4);
        assert_eq!(p.of(&AUDIT), 2, "its step is open still");
        p.closed(5);
        assert_eq!(p.of(&AUDIT), 0);
    }
}
