//! The coordinator's shell: the routes (the contributors' WebSocket, status, the run log,
//! administration) and the launch of the task that owns the [`Core`] (`core_task.rs`: it feeds
//! the core inputs and turns its actions into frames on sockets, durable records in the
//! [`Store`], printed round lines and the JSON of `GET /api/status`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tessera_protocol::log_store::StoredEntry;
use tokio::sync::{mpsc, watch};

pub use crate::admin_http::AdminError;
pub use crate::admin_request::{AdminCommand, AdminRequest, AdminResponse};
pub use crate::admin_token::AdminToken;
pub use crate::core_task::Outcome;
use crate::shared::Shared;

use crate::status::status_of;
pub use crate::status::{ContributorStatus, CreditLine, Status, StatusPage, STATUS_PAGE};

use crate::core::{Core, Phase, RoundSummary};
use crate::store::Store;

/// Every route of a coordinator serving a run: the contributors' WebSocket, status, the run
/// log and administration, then `extra` (the contributor page).
pub(crate) fn router(shared: Shared, extra: Option<Extra>) -> Router {
    let app = Router::new()
        .route("/ws", get(crate::connection::ws))
        .route("/api/status", get(api_status))
        .route("/api/log", get(api_log))
        .route("/api/admission", get(api_admission))
        .route("/metrics", get(crate::metrics::api_metrics))
        .merge(crate::admin_page::routes())
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
    /// Requests per second from one address, on every HTTP endpoint.
    pub request_rate: crate::http_limit::RequestRate,
    /// Origins besides the coordinator's own whose pages may open `/ws` (`https://host:port`).
    pub origins: Vec<String>,
    /// Take admin tokens over plain HTTP from other machines (otherwise only over TLS, or
    /// from this machine).
    pub allow_plain_admin: bool,
    /// Zero bits of the proof of work a `/ws` upgrade must carry (0, the default here, asks
    /// for none; `tessera coordinator` asks for [`crate::admission::DEFAULT_BITS`]).
    pub admission_bits: u8,
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
        request_rate,
        origins,
        allow_plain_admin,
        admission_bits,
    } = opts;
    let addr = listener.local_addr()?;
    let admission = crate::admission::Admission::new(admission_bits)
        .map_err(|e| std::io::Error::other(format!("no randomness for admission puzzles: {e}")))?;
    let (mut shared, running) = launch(core, store, admin, addr);
    shared.gate = crate::gate::Gate::new(limits);
    shared.admission = admission;
    shared.origins = Arc::new(origins);
    shared.admin_transport = crate::admin_token::AdminTransport {
        tls: tls.is_some(),
        allow_plain: allow_plain_admin,
    };
    let app = router(shared, extra).layer(axum::middleware::from_fn_with_state(
        crate::http_limit::HttpLimit::new(request_rate),
        crate::http_limit::limit,
    ));
    let sockets = crate::listen::socket_limits(limits);
    tokio::spawn(crate::listen::serve(
        listener,
        tls,
        sockets,
        app,
        std::future::pending(),
    ));
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
    let (tx, rx) = mpsc::channel(crate::core_task::EVENT_QUEUE);
    let built = status_of(&core);
    let first_page = Arc::new(Mutex::new(built.first_page_json()));
    let status = Arc::new(Mutex::new(built));
    let (fin_tx, fin_rx) = watch::channel(if core.phase() == Phase::Finished {
        Outcome::Finished
    } else {
        Outcome::Running
    });
    let (round_tx, round_rx) = mpsc::unbounded_channel();
    let coordinator = core.public_key().to_string();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    tokio::spawn(
        crate::core_task::CoreTask::new(
            core,
            store.clone(),
            (status.clone(), first_page.clone()),
            fin_tx,
            round_tx,
        )
        .with_metrics(metrics.clone())
        .run(rx),
    );
    let shared = Shared {
        events: tx,
        status: status.clone(),
        first_page,
        next_conn: Arc::new(AtomicU64::new(1)),
        store,
        coordinator,
        admin,
        gate: crate::gate::Gate::default(),
        admission: crate::admission::Admission::off(),
        origins: Arc::default(),
        admin_transport: Default::default(),
        metrics,
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

/// A log page's size at most, about (each entry counts twice its stored text: the text, and
/// the readable form beside it); a page holds one entry at least.
const LOG_PAGE_BYTES: usize = 4 << 20;

/// `GET /api/log?from=N&limit=M` (at most 1000 entries, and about [`LOG_PAGE_BYTES`], a page).
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
            let (full, total) = (stored.len() as u64 == limit, stored.len());
            // Bounded in bytes too: entries are taken while the page stays under
            // LOG_PAGE_BYTES (the first always), and `next` resumes after the last one taken.
            let mut bytes = 0usize;
            let kept: Vec<_> = stored
                .into_iter()
                .take_while(|(_, signed)| {
                    let first = bytes == 0;
                    bytes += 2 * signed.len();
                    first || bytes <= LOG_PAGE_BYTES
                })
                .collect();
            let cut = kept.len() < total;
            let next = (full || cut).then(|| kept.last().map_or(q.from, |(i, _)| i + 1));
            let entries = kept
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

/// `GET /api/status?from=K&limit=N`: a page of the status (see [`StatusPage`]); without a
/// query, the first page as encoded when the status was built.
#[derive(Debug, Deserialize)]
struct StatusQuery {
    from: Option<usize>,
    limit: Option<usize>,
}

/// `GET /api/admission`: a fresh puzzle to solve before opening `/ws` (see `admission.rs`).
async fn api_admission(State(s): State<Shared>) -> axum::response::Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(s.admission.offer()),
    )
        .into_response()
}

async fn api_status(
    State(s): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<StatusQuery>,
) -> axum::response::Response {
    let json = match (q.from, q.limit) {
        (None | Some(0), None) => s.first_page.lock().map(|p| p.clone()).unwrap_or_default(),
        (from, limit) => s
            .status
            .lock()
            .ok()
            .and_then(|st| {
                serde_json::to_vec(&st.page(from.unwrap_or(0), limit.unwrap_or(STATUS_PAGE))).ok()
            })
            .unwrap_or_default()
            .into(),
    };
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
