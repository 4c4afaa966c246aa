//! An in-process cluster: the real coordinator state machine and real GPU contributors joined
//! by a message queue instead of sockets, for exactness tests and benchmarks that must see
//! every message.

use std::collections::VecDeque;

use tessera_compute::Gpu;
use tessera_coordinator::core::{Action, Core, Input};
use tessera_protocol::messages::{Capabilities, ContributorKind};
use tessera_protocol::{Identity, ToContributor, ToCoordinator};
use tessera_worker::session::Contributor;
use tessera_worker::WorkerError;

/// `n` native contributors on `gpu` with distinct fixed identities and a 1 GiB budget.
pub fn contributors(gpu: &Gpu, n: usize) -> Vec<Contributor> {
    let caps = Capabilities {
        adapter: gpu.adapter().name.clone(),
        backend: gpu.adapter().backend.clone(),
        max_binding_bytes: gpu.max_binding_bytes(),
        memory_budget_bytes: 1 << 30,
    };
    (0..n)
        .map(|i| {
            Contributor::new(
                Identity::from_seed([i as u8 + 1; 32]),
                ContributorKind::Native,
                caps.clone(),
            )
        })
        .collect()
}

/// Connects every contributor and runs until no message is left in flight (the run finished,
/// or nothing more can happen). `watch` sees every message in both directions.
pub fn run(
    gpu: &Gpu,
    core: &mut Core,
    clients: &mut [Contributor],
    mut watch: impl FnMut(&Message),
) -> Result<(), WorkerError> {
    let mut queue: VecDeque<Input> = VecDeque::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let conn = i as u64 + 1;
        queue.push_back(Input::Connected {
            conn,
            nonce: [conn as u8; 32],
        });
        queue.push_back(Input::Message {
            conn,
            msg: c.hello(),
        });
    }
    while let Some(input) = queue.pop_front() {
        if let Input::Message { msg, .. } = &input {
            watch(&Message::Up(msg));
        }
        for a in core.tick(0, input) {
            if let Action::Send { conn, msg } = a {
                watch(&Message::Down(&msg));
                let replies = pollster::block_on(clients[conn as usize - 1].handle(gpu, msg))?;
                queue.extend(replies.into_iter().map(|msg| Input::Message { conn, msg }));
            }
        }
    }
    Ok(())
}

/// A message seen by [`run`].
pub enum Message<'a> {
    /// Contributor to coordinator.
    Up(&'a ToCoordinator),
    /// Coordinator to contributor.
    Down(&'a ToContributor),
}
