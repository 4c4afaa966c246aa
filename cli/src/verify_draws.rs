//! `tessera verify`'s draws: folds the log's draw chain as the coordinator does (the core's
//! own credits fold and the `Beacon` in it), so every revealed value must hash to the one before it and to a tip
//! committed before, and every draw of who is checked must be the one the value, the work
//! accepted before it and each identity's rate give (the rate from the credits folded from the
//! same log, so from the identity's record at that point).

use anyhow::{anyhow, Result};
use tessera_coordinator::core::credits::Credits;
use tessera_protocol::log::{LogEvent, SignedEntry};

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
}

/// Recomputes every draw of the log; an error names the first entry whose draw does not hold.
pub fn check(entries: &[SignedEntry]) -> Result<DrawsChecked> {
    let mut credits = Credits::default();
    let mut out = DrawsChecked::default();
    for e in entries {
        let event = &e.entry.event;
        credits
            .apply_drawn(event)
            .1
            .map_err(|why| anyhow!("log entry {}: {why}", e.entry.index))?;
        match event {
            LogEvent::DrawChain { .. } => out.segments += 1,
            LogEvent::Revealed { drawn, .. } => {
                out.reveals += 1;
                out.drawn += drawn.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
            }
            _ => {}
        }
    }
    out.draws = credits.beacon().checked;
    Ok(out)
}

/// One line for people.
pub fn describe(d: &DrawsChecked) -> String {
    if d.segments == 0 {
        "no draw chain in the log: the run does not check work (or its log predates draws)".into()
    } else {
        format!(
            "draws recomputed from the draw chain: {} values revealed ({} segments committed), {} draws of who is checked, {} drawn; each as logged",
            d.reveals, d.segments, d.draws, d.drawn
        )
    }
}
