//! The context every part of the core acts through: the run's spec and identity, the clock, the
//! run state and the admin's choices, the trained model, the sessions, the log (with the
//! credits folded from it as it is written), the draws, and the actions going out. The regime's
//! own state is not here: `Core` holds it beside the context, so a regime's methods take
//! `&mut self` (their part) and `&mut Context` (the rest) at once.

use std::collections::BTreeMap;

use tessera_compute::reference::ModelParams;
use tessera_protocol::log::{LogEvent, LogWriter, SignedEntry};
use tessera_protocol::messages::LogHead;
use tessera_protocol::{Identity, Reason, ToContributor};
use tessera_train::data::Sampler;

use super::{admin, credits, draws, sessions, Action, ConnId, RunSpec, RunState};

/// Everything the core's parts share (see the module doc).
pub(super) struct Context {
    pub(super) spec: RunSpec,
    pub(super) id: Identity,
    /// The latest input's time (ms, monotonic).
    pub(super) now: u64,
    pub(super) state: RunState,
    /// Current weights.
    pub(super) weights: ModelParams<f32>,
    /// The weights' version (one per closed round or step).
    pub(super) version: u64,
    /// Loss of each closed round or step.
    pub(super) losses: Vec<f64>,
    pub(super) sampler: Sampler,
    /// The aggregate of the last closed round or step (what produced the current weights).
    pub(super) aggregate: Option<ModelParams<f32>>,
    pub(super) sessions: BTreeMap<ConnId, sessions::Session>,
    /// Every identity's record, folded from the log as it is written.
    pub(super) credits: credits::Credits,
    /// Every choice of who is checked, who checks and who holds what.
    pub(super) draws: draws::Draws,
    pub(super) log: LogWriter,
    pub(super) admin: admin::AdminState,
    pub(super) next_unit: u64,
    pub(super) next_lease: u64,
    /// Actions of the current tick, in order.
    pub(super) out: Vec<Action>,
}

impl Context {
    /// Appends a decision to the run log (and folds it into the credits).
    pub(super) fn log(&mut self, event: LogEvent) -> SignedEntry {
        self.credits.apply(&event);
        let entry = self.log.append(&self.id, self.now, event);
        self.out.push(Action::Logged(entry.clone()));
        entry
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
}
