//! An idle coordinator: no run yet. It serves `GET /api/status` (phase `idle`) and
//! `POST /api/admin`, where the one act is `create` with a run's TOML configuration. The token
//! is checked as for any act (401, 403); a malformed request or a configuration that does not
//! resolve is a 400, anything but `create` a 409, and none of these changes anything. The first
//! valid `create` is answered and ends the wait: the caller then starts the run on the same
//! address, its log's first entry `Started` and its second the `create` act with its reason.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::rustls::ServerConfig;

use crate::admin_http::{error, refusal, AdminRequest, AdminResponse, AdminToken};
use crate::config::RunConfig;
use crate::server::Status;

/// A run an administrator created.
#[derive(Clone, Debug)]
pub struct Created {
    /// Its configuration (TOML), as sent.
    pub config: String,
    /// The run's name.
    pub run: String,
    /// Why, as the administrator gave it.
    pub reason: String,
}

#[derive(Clone)]
struct Idle {
    token: AdminToken,
    base: PathBuf,
    created: mpsc::UnboundedSender<Created>,
    taken: Arc<Mutex<bool>>,
}

/// Serves the idle coordinator on `listener` until an administrator creates a run; returns it
/// once the answer is out and the listener closed.
pub async fn wait_for_create(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    token: AdminToken,
    base: PathBuf,
) -> std::io::Result<Created> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let state = Idle {
        token,
        base,
        created: tx,
        taken: Arc::new(Mutex::new(false)),
    };
    let app = Router::new()
        .route("/api/status", get(status))
        .route("/api/admin", post(admin))
        .with_state(state);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop = async move {
        let _ = stop_rx.await;
    };
    let server = match tls {
        Some(cfg) => {
            let tls = crate::tls::TlsListener::new(listener, cfg)?;
            tokio::spawn(async move { axum::serve(tls, app).with_graceful_shutdown(stop).await })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }),
    };
    let created = rx.recv().await.ok_or_else(|| {
        std::io::Error::other("the idle coordinator stopped before a run was created")
    })?;
    let _ = stop_tx.send(());
    match server.await {
        Ok(r) => r?,
        Err(e) => return Err(std::io::Error::other(e)),
    }
    Ok(created)
}

async fn status() -> impl IntoResponse {
    Json(Status {
        phase: "idle".into(),
        ..Status::default()
    })
}

async fn admin(State(s): State<Idle>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(r) = refusal(Some(&s.token), &headers) {
        return r;
    }
    let req: AdminRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad request: {e}")),
    };
    if req.action != "create" {
        return error(
            StatusCode::CONFLICT,
            format!(
                "no run yet: {} needs a run; create one first (tessera admin create)",
                req.action
            ),
        );
    }
    if req.key.is_some() || req.param.is_some() || req.value.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "create takes a config and a reason only".into(),
        );
    }
    let Some(text) = req.config else {
        return error(
            StatusCode::BAD_REQUEST,
            "create needs the run's configuration (TOML) in `config`".into(),
        );
    };
    if req.reason.trim().is_empty() || req.reason.len() > 1000 {
        return error(
            StatusCode::BAD_REQUEST,
            "an administrator's act needs a reason of at most 1000 bytes: it goes into the run log"
                .into(),
        );
    }
    let run = match RunConfig::from_toml(&text).and_then(|c| {
        let (spec, _) = c.resolve(&s.base)?;
        Ok(spec.name)
    }) {
        Ok(name) => name,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the configuration: {e}")),
    };
    {
        let Ok(mut taken) = s.taken.lock() else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "poisoned state".into());
        };
        if *taken {
            return error(StatusCode::CONFLICT, "a run is being created".into());
        }
        *taken = true;
    }
    let done = format!("create run {run}");
    tracing::info!("admin: {done}");
    let _ = s.created.send(Created {
        config: text,
        run,
        reason: req.reason,
    });
    // The run's log: `Started` at 0, this act at 1.
    Json(AdminResponse { done, log_index: 1 }).into_response()
}
