//! A session: one connection's state (where its handshake is, its identity, replay guard,
//! liveness, lease and unit in progress), and the view of it the core shows outside. The
//! handlers that move a session along are `sessions.rs`.

use std::collections::BTreeMap;
use std::ops::Deref;

use tessera_protocol::messages::{Capabilities, ContributorKind};
use tessera_protocol::{PublicKey, ReplayGuard};

use super::changes::{Marks, MIN_BOUND};
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
    /// Its results rejected while its identity had no accepted work: not logged (such an
    /// identity leaves nothing permanent), so counted here against [`MAX_REJECTED`] instead.
    ///
    /// [`MAX_REJECTED`]: super::credits::MAX_REJECTED
    pub(super) unlogged_rejections: u64,
    /// When it was last given a lease (ms): it heartbeats at the idle pace until it hears of
    /// the lease, so its silence counts from then at the soonest.
    pub(super) leased_at: u64,
}

impl Session {
    /// The identity, once the handshake is done.
    pub(super) fn active(&self) -> Option<PublicKey> {
        (self.stage == Stage::Active).then_some(self.key).flatten()
    }
}

/// The sessions by connection, noting which changed since the changes were last taken
/// (`changes.rs`): every change goes through [`Sessions::insert`], [`Sessions::get_mut`] or
/// [`Sessions::remove`], which mark the connection; reading goes through `Deref`.
#[derive(Default)]
pub(super) struct Sessions {
    map: BTreeMap<ConnId, Session>,
    changed: Marks<ConnId>,
}

impl Deref for Sessions {
    type Target = BTreeMap<ConnId, Session>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Sessions {
    /// Adds (or replaces) the session of `conn`.
    pub(super) fn insert(&mut self, conn: ConnId, s: Session) -> Option<Session> {
        self.touch(conn);
        self.map.insert(conn, s)
    }

    /// The session of `conn`, to change.
    pub(super) fn get_mut(&mut self, conn: &ConnId) -> Option<&mut Session> {
        if self.map.contains_key(conn) {
            self.touch(*conn);
        }
        self.map.get_mut(conn)
    }

    /// Removes the session of `conn`.
    pub(super) fn remove(&mut self, conn: &ConnId) -> Option<Session> {
        let s = self.map.remove(conn);
        if s.is_some() {
            self.touch(*conn);
        }
        s
    }

    /// Marks `conn`'s session changed: for what it shows that lives outside it (the
    /// micro-shards its lease holds).
    pub(super) fn touch(&mut self, conn: ConnId) {
        let bound = self.map.len().max(MIN_BOUND);
        self.changed.mark(conn, bound);
    }

    /// The connections whose session changed since last asked.
    pub(super) fn take_changed(&mut self) -> Marks<ConnId> {
        self.changed.take()
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
    /// Its adapter's name as it reported it (a contributor's text, bounded by the protocol).
    pub adapter: String,
}
