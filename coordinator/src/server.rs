//! The coordinator's shell: one task owns the [`Core`] and feeds it inputs (WebSocket frames,
//! connections, a clock tick); its actions become frames on sockets, durable records in the
//! [`Store`], printed round lines and the JSON of `GET /api/status`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tessera_protocol::log_store::StoredEntry;
use tessera_protocol::{encode, ToContributor, MAX_FRAME_BYTES};
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::admin_http::AdminError;
pub use crate::admin_request::{AdminCommand, AdminRequest, AdminResponse};
pub use crate::admin_token::AdminToken;
use crate::shared::{Event, Outbox, Shared};

use crate::status::status_of;
pub use crate::status::{ContributorStatus, CreditLine, Status};

use crate::core::{Action, ConnId, Core, Input, Phase, RoundSummary};
use crate::store::Store;

/// Every route of a coordinator serving a run: the contributors' WebSocket, status, the run
/// log and administration, then `extra` (the contributor page).
pub(crate) fn router(shared: Shared, extra: Option<Extra>) -> Router {
    let app = Router::new()
        .route("/ws", get(crate::connection::ws))
        .route("/api/status", get(api_status))
        .route("/api/log", get(api_log))
        .route(
            "/api/admin",
            axum::routing::post(crate::admin_http::api_admin),
        )
        .with_state(shared);
    match extra {
        Some(extra) => app.merge(extra),
        None => app,
    }
}

/// A running coordinator.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Latest status.
    pub status: Arc<Mutex<Status>>,
    /// Where the run stands: becomes `Finished`, or `Failed` when durable storage failed (the
    /// core then stops before any receipt for unrecorded work goes out; a restart resumes from
    /// what was recorded).
    pub finished: watch::Receiver<Outcome>,
    /// Closed rounds, as they close.
    pub rounds: mpsc::UnboundedReceiver<RoundSummary>,
    /// This coordinator's hold on the run's data directory and database, kept while it serves.
    pub lock: Option<crate::store::ServingLock>,
}

/// How the run stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Still training.
    Running,
    /// Every round done.
    Finished,
    /// Stopped: storage failed.
    Failed(String),
}

/// Extra routes (e.g. the contributor page) merged into the server.
pub type Extra = Router;

/// How to serve, beyond the run and its storage.
#[derive(Default)]
pub struct ServeOptions {
    /// Extra routes (the contributor page).
    pub extra: Option<Extra>,
    /// HTTPS and WSS.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The administrator's token; without one, `POST /api/admin` refuses everything.
    pub admin: Option<AdminToken>,
    /// Limits on contributor connections.
    pub limits: crate::gate::ConnectionLimits,
    /// Origins besides the coordinator's own whose pages may open `/ws` (`https://host:port`).
    pub origins: Vec<String>,
    /// Take admin tokens over plain HTTP from other machines (otherwise only over TLS, or
    /// from this machine).
    pub allow_plain_admin: bool,
}

/// Serves `core` on `listener`, persisting into `store`.
pub async fn serve(
    core: Core,
    store: Store,
    listener: tokio::net::TcpListener,
    extra: Option<Extra>,
) -> std::io::Result<Running> {
    serve_with(
        core,
        store,
        listener,
        ServeOptions {
            extra,
            ..Default::default()
        },
    )
    .await
}

/// Like [`serve`], with every option.
pub async fn serve_with(
    core: Core,
    store: Store,
    listener: tokio::net::TcpListener,
    opts: ServeOptions,
) -> std::io::Result<Running> {
    let ServeOptions {
        extra,
        tls,
        admin,
        limits,
        origins,
        allow_plain_admin,
    } = opts;
    let addr = listener.local_addr()?;
    let (mut shared, running) = launch(core, store, admin, addr);
    shared.gate = crate::gate::Gate::new(limits);
    shared.origins = Arc::new(origins);
    shared.admin_transport = crate::admin_http::AdminTransport {
        tls: tls.is_some(),
        allow_plain: allow_plain_admin,
    };
    let app = router(shared, extra).into_make_service_with_connect_info::<crate::gate::Peer>();
    match tls {
        Some(cfg) => {
            let tls = crate::tls::TlsListener::new(listener, cfg)?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(tls, app).await {
                    tracing::error!("server stopped: {e}");
                }
            });
        }
        None => {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("server stopped: {e}");
                }
            });
        }
    }
    Ok(running)
}

/// Starts the task that owns `core` and persists into `store`: the state every route shares,
/// and the run's handles (`addr` is only reported).
pub(crate) fn launch(
    core: Core,
    store: Store,
    admin: Option<AdminToken>,
    addr: SocketAddr,
) -> (Shared, Running) {
    let (tx, rx) = mpsc::unbounded_channel();
    let status = Arc::new(Mutex::new(status_of(&core)));
    let (fin_tx, fin_rx) = watch::channel(if core.phase() == Phase::Finished {
        Outcome::Finished
    } else {
        Outcome::Running
    });
    let (round_tx, round_rx) = mpsc::unbounded_channel();
    let coordinator = core.public_key().to_string();
    tokio::spawn(run_core(
        core,
        store.clone(),
        rx,
        status.clone(),
        fin_tx,
        round_tx,
    ));
    let shared = Shared {
        events: tx,
        status: status.clone(),
        next_conn: Arc::new(AtomicU64::new(1)),
        store,
        coordinator,
        admin,
        gate: crate::gate::Gate::default(),
        origins: Arc::default(),
        admin_transport: Default::default(),
    };
    let running = Running {
        addr,
        status,
        finished: fin_rx,
        rounds: round_rx,
        lock: None,
    };
    (shared, running)
}

/// `GET /api/log?from=N&limit=M` (at most 1000 entries a page).
#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    from: u64,
    limit: Option<u64>,
}

/// A page of the run log: each entry as stored (`StoredEntry::encode`: the format version and
/// the hex of its postcard encoding, what `verify_stored` checks), with its index, hash and a
/// readable form.
#[derive(Debug, Serialize)]
pub struct LogPage {
    /// The coordinator's key (hex), which signs every entry.
    pub coordinator: String,
    /// The entries.
    pub entries: Vec<LogLine>,
    /// Where the next page starts, when there may be one.
    pub next: Option<u64>,
}

/// One entry in a [`LogPage`].
#[derive(Debug, Serialize)]
pub struct LogLine {
    /// Index.
    pub index: u64,
    /// Hash (hex).
    pub hash: String,
    /// The decision, for people.
    pub event: String,
    /// The signed entry as stored: `v2:` and the hex of its postcard encoding.
    pub signed: String,
}

async fn api_log(
    State(s): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<LogQuery>,
) -> axum::response::Response {
    let limit = q.limit.unwrap_or(1000).clamp(1, 1000);
    match s.store.read_log_stored(q.from, limit).await {
        Ok(stored) => {
            let next = (stored.len() as u64 == limit).then(|| q.from + limit);
            let entries = stored
                .into_iter()
                .map(|(index, signed)| {
                    let (hash, event) = match StoredEntry::decode(&signed).map(StoredEntry::upgrade)
                    {
                        Ok(e) => (
                            tessera_protocol::identity::hex(&e.hash),
                            format!("{:?}", e.entry.event),
                        ),
                        Err(why) => (String::new(), format!("undecodable: {why}")),
                    };
                    LogLine {
                        index,
                        hash,
                        event,
                        signed,
                    }
                })
                .collect();
            Json(LogPage {
                coordinator: s.coordinator.clone(),
                entries,
                next,
            })
            .into_response()
        }
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the log: {e}"),
        )
            .into_response(),
    }
}

async fn api_status(State(s): State<Shared>) -> impl IntoResponse {
    let st = s.status.lock().map(|g| g.clone()).unwrap_or_default();
    Json(st)
}

async fn run_core(
    mut core: Core,
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Event>,
    status: Arc<Mutex<Status>>,
    finished: watch::Sender<Outcome>,
    rounds: mpsc::UnboundedSender<RoundSummary>,
) {
    let fail = |what: &str, e: crate::store::StoreError| {
        let why = format!("{what}: {e}; stopping so that a restart resumes from what was recorded");
        tracing::error!("{why}");
        let _ = finished.send(Outcome::Failed(why));
    };
    let start = Instant::now();
    let mut built = start;
    let mut conns: HashMap<ConnId, Outbox> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut replies: HashMap<u64, oneshot::Sender<Result<u64, crate::core::admin::AdminRefusal>>> =
        HashMap::new();
    let mut next_request = 0u64;
    loop {
        let input = tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::Register(c, outbox)) => { conns.insert(c, outbox); continue; }
                Some(Event::Input(i)) => *i,
                Some(Event::Admin { action, reason, reply }) => {
                    next_request += 1;
                    replies.insert(next_request, reply);
                    Input::Admin { request: next_request, action, reason }
                }
                None => break,
            },
            _ = tick.tick() => Input::Tick,
        };
        if let Input::Disconnected { conn } = input {
            conns.remove(&conn);
        }
        // The status is rebuilt on the clock's tick, after an administrator's act or a closed
        // round, and otherwise at most every STATUS_EVERY: not after every message, whose cost
        // would grow with every identity the run has seen.
        let mut refresh =
            matches!(input, Input::Tick | Input::Admin { .. }) || built.elapsed() >= STATUS_EVERY;
        let now = start.elapsed().as_millis() as u64;
        for a in core.tick(now, input) {
            refresh |= matches!(a, Action::RoundClosed(_) | Action::Finished);
            match a {
                Action::Logged(e) => {
                    // Durable before any message that carries its head goes out.
                    if let Err(e) = store.append_log(&e).await {
                        return fail("appending to the run log", e);
                    }
                }
                Action::Send { conn, msg } => send(&conns, conn, &msg),
                Action::Close { conn, reason } => {
                    tracing::debug!(conn, "close: {reason}");
                    // The writer sends what is queued, then closes the socket and stops the
                    // connection's reading.
                    conns.remove(&conn);
                }
                Action::Accepted(c) => {
                    if let Err(e) = store.record(&c).await {
                        // The receipt that follows must not go out for work that is not durable.
                        return fail("recording a contribution", e);
                    }
                }
                Action::RoundClosed(sum) => {
                    let snap = core.snapshot();
                    match store.commit(core.name(), &core.spec().model, &snap).await {
                        Ok(ck) => println!(
                            "{} {} loss {:.4} tokens {} contributors {} checkpoint {}",
                            if core.spec().pipeline.is_some() {
                                "step"
                            } else {
                                "round"
                            },
                            sum.round,
                            sum.loss,
                            sum.tokens,
                            sum.contributors.len(),
                            ck.display()
                        ),
                        Err(e) => return fail("committing the round", e),
                    }
                    let _ = rounds.send(sum);
                }
                Action::Finished => {
                    let _ = finished.send(Outcome::Finished);
                }
                Action::Withdrawn { round, slot } => {
                    if let Err(e) = store.withdraw(round, slot).await {
                        return fail("withdrawing a contribution", e);
                    }
                }
                Action::AdminDone { request, result } => {
                    if let Some(reply) = replies.remove(&request) {
                        let _ = reply.send(result);
                    }
                }
            }
        }
        if refresh {
            let fresh = status_of(&core);
            if let Ok(mut s) = status.lock() {
                *s = fresh;
            }
            built = Instant::now();
        }
    }
}

/// The longest a served status lags the core while messages keep coming.
const STATUS_EVERY: Duration = Duration::from_millis(250);

fn send(conns: &HashMap<ConnId, Outbox>, conn: ConnId, msg: &ToContributor) {
    if let Some(out) = conns.get(&conn) {
        if let ToContributor::Welcome { .. } = msg {
            // The handshake is done: the session may send frames of any protocol size.
            out.limit.admit(MAX_FRAME_BYTES);
        }
        match encode(msg) {
            Ok(f) => {
                let _ = out.frames.send(f);
            }
            Err(e) => tracing::error!("encode: {e}"),
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
