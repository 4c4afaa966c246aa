//! The run state machine: `Core::tick(now, input) -> actions`, with no I/O, no clock and no
//! randomness of its own (the transport passes nonces in), so a run can be simulated with
//! thousands of fake contributors deterministically, and replayed.
//!
//! This first regime is whole-model leases: each round (outer step) has `replicas` slots; a slot
//! is a work unit of `inner_steps` steps on deterministic samples, given to a leased, ready
//! contributor, re-assigned when its contributor vanishes or misses the deadline; when every slot
//! is accepted the round closes with the outer step. A unit names its round, slot and weight
//! version, so pipeline units (micro-shard stages) can join the same tables later.

// The regimes' own state, reached by field (so the borrow is of `regime` alone, beside the
// core's other fields) in code that only one regime reaches. In the other regime `replicas!`
// and `replicas_ref!` return from the function (its type's default, or the value after `or`);
// `pipe!` and `pipe_mut!` give an `Option`.

/// The whole-model regime's state (`&mut`).
macro_rules! replicas {
    ($core:expr) => {
        replicas!($core, or Default::default())
    };
    ($core:expr, or $or:expr) => {
        match &mut $core.regime {
            $crate::core::Regime::Replicas(r) => r,
            $crate::core::Regime::Pipeline(_) => return $or,
        }
    };
}
/// The whole-model regime's state (`&`).
macro_rules! replicas_ref {
    ($core:expr) => {
        replicas_ref!($core, or Default::default())
    };
    ($core:expr, or $or:expr) => {
        match &$core.regime {
            $crate::core::Regime::Replicas(r) => r,
            $crate::core::Regime::Pipeline(_) => return $or,
        }
    };
}
/// The pipeline's state (`Option<&Pipe>`).
macro_rules! pipe {
    ($core:expr) => {
        match &$core.regime {
            $crate::core::Regime::Pipeline(p) => Some(&**p),
            $crate::core::Regime::Replicas(_) => None,
        }
    };
}
/// The pipeline's state (`Option<&mut Pipe>`).
macro_rules! pipe_mut {
    ($core:expr) => {
        match &mut $core.regime {
            $crate::core::Regime::Pipeline(p) => Some(&mut **p),
            $crate::core::Regime::Replicas(_) => None,
        }
    };
}

pub mod admin;
mod arbitration;
mod context;
pub mod credits;
mod draws;
mod io;
mod pipeline;
mod replays;
mod replica_checks;
mod results;
mod rounds;
pub mod rules;
mod run_state;
mod samples;
mod sessions;
pub mod spec;
mod spec_builder;
mod validate;

use std::collections::BTreeMap;

use pipeline::StepState;
use serde::Serialize;
use tessera_compute::reference::ModelParams;
use tessera_protocol::log::{LogEvent, LogWriter};
use tessera_protocol::messages::LogHead;
use tessera_protocol::{Identity, PublicKey, Reason, ToContributor};
use tessera_train::data::Sampler;

pub use credits::Record;
pub use io::{Action, Input};
pub use replica_checks::HeldOutScore;
pub use results::{Contribution, RoundSummary, Snapshot};
pub use run_state::{End, Phase, RunState};
pub use sessions::SessionView;
pub use spec::RunSpec;

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
struct Replicas {
    /// The open round.
    round: rounds::Round,
    /// The previous round's accepted updates (dense), to catch stale results sent again.
    previous_updates: Vec<Vec<Vec<f32>>>,
    /// Loss gains of the updates that passed a loss check, by round (this round's and the
    /// last's are kept).
    gains: Vec<(u64, f64)>,
    /// The latest held-out checks (at most `replica_checks::KEPT_SCORES`).
    held_out_scores: std::collections::VecDeque<replica_checks::HeldOutScore>,
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
            let config = rules::RunRules::of(&self.cx.spec).digest();
            self.cx.log(LogEvent::Started {
                run: self.cx.spec.name.clone(),
                coordinator: self.cx.id.public(),
                config,
            });
        }
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
        let mut sampler = Sampler::new(spec.seed, spec.training_tokens(), spec.seq as usize);
        let state = RunState::at(snap.round, spec.rounds);
        let regime = match &spec.pipeline {
            Some(ps) => {
                let step = pipeline::Step::of(&spec, &mut sampler, snap.round);
                let mut pipe = pipeline::Pipe::new(&spec.model, ps.stages.clone(), step);
                pipe.optimizer = pipeline::HeldByCoordinator::resume(snap.moments);
                Regime::Pipeline(Box::new(pipe))
            }
            None => Regime::Replicas(Box::new(Replicas {
                round: rounds::Round::new(snap.round, spec.replicas),
                previous_updates: Vec::new(),
                gains: Vec::new(),
                held_out_scores: Default::default(),
            })),
        };
        let draws = draws::Draws::new(spec.seed);
        let cx = context::Context {
            spec,
            id,
            now: 0,
            state,
            weights: snap.weights,
            version: snap.version,
            losses: snap.losses,
            sampler,
            aggregate: None,
            sessions: BTreeMap::new(),
            credits: credits::Credits::default(),
            draws,
            log: LogWriter::default(),
            admin: admin::AdminState::default(),
            next_unit: snap.next_unit,
            next_lease: snap.next_lease,
            out: Vec::new(),
        };
        let mut core = Core { cx, regime };
        if core.is_replicas() {
            for c in accepted {
                core.restore_contribution(c);
            }
        }
        core
    }

    /// Feeds one input at time `now` (ms, monotonic) and returns the actions, in order.
    pub fn tick(&mut self, now: u64, input: Input) -> Vec<Action> {
        self.cx.now = self.cx.now.max(now);
        match input {
            Input::Connected { conn, nonce } => self.connected(conn, nonce),
            Input::Message { conn, msg } => self.message(conn, msg),
            Input::BadFrame { conn, error } => self.fatal(conn, error),
            Input::Disconnected { conn } => self.drop_session(conn, None),
            Input::Tick => match self.regime {
                Regime::Replicas(_) => {
                    self.expire_units();
                    self.expire_sessions();
                    self.expire_replays();
                }
                Regime::Pipeline(_) => {
                    self.expire_sessions();
                    self.expire_pipeline();
                }
            },
            Input::Admin {
                request,
                action,
                reason,
            } => self.admin(request, action, reason),
        }
        match self.regime {
            Regime::Replicas(_) => self.schedule(),
            Regime::Pipeline(_) => self.schedule_pipeline(),
        }
        std::mem::take(&mut self.cx.out)
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

    /// Whether the run trains whole-model replicas (not a pipeline).
    fn is_replicas(&self) -> bool {
        matches!(self.regime, Regime::Replicas(_))
    }

    /// The whole-model regime's state, in a whole-model run.
    fn replicas(&self) -> Option<&Replicas> {
        match &self.regime {
            Regime::Replicas(r) => Some(r),
            Regime::Pipeline(_) => None,
        }
    }

    /// The whole-model regime's state, in a whole-model run (`&mut`).
    fn replicas_mut(&mut self) -> Option<&mut Replicas> {
        match &mut self.regime {
            Regime::Replicas(r) => Some(r),
            Regime::Pipeline(_) => None,
        }
    }

    /// Loss of each closed round.
    pub fn losses(&self) -> &[f64] {
        &self.cx.losses
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
            weights: self.cx.weights.clone(),
            losses: self.cx.losses.clone(),
            next_unit: self.cx.next_unit,
            next_lease: self.cx.next_lease,
            moments: pipe!(self).and_then(|p| p.optimizer.moments().cloned()),
            aggregate: self.cx.aggregate.clone(),
        }
    }

    /// Active sessions: connection, identity, kind, lease and the unit it works on.
    pub fn sessions(&self) -> Vec<SessionView> {
        self.cx
            .sessions
            .iter()
            .filter_map(|(&conn, s)| {
                s.active().map(|key| SessionView {
                    conn,
                    key,
                    kind: s.kind,
                    lease: s.lease,
                    unit: s.unit,
                    shards: self.lease_shards(s.lease),
                })
            })
            .collect()
    }

    /// The micro-shards a lease holds, by name.
    fn lease_shards(&self, lease: Option<u64>) -> Vec<String> {
        let Some(lease) = lease else {
            return Vec::new();
        };
        match pipe!(self) {
            Some(p) => p
                .holdings
                .get(&lease)
                .map(|h| {
                    h.shards
                        .iter()
                        .map(|&(s, i)| p.stages[s][i].to_string())
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

    /// Tells the peer why, closes the connection and forgets the session.
    fn fatal(&mut self, conn: ConnId, why: Reason) {
        if !self.cx.sessions.contains_key(&conn) {
            return;
        }
        tracing::info!(conn, code = ?why.code, "closing: {why}");
        self.cx.send(
            conn,
            ToContributor::Error {
                reason: why.clone(),
                fatal: true,
            },
        );
        self.cx.out.push(Action::Close {
            conn,
            reason: why.to_string(),
        });
        self.drop_session(conn, Some(why));
    }
}
