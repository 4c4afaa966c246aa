//! The one rule that settles a check, for whole-model replays (`replays.rs`) and pipeline
//! audits (`pipeline/audit.rs`) alike: a checked result, an auditor's answer compared with it
//! and, once the first auditor disagreed, a third party's answer compared with both. The
//! comparisons are the regimes' own (updates and loss sums, or unit results and gradient
//! sums); this function only decides who is right, who is credited and who is found wrong.
//! How each regime words the outcome in its log entries stays with the regime.

use tessera_protocol::log::CheckOutcome;
use tessera_protocol::{Code, PublicKey, Reason};

/// How a check stands after an auditor's answer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Ruling {
    /// The first auditor disagrees with the checked result: a third party decides. `why` is the
    /// mismatch, for the trace.
    AskThird {
        /// How the first auditor's answer differs from the checked result.
        why: String,
    },
    /// The check is decided.
    Decided(Decision),
}

/// A decided check: what was found, who audited, who is credited for the recomputation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decision {
    /// What the check found.
    pub found: Found,
    /// The auditors whose answers decided it, first auditor first.
    pub auditors: Vec<PublicKey>,
    /// The auditors credited with the recomputation: those whose answers agree with the
    /// outcome. None when no two answers agree.
    pub credited: Vec<PublicKey>,
}

/// What a decided check found.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Found {
    /// The auditor agrees with the checked result.
    Passed,
    /// The third party agrees with the checked result, not with the first auditor: the first
    /// auditor is wrong.
    AuditorWrong {
        /// The first auditor.
        auditor: PublicKey,
    },
    /// The third party agrees with the first auditor: the checked result is wrong.
    CheckedWrong {
        /// How the checked result differs from the third party's answer.
        why: String,
    },
    /// The third party agrees with neither: no two answers agree, so nobody can say who is
    /// wrong. The regimes log it as disputed (refusing the checked result here would let any
    /// two wrong auditors, colluding or not, get honest work refused); nobody is credited.
    NoneAgree {
        /// How the checked result differs from the third party's answer.
        why: String,
    },
}

/// Settles a check after `auditor` answered. `with_checked` is whether its answer agrees with
/// the checked result (or how it differs); `first` is, on a third party's turn, the first
/// auditor and whether `auditor`'s answer agrees with the first auditor's.
pub(crate) fn arbitrate(
    auditor: PublicKey,
    with_checked: Result<(), String>,
    first: Option<(PublicKey, Result<(), String>)>,
) -> Ruling {
    let decided = |found, auditors, credited| {
        Ruling::Decided(Decision {
            found,
            auditors,
            credited,
        })
    };
    match (first, with_checked) {
        (None, Ok(())) => decided(Found::Passed, vec![auditor], vec![auditor]),
        (None, Err(why)) => Ruling::AskThird { why },
        (Some((first, _)), Ok(())) => decided(
            Found::AuditorWrong { auditor: first },
            vec![first, auditor],
            vec![auditor],
        ),
        (Some((first, Ok(()))), Err(why)) => decided(
            Found::CheckedWrong { why },
            vec![first, auditor],
            vec![first, auditor],
        ),
        (Some((first, Err(_))), Err(why)) => {
            decided(Found::NoneAgree { why }, vec![first, auditor], Vec::new())
        }
    }
}

/// How a check ends when nobody is left to run it: skipped (`NoAuditor`, with `skipped`) while
/// no auditor has disagreed yet, disputed (`Disputed`, with `disputed`) once the first did.
pub(crate) fn nobody_left(first_disagreed: bool, skipped: &str, disputed: &str) -> CheckOutcome {
    if first_disagreed {
        CheckOutcome::Disputed(Reason::new(Code::Disputed, disputed))
    } else {
        CheckOutcome::Skipped(Reason::new(Code::NoAuditor, skipped))
    }
}

/// How many times a step (pipeline) or a slot (whole-model round) whose checks end disputed
/// runs again; after that the work stands unverified: nobody is refused, its parties earn no
/// verified credit for it and are on probation (`credits.rs`), so that a pair of disagreeing
/// identities cannot make the run repeat the same work without end.
pub(crate) const MAX_DISPUTED_RERUNS: u32 = 2;

/// What comes after a step's or a slot's checks, given whether one found something (`failed`:
/// someone was found wrong, or the checks ended disputed), whether every such finding is a
/// dispute, and how many times the work already ran again for disputes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterChecks {
    /// The work stands.
    Stands,
    /// The work stands, unverified: its checks stayed disputed after every re-run.
    StandsDisputed,
    /// The work runs again.
    RunsAgain,
}

/// The pure decision of [`AfterChecks`].
pub(crate) fn after_checks(failed: bool, only_disputed: bool, reruns: u32) -> AfterChecks {
    match (failed, only_disputed) {
        (false, _) => AfterChecks::Stands,
        (true, true) if reruns >= MAX_DISPUTED_RERUNS => AfterChecks::StandsDisputed,
        (true, _) => AfterChecks::RunsAgain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::Identity;

    #[test]
    fn disputed_work_runs_again_a_bounded_number_of_times_and_found_wrong_work_always() {
        assert_eq!(after_checks(false, false, 0), AfterChecks::Stands);
        assert_eq!(after_checks(false, false, 9), AfterChecks::Stands);
        for reruns in 0..MAX_DISPUTED_RERUNS {
            assert_eq!(after_checks(true, true, reruns), AfterChecks::RunsAgain);
        }
        assert_eq!(
            after_checks(true, true, MAX_DISPUTED_RERUNS),
            AfterChecks::StandsDisputed
        );
        // Someone found wrong: whatever the disputes, the work runs again.
        assert_eq!(after_checks(true, false, 99), AfterChecks::RunsAgain);
    }

    fn key(seed: u8) -> PublicKey {
        Identity::from_seed([seed; 32]).public()
    }

    fn off() -> Result<(), String> {
        Err("1e-2 apart".into())
    }

    #[test]
    fn with_nobody_left_a_check_is_skipped_until_an_auditor_disagreed() {
        let skipped = nobody_left(false, "no one", "no third");
        assert!(matches!(skipped, CheckOutcome::Skipped(r) if r.code == Code::NoAuditor));
        let disputed = nobody_left(true, "no one", "no third");
        assert!(matches!(disputed, CheckOutcome::Disputed(r) if r.code == Code::Disputed));
    }

    #[test]
    fn an_agreeing_auditor_passes_the_check_and_is_credited() {
        let a = key(1);
        let r = arbitrate(a, Ok(()), None);
        assert_eq!(
            r,
            Ruling::Decided(Decision {
                found: Found::Passed,
                auditors: vec![a],
                credited: vec![a],
            })
        );
    }

    #[test]
    fn a_disagreeing_first_auditor_calls_a_third_party() {
        let r = arbitrate(key(1), off(), None);
        assert_eq!(
            r,
            Ruling::AskThird {
                why: "1e-2 apart".into()
            }
        );
    }

    #[test]
    fn a_third_party_agreeing_with_the_checked_result_finds_the_first_auditor_wrong() {
        let (first, third) = (key(1), key(2));
        // Whether the third agrees with the first does not matter once it agrees with the
        // checked result.
        for with_first in [Ok(()), off()] {
            let r = arbitrate(third, Ok(()), Some((first, with_first)));
            assert_eq!(
                r,
                Ruling::Decided(Decision {
                    found: Found::AuditorWrong { auditor: first },
                    auditors: vec![first, third],
                    credited: vec![third],
                })
            );
        }
    }

    #[test]
    fn a_third_party_agreeing_with_the_first_auditor_finds_the_checked_result_wrong() {
        let (first, third) = (key(1), key(2));
        let r = arbitrate(third, off(), Some((first, Ok(()))));
        assert_eq!(
            r,
            Ruling::Decided(Decision {
                found: Found::CheckedWrong {
                    why: "1e-2 apart".into()
                },
                auditors: vec![first, third],
                credited: vec![first, third],
            })
        );
    }

    #[test]
    fn three_answers_that_all_differ_refuse_the_checked_result_and_credit_nobody() {
        let (first, third) = (key(1), key(2));
        let r = arbitrate(third, off(), Some((first, off())));
        assert_eq!(
            r,
            Ruling::Decided(Decision {
                found: Found::NoneAgree {
                    why: "1e-2 apart".into()
                },
                auditors: vec![first, third],
                credited: Vec::new(),
            })
        );
    }
}
