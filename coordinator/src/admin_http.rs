//! `POST /api/admin`: the administrator's requests over HTTP (their body is
//! `admin_request::AdminRequest`). A bearer token authenticates them (401 without one, 403
//! with a wrong one, and 403 when the coordinator has no token at all); a malformed request is
//! a 400; the core refuses one that cannot apply now with a 409 and changes nothing; an
//! accepted one answers with the index of the run-log entry that put it into effect. Every
//! refusal is an [`AdminError`], which is its own HTTP response.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::oneshot;

use crate::admin_request::{AdminErrorBody, AdminRequest, AdminResponse};
use crate::admin_token::{AdminToken, AdminTransport, Denied};
use crate::config::ConfigError;
use crate::core::admin::AdminRefusal;
use crate::shared::{Event, Shared};

/// Why `POST /api/admin` did nothing; each is its own HTTP response (status, and an
/// [`AdminErrorBody`] with [`AdminError::code`] and the text).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The coordinator was started without an admin token (403).
    #[error("administration is disabled: this coordinator was started without an admin token")]
    Disabled,
    /// No `Authorization: Bearer` header (401).
    #[error("an admin token is needed: Authorization: Bearer TOKEN")]
    NoToken,
    /// Not the administrator's token (403).
    #[error("wrong admin token")]
    WrongToken,
    /// A token over plain HTTP from beyond this machine, where anyone on the way could read it
    /// (403).
    #[error("administration over plain HTTP is taken from this machine only: serve TLS (--tls-cert, --tls-key), or start the coordinator with --allow-plain-admin")]
    PlainHttp,
    /// Too many wrong tokens from this address: it must wait (429, `Retry-After`).
    #[error("too many wrong admin tokens from this address: try again in {0} s")]
    Throttled(u64),
    /// Not a request (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The run's configuration, sent with `create`, does not resolve (400).
    #[error("the configuration: {0}")]
    Config(#[from] ConfigError),
    /// The core refused the act; nothing changed (409).
    #[error("{0}")]
    Refused(#[from] AdminRefusal),
    /// An act of a run asked of an idle coordinator (409).
    #[error("no run yet: {0} needs a run; create one first (tessera admin create)")]
    NoRun(&'static str),
    /// A second `create` while the first starts (409).
    #[error("a run is being created")]
    Creating,
    /// The run is no longer served (503).
    #[error("the run is not being served")]
    NotServing,
    /// The run stopped before it answered (503).
    #[error("the run stopped before answering")]
    NoAnswer,
}

impl AdminError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::NoToken => StatusCode::UNAUTHORIZED,
            AdminError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            AdminError::Disabled | AdminError::WrongToken | AdminError::PlainHttp => {
                StatusCode::FORBIDDEN
            }
            AdminError::BadRequest(_) | AdminError::Config(_) => StatusCode::BAD_REQUEST,
            AdminError::Refused(_) | AdminError::NoRun(_) | AdminError::Creating => {
                StatusCode::CONFLICT
            }
            AdminError::NotServing | AdminError::NoAnswer => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable name of the kind, for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Disabled => "disabled",
            AdminError::NoToken => "no_token",
            AdminError::WrongToken => "wrong_token",
            AdminError::Throttled(_) => "throttled",
            AdminError::PlainHttp => "plain_http",
            AdminError::BadRequest(_) => "bad_request",
            AdminError::Config(_) => "bad_config",
            AdminError::Refused(_) => "refused",
            AdminError::NoRun(_) => "no_run",
            AdminError::Creating => "creating",
            AdminError::NotServing => "not_serving",
            AdminError::NoAnswer => "no_answer",
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let body = AdminErrorBody {
            code: self.code().into(),
            error: self.to_string(),
        };
        let mut r = (self.status(), Json(body)).into_response();
        if matches!(self, AdminError::NoToken) {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        if let AdminError::Throttled(secs) = self {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

pub(crate) use crate::gate::peer;

/// Whether the request from `from`, over `transport`, bears the administrator's token.
pub(crate) fn authorize(
    token: Option<&AdminToken>,
    headers: &HeaderMap,
    from: std::net::IpAddr,
    transport: AdminTransport,
) -> Result<(), AdminError> {
    let token = token.ok_or(AdminError::Disabled)?;
    if !transport.tls && !transport.allow_plain && !from.is_loopback() {
        return Err(AdminError::PlainHttp);
    }
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AdminError::NoToken)?;
    match token.check(given, from, std::time::Instant::now()) {
        Ok(()) => Ok(()),
        Err(Denied::Wrong) => {
            tracing::warn!(%from, "admin request with a wrong token refused");
            Err(AdminError::WrongToken)
        }
        Err(Denied::Wait(w)) => Err(AdminError::Throttled(w.as_secs().max(1))),
    }
}

/// The request in `body`.
pub(crate) fn request(body: &[u8]) -> Result<AdminRequest, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::BadRequest(e.to_string()))
}

/// `POST /api/admin`.
pub(crate) async fn api_admin(
    State(s): State<Shared>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<AdminResponse>, AdminError> {
    authorize(
        s.admin.as_ref(),
        &headers,
        peer(&extensions),
        s.admin_transport,
    )?;
    let req = request(&body)?;
    let Some(action) = req.command.act() else {
        // `create`: only an idle coordinator creates a run.
        return Err(AdminRefusal::RunExists(s.run_name()).into());
    };
    let (reply, answer) = oneshot::channel();
    let done = action.to_string();
    s.events
        .send(Event::Admin {
            action,
            reason: req.reason,
            reply,
        })
        .await
        .map_err(|_| AdminError::NotServing)?;
    let log_index = answer.await.map_err(|_| AdminError::NoAnswer)??;
    tracing::info!(log_index, "admin: {done}");
    Ok(Json(AdminResponse { done, log_index }))
}
