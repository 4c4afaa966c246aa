//! Every choice of the core that decides who is checked, who checks and who holds what: which
//! identities' work is drawn for the checks (a whole-model update: a loss check and a replay;
//! a lease's pipeline step: an audit), which contributor replays a unit, which lease audits
//! another, and which micro-shards a new lease gets. The core asks this part and nothing else.
//! Who is checked is drawn from the run's draw chain (`beacon.rs`): a value revealed only after
//! the work it decides about was accepted, so nobody can know beforehand whether its work will
//! be checked, and `tessera verify` recomputes every such draw from the log. Replayers and
//! auditors are picked among the free candidates by the latest revealed value, and each pick
//! is logged (`Picked`) with its ranking, which `tessera verify` recomputes too.

use tessera_protocol::log::{CheckOf, DrawRates, LogEvent, DRAW_SEGMENT};
use tessera_protocol::{Identity, PublicKey};

use super::beacon::{self, Beacon, Chain};
use super::credits::Credits;
use super::ConnId;

/// A micro-shard's place: (stage, index in the stage).
type ShardId = (usize, usize);

/// The core's draws for one run: the coordinator's secret segment of the draw chain in use
/// (the chain as the log makes it is the credits' [`Beacon`], the one fold of the log).
#[derive(Clone, Debug, Default)]
pub(super) struct Draws {
    chain: Option<Chain>,
}

/// Who the chain belongs to: the coordinator and its run (whose name and rules' digest each
/// segment's secret is derived with: the digest the log's `Started` entry commits, which an
/// administrator's later `set` does not change, so a restarted coordinator derives the same
/// chain).
pub(super) struct Owner<'a> {
    pub id: &'a Identity,
    pub run: &'a str,
    pub config: [u8; 32],
}

impl<'a> Owner<'a> {
    /// The chain of run `run`, started under the rules of digest `config`, coordinated by
    /// `id`.
    pub(super) fn of(id: &'a Identity, run: &'a str, config: [u8; 32]) -> Self {
        Owner { id, run, config }
    }

    /// Segment `segment` of the chain (derived: once per segment and run start).
    fn chain(&self, segment: u64) -> Chain {
        Chain::derive(self.id, self.run, &self.config, segment)
    }
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
    /// The draws of a run whose log is empty.
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// The draw chain's first two commitments, with the run's check `rates` (for a new run,
    /// or a fork, before any work is handed out).
    pub(super) fn start(owner: &Owner, rates: DrawRates) -> Vec<LogEvent> {
        (0..2)
            .map(|segment| LogEvent::DrawChain {
                segment,
                tip: owner.chain(segment).tip(),
                rates: (segment == 0).then_some(rates),
            })
            .collect()
    }

    /// The entries of the next reveal (its segment's successor's commitment first, when the
    /// value opens a segment) and the identities it draws, in the order of their work.
    pub(super) fn reveal(
        &mut self,
        owner: &Owner,
        credits: &Credits,
    ) -> (Vec<LogEvent>, Vec<PublicKey>) {
        let beacon = credits.beacon();
        let index = beacon.next_index();
        let segment = (index - 1) / DRAW_SEGMENT;
        let mut entries = Vec::new();
        if !beacon.committed(segment + 1) {
            entries.push(LogEvent::DrawChain {
                segment: segment + 1,
                tip: owner.chain(segment + 1).tip(),
                rates: None,
            });
        }
        if self.chain.as_ref().map(Chain::segment) != Some(segment) {
            self.chain = Some(owner.chain(segment));
        }
        let value = self
            .chain
            .as_ref()
            .and_then(|c| c.value(index))
            .unwrap_or_default();
        let bits = beacon.draws(&value, |k| credits.clean_steps(k));
        let drawn = beacon
            .subjects()
            .iter()
            .zip(&bits)
            .filter(|(_, &b)| b)
            .map(|(k, _)| *k)
            .collect();
        entries.push(LogEvent::Revealed {
            index,
            value,
            drawn: beacon::pack(&bits),
        });
        (entries, drawn)
    }

    /// Who runs `check` of `subject`'s work (its next pick, by the log's count of its earlier
    /// ones): of the free candidates, the
    /// one the latest revealed value ranks first (a replayer of a whole-model unit, an
    /// auditor of a lease's step), so who checks whom is known only once the work is in; with
    /// the `Picked` entry that shows the ranking. An identity with several free sessions or
    /// leases counts once, by the first of them in `candidates`.
    pub(super) fn checker(
        beacon: &Beacon,
        candidates: &[Candidate],
        check: CheckOf,
        subject: PublicKey,
    ) -> Option<(Candidate, LogEvent)> {
        let nth = beacon.picks.of(&check);
        let free = candidates.iter().filter(|c| c.free && c.key != subject);
        let ranked =
            super::picks::ranked(beacon.latest(), &check, nth, free.clone().map(|c| c.key));
        let first = *ranked.first()?;
        let chosen = free.clone().find(|c| c.key == first)?;
        Some((*chosen, super::picks::picked(check, nth, subject, ranked)?))
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
    fn checkers_are_free_candidates_ranked_by_the_latest_reveal_and_logged() {
        let c: Vec<Candidate> = (1..=8).map(|i| candidate(i, i, 0, i != 3)).collect();
        let subject = key(8);
        let mut credits = Credits::default();
        let audit = |step| CheckOf::Audit { step, lease: 1 };
        assert_eq!(
            Draws::checker(credits.beacon(), &c[2..3], audit(1), subject),
            None,
            "nobody free"
        );
        assert_eq!(
            Draws::checker(credits.beacon(), &c[7..8], audit(1), subject),
            None,
            "the subject does not check itself"
        );
        let id = Identity::from_seed([5; 32]);
        let spec = super::super::context::testing::spec(1);
        let config = super::super::rules::RunRules::of(&spec).digest();
        let owner = Owner::of(&id, &spec.name, config);
        let picks = |credits: &Credits| -> Vec<ConnId> {
            (0..64u64)
                .map(|step| {
                    let (chosen, entry) =
                        Draws::checker(credits.beacon(), &c, audit(step), subject).unwrap();
                    let LogEvent::Picked {
                        candidates, nth, ..
                    } = entry
                    else {
                        panic!("a Picked entry")
                    };
                    assert_eq!(nth, 0);
                    assert_eq!(candidates[0], chosen.key, "the first ranked is picked");
                    assert_eq!(candidates.len(), 6, "the free ones but the subject");
                    assert_eq!(
                        candidates,
                        super::super::picks::ranked(
                            credits.beacon().latest(),
                            &audit(step),
                            0,
                            candidates.iter().rev().copied()
                        ),
                        "the ranking does not depend on the candidates' order"
                    );
                    chosen.conn
                })
                .collect()
        };
        let rates = DrawRates {
            new: u64::MAX,
            min: 0,
            halving: 1,
        };
        for e in Draws::start(&owner, rates) {
            credits.apply_drawn(&e).1.unwrap();
        }
        let mut d = Draws::new();
        let (entries, drawn) = d.reveal(&owner, &credits);
        assert!(drawn.is_empty());
        for e in entries {
            credits.apply_drawn(&e).1.unwrap();
        }
        let first = picks(&credits);
        assert!(!first.contains(&3), "not free");
        assert!(!first.contains(&8), "the subject");
        let spread: std::collections::BTreeSet<ConnId> = first.iter().copied().collect();
        assert!(spread.len() >= 5, "{first:?}");
        // The next reveal: other picks.
        let (entries, _) = d.reveal(&owner, &credits);
        for e in entries {
            credits.apply_drawn(&e).1.unwrap();
        }
        assert_ne!(picks(&credits), first);
    }

    #[test]
    fn a_new_lease_takes_the_least_replicated_micro_shards_its_budget_holds() {
        let d = Draws::new();
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
