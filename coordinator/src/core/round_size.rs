//! How many replica slots a whole-model round has, and who may hold one: pure functions of
//! the run's settings and the round's contributors, so that the rule is tested on its own.
//!
//! A round opens with the run's least count of slots (`RunSpec::replicas`). While it still
//! computes (some slot not yet accepted, the round's deadline not passed), every ready
//! contributor that holds no unit of it gets a slot of its own, up to the run's most
//! (`RunSpec::max_replicas`): nobody whose budget fits sits idle while others train. In a run
//! that checks work, identities still on probation (fewer clean rounds than the checks'
//! `halving`) hold at most `ChecksSpec::probation_share` of a round once the run has at
//! least its least count of established contributors, so fresh keys cannot fill a round or
//! outvote its medians; a younger run, whose contributors are all new, is not capped.

/// A share in thousandths (`0.4` is 400), so that the cap is computed in integers.
pub(super) fn permille(share: f64) -> u64 {
    ((share * 1000.0).round() as u64).clamp(1, 1000)
}

/// The most identities on probation a round may hold beside `veterans` established ones
/// (ready or holding a slot of the round): `None` (no cap) while the established ones are
/// fewer than `least` or the share is whole; else the largest `n` with
/// `n <= share * (veterans + n)`.
pub(super) fn newcomer_cap(veterans: u64, least: u64, share_permille: u64) -> Option<u64> {
    if veterans < least || share_permille >= 1000 {
        return None;
    }
    Some(veterans.saturating_mul(share_permille) / (1000 - share_permille))
}

/// Why a ready contributor gets no slot of the round in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NoSlot {
    /// The round is at the run's most replicas.
    Most(u64),
    /// Identities on probation hold their share of the round already.
    Probation {
        /// How many they hold.
        held: u64,
        /// Established identities beside them.
        veterans: u64,
    },
    /// The round no longer takes new slots: every slot is in, or its deadline passed.
    Closing,
}

impl NoSlot {
    /// What the contributor is told.
    pub(super) fn text(self) -> String {
        match self {
            NoSlot::Most(n) => format!(
                "this round is at the run's most replicas ({n}): your work starts with the next round"
            ),
            NoSlot::Probation { held, veterans } => format!(
                "identities on probation hold their share of this round ({held} beside {veterans} established): your work starts with a later round"
            ),
            NoSlot::Closing => {
                "this round is closing: your work starts with the next round".to_string()
            }
        }
    }
}

/// Whether a round of `slots` slots may grow by one more: `Err` says why not.
pub(super) fn may_grow(slots: u64, most: u64, computing: bool) -> Result<(), NoSlot> {
    if !computing {
        return Err(NoSlot::Closing);
    }
    if slots >= most {
        return Err(NoSlot::Most(most));
    }
    Ok(())
}

/// Whether one more identity on probation may hold a slot of a round where `held` of them
/// already do beside `veterans` established ones.
pub(super) fn newcomer_may_join(
    held: u64,
    veterans: u64,
    least: u64,
    share_permille: u64,
) -> Result<(), NoSlot> {
    match newcomer_cap(veterans, least, share_permille) {
        Some(cap) if held >= cap => Err(NoSlot::Probation { held, veterans }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_young_run_is_not_capped_and_an_established_one_keeps_newcomers_a_minority() {
        // Fewer established contributors than the run's least count: no cap.
        assert_eq!(newcomer_cap(0, 3, 400), None);
        assert_eq!(newcomer_cap(2, 3, 400), None);
        // 0.4: two newcomers for three established ones, four for six.
        assert_eq!(newcomer_cap(3, 3, 400), Some(2));
        assert_eq!(newcomer_cap(6, 3, 400), Some(4));
        assert_eq!(newcomer_cap(4, 3, 400), Some(2));
        // At the cap newcomers hold at most the share, one more would exceed it.
        for v in 3..200u64 {
            let n = newcomer_cap(v, 3, 400).unwrap();
            assert!(n * 1000 <= 400 * (v + n), "{v} veterans, {n} newcomers");
            assert!((n + 1) * 1000 > 400 * (v + n + 1), "{v} veterans, {n} + 1");
        }
        // A whole share caps nothing; a tiny one admits none beside few veterans.
        assert_eq!(newcomer_cap(5, 3, 1000), None);
        assert_eq!(newcomer_cap(5, 3, 1), Some(0));
        assert_eq!(permille(0.4), 400);
        assert_eq!(permille(1e-9), 1);
        assert_eq!(permille(1.0), 1000);
    }

    #[test]
    fn a_round_grows_while_it_computes_and_below_its_most() {
        assert_eq!(may_grow(3, 16, true), Ok(()));
        assert_eq!(may_grow(16, 16, true), Err(NoSlot::Most(16)));
        assert_eq!(may_grow(3, 16, false), Err(NoSlot::Closing));
        assert_eq!(newcomer_may_join(1, 3, 3, 400), Ok(()));
        assert_eq!(
            newcomer_may_join(2, 3, 3, 400),
            Err(NoSlot::Probation {
                held: 2,
                veterans: 3
            })
        );
        assert_eq!(newcomer_may_join(9, 2, 3, 400), Ok(()));
        assert!(NoSlot::Most(16).text().contains("16"));
    }
}
