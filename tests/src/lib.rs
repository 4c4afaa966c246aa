//! An in-process cluster: the real coordinator state machine and real GPU contributors joined
//! by a message queue instead of sockets, for exactness tests and benchmarks that must see
//! every message.

use std::collections::{BTreeMap, VecDeque};

use tessera_compute::reference::ModelParams;
use tessera_compute::Gpu;
use tessera_coordinator::core::{Action, Contribution, Core, Input};
use tessera_protocol::log::SignedEntry;
use tessera_protocol::messages::{Capabilities, ContributorKind, SessionMessage};
use tessera_protocol::{Identity, Signed, ToContributor, ToCoordinator};
use tessera_worker::contributor::Contributor;
use tessera_worker::WorkerError;

/// The first adapter, named on stdout.
pub fn gpu() -> Gpu {
    let g = pollster::block_on(Gpu::new(Default::default())).expect("a GPU adapter");
    println!("adapter: {}", g.adapter());
    g
}

/// ‖a − b‖ / ‖b‖.
pub fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Asserts every tensor of `got` is within 1e-5 of `want` (per tensor ‖a−b‖/‖b‖), and prints
/// the worst.
pub fn compare(what: &str, got: &ModelParams<f32>, want: &ModelParams<f32>) {
    let mut worst = 0.0f64;
    for ((name, a), (_, b)) in got.named().into_iter().zip(want.named()) {
        let e = rel(a, b);
        worst = worst.max(e);
        assert!(e <= 1e-5, "{what}: {name} differs by {e:.3e}");
    }
    println!("{what}: worst tensor rel err {worst:.2e}");
}

/// A run from `tests/data/NAME` (TOML), edited by `edit` before it is resolved, with unit
/// deadlines and silences no in-process run reaches.
pub fn data_run(
    name: &str,
    edit: impl FnOnce(&mut tessera_coordinator::config::RunConfig),
) -> (tessera_coordinator::core::RunSpec, ModelParams<f32>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let text = std::fs::read_to_string(dir.join(name)).expect("a run config");
    let mut cfg = tessera_coordinator::config::RunConfig::from_toml(&text).expect("it parses");
    edit(&mut cfg);
    let (mut spec, init) = cfg.resolve(&dir).expect("it resolves");
    spec.unit_deadline_ms = 600_000;
    spec.silence_ms = 600_000;
    (spec, init)
}

/// Mean loss of `w` on the first eight sequences of `tests/data/held-out.txt`.
pub fn held_out_loss(spec: &tessera_coordinator::core::RunSpec, w: &ModelParams<f32>) -> f64 {
    use tessera_compute::reference::{model::loss, Batch};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/held-out.txt");
    let text = std::fs::read(path).expect("held-out text");
    let seq = spec.seq as usize;
    let tokens: Vec<u32> = text.iter().take(seq * 8).map(|&b| b as u32).collect();
    loss::<f32>(&spec.model, w, &Batch::from_sequences(&tokens, seq))
}

/// The fixed identity of contributor `i` (0-based) of [`with_budgets`].
pub fn identity(i: usize) -> Identity {
    Identity::from_seed([i as u8 + 1; 32])
}

/// `n` native contributors on `gpu` with distinct fixed identities and a 1 GiB budget.
pub fn contributors(gpu: &Gpu, n: usize) -> Vec<Contributor> {
    with_budgets(gpu, &vec![1 << 30; n])
}

/// Native contributors on `gpu` with distinct fixed identities, one per memory budget.
pub fn with_budgets(gpu: &Gpu, budgets: &[u64]) -> Vec<Contributor> {
    budgets
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let caps = Capabilities {
                adapter: gpu.adapter().name.clone(),
                backend: gpu.adapter().backend.clone(),
                max_binding_bytes: gpu.max_binding_bytes(),
                memory_budget_bytes: b,
            };
            Contributor::new(identity(i), ContributorKind::Native, caps)
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
    run_with(gpu, core, clients, |m, _| {
        watch(m);
        Control::Go
    })
}

/// What the driver does after a message is seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Deliver it and go on.
    Go,
    /// Kill this contributor (0-based) now, as if its process died: the message is not
    /// delivered, nothing more reaches or leaves it, and the coordinator sees its connection
    /// close.
    Kill(usize),
    /// Stop the run here, as if the coordinator died: the message is not delivered and
    /// [`run_with`] returns.
    Stop,
}

/// Like [`run`], but `watch` also learns which contributor (0-based) a message is to or from,
/// and may kill contributors.
pub fn run_with(
    gpu: &Gpu,
    core: &mut Core,
    clients: &mut [Contributor],
    watch: impl FnMut(&Message, usize) -> Control,
) -> Result<(), WorkerError> {
    run_tampered(gpu, core, clients, watch, |_, _| {}).map(|_| ())
}

/// What a tampered run left: its log, and the whole-model contributions that stood in their
/// round when it closed (accepted, and not withdrawn by a check).
#[derive(Debug, Default)]
pub struct Ran {
    /// The run log.
    pub log: Vec<SignedEntry>,
    /// Contributions applied by closed rounds.
    pub applied: Vec<Contribution>,
}

/// Like [`run_with`], with hostile contributors: `tamper` sees every session message contributor
/// `k` (0-based, with the identity [`identity`]`(k)`) is about to send and may rewrite it; a
/// rewritten message is signed again with that contributor's key, as a hostile contributor signs
/// whatever it sends, so the coordinator has to judge its content.
pub fn run_tampered(
    gpu: &Gpu,
    core: &mut Core,
    clients: &mut [Contributor],
    watch: impl FnMut(&Message, usize) -> Control,
    tamper: impl FnMut(usize, &mut SessionMessage),
) -> Result<Ran, WorkerError> {
    run_misled(gpu, core, clients, watch, |_, _| {}, tamper)
}

/// Like [`run_tampered`], and `mislead` may also rewrite what contributor `k` receives before
/// it handles it (after `watch` saw the original): a hostile contributor that, say, trains on
/// other tokens than its work's.
pub fn run_misled(
    gpu: &Gpu,
    core: &mut Core,
    clients: &mut [Contributor],
    mut watch: impl FnMut(&Message, usize) -> Control,
    mut mislead: impl FnMut(usize, &mut ToContributor),
    mut tamper: impl FnMut(usize, &mut SessionMessage),
) -> Result<Ran, WorkerError> {
    let mut log = Vec::new();
    let mut standing: BTreeMap<(u64, u64), Contribution> = BTreeMap::new();
    let mut applied = Vec::new();
    let mut nonces: Vec<Option<[u8; 32]>> = vec![None; clients.len()];
    let mut dead = vec![false; clients.len()];
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
    let kill = |k: usize, dead: &mut Vec<bool>, queue: &mut VecDeque<Input>| {
        if !dead[k] {
            dead[k] = true;
            let conn = k as u64 + 1;
            queue.retain(|i| !matches!(i, Input::Message { conn: c, .. } if *c == conn));
            queue.push_back(Input::Disconnected { conn });
        }
    };
    while let Some(input) = queue.pop_front() {
        if let Input::Message { msg, conn } = &input {
            let k = *conn as usize - 1;
            match watch(&Message::Up(msg), k) {
                Control::Stop => return Ok(Ran { log, applied }),
                Control::Kill(x) => {
                    kill(x, &mut dead, &mut queue);
                    if x == k {
                        continue;
                    }
                }
                Control::Go => {}
            }
        }
        for a in core.tick(0, input) {
            match &a {
                Action::Logged(e) => log.push(e.clone()),
                Action::Accepted(c) => {
                    standing.insert((c.round, c.slot), c.clone());
                }
                Action::Withdrawn { round, slot } => {
                    standing.remove(&(*round, *slot));
                }
                Action::RoundClosed(sum) => {
                    let keys: Vec<(u64, u64)> = standing
                        .keys()
                        .filter(|k| k.0 == sum.round)
                        .copied()
                        .collect();
                    applied.extend(keys.iter().filter_map(|k| standing.remove(k)));
                }
                _ => {}
            }
            if let Action::Send { conn, mut msg } = a {
                let k = conn as usize - 1;
                if dead[k] {
                    continue;
                }
                match watch(&Message::Down(&msg), k) {
                    Control::Stop => return Ok(Ran { log, applied }),
                    Control::Kill(x) => {
                        kill(x, &mut dead, &mut queue);
                        if x == k {
                            continue;
                        }
                    }
                    Control::Go => {}
                }
                if let ToContributor::Challenge { nonce, .. } = &msg {
                    nonces[k] = Some(*nonce);
                }
                // A contributor the coordinator turned away for good is gone.
                if let ToContributor::Error { fatal: true, .. } = &msg {
                    kill(k, &mut dead, &mut queue);
                    continue;
                }
                mislead(k, &mut msg);
                let replies = pollster::block_on(clients[k].handle(gpu, msg))?;
                for mut msg in replies {
                    if let (ToCoordinator::Session(signed), Some(nonce)) = (&msg, nonces[k]) {
                        let mut body = signed.body.clone();
                        tamper(k, &mut body);
                        if body != signed.body {
                            msg = ToCoordinator::Session(
                                Signed::new(&identity(k), &nonce, signed.seq, body)
                                    .expect("signing"),
                            );
                        }
                    }
                    queue.push_back(Input::Message { conn, msg });
                }
            }
        }
    }
    Ok(Ran { log, applied })
}

/// A message seen by [`run`].
pub enum Message<'a> {
    /// Contributor to coordinator.
    Up(&'a ToCoordinator),
    /// Coordinator to contributor.
    Down(&'a ToContributor),
}
