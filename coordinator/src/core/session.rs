//! A session: one connection's state (where its handshake is, its identity, replay guard,
//! liveness, lease and unit in progress), and the view of it the core shows outside. The
//! handlers that move a session along are `sessions.rs`.

use tessera_protocol::messages::{Capabilities, ContributorKind};
use tessera_protocol::{PublicKey, ReplayGuard};

use super::ConnId;

/// Where a session is in its life.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Stage {
    /// Waiting for `Hello`.
    Hello,
    /// Challenge sent, waiting for `Proof`.
    Proof,
    /// Handshake done.
    Active,
}

/// One connection's state.
#[derive(Clone, Debug)]
pub(super) struct Session {
    pub(super) nonce: [u8; 32],
    pub(super) stage: Stage,
    pub(super) key: Option<PublicKey>,
    pub(super) kind: ContributorKind,
    pub(super) caps: Option<Capabilities>,
    pub(super) guard: ReplayGuard,
    pub(super) last_seen: u64,
    pub(super) lease: Option<u64>,
    pub(super) ready: bool,
    pub(super) unit: Option<u64>,
    /// When it connected or was last given a whole-model unit (ms): open slots go to the
    /// ready sessions that have waited longest, not by connection order.
    pub(super) waiting_since: u64,
}

impl Session {
    /// The identity, once the handshake is done.
    pub(super) fn active(&self) -> Option<PublicKey> {
        (self.stage == Stage::Active).then_some(self.key).flatten()
    }
}

/// A session as seen from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// Connection.
    pub conn: ConnId,
    /// Identity.
    pub key: PublicKey,
    /// Native or browser.
    pub kind: ContributorKind,
    /// Lease held.
    pub lease: Option<u64>,
    /// Unit in progress.
    pub unit: Option<u64>,
    /// The micro-shards of its lease (every one for a whole-model lease).
    pub shards: Vec<String>,
}
