//! The held-out check of whole-model rounds: each update's loss gain per unit of norm on the
//! held-out sequences against the round's other updates' (a robust z-score: the median and
//! 1.4826 times the median absolute deviation), and what a low one leads to. Where the run
//! replays, an outlier is replayed before anything else (an honest update of atypical samples
//! can be one); where it does not, the statistic decides (`replica_checks.rs`).

use tessera_protocol::{PublicKey, Reason};

use super::context::Context;
use super::measure::Gains;
use super::replica_checks::median;
use super::Replicas;

/// How many spreads (robust standard deviations of the round's updates' held-out gains) below
/// the round's median update's held-out gain an update's may lie before it is refused.
pub(super) const HELD_OUT_Z: f64 = 4.0;

/// The least spread, as a share of the median held-out gain, where updates carry no private
/// state (dense sync, or units started fresh): a round of a few close updates does not make a
/// small difference count (an honest SparseLoCo slot was 4% under two close ones).
pub(super) const HELD_OUT_MIN_SPREAD: f64 = 0.05;

/// The least spread where updates carry each contributor's private error feedback (SparseLoCo
/// without fresh units): the residual of earlier rounds makes honest updates differ widely (an
/// honest one gained -0.0010 where the round's median gained 0.0185, late in a run), so only an
/// update that raises the held-out loss by about as much as the median update lowers it is
/// refused.
pub(super) const HELD_OUT_MIN_SPREAD_FEEDBACK: f64 = 0.5;

/// Statistical outliers (an update's held-out gain far below the round's, or its own-batch
/// gain under the round's floor) within [`OUTLIER_WINDOW`] rounds at which an identity is
/// refused; before that each is withheld (see [`refuses_outlier`]).
pub(super) const OUTLIER_STRIKES: usize = 3;

/// Rounds within which [`OUTLIER_STRIKES`] outliers refuse an identity.
pub(super) const OUTLIER_WINDOW: u64 = 10;

/// Whether an update that a statistical check (held-out or own-batch gain) finds an outlier
/// in `round` refuses its identity, given the rounds of its earlier withheld outliers
/// (`Credits::outliers`): at its [`OUTLIER_STRIKES`]th within [`OUTLIER_WINDOW`] rounds.
/// Before that the update is withheld (its slot runs again without it, on someone else) and
/// the identity is put on probation. This holds where updates carry private error feedback
/// (SparseLoCo without replays): there a statistic weighs one update against a round's few
/// others that differ widely, so honest updates fail it (a long honest run refused every one
/// of its three workers by round 55); an update that fails is never applied, so waiting for a
/// repeat costs the run nothing but the slot, and a worker that cheats every round it is
/// checked is refused at its third. Elsewhere (dense updates without replays) the honest
/// spread is narrow and an outlier refuses at once; with replays, an outlier is replayed.
pub(super) fn refuses_outlier(earlier: &[u64], round: u64) -> bool {
    let recent = earlier
        .iter()
        .filter(|&&r| r <= round && round - r < OUTLIER_WINDOW)
        .count();
    recent + 1 >= OUTLIER_STRIKES
}

/// Held-out scores kept for [`Core::held_out_scores`].
pub(super) const KEPT_SCORES: usize = 1024;

/// An update's held-out check: its loss gain per unit of norm on the held-out sequences
/// against the round's other updates'.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldOutScore {
    /// The round.
    pub round: u64,
    /// The update's slot.
    pub slot: u64,
    /// Whether the update was drawn for the round's checks (the own-batch check too); the
    /// others are measured for the round's median and held to the same bound.
    pub drawn: bool,
    /// Whose update.
    pub key: PublicKey,
    /// Its held-out loss gain per unit of norm.
    pub gain: f64,
    /// The median of the round's updates' gains.
    pub median: f64,
    /// Their spread: 1.4826 times the median absolute deviation (a standard deviation, were
    /// they normal), at least a share of the median (`HELD_OUT_MIN_SPREAD`, or
    /// `HELD_OUT_MIN_SPREAD_FEEDBACK` where updates carry private error feedback).
    pub spread: f64,
    /// How many spreads the gain lies above (positive) or below (negative) the median.
    pub z: f64,
}

/// The held-out scores of the updates among `measured` (none without held-out gains): each
/// gain against the median and the spread of every measured update's.
pub(super) fn held_out_scores(
    round: u64,
    measured: &[Gains],
    min_spread: f64,
) -> Vec<HeldOutScore> {
    let gains: Vec<f64> = measured.iter().filter_map(|m| m.held).collect();
    if gains.len() < 3 {
        return Vec::new();
    }
    let mid = median(&gains);
    let deviations: Vec<f64> = gains.iter().map(|g| (g - mid).abs()).collect();
    let spread = (1.4826 * median(&deviations))
        .max(min_spread * mid.abs())
        .max(f64::MIN_POSITIVE);
    measured
        .iter()
        .filter_map(|m| {
            let gain = m.held?;
            Some(HeldOutScore {
                round,
                slot: m.slot,
                drawn: m.drawn,
                key: m.key,
                gain,
                median: mid,
                spread,
                z: (gain - mid) / spread,
            })
        })
        .collect()
}

impl HeldOutScore {
    /// Whether the statistic finds this update an outlier: more than [`HELD_OUT_Z`] spreads
    /// below the round's median. Where updates carry private error feedback (`feedback`), only
    /// in a round whose median update lowers the held-out loss: once the run overfits its data,
    /// every honest update raises it, by amounts a few times apart from one contributor's
    /// residual to another's (a 100-round SparseLoCo run on lavapipe judged 4 of 172 honest
    /// updates outliers from round 47 on, and stalled on a slot all its workers were withheld
    /// from), and the statistic cannot tell a memorizer from them. Such a round's scores are
    /// kept and shown; its updates stand or fall by the other checks.
    pub(super) fn outlier(&self, feedback: bool) -> bool {
        self.z < -HELD_OUT_Z && !(feedback && self.median <= 0.0)
    }

    /// Why an update with this score is refused, where the statistic decides.
    pub(super) fn refusal(&self) -> Reason {
        Reason::new(
            tessera_protocol::Code::HeldOut,
            format!(
                "applied alone it lowers the held-out loss by {:.4} per unit of norm, where the round's median update lowers it by {:.4}: {:.1} spreads of the round's updates ({:.4}) below, beyond the {HELD_OUT_Z} allowed",
                self.gain,
                self.median,
                -self.z,
                self.spread
            ),
        )
    }
}

impl Replicas {
    /// Where the run replays, a held-out outlier is not refused on the statistic alone: an
    /// honest update of atypical samples can lie far below the round's median (a long honest
    /// run on lavapipe had 6 of 717 such, `bench --bin false_positives`). It is replayed
    /// instead, and one whose replay agrees is the slot's own update, whatever its held-out
    /// gain. True when replays were drawn for this (the round waits for them).
    pub(super) fn replay_held_out_outliers(
        &mut self,
        cx: &Context,
        scores: &[HeldOutScore],
        done: &[(u64, u64, PublicKey, f64)],
        failed: &[(u64, PublicKey, Reason)],
    ) -> bool {
        if !self.replays_on(cx) {
            return false;
        }
        let mut drew = false;
        // Runs that replay carry no private error feedback.
        for score in scores.iter().filter(|s| s.outlier(false)) {
            let slot = score.slot;
            if self.round.verified.contains(&slot) || failed.iter().any(|f| f.0 == slot) {
                continue;
            }
            let Some(&(_, unit, key, _)) = done.iter().find(|d| d.0 == slot) else {
                continue;
            };
            // Replayed once already and not verified (its replay ended disputed): the
            // statistic decides.
            if !self.round.held_out_replayed.insert(unit) && !self.round.replays.has(slot) {
                continue;
            }
            self.round.drawn.insert(slot);
            if !self.round.replays.has(slot) {
                tracing::info!(
                    round = score.round,
                    slot,
                    z = score.z,
                    "held-out outlier: replaying it"
                );
                self.round.replays.draw(slot, unit, key);
            }
            drew = true;
        }
        drew
    }
}

#[cfg(test)]
mod tests {
    use super::{refuses_outlier, OUTLIER_STRIKES, OUTLIER_WINDOW};

    #[test]
    fn an_identity_is_refused_at_its_third_outlier_within_the_window_and_not_before() {
        assert_eq!((OUTLIER_STRIKES, OUTLIER_WINDOW), (3, 10));
        assert!(!refuses_outlier(&[], 5), "a first outlier is withheld");
        assert!(!refuses_outlier(&[5], 6), "a second too");
        assert!(
            refuses_outlier(&[5, 6], 7),
            "the third within 10 rounds refuses"
        );
        assert!(refuses_outlier(&[0, 9], 9));
        // Outliers that lie 10 rounds back or more no longer count.
        assert!(!refuses_outlier(&[0, 9], 10));
        assert!(!refuses_outlier(&[1, 2, 3], 30));
        // A round the log has not reached (nothing could write one) counts for nothing.
        assert!(!refuses_outlier(&[40, 41], 30));
    }
}
