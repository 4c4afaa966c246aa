//! What the routes of a serving coordinator share, and what they tell the task that owns the
//! core (`server.rs` runs that task; `admin_http.rs` and the WebSocket connections send to it).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tessera_protocol::log::AdminAction;
use tokio::sync::{mpsc, oneshot};

use crate::admin_token::AdminToken;
use crate::core::{ConnId, Input};
use crate::status::Status;
use crate::store::Store;

/// What the routes and connections tell the task that owns the core.
pub(crate) enum Event {
    /// An input for the core, and when the transport received it.
    Input(Box<Input>, std::time::Instant),
    /// A new connection's writer.
    Register(ConnId, Outbox),
    /// An authenticated administrator's act, answered on `reply`.
    Admin {
        action: AdminAction,
        reason: String,
        reply: oneshot::Sender<Result<u64, crate::core::admin::AdminRefusal>>,
    },
}

/// What the core's task hands a connection's writer, in order.
pub(crate) enum Outgoing {
    /// An encoded frame.
    Frame(bytes::Bytes),
    /// A lease's weights: the writer cuts and encodes each frame when the socket has taken the
    /// one before, so however many leases go out at once, each holds one frame.
    Weights(crate::core::WeightStream),
}

/// Where the core's task puts a connection's outgoing frames, and the connection's read limit
/// (raised when the core welcomes the session).
pub(crate) struct Outbox {
    /// Frames and weight streams, in order, to the connection's writer.
    pub(crate) frames: mpsc::UnboundedSender<Outgoing>,
    /// The connection's read limit.
    pub(crate) limit: Arc<crate::frame_guard::Limit>,
    /// Bytes of encoded frames in `frames` that its writer has not yet handed to the socket.
    pub(crate) queued: Arc<std::sync::atomic::AtomicUsize>,
    /// When its reader last received a frame ([`Heard`]): a welcomed session's heartbeats
    /// only set it, and the core's task reads it for the sessions the core would close as
    /// silent.
    pub(crate) heard: Arc<Heard>,
}

/// When a connection last received a frame: milliseconds since the process's first call,
/// 0 for never. Written by the connection's reader, read by the core's task.
#[derive(Debug, Default)]
pub(crate) struct Heard(AtomicU64);

/// The instant `Heard` counts from.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Heard {
    /// Records a frame received at `at`.
    pub(crate) fn set(&self, at: std::time::Instant) {
        let ms = at.saturating_duration_since(epoch()).as_millis() as u64;
        // 0 means never: a frame in the epoch's first millisecond counts as the next one.
        self.0
            .fetch_max(ms.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// When the last frame was received, if one was.
    pub(crate) fn get(&self) -> Option<std::time::Instant> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(epoch() + std::time::Duration::from_millis(ms)),
        }
    }
}

/// What every route of a serving coordinator shares.
#[derive(Clone)]
pub(crate) struct Shared {
    /// To the task that owns the core.
    pub(crate) events: mpsc::Sender<Event>,
    /// The latest status.
    pub(crate) status: Arc<Mutex<Status>>,
    /// The JSON of its first page (what a plain `GET /api/status` answers), encoded once per
    /// rebuild.
    pub(crate) first_page: Arc<Mutex<bytes::Bytes>>,
    /// The next connection's id.
    pub(crate) next_conn: Arc<AtomicU64>,
    /// The run's storage (the log's pages are read from it).
    pub(crate) store: Store,
    /// The coordinator's key (hex).
    pub(crate) coordinator: String,
    /// The administrator's token, if any.
    pub(crate) admin: Option<AdminToken>,
    /// How administrators' requests reach it.
    pub(crate) admin_transport: crate::admin_token::AdminTransport,
    /// Admission of contributor connections.
    pub(crate) gate: crate::gate::Gate,
    /// The proof of work a `/ws` upgrade must carry.
    pub(crate) admission: crate::admission::Admission,
    /// Origins besides its own whose pages may open `/ws`.
    pub(crate) origins: Arc<Vec<String>>,
    /// What `GET /metrics` shows (the core's task and the connections count into it).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

impl Shared {
    /// The run's name, as the latest status has it.
    pub(crate) fn run_name(&self) -> String {
        self.status
            .lock()
            .map(|s| s.run.clone())
            .unwrap_or_default()
    }
}
