//! The run's draw chain: where every random choice of the checks comes from, so that nobody can
//! predict or steer a draw and anybody can verify one.
//!
//! The coordinator derives one secret value per segment of [`DRAW_SEGMENT`] values from a
//! signature of its own (deterministic: ed25519 signs alike every time, so a restart derives
//! the same chain) and hashes it down: value `p` of a segment is the SHA-256 preimage of value
//! `p - 1`, and the segment's tip, the SHA-256 of its first value, is committed in a
//! `DrawChain` entry at least a segment before any of its values is revealed. A reveal
//! (`Revealed`) comes after the work it decides about was accepted: the identities whose work
//! was accepted since the previous reveal are drawn, each by the first 8 bytes of
//! SHA-256(value ‖ root ‖ key) against its check rate, where the root chains the hashes of
//! those `Accepted` events. A contributor cannot know the value before its work is in (it
//! would have to invert SHA-256), and the coordinator cannot choose it (the tip binds it).
//!
//! [`Beacon`] is the fold of the log that the coordinator keeps and `tessera verify` runs: it
//! checks that each revealed value hashes to the one before, that its segment was committed
//! before, and that the draws marked are the ones the value, the root and each identity's rate
//! (from the credits folded from the same log) give, and folds the picks of who checks
//! ([`Picks`], `picks.rs`) against the latest reveal. [`Chain`] is the coordinator's secret
//! side.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use tessera_protocol::log::{DrawRates, LogEvent, DRAW_SEGMENT};
use tessera_protocol::{Identity, PublicKey};

pub use super::picks::{PickError, Picks};
use super::Share;

/// Domain of the signature a segment's secret is derived from.
const CHAIN_DOMAIN: &str = "draw-chain";

/// Why a log's draws do not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrawError {
    /// A segment committed twice.
    #[error("segment {0} of the draw chain is committed twice")]
    Recommitted(u64),
    /// The rates are missing from the first commitment or repeated in a later one.
    #[error("the draw chain's rates must come with its first commitment, and only there")]
    Rates,
    /// A value revealed out of order.
    #[error("draw value {got} is revealed where value {want} is next")]
    OutOfTurn {
        /// The index revealed.
        got: u64,
        /// The index due.
        want: u64,
    },
    /// A value whose segment was not committed.
    #[error("draw value {index} is revealed before its segment {segment} was committed")]
    Uncommitted {
        /// The index revealed.
        index: u64,
        /// Its segment.
        segment: u64,
    },
    /// A value that does not hash to the one before it.
    #[error("draw value {0} does not hash to the value before it (or its segment's tip)")]
    NotChained(u64),
    /// A round or step closed over work no reveal decided about.
    #[error("round or step {round} closed with the work of {identities} identities never drawn for the checks")]
    Undrawn {
        /// The round or step.
        round: u64,
        /// Identities with work since the last reveal.
        identities: usize,
    },
    /// A pick of a checker that does not hold.
    #[error(transparent)]
    Pick(#[from] PickError),
    /// The draws marked are not the draws the value gives.
    #[error("reveal {index} marks {logged} of {subjects} identities drawn where its value gives {recomputed}")]
    Altered {
        /// The index revealed.
        index: u64,
        /// Identities it decides about.
        subjects: usize,
        /// The draws marked, as bits.
        logged: String,
        /// The draws recomputed, as bits.
        recomputed: String,
    },
}

/// What the log says of the draw chain so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Beacon {
    /// The rates of every draw, from the first commitment.
    rates: Option<DrawRates>,
    /// Each committed segment's tip.
    tips: BTreeMap<u64, [u8; 32]>,
    /// The last value revealed, with its index.
    last: Option<(u64, [u8; 32])>,
    /// The root of the `Accepted` entries since the last reveal: a hash chain of the SHA-256 of
    /// each one's event (its postcard encoding).
    root: [u8; 32],
    /// The identities whose work was accepted since the last reveal, in order.
    subjects: Vec<PublicKey>,
    seen: BTreeSet<PublicKey>,
    /// SHA-256(value ‖ root) of the last reveal: what the picks that follow it draw from.
    latest: Option<[u8; 32]>,
    /// The picks of checkers logged so far.
    pub picks: Picks,
    /// Draws recomputed and found as logged.
    pub checked: u64,
}

/// SHA-256 of the concatenation of `parts`.
pub(super) fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The first 8 bytes of `h`, little-endian.
pub(super) fn number(h: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    u64::from_le_bytes(first)
}

/// The share of draws `rates` give an identity with `clean` clean steps or rounds.
pub fn rate(rates: &DrawRates, clean: u64) -> Share {
    Share::from_bits(rates.new)
        .halved(clean / rates.halving.max(1))
        .max(Share::from_bits(rates.min))
}

/// Bits as text, for people: `1` drawn, `0` not.
fn bits_text(bits: &[bool]) -> String {
    bits.iter().map(|&b| if b { '1' } else { '0' }).collect()
}

/// `bits` packed (bit `i % 8` of byte `i / 8`).
pub fn pack(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, _) in bits.iter().enumerate().filter(|(_, &b)| b) {
        out[i / 8] |= 1 << (i % 8);
    }
    out
}

/// The first `n` bits of `packed`.
fn unpack(packed: &[u8], n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| packed.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1))
        .collect()
}

impl Beacon {
    /// The beacon of an empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `segment`'s tip is committed.
    pub fn committed(&self, segment: u64) -> bool {
        self.tips.contains_key(&segment)
    }

    /// The check rates the chain's first commitment fixed.
    pub fn rates(&self) -> Option<DrawRates> {
        self.rates
    }

    /// Whether the chain was started (its first segment committed).
    pub fn started(&self) -> bool {
        self.rates.is_some()
    }

    /// The index of the next value to reveal.
    pub fn next_index(&self) -> u64 {
        self.last.map_or(1, |(i, _)| i + 1)
    }

    /// The identities the next reveal decides about, in order.
    pub fn subjects(&self) -> &[PublicKey] {
        &self.subjects
    }

    /// What the picks after the last reveal draw from (none before the first).
    pub fn latest(&self) -> Option<[u8; 32]> {
        self.latest
    }

    /// The draws `value` gives the identities the next reveal decides about: one per
    /// identity, true when its work is checked; `clean` gives an identity's clean steps.
    pub fn draws(&self, value: &[u8; 32], clean: impl Fn(&PublicKey) -> u64) -> Vec<bool> {
        let Some(rates) = &self.rates else {
            return vec![false; self.subjects.len()];
        };
        self.subjects
            .iter()
            .map(|k| rate(rates, clean(k)).takes(number(&sha(&[value, &self.root, &k.0]))))
            .collect()
    }

    /// Folds one entry; for a reveal, checks it against the chain and recomputes its draws
    /// (with `clean`, each identity's clean steps as the log stands before the entry). An
    /// entry that fails leaves the beacon as it was.
    pub fn apply(
        &mut self,
        event: &LogEvent,
        clean: impl Fn(&PublicKey) -> u64,
    ) -> Result<(), DrawError> {
        match event {
            LogEvent::Accepted { key, tokens, .. } => {
                self.root = sha(&[&self.root, &super::digest(event)]);
                if *tokens > 0 && self.seen.insert(*key) {
                    self.subjects.push(*key);
                }
            }
            LogEvent::Closed { round, .. } if self.started() && !self.subjects.is_empty() => {
                return Err(DrawError::Undrawn {
                    round: *round,
                    identities: self.subjects.len(),
                });
            }
            LogEvent::Closed { round, .. } => self.picks.closed(*round),
            LogEvent::Picked { .. } => self.picks.apply(self.latest, event)?,
            LogEvent::DrawChain {
                segment,
                tip,
                rates,
            } => {
                if self.tips.contains_key(segment) {
                    return Err(DrawError::Recommitted(*segment));
                }
                match (self.rates.is_some(), rates) {
                    (false, Some(r)) => self.rates = Some(*r),
                    (true, None) => {}
                    _ => return Err(DrawError::Rates),
                }
                self.tips.insert(*segment, *tip);
            }
            LogEvent::Revealed {
                index,
                value,
                drawn,
            } => {
                let want = self.next_index();
                if *index != want {
                    return Err(DrawError::OutOfTurn { got: *index, want });
                }
                let segment = (index - 1) / DRAW_SEGMENT;
                let before = if (index - 1) % DRAW_SEGMENT == 0 {
                    match self.tips.get(&segment) {
                        Some(t) => *t,
                        None => {
                            return Err(DrawError::Uncommitted {
                                index: *index,
                                segment,
                            })
                        }
                    }
                } else {
                    // Not the segment's first: the value before was revealed.
                    self.last.map(|(_, v)| v).unwrap_or_default()
                };
                if sha(&[value]) != before {
                    return Err(DrawError::NotChained(*index));
                }
                let recomputed = self.draws(value, clean);
                let logged = unpack(drawn, recomputed.len());
                if logged != recomputed || *drawn != pack(&recomputed) {
                    return Err(DrawError::Altered {
                        index: *index,
                        subjects: recomputed.len(),
                        logged: bits_text(&logged),
                        recomputed: bits_text(&recomputed),
                    });
                }
                self.checked += recomputed.len() as u64;
                self.latest = Some(sha(&[value, &self.root]));
                self.last = Some((*index, *value));
                self.root = [0; 32];
                self.subjects.clear();
                self.seen.clear();
            }
            _ => {}
        }
        Ok(())
    }
}

/// The coordinator's secret side of the chain: one segment's values, derived when needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Which segment `values` holds.
    segment: u64,
    /// Its values: `values[0]` the tip, `values[p]` value `p` of the segment.
    values: Vec<[u8; 32]>,
}

impl Chain {
    /// Segment `segment` of the chain of the coordinator `id` for the run `run` with rules
    /// digest `config`.
    pub fn derive(id: &Identity, run: &str, config: &[u8; 32], segment: u64) -> Self {
        let what = super::digest(&(run, config, segment));
        let secret = sha(&[&id.sign(CHAIN_DOMAIN, &what).0]);
        let n = DRAW_SEGMENT as usize;
        let mut values = vec![[0u8; 32]; n + 1];
        values[n] = secret;
        for p in (0..n).rev() {
            values[p] = sha(&[&values[p + 1]]);
        }
        Chain { segment, values }
    }

    /// The segment it holds.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// The tip its `DrawChain` entry commits.
    pub fn tip(&self) -> [u8; 32] {
        self.values[0]
    }

    /// Value `index` of the whole chain (from 1), if it is in this segment.
    pub fn value(&self, index: u64) -> Option<[u8; 32]> {
        let index = index.checked_sub(1)?;
        (index / DRAW_SEGMENT == self.segment)
            .then(|| self.values[(index % DRAW_SEGMENT) as usize + 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::log::LogEvent;

    fn key(n: u8) -> PublicKey {
        Identity::from_seed([n; 32]).public()
    }

    fn accepted(k: PublicKey, unit: u64, tokens: u64) -> LogEvent {
        LogEvent::Accepted {
            key: k,
            unit,
            seq: unit,
            result: [unit as u8; 32],
            tokens,
            flops: 1.0,
            pending: true,
        }
    }

    const HALF: DrawRates = DrawRates {
        new: 1 << 63,
        min: 1 << 60,
        halving: 4,
    };

    /// A beacon with the first two segments of `chain`'s coordinator committed.
    fn started(id: &Identity) -> Beacon {
        let mut b = Beacon::new();
        for s in 0..2 {
            let c = Chain::derive(id, "run", &[1; 32], s);
            let rates = (s == 0).then_some(HALF);
            let e = LogEvent::DrawChain {
                segment: s,
                tip: c.tip(),
                rates,
            };
            b.apply(&e, |_| 0).unwrap();
        }
        b
    }

    /// The reveal an honest coordinator writes next.
    fn reveal(b: &Beacon, c: &Chain) -> LogEvent {
        let index = b.next_index();
        let value = c.value(index).unwrap();
        LogEvent::Revealed {
            index,
            value,
            drawn: pack(&b.draws(&value, |_| 0)),
        }
    }

    #[test]
    fn a_chain_hashes_down_to_its_tip_and_is_the_same_each_time() {
        let id = Identity::from_seed([3; 32]);
        let c = Chain::derive(&id, "run", &[1; 32], 0);
        assert_eq!(c, Chain::derive(&id, "run", &[1; 32], 0));
        assert_eq!(sha(&[&c.value(1).unwrap()]), c.tip());
        assert_eq!(sha(&[&c.value(9).unwrap()]), c.value(8).unwrap());
        assert_eq!(c.value(0), None);
        assert_eq!(c.value(DRAW_SEGMENT + 1), None, "the next segment's");
        let next = Chain::derive(&id, "run", &[1; 32], 1);
        assert!(next.value(DRAW_SEGMENT + 1).is_some());
        // Another coordinator, run or configuration: another chain.
        let other = Identity::from_seed([4; 32]);
        assert_ne!(Chain::derive(&other, "run", &[1; 32], 0).tip(), c.tip());
        assert_ne!(Chain::derive(&id, "run2", &[1; 32], 0).tip(), c.tip());
        assert_ne!(Chain::derive(&id, "run", &[2; 32], 0).tip(), c.tip());
    }

    #[test]
    fn honest_reveals_fold_and_each_decides_about_the_work_since_the_last() {
        let id = Identity::from_seed([3; 32]);
        let c = Chain::derive(&id, "run", &[1; 32], 0);
        let mut b = started(&id);
        assert_eq!(b.next_index(), 1);
        b.apply(&accepted(key(1), 1, 8), |_| 0).unwrap();
        b.apply(&accepted(key(2), 2, 8), |_| 0).unwrap();
        // The same identity twice and an answer without tokens: one subject each.
        b.apply(&accepted(key(1), 3, 8), |_| 0).unwrap();
        b.apply(&accepted(key(3), 4, 0), |_| 0).unwrap();
        assert_eq!(b.subjects(), &[key(1), key(2)]);
        let r = reveal(&b, &c);
        b.apply(&r, |_| 0).unwrap();
        assert!(b.subjects().is_empty());
        assert_eq!(b.next_index(), 2);
        assert_eq!(b.checked, 2);
        assert!(b.latest().is_some());
        // A reveal with no work since decides about nobody.
        let r = reveal(&b, &c);
        b.apply(&r, |_| 0).unwrap();
    }

    #[test]
    fn a_rate_draws_its_share_and_the_draw_depends_on_the_value_and_the_work() {
        let id = Identity::from_seed([3; 32]);
        let c = Chain::derive(&id, "run", &[1; 32], 0);
        let mut b = started(&id);
        for k in 0..200u8 {
            b.apply(&accepted(key(k), k as u64, 8), |_| 0).unwrap();
        }
        let v1 = c.value(1).unwrap();
        let drawn = |b: &Beacon, v: &[u8; 32], clean: u64| b.draws(v, |_| clean);
        let share = |d: &[bool]| d.iter().filter(|&&x| x).count() as f64 / d.len() as f64;
        assert!((share(&drawn(&b, &v1, 0)) - 0.5).abs() < 0.1);
        // After 8 clean steps: 1/8, and never below the least share (1/16).
        assert!((share(&drawn(&b, &v1, 8)) - 0.125).abs() < 0.06);
        assert!(share(&drawn(&b, &v1, 4000)) > 0.0);
        // Another value, or other work before the reveal: other draws.
        assert_ne!(drawn(&b, &v1, 0), drawn(&b, &c.value(2).unwrap(), 0));
        let mut b2 = b.clone();
        b2.apply(&accepted(key(250), 999, 8), |_| 0).unwrap();
        assert_ne!(drawn(&b, &v1, 0), drawn(&b2, &v1, 0)[..200].to_vec());
    }

    #[test]
    fn altered_draws_and_values_are_refused_and_change_nothing() {
        let id = Identity::from_seed([3; 32]);
        let c = Chain::derive(&id, "run", &[1; 32], 0);
        let mut b = started(&id);
        for k in 0..16u8 {
            b.apply(&accepted(key(k), k as u64, 8), |_| 0).unwrap();
        }
        let LogEvent::Revealed {
            index,
            value,
            drawn,
        } = reveal(&b, &c)
        else {
            unreachable!()
        };
        let before = b.clone();
        // One draw flipped.
        let mut flipped = drawn.clone();
        flipped[0] ^= 1;
        let bad = LogEvent::Revealed {
            index,
            value,
            drawn: flipped,
        };
        assert!(matches!(
            b.apply(&bad, |_| 0),
            Err(DrawError::Altered { .. })
        ));
        // Trailing bytes.
        let mut longer = drawn.clone();
        longer.push(0);
        let bad = LogEvent::Revealed {
            index,
            value,
            drawn: longer,
        };
        assert!(b.apply(&bad, |_| 0).is_err());
        // A value of the coordinator's choice.
        let bad = LogEvent::Revealed {
            index,
            value: [7; 32],
            drawn: drawn.clone(),
        };
        assert_eq!(b.apply(&bad, |_| 0), Err(DrawError::NotChained(1)));
        // A value skipped ahead.
        let bad = LogEvent::Revealed {
            index: 2,
            value: c.value(2).unwrap(),
            drawn: drawn.clone(),
        };
        assert!(matches!(
            b.apply(&bad, |_| 0),
            Err(DrawError::OutOfTurn { got: 2, want: 1 })
        ));
        // The rates of another identity's record: other draws.
        let good = LogEvent::Revealed {
            index,
            value,
            drawn,
        };
        assert_ne!(b.draws(&value, |_| 40), b.draws(&value, |_| 0));
        assert!(matches!(
            b.clone().apply(&good, |_| 40),
            Err(DrawError::Altered { .. })
        ));
        assert_eq!(b, before, "a refused entry changes nothing");
        b.apply(&good, |_| 0).unwrap();
    }

    #[test]
    fn a_segment_is_revealed_only_once_committed_and_committed_once() {
        let id = Identity::from_seed([3; 32]);
        let mut b = Beacon::new();
        let c0 = Chain::derive(&id, "run", &[1; 32], 0);
        let commit = |s: u64, rates: Option<DrawRates>| LogEvent::DrawChain {
            segment: s,
            tip: Chain::derive(&id, "run", &[1; 32], s).tip(),
            rates,
        };
        assert_eq!(b.apply(&commit(0, None), |_| 0), Err(DrawError::Rates));
        b.apply(&commit(0, Some(HALF)), |_| 0).unwrap();
        assert_eq!(
            b.apply(&commit(0, None), |_| 0),
            Err(DrawError::Recommitted(0))
        );
        assert_eq!(
            b.apply(&commit(1, Some(HALF)), |_| 0),
            Err(DrawError::Rates)
        );
        // The whole first segment, then the second uncommitted.
        for _ in 0..DRAW_SEGMENT {
            let r = reveal(&b, &c0);
            b.apply(&r, |_| 0).unwrap();
        }
        let c1 = Chain::derive(&id, "run", &[1; 32], 1);
        let r = reveal(&b, &c1);
        assert_eq!(
            b.apply(&r, |_| 0),
            Err(DrawError::Uncommitted {
                index: DRAW_SEGMENT + 1,
                segment: 1
            })
        );
        b.apply(&commit(1, None), |_| 0).unwrap();
        b.apply(&r, |_| 0).unwrap();
    }

    #[test]
    fn a_close_over_work_never_drawn_is_refused() {
        let id = Identity::from_seed([3; 32]);
        let c = Chain::derive(&id, "run", &[1; 32], 0);
        let closed = LogEvent::Closed {
            round: 0,
            version: 1,
            weights: [0; 32],
            aggregate: [0; 32],
        };
        // Before the chain: nothing to hold a close to (a run that does not check).
        let mut unchecked = Beacon::new();
        unchecked.apply(&accepted(key(1), 1, 8), |_| 0).unwrap();
        unchecked.apply(&closed, |_| 0).unwrap();
        let mut b = started(&id);
        b.apply(&accepted(key(1), 1, 8), |_| 0).unwrap();
        assert_eq!(
            b.apply(&closed, |_| 0),
            Err(DrawError::Undrawn {
                round: 0,
                identities: 1
            })
        );
        let r = reveal(&b, &c);
        b.apply(&r, |_| 0).unwrap();
        b.apply(&closed, |_| 0).unwrap();
    }

    #[test]
    fn bits_pack_and_unpack() {
        let bits = [true, false, false, true, true, false, false, false, true];
        let p = pack(&bits);
        assert_eq!(p, vec![0b0001_1001, 1]);
        assert_eq!(unpack(&p, bits.len()), bits);
        assert_eq!(pack(&[]), Vec::<u8>::new());
    }
}
