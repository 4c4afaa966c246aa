//! Sessions: the handshake (hello, challenge, proof), signed-message checks with replay
//! protection, leases and weight transfer, and dropping a session (its unit goes back to the
//! queue at once).

use tessera_compute::hf::tensor_shapes;
use tessera_protocol::identity::{handshake_message, HANDSHAKE};
use tessera_protocol::log::LogEvent;
use tessera_protocol::messages::{Capabilities, ContributorKind, Lease, SessionMessage, ShardSpec};
use tessera_protocol::{
    Code, PublicKey, Reason, ReplayGuard, Signed, TensorPayload, ToContributor, ToCoordinator,
};

use super::{Action, ConnId, Core};

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

impl Core {
    pub(super) fn connected(&mut self, conn: ConnId, nonce: [u8; 32]) {
        let s = Session {
            nonce,
            stage: Stage::Hello,
            key: None,
            kind: ContributorKind::Native,
            caps: None,
            guard: ReplayGuard::default(),
            last_seen: self.cx.now,
            lease: None,
            ready: false,
            unit: None,
        };
        self.cx.sessions.insert(conn, s);
    }

    pub(super) fn message(&mut self, conn: ConnId, msg: ToCoordinator) {
        let Some(s) = self.cx.sessions.get_mut(&conn) else {
            return;
        };
        s.last_seen = self.cx.now;
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
                    coordinator: self.cx.id.public(),
                    run: self.cx.spec.name.clone(),
                };
                self.cx.send(conn, msg);
            }
            (Stage::Proof, ToCoordinator::Proof { signature }) => self.proof(conn, signature),
            (Stage::Active, ToCoordinator::Session(signed)) => self.session_message(conn, signed),
            (stage, msg) => {
                let what = match msg {
                    ToCoordinator::Hello { .. } => "Hello",
                    ToCoordinator::Proof { .. } => "Proof",
                    ToCoordinator::Session(_) => "a session message",
                };
                self.fatal(
                    conn,
                    Reason::new(
                        Code::UnexpectedMessage,
                        format!("unexpected {what} while the session is at {stage:?}"),
                    ),
                );
            }
        }
    }

    /// The handshake's proof: the key's signature over the challenge; a refused or banned
    /// identity is told why and closed, a verified one joins, replacing its older session.
    fn proof(&mut self, conn: ConnId, signature: tessera_protocol::Signature) {
        let Some(s) = self.cx.sessions.get_mut(&conn) else {
            return;
        };
        let Some(key) = s.key else { return };
        let nonce = s.nonce;
        if let Err(e) = key.verify(
            HANDSHAKE,
            &handshake_message(&nonce, &self.cx.id.public(), &key),
            &signature,
        ) {
            return self.fatal(
                conn,
                Reason::new(Code::Handshake, format!("handshake failed: {e}")),
            );
        }
        if self.cx.credits.is_refused(&key) {
            return self.fatal(
                conn,
                Reason::new(
                    Code::Refused,
                    "this identity's results failed a check: it is refused from this run (see the run log)",
                ),
            );
        }
        if self.cx.admin.banned.contains(&key) {
            return self.fatal(
                conn,
                Reason::new(
                    Code::Banned,
                    "this identity is banned from the run by its administrator (see the run log)",
                ),
            );
        }
        // One session per identity: a reconnect replaces the old session.
        let old: Vec<ConnId> = self
            .cx
            .sessions
            .iter()
            .filter(|(&c, o)| c != conn && o.active() == Some(key))
            .map(|(&c, _)| c)
            .collect();
        for c in old {
            self.cx.out.push(Action::Close {
                conn: c,
                reason: "replaced by a newer session of the same identity".into(),
            });
            self.drop_session(c, Some(Reason::new(Code::Replaced, "replaced")));
        }
        let kind = {
            let s = self.cx.sessions.get_mut(&conn).expect("checked above");
            s.stage = Stage::Active;
            s.kind
        };
        self.cx.log(LogEvent::Joined { key, kind });
        self.cx.send(
            conn,
            ToContributor::Welcome {
                run: self.cx.spec.name.clone(),
                log_head: self.cx.log_head(),
            },
        );
        self.offer_lease(conn);
    }

    /// A signed session message of an active session: signature and sequence checked, then
    /// handed to the part it belongs to.
    fn session_message(&mut self, conn: ConnId, signed: Signed<SessionMessage>) {
        let Some(s) = self.cx.sessions.get_mut(&conn) else {
            return;
        };
        let Some(key) = s.key else { return };
        if let Err(e) = signed.verify(&s.nonce, &key) {
            return self.fatal(
                conn,
                Reason::new(Code::BadSignature, format!("refused message: {e}")),
            );
        }
        if let Err(e) = s.guard.accept(signed.seq) {
            return self
                .cx
                .refuse(conn, Reason::new(Code::Sequence, format!("ignored: {e}")));
        }
        let seq = signed.seq;
        match signed.body {
            SessionMessage::Ready { lease, .. } => {
                if s.lease == Some(lease) {
                    s.ready = true;
                } else {
                    self.cx.refuse(
                        conn,
                        Reason::new(Code::NotYourLease, format!("lease {lease} is not yours")),
                    );
                }
            }
            SessionMessage::Heartbeat { .. } => {}
            SessionMessage::Submit(sub) if self.is_replicas() => self.submit(conn, key, seq, sub),
            SessionMessage::Output(o) if !self.is_replicas() => self.output(conn, key, seq, o),
            SessionMessage::Grads(g) if !self.is_replicas() => self.grads(conn, key, seq, g),
            SessionMessage::Audited(r) if !self.is_replicas() => self.audited(conn, key, seq, r),
            SessionMessage::Submit(_)
            | SessionMessage::Output(_)
            | SessionMessage::Audited(_)
            | SessionMessage::Grads(_) => self.cx.refuse(
                conn,
                Reason::new(
                    Code::WrongRegime,
                    "that kind of result does not belong to this run's regime",
                ),
            ),
            SessionMessage::Leave => {
                self.cx.out.push(Action::Close {
                    conn,
                    reason: "left".into(),
                });
                self.drop_session(conn, Some(Reason::new(Code::Left, "left")));
            }
        }
    }

    /// Gives the session a whole-model lease if its budget allows, and sends the weights.
    fn offer_lease(&mut self, conn: ConnId) {
        if !self.is_replicas() {
            return self.offer_pipeline_lease(conn);
        }
        let need = self.cx.spec.replica_bytes();
        let Some(s) = self.cx.sessions.get_mut(&conn) else {
            return;
        };
        let budget = s.caps.as_ref().map_or(0, |c| c.memory_budget_bytes);
        if budget < need {
            let msg = format!("a replica of this run needs {need} bytes; your memory budget is {budget}. Raise it to take part");
            return self.cx.refuse(conn, Reason::new(Code::Budget, msg));
        }
        let lease = self.cx.next_lease;
        self.cx.next_lease += 1;
        s.lease = Some(lease);
        s.ready = false;
        let cfg = &self.cx.spec.model;
        let shards: Vec<ShardSpec> = vec![ShardSpec::Embed {
            rows: [0, cfg.vocab_size as u64],
        }]
        .into_iter()
        .chain((0..cfg.num_hidden_layers as u64).flat_map(|layer| {
            [
                ShardSpec::Attn {
                    layer,
                    groups: [0, cfg.num_key_value_heads as u64],
                },
                ShardSpec::Mlp {
                    layer,
                    cols: [0, cfg.intermediate_size as u64],
                },
            ]
        }))
        .chain([ShardSpec::Head {
            cols: [0, cfg.vocab_size as u64],
        }])
        .collect();
        let chunk = self.cx.spec.weights_frame_elems.max(1);
        let mut frames = Vec::new();
        for ((name, shape), (_, values)) in
            tensor_shapes(cfg).into_iter().zip(self.cx.weights.named())
        {
            for (i, part) in values.chunks(chunk).enumerate() {
                frames.push(ToContributor::Weights {
                    lease,
                    shard: 0,
                    version: self.cx.version,
                    name: name.clone(),
                    shape: shape.iter().map(|&d| d as u64).collect(),
                    offset: (i * chunk) as u64,
                    values: TensorPayload::from_f32(&[part.len()], part),
                });
            }
        }
        if let Some(key) = self.cx.sessions.get(&conn).and_then(|s| s.active()) {
            self.cx.log(LogEvent::Leased {
                key,
                lease,
                shards: shards.clone(),
            });
        }
        let cfg = &self.cx.spec.model;
        let msg = ToContributor::Lease(Lease {
            lease,
            config_json: cfg.to_hf_json(),
            shards,
            optimizer: self.cx.spec.optimizer,
            clip: self.cx.spec.inner_clip,
            sync: self.cx.spec.sync,
            rows: self.cx.spec.batch * self.cx.spec.seq,
            version: self.cx.version,
            frames: frames.len() as u32,
            activations: None,
            fresh_units: self.replays_on(),
        });
        self.cx.send(conn, msg);
        for f in frames {
            self.cx.send(conn, f);
        }
    }

    /// Forgets a session; its unit in progress goes back to the queue.
    pub(super) fn drop_session(&mut self, conn: ConnId, why: Option<Reason>) {
        if let Some(s) = self.cx.sessions.remove(&conn) {
            if let Some(key) = s.active() {
                self.cx.log(LogEvent::Left {
                    key,
                    reason: why.unwrap_or_else(|| Reason::new(Code::Disconnected, "disconnected")),
                });
            }
            if !self.is_replicas() {
                if let Some(lease) = s.lease {
                    self.pipeline_lease_lost(lease);
                }
            } else if let Some(unit) = s.unit {
                let replay = self
                    .replicas_mut()
                    .is_some_and(|r| r.round.replays.lost(unit));
                if !replay {
                    replicas!(self).round.requeue(unit);
                }
            }
        }
    }

    /// Whole-model runs: re-queues units past their deadline.
    pub(super) fn expire_units(&mut self) {
        let now = self.cx.now;
        for (conn, unit) in replicas!(self).round.expired(now) {
            if let Some(s) = self.cx.sessions.get_mut(&conn) {
                if s.unit == Some(unit) {
                    s.unit = None;
                }
            }
            self.cx.send(conn, ToContributor::Cancel { unit });
        }
    }

    /// Drops silent sessions.
    pub(super) fn expire_sessions(&mut self) {
        let now = self.cx.now;
        let silent: Vec<ConnId> = self
            .cx
            .sessions
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.last_seen) > self.cx.spec.silence_ms)
            .map(|(&c, _)| c)
            .collect();
        for c in silent {
            self.cx.out.push(Action::Close {
                conn: c,
                reason: "silent for too long".into(),
            });
            self.drop_session(c, Some(Reason::new(Code::Silent, "silent")));
        }
    }
}
