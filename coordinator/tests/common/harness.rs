//! A scripted run of the core message by message: a harness that connects [`Client`]s and
//! ticks the core, and what its actions sent, assigned, closed and judged.

use tessera_coordinator::core::{Action, ConnId, Core, Input};
use tessera_protocol::messages::{LogHead, SessionMessage, Verdict, Work};
use tessera_protocol::ToContributor;

use super::Client;

/// A core, its clock and the next connection id.
pub struct Harness {
    pub core: Core,
    pub now: u64,
    pub next: ConnId,
}

/// What `conn` was sent.
pub fn sends(actions: &[Action], conn: ConnId) -> Vec<ToContributor> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn: c, msg } if *c == conn => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

/// The work units sent, with their connections.
pub fn works(actions: &[Action]) -> Vec<(ConnId, Work)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                conn,
                msg: ToContributor::Work(w),
            } => Some((*conn, w.clone())),
            _ => None,
        })
        .collect()
}

/// Whether `conn` was closed.
pub fn closed(actions: &[Action], conn: ConnId) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Close { conn: c, .. } if *c == conn))
}

/// The verdicts of the receipts sent.
pub fn verdicts(actions: &[Action]) -> Vec<Verdict> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                msg: ToContributor::Receipt { receipt, .. },
                ..
            } => Some(receipt.verdict.clone()),
            _ => None,
        })
        .collect()
}

impl Harness {
    /// A harness around `core` at time 0.
    pub fn new(core: Core) -> Self {
        Harness {
            core,
            now: 0,
            next: 1,
        }
    }
    /// Ticks the core at the harness's time.
    pub fn tick(&mut self, input: Input) -> Vec<Action> {
        self.core.tick(self.now, input)
    }
    /// Connects and completes the handshake; returns the connection and what the core said.
    pub fn join(&mut self, cl: &mut Client, budget: u64) -> (ConnId, Vec<Action>) {
        let conn = self.next;
        self.next += 1;
        let mut nonce = [0u8; 32];
        nonce[0] = conn as u8;
        nonce[1] = 0xaa;
        // A connection alone changes nothing (the new run's first tick also logs its start).
        assert!(self
            .tick(Input::Connected { conn, nonce })
            .iter()
            .all(|a| matches!(a, Action::Logged(_))));
        let a = self.tick(Input::Message {
            conn,
            msg: cl.hello(budget),
        });
        let ToContributor::Challenge {
            nonce, coordinator, ..
        } = sends(&a, conn)[0].clone()
        else {
            panic!("no challenge")
        };
        let proof = cl.proof(nonce, &coordinator);
        (conn, self.tick(Input::Message { conn, msg: proof }))
    }
    /// Joins and declares the lease's weights loaded; returns the work assigned, if any.
    pub fn join_ready(&mut self, cl: &mut Client) -> (ConnId, Vec<Action>) {
        let (conn, a) = self.join(cl, 1 << 30);
        let lease = sends(&a, conn)
            .iter()
            .find_map(|m| match m {
                ToContributor::Lease(l) => Some(l.lease),
                _ => None,
            })
            .expect("a lease");
        let msg = cl.signed(SessionMessage::Ready {
            lease,
            log_head: LogHead::default(),
        });
        (conn, self.tick(Input::Message { conn, msg }))
    }
    /// Sends `sub` as a signed submission on `conn`.
    pub fn submit(
        &mut self,
        cl: &mut Client,
        conn: ConnId,
        sub: tessera_protocol::messages::Submission,
    ) -> Vec<Action> {
        let msg = cl.signed(SessionMessage::Submit(sub));
        self.tick(Input::Message { conn, msg })
    }
}
