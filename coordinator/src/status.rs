//! What `GET /api/status` shows: the run's phase and progress, each connected contributor with
//! its lease and credits, bans, and every identity's standing from the run log. The shell
//! refreshes it from the core after every event.

use serde::{Deserialize, Serialize};
use tessera_protocol::messages::ContributorKind;

use crate::core::Core;

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
    pub contributors: Vec<ContributorStatus>,
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
    let contributors = core
        .sessions()
        .into_iter()
        .map(|s| {
            let r = core.records().get(&s.key).cloned().unwrap_or_default();
            ContributorStatus {
                key: s.key.to_string(),
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
        })
        .collect();
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
