//! What `GET /api/status` shows: the run's phase and progress, each connected contributor with
//! its lease and credits, bans, and every identity's standing from the run log. The shell
//! rebuilds it from the core on the clock's tick and after acts and closed rounds, making anew
//! only the rows of what the core marked changed ([`StatusRows`]), and serves it in pages
//! ([`StatusPage`]: at most [`STATUS_PAGE`] contributors and credit lines each), the first page
//! encoded once per rebuild.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tessera_protocol::identity::hex;
use tessera_protocol::messages::ContributorKind;
use tessera_protocol::PublicKey;

use crate::core::{Changes, ConnId, Core, Marks, Record, SessionView};

/// `GET /api/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Status {
    /// Run name.
    pub run: String,
    /// `training`, `paused` (by the administrator), `finished` or `stopped` (by the
    /// administrator).
    pub phase: String,
    /// Open round (= rounds closed).
    pub round: u64,
    /// Rounds the run will train.
    pub rounds: u64,
    /// Mean training loss of each closed round.
    pub loss_history: Vec<f64>,
    /// `[version, loss]`: the held-out loss of each version the held-out check measured since
    /// the coordinator started (whole-model runs with held-out checks; version `v` is the
    /// weights after `v` rounds).
    pub held_out_history: Vec<(u64, f64)>,
    /// Connected contributors.
    pub contributors: Vec<Arc<ContributorStatus>>,
    /// Identities the administrator banned (hex).
    pub banned: Vec<String>,
    /// Index of the last run-log entry this status reflects.
    pub log_head: u64,
    /// Every identity the log knows, with its credits as the log makes them
    /// (`tessera verify` recomputes them and holds the coordinator to these).
    pub credits: Vec<Arc<CreditLine>>,
}

/// One identity's standing, from the run log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreditLine {
    /// Public key (hex).
    pub key: String,
    /// GFLOP of verified work.
    pub credits: f64,
    /// GFLOP of accepted work waiting for a passed check.
    pub pending_credits: f64,
    /// Accepted units.
    pub accepted: u64,
    /// Rejected submissions.
    pub rejected: u64,
    /// Checks passed.
    pub checks_passed: u64,
    /// Checks failed.
    pub checks_failed: u64,
    /// Found wrong by a check, and refused.
    pub refused: bool,
}

impl CreditLine {
    /// The line of `key` in a record book.
    pub fn of(key: &tessera_protocol::PublicKey, r: &crate::core::Record, refused: bool) -> Self {
        CreditLine {
            key: key.to_string(),
            credits: r.flops / 1e9,
            pending_credits: r.pending_flops / 1e9,
            accepted: r.accepted,
            rejected: r.rejected,
            checks_passed: r.checks_passed,
            checks_failed: r.checks_failed,
            refused,
        }
    }
}

/// One contributor in the status.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContributorStatus {
    /// Public key (hex).
    pub key: String,
    /// `native` or `browser`.
    pub kind: String,
    /// Its adapter's name as the contributor reported it: the contributor's own text (at most
    /// the protocol's name bound), to be shown as text, never as markup.
    pub adapter: String,
    /// Lease held, with the shards it covers.
    pub lease: Option<String>,
    /// The micro-shards of the lease (`["whole model"]` for a whole-model replica).
    pub shards: Vec<String>,
    /// Unit in progress.
    pub unit: Option<u64>,
    /// Accepted units.
    pub accepted: u64,
    /// Rejected submissions.
    pub rejected: u64,
    /// Tokens in accepted units.
    pub tokens: u64,
    /// Credits: GFLOP of verified work (estimated from the model shape).
    pub credits: f64,
    /// GFLOP of accepted work waiting for a check of this identity to pass.
    pub pending_credits: f64,
    /// Checks of its work passed.
    pub checks_passed: u64,
}

/// The status of `core` now, built whole (the core's marks of what changed are left for
/// [`StatusRows::build`]).
pub fn status_of(core: &Core) -> Status {
    let mut rows = StatusRows::default();
    rows.update(core, everything());
    rows.status(core)
}

/// Everything changed.
fn everything() -> Changes {
    Changes {
        sessions: Marks::All,
        records: Marks::All,
    }
}

/// The status as last built, row by row: a rebuild formats anew only the rows of the sessions
/// and identities the core marked changed since ([`Core::take_changes`]), so a crowd of idle
/// contributors costs nothing but a pointer copy each.
#[derive(Default)]
pub struct StatusRows {
    /// Each active session's row, by connection.
    rows: BTreeMap<ConnId, Arc<ContributorStatus>>,
    /// Each identity's credit line, by key.
    lines: BTreeMap<PublicKey, Arc<CreditLine>>,
}

impl StatusRows {
    /// The status of `core` now: the last build's rows, with those of what changed since
    /// made anew.
    pub fn build(&mut self, core: &mut Core) -> Status {
        let changes = core.take_changes();
        self.update(core, changes);
        self.status(core)
    }

    /// Makes the rows of what `changes` names anew.
    fn update(&mut self, core: &Core, changes: Changes) {
        let none = Record::default();
        let records = core.records();
        let row = |conn: ConnId| {
            core.session(conn)
                .map(|s| Arc::new(row_of(&s, records.get(&s.key).unwrap_or(&none))))
        };
        let line = |key: &PublicKey, r: &Record| {
            Arc::new(CreditLine::of(key, r, core.credits().is_refused(key)))
        };
        let mut redo: BTreeSet<ConnId> = BTreeSet::new();
        match changes.records {
            Marks::All => {
                self.lines = records.iter().map(|(k, r)| (*k, line(k, r))).collect();
                redo.extend(self.rows.keys());
            }
            Marks::Some(keys) => {
                for key in keys {
                    if let Some(r) = records.get(&key) {
                        self.lines.insert(key, line(&key, r));
                    }
                    redo.extend(core.conns_of(key));
                }
            }
        }
        match changes.sessions {
            Marks::All => {
                self.rows = core
                    .sessions()
                    .iter()
                    .map(|s| {
                        let r = records.get(&s.key).unwrap_or(&none);
                        (s.conn, Arc::new(row_of(s, r)))
                    })
                    .collect();
                return;
            }
            Marks::Some(conns) => redo.extend(conns),
        }
        for conn in redo {
            match row(conn) {
                Some(r) => self.rows.insert(conn, r),
                None => self.rows.remove(&conn),
            };
        }
    }

    /// The status of `core` with the rows as they are.
    fn status(&self, core: &Core) -> Status {
        status_with(
            core,
            self.rows.values().cloned().collect(),
            self.lines.values().cloned().collect(),
        )
    }
}

/// A contributor's row.
fn row_of(s: &SessionView, r: &Record) -> ContributorStatus {
    ContributorStatus {
        key: hex(&s.key.0),
        kind: match s.kind {
            ContributorKind::Native => "native".into(),
            ContributorKind::Browser => "browser".into(),
        },
        adapter: s.adapter.clone(),
        lease: s
            .lease
            .map(|l| format!("lease {l}: {}", s.shards.join(", "))),
        shards: s.shards.clone(),
        unit: s.unit,
        accepted: r.accepted,
        rejected: r.rejected,
        tokens: r.tokens,
        credits: r.flops / 1e9,
        pending_credits: r.pending_flops / 1e9,
        checks_passed: r.checks_passed,
    }
}

/// The status of `core` with its contributors' rows and credit lines.
fn status_with(
    core: &Core,
    contributors: Vec<Arc<ContributorStatus>>,
    credits: Vec<Arc<CreditLine>>,
) -> Status {
    Status {
        run: core.name().to_string(),
        phase: core.state().name().into(),
        round: core.round(),
        rounds: core.spec().rounds,
        loss_history: core.losses().to_vec(),
        held_out_history: core.held_out_losses().to_vec(),
        contributors,
        banned: core
            .admin_state()
            .banned
            .iter()
            .map(|k| k.to_string())
            .collect(),
        log_head: core.log_head().index,
        credits,
    }
}

/// Contributors, and credit lines, in one page of the status at most.
pub const STATUS_PAGE: usize = 1000;

/// One page of a [`Status`] (`GET /api/status?from=K&limit=N`): everything but the two lists
/// whole, and of those the entries from `from`, at most `limit` (≤ [`STATUS_PAGE`]) each.
#[derive(Debug, Serialize)]
pub struct StatusPage<'a> {
    /// Run name.
    pub run: &'a str,
    /// See [`Status::phase`].
    pub phase: &'a str,
    /// Open round.
    pub round: u64,
    /// Rounds the run will train.
    pub rounds: u64,
    /// Mean training loss of each closed round.
    pub loss_history: &'a [f64],
    /// See [`Status::held_out_history`].
    pub held_out_history: &'a [(u64, f64)],
    /// Connected contributors, from `from`.
    pub contributors: &'a [Arc<ContributorStatus>],
    /// Connected contributors in all.
    pub contributors_total: usize,
    /// Identities the administrator banned (hex).
    pub banned: &'a [String],
    /// Index of the last run-log entry this status reflects (the same on every page of one
    /// build of the status).
    pub log_head: u64,
    /// Every identity's credits, from `from`.
    pub credits: &'a [Arc<CreditLine>],
    /// Identities with credit lines in all.
    pub credits_total: usize,
    /// Where the next page starts, while either list goes on.
    pub next: Option<usize>,
}

impl Status {
    /// The page of entries `from..from + limit` of both lists (`limit` at most
    /// [`STATUS_PAGE`]).
    pub fn page(&self, from: usize, limit: usize) -> StatusPage<'_> {
        let limit = limit.clamp(1, STATUS_PAGE);
        let end = from.saturating_add(limit);
        let slice = |len: usize| from.min(len)..end.min(len);
        let (c, k) = (slice(self.contributors.len()), slice(self.credits.len()));
        let more = end < self.contributors.len() || end < self.credits.len();
        StatusPage {
            run: &self.run,
            phase: &self.phase,
            round: self.round,
            rounds: self.rounds,
            loss_history: &self.loss_history,
            held_out_history: &self.held_out_history,
            contributors: &self.contributors[c],
            contributors_total: self.contributors.len(),
            banned: &self.banned,
            log_head: self.log_head,
            credits: &self.credits[k],
            credits_total: self.credits.len(),
            next: more.then_some(end),
        }
    }

    /// The JSON of the first page, as `GET /api/status` serves it.
    pub fn first_page_json(&self) -> bytes::Bytes {
        serde_json::to_vec(&self.page(0, STATUS_PAGE))
            .unwrap_or_default()
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(k: usize) -> Arc<CreditLine> {
        Arc::new(CreditLine {
            key: format!("{k:064x}"),
            ..Default::default()
        })
    }

    #[test]
    fn pages_cover_both_lists_once_and_say_where_the_next_starts() {
        let st = Status {
            credits: (0..2500).map(line).collect(),
            ..Default::default()
        };
        let mut from = Some(0);
        let mut seen = Vec::new();
        while let Some(f) = from {
            let p = st.page(f, 5000);
            assert!(p.credits.len() <= STATUS_PAGE);
            assert_eq!((p.credits_total, p.contributors_total), (2500, 0));
            seen.extend(p.credits.iter().cloned());
            from = p.next;
        }
        assert_eq!(seen, st.credits);
        assert!(
            st.page(10_000, 10).credits.is_empty(),
            "past the end: empty"
        );
        let first: serde_json::Value = serde_json::from_slice(&st.first_page_json()).unwrap();
        assert_eq!(first["credits"].as_array().unwrap().len(), STATUS_PAGE);
        assert_eq!(first["next"], STATUS_PAGE);
    }
}
