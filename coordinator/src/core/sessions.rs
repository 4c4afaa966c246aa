//! Sessions: the handshake (hello, challenge, proof), signed-message checks with replay
//! protection, and silent sessions. Each function says what the message did ([`Handled`]);
//! the dispatcher (`Core::message`) hands a session's work to its regime, which also takes the
//! work of a dropped session back (`Part::session_lost`).

use tessera_protocol::identity::{handshake_message, HANDSHAKE};
use tessera_protocol::messages::{ContributorKind, SessionMessage};
use tessera_protocol::{
    Code, PublicKey, Reason, ReplayGuard, Signed, ToContributor, ToCoordinator,
};

use super::context::Context;
use super::session::{Session, Stage};
use super::ConnId;

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
        waiting_since: cx.now,
        unlogged_rejections: 0,
        leased_at: 0,
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
    if cx.credits.rejections_spent(&key) {
        return Handled::Fatal(spent_rejections());
    }
    if cx.admin.banned.contains(&key) {
        return Handled::Fatal(Reason::new(
            Code::Banned,
            "this identity is banned from the run by its administrator (see the run log)",
        ));
    }
    if cx.spec.invited.as_ref().is_some_and(|i| !i.contains(&key)) {
        return Handled::Fatal(Reason::new(
            Code::NotInvited,
            "this run is invite-only and this identity is not invited: send its public key (tessera worker prints it) to the run's operator, who lists it in [admission] invite",
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

/// A verified session joins: welcomed with the log's head. Its `Joined` entry waits for the
/// first entry the session causes (see `Context::joined`).
pub(super) fn join(cx: &mut Context, conn: ConnId) {
    if !cx.sessions.contains_key(&conn) {
        return;
    }
    cx.activate(conn);
    let welcome = ToContributor::Welcome {
        run: cx.spec.name.clone(),
        log_head: cx.log_head(),
        heartbeat_ms: u32::try_from(cx.spec.heartbeat_every_ms()).unwrap_or(u32::MAX),
        idle_heartbeat_ms: u32::try_from(cx.spec.idle_heartbeat_every_ms()).unwrap_or(u32::MAX),
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

/// The transport heard from an active session at `heard` (ms; heartbeats it took itself): it
/// was not silent then.
pub(super) fn alive(cx: &mut Context, conn: ConnId, heard: u64) {
    let now = cx.now;
    if let Some(s) = cx
        .sessions
        .get_mut(&conn)
        .filter(|s| s.stage == Stage::Active)
    {
        s.last_seen = s.last_seen.max(heard.min(now));
    }
}

/// Sessions silent at `now` for longer than the run allows.
pub(super) fn silent(cx: &Context, now: u64) -> Vec<ConnId> {
    cx.sessions
        .iter()
        .filter(|(_, s)| {
            let (since, limit) = silence_of(cx, s);
            now.saturating_sub(since) > limit
        })
        .map(|(&c, _)| c)
        .collect()
}

/// Since when a session counts as silent, and for how long it may be: a session in its
/// handshake or holding a lease or a unit, the run's silence from when it was last heard from
/// or leased (a lease tells it to heartbeat faster); an active one holding neither, the longer
/// idle silence
/// ([`RunSpec::idle_silence_ms`](super::RunSpec::idle_silence_ms)).
pub(super) fn silence_of(cx: &Context, s: &Session) -> (u64, u64) {
    if s.active().is_none() || s.lease.is_some() || s.unit.is_some() {
        (s.last_seen.max(s.leased_at), cx.spec.silence_ms)
    } else {
        (s.last_seen, cx.spec.idle_silence_ms())
    }
}

/// Why an identity that spent its rejections is refused.
pub(super) fn spent_rejections() -> Reason {
    Reason::new(
        Code::Refused,
        format!(
            "{} or more of this identity's results were rejected, more than were accepted: it is refused from this run (see the run log)",
            super::credits::MAX_REJECTED
        ),
    )
}

#[cfg(test)]
mod tests {
    use tessera_protocol::identity::{handshake_message, HANDSHAKE};
    use tessera_protocol::messages::{Capabilities, ContributorKind, LogHead, SessionMessage};
    use tessera_protocol::{Code, Identity, Signed, ToContributor, ToCoordinator};

    use super::super::context::testing::{active, context, spec};
    use super::super::context::Context;
    use super::super::Action;
    use super::{alive, connected, handle, join, silent, Handled};

    fn hello(id: &Identity) -> ToCoordinator {
        ToCoordinator::Hello {
            key: id.public(),
            kind: ContributorKind::Browser,
            software: "test".into(),
            capabilities: Capabilities {
                adapter: "none".into(),
                backend: "none".into(),
                max_binding_bytes: 1 << 20,
                memory_budget_bytes: 1 << 30,
            },
        }
    }

    /// Connects `conn` and sends Hello: the challenge's nonce.
    fn challenged(cx: &mut Context, conn: u64, id: &Identity) -> [u8; 32] {
        connected(cx, conn, [conn as u8; 32]);
        assert!(matches!(handle(cx, conn, hello(id)), Handled::Done));
        match cx.out.pop() {
            Some(Action::Send {
                msg: ToContributor::Challenge { nonce, run, .. },
                ..
            }) => {
                assert_eq!(run, "parts");
                nonce
            }
            other => panic!("{other:?}"),
        }
    }

    fn proof(cx: &Context, nonce: [u8; 32], id: &Identity) -> ToCoordinator {
        let m = handshake_message(&nonce, &cx.id.public(), &id.public());
        ToCoordinator::Proof {
            signature: id.sign(HANDSHAKE, &m),
        }
    }

    fn code(h: Handled) -> Code {
        match h {
            Handled::Fatal(why) => why.code,
            other => panic!("{other:?}"),
        }
    }

    /// The whole handshake of `id` on `conn`: the session's nonce and key, once joined.
    fn joined(
        cx: &mut Context,
        conn: u64,
        id: &Identity,
    ) -> ([u8; 32], tessera_protocol::PublicKey) {
        let nonce = challenged(cx, conn, id);
        let p = proof(cx, nonce, id);
        let Handled::Proved { key } = handle(cx, conn, p) else {
            panic!("proof refused");
        };
        join(cx, conn);
        (nonce, key)
    }

    #[test]
    fn a_session_without_a_lease_may_be_silent_longer_and_a_lease_restarts_the_count() {
        let mut cx = context(spec(1));
        cx.spec.silence_ms = 20_000;
        assert_eq!(cx.spec.idle_silence_ms(), 80_000);
        let (_, key) = joined(&mut cx, 1, &Identity::from_seed([1; 32]));
        let joined_at = cx.sessions[&1].last_seen;
        assert!(
            silent(&cx, joined_at + 79_999).is_empty(),
            "idle: 80 s allowed"
        );
        assert_eq!(silent(&cx, joined_at + 80_001), vec![1]);
        // Leased 60 s in (it heard of the lease at the idle pace): 20 s from then.
        let leased = joined_at + 60_000;
        let s = cx.sessions.get_mut(&1).expect("session");
        (s.lease, s.leased_at) = (Some(1), leased);
        assert!(silent(&cx, leased + 20_000).is_empty());
        assert_eq!(silent(&cx, leased + 20_001), vec![1]);
        // Heard from later: from then.
        cx.sessions.get_mut(&1).expect("session").last_seen = leased + 10_000;
        assert!(silent(&cx, leased + 30_000).is_empty());
        assert_eq!(silent(&cx, leased + 30_001), vec![1]);
        assert_eq!(cx.conns_of(key), vec![1]);
        // A silence limit above four idle heartbeats stays the idle one.
        cx.spec.silence_ms = 600_000;
        assert_eq!(cx.spec.idle_silence_ms(), 600_000);
    }

    #[test]
    fn a_good_proof_joins_and_a_bad_one_or_a_banned_key_is_fatal() {
        let mut cx = context(spec(1));
        cx.spec.silence_ms = 20_000;
        let id = Identity::from_seed([1; 32]);
        let (_, key) = joined(&mut cx, 1, &id);
        assert_eq!(key, id.public());
        assert_eq!(cx.sessions[&1].active(), Some(key));
        // The welcome asks for heartbeats a quarter of the run's silence apart, and four
        // times rarer while the session holds no lease.
        assert!(matches!(
            cx.out.last(),
            Some(Action::Send {
                msg: ToContributor::Welcome {
                    heartbeat_ms: 5_000,
                    idle_heartbeat_ms: 20_000,
                    ..
                },
                ..
            })
        ));

        let other = Identity::from_seed([2; 32]);
        let nonce = challenged(&mut cx, 2, &other);
        let forged = proof(&cx, nonce, &id);
        assert_eq!(code(handle(&mut cx, 2, forged)), Code::Handshake);

        let banned = Identity::from_seed([3; 32]);
        cx.admin.banned.insert(banned.public());
        let nonce = challenged(&mut cx, 3, &banned);
        let p = proof(&cx, nonce, &banned);
        assert_eq!(code(handle(&mut cx, 3, p)), Code::Banned);
    }

    #[test]
    fn an_invite_only_run_takes_the_invited_and_refuses_everyone_else_after_the_proof() {
        let friend = Identity::from_seed([1; 32]);
        let stranger = Identity::from_seed([2; 32]);
        let mut spec = spec(1);
        spec.invited = Some([friend.public()].into());
        let mut cx = context(spec);
        let (_, key) = joined(&mut cx, 1, &friend);
        assert_eq!(cx.sessions[&1].active(), Some(key));
        let nonce = challenged(&mut cx, 2, &stranger);
        let p = proof(&cx, nonce, &stranger);
        assert_eq!(code(handle(&mut cx, 2, p)), Code::NotInvited);
        // A stranger that cannot prove the friend's key gets no further than before.
        let nonce = challenged(&mut cx, 3, &stranger);
        let forged = proof(&cx, nonce, &friend);
        assert_eq!(code(handle(&mut cx, 3, forged)), Code::Handshake);
    }

    #[test]
    fn messages_out_of_turn_are_fatal() {
        let mut cx = context(spec(1));
        let id = Identity::from_seed([1; 32]);
        connected(&mut cx, 1, [1; 32]);
        let early = proof(&cx, [1; 32], &id);
        assert_eq!(code(handle(&mut cx, 1, early)), Code::UnexpectedMessage);
        // A connection the core does not know is ignored.
        assert!(matches!(handle(&mut cx, 9, hello(&id)), Handled::Done));
    }

    #[test]
    fn signed_messages_are_checked_for_signer_and_sequence() {
        let mut cx = context(spec(1));
        let id = Identity::from_seed([1; 32]);
        let (nonce, _) = joined(&mut cx, 1, &id);
        cx.out.clear();
        let heartbeat = SessionMessage::Heartbeat {
            log_head: LogHead::default(),
        };
        let signed = |by: &Identity, seq, body| {
            ToCoordinator::Session(Signed::new(by, &nonce, seq, body).unwrap())
        };
        assert!(matches!(
            handle(&mut cx, 1, signed(&id, 1, heartbeat.clone())),
            Handled::Done
        ));
        // The same sequence number again: refused, the session goes on.
        assert!(matches!(
            handle(&mut cx, 1, signed(&id, 1, heartbeat.clone())),
            Handled::Done
        ));
        assert!(matches!(
            cx.out.pop(),
            Some(Action::Send { msg: ToContributor::Error { fatal: false, reason }, .. }) if reason.code == Code::Sequence
        ));
        let ready = SessionMessage::Ready {
            lease: 5,
            log_head: LogHead::default(),
        };
        assert!(matches!(
            handle(&mut cx, 1, signed(&id, 2, ready)),
            Handled::Done
        ));
        assert!(matches!(
            cx.out.pop(),
            Some(Action::Send { msg: ToContributor::Error { reason, .. }, .. }) if reason.code == Code::NotYourLease
        ));
        assert!(!cx.sessions[&1].ready);
        let other = Identity::from_seed([2; 32]);
        let forged = signed(&other, 3, heartbeat);
        assert_eq!(code(handle(&mut cx, 1, forged)), Code::BadSignature);
        assert!(matches!(
            handle(&mut cx, 1, signed(&id, 4, SessionMessage::Leave)),
            Handled::Left
        ));
    }

    #[test]
    fn a_session_is_silent_once_the_run_s_silence_has_passed() {
        let mut cx = context(spec(1).with_deadlines(1_000, 2_000));
        connected(&mut cx, 1, [1; 32]);
        cx.now = 1_500;
        connected(&mut cx, 2, [2; 32]);
        assert!(silent(&cx, 2_000).is_empty());
        assert_eq!(silent(&cx, 2_001), vec![1]);
    }

    #[test]
    fn the_transport_s_word_that_heartbeats_came_keeps_an_active_session_alive() {
        let mut cx = context(spec(1).with_deadlines(1_000, 2_000));
        active(&mut cx, 1, 1, Some(1));
        connected(&mut cx, 2, [2; 32]);
        cx.now = 2_500;
        // Heard at 1,900: alive then. Only a session past its handshake is kept alive so.
        alive(&mut cx, 1, 1_900);
        alive(&mut cx, 2, 1_900);
        alive(&mut cx, 3, 1_900);
        assert_eq!(silent(&cx, 3_000), vec![2]);
        assert_eq!(silent(&cx, 3_901), vec![1, 2]);
        // An older word changes nothing; a later one than the core's now counts as now.
        alive(&mut cx, 1, 100);
        assert_eq!(silent(&cx, 3_901), vec![1, 2]);
        alive(&mut cx, 1, 9_999);
        assert_eq!(silent(&cx, 4_500), vec![2]);
        assert_eq!(silent(&cx, 4_501), vec![1, 2]);
    }
}
