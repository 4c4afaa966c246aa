//! The client's loop in the Web Worker: acquire the GPU, connect, hand every coordinator
//! message to the protocol session, reconnect with backoff when the socket drops, pause and
//! resume on request, hold the GPU to the share of time the user allows, and report to the page.

use std::cell::RefCell;

use futures_channel::mpsc::{unbounded, UnboundedSender};
use futures_util::StreamExt;
use tessera_compute::{Gpu, GpuOptions, ModelConfig};
use tessera_protocol::messages::{Capabilities, ContributorKind};
use tessera_protocol::{decode, encode, Identity, ToContributor, ToCoordinator, MAX_FRAME_BYTES};
use tessera_worker::contributor::Contributor;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::report::Report;
use crate::socket::{Event, Socket};

thread_local! {
    static CONTROL: RefCell<Option<UnboundedSender<Event>>> = const { RefCell::new(None) };
}

fn control(e: Event) {
    CONTROL.with(|c| {
        if let Some(tx) = c.borrow().as_ref() {
            let _ = tx.unbounded_send(e);
        }
    });
}

/// Stops contributing: the current unit finishes, the client leaves the run and closes the
/// connection (the coordinator re-runs nothing it accepted).
#[wasm_bindgen]
pub fn pause() {
    control(Event::Pause);
}

/// Contributes again after [`pause`].
#[wasm_bindgen]
pub fn resume() {
    control(Event::Resume);
}

/// Sets the share of wall time (0.05..=1) the GPU may be busy; the client idles between units to
/// keep to it.
#[wasm_bindgen]
pub fn set_gpu_share(share: f64) {
    control(Event::GpuShare(share));
}

/// Destroys the GPU device as a lost GPU (driver reset, sleep, another tab's crash) would, to
/// check recovery: the client re-acquires the adapter, rebuilds its lease and re-joins.
#[wasm_bindgen]
pub fn lose_device() {
    control(Event::LoseDevice);
}

pub(crate) fn post(r: &Report) {
    if let Ok(scope) = js_sys::global().dyn_into::<web_sys::DedicatedWorkerGlobalScope>() {
        let _ = scope.post_message(&JsValue::from_str(&r.to_json()));
    }
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

async fn sleep(ms: f64) {
    let p = js_sys::Promise::new(&mut |resolve, _| {
        if let Ok(scope) = js_sys::global().dyn_into::<web_sys::WorkerGlobalScope>() {
            let _ = scope.set_timeout_with_callback_and_timeout_and_arguments_0(
                &resolve,
                ms.max(0.0) as i32,
            );
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(p).await;
}

/// FLOPs of a pipeline unit, roughly: two per parameter per token forward, six with the
/// backward (which recomputes the forward).
fn unit_flops(cfg: &ModelConfig, w: &tessera_protocol::pipeline::PipeWork) -> f64 {
    let params: usize = w.shards.iter().filter_map(|s| shard_params(cfg, s)).sum();
    let tokens = w
        .tokens
        .as_ref()
        .map_or(0, |t| t.shape.iter().product::<u64>()) as f64;
    let tokens = if tokens > 0.0 {
        tokens
    } else {
        w.input
            .as_ref()
            .map_or(0.0, |a| a.tensor.shape.first().copied().unwrap_or(0) as f64)
    };
    let per = match w.pass {
        tessera_protocol::pipeline::Pass::Forward => 2.0,
        tessera_protocol::pipeline::Pass::Backward => 6.0,
    };
    per * params as f64 * tokens
}

/// Parameters of a micro-shard from the wire.
fn shard_params(cfg: &ModelConfig, s: &tessera_protocol::messages::ShardSpec) -> Option<usize> {
    let shard = tessera_worker::pipeline::shard_from_wire(s, cfg).ok()?;
    Some(shard.parameters(cfg))
}

/// How the tab opens its GPU, with `tiles` (the tuned matmul tiling) when known.
fn options(tiles: Option<tessera_compute::MatmulTiles>) -> GpuOptions {
    GpuOptions {
        raise_limits: true,
        tiles: tiles.map(|matmul| tessera_compute::Tiles {
            matmul,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Opens the GPU and reports its adapter and limits.
async fn acquire(tiles: Option<tessera_compute::MatmulTiles>) -> Result<Gpu, String> {
    let gpu = Gpu::new(options(tiles)).await.map_err(|e| e.to_string())?;
    post(&Report::Adapter {
        name: gpu.adapter().name.clone(),
        backend: gpu.adapter().backend.clone(),
        max_binding_bytes: gpu.max_binding_bytes(),
        max_buffer_bytes: gpu.limits().max_buffer_size,
    });
    Ok(gpu)
}

/// Whether the GPU device is gone (lost, or destroyed) rather than the session.
fn lost(gpu: &Gpu, e: &tessera_worker::WorkerError) -> bool {
    matches!(
        e,
        tessera_worker::WorkerError::Compute(tessera_compute::ComputeError::DeviceLost(_))
    ) || matches!(
        gpu.check(),
        Err(tessera_compute::ComputeError::DeviceLost(_))
    )
}

struct Session {
    socket: Socket,
    generation: u64,
    open: bool,
}

/// Contributes this browser's GPU to the run at `url` (`ws://host:port/ws` or `wss://...`)
/// with the identity derived from the 32-byte `seed`, leasing at most `memory_budget` bytes, until
/// the worker is terminated. `tuned` is what an earlier visit's kernel tuning left (a `Tuned`
/// report's `keep`); without it, or for another adapter, the tab tunes first. Reports every
/// event to the page (see [`Report`]).
#[wasm_bindgen]
pub async fn run(
    url: String,
    seed: Vec<u8>,
    memory_budget: f64,
    gpu_share: f64,
    tuned: Option<String>,
) -> Result<(), JsValue> {
    let seed: [u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| JsValue::from_str("the identity seed must be 32 bytes"))?;
    let mut gpu = match acquire(None).await {
        Ok(g) => g,
        Err(e) => {
            post(&Report::NoGpu { message: e.clone() });
            return Err(JsValue::from_str(&e));
        }
    };

    let caps = Capabilities {
        adapter: gpu.adapter().name.clone(),
        backend: gpu.adapter().backend.clone(),
        max_binding_bytes: gpu.max_binding_bytes(),
        memory_budget_bytes: memory_budget.max(0.0) as u64,
    };
    let mut contributor =
        Contributor::new(Identity::from_seed(seed), ContributorKind::Browser, caps);
    post(&Report::Identity {
        key: contributor.key().to_string(),
    });
    // Tuned before connecting (the tiling changes no capability the coordinator sees).
    let tiles = crate::tuned::tiles_for(&gpu, &options(None), tuned.as_deref()).await;
    if tiles.is_some_and(|t| t != gpu.tiles().matmul) {
        gpu = match acquire(tiles).await {
            Ok(g) => g,
            Err(e) => {
                post(&Report::NoGpu { message: e.clone() });
                return Err(JsValue::from_str(&e));
            }
        };
    }
    let (tx, mut rx) = unbounded::<Event>();
    CONTROL.with(|c| *c.borrow_mut() = Some(tx.clone()));
    let beat_tx = tx.clone();
    let beat = Closure::<dyn FnMut()>::new(move || {
        let _ = beat_tx.unbounded_send(Event::Beat);
    });
    if let Ok(scope) = js_sys::global().dyn_into::<web_sys::WorkerGlobalScope>() {
        // A tick a second; a heartbeat goes out as often as the coordinator's `Welcome` asks.
        let _ = scope.set_interval_with_callback_and_timeout_and_arguments_0(
            beat.as_ref().unchecked_ref(),
            1000,
        );
    }
    beat.forget();

    let mut share = gpu_share.clamp(0.05, 1.0);
    let mut last_beat = now_ms();
    let mut paused = false;
    let mut generation = 0u64;
    let mut backoff = 500.0;
    let mut cfg: Option<ModelConfig> = None;
    let mut run_name = String::new();
    let (mut busy_ms, mut start_ms) = (0.0f64, now_ms());
    let mut gflops = 0.0;
    let key = contributor.key();
    let connect = |generation: u64| {
        let (url, tx) = (url.clone(), tx.clone());
        async move {
            post(&Report::Connection {
                state: "connecting".into(),
                detail: url.clone(),
            });
            // Without a ticket the coordinator refuses the socket (when it asks for one), and
            // the client tries again after its backoff.
            let to = match crate::admission::ticketed(&url, key).await {
                Ok(s) => {
                    if s.bits > 0 {
                        post(&Report::Admission {
                            bits: s.bits,
                            hashes: s.hashes,
                            ms: s.ms,
                        });
                    }
                    s.url
                }
                Err(why) => {
                    post(&Report::Note {
                        text: format!("no admission ticket: {why}"),
                    });
                    url.clone()
                }
            };
            Ok::<_, JsValue>(Session {
                socket: Socket::connect(&to, generation, tx)?,
                generation,
                open: false,
            })
        }
    };
    let mut session = Some(connect(generation).await?);
    while let Some(ev) = rx.next().await {
        let send = |s: &Session, msgs: Vec<ToCoordinator>| -> bool {
            msgs.iter().all(|m| match encode(m) {
                Ok(b) => s.socket.send(&b).is_ok(),
                Err(_) => false,
            })
        };
        match ev {
            Event::Open(g) => {
                if let Some(s) = session.as_mut().filter(|s| s.generation == g) {
                    s.open = true;
                    backoff = 500.0;
                    post(&Report::Connection {
                        state: "connected".into(),
                        detail: url.clone(),
                    });
                    let hello = contributor.hello();
                    send(s, vec![hello]);
                }
            }
            Event::Frame(g, bytes) => {
                let Some(s) = session.as_ref().filter(|s| s.generation == g) else {
                    continue;
                };
                let msg: ToContributor = match decode(&bytes, MAX_FRAME_BYTES) {
                    Ok(m) => m,
                    Err(e) => {
                        post(&Report::Note {
                            text: format!("undecodable frame from the coordinator: {e}"),
                        });
                        continue;
                    }
                };
                match &msg {
                    ToContributor::Welcome { run, .. } => run_name = run.clone(),
                    ToContributor::Lease(l) => {
                        if let Ok(c) = ModelConfig::from_hf_json(&l.config_json) {
                            let shards = l
                                .shards
                                .iter()
                                .map(|x| {
                                    tessera_worker::pipeline::shard_from_wire(x, &c)
                                        .map(|m| m.to_string())
                                        .unwrap_or_else(|_| format!("{x:?}"))
                                })
                                .collect();
                            post(&Report::Lease {
                                run: run_name.clone(),
                                shards,
                            });
                            cfg = Some(c);
                        }
                    }
                    ToContributor::Error { reason, .. } => post(&Report::Note {
                        text: reason.to_string(),
                    }),
                    _ => {}
                }
                let flops = match (&msg, &cfg) {
                    (ToContributor::Unit(w), Some(c)) => unit_flops(c, w),
                    _ => 0.0,
                };
                let admin = matches!(msg, ToContributor::Admin { .. });
                let t0 = now_ms();
                let replies = contributor.handle(&gpu, msg).await;
                let took = now_ms() - t0;
                if let (true, Ok(_), Some(note)) = (admin, &replies, contributor.last_notice()) {
                    post(&Report::Note {
                        text: note.to_string(),
                    });
                }
                match replies {
                    Ok(r) => {
                        if !send(s, r) {
                            post(&Report::Note {
                                text: "could not send a reply; reconnecting".into(),
                            });
                        }
                    }
                    Err(e) => {
                        s.socket.close();
                        if e.is_final() {
                            // Refused by a check, banned, not invited, another protocol
                            // version: connecting again cannot help.
                            post(&Report::Connection {
                                state: "stopped".into(),
                                detail: e.to_string(),
                            });
                            return Err(JsValue::from_str(&format!(
                                "the coordinator ended this contributor's part in the run: {e}"
                            )));
                        }
                        if lost(&gpu, &e) {
                            post(&Report::Note {
                                text: format!("the GPU was lost ({e}); acquiring it again"),
                            });
                            // Keep trying: a lost device may take a moment to come back.
                            gpu = loop {
                                match acquire(tiles).await {
                                    Ok(g) => break g,
                                    Err(why) => {
                                        post(&Report::Note {
                                            text: format!("no GPU yet ({why}); retrying"),
                                        });
                                        sleep(2000.0).await;
                                    }
                                }
                            };
                        } else {
                            post(&Report::Note {
                                text: format!("session ended: {e}"),
                            });
                        }
                        let _ = tx.unbounded_send(Event::Closed(g, e.to_string()));
                    }
                }
                if flops > 0.0 {
                    busy_ms += took;
                    gflops = flops / (took.max(0.01) * 1e6);
                }
                let st = contributor.stats();
                let wall = (now_ms() - start_ms).max(1.0);
                post(&Report::Stats {
                    frames_received: st.frames_received,
                    frames_total: st.frames_total,
                    units: st.submitted,
                    accepted: st.accepted,
                    rejected: st.rejected,
                    tokens: st.tokens,
                    gflops,
                    busy: busy_ms / wall,
                    longest_submit_ms: gpu.longest_submit_ms(),
                    dispatches_per_submit: gpu.dispatches_per_submit(),
                });
                if wall > 60_000.0 {
                    (busy_ms, start_ms) = (0.0, now_ms());
                }
                if flops > 0.0 && share < 1.0 {
                    // Idle so that busy / (busy + idle) stays at the allowed share.
                    sleep(took * (1.0 - share) / share).await;
                }
            }
            Event::Closed(g, why) => {
                if session.as_ref().is_none_or(|s| s.generation != g) || paused {
                    continue;
                }
                session = None;
                post(&Report::Connection {
                    state: "reconnecting".into(),
                    detail: format!("{why}; trying again in {:.1} s", backoff / 1000.0),
                });
                sleep(backoff).await;
                backoff = (backoff * 2.0).min(30_000.0);
                if !paused {
                    generation += 1;
                    session = Some(connect(generation).await?);
                }
            }
            Event::Beat => {
                let due = contributor.heartbeat_every().as_secs_f64() * 1000.0;
                if let Some(s) = session.as_ref().filter(|s| s.open) {
                    if now_ms() - last_beat >= due {
                        if let Ok(hb) = contributor.heartbeat() {
                            last_beat = now_ms();
                            send(s, vec![hb]);
                        }
                    }
                }
            }
            Event::Pause => {
                if let Some(s) = session.take() {
                    if s.open {
                        if let Ok(bye) = contributor.leave() {
                            send(&s, vec![bye]);
                        }
                    }
                    s.socket.close();
                }
                paused = true;
                post(&Report::Connection {
                    state: "paused".into(),
                    detail: "paused: the GPU is idle; press Start to contribute again".into(),
                });
            }
            Event::Resume => {
                if paused {
                    paused = false;
                    generation += 1;
                    session = Some(connect(generation).await?);
                }
            }
            Event::GpuShare(x) => share = x.clamp(0.05, 1.0),
            Event::LoseDevice => {
                post(&Report::Note {
                    text: "destroying the GPU device (recovery check)".into(),
                });
                gpu.destroy();
            }
        }
    }
    Ok(())
}
