//! What goes into the core and what comes out: [`Input`], fed to `Core::tick`, and the
//! [`Action`]s the shell must carry out, in order (and [`spelled_out`], the actions with every
//! weight stream as the frames it sends).

use tessera_protocol::log::SignedEntry;
use tessera_protocol::{Reason, ToContributor, ToCoordinator};

use super::{ConnId, Contribution, RoundSummary, WeightStream};

/// What happens to the run.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A connection opened; `nonce` is fresh randomness for its handshake.
    Connected {
        /// Connection.
        conn: ConnId,
        /// Fresh random nonce.
        nonce: [u8; 32],
    },
    /// A decoded message arrived.
    Message {
        /// Connection.
        conn: ConnId,
        /// The message.
        msg: ToCoordinator,
    },
    /// A frame that did not decode (already answered by the transport); counts against the
    /// sender.
    BadFrame {
        /// Connection.
        conn: ConnId,
        /// Why (`MalformedFrame`, or `ProtocolVersion` for another protocol version).
        error: Reason,
    },
    /// The connection's transport received something (heartbeats, which it takes itself) at
    /// `heard` (ms, the core's clock): the session was alive then. A transport that takes
    /// heartbeats says so only for the sessions the core would otherwise close as silent
    /// ([`super::Core::looks_silent`]), so a crowd of idle contributors costs the core one
    /// cheap input each per silence period, not a message per heartbeat.
    Alive {
        /// Connection.
        conn: ConnId,
        /// When it was last heard from (ms); a time after the core's now counts as now.
        heard: u64,
    },
    /// The connection closed.
    Disconnected {
        /// Connection.
        conn: ConnId,
    },
    /// Time passed.
    Tick,
    /// The answer to an [`Action::Measure`].
    Measured(Box<super::Measured>),
    /// An administrator's request, already authenticated by the shell; answered by
    /// [`Action::AdminDone`] with the same `request`.
    Admin {
        /// The shell's id for the request.
        request: u64,
        /// What to do.
        action: tessera_protocol::log::AdminAction,
        /// Why (contributors see it).
        reason: String,
    },
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send a message.
    Send {
        /// Connection.
        conn: ConnId,
        /// The message.
        msg: ToContributor,
    },
    /// Send a lease's weights: the stream's frames, in order, before anything sent after it.
    SendWeights {
        /// Connection.
        conn: ConnId,
        /// The frames, cut as they are sent.
        weights: WeightStream,
    },
    /// Close a connection.
    Close {
        /// Connection.
        conn: ConnId,
        /// Why.
        reason: String,
    },
    /// Persist an accepted contribution (before the receipt that follows is sent).
    Accepted(Contribution),
    /// A round closed: persist the new weights and the snapshot.
    RoundClosed(RoundSummary),
    /// The run reached its last round.
    Finished,
    /// A run-log entry: persist it (before the messages that follow, which may carry its head).
    Logged(SignedEntry),
    /// An accepted contribution that a check at the round's close threw out: forget it (its
    /// slot runs again), before the messages that follow.
    Withdrawn {
        /// Round.
        round: u64,
        /// Replica slot.
        slot: u64,
    },
    /// Run the CPU reference measurements a complete round's checks need, away from the event
    /// loop ([`super::Measurement::run`]), and feed the answer back as [`Input::Measured`].
    /// The round waits for it; everything else goes on.
    Measure(std::sync::Arc<super::Measurement>),
    /// The answer to an administrator's request: the index of the log entry that put it into
    /// effect, or why it was refused (then nothing changed).
    AdminDone {
        /// The request.
        request: u64,
        /// The entry's index, or the refusal.
        result: Result<u64, super::admin::AdminRefusal>,
    },
}

/// `actions` with every [`Action::SendWeights`] replaced by the `Send`s of its frames, in order.
pub fn spelled_out(actions: Vec<Action>) -> Vec<Action> {
    let mut out = Vec::with_capacity(actions.len());
    for a in actions {
        match a {
            Action::SendWeights { conn, weights } => {
                out.extend(weights.frames().map(|msg| Action::Send { conn, msg }));
            }
            other => out.push(other),
        }
    }
    out
}
