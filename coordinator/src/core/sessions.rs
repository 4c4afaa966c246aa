//! Sessions: the handshake (hello, challenge, proof), signed-message checks with replay
//! protection, and silent sessions. Each function says what the message did ([`Handled`]);
//! the dispatcher (`Core::message`) hands a session's work to its regime, which also takes the
//! work of a dropped session back (`Part::session_lost`).

use tessera_protocol::identity::{handshake_message, HANDSHAKE};
use tessera_protocol::log::LogEvent;
use tessera_protocol::messages::{Capabilities, ContributorKind, SessionMessage};
use tessera_protocol::{
    Code, PublicKey, Reason, ReplayGuard, Signed, ToContributor, ToCoordinator,
};

use super::context::Context;
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

/// What a message did to its session, for the dispatcher to finish.
#[derive(Debug)]
pub(super) enum Handled {
    /// Nothing more to do.
    Done,
    /// The handshake's proof is good: older sessions of `key` are to be replaced, then the
    /// session joins ([`join`]) and is offered a lease.
    Proved { key: PublicKey },
    /// A checked session message that belongs to the regime (a result of work).
    Work {
        key: PublicKey,
        seq: u64,
        body: SessionMessage,
    },
    /// The peer said it leaves.
    Left,
    /// The session must close, for this reason.
    Fatal(Reason),
}

/// A new connection: its session waits for `Hello`.
pub(super) fn connected(cx: &mut Context, conn: ConnId, nonce: [u8; 32]) {
    let s = Session {
        nonce,
        stage: Stage::Hello,
        key: None,
        kind: ContributorKind::Native,
        caps: None,
        guard: ReplayGuard::default(),
        last_seen: cx.now,
        lease: None,
        ready: false,
        unit: None,
    };
    cx.sessions.insert(conn, s);
}

/// A message of a connection, at the stage its session is at.
pub(super) fn handle(cx: &mut Context, conn: ConnId, msg: ToCoordinator) -> Handled {
    let Some(s) = cx.sessions.get_mut(&conn) else {
        return Handled::Done;
    };
    s.last_seen = cx.now;
    match (s.stage.clone(), msg) {
        (
            Stage::Hello,
            ToCoordinator::Hello {
                key,
                kind,
                software: _,
                capabilities,
            },
        ) => {
            s.key = Some(key);
            s.kind = kind;
            s.caps = Some(capabilities);
            s.stage = Stage::Proof;
            let nonce = s.nonce;
            let msg = ToContributor::Challenge {
                nonce,
                coordinator: cx.id.public(),
                run: cx.spec.name.clone(),
            };
            cx.send(conn, msg);
            Handled::Done
        }
        (Stage::Proof, ToCoordinator::Proof { signature }) => proof(cx, conn, signature),
        (Stage::Active, ToCoordinator::Session(signed)) => session_message(cx, conn, signed),
        (stage, msg) => {
            let what = match msg {
                ToCoordinator::Hello { .. } => "Hello",
                ToCoordinator::Proof { .. } => "Proof",
                ToCoordinator::Session(_) => "a session message",
            };
            Handled::Fatal(Reason::new(
                Code::UnexpectedMessage,
                format!("unexpected {what} while the session is at {stage:?}"),
            ))
        }
    }
}

/// The handshake's proof: the key's signature over the challenge; a refused or banned
/// identity is told why and closed.
fn proof(cx: &mut Context, conn: ConnId, signature: tessera_protocol::Signature) -> Handled {
    let Some(s) = cx.sessions.get_mut(&conn) else {
        return Handled::Done;
    };
    let Some(key) = s.key else {
        return Handled::Done;
    };
    let nonce = s.nonce;
    if let Err(e) = key.verify(
        HANDSHAKE,
        &handshake_message(&nonce, &cx.id.public(), &key),
        &signature,
    ) {
        return Handled::Fatal(Reason::new(
            Code::Handshake,
            format!("handshake failed: {e}"),
        ));
    }
    if cx.credits.is_refused(&key) {
        return Handled::Fatal(Reason::new(
            Code::Refused,
            "this identity's results failed a check: it is refused from this run (see the run log)",
        ));
    }
    if cx.admin.banned.contains(&key) {
        return Handled::Fatal(Reason::new(
            Code::Banned,
            "this identity is banned from the run by its administrator (see the run log)",
        ));
    }
    Handled::Proved { key }
}

/// One session per identity: the other sessions of `key` that a verified session replaces.
pub(super) fn replaced_by(cx: &Context, conn: ConnId, key: PublicKey) -> Vec<ConnId> {
    cx.conns_of(key)
        .into_iter()
        .filter(|&c| c != conn)
        .collect()
}

/// A verified session joins: logged, welcomed with the log's head.
pub(super) fn join(cx: &mut Context, conn: ConnId, key: PublicKey) {
    let Some(s) = cx.sessions.get_mut(&conn) else {
        return;
    };
    s.stage = Stage::Active;
    let kind = s.kind;
    cx.log(LogEvent::Joined { key, kind });
    let welcome = ToContributor::Welcome {
        run: cx.spec.name.clone(),
        log_head: cx.log_head(),
    };
    cx.send(conn, welcome);
}

/// A signed session message of an active session: signature and sequence checked; `Ready`
/// and heartbeats handled here, results of work handed on.
fn session_message(cx: &mut Context, conn: ConnId, signed: Signed<SessionMessage>) -> Handled {
    let Some(s) = cx.sessions.get_mut(&conn) else {
        return Handled::Done;
    };
    let Some(key) = s.key else {
        return Handled::Done;
    };
    if let Err(e) = signed.verify(&s.nonce, &key) {
        return Handled::Fatal(Reason::new(
            Code::BadSignature,
            format!("refused message: {e}"),
        ));
    }
    if let Err(e) = s.guard.accept(signed.seq) {
        cx.refuse(conn, Reason::new(Code::Sequence, format!("ignored: {e}")));
        return Handled::Done;
    }
    let seq = signed.seq;
    match signed.body {
        SessionMessage::Ready { lease, .. } => {
            if s.lease == Some(lease) {
                s.ready = true;
            } else {
                let why = Reason::new(Code::NotYourLease, format!("lease {lease} is not yours"));
                cx.refuse(conn, why);
            }
            Handled::Done
        }
        SessionMessage::Heartbeat { .. } => Handled::Done,
        SessionMessage::Leave => Handled::Left,
        body => Handled::Work { key, seq, body },
    }
}

/// Sessions silent for longer than the run allows.
pub(super) fn silent(cx: &Context) -> Vec<ConnId> {
    cx.sessions
        .iter()
        .filter(|(_, s)| cx.now.saturating_sub(s.last_seen) > cx.spec.silence_ms)
        .map(|(&c, _)| c)
        .collect()
}
