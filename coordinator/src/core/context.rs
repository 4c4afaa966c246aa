//! The context every part of the core acts through: the run's spec and identity, the clock, the
//! run state and the admin's choices, the trained model, the sessions, the log (with the
//! credits folded from it as it is written), the draws, and the actions going out. The regime's
//! own state is not here: `Core` holds it beside the context, so a regime's methods take
//! `&mut self` (their part) and `&mut Context` (the rest) at once.

use std::collections::{BTreeMap, BTreeSet};

use tessera_compute::reference::ModelParams;
use tessera_protocol::log::{LogEvent, LogWriter, SignedEntry};
use tessera_protocol::messages::{LogHead, Receipt, ShardSpec, Verdict};
use tessera_protocol::signed::{signing_bytes, RECEIPT};
use tessera_protocol::{Code, Identity, PublicKey, Reason, ToContributor};
use tessera_train::data::Sampler;

use super::changes::{Marks, MIN_BOUND};
use super::session::{Session, Sessions, Stage};
use super::{admin_state, credits, draws, Action, ConnId, RunSpec, RunState};

/// The most leases of one session kept unlogged while its identity has had no verdict.
pub(super) const MAX_UNLOGGED_LEASES: usize = 16;

/// Everything the core's parts share (see the module doc).
pub(super) struct Context {
    pub(super) spec: RunSpec,
    /// The digest of the rules the run started under (the `config` of its `Started` entry),
    /// taken before any administrator's act changes `spec`: the draw chain derives from it.
    pub(super) rules_digest: [u8; 32],
    pub(super) id: Identity,
    /// The latest input's time (ms, monotonic).
    pub(super) now: u64,
    pub(super) state: RunState,
    /// Current weights, shared with the weight streams of leases still being sent (changed
    /// through `Arc::make_mut`: copied only while a stream of the old version reads them).
    pub(super) weights: std::sync::Arc<ModelParams<f32>>,
    /// The weights' digest (`weights_digest`), taken once where they change (a close logs it,
    /// a snapshot names its checkpoint by it).
    pub(super) digest: [u8; 32],
    /// The weights' version (one per closed round or step).
    pub(super) version: u64,
    /// Loss of each closed round or step.
    pub(super) losses: Vec<f64>,
    /// The held-out loss of each measured version (whole-model runs with held-out checks).
    pub(super) held_out: super::held_out_curve::HeldOutCurve,
    pub(super) sampler: Sampler,
    /// The aggregate of the last closed round or step (what produced the current weights).
    pub(super) aggregate: Option<ModelParams<f32>>,
    pub(super) sessions: Sessions,
    /// The active sessions' connections by identity (an index of `sessions`, kept by
    /// [`Context::activate`] and [`Context::forget`]), so that finding an identity's sessions
    /// does not walk every connection.
    active_by_key: BTreeMap<PublicKey, BTreeSet<ConnId>>,
    /// Identities whose current session's `Joined` entry is in the log. A join is logged
    /// lazily, just before the first entry its session causes (a lease, a logged verdict): an
    /// identity that only connects, idles, or has only rejected results leaves nothing in the
    /// log.
    pub(super) joined: BTreeSet<PublicKey>,
    /// Leases given to sessions whose identity has had no logged verdict yet, per connection:
    /// each is logged (after the identity's `Joined`) just before its identity's first logged
    /// verdict (an acceptance, or a rejection once it has accepted work), and dropped if the
    /// session ends without one, so that an identity that takes leases and does no accepted
    /// work leaves nothing in the log and no record. At most [`MAX_UNLOGGED_LEASES`] a
    /// session (the newest).
    pub(super) unlogged: BTreeMap<ConnId, Vec<LogEvent>>,
    /// Every identity's record, folded from the log as it is written.
    pub(super) credits: credits::Credits,
    /// The identities whose record changed since the changes were last taken.
    pub(super) records_changed: Marks<PublicKey>,
    /// Every choice of who is checked, who checks and who holds what.
    pub(super) draws: draws::Draws,
    pub(super) log: LogWriter,
    pub(super) admin: admin_state::AdminState,
    pub(super) next_unit: u64,
    pub(super) next_lease: u64,
    /// Actions of the current tick, in order.
    pub(super) out: Vec<Action>,
}

impl Context {
    /// A run's context at the start of `round`, with `weights` and their `digest` (version 0,
    /// no losses), no sessions, an empty log and nothing to send.
    pub(super) fn new(
        spec: RunSpec,
        id: Identity,
        (weights, digest): (ModelParams<f32>, [u8; 32]),
        round: u64,
    ) -> Self {
        let sampler = Sampler::new(spec.seed, spec.training_tokens(), spec.seq as usize);
        let rules_digest = super::rules::RunRules::of(&spec).digest();
        Context {
            rules_digest,
            state: RunState::at(round, spec.rounds),
            draws: draws::Draws::new(),
            spec,
            id,
            now: 0,
            weights: std::sync::Arc::new(weights),
            digest,
            version: 0,
            losses: Vec::new(),
            held_out: Default::default(),
            sampler,
            aggregate: None,
            sessions: Sessions::default(),
            records_changed: Marks::default(),
            active_by_key: BTreeMap::new(),
            joined: BTreeSet::new(),
            unlogged: BTreeMap::new(),
            credits: credits::Credits::default(),
            log: LogWriter::default(),
            admin: admin_state::AdminState::default(),
            next_unit: 1,
            next_lease: 1,
            out: Vec::new(),
        }
    }

    /// Appends a decision to the run log (and folds it into the credits).
    pub(super) fn log(&mut self, event: LogEvent) -> SignedEntry {
        // Only an identity not joined yet has leases waiting (a joined one's are logged at
        // once), so the sessions are walked once per identity, not once per verdict.
        if let Some(key) = actor(&event).filter(|k| !self.joined.contains(k)) {
            self.log_join(key);
            if matches!(event, LogEvent::Accepted { .. } | LogEvent::Rejected { .. }) {
                for conn in self.conns_of(key) {
                    for lease in self.unlogged.remove(&conn).unwrap_or_default() {
                        self.log(lease);
                    }
                }
            }
        }
        let (touched, drawn) = self.credits.apply_drawn(&event);
        if let Err(e) = drawn {
            // The core writes only draws that hold: one that does not is a bug.
            debug_assert!(false, "the core wrote a draw that does not hold: {e}");
            tracing::error!("the core wrote a draw that does not hold: {e}");
        }
        for key in touched {
            let bound = self.credits.records().len().max(MIN_BOUND);
            self.records_changed.mark(key, bound);
        }
        let entry = self.log.append(&self.id, self.now, event);
        debug_assert!(
            entry.encoded_len() <= tessera_protocol::log::MAX_ENTRY_BYTES,
            "a log entry of {} bytes",
            entry.encoded_len()
        );
        self.out.push(Action::Logged(entry.clone()));
        entry
    }

    /// Commits the draw chain (its first two segments and the run's check rates) if the run
    /// checks work and the chain was not started: before any work is handed out, so that every
    /// value is committed before the work it decides about. Every tick asks: cheap once started.
    pub(super) fn start_draws(&mut self) {
        if self.credits.beacon().started() {
            return;
        }
        let Some(rates) = self.spec.checks.as_ref().map(|c| c.draw_rates()) else {
            return;
        };
        let owner = draws::Owner::of(&self.id, &self.spec.name, self.rules_digest);
        for e in draws::Draws::start(&owner, rates) {
            self.log(e);
        }
    }

    /// Reveals the draw chain's next value: of the identities whose work was accepted since
    /// the last reveal, those drawn for the checks (in the order of their work).
    pub(super) fn reveal(&mut self) -> Vec<PublicKey> {
        self.start_draws();
        let owner = draws::Owner::of(&self.id, &self.spec.name, self.rules_digest);
        let (entries, drawn) = self.draws.reveal(&owner, &self.credits);
        for e in entries {
            self.log(e);
        }
        drawn
    }

    /// Records that `conn`'s session holds `lease` with `shards`: logged at once if its
    /// identity's join is, else just before the identity's first logged verdict (see
    /// [`Context::unlogged`]).
    pub(super) fn log_lease(&mut self, conn: ConnId, lease: u64, shards: Vec<ShardSpec>) {
        let Some(key) = self.sessions.get(&conn).and_then(|s| s.active()) else {
            return;
        };
        let event = LogEvent::Leased { key, lease, shards };
        if self.joined.contains(&key) {
            self.log(event);
            return;
        }
        let waiting = self.unlogged.entry(conn).or_default();
        if waiting.len() >= MAX_UNLOGGED_LEASES {
            waiting.remove(0);
        }
        waiting.push(event);
    }

    /// Logs the join of `key`'s session, unless it is logged already (or `key` has none).
    fn log_join(&mut self, key: PublicKey) {
        if self.joined.contains(&key) {
            return;
        }
        let Some(kind) = self
            .conns_of(key)
            .first()
            .and_then(|c| self.sessions.get(c))
            .map(|s| s.kind)
        else {
            return;
        };
        self.joined.insert(key);
        self.log(LogEvent::Joined { key, kind });
    }

    /// The latest run-log head.
    pub(super) fn log_head(&self) -> LogHead {
        self.log.head()
    }

    /// Sends a message to a connection.
    pub(super) fn send(&mut self, conn: ConnId, msg: ToContributor) {
        self.out.push(Action::Send { conn, msg });
    }

    /// Tells the peer why something was refused; the session goes on.
    pub(super) fn refuse(&mut self, conn: ConnId, reason: Reason) {
        self.send(
            conn,
            ToContributor::Error {
                reason,
                fatal: false,
            },
        );
    }

    /// Logs a verdict (an acceptance with the work's credit: `(tokens, flops)`) and sends the
    /// signed receipt naming the entry. A rejection of an identity with no accepted work is
    /// not logged (it is counted on the session, see [`Context::rejections_spent`]), so that
    /// such an identity leaves no permanent state; its receipt names the log as it stands,
    /// which `tessera verify --receipts` accepts for an identity with no accepted work there.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn receipt(
        &mut self,
        conn: ConnId,
        unit: u64,
        contributor: PublicKey,
        seq: u64,
        verdict: Verdict,
        result: [u8; 32],
        (tokens, flops): (u64, f64),
    ) {
        let pending = match self.spec.pipeline {
            Some(_) => self.spec.pipe_checks(),
            None => self.spec.checks.is_some(),
        };
        let event = match &verdict {
            Verdict::Accepted => Some(LogEvent::Accepted {
                key: contributor,
                unit,
                seq,
                result,
                tokens,
                flops,
                pending,
            }),
            Verdict::Rejected(reason) if self.has_accepted_work(&contributor) => {
                Some(LogEvent::Rejected {
                    key: contributor,
                    unit,
                    seq,
                    reason: reason.clone(),
                })
            }
            Verdict::Rejected(_) => None,
        };
        match event {
            Some(event) => {
                self.log(event);
            }
            // An identity with no accepted work leaves nothing permanent: its rejection is
            // counted on its session, and its receipt names the log as it stands.
            None => {
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.unlogged_rejections += 1;
                }
            }
        }
        let receipt = Receipt {
            unit,
            contributor,
            seq,
            verdict,
            log_head: self.log.head(),
        };
        let bytes = signing_bytes(&receipt).unwrap_or_default();
        let signature = self.id.sign(RECEIPT, &bytes);
        self.send(conn, ToContributor::Receipt { receipt, signature });
    }

    /// Whether `key` has accepted work in the log (then its rejections are logged too, where
    /// they count against its accepted work).
    fn has_accepted_work(&self, key: &PublicKey) -> bool {
        self.joined.contains(key)
            || self
                .credits
                .records()
                .get(key)
                .is_some_and(|r| r.accepted > 0)
    }

    /// Whether `conn`'s session (identity `key`) spent its rejections: in the log, or as
    /// rejections not logged because its identity had no accepted work.
    pub(super) fn rejections_spent(&self, conn: ConnId, key: &PublicKey) -> bool {
        self.credits.rejections_spent(key)
            || self
                .sessions
                .get(&conn)
                .is_some_and(|s| s.unlogged_rejections >= super::credits::MAX_REJECTED)
    }

    /// Logs and sends a rejection of `unit`'s result.
    pub(super) fn reject(
        &mut self,
        conn: ConnId,
        unit: u64,
        key: PublicKey,
        seq: u64,
        why: Reason,
    ) {
        let verdict = Verdict::Rejected(why);
        self.receipt(conn, unit, key, seq, verdict, [0; 32], (0, 0.0));
    }

    /// Rejects a result for a unit that is not open (finished, reassigned or unknown).
    pub(super) fn reject_unopen(&mut self, conn: ConnId, unit: u64, key: PublicKey, seq: u64) {
        let why = format!("unit {unit} is not open (finished, reassigned or unknown)");
        self.reject(conn, unit, key, seq, Reason::new(Code::NotOpen, why));
    }

    /// Rejects a result for a unit assigned to another connection (or lease).
    pub(super) fn reject_foreign(&mut self, conn: ConnId, unit: u64, key: PublicKey, seq: u64) {
        let why = format!("unit {unit} was assigned to someone else");
        self.reject(conn, unit, key, seq, Reason::new(Code::NotOpen, why));
    }

    /// Tells the peer why, closes the connection and forgets the session, which it returns
    /// so that its regime can take its work back (`Part::fatal`, in `part.rs`).
    pub(super) fn close(&mut self, conn: ConnId, why: Reason) -> Option<Session> {
        if !self.sessions.contains_key(&conn) {
            return None;
        }
        tracing::info!(conn, code = ?why.code, "closing: {why}");
        self.send(
            conn,
            ToContributor::Error {
                reason: why.clone(),
                fatal: true,
            },
        );
        self.out.push(Action::Close {
            conn,
            reason: why.to_string(),
        });
        self.forget(conn, Some(why))
    }

    /// Forgets a session (logging that its identity left, and why) and returns it.
    pub(super) fn forget(&mut self, conn: ConnId, why: Option<Reason>) -> Option<Session> {
        let s = self.sessions.remove(&conn)?;
        self.unlogged.remove(&conn);
        if let Some(key) = s.active() {
            if let Some(conns) = self.active_by_key.get_mut(&key) {
                conns.remove(&conn);
                if conns.is_empty() {
                    self.active_by_key.remove(&key);
                }
            }
        }
        if let Some(key) = s.active().filter(|k| self.joined.remove(k)) {
            self.log(LogEvent::Left {
                key,
                reason: why.unwrap_or_else(|| Reason::new(Code::Disconnected, "disconnected")),
            });
        }
        Some(s)
    }

    /// Whether `key` is refused from the run: banned, found wrong by a check, or out of
    /// rejections.
    pub(super) fn is_refused(&self, key: &PublicKey) -> bool {
        self.admin.banned.contains(key)
            || self.credits.is_refused(key)
            || self.credits.rejections_spent(key)
    }

    /// The connections of an identity's active sessions, lowest first.
    pub(super) fn conns_of(&self, key: PublicKey) -> Vec<ConnId> {
        self.active_by_key
            .get(&key)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Makes a session whose identity is proved active (it may then take work).
    pub(super) fn activate(&mut self, conn: ConnId) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        s.stage = Stage::Active;
        if let Some(key) = s.key {
            self.active_by_key.entry(key).or_default().insert(conn);
        }
    }
}

/// The contributor whose session an entry is the first sign of, if any: the one leased to, or
/// whose result was judged.
fn actor(event: &LogEvent) -> Option<PublicKey> {
    match event {
        LogEvent::Leased { key, .. }
        | LogEvent::Accepted { key, .. }
        | LogEvent::Rejected { key, .. } => Some(*key),
        _ => None,
    }
}

/// A small run's context and sessions in it, for the parts' unit tests.
#[cfg(test)]
pub(super) mod testing {
    use tessera_compute::reference::ModelParams;
    use tessera_compute::ModelConfig;
    use tessera_protocol::messages::ContributorKind;
    use tessera_protocol::{Identity, PublicKey, ReplayGuard};

    use super::super::session::{Session, Stage};
    use super::super::{ConnId, RunSpec};
    use super::Context;

    /// A whole-model run of the tiny model with `replicas` slots.
    pub fn spec(replicas: u64) -> RunSpec {
        let cfg = ModelConfig::tiny();
        let tokens: Vec<u32> = (0..400).map(|i| i % cfg.vocab_size as u32).collect();
        RunSpec::new("parts", cfg, tokens).with_replicas(replicas)
    }

    /// The context of `spec` at its start, signed by a fixed coordinator key.
    pub fn context(spec: RunSpec) -> Context {
        let weights = ModelParams::random(&spec.model, 1);
        let digest = crate::core::weights_digest(&weights);
        Context::new(spec, Identity::from_seed([9; 32]), (weights, digest), 0)
    }

    /// Adds an active session of the identity seeded by `seed` on `conn`, with `lease` (a
    /// leased session's join counts as logged, as its first verdict would have logged it).
    pub fn active(cx: &mut Context, conn: ConnId, seed: u8, lease: Option<u64>) -> PublicKey {
        let key = Identity::from_seed([seed; 32]).public();
        cx.sessions.insert(
            conn,
            Session {
                nonce: [seed; 32],
                stage: Stage::Active,
                key: Some(key),
                kind: ContributorKind::Native,
                caps: None,
                guard: ReplayGuard::default(),
                last_seen: cx.now,
                lease,
                ready: true,
                unit: None,
                waiting_since: cx.now,
                unlogged_rejections: 0,
                leased_at: 0,
            },
        );
        cx.activate(conn);
        if lease.is_some() {
            cx.joined.insert(key);
        }
        key
    }
}

#[cfg(test)]
#[path = "context_tests.rs"]
mod tests;
