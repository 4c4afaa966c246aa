//! `tessera verify`'s draws: folds the log's draw chain as the coordinator does (the core's
//! own credits fold and the `Beacon` in it), so every revealed value must hash to the one before
//! it and to a tip committed before, and every draw of who is checked must be the one the value,
//! the work accepted before it and each identity's rate give (the rate from the credits folded
//! from the same log, so from the identity's record at that point). Every pick of who checks
//! (`Picked`: a replayer, an auditor) must rank its candidates as the latest reveal does, come in
//! turn, name as its subject the identity whose unit or lease it checks, and list nobody refused
//! or banned at that point; with `picks` required (the run's rules say its coordinator logs
//! them), every auditor a `Checked` entry names must have been picked for that check.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Result};
use tessera_coordinator::core::credits::Credits;
use tessera_protocol::log::{AdminAction, CheckOf, LogEvent, SignedEntry};
use tessera_protocol::PublicKey;

/// What the draws' check covered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DrawsChecked {
    /// Segments of the chain committed.
    pub segments: u64,
    /// Values revealed.
    pub reveals: u64,
    /// Draws recomputed (one per identity a reveal decided about).
    pub draws: u64,
    /// Of those, drawn for a check.
    pub drawn: u64,
    /// Picks of replayers and auditors recomputed.
    pub picks: u64,
    /// Auditors of `Checked` entries found picked for their check.
    pub auditors: u64,
}

/// What the log says of the identities a pick may name, as it stands at an entry.
#[derive(Default)]
struct Whose {
    /// Each accepted unit's identity.
    units: BTreeMap<u64, PublicKey>,
    /// Each lease's identity.
    leases: BTreeMap<u64, PublicKey>,
    /// Identities the administrator banned (and did not unban).
    banned: BTreeSet<PublicKey>,
    /// Who was picked to check whose work in which round or step.
    picked: BTreeSet<(PublicKey, u64, PublicKey)>,
}

impl Whose {
    /// Whose work `check` is about, as the log names it.
    fn of(&self, check: &CheckOf) -> Option<PublicKey> {
        match check {
            CheckOf::Replay { unit, .. } => self.units.get(unit).copied(),
            CheckOf::Audit { lease, .. } => self.leases.get(lease).copied(),
        }
    }
}

/// Recomputes every draw and pick of the log; an error names the first entry whose draw does
/// not hold. With `picks` every `Checked` entry's auditors must have been picked for it.
pub fn check(entries: &[SignedEntry], picks: bool) -> Result<DrawsChecked> {
    let mut credits = Credits::default();
    let mut whose = Whose::default();
    let mut out = DrawsChecked::default();
    for e in entries {
        let event = &e.entry.event;
        let at = e.entry.index;
        match event {
            LogEvent::Picked {
                check,
                subject,
                candidates,
                ..
            } => {
                if whose.of(check) != Some(*subject) {
                    bail!("log entry {at}: the pick for {check:?} names {subject} as whose work it checks, which the log does not");
                }
                if let Some(k) = candidates.iter().find(|k| {
                    credits.is_refused(k) || credits.rejections_spent(k) || whose.banned.contains(k)
                }) {
                    bail!("log entry {at}: the pick for {check:?} lists {k}, refused or banned by then");
                }
            }
            LogEvent::Checked {
                key,
                step,
                auditors,
                ..
            } if picks => {
                for a in auditors {
                    if !whose.picked.contains(&(*key, *step, *a)) {
                        bail!("log entry {at}: {a} checked the work of {key} in round or step {step} without being picked for it");
                    }
                    out.auditors += 1;
                }
            }
            _ => {}
        }
        credits
            .apply_drawn(event)
            .1
            .map_err(|why| anyhow!("log entry {at}: {why}"))?;
        match event {
            LogEvent::DrawChain { .. } => out.segments += 1,
            LogEvent::Revealed { drawn, .. } => {
                out.reveals += 1;
                out.drawn += drawn.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
            }
            LogEvent::Accepted { key, unit, .. } => {
                whose.units.insert(*unit, *key);
            }
            LogEvent::Leased { key, lease, .. } => {
                whose.leases.insert(*lease, *key);
            }
            LogEvent::Admin {
                action: AdminAction::Ban { key },
                ..
            } => {
                whose.banned.insert(*key);
            }
            LogEvent::Admin {
                action: AdminAction::Unban { key },
                ..
            } => {
                whose.banned.remove(key);
            }
            LogEvent::Picked {
                check,
                subject,
                candidates,
                ..
            } => {
                whose
                    .picked
                    .insert((*subject, check.round(), candidates[0]));
            }
            _ => {}
        }
    }
    out.draws = credits.beacon().checked;
    out.picks = credits.beacon().picks.checked;
    Ok(out)
}

/// Whether a log's `Checked` entries must name only picked auditors: where the run's rules
/// say its coordinator logs its picks, or, without the rules at hand, where the log holds any.
pub fn picks_required(entries: &[SignedEntry], rules_say: Option<bool>) -> bool {
    rules_say.unwrap_or_else(|| {
        entries
            .iter()
            .any(|e| matches!(e.entry.event, LogEvent::Picked { .. }))
    })
}

/// One line for people.
pub fn describe(d: &DrawsChecked) -> String {
    if d.segments == 0 {
        "no draw chain in the log: the run does not check work (or its log predates draws)".into()
    } else {
        format!(
            "draws recomputed from the draw chain: {} values revealed ({} segments committed), {} draws of who is checked, {} drawn; {} picks of who checks ({} auditors of checks found picked); each as logged",
            d.reveals, d.segments, d.draws, d.drawn, d.picks, d.auditors
        )
    }
}
