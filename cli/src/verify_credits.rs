//! `tessera verify`'s credits: recomputes every identity's credits from the verified log (the
//! coordinator's own fold, [`Credits`]) and, for a live coordinator, holds the credits its
//! status shows to what its log gives at the same head.

use anyhow::{bail, Result};
use tessera_coordinator::core::credits::Credits;
use tessera_coordinator::server::CreditLine;
use tessera_protocol::log::SignedEntry;

/// The credits the log up to entry `upto` (all of it with `None`) makes.
pub fn recompute(entries: &[SignedEntry], upto: Option<u64>) -> Credits {
    Credits::from_log(
        entries
            .iter()
            .filter(|e| upto.is_none_or(|u| e.entry.index <= u))
            .map(|e| &e.entry.event),
    )
}

/// The totals, and with `each` one line per identity, most credited first.
pub fn print(credits: &Credits, each: bool) {
    let mut lines: Vec<CreditLine> = credits
        .records()
        .iter()
        .map(|(k, r)| CreditLine::of(k, r, credits.is_refused(k)))
        .collect();
    lines.sort_by(|a, b| b.credits.total_cmp(&a.credits).then(a.key.cmp(&b.key)));
    let total: f64 = lines.iter().map(|l| l.credits).sum();
    println!(
        "credits recomputed from the log: {} identities, {total:.3} GFLOP verified, {} refused{}",
        lines.len(),
        lines.iter().filter(|l| l.refused).count(),
        if each { "" } else { " (--credits lists them)" }
    );
    for l in lines.iter().filter(|_| each) {
        println!(
            "  {}  {:>14.3} GFLOP verified  {:>12.3} pending  {:>5} accepted  {:>4} rejected  checks {}/{}{}",
            &l.key[..16.min(l.key.len())],
            l.credits,
            l.pending_credits,
            l.accepted,
            l.rejected,
            l.checks_passed,
            l.checks_passed + l.checks_failed,
            if l.refused { "  REFUSED" } else { "" }
        );
    }
}

/// What `/api/status` claims: the log head it reflects and the credits.
#[derive(Debug, serde::Deserialize)]
pub struct Claimed {
    /// Index of the last log entry the status reflects.
    pub log_head: u64,
    /// Every identity's credits.
    pub credits: Vec<CreditLine>,
}

/// One page of the status, as far as credits go.
#[derive(Debug, serde::Deserialize)]
struct ClaimedPage {
    log_head: u64,
    credits: Vec<CreditLine>,
    #[serde(default)]
    next: Option<usize>,
}

/// Times the pages are read again when the status was rebuilt between two of them.
const PAGE_TRIES: usize = 20;

/// Reads what a coordinator's status claims, every page of it, all from one build of the
/// status (the same log head on each; read again from the first page when it moved).
pub fn fetch_claimed(base: &str) -> Result<Claimed> {
    let base = base.trim_end_matches('/');
    let page = |from: usize| -> Result<ClaimedPage> {
        let url = format!("{base}/api/status?from={from}");
        crate::bounded_json::get_json(&url, "a page of credits with a log head")
    };
    'tries: for _ in 0..PAGE_TRIES {
        let first = page(0)?;
        let mut claimed = Claimed {
            log_head: first.log_head,
            credits: first.credits,
        };
        let mut next = first.next;
        while let Some(from) = next {
            let p = page(from)?;
            if p.log_head != claimed.log_head {
                continue 'tries;
            }
            claimed.credits.extend(p.credits);
            next = p.next;
        }
        return Ok(claimed);
    }
    bail!(
        "{base}'s status changed between its pages {PAGE_TRIES} times in a row; try again when the run is quieter"
    )
}

/// Holds the claimed credits to the log: every identity's line must be exactly what the log
/// up to the claimed head gives, and no identity may be left out.
pub fn check_claimed(entries: &[SignedEntry], claimed: &Claimed) -> Result<usize> {
    if !entries.iter().any(|e| e.entry.index == claimed.log_head) {
        bail!(
            "the coordinator's status reflects log entry {}, which its log does not hold",
            claimed.log_head
        );
    }
    let credits = recompute(entries, Some(claimed.log_head));
    let mut expected: Vec<CreditLine> = credits
        .records()
        .iter()
        .map(|(k, r)| CreditLine::of(k, r, credits.is_refused(k)))
        .collect();
    let mut shown = claimed.credits.clone();
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    shown.sort_by(|a, b| a.key.cmp(&b.key));
    for want in &expected {
        match shown.iter().find(|l| l.key == want.key) {
            None => bail!(
                "the coordinator's status leaves out {}, whom its log (up to entry {}) credits",
                want.key,
                claimed.log_head
            ),
            Some(got) if got != want => bail!(
                "the coordinator's status shows {} with {:?}, but its log up to entry {} gives {:?}",
                want.key,
                got,
                claimed.log_head,
                want
            ),
            Some(_) => {}
        }
    }
    if let Some(extra) = shown
        .iter()
        .find(|l| !expected.iter().any(|w| w.key == l.key))
    {
        bail!(
            "the coordinator's status credits {}, whom its log (up to entry {}) does not",
            extra.key,
            claimed.log_head
        );
    }
    Ok(expected.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::log::{CheckOutcome, LogEvent, LogWriter};
    use tessera_protocol::Identity;

    fn log() -> Vec<SignedEntry> {
        let id = Identity::from_seed([1; 32]);
        let (a, b) = (
            Identity::from_seed([2; 32]).public(),
            Identity::from_seed([3; 32]).public(),
        );
        let mut w = LogWriter::default();
        let accepted = |key, unit| LogEvent::Accepted {
            key,
            unit,
            seq: unit,
            result: [0; 32],
            tokens: 64,
            flops: 3e9,
            pending: true,
        };
        [
            accepted(a, 1),
            accepted(b, 2),
            LogEvent::Checked {
                key: a,
                step: 0,
                auditors: vec![b],
                outcome: CheckOutcome::Passed,
                flops: 1e9,
                credited: vec![b],
            },
        ]
        .into_iter()
        .map(|e| w.append(&id, 0, e))
        .collect()
    }

    fn claims(entries: &[SignedEntry], upto: u64) -> Claimed {
        let c = recompute(entries, Some(upto));
        Claimed {
            log_head: upto,
            credits: c
                .records()
                .iter()
                .map(|(k, r)| CreditLine::of(k, r, c.is_refused(k)))
                .collect(),
        }
    }

    #[test]
    fn claims_are_held_to_the_log_at_their_head() {
        let entries = log();
        assert_eq!(check_claimed(&entries, &claims(&entries, 2)).unwrap(), 2);
        // An earlier head is judged by the log up to it.
        assert_eq!(check_claimed(&entries, &claims(&entries, 1)).unwrap(), 2);

        let mut inflated = claims(&entries, 2);
        inflated.credits[0].credits += 1.0;
        let err = check_claimed(&entries, &inflated).unwrap_err().to_string();
        assert!(
            err.contains("shows") && err.contains("up to entry 2"),
            "{err}"
        );

        let mut early = claims(&entries, 1);
        early.log_head = 2;
        assert!(check_claimed(&entries, &early).is_err(), "stale credits");

        let mut dropped = claims(&entries, 2);
        dropped.credits.pop();
        let err = check_claimed(&entries, &dropped).unwrap_err().to_string();
        assert!(err.contains("leaves out"), "{err}");

        let mut unknown = claims(&entries, 2);
        unknown.credits.push(CreditLine {
            key: Identity::from_seed([9; 32]).public().to_string(),
            credits: 5.0,
            ..CreditLine::default()
        });
        let err = check_claimed(&entries, &unknown).unwrap_err().to_string();
        assert!(err.contains("does not"), "{err}");

        let mut beyond = claims(&entries, 2);
        beyond.log_head = 9;
        assert!(check_claimed(&entries, &beyond).is_err());
    }
}
