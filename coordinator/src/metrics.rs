//! `GET /metrics`: the coordinator's counters and gauges for Prometheus, in the OpenMetrics
//! text format (the `prometheus-client` crate encodes them). They are folded from what the
//! core's task already sees — the log entries it persists, the rounds or steps it closes —
//! plus the bytes the connections read and write; the gauges the status holds (contributors,
//! round, log head) are read from it when scraped. Every label comes from a
//! bounded enum (an entry's kind, a reason's code, a check's outcome, a contributor's kind, a
//! direction): never a key, an address or any text a contributor chose. Counters start at zero
//! with each coordinator process, as Prometheus expects of counters.

use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tessera_protocol::log::{CheckOutcome, LogEvent};
use tessera_protocol::Code;

use crate::shared::Shared;
use crate::status::Status;

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A log entry's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum EntryKind {
    Started,
    Joined,
    Left,
    Leased,
    Accepted,
    Rejected,
    Closed,
    Checked,
    Discarded,
    Admin,
    Forked,
    DrawChain,
    Revealed,
    Picked,
    Stepped,
    Aggregated,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntryLabels {
    kind: EntryKind,
}

/// A reason's code, as its variant's name: the set of values is the enum's.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

impl CodeLabels {
    fn of(code: Code) -> Self {
        CodeLabels {
            code: format!("{code:?}"),
        }
    }
}

/// A check's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum Outcome {
    Passed,
    Failed,
    AuditorFailed,
    Skipped,
    Disputed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

/// A contributor's kind, as the status names it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum Kind {
    Native,
    Browser,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: Kind,
}

/// Which way bytes went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum Direction {
    /// Received from contributors.
    In,
    /// Sent to contributors.
    Out,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

/// Every metric of a serving coordinator, and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    entries: Family<EntryLabels, Counter>,
    units_accepted: Counter,
    tokens: Counter,
    units_rejected: Family<CodeLabels, Counter>,
    departures: Family<CodeLabels, Counter>,
    checks: Family<OutcomeLabels, Counter>,
    rounds: Counter,
    round: Gauge,
    replicas: Gauge,
    loss: Gauge<f64, AtomicU64>,
    held_out_loss: Gauge<f64, AtomicU64>,
    contributors: Family<KindLabels, Gauge>,
    log_head: Gauge,
    bytes: Family<DirectionLabels, Counter>,
    frames: Family<DirectionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `tessera_` prefix.
    pub(crate) fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("tessera"),
            entries: Family::default(),
            units_accepted: Counter::default(),
            tokens: Counter::default(),
            units_rejected: Family::default(),
            departures: Family::default(),
            checks: Family::default(),
            rounds: Counter::default(),
            round: Gauge::default(),
            replicas: Gauge::default(),
            loss: Gauge::default(),
            held_out_loss: Gauge::default(),
            contributors: Family::default(),
            log_head: Gauge::default(),
            bytes: Family::default(),
            frames: Family::default(),
        };
        m.registry.register(
            "log_entries",
            "Entries appended to the run log, by kind",
            m.entries.clone(),
        );
        m.registry.register(
            "units_accepted",
            "Work units accepted (whole-model updates, pipeline results, replays)",
            m.units_accepted.clone(),
        );
        m.registry.register(
            "tokens",
            "Tokens trained on in accepted work",
            m.tokens.clone(),
        );
        m.registry.register(
            "units_rejected",
            "Submissions rejected, by reason code",
            m.units_rejected.clone(),
        );
        m.registry.register(
            "departures",
            "Identities that left or were closed, by reason code",
            m.departures.clone(),
        );
        m.registry.register(
            "checks",
            "Checks of contributed work, by outcome",
            m.checks.clone(),
        );
        m.registry.register(
            "rounds_closed",
            "Rounds (whole-model) or steps (pipeline) closed",
            m.rounds.clone(),
        );
        m.registry.register(
            "round",
            "The open round or step (= rounds or steps closed in the run)",
            m.round.clone(),
        );
        m.registry.register(
            "round_replicas",
            "Updates the last closed whole-model round averaged (its count follows the contributors)",
            m.replicas.clone(),
        );
        m.registry.register(
            "loss",
            "Mean training loss of the last closed round or step",
            m.loss.clone(),
        );
        m.registry.register(
            "held_out_loss",
            "Held-out loss of the latest weights the held-out check measured (whole-model runs)",
            m.held_out_loss.clone(),
        );
        m.registry.register(
            "contributors",
            "Connected contributors, by kind",
            m.contributors.clone(),
        );
        m.registry.register(
            "log_head",
            "Index of the last run-log entry",
            m.log_head.clone(),
        );
        m.registry.register(
            "bytes",
            "WebSocket frame bytes, received from and sent to contributors",
            m.bytes.clone(),
        );
        m.registry.register(
            "frames",
            "WebSocket frames, received from and sent to contributors",
            m.frames.clone(),
        );
        m
    }

    /// A log entry the core appended.
    pub(crate) fn logged(&self, event: &LogEvent) {
        let kind = match event {
            LogEvent::Started { .. } => EntryKind::Started,
            LogEvent::Joined { .. } => EntryKind::Joined,
            LogEvent::Left { reason, .. } => {
                self.departures
                    .get_or_create(&CodeLabels::of(reason.code))
                    .inc();
                EntryKind::Left
            }
            LogEvent::Leased { .. } => EntryKind::Leased,
            LogEvent::Accepted { tokens, .. } => {
                self.units_accepted.inc();
                self.tokens.inc_by(*tokens);
                EntryKind::Accepted
            }
            LogEvent::Rejected { reason, .. } => {
                self.units_rejected
                    .get_or_create(&CodeLabels::of(reason.code))
                    .inc();
                EntryKind::Rejected
            }
            LogEvent::Closed { .. } => {
                self.rounds.inc();
                EntryKind::Closed
            }
            LogEvent::Aggregated { updates, .. } => {
                self.replicas.set(updates.len() as i64);
                EntryKind::Aggregated
            }
            LogEvent::Checked { outcome, .. } => {
                let outcome = match outcome {
                    CheckOutcome::Passed => Outcome::Passed,
                    CheckOutcome::Failed(_) => Outcome::Failed,
                    CheckOutcome::AuditorFailed(_) => Outcome::AuditorFailed,
                    CheckOutcome::Skipped(_) => Outcome::Skipped,
                    CheckOutcome::Disputed(_) => Outcome::Disputed,
                };
                self.checks.get_or_create(&OutcomeLabels { outcome }).inc();
                EntryKind::Checked
            }
            LogEvent::Discarded { .. } => EntryKind::Discarded,
            LogEvent::Admin { .. } => EntryKind::Admin,
            LogEvent::Forked { .. } => EntryKind::Forked,
            LogEvent::DrawChain { .. } => EntryKind::DrawChain,
            LogEvent::Revealed { .. } => EntryKind::Revealed,
            LogEvent::Picked { .. } => EntryKind::Picked,
            LogEvent::Stepped { .. } => EntryKind::Stepped,
        };
        self.entries.get_or_create(&EntryLabels { kind }).inc();
    }

    /// A round or step closed with a mean training loss of `loss`.
    pub(crate) fn closed(&self, loss: f64) {
        self.loss.set(loss);
    }

    /// The gauges the status holds: contributors by kind, the open round, the log's head, the
    /// latest held-out loss.
    /// Read when scraped (counting the contributors walks them all: once a scrape, not once
    /// every time the core's task rebuilds the status).
    fn status(&self, s: &Status) {
        let browsers = s
            .contributors
            .iter()
            .filter(|c| c.kind == "browser")
            .count();
        let native = s.contributors.len() - browsers;
        for (kind, n) in [(Kind::Native, native), (Kind::Browser, browsers)] {
            self.contributors
                .get_or_create(&KindLabels { kind })
                .set(n as i64);
        }
        self.round.set(s.round as i64);
        self.log_head.set(s.log_head as i64);
        if let Some(&(_, loss)) = s.held_out_history.last() {
            self.held_out_loss.set(loss);
        }
    }

    /// A frame of `len` bytes received from a contributor.
    pub(crate) fn received(&self, len: usize) {
        self.count(Direction::In, len);
    }

    /// A frame of `len` bytes sent to a contributor.
    pub(crate) fn sent(&self, len: usize) {
        self.count(Direction::Out, len);
    }

    fn count(&self, direction: Direction, len: usize) {
        let labels = DirectionLabels { direction };
        self.bytes.get_or_create(&labels).inc_by(len as u64);
        self.frames.get_or_create(&labels).inc();
    }

    /// Everything, in the OpenMetrics text format.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// `GET /metrics`.
pub(crate) async fn api_metrics(State(s): State<Shared>) -> axum::response::Response {
    if let Ok(status) = s.status.lock() {
        s.metrics.status(&status);
    }
    match s.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metrics did not encode").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::{Identity, Reason};

    #[test]
    fn entries_fold_into_counters_labelled_only_by_bounded_values() {
        let m = Metrics::new();
        let key = Identity::from_seed([3; 32]).public();
        m.logged(&LogEvent::Accepted {
            key,
            unit: 1,
            seq: 1,
            result: [0; 32],
            tokens: 256,
            flops: 1.0,
            pending: true,
        });
        m.logged(&LogEvent::Rejected {
            key,
            unit: 2,
            seq: 2,
            reason: Reason::new(Code::NotFinite, "a contributor's <script> text"),
        });
        m.logged(&LogEvent::Checked {
            key,
            step: 0,
            auditors: vec![],
            outcome: CheckOutcome::Passed,
            flops: 0.0,
            credited: vec![],
        });
        m.closed(2.5);
        m.status(&Status {
            held_out_history: vec![(0, 5.5), (1, 4.25)],
            ..Default::default()
        });
        m.received(100);
        m.sent(40);
        m.sent(2);
        let text = m.encode().unwrap();
        for line in [
            "tessera_units_accepted_total 1",
            "tessera_tokens_total 256",
            "tessera_units_rejected_total{code=\"NotFinite\"} 1",
            "tessera_checks_total{outcome=\"Passed\"} 1",
            "tessera_log_entries_total{kind=\"Accepted\"} 1",
            "tessera_loss 2.5",
            "tessera_held_out_loss 4.25",
            "tessera_bytes_total{direction=\"In\"} 100",
            "tessera_bytes_total{direction=\"Out\"} 42",
            "tessera_frames_total{direction=\"Out\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("script"), "no contributor text: {text}");
        assert!(!text.contains(&key.to_string()), "no keys: {text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
