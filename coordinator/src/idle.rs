//! An idle coordinator: no run yet. It serves `GET /api/status` (phase `idle`) and
//! `POST /api/admin`, where the one act is `create` with a run's TOML configuration. The token
//! is checked as for any act (401, 403); a malformed request or a configuration that does not
//! resolve is a 400, anything but `create` a 409, and none of these changes anything. The first
//! valid `create` is answered and ends the wait: the caller then starts the run on the same
//! address, its log's first entry `Started` and its second the `create` act with its reason.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::rustls::ServerConfig;

use crate::admin_http::{authorize, peer, request, AdminError};
use crate::admin_request::{AdminCommand, AdminResponse};
use crate::admin_token::AdminToken;
use crate::config::RunConfig;
use crate::core::admin::check_reason;
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
    transport: crate::admin_token::AdminTransport,
    base: PathBuf,
    created: mpsc::UnboundedSender<Created>,
    taken: Arc<Mutex<bool>>,
}

/// Serves the idle coordinator on `listener` (its sockets capped as a run's would be under
/// `limits`) until an administrator creates a run; returns it once the answer is out and the
/// listener closed.
pub async fn wait_for_create(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    limits: crate::gate::ConnectionLimits,
    token: AdminToken,
    allow_plain_admin: bool,
    base: PathBuf,
) -> std::io::Result<Created> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let transport = crate::admin_token::AdminTransport {
        tls: tls.is_some(),
        allow_plain: allow_plain_admin,
    };
    let state = Idle {
        token,
        transport,
        base,
        created: tx,
        taken: Arc::new(Mutex::new(false)),
    };
    let app = router(state);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop = async move {
        let _ = stop_rx.await;
    };
    let sockets = crate::listen::socket_limits(limits);
    let server = tokio::spawn(crate::listen::serve(listener, tls, sockets, app, stop));
    let created = rx.recv().await.ok_or_else(|| {
        std::io::Error::other("the idle coordinator stopped before a run was created")
    })?;
    let _ = stop_tx.send(());
    server.await.map_err(std::io::Error::other)?;
    Ok(created)
}

/// The idle coordinator's routes: status and administration.
fn router(state: Idle) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/admin", post(admin))
        .with_state(state)
}

async fn status() -> impl IntoResponse {
    Json(Status {
        phase: "idle".into(),
        ..Status::default()
    })
}

async fn admin(
    State(s): State<Idle>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<AdminResponse>, AdminError> {
    authorize(Some(&s.token), &headers, peer(&extensions), s.transport)?;
    let req = request(&body)?;
    let AdminCommand::Create { config: text } = req.command else {
        return Err(AdminError::NoRun(req.command.name()));
    };
    check_reason(&req.reason).map_err(|why| AdminError::BadRequest(why.to_string()))?;
    let config = RunConfig::from_toml(&text)?;
    let run = config.resolve(&s.base)?.0.name;
    {
        let mut taken = s.taken.lock().unwrap_or_else(|p| p.into_inner());
        if *taken {
            return Err(AdminError::Creating);
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
    Ok(Json(AdminResponse { done, log_index: 1 }))
}

#[cfg(test)]
#[path = "idle_tests.rs"]
mod tests;
