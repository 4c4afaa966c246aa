//! A soak against a real `tessera coordinator` process (`tests/data/soak.toml`: whole-model,
//! six replica slots a round, dense sync, replays on, refusal on three agreeing auditors).
//! Real workers — the worker library's WebSocket transport and protocol session on this
//! machine's adapter, one thread each — train while the run is attacked from every side:
//! - churn: 3 of the 10 honest workers (30%) drop their connection without a goodbye every
//!   few seconds and come back with a fresh worker state and the same key, as a crashed and
//!   restarted process would;
//! - byzantine workers (3 of 15 workers, 20%): one sends random updates from its first unit;
//!   two are patient, behave for their first units and then send updates scaled by 1.5 and
//!   1.6 (under the norm check: only a replay catches them), the replays they run included;
//! - a colluding pair: both scale every update they compute by 1.25, so when one replays the
//!   other's unit they agree, and when either replays honest work it disagrees alike;
//! - stallers: a worker that answers each unit only after its deadline, and a hand-spoken
//!   session that says it loaded its lease, takes work and never answers, heartbeating all
//!   along;
//! - a flooder: junk frames, forged proofs, half-sent HTTP requests and status and log reads,
//!   on fresh connections all run long.
//!
//! Every round must close; no honest identity may be refused; the log must verify
//! (`tessera verify`, draws and picks of replayers included, and a re-signed log with a forged
//! pick must not); and the held-out loss of the final checkpoint must end
//! within 2% of the same run trained by honest workers alone.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tessera_compute::reference::model::SplitMix;
use tessera_compute::Gpu;
use tessera_protocol::identity::HANDSHAKE;
use tessera_protocol::messages::{Capabilities, ContributorKind, SessionMessage, Update};
use tessera_protocol::{encode, Identity, TensorPayload, ToContributor, ToCoordinator};
use tessera_worker::backend::{Backend, Done, Job};
use tessera_worker::session::Session;
use tessera_worker::{Contributor, WorkerError};
use tokio::sync::watch;

use common::contributor::{handshake, try_say};
use common::{coordinator_with, data, eval, free_port, loopback_crowd, scratch, verify_dir};

/// How long either run may take.
const LIMIT: Duration = Duration::from_secs(900);
const HONEST: usize = 10;
/// Honest workers that churn.
const CHURNERS: usize = 3;
/// Units a patient attacker computes honestly before it cheats.
const PATIENCE: u64 = 2;
/// How long the slow staller sits on a unit: past the run's unit deadline (20 s) and silence
/// (15 s).
const SLOW: Duration = Duration::from_secs(25);

/// What a worker does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Honest,
    /// Honest, but drops its connection every few seconds and comes back.
    Churner,
    /// Random updates of the honest ones' magnitudes.
    Random,
    /// Honest for [`PATIENCE`] units, then its updates scaled by this.
    Patient(f32),
    /// Every update scaled by 1.25, as its partner does.
    Colluder,
    /// Answers each unit after [`SLOW`].
    Slow,
}

impl Role {
    fn honest(self) -> bool {
        matches!(self, Role::Honest | Role::Churner)
    }
}

/// The workers of the attacked run, by identity index.
fn crew() -> Vec<Role> {
    let mut roles = vec![Role::Honest; HONEST - CHURNERS];
    roles.extend([Role::Churner; CHURNERS]);
    roles.extend([
        Role::Random,
        Role::Patient(1.5),
        Role::Patient(1.6),
        Role::Colluder,
        Role::Colluder,
        Role::Slow,
    ]);
    roles
}

fn identity(i: usize) -> Identity {
    Identity::from_seed([i as u8 + 1; 32])
}

fn caps(gpu: &Gpu) -> Capabilities {
    Capabilities {
        adapter: gpu.adapter().name.clone(),
        backend: gpu.adapter().backend.clone(),
        max_binding_bytes: gpu.max_binding_bytes(),
        memory_budget_bytes: 1 << 30,
    }
}

/// Each value of a dense update, through `f`.
fn map_dense(u: &mut Update, mut f: impl FnMut(f32) -> f32) {
    let Update::Dense(ts) = u else {
        panic!("the soak run syncs dense updates")
    };
    for t in ts {
        let shape: Vec<usize> = t.tensor.shape.iter().map(|&d| d as usize).collect();
        let v: Vec<f32> = t
            .tensor
            .to_f32()
            .expect("an f32 update")
            .into_iter()
            .map(&mut f)
            .collect();
        t.tensor = TensorPayload::from_f32(&shape, &v);
    }
}

/// The GPU's backend with a hostile role's doings on top.
struct Played<B> {
    inner: B,
    role: Role,
    trained: u64,
    rng: SplitMix,
}

impl<B: Backend> Backend for Played<B> {
    async fn run(&mut self, job: Job) -> Result<Done, WorkerError> {
        let mut done = self.inner.run(job).await?;
        if let Done::Trained(r) = &mut done {
            self.trained += 1;
            match self.role {
                Role::Random => {
                    let rng = &mut self.rng;
                    map_dense(&mut r.update, |x| {
                        let sign = if rng.next_u64().is_multiple_of(2) {
                            1.0
                        } else {
                            -1.0
                        };
                        sign * x.abs() * (0.5 + (rng.next_u64() % 100) as f32 / 50.0)
                    });
                }
                Role::Patient(by) if self.trained > PATIENCE => {
                    map_dense(&mut r.update, |x| x * by)
                }
                Role::Colluder => map_dense(&mut r.update, |x| x * 1.25),
                Role::Slow => tokio::time::sleep(SLOW).await,
                _ => {}
            }
        }
        Ok(done)
    }
}

/// One worker on its own thread until `stop`: the worker library's transport around a protocol
/// session and the GPU's backend (with the role's doings for a hostile one). A churner's
/// connection is cut after 3 to 9 s, without a goodbye, and a fresh worker with the same key
/// connects again after 0.5 to 2.5 s. Returns how many times it was cut.
fn worker(
    url: String,
    gpu: &'static Gpu,
    k: usize,
    role: Role,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let mut rng = SplitMix(k as u64 + 100);
            let mut cuts = 0;
            loop {
                let mut c = Contributor::new(identity(k), ContributorKind::Native, caps(gpu));
                let (session, gpu_backend) = c.parts(gpu);
                let ran = match role {
                    Role::Churner => {
                        let up = Duration::from_millis(3000 + rng.next_u64() % 6000);
                        let mut b = gpu_backend;
                        let run = contribute(&url, session, &mut b, stop.clone());
                        tokio::time::timeout(up, run).await
                    }
                    Role::Honest => {
                        let mut b = gpu_backend;
                        Ok(contribute(&url, session, &mut b, stop.clone()).await)
                    }
                    _ => {
                        let mut b = Played {
                            inner: gpu_backend,
                            role,
                            trained: 0,
                            rng: SplitMix(k as u64),
                        };
                        Ok(contribute(&url, session, &mut b, stop.clone()).await)
                    }
                };
                match ran {
                    Ok(r) => {
                        match r {
                            Ok(()) => {}
                            // A cheat refused from the run stops: connecting again cannot help.
                            Err(e) if !role.honest() && e.is_final() => {
                                println!("worker {k} ({role:?}) stopped: {e}");
                            }
                            Err(e) => panic!("worker {k} ({role:?}) ended untold: {e}"),
                        }
                        return cuts;
                    }
                    Err(_) => cuts += 1,
                }
                let pause = Duration::from_millis(500 + rng.next_u64() % 2000);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return cuts,
                }
            }
        })
    })
}

async fn contribute<B: Backend>(
    url: &str,
    session: &mut Session,
    backend: &mut B,
    stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    tessera_worker::native::run(url, None, session, backend, stop, |_| {}).await
}

/// A WebSocket to the coordinator on `port`, when it takes one.
fn socket(port: u16) -> Option<common::contributor::Ws> {
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/ws"), stream).ok()?;
    Some(ws)
}

/// A hand-spoken staller until `stop`: joins, says it loaded each lease it is given without
/// downloading a byte, takes whatever work comes and never answers, and heartbeats every
/// second. Returns the work units it sat on.
fn staller(port: u16, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let id = identity(200);
        let mut held = 0;
        while !stop.load(Ordering::Relaxed) {
            let Some(mut ws) = socket(port) else {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            };
            let (welcome, nonce) = handshake(&mut ws, &id, 1 << 30, "staller");
            let Some(ToContributor::Welcome { log_head, .. }) = welcome else {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            };
            ws.get_ref()
                .set_read_timeout(Some(Duration::from_millis(300)))
                .ok();
            let mut seq = 1;
            let mut beat = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                match ws.read() {
                    Ok(tungstenite::Message::Binary(b)) => {
                        match tessera_protocol::decode(&b, 64 << 20) {
                            Ok(ToContributor::Lease(lease)) => {
                                let ready = SessionMessage::Ready {
                                    lease: lease.lease,
                                    log_head,
                                };
                                if !try_say(&mut ws, &id, &nonce, seq, ready) {
                                    break;
                                }
                                seq += 1;
                            }
                            Ok(ToContributor::Work(_)) => held += 1,
                            Ok(ToContributor::Error { fatal: true, .. }) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    Ok(tungstenite::Message::Close(_)) => break,
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
                if beat.elapsed() > Duration::from_secs(1) {
                    beat = Instant::now();
                    let hb = SessionMessage::Heartbeat { log_head };
                    if !try_say(&mut ws, &id, &nonce, seq, hb) {
                        break;
                    }
                    seq += 1;
                }
            }
        }
        held
    })
}

/// A flooder until `stop`, each attempt on a fresh connection: a junk binary frame where Hello
/// belongs, a proof signed by another key, a half-sent HTTP request held open for a second, and
/// reads of the status and the whole log. Returns the attempts made.
fn flooder(port: u16, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rng = SplitMix(77);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match n % 4 {
                0 => {
                    if let Some(mut ws) = socket(port) {
                        let junk: Vec<u8> = (0..1 + rng.next_u64() % 4096)
                            .map(|_| rng.next_u64() as u8)
                            .collect();
                        let _ = ws.send(tungstenite::Message::Binary(junk.into()));
                        let _ = ws.read();
                    }
                }
                1 => {
                    if let Some(mut ws) = socket(port) {
                        let hello = ToCoordinator::Hello {
                            key: identity(201).public(),
                            kind: ContributorKind::Native,
                            software: "flooder".into(),
                            capabilities: Capabilities {
                                adapter: "none".into(),
                                backend: "none".into(),
                                max_binding_bytes: 1 << 30,
                                memory_budget_bytes: 1 << 30,
                            },
                        };
                        let _ = ws.send(tungstenite::Message::Binary(
                            encode(&hello).expect("a frame").into(),
                        ));
                        let _ = ws.read();
                        let forged = identity(202).sign(HANDSHAKE, b"not this handshake");
                        let proof = ToCoordinator::Proof { signature: forged };
                        let _ = ws.send(tungstenite::Message::Binary(
                            encode(&proof).expect("a frame").into(),
                        ));
                        let _ = ws.read();
                    }
                }
                2 => {
                    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                        let _ = s.write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                _ => {
                    let _ = common::http_get(port, "/api/log");
                    let _ = common::status(port);
                }
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    })
}

/// What a run left.
struct Ran {
    /// Held-out loss of the final checkpoint.
    loss: f64,
    /// The final status.
    status: serde_json::Value,
    secs: f64,
}

/// Trains the soak run with `roles` (and, when `attacked`, the staller and flooder) against a
/// fresh coordinator process; returns once it finished.
fn train(name: &str, gpu: &'static Gpu, roles: &[Role], attacked: bool) -> Ran {
    let dir = scratch(name);
    let port = free_port();
    let start = Instant::now();
    let mut c = coordinator_with(&data("soak.toml"), port, &dir, None, &loopback_crowd("64"));
    common::wait_for(port, Duration::from_secs(60), "the coordinator", |_| true);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = roles
        .iter()
        .enumerate()
        .map(|(k, &role)| (role, worker(url.clone(), gpu, k, role, stop_rx.clone())))
        .collect();
    let raw = attacked.then(|| (staller(port, stop.clone()), flooder(port, stop.clone())));
    // The rounds as they close, with the seconds each took.
    let mut closed = 0;
    let mut last = Instant::now();
    let status = loop {
        let s = common::status(port);
        if let Some(s) = &s {
            let round = s["round"].as_u64().unwrap_or(0);
            if round > closed {
                println!(
                    "{name}: round {round} closed after {:.1} s",
                    last.elapsed().as_secs_f64()
                );
                closed = round;
                last = Instant::now();
            }
            if s["phase"] == "finished" {
                break s.clone();
            }
        }
        assert!(
            start.elapsed() < LIMIT,
            "{name}: the run did not finish in {LIMIT:?}; last status {s:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let secs = start.elapsed().as_secs_f64();
    stop_tx.send(true).expect("stop the workers");
    stop.store(true, Ordering::Relaxed);
    for (role, w) in workers {
        let cuts = w.join().expect("a worker thread");
        if role == Role::Churner {
            println!("{name}: a churner was cut {cuts} times");
        }
    }
    if let Some((s, f)) = raw {
        let held = s.join().expect("the staller");
        let flood = f.join().expect("the flooder");
        println!("{name}: the staller sat on {held} units; the flooder made {flood} attempts");
    }
    assert!(
        c.wait_exit(Duration::from_secs(60), "the coordinator to exit")
            .success(),
        "{name}: the coordinator failed"
    );
    let rounds = status["rounds"].as_u64().expect("rounds");
    assert_eq!(
        status["round"].as_u64(),
        Some(rounds),
        "{name}: every round closed"
    );
    let text = verify_dir(&dir);
    println!("{name}: {}", text.lines().last().unwrap_or_default());
    if attacked {
        // Replays were picked by the draw chain, and forged picks are refused.
        common::log_files::pick_cases(&dir);
    }
    let checkpoint = common::checkpoint(&dir.join("checkpoints"), rounds);
    let loss = eval(&checkpoint, &data("held-out.txt"));
    let _ = std::fs::remove_dir_all(&dir);
    Ran { loss, status, secs }
}

/// The status's credit line of `k`.
fn line(status: &serde_json::Value, k: usize) -> Option<&serde_json::Value> {
    let key = identity(k).public().to_string();
    status["credits"]
        .as_array()?
        .iter()
        .find(|l| l["key"].as_str() == Some(key.as_str()))
}

#[test]
fn every_round_closes_under_attack_and_the_run_ends_as_the_honest_one() {
    let gpu: &'static Gpu = Box::leak(Box::new(
        pollster::block_on(Gpu::new(Default::default())).expect("a GPU adapter"),
    ));
    println!("adapter: {}", gpu.adapter());
    let roles = crew();
    let attacked = train("soak-attacked", gpu, &roles, true);
    let honest = train("soak-honest", gpu, &[Role::Honest; 6], false);
    for (k, role) in roles.iter().enumerate() {
        let l = line(&attacked.status, k);
        let get = |f: &str| l.and_then(|l| l[f].as_u64()).unwrap_or(0);
        let refused = l.is_some_and(|l| l["refused"] == true);
        println!(
            "{k:2} {role:?}: accepted {}, rejected {}, checks passed {}, failed {}, refused {refused}",
            get("accepted"),
            get("rejected"),
            get("checks_passed"),
            get("checks_failed"),
        );
        if role.honest() {
            assert!(!refused, "honest worker {k} ({role:?}) was refused");
        }
        if *role == Role::Random {
            // Random updates fail every check: drawn or not, the statistics catch them.
            assert!(refused, "the random worker was not refused");
        }
    }
    let rel = attacked.loss / honest.loss - 1.0;
    println!(
        "held-out loss: attacked {:.4} in {:.0} s, honest {:.4} in {:.0} s ({:+.2}%)",
        attacked.loss,
        attacked.secs,
        honest.loss,
        honest.secs,
        100.0 * rel
    );
    assert!(
        rel.abs() < 0.02,
        "the attacked run ends {:+.2}% off",
        100.0 * rel
    );
}
