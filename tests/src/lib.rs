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

/// Chromium's SwiftShader Vulkan driver (its manifest) as Debian's `chromium` package installs
/// it: the CPU adapter a browser tab without a GPU computes on, here opened natively.
pub const SWIFTSHADER_ICD: &str = "/usr/lib/chromium/vk_swiftshader_icd.json";

/// Adds SwiftShader to the Vulkan drivers this process may open (`VK_ADD_DRIVER_FILES`, which
/// the loader reads when an instance is created, so call it before any adapter is opened), once.
pub fn add_swiftshader() -> Result<(), String> {
    static ADDED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ADDED
        .get_or_init(|| {
            if !std::path::Path::new(SWIFTSHADER_ICD).exists() {
                return Err(format!(
                    "{SWIFTSHADER_ICD} is missing: install Debian's chromium package (scripts/test-all does)"
                ));
            }
            let files = match std::env::var("VK_ADD_DRIVER_FILES") {
                Ok(v) if !v.is_empty() => format!("{v}:{SWIFTSHADER_ICD}"),
                _ => SWIFTSHADER_ICD.to_string(),
            };
            std::env::set_var("VK_ADD_DRIVER_FILES", files);
            Ok(())
        })
        .clone()
}

/// Opens the adapter whose name contains `name` (see `GpuOptions::adapter`), named on stdout.
pub fn gpu_named(name: &str) -> Result<Gpu, String> {
    let g = pollster::block_on(Gpu::new(tessera_compute::GpuOptions {
        adapter: Some(name.to_string()),
        ..Default::default()
    }))
    .map_err(|e| e.to_string())?;
    println!("adapter: {}", g.adapter());
    Ok(g)
}

/// Two different adapters side by side: the first one this machine lists that is not
/// SwiftShader (lavapipe without a GPU) and SwiftShader, so that one run's checks compare work
/// across the two adapters honest contributors most often differ by (a native worker's, a
/// browser tab's).
pub fn two_adapters() -> Result<[Gpu; 2], String> {
    add_swiftshader()?;
    let all = pollster::block_on(Gpu::adapters());
    let other = all
        .iter()
        .find(|a| !a.name.to_lowercase().contains("swiftshader"))
        .ok_or_else(|| format!("no adapter beside SwiftShader among {all:?}"))?;
    Ok([gpu_named(&other.to_string())?, gpu_named("swiftshader")?])
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
    with_budgets_on(gpu, budgets)
}

/// Native contributors with distinct fixed identities, one per memory budget, contributor `k`
/// naming the adapter `devices` gives it.
pub fn with_budgets_on<'a>(devices: impl Into<Devices<'a>>, budgets: &[u64]) -> Vec<Contributor> {
    let devices = devices.into();
    budgets
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let gpu = devices.of(i);
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

/// The adapters a run's contributors compute on, so that one run may mix adapters (lavapipe
/// and SwiftShader, say) and its checks compare results across them.
#[derive(Clone, Copy)]
pub enum Devices<'a> {
    /// Every contributor on one adapter.
    One(&'a Gpu),
    /// Contributor `k` (0-based) on `gpus[k]`: one entry per contributor.
    Each(&'a [&'a Gpu]),
}

impl<'a> Devices<'a> {
    /// Contributor `k`'s adapter.
    pub fn of(&self, k: usize) -> &'a Gpu {
        match self {
            Devices::One(g) => g,
            Devices::Each(all) => all
                .get(k)
                .unwrap_or_else(|| panic!("no adapter given for contributor {k}")),
        }
    }
}

impl<'a> From<&'a Gpu> for Devices<'a> {
    fn from(g: &'a Gpu) -> Self {
        Devices::One(g)
    }
}

impl<'a> From<&'a [&'a Gpu]> for Devices<'a> {
    fn from(all: &'a [&'a Gpu]) -> Self {
        Devices::Each(all)
    }
}

/// Like [`run_with`], with hostile contributors: `tamper` sees every session message contributor
/// `k` (0-based, with the identity [`identity`]`(k)`) is about to send and may rewrite it; a
/// rewritten message is signed again with that contributor's key, as a hostile contributor signs
/// whatever it sends, so the coordinator has to judge its content.
pub fn run_tampered<'a>(
    gpu: impl Into<Devices<'a>>,
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
pub fn run_misled<'a>(
    gpu: impl Into<Devices<'a>>,
    core: &mut Core,
    clients: &mut [Contributor],
    mut watch: impl FnMut(&Message, usize) -> Control,
    mut mislead: impl FnMut(usize, &mut ToContributor),
    mut tamper: impl FnMut(usize, &mut SessionMessage),
) -> Result<Ran, WorkerError> {
    let devices = gpu.into();
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
                let replies = pollster::block_on(clients[k].handle(devices.of(k), msg))?;
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
