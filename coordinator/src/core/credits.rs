//! Credits and reputation as a pure function of the run log. The coordinator keeps them by
//! folding each entry as it writes it, a restarted coordinator by folding its stored log, and
//! `tessera verify` by folding the log it checked: one piece of code, so the same numbers, and
//! a coordinator cannot credit work its log does not record.
//!
//! The rules, entry by entry:
//! - `Joined`: the identity's kind.
//! - `Accepted`: one more accepted unit, its tokens, and its FLOPs, pending when the entry says
//!   the run checks work, verified at once otherwise.
//! - `Revealed` (runs with a draw chain): each identity's pending work since the last reveal
//!   is drawn for a check or not. Work not drawn leaves `pending_flops` and is never credited:
//!   no check covers it. Drawn work waits for its check and is worth its FLOPs over the rate it
//!   was drawn at, so an identity's expected credit is the work it did, and only work a check
//!   covered earns any.
//! - `Rejected`: one more rejected submission.
//! - `Checked`: passed (or the auditors were the ones wrong): the checked identity's drawn
//!   work is credited (in a log without a draw chain: all its pending FLOPs), and its first
//!   pass in that step or round adds a clean step. Disputed: its drawn work is not credited
//!   (skipped: it waits for the next passed check). Failed:
//!   the checked identity loses everything and is refused. Every auditor of an `AuditorFailed`
//!   check that is not in `credited` (those that disagreed with the checked result) is refused
//!   likewise. Disputed: every party is on probation again (a `HeldOut` or `LossCheck`
//!   dispute is a statistical outlier the round withheld: its round is kept, see
//!   [`Credits::outliers`]). Each identity in `credited` gains the check's FLOPs, verified.

use std::collections::{BTreeMap, BTreeSet};

use tessera_protocol::log::{CheckOutcome, LogEvent};
use tessera_protocol::{Code, PublicKey};

use super::beacon::{self, Beacon};

use serde::{Deserialize, Serialize};
use tessera_protocol::messages::ContributorKind;

/// Every identity's record, as the log so far makes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Credits {
    records: BTreeMap<PublicKey, Record>,
    refused: BTreeSet<PublicKey>,
    /// The last step or round each identity's work passed a check in.
    last_clean: BTreeMap<PublicKey, u64>,
    /// The identities whose record the entry being folded changed (empty between entries).
    touched: Vec<PublicKey>,
    /// The draw chain as the log so far makes it: who each reveal decides about, so credit
    /// goes only to work a check covered (the coordinator's draws read it too).
    beacon: Beacon,
    /// Work accepted since the last reveal and not yet drawn, by identity (FLOPs).
    awaiting: BTreeMap<PublicKey, f64>,
    /// Work drawn for a check and not yet checked, by identity: its FLOPs and the credit a
    /// passed check gives (its FLOPs over the rate it was drawn at).
    drawn: BTreeMap<PublicKey, (f64, f64)>,
    /// Pending work from before the log's draw chain started (a run resumed across the
    /// change), by identity: its next passed check verifies it, as before draws.
    before_draws: BTreeMap<PublicKey, f64>,
    /// The rounds of each identity's latest updates a statistical check withheld (a
    /// `Disputed` outcome with the `HeldOut` or `LossCheck` code), at most
    /// [`KEPT_OUTLIERS`] each: `held_out::refuses_outlier` decides from them.
    outliers: BTreeMap<PublicKey, Vec<u64>>,
}

/// Withheld outliers kept per identity (see [`Credits::outliers`]).
pub const KEPT_OUTLIERS: usize = 4;

impl Credits {
    /// The records a whole log makes.
    pub fn from_log<'a>(events: impl IntoIterator<Item = &'a LogEvent>) -> Self {
        let mut c = Credits::default();
        for e in events {
            c.apply(e);
        }
        c
    }

    /// Folds one more entry in; returns the identities whose record it changed.
    pub fn apply(&mut self, event: &LogEvent) -> Vec<PublicKey> {
        self.apply_drawn(event).0
    }

    /// Folds one more entry in; returns the identities whose record it changed and whether
    /// the entry holds as a step of the log's draw chain (see [`Beacon::apply`]: an entry that
    /// does not leaves the chain as it was). The coordinator reports a fault as its own bug;
    /// `tessera verify` refuses the log.
    pub fn apply_drawn(
        &mut self,
        event: &LogEvent,
    ) -> (Vec<PublicKey>, Result<(), beacon::DrawError>) {
        self.fold_event(event);
        let records = &self.records;
        let clean = |k: &PublicKey| records.get(k).map_or(0, |r| r.clean_steps);
        let drawn = self.beacon.apply(event, clean);
        (std::mem::take(&mut self.touched), drawn)
    }

    /// The log's draw chain as folded so far (who each reveal decides about, the rates, the
    /// latest value).
    pub fn beacon(&self) -> &Beacon {
        &self.beacon
    }

    /// A reveal: each identity's work since the last is drawn for a check or not; work not
    /// drawn leaves `pending_flops` uncredited (no check covers it), drawn work waits for its
    /// check, worth its FLOPs over the rate it was drawn at.
    fn revealed(&mut self, bits: &[u8]) {
        let subjects = self.beacon.subjects().to_vec();
        let rates = self.beacon.rates();
        for (i, k) in subjects.iter().enumerate() {
            let face = self.awaiting.remove(k).unwrap_or(0.0);
            let drawn = bits.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1);
            match rates {
                Some(rates) if drawn => {
                    let p = beacon::rate(&rates, self.clean_steps(k)).rate();
                    let d = self.drawn.entry(*k).or_default();
                    d.0 += face;
                    d.1 += if p > 0.0 { face / p } else { 0.0 };
                }
                _ => self.uncredited(*k, face),
            }
        }
        for (k, face) in std::mem::take(&mut self.awaiting) {
            self.uncredited(k, face);
        }
    }

    /// `face` FLOPs of `key`'s pending work that no check will cover.
    fn uncredited(&mut self, key: PublicKey, face: f64) {
        if face > 0.0 {
            let r = self.at(key);
            r.pending_flops = (r.pending_flops - face).max(0.0);
        }
    }

    /// What a passed check of `key` verifies: with a draw chain, the drawn work it covered
    /// (at its FLOPs over its rate); without one (a log from before draws), all pending work.
    fn verified(&mut self, key: PublicKey) {
        if self.beacon.started() {
            let (mut face, mut credit) = self.drawn.remove(&key).unwrap_or_default();
            if let Some(old) = self.before_draws.remove(&key) {
                face += old;
                credit += old;
            }
            let r = self.at(key);
            r.pending_flops = (r.pending_flops - face).max(0.0);
            r.flops += credit;
        } else {
            let r = self.at(key);
            r.flops += std::mem::take(&mut r.pending_flops);
        }
    }

    fn fold_event(&mut self, event: &LogEvent) {
        match event {
            LogEvent::Joined { key, kind } => self.at(*key).kind = Some(*kind),
            LogEvent::Accepted {
                key,
                tokens,
                flops,
                pending,
                ..
            } => {
                let r = self.at(*key);
                r.accepted += 1;
                r.tokens += tokens;
                if *pending {
                    r.pending_flops += flops;
                    if self.beacon.started() {
                        *self.awaiting.entry(*key).or_default() += flops;
                    }
                } else {
                    r.flops += flops;
                }
            }
            LogEvent::Revealed { drawn, .. } => self.revealed(drawn),
            LogEvent::DrawChain { rates: Some(_), .. } if !self.beacon.started() => {
                // The chain starts: what is pending now was accepted before draws.
                self.before_draws = self
                    .records
                    .iter()
                    .filter(|(_, r)| r.pending_flops > 0.0)
                    .map(|(k, r)| (*k, r.pending_flops))
                    .collect();
            }
            LogEvent::Rejected { key, .. } => self.at(*key).rejected += 1,
            LogEvent::Checked {
                key,
                step,
                auditors,
                outcome,
                flops,
                credited,
            } => {
                match outcome {
                    CheckOutcome::Passed | CheckOutcome::AuditorFailed(_) => {
                        let new_step = self.last_clean.insert(*key, *step) != Some(*step);
                        self.verified(*key);
                        let r = self.at(*key);
                        r.checks_passed += 1;
                        r.clean_steps += u64::from(new_step);
                        if let CheckOutcome::AuditorFailed(_) = outcome {
                            for liar in auditors.iter().filter(|k| !credited.contains(k)) {
                                self.refuse(*liar);
                            }
                        }
                    }
                    CheckOutcome::Failed(_) => self.refuse(*key),
                    CheckOutcome::Disputed(why) => {
                        // The drawn work stands unverified: no credit for it.
                        if let Some((face, _)) = self.drawn.remove(key) {
                            self.uncredited(*key, face);
                        }
                        self.probation(key, auditors);
                        if matches!(why.code, Code::HeldOut | Code::LossCheck) {
                            let rounds = self.outliers.entry(*key).or_default();
                            if rounds.len() == KEPT_OUTLIERS {
                                rounds.remove(0);
                            }
                            rounds.push(*step);
                        }
                    }
                    CheckOutcome::Skipped(_) => {
                        // Nobody could check the drawn work: it stays unverified, and a later
                        // passed check does not credit it.
                        if let Some((face, _)) = self.drawn.remove(key) {
                            self.uncredited(*key, face);
                        }
                    }
                }
                for &k in credited {
                    if !self.refused.contains(&k) {
                        self.at(k).flops += flops;
                    }
                }
            }
            _ => {}
        }
    }

    fn at(&mut self, key: PublicKey) -> &mut Record {
        if !self.touched.contains(&key) {
            self.touched.push(key);
        }
        self.records.entry(key).or_default()
    }

    /// A disputed check: one of its parties is wrong and nobody could say who, so every one is
    /// on probation again (checked at the new identity's rate).
    fn probation(&mut self, key: &PublicKey, auditors: &[PublicKey]) {
        for k in std::iter::once(key).chain(auditors) {
            if self.records.contains_key(k) {
                self.at(*k).clean_steps = 0;
            }
        }
    }

    /// Found wrong: everything is lost, and the identity is refused from then on.
    fn refuse(&mut self, key: PublicKey) {
        self.awaiting.remove(&key);
        self.before_draws.remove(&key);
        self.drawn.remove(&key);
        let r = self.at(key);
        r.checks_failed += 1;
        r.flops = 0.0;
        r.pending_flops = 0.0;
        self.refused.insert(key);
    }

    /// Each identity's record.
    pub fn records(&self) -> &BTreeMap<PublicKey, Record> {
        &self.records
    }

    /// Whether a check found `key` wrong.
    pub fn is_refused(&self, key: &PublicKey) -> bool {
        self.refused.contains(key)
    }

    /// Whether `key` spent its rejections: [`MAX_REJECTED`] of its results or more were
    /// rejected, and more than were accepted. Such an identity takes no further part in the
    /// run (a restarted coordinator and `tessera verify` fold the same count from the log), so
    /// no identity can fill the log with rejections; an honest contributor's late results
    /// are far fewer than its accepted ones.
    pub fn rejections_spent(&self, key: &PublicKey) -> bool {
        self.records
            .get(key)
            .is_some_and(|r| r.rejected >= MAX_REJECTED && r.rejected > r.accepted)
    }

    /// The rounds of `key`'s latest updates a statistical check withheld, oldest first.
    pub fn outliers(&self, key: &PublicKey) -> &[u64] {
        self.outliers.get(key).map_or(&[], Vec::as_slice)
    }

    /// Distinct steps or rounds in which `key`'s work passed checks (its probation).
    pub fn clean_steps(&self, key: &PublicKey) -> u64 {
        self.records.get(key).map_or(0, |r| r.clean_steps)
    }
}

/// Rejected results after which an identity with fewer accepted ones is refused (see
/// [`Credits::rejections_spent`]).
pub const MAX_REJECTED: u64 = 64;

/// Per-identity record, kept across sessions and restarts: a fold of the run log (see
/// this module).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Native or browser (as last seen).
    pub kind: Option<ContributorKind>,
    /// Accepted units.
    pub accepted: u64,
    /// Rejected submissions.
    pub rejected: u64,
    /// Tokens in accepted units.
    pub tokens: u64,
    /// Credits: floating-point operations of verified work (estimated from the model shape:
    /// two per parameter per token forward, six forward and backward). Where the run checks
    /// work, accepted work waits in `pending_flops`; work drawn for a check is credited when
    /// the check passes, at its FLOPs over the rate it was drawn at, work not drawn never (and
    /// an auditor whose results agree is credited for the check it ran); a failed check takes
    /// everything.
    pub flops: f64,
    /// Accepted work awaiting its draw or its check.
    pub pending_flops: f64,
    /// Checks of its work passed.
    pub checks_passed: u64,
    /// Checks of its work failed.
    pub checks_failed: u64,
    /// Distinct steps or rounds in which checks of its work passed: its probation. A step
    /// thrown away and run again counts once, however often its checks ran, so an attacker
    /// cannot shorten its probation by getting steps discarded.
    pub clean_steps: u64,
}

#[cfg(test)]
#[path = "credits_tests.rs"]
mod tests;
