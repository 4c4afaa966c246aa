//! What `GET /api/status` shows: the run's phase and progress, each connected contributor with
//! its lease and credits, bans, and every identity's standing from the run log. The shell
//! rebuilds it from the core on the clock's tick and after acts and closed rounds, and serves
//! it in pages ([`StatusPage`]: at most [`STATUS_PAGE`] contributors and credit lines each),
//! the first page encoded once per rebuild.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tessera_protocol::identity::hex;
use tessera_protocol::messages::ContributorKind;
use tessera_protocol::PublicKey;

use crate::core::{ConnId, Core, Record, SessionView};

/// `GET /api/status`.
#[derive(Clone, Debug, Default, Serialize)]
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
    /// Connected contributors.
    pub contributors: Vec<Arc<ContributorStatus>>,
    /// Identities the administrator banned (hex).
    pub banned: Vec<String>,
    /// Index of the last run-log entry this status reflects.
    pub log_head: u64,
    /// Every identity the log knows, with its credits as the log makes them
    /// (`tessera verify` recomputes them and holds the coordinator to these).
    pub credits: Vec<CreditLine>,
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
#[derive(Clone, Debug, Serialize)]
pub struct ContributorStatus {
    /// Public key (hex).
    pub key: String,
    /// `native` or `browser`.
    pub kind: String,
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

/// The status of `core` now.
pub(crate) fn status_of(core: &Core) -> Status {
    StatusRows::default().build(core)
}

/// A contributor's row in the status, as last built, what it was built from, and the build
/// that last listed it.
type Row = (SessionView, Record, Arc<ContributorStatus>, u64);

/// The rows of the last status built, by connection: a rebuild walks the sessions, but
/// formats a row (its hex key, its strings) only where the session or its identity's record
/// changed since, so a crowd of idle contributors costs a comparison each, not a new row.
#[derive(Default)]
pub(crate) struct StatusRows {
    rows: HashMap<ConnId, Row>,
    /// Builds so far.
    builds: u64,
}

impl StatusRows {
    /// The status of `core` now, reusing the unchanged rows of the last build.
    pub(crate) fn build(&mut self, core: &Core) -> Status {
        let contributors = self.rows(core.sessions(), core.records());
        status_with(core, contributors)
    }

    /// The rows of `sessions`, with `records`: the last build's where a session's view and
    /// its identity's record are unchanged, new ones elsewhere; rows of sessions gone since
    /// are forgotten.
    fn rows(
        &mut self,
        sessions: Vec<SessionView>,
        records: &BTreeMap<PublicKey, Record>,
    ) -> Vec<Arc<ContributorStatus>> {
        self.builds += 1;
        let build = self.builds;
        let none = Record::default();
        let rows = sessions
            .into_iter()
            .map(|s| {
                let r = records.get(&s.key).unwrap_or(&none);
                match self.rows.entry(s.conn) {
                    Entry::Occupied(mut o) => {
                        let (view, record, row, seen) = o.get_mut();
                        *seen = build;
                        if *view != s || record != r {
                            *row = Arc::new(row_of(&s, r));
                            (*view, *record) = (s, r.clone());
                        }
                        row.clone()
                    }
                    Entry::Vacant(v) => {
                        let row = Arc::new(row_of(&s, r));
                        v.insert((s, r.clone(), row.clone(), build));
                        row
                    }
                }
            })
            .collect();
        self.rows.retain(|_, (.., seen)| *seen == build);
        rows
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

/// The status of `core` with its contributors' rows.
fn status_with(core: &Core, contributors: Vec<Arc<ContributorStatus>>) -> Status {
    Status {
        run: core.name().to_string(),
        phase: core.state().name().into(),
        round: core.round(),
        rounds: core.spec().rounds,
        loss_history: core.losses().to_vec(),
        contributors,
        banned: core
            .admin_state()
            .banned
            .iter()
            .map(|k| k.to_string())
            .collect(),
        log_head: core.log_head().index,
        credits: core
            .records()
            .iter()
            .map(|(k, r)| CreditLine::of(k, r, core.credits().is_refused(k)))
            .collect(),
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
    pub credits: &'a [CreditLine],
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
    use tessera_protocol::Identity;

    fn view(conn: ConnId, seed: u8, lease: Option<u64>) -> SessionView {
        SessionView {
            conn,
            key: Identity::from_seed([seed; 32]).public(),
            kind: ContributorKind::Native,
            lease,
            unit: None,
            shards: lease
                .map(|_| vec!["whole model".to_string()])
                .unwrap_or_default(),
        }
    }

    #[test]
    fn a_rebuild_keeps_the_rows_of_unchanged_sessions_and_makes_the_others_anew() {
        let (idle, worker) = (view(1, 1, None), view(2, 2, Some(1)));
        let mut records = BTreeMap::new();
        let mut rows = StatusRows::default();
        let first = rows.rows(vec![idle.clone()], &records);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].key, idle.key.to_string());
        let second = rows.rows(vec![idle.clone(), worker.clone()], &records);
        assert_eq!(second.len(), 2);
        assert!(
            Arc::ptr_eq(&first[0], &second[0]),
            "the idle session's row is the same one"
        );
        let leased = &second[1];
        assert_eq!(leased.key, worker.key.to_string());
        assert!(leased.lease.is_some(), "{leased:?}");
        // What a fresh build shows, row for row.
        let fresh = StatusRows::default().rows(vec![idle.clone(), worker.clone()], &records);
        let json = |r: &[Arc<ContributorStatus>]| serde_json::to_string(r).expect("json");
        assert_eq!(json(&second), json(&fresh));
        // A changed record makes its identity's row anew.
        let credited = Record {
            accepted: 1,
            ..Record::default()
        };
        records.insert(worker.key, credited);
        let third = rows.rows(vec![idle.clone(), worker.clone()], &records);
        assert!(Arc::ptr_eq(&third[0], &second[0]) && !Arc::ptr_eq(&third[1], &second[1]));
        assert_eq!(third[1].accepted, 1);
        // A session that left takes its row with it.
        let fourth = rows.rows(vec![worker], &records);
        assert_eq!(fourth.len(), 1);
        assert!(Arc::ptr_eq(&fourth[0], &third[1]));
        assert_eq!(rows.rows.len(), 1);
    }

    fn line(k: usize) -> CreditLine {
        CreditLine {
            key: format!("{k:064x}"),
            ..Default::default()
        }
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
