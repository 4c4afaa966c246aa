//! The one rule that settles a check, for whole-model replays (`replays.rs`) and pipeline
//! audits (`pipeline/audit.rs`) alike: a checked result, an auditor's answer compared with it
//! and, once the first auditor disagreed, a third party's answer compared with both. The
//! comparisons are the regimes' own (updates and loss sums, or unit results and gradient
//! sums); this function only decides who is right, who is credited and who is found wrong.
//! How each regime words the outcome in its log entries stays with the regime.

use tessera_protocol::log::CheckOutcome;
use tessera_protocol::{Code, PublicKey, Reason};

/// The answers a check had after its first auditor disagreed with the checked result, by the
/// side each took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Every auditor that answered, in order.
    pub order: Vec<PublicKey>,
    /// Those whose answers agree with the checked result.
    pub with_checked: Vec<PublicKey>,
    /// Those whose answers agree with the first disagreeing answer (its author first), not
    /// with the checked result.
    pub dissent: Vec<PublicKey>,
}

impl Tally {
    /// Whether an auditor disagreed yet (the check is past its first answer).
    pub fn disagreed(&self) -> bool {
        !self.dissent.is_empty()
    }
}

/// How a check stands after an auditor's answer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Ruling {
    /// Not decided: another auditor answers next. `tally` is the check's new tally; `keep`
    /// whether this answer is the first disagreeing one (which later answers are compared
    /// with); `why` the mismatch, for the trace.
    AskAnother {
        /// The tally with this answer.
        tally: Tally,
        /// Whether to keep this answer as the dissent's.
        keep: bool,
        /// How this answer differs from the checked result.
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
    /// Every auditor that answered, in order.
    pub auditors: Vec<PublicKey>,
    /// The auditors credited with the recomputation: those whose answers agree with the
    /// outcome. None when no side reached the run's agreement.
    pub credited: Vec<PublicKey>,
}

/// What a decided check found.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Found {
    /// The first auditor agrees with the checked result.
    Passed,
    /// `agree` auditors agree with the checked result and none with the first disagreeing
    /// answer: every auditor that disagreed with it is wrong.
    AuditorWrong {
        /// The auditors found wrong.
        wrong: Vec<PublicKey>,
    },
    /// `agree` auditors agree with each other, none with the checked result: it is wrong.
    CheckedWrong {
        /// How the checked result differs from the last agreeing auditor's answer.
        why: String,
    },
    /// Auditors agree with each side, or the most auditors a check asks ([`max_auditors`])
    /// answered and no side was unanimous: nobody can say who is wrong. The regimes log it as
    /// disputed (refusing on a split vote would let wrong auditors, colluding or not, get
    /// honest work refused); nobody is credited.
    NoneAgree {
        /// How the checked result differs from the last answer.
        why: String,
    },
}

/// The most auditors one check asks, for a run that refuses on `agree` agreeing answers: as
/// many as let either side reach `agree` with one answer to spare.
pub(crate) fn max_auditors(agree: usize) -> usize {
    2 * agree.max(1) + 1
}

/// Settles a check after `auditor` answered, in a run that refuses only on `agree` agreeing
/// auditors. `with_checked` is whether its answer agrees with the checked result (or how it
/// differs); `with_dissent`, once an auditor disagreed, whether it agrees with the first
/// disagreeing answer; `tally` the answers before.
///
/// The first answer that agrees with the checked result passes it. Once one disagreed, more
/// auditors answer, and a side is found wrong only by a unanimous other side: the checked
/// result once `agree` auditors agree with the first disagreeing answer and none with the
/// checked result; the auditors that disagreed once `agree` agree with the checked result and
/// none with the first disagreeing answer. An answer on each side makes the check disputed, and
/// so does reaching [`max_auditors`]. Honest work is so refused only when the first `agree`
/// auditors drawn are all wrong alike (a colluding share `f` of the candidates: `f^agree`), and
/// an honest auditor only when the `agree` drawn after it all side with a wrong result.
pub(crate) fn arbitrate(
    auditor: PublicKey,
    with_checked: Result<(), String>,
    with_dissent: Option<Result<(), String>>,
    tally: &Tally,
    agree: usize,
) -> Ruling {
    let agree = agree.max(1);
    let mut t = tally.clone();
    t.order.push(auditor);
    let decided = |found, t: Tally, credited| {
        Ruling::Decided(Decision {
            found,
            auditors: t.order,
            credited,
        })
    };
    let why = match (with_checked, with_dissent) {
        (Ok(()), None) => return decided(Found::Passed, t, vec![auditor]),
        (Ok(()), Some(_)) => {
            t.with_checked.push(auditor);
            if t.dissent.len() > 1 {
                return decided(
                    Found::NoneAgree {
                        why: "auditors agree with each side".into(),
                    },
                    t,
                    Vec::new(),
                );
            }
            if t.with_checked.len() >= agree {
                let wrong: Vec<PublicKey> = t
                    .order
                    .iter()
                    .filter(|k| !t.with_checked.contains(k))
                    .copied()
                    .collect();
                let credited = t.with_checked.clone();
                return decided(Found::AuditorWrong { wrong }, t, credited);
            }
            String::from("this auditor agrees with the checked result")
        }
        (Err(why), None) | (Err(why), Some(Ok(()))) => {
            let keep = t.dissent.is_empty();
            t.dissent.push(auditor);
            if !t.with_checked.is_empty() && t.dissent.len() > 1 {
                return decided(
                    Found::NoneAgree {
                        why: format!("auditors agree with each side: {why}"),
                    },
                    t,
                    Vec::new(),
                );
            }
            if t.dissent.len() >= agree {
                let credited = t.dissent.clone();
                return decided(Found::CheckedWrong { why }, t, credited);
            }
            if keep {
                return Ruling::AskAnother {
                    tally: t,
                    keep: true,
                    why,
                };
            }
            why
        }
        (Err(why), Some(Err(_))) => why,
    };
    if t.order.len() >= max_auditors(agree) {
        return decided(Found::NoneAgree { why }, t, Vec::new());
    }
    Ruling::AskAnother {
        tally: t,
        keep: false,
        why,
    }
}

/// The auditors of an `AuditorFailed` check that it found wrong: those not credited.
pub(crate) fn wrong_auditors(auditors: &[PublicKey], credited: &[PublicKey]) -> Vec<PublicKey> {
    auditors
        .iter()
        .filter(|k| !credited.contains(k))
        .copied()
        .collect()
}

/// Identities' short names, for a reason's text.
pub(crate) fn fingerprints(keys: &[PublicKey]) -> String {
    keys.iter()
        .map(|k| k.fingerprint())
        .collect::<Vec<_>>()
        .join(", ")
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

    /// Runs a check of `agree` through answers (agrees with the checked result, agrees with
    /// the first dissent), auditor `i` being `key(i + 1)`; the ruling after the last.
    fn run(agree: usize, answers: &[(bool, bool)]) -> Ruling {
        let mut tally = Tally::default();
        let mut last = None;
        for (i, &(checked, dissent)) in answers.iter().enumerate() {
            assert!(last.is_none(), "decided before answer {i}: {last:?}");
            let with_checked = if checked { Ok(()) } else { off() };
            let with_dissent = tally
                .disagreed()
                .then(|| if dissent { Ok(()) } else { off() });
            match arbitrate(key(i as u8 + 1), with_checked, with_dissent, &tally, agree) {
                Ruling::AskAnother { tally: t, keep, .. } => {
                    assert_eq!(keep, !tally.disagreed() && !checked);
                    tally = t;
                }
                Ruling::Decided(d) => last = Some(d),
            }
        }
        match last {
            Some(d) => Ruling::Decided(d),
            None => Ruling::AskAnother {
                tally,
                keep: false,
                why: String::new(),
            },
        }
    }

    fn decision(r: Ruling) -> Decision {
        match r {
            Ruling::Decided(d) => d,
            other => panic!("undecided: {other:?}"),
        }
    }

    #[test]
    fn an_agreeing_first_auditor_passes_the_check_and_is_credited() {
        for agree in 1..4 {
            let d = decision(run(agree, &[(true, false)]));
            assert_eq!(d.found, Found::Passed);
            assert_eq!((d.auditors, d.credited), (vec![key(1)], vec![key(1)]));
        }
    }

    #[test]
    fn a_result_is_refused_only_once_agree_auditors_agree_against_it() {
        // One disagreeing auditor is enough only where the run says so.
        let d = decision(run(1, &[(false, false)]));
        assert!(matches!(d.found, Found::CheckedWrong { .. }));
        assert_eq!(d.credited, vec![key(1)]);
        // Two (the default): the first and a second that agrees with it.
        assert!(matches!(
            run(2, &[(false, false)]),
            Ruling::AskAnother { .. }
        ));
        let d = decision(run(2, &[(false, false), (false, true)]));
        assert!(matches!(d.found, Found::CheckedWrong { .. }));
        assert_eq!(d.credited, vec![key(1), key(2)]);
        // Three: an auditor that agrees with neither does not count.
        let d = decision(run(
            3,
            &[(false, false), (false, false), (false, true), (false, true)],
        ));
        assert!(matches!(d.found, Found::CheckedWrong { .. }));
        assert_eq!(d.auditors, vec![key(1), key(2), key(3), key(4)]);
        assert_eq!(d.credited, vec![key(1), key(3), key(4)]);
    }

    #[test]
    fn auditors_are_found_wrong_only_once_agree_auditors_side_with_the_checked_result() {
        let (c, d, n) = ((true, false), (false, true), (false, false));
        // Today's three-party case with an agreement of two: the third alone does not refuse
        // the first; a fourth on its side does, with every other auditor that disagreed.
        assert!(matches!(run(2, &[n, c]), Ruling::AskAnother { .. }));
        let r = decision(run(2, &[n, c, n, c]));
        assert_eq!(
            r.found,
            Found::AuditorWrong {
                wrong: vec![key(1), key(3)]
            }
        );
        assert_eq!(r.credited, vec![key(2), key(4)]);
        // An answer on each side: disputed, whichever comes first.
        for answers in [&[n, c, d][..], &[n, d, c][..]] {
            let r = run(3, answers);
            let r = decision(r);
            assert!(matches!(r.found, Found::NoneAgree { .. }), "{answers:?}");
            assert!(r.credited.is_empty());
        }
        // With an agreement of one, the first auditor that disagrees decides.
        let r = decision(run(1, &[n]));
        assert!(matches!(r.found, Found::CheckedWrong { .. }));
    }

    #[test]
    fn a_check_whose_sides_never_reach_the_agreement_is_disputed_after_the_most_auditors() {
        for agree in 1..5usize {
            assert_eq!(max_auditors(agree), 2 * agree + 1);
        }
        // With an agreement of three: one on the checked side, the rest on neither: seven.
        let (c, n) = ((true, false), (false, false));
        let r = decision(run(3, &[n, c, n, n, n, n, n]));
        assert!(matches!(r.found, Found::NoneAgree { .. }));
        assert_eq!(r.auditors.len(), 7);
        assert!(r.credited.is_empty());
        assert!(matches!(
            run(3, &[n, c, n, n, n, n]),
            Ruling::AskAnother { .. }
        ));
        // With an agreement of two: five.
        let r = decision(run(2, &[n, c, n, n, n]));
        assert!(matches!(r.found, Found::NoneAgree { .. }));
    }

    /// The chance that a check of an honest result refuses it, when each auditor drawn is,
    /// independently, one of a colluding group with probability `f` that answers alike and
    /// wrong, and the others answer right: the first `agree` auditors must all collude (an
    /// honest first answer passes the check, a later one makes it disputed).
    fn framed(f: f64, agree: usize) -> f64 {
        f.powi(agree as i32)
    }

    #[test]
    fn the_chance_to_frame_honest_work_falls_with_the_agreement() {
        // Simulated with the rule itself against the closed form, for shares of colluders of
        // 20% and 40%.
        for (f, agree) in [
            (0.2, 1),
            (0.2, 2),
            (0.2, 3),
            (0.4, 2),
            (0.4, 3),
            (0.4, 5),
            (0.4, 8),
        ] {
            let mut rng = tessera_compute::reference::model::SplitMix(7);
            let trials = 20_000;
            let mut refused = 0;
            for _ in 0..trials {
                let mut tally = Tally::default();
                let outcome = loop {
                    // A colluder disagrees with the checked result and agrees with the first
                    // colluder; an honest auditor agrees with the checked result.
                    let colluder = (rng.next_u64() % 1_000_000) as f64 / 1e6 < f;
                    let with_checked = if colluder { off() } else { Ok(()) };
                    let with_dissent =
                        tally
                            .disagreed()
                            .then(|| if colluder { Ok(()) } else { off() });
                    match arbitrate(key(1), with_checked, with_dissent, &tally, agree) {
                        Ruling::AskAnother { tally: t, .. } => tally = t,
                        Ruling::Decided(d) => break d.found,
                    }
                };
                refused += u32::from(matches!(outcome, Found::CheckedWrong { .. }));
            }
            let seen = refused as f64 / trials as f64;
            let want = framed(f, agree);
            println!("colluders {f}: agreement {agree}: honest work refused in {seen:.4} of checks (closed form {want:.4})");
            let sd = (want * (1.0 - want) / trials as f64).sqrt();
            assert!((seen - want).abs() <= 4.0 * sd + 1e-3, "{seen} {want}");
        }
    }
}
