//! Every choice of the core that decides who is checked, who checks and who holds what: which
//! whole-model update is drawn for a loss check (and a replay), which lease's pipeline step is
//! audited, which contributor replays a unit, which lease audits another, and which micro-shards
//! a new lease gets. The core asks this part and nothing else, so where the randomness comes
//! from (today: hashes of the run's public seed with the round or step, the slot or lease and the
//! key) and how candidates are ranked can change here alone.

use tessera_protocol::PublicKey;

use super::{ConnId, Share};

/// A micro-shard's place: (stage, index in the stage).
type ShardId = (usize, usize);

/// The core's draws for one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Draws {
    /// The run's seed.
    seed: u64,
}

/// A contributor that could audit, as the core sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Candidate {
    /// Its connection.
    pub conn: ConnId,
    /// Its identity.
    pub key: PublicKey,
    /// Its lease (0 for a whole-model contributor, whose lease does not rank it).
    pub lease: u64,
    /// Steps or rounds in which checks of its work passed.
    pub clean_steps: u64,
    /// Whether it is free to take the work now.
    pub free: bool,
}

impl Draws {
    /// The draws of a run with `seed`.
    pub(super) fn new(seed: u64) -> Self {
        Draws { seed }
    }

    /// A 64-bit draw from `what` (which holds the seed): the first 8 bytes of its hash.
    fn draw<T: serde::Serialize>(what: &T) -> u64 {
        let h = super::digest(what);
        let mut first = [0u8; 8];
        first.copy_from_slice(&h[..8]);
        u64::from_le_bytes(first)
    }

    /// Whether the update `key` sent for `slot` of `round` is drawn for the checks at the
    /// round's close (and a replay, where the run replays), at `rate`.
    pub(super) fn update_checked(
        &self,
        round: u64,
        slot: u64,
        key: PublicKey,
        rate: Share,
    ) -> bool {
        rate.takes(Self::draw(&("loss-check", self.seed, round, slot, key)))
    }

    /// Whether `lease`'s work (of `key`) in pipeline step `step` is audited, at `rate`.
    pub(super) fn lease_audited(&self, step: u64, lease: u64, key: PublicKey, rate: Share) -> bool {
        rate.takes(Self::draw(&("check", self.seed, step, lease, key)))
    }

    /// Who replays a whole-model unit: the first free candidate (candidates come in connection
    /// order).
    pub(super) fn replayer(&self, candidates: &[Candidate]) -> Option<Candidate> {
        candidates.iter().find(|c| c.free).copied()
    }

    /// Who audits a lease's step: the free candidate with the most clean steps, the lowest
    /// lease among equals.
    pub(super) fn auditor(&self, candidates: &[Candidate]) -> Option<Candidate> {
        candidates
            .iter()
            .filter(|c| c.free)
            .max_by_key(|c| (c.clean_steps, std::cmp::Reverse(c.lease)))
            .copied()
    }

    /// The micro-shards a new lease of `budget` bytes gets, given each micro-shard's replica
    /// count (`reps`, by stage), or `None` when not even one fits.
    ///
    /// It looks at micro-shards with the fewest replicas first, in pipeline order, and starts at
    /// the first one it can hold. If that micro-shard's whole stage fits the budget it takes
    /// whole stages, extending over following stages while they fit and are as short of
    /// replicas; otherwise it takes consecutive micro-shards of that stage while they fit. A big
    /// budget so gets a heavy lease (fewer hops, no fan-out), a small one a single micro-shard.
    pub(super) fn lease_shards(
        &self,
        reps: &[Vec<usize>],
        budget: u64,
        bytes: impl Fn(&[ShardId]) -> u64,
    ) -> Option<Vec<ShardId>> {
        let mut levels: Vec<usize> = reps.iter().flatten().copied().collect();
        levels.sort_unstable();
        levels.dedup();
        let whole = |s: usize| -> Vec<ShardId> { (0..reps[s].len()).map(|i| (s, i)).collect() };
        for level in levels {
            for (stage, r) in reps.iter().enumerate() {
                if r.iter().all(|&n| n == level) && bytes(&whole(stage)) <= budget {
                    let mut take = whole(stage);
                    for (s, rs) in reps.iter().enumerate().skip(stage + 1) {
                        if rs.iter().any(|&n| n != level) {
                            break;
                        }
                        let mut more = take.clone();
                        more.extend(whole(s));
                        if bytes(&more) > budget {
                            break;
                        }
                        take = more;
                    }
                    return Some(take);
                }
                for first in (0..r.len()).filter(|&i| r[i] == level) {
                    let mut take = Vec::new();
                    for (i, &n) in r.iter().enumerate().skip(first) {
                        let mut more = take.clone();
                        more.push((stage, i));
                        if n != level || bytes(&more) > budget {
                            break;
                        }
                        take = more;
                    }
                    if !take.is_empty() {
                        return Some(take);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::Identity;

    fn key(n: u8) -> PublicKey {
        Identity::from_seed([n; 32]).public()
    }

    #[test]
    fn draws_are_a_function_of_the_seed_and_what_is_drawn() {
        let (a, b) = (Draws::new(1), Draws::new(2));
        let draws = |d: Draws| -> Vec<bool> {
            (0..64)
                .map(|slot| d.update_checked(3, slot, key(1), Share::of(0.5)))
                .collect()
        };
        assert_eq!(
            draws(a),
            draws(Draws::new(1)),
            "the same seed draws the same"
        );
        assert_ne!(draws(a), draws(b), "another seed draws otherwise");
        // The two kinds of draw do not share their numbers.
        let lease: Vec<bool> = (0..64)
            .map(|l| a.lease_audited(3, l, key(1), Share::of(0.5)))
            .collect();
        assert_ne!(draws(a), lease);
    }

    #[test]
    fn a_rate_is_the_share_drawn() {
        let d = Draws::new(7);
        let n = 4000;
        let share = |rate: f64| {
            (0..n)
                .filter(|&s| d.update_checked(0, s, key(2), Share::of(rate)))
                .count() as f64
                / n as f64
        };
        assert_eq!(share(0.0), 0.0);
        assert_eq!(share(1.0), 1.0);
        let quarter = share(0.25);
        assert!((quarter - 0.25).abs() < 0.03, "{quarter}");
        let audited = (0..n)
            .filter(|&l| d.lease_audited(5, l, key(2), Share::of(0.1)))
            .count() as f64
            / n as f64;
        assert!((audited - 0.1).abs() < 0.02, "{audited}");
    }

    fn candidate(conn: ConnId, lease: u64, clean_steps: u64, free: bool) -> Candidate {
        Candidate {
            conn,
            key: key(conn as u8),
            lease,
            clean_steps,
            free,
        }
    }

    #[test]
    fn the_replayer_is_the_first_free_candidate() {
        let d = Draws::new(1);
        let c = [
            candidate(1, 0, 9, false),
            candidate(2, 0, 0, true),
            candidate(3, 0, 5, true),
        ];
        assert_eq!(d.replayer(&c).map(|c| c.conn), Some(2));
        assert_eq!(d.replayer(&c[..1]), None);
    }

    #[test]
    fn the_auditor_has_the_most_clean_steps_then_the_lowest_lease() {
        let d = Draws::new(1);
        let c = [
            candidate(1, 4, 2, true),
            candidate(2, 3, 7, false),
            candidate(3, 9, 5, true),
            candidate(4, 2, 5, true),
        ];
        assert_eq!(d.auditor(&c).map(|c| c.conn), Some(4));
        assert_eq!(d.auditor(&c[1..2]), None);
    }

    #[test]
    fn a_new_lease_takes_the_least_replicated_micro_shards_its_budget_holds() {
        let d = Draws::new(1);
        // Three stages of 1, 2 and 2 micro-shards, each micro-shard 10 bytes.
        let bytes = |x: &[ShardId]| 10 * x.len() as u64;
        let none = vec![vec![0], vec![0, 0], vec![0, 0]];
        // A budget for everything: whole stages from the first.
        assert_eq!(
            d.lease_shards(&none, 50, bytes),
            Some(vec![(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)])
        );
        // A budget for one micro-shard: the first of the least replicated.
        assert_eq!(d.lease_shards(&none, 10, bytes), Some(vec![(0, 0)]));
        let some = vec![vec![1], vec![1, 0], vec![0, 0]];
        assert_eq!(d.lease_shards(&some, 10, bytes), Some(vec![(1, 1)]));
        // The first stage with a least-replicated micro-shard wins, whole or not.
        assert_eq!(d.lease_shards(&some, 40, bytes), Some(vec![(1, 1)]));
        // Whole stages while they are as short of replicas and fit.
        let first_held = vec![vec![1], vec![0, 0], vec![0, 0]];
        assert_eq!(
            d.lease_shards(&first_held, 40, bytes),
            Some(vec![(1, 0), (1, 1), (2, 0), (2, 1)])
        );
        assert_eq!(
            d.lease_shards(&first_held, 30, bytes),
            Some(vec![(1, 0), (1, 1)])
        );
        assert_eq!(d.lease_shards(&none, 9, bytes), None, "nothing fits");
    }
}
