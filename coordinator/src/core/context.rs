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
    pub(super) id: Identity,
    /// The latest input's time (ms, monotonic).
    pub(super) now: u64,
    pub(super) state: RunState,
    /// Current weights, shared with the weight streams of leases still being sent (changed
    /// through `Arc::make_mut`: copied only while a stream of the old version reads them).
    pub(super) weights: std::sync::Arc<ModelParams<f32>>,
    /// The weights' version (one per closed round or step).
    pub(super) version: u64,
    /// Loss of each closed round or step.
    pub(super) losses: Vec<f64>,
    pub(super) sampler: Sampler,
    /// The aggregate of the last closed round or step (what produced the current weights).
    pub(super) aggregate: Option<ModelParams<f32>>,
    pub(super) sessions: Sessions,
    /// The active sessions' connections by identity (an index of `sessions`, kept by
    /// [`Context::activate`] and [`Context::forget`]), so that finding an identity's sessions
    /// does not walk every connection.
    active_by_key: BTreeMap<PublicKey, BTreeSet<ConnId>>,
    /// Identities whose current session's `Joined` entry is in the log. A join is logged
    /// lazily, just before the first entry its session causes (a lease, a verdict): an
    /// identity that only connects, or only idles, leaves nothing in the log.
    pub(super) joined: BTreeSet<PublicKey>,
    /// Leases given to sessions whose identity has had no verdict yet, per connection: each is
    /// logged (after the identity's `Joined`) just before its identity's first verdict, and
    /// dropped if the session ends without one, so that an identity that takes leases and does
    /// no work leaves nothing in the log and no record. At most [`MAX_UNLOGGED_LEASES`] a
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
    /// A run's context at the start of `round`, with `weights` (version 0, no losses), no
    /// sessions, an empty log and nothing to send.
    pub(super) fn new(spec: RunSpec, id: Identity, weights: ModelParams<f32>, round: u64) -> Self {
        let sampler = Sampler::new(spec.seed, spec.training_tokens(), spec.seq as usize);
        Context {
            state: RunState::at(round, spec.rounds),
            draws: draws::Draws::new(),
            spec,
            id,
            now: 0,
            weights: std::sync::Arc::new(weights),
            version: 0,
            losses: Vec::new(),
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
        let owner = draws::Owner::of(&self.id, &self.spec);
        for e in draws::Draws::start(&owner, rates) {
            self.log(e);
        }
    }

    /// Reveals the draw chain's next value: of the identities whose work was accepted since
    /// the last reveal, those drawn for the checks (in the order of their work).
    pub(super) fn reveal(&mut self) -> Vec<PublicKey> {
        self.start_draws();
        let owner = draws::Owner::of(&self.id, &self.spec);
        let (entries, drawn) = self.draws.reveal(&owner, &self.credits);
        for e in entries {
            self.log(e);
        }
        drawn
    }

    /// Records that `conn`'s session holds `lease` with `shards`: logged at once if its
    /// identity's join is, else just before the identity's first verdict (see
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
    /// signed receipt naming the entry.
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
            Verdict::Accepted => LogEvent::Accepted {
                key: contributor,
                unit,
                seq,
                result,
                tokens,
                flops,
                pending,
            },
            Verdict::Rejected(reason) => LogEvent::Rejected {
                key: contributor,
                unit,
                seq,
                reason: reason.clone(),
            },
        };
        self.log(event);
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
        Context::new(spec, Identity::from_seed([9; 32]), weights, 0)
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
mod tests {
    use tessera_protocol::log::LogEvent;
    use tessera_protocol::messages::Verdict;
    use tessera_protocol::signed::{signing_bytes, RECEIPT};
    use tessera_protocol::{Code, Reason, ToContributor};

    use super::testing::{active, context, spec};
    use super::Action;
    use super::{Context, MAX_UNLOGGED_LEASES};

    #[test]
    fn a_receipt_names_the_logged_verdict_and_is_signed_by_the_coordinator() {
        let mut cx = context(spec(1));
        let key = active(&mut cx, 1, 1, Some(1));
        cx.receipt(1, 7, key, 3, Verdict::Accepted, [5; 32], (8, 2.0));
        let [Action::Logged(entry), Action::Send { conn: 1, msg }] = &cx.out[..] else {
            panic!("{:?}", cx.out);
        };
        assert!(matches!(
            entry.entry.event,
            LogEvent::Accepted {
                unit: 7,
                seq: 3,
                tokens: 8,
                pending: false,
                ..
            }
        ));
        let ToContributor::Receipt { receipt, signature } = msg else {
            panic!("{msg:?}");
        };
        assert_eq!(receipt.log_head, cx.log_head());
        let bytes = signing_bytes(receipt).unwrap();
        assert!(cx.id.public().verify(RECEIPT, &bytes, signature).is_ok());
        cx.out.clear();
        cx.reject_unopen(1, 8, key, 4);
        assert!(matches!(
            &cx.out[0],
            Action::Logged(e) if matches!(&e.entry.event, LogEvent::Rejected { reason, .. } if reason.code == Code::NotOpen)
        ));
    }

    #[test]
    fn a_join_is_logged_before_the_first_entry_its_session_causes_and_an_idle_one_leaves_nothing() {
        let mut cx = context(spec(1));
        let idle = active(&mut cx, 1, 1, None);
        let worker = active(&mut cx, 2, 2, None);
        let shards = Vec::new();
        cx.log(LogEvent::Leased {
            key: worker,
            lease: 1,
            shards,
        });
        cx.log(LogEvent::Leased {
            key: worker,
            lease: 2,
            shards: Vec::new(),
        });
        cx.forget(1, None);
        cx.forget(2, None);
        let events: Vec<&LogEvent> = cx
            .out
            .iter()
            .filter_map(|a| match a {
                Action::Logged(e) => Some(&e.entry.event),
                _ => None,
            })
            .collect();
        assert!(matches!(events[0], LogEvent::Joined { key, .. } if *key == worker));
        assert!(matches!(events[1], LogEvent::Leased { lease: 1, .. }));
        assert!(matches!(events[2], LogEvent::Leased { lease: 2, .. }));
        assert!(matches!(events[3], LogEvent::Left { key, .. } if *key == worker));
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(cx.credits.records().get(&idle).is_none());
        // A new session of the same identity is logged again once it does something.
        active(&mut cx, 3, 2, None);
        cx.out.clear();
        cx.log(LogEvent::Leased {
            key: worker,
            lease: 3,
            shards: Vec::new(),
        });
        assert!(
            matches!(&cx.out[0], Action::Logged(e) if matches!(e.entry.event, LogEvent::Joined { .. }))
        );
    }

    /// The logged events among the actions so far.
    fn logged(cx: &Context) -> Vec<&LogEvent> {
        cx.out
            .iter()
            .filter_map(|a| match a {
                Action::Logged(e) => Some(&e.entry.event),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_lease_is_logged_only_once_its_identity_has_a_verdict() {
        let mut cx = context(spec(1));
        let idler = active(&mut cx, 1, 1, None);
        let worker = active(&mut cx, 2, 2, None);
        // More leases than a session keeps: only the newest wait.
        for lease in 1..=MAX_UNLOGGED_LEASES as u64 + 2 {
            cx.log_lease(1, lease, Vec::new());
        }
        cx.log_lease(2, 40, Vec::new());
        assert!(logged(&cx).is_empty(), "{:?}", logged(&cx));
        assert_eq!(cx.unlogged[&1].len(), MAX_UNLOGGED_LEASES);
        // The idler leaves without a verdict: nothing in the log, no record.
        cx.forget(1, None);
        assert!(logged(&cx).is_empty());
        assert!(!cx.unlogged.contains_key(&1));
        assert!(cx.credits.records().get(&idler).is_none());
        // The worker's first verdict brings its join and lease first; later leases go at once.
        cx.reject_unopen(2, 8, worker, 4);
        let events = logged(&cx);
        assert!(matches!(events[0], LogEvent::Joined { key, .. } if *key == worker));
        assert!(matches!(events[1], LogEvent::Leased { lease: 40, .. }));
        assert!(matches!(events[2], LogEvent::Rejected { unit: 8, .. }));
        assert_eq!(events.len(), 3, "{events:?}");
        cx.log_lease(2, 41, Vec::new());
        assert!(matches!(logged(&cx)[3], LogEvent::Leased { lease: 41, .. }));
        assert!(cx.unlogged.is_empty());
    }

    #[test]
    fn closing_a_session_tells_the_peer_logs_that_it_left_and_hands_it_back_once() {
        let mut cx = context(spec(1));
        let key = active(&mut cx, 4, 2, Some(1));
        active(&mut cx, 5, 3, None);
        assert_eq!(cx.conns_of(key), vec![4]);
        let s = cx
            .close(4, Reason::new(Code::Silent, "late"))
            .expect("open");
        assert_eq!(s.lease, Some(1));
        assert!(matches!(
            &cx.out[0],
            Action::Send { conn: 4, msg: ToContributor::Error { fatal: true, reason } } if reason.code == Code::Silent
        ));
        assert!(matches!(&cx.out[1], Action::Close { conn: 4, .. }));
        assert!(matches!(
            &cx.out[2],
            Action::Logged(e) if matches!(&e.entry.event, LogEvent::Left { reason, .. } if reason.code == Code::Silent)
        ));
        cx.out.clear();
        assert!(cx.close(4, Reason::new(Code::Silent, "again")).is_none());
        assert!(cx.out.is_empty());
        assert_eq!(cx.sessions.len(), 1);
        assert!(
            cx.conns_of(key).is_empty(),
            "the index forgets a closed session"
        );
    }

    #[test]
    fn an_identitys_sessions_are_found_by_its_key_once_active_and_until_forgotten() {
        let mut cx = context(spec(1));
        let key = active(&mut cx, 7, 2, None);
        active(&mut cx, 3, 2, None);
        active(&mut cx, 5, 9, None);
        assert_eq!(cx.conns_of(key), vec![3, 7], "lowest first");
        // A session still in its handshake is not found by the key it claims.
        super::super::sessions::connected(&mut cx, 9, [0; 32]);
        cx.sessions.get_mut(&9).unwrap().key = Some(key);
        assert_eq!(cx.conns_of(key), vec![3, 7]);
        cx.activate(9);
        assert_eq!(cx.conns_of(key), vec![3, 7, 9]);
        cx.forget(3, None);
        cx.forget(9, None);
        assert_eq!(cx.conns_of(key), vec![7]);
        cx.forget(7, None);
        assert!(cx.conns_of(key).is_empty() && !cx.active_by_key.contains_key(&key));
    }
}
