//! A contributor on a GPU: the protocol [`Session`] and the [`GpuState`] that runs its jobs,
//! driven message by message ([`Contributor::handle`]); and [`exchange`], the same drive for any
//! [`Backend`] (the coordinator's simulations use the CPU reference one).

use tessera_compute::Gpu;
use tessera_protocol::messages::{Capabilities, ContributorKind, Receipt};
use tessera_protocol::{Identity, PublicKey, Signature, ToContributor, ToCoordinator};

use crate::backend::{Backend, GpuState, OnGpu};
use crate::error::WorkerError;
use crate::pipeline::PipeReplica;
use crate::replica::Replica;
use crate::session::{Reply, Session, Stats};

/// Handles one message with `session`, runs the job it asks for (if any) on `backend`, and
/// gives the answer back: every message to send, in order.
pub async fn exchange<B: Backend>(
    session: &mut Session,
    backend: &mut B,
    msg: ToContributor,
) -> Result<Vec<ToCoordinator>, WorkerError> {
    let Reply { mut send, job } = session.handle(msg)?;
    if let Some(job) = job {
        let done = backend.run(job).await?;
        send.extend(session.finish(done)?);
    }
    Ok(send)
}

/// A contributor whose work runs on a GPU.
pub struct Contributor {
    session: Session,
    state: GpuState,
}

impl Contributor {
    /// A contributor with identity `id`.
    pub fn new(id: Identity, kind: ContributorKind, caps: Capabilities) -> Self {
        Contributor {
            session: Session::new(id, kind, caps),
            state: GpuState::default(),
        }
    }

    /// Handles one message on `gpu`: the replies to send, in order. A fatal error from the
    /// coordinator is returned as an error.
    pub async fn handle(
        &mut self,
        gpu: &Gpu,
        msg: ToContributor,
    ) -> Result<Vec<ToCoordinator>, WorkerError> {
        exchange(&mut self.session, &mut self.state.on(gpu), msg).await
    }

    /// The protocol session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The protocol session and the backend that runs its jobs on `gpu`, apart (what
    /// [`crate::native::run`] drives).
    pub fn parts<'a>(&'a mut self, gpu: &'a Gpu) -> (&'a mut Session, OnGpu<'a>) {
        (&mut self.session, self.state.on(gpu))
    }

    /// The public key.
    pub fn key(&self) -> PublicKey {
        self.session.key()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.session.stats()
    }

    /// The replica, once a whole-model lease is loaded.
    pub fn replica(&self) -> Option<&Replica> {
        self.state.replica()
    }

    /// The pipeline lease, once loaded.
    pub fn pipeline(&self) -> Option<&PipeReplica> {
        self.state.pipeline()
    }

    /// The last non-fatal error the coordinator reported.
    pub fn last_error(&self) -> Option<&str> {
        self.session.last_error()
    }

    /// The coordinator's signed receipts received since the last call.
    pub fn take_receipts(&mut self) -> Vec<(Receipt, Signature)> {
        self.session.take_receipts()
    }

    /// The last administrator's act the coordinator announced.
    pub fn last_notice(&self) -> Option<&str> {
        self.session.last_notice()
    }

    /// The first message of a session (a reconnect starts over).
    pub fn hello(&mut self) -> ToCoordinator {
        self.session.hello()
    }

    /// A heartbeat, once the session is open.
    pub fn heartbeat(&mut self) -> Result<ToCoordinator, WorkerError> {
        self.session.heartbeat()
    }

    /// How often to send a heartbeat (see [`Session::heartbeat_every`]).
    pub fn heartbeat_every(&self) -> std::time::Duration {
        self.session.heartbeat_every()
    }

    /// A clean goodbye.
    pub fn leave(&mut self) -> Result<ToCoordinator, WorkerError> {
        self.session.leave()
    }
}
