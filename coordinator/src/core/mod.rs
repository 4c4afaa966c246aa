//! The run state machine: `Core::tick(now, input) -> actions`, with no I/O, no clock and no
//! randomness of its own (the transport passes nonces in), so a run can be simulated with
//! thousands of fake contributors deterministically, and replayed.
//!
//! `Core` is the `Context` every part acts through and the run's `Regime`: whole-model rounds of
//! replica slots (`Replicas`) or a pipeline of micro-shard leases (`pipeline::Pipe`). This file
//! holds the only `impl Core`, the thin dispatcher: it feeds each input to the part it belongs
//! to (the sessions part checks messages; the regime takes work, deadlines and lost sessions)
//! and gives the shell what it reads. See docs/ARCHITECTURE.md, "The coordinator core".

pub mod admin;
mod admin_state;
mod arbitration;
pub mod beacon;
mod changes;
mod context;
pub mod credits;
mod draws;
mod held_out;
mod held_out_curve;
mod io;
mod measure;
mod outer_step;
mod part;
mod picks;
mod pipeline;
mod replays;
mod replica_checks;
mod replica_lease;
mod results;
mod round;
mod round_size;
mod rounds;
pub mod rules;
mod run_state;
mod samples;
mod session;
mod sessions;
mod share;
pub mod spec;
mod spec_builder;
mod validate;
mod weight_stream;

use std::collections::BTreeMap;

use serde::Serialize;
use sessions::Handled;
use tessera_compute::reference::ModelParams;
use tessera_protocol::log::{AdminAction, LogEvent, LogWriter};
use tessera_protocol::messages::{LogHead, SessionMessage};
use tessera_protocol::{Code, Identity, PublicKey, Reason, ToCoordinator};

pub use changes::{Changes, Marks};
pub use credits::Record;
pub use held_out::HeldOutScore;
pub use io::{spelled_out, Action, Input};
pub use measure::{Measured, Measurement};
pub use results::{Contribution, RoundSummary, Snapshot};
pub use run_state::{End, Phase, RunState};
pub use session::SessionView;
pub use share::Share;
pub use spec::RunSpec;
pub use weight_stream::WeightStream;

/// A transport connection.
pub type ConnId = u64;

/// SHA-256 of a value's postcard encoding (results and configurations named in the log).
pub(crate) fn digest<T: Serialize>(v: &T) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(postcard::to_stdvec(v).unwrap_or_default()).into()
}

/// SHA-256 of weights as little-endian f32, tensor by tensor in model order.
pub fn weights_digest(w: &ModelParams<f32>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (_, t) in w.named() {
        for x in t {
            h.update(x.to_le_bytes());
        }
    }
    h.finalize().into()
}

/// How a run trains, each regime with the state only it has.
enum Regime {
    /// Whole-model leases: rounds of replica slots.
    Replicas(Box<Replicas>),
    /// Micro-shard leases in a pipeline: optimizer steps of micro-batches.
    Pipeline(Box<pipeline::Pipe>),
}

/// The whole-model regime's state.
pub(super) struct Replicas {
    /// The open round.
    round: round::Round,
    /// The previous round's accepted updates (dense), to catch stale results sent again.
    previous_updates: Vec<Vec<Vec<f32>>>,
    /// Loss gains of the updates that passed a loss check, by round (this round's and the
    /// last's are kept).
    gains: Vec<(u64, f64)>,
    /// The latest held-out checks (at most `held_out::KEPT_SCORES`).
    held_out_scores: std::collections::VecDeque<held_out::HeldOutScore>,
    /// The last measurement's ticket (see `measure`).
    next_ticket: u64,
}

/// The run state machine: the regime's state beside the context its parts act through.
pub struct Core {
    cx: context::Context,
    /// How the run trains, and that regime's own state.
    regime: Regime,
}

impl Core {
    /// A new run from initial weights. Its log starts with the run's `Started` entry (the first
    /// tick's actions carry it).
    pub fn new(spec: RunSpec, id: Identity, weights: ModelParams<f32>) -> Self {
        let snap = Snapshot {
            round: 0,
            version: 0,
            digest: weights_digest(&weights),
            weights,
            losses: Vec::new(),
            next_unit: 1,
            next_lease: 1,
            moments: None,
            aggregate: None,
        };
        let mut core = Self::resume(spec, id, snap, Vec::new());
        core.continue_log(None);
        core
    }

    /// Continues the run log after `head` (the last entry persisted before a restart); with no
    /// head the log starts, with the run's `Started` entry.
    pub fn continue_log(&mut self, head: Option<LogHead>) {
        self.cx.log = LogWriter::after(head);
        if head.is_none() {
            let config = self.cx.rules_digest;
            self.cx.log(LogEvent::Started {
                run: self.cx.spec.name.clone(),
                coordinator: self.cx.id.public(),
                config,
            });
        }
    }

    /// The sessions that the next tick at `now` (ms) closes as silent unless the transport
    /// heard from them since ([`Input::Alive`]).
    pub fn looks_silent(&self, now: u64) -> Vec<ConnId> {
        sessions::silent(&self.cx, now.max(self.cx.now))
    }

    /// The latest run-log head.
    pub fn log_head(&self) -> LogHead {
        self.cx.log_head()
    }

    /// Resumes from a snapshot and the accepted contributions of its open round.
    pub fn resume(
        spec: RunSpec,
        id: Identity,
        snap: Snapshot,
        accepted: Vec<Contribution>,
    ) -> Self {
        let mut cx = context::Context::new(spec, id, (snap.weights, snap.digest), snap.round);
        cx.version = snap.version;
        cx.losses = snap.losses;
        cx.next_unit = snap.next_unit;
        cx.next_lease = snap.next_lease;
        let regime = match &cx.spec.pipeline {
            Some(ps) => {
                let step = pipeline::Step::of(&cx.spec, &mut cx.sampler, snap.round);
                let mut pipe = pipeline::Pipe::new(&cx.spec.model, ps.clone(), step);
                pipe.optimizer = Box::new(pipeline::HeldByCoordinator::resume(
                    snap.moments,
                    cx.spec.model.tie_word_embeddings,
                ));
                Regime::Pipeline(Box::new(pipe))
            }
            None => Regime::Replicas(Box::new(Replicas::new(snap.round, cx.spec.replicas))),
        };
        let mut core = Core { cx, regime };
        if let Regime::Replicas(r) = &mut core.regime {
            for c in accepted {
                r.restore_contribution(&mut core.cx, c);
            }
        }
        core
    }

    /// Feeds one input at time `now` (ms, monotonic) and returns the actions, in order, every
    /// lease's weights spelled out as its `Send`s ([`spelled_out`]) and every measurement the
    /// core asks for run at once and fed back: what an in-process harness carries. A server
    /// takes the weights as streams and runs measurements off its event loop
    /// ([`Core::tick_streamed`]).
    pub fn tick(&mut self, now: u64, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        let mut next = std::collections::VecDeque::from([input]);
        while let Some(input) = next.pop_front() {
            for a in spelled_out(self.tick_streamed(now, input)) {
                match a {
                    // Measured at once, in this thread: a harness has no event loop to spare.
                    Action::Measure(job) => next.push_back(Input::Measured(Box::new(job.run()))),
                    other => out.push(other),
                }
            }
        }
        out
    }

    /// Feeds one input at time `now` (ms, monotonic) and returns the actions, in order; a
    /// lease's weights are one [`Action::SendWeights`], cut into frames as the socket takes them.
    pub fn tick_streamed(&mut self, now: u64, input: Input) -> Vec<Action> {
        self.cx.now = self.cx.now.max(now);
        match input {
            Input::Connected { conn, nonce } => sessions::connected(&mut self.cx, conn, nonce),
            Input::Message { conn, msg } => self.message(conn, msg),
            Input::BadFrame { conn, error } => {
                let (cx, part) = self.split();
                part.fatal(cx, conn, error);
            }
            Input::Disconnected { conn } => {
                let (cx, part) = self.split();
                part.drop_session(cx, conn, None);
            }
            Input::Alive { conn, heard } => {
                // Liveness alone frees no work and asks for none: no scheduling pass (which
                // may walk every session), however many of these a tick brings.
                sessions::alive(&mut self.cx, conn, heard);
                return std::mem::take(&mut self.cx.out);
            }
            Input::Tick => self.expire(),
            Input::Measured(m) => {
                if let Regime::Replicas(r) = &mut self.regime {
                    r.measured(&mut self.cx, *m);
                }
            }
            Input::Admin {
                request,
                action,
                reason,
            } => self.admin(request, action, reason),
        }
        let cx = &mut self.cx;
        if cx.state.hands_out_work() {
            // The draw chain is committed before the first work goes out.
            cx.start_draws();
        }
        match &mut self.regime {
            Regime::Replicas(r) => r.schedule(cx),
            Regime::Pipeline(p) => p.schedule(cx),
        }
        std::mem::take(&mut self.cx.out)
    }

    /// The context and the regime's state as a part (for what both regimes do alike).
    fn split(&mut self) -> (&mut context::Context, &mut dyn part::Part) {
        let part: &mut dyn part::Part = match &mut self.regime {
            Regime::Replicas(r) => &mut **r,
            Regime::Pipeline(p) => &mut **p,
        };
        (&mut self.cx, part)
    }

    /// A connection's message: the sessions part checks it; its work goes to the regime.
    fn message(&mut self, conn: ConnId, msg: ToCoordinator) {
        match sessions::handle(&mut self.cx, conn, msg) {
            Handled::Done => {}
            Handled::Fatal(why) => {
                let (cx, part) = self.split();
                part.fatal(cx, conn, why);
            }
            Handled::Left => {
                let (cx, part) = self.split();
                let reason = "left".into();
                cx.out.push(Action::Close { conn, reason });
                part.drop_session(cx, conn, Some(Reason::new(Code::Left, "left")));
            }
            Handled::Proved { key } => {
                // One session per identity: a reconnect replaces the old session.
                let (cx, part) = self.split();
                for c in sessions::replaced_by(cx, conn, key) {
                    let reason = "replaced by a newer session of the same identity".into();
                    cx.out.push(Action::Close { conn: c, reason });
                    part.drop_session(cx, c, Some(Reason::new(Code::Replaced, "replaced")));
                }
                sessions::join(cx, conn);
                self.offer_lease(conn);
            }
            Handled::Work { key, seq, body } => {
                self.work(conn, key, seq, body);
                if self.cx.rejections_spent(conn, &key) {
                    let (cx, part) = self.split();
                    part.close_refused(cx, key, sessions::spent_rejections());
                }
            }
        }
    }

    /// Hands a session's result to its regime.
    fn work(&mut self, conn: ConnId, key: PublicKey, seq: u64, body: SessionMessage) {
        let cx = &mut self.cx;
        match (&mut self.regime, body) {
            (Regime::Replicas(r), SessionMessage::Submit(sub)) => r.submit(cx, conn, key, seq, sub),
            (Regime::Pipeline(p), SessionMessage::Output(o)) => p.output(cx, conn, key, seq, o),
            (Regime::Pipeline(p), SessionMessage::Grads(g)) => p.grads(cx, conn, key, seq, g),
            (Regime::Pipeline(p), SessionMessage::Audited(a)) => p.audited(cx, conn, key, seq, a),
            _ => cx.refuse(
                conn,
                Reason::new(
                    Code::WrongRegime,
                    "that kind of result does not belong to this run's regime",
                ),
            ),
        }
    }

    /// Offers a joined session a lease of its regime.
    fn offer_lease(&mut self, conn: ConnId) {
        let cx = &mut self.cx;
        match &mut self.regime {
            Regime::Replicas(r) => r.offer_lease(cx, conn),
            Regime::Pipeline(p) => p.offer_lease(cx, conn),
        }
    }

    /// Deadlines: late units and replays or audits run elsewhere; silent sessions close.
    fn expire(&mut self) {
        let cx = &mut self.cx;
        if let Regime::Replicas(r) = &mut self.regime {
            r.expire_units(cx);
        }
        let (cx, part) = self.split();
        for c in sessions::silent(cx, cx.now) {
            // The peer is told why (it may be alive and only slow to reach us).
            let limit = cx
                .sessions
                .get(&c)
                .map_or(0, |s| sessions::silence_of(cx, s).1);
            let why = Reason::new(
                Code::Silent,
                format!(
                    "silent for over {} s: no message or heartbeat arrived from this session",
                    limit / 1000
                ),
            );
            part.fatal(cx, c, why);
        }
        let cx = &mut self.cx;
        match &mut self.regime {
            Regime::Replicas(r) => r.expire_replays(cx),
            Regime::Pipeline(p) => p.expire(cx),
        }
    }

    /// An authenticated administrator's request (id `request`, answered by
    /// [`Action::AdminDone`]): refused with a reason and nothing changed, or logged and applied.
    fn admin(&mut self, request: u64, action: AdminAction, reason: String) {
        let round = self.round();
        let cx = &mut self.cx;
        let checked = cx
            .admin
            .check(&action, &reason, cx.state, round, &cx.spec.name);
        let result = checked.map(|()| {
            let event = LogEvent::Admin {
                action: action.clone(),
                reason: reason.clone(),
            };
            let entry = self.cx.log(event);
            self.apply_admin(&action, &reason);
            admin::announce(&mut self.cx, &entry);
            self.cx.log.head().index
        });
        self.cx.out.push(Action::AdminDone { request, result });
    }

    /// Puts a logged act into effect (a ban closes the identity's sessions).
    fn apply_admin(&mut self, action: &AdminAction, reason: &str) {
        let in_progress = self.split().1.in_progress();
        let closes = admin::apply(&mut self.cx, action, reason, in_progress);
        let (cx, part) = self.split();
        for (conn, why) in closes {
            part.fatal(cx, conn, why);
        }
    }

    /// Records that an administrator created this run (on an idle coordinator), and why: the
    /// entry right after `Started`, carried by the first tick's actions like it.
    pub fn created_by_admin(&mut self, reason: String) {
        let event = admin::created(&self.cx, reason);
        self.cx.log(event);
    }

    /// The actions queued before the first tick (a new run's `Started` entry, and its
    /// `Admin` creation entry), taken now: a new run's shell records them in the same
    /// transaction as the run's first commit, so that the run is resumable, log included, from
    /// the moment it exists.
    pub fn take_queued(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.cx.out)
    }

    /// After a restart, before any contributor connects: re-applies the administrator's acts
    /// recorded in the log and rebuilds every identity's record from it (credits, checks,
    /// refusals of identities found wrong).
    pub fn restore_from_log<'a>(&mut self, events: impl IntoIterator<Item = &'a LogEvent>) {
        for e in events {
            if let LogEvent::Admin { action, reason } = e {
                self.apply_admin(action, reason);
            }
            self.cx.credits.apply(e);
        }
        self.cx.out.clear();
    }

    /// What the administrator's acts have left in force.
    pub fn admin_state(&self) -> &admin::AdminState {
        &self.cx.admin
    }

    /// Whether `key` is refused from the run: banned, or found wrong by a check.
    pub fn is_refused(&self, key: &PublicKey) -> bool {
        self.cx.is_refused(key)
    }

    /// The held-out checks of the latest rounds, oldest first (at most the last 1024; none in
    /// a pipeline run).
    pub fn held_out_scores(&self) -> impl Iterator<Item = &HeldOutScore> {
        self.replicas()
            .into_iter()
            .flat_map(|r| r.held_out_scores())
    }

    /// The run.
    pub fn spec(&self) -> &RunSpec {
        &self.cx.spec
    }

    /// The run's name.
    pub fn name(&self) -> &str {
        &self.cx.spec.name
    }

    /// The coordinator's public key.
    pub fn public_key(&self) -> PublicKey {
        self.cx.id.public()
    }

    /// Current phase: training (or paused) or finished.
    pub fn phase(&self) -> Phase {
        self.cx.state.phase()
    }

    /// Where the run stands.
    pub fn state(&self) -> RunState {
        self.cx.state
    }

    /// The open round or step (equals the number of closed ones).
    pub fn round(&self) -> u64 {
        match &self.regime {
            Regime::Replicas(r) => r.round.number,
            Regime::Pipeline(p) => p.step.number,
        }
    }

    /// The pipeline's state, in a pipeline run.
    fn pipe(&self) -> Option<&pipeline::Pipe> {
        match &self.regime {
            Regime::Pipeline(p) => Some(p),
            Regime::Replicas(_) => None,
        }
    }

    /// The whole-model regime's state, in a whole-model run.
    fn replicas(&self) -> Option<&Replicas> {
        match &self.regime {
            Regime::Replicas(r) => Some(r),
            Regime::Pipeline(_) => None,
        }
    }

    /// Loss of each closed round.
    pub fn losses(&self) -> &[f64] {
        &self.cx.losses
    }

    /// The held-out loss of each version the held-out check measured since this process
    /// started (whole-model runs with held-out checks).
    pub fn held_out_losses(&self) -> &[(u64, f64)] {
        self.cx.held_out.points()
    }

    /// Current weights.
    pub fn weights(&self) -> &ModelParams<f32> {
        &self.cx.weights
    }

    /// Per-identity records.
    pub fn records(&self) -> &BTreeMap<PublicKey, Record> {
        self.cx.credits.records()
    }

    /// Every identity's record and refusals, as folded from the log.
    pub fn credits(&self) -> &credits::Credits {
        &self.cx.credits
    }

    /// The snapshot to persist at a round boundary.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            round: self.round(),
            version: self.cx.version,
            weights: (*self.cx.weights).clone(),
            digest: self.cx.digest,
            losses: self.cx.losses.clone(),
            next_unit: self.cx.next_unit,
            next_lease: self.cx.next_lease,
            moments: self.pipe().and_then(|p| p.optimizer.moments().cloned()),
            aggregate: self.cx.aggregate.clone(),
        }
    }

    /// Active sessions: connection, identity, kind, lease and the unit it works on.
    pub fn sessions(&self) -> Vec<SessionView> {
        self.cx
            .sessions
            .keys()
            .filter_map(|&conn| self.session(conn))
            .collect()
    }

    /// The session of `conn`, if it is active.
    pub fn session(&self, conn: ConnId) -> Option<SessionView> {
        let s = self.cx.sessions.get(&conn)?;
        s.active().map(|key| SessionView {
            conn,
            key,
            kind: s.kind,
            lease: s.lease,
            unit: s.unit,
            shards: self.lease_shards(s.lease),
            adapter: s
                .caps
                .as_ref()
                .map(|c| c.adapter.clone())
                .unwrap_or_default(),
        })
    }

    /// The connections of `key`'s active sessions, lowest first.
    pub fn conns_of(&self, key: PublicKey) -> Vec<ConnId> {
        self.cx.conns_of(key)
    }

    /// What changed since this was last asked (everything, the first time): the sessions
    /// ([`Core::session`]) and the identities' records ([`Core::records`]) to show anew.
    pub fn take_changes(&mut self) -> Changes {
        Changes {
            sessions: self.cx.sessions.take_changed(),
            records: self.cx.records_changed.take(),
        }
    }

    /// The micro-shards a lease holds, by name.
    fn lease_shards(&self, lease: Option<u64>) -> Vec<String> {
        let Some(lease) = lease else {
            return Vec::new();
        };
        match self.pipe() {
            Some(p) => p
                .holdings
                .get(&lease)
                .map(|h| {
                    h.shards
                        .iter()
                        .map(|&(s, i)| p.spec.stages[s][i].to_string())
                        .collect()
                })
                .unwrap_or_default(),
            None => vec!["whole model".into()],
        }
    }

    /// Which slots of the open round are accepted.
    pub fn accepted_slots(&self) -> Vec<u64> {
        match &self.regime {
            Regime::Replicas(r) => r.round.accepted_slots(),
            Regime::Pipeline(_) => Vec::new(),
        }
    }
}
