//! `POST /api/admin`: the administrator's requests over HTTP. A bearer token authenticates them
//! (401 without one, 403 with a wrong one, and 403 when the coordinator has no token at all);
//! a malformed request is a 400; the core refuses one that cannot apply now with a 409 and
//! changes nothing; an accepted one answers with the index of the run-log entry that put it
//! into effect.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_protocol::log::AdminAction;
use tessera_protocol::PublicKey;
use tokio::sync::oneshot;

use crate::server::{Event, Shared};

/// Shortest token accepted, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The administrator's token, kept as its SHA-256.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    /// The token given (surrounding whitespace ignored); refused when shorter than
    /// [`MIN_TOKEN_BYTES`].
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "the admin token must be at least {MIN_TOKEN_BYTES} characters"
            ));
        }
        Ok(AdminToken(Sha256::digest(secret.as_bytes()).into()))
    }

    /// Whether `given` is the token, in time independent of where they differ.
    fn matches(&self, given: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        h.iter().zip(&self.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// The body of `POST /api/admin`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRequest {
    /// `pause`, `resume`, `stop`, `set`, `ban`, `unban` or (on an idle coordinator) `create`.
    pub action: String,
    /// For `set`: the parameter.
    #[serde(default)]
    pub param: Option<String>,
    /// For `set`: its new value.
    #[serde(default)]
    pub value: Option<String>,
    /// For `ban` and `unban`: the identity (hex public key).
    #[serde(default)]
    pub key: Option<String>,
    /// For `create` (on an idle coordinator): the run's configuration, as TOML.
    #[serde(default)]
    pub config: Option<String>,
    /// Why; contributors see it in the run log.
    pub reason: String,
}

/// The answer of `POST /api/admin`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminResponse {
    /// What was done.
    pub done: String,
    /// The run-log entry that put it into effect.
    pub log_index: u64,
}

impl AdminRequest {
    /// The act it asks for.
    pub fn action(&self) -> Result<AdminAction, String> {
        let key = || -> Result<PublicKey, String> {
            let hex = self
                .key
                .as_deref()
                .ok_or_else(|| format!("{} needs a key", self.action))?;
            PublicKey::from_hex(hex).map_err(|e| format!("key: {e}"))
        };
        let only = |what: &str, present: bool| {
            if present {
                Err(format!("{} takes no {what}", self.action))
            } else {
                Ok(())
            }
        };
        if self.action != "create" {
            only("config", self.config.is_some())?;
        }
        match self.action.as_str() {
            // A run exists wherever this is asked (an idle coordinator answers `create`
            // itself): the core refuses it with the run's name.
            "create" => Ok(AdminAction::Create {
                run: String::new(),
                config: [0; 32],
            }),
            "pause" | "resume" | "stop" => {
                only("key", self.key.is_some())?;
                only(
                    "param or value",
                    self.param.is_some() || self.value.is_some(),
                )?;
                Ok(match self.action.as_str() {
                    "pause" => AdminAction::Pause,
                    "resume" => AdminAction::Resume,
                    _ => AdminAction::Stop,
                })
            }
            "set" => {
                only("key", self.key.is_some())?;
                match (&self.param, &self.value) {
                    (Some(param), Some(value)) => Ok(AdminAction::Set {
                        param: param.clone(),
                        value: value.clone(),
                    }),
                    _ => Err("set needs a param and a value".into()),
                }
            }
            "ban" | "unban" => {
                only(
                    "param or value",
                    self.param.is_some() || self.value.is_some(),
                )?;
                let key = key()?;
                Ok(if self.action == "ban" {
                    AdminAction::Ban { key }
                } else {
                    AdminAction::Unban { key }
                })
            }
            other => Err(format!(
                "unknown action {other:?} (pause, resume, stop, set, ban, unban, create)"
            )),
        }
    }
}

pub(crate) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The refusal (401 or 403) of a request that does not bear the administrator's token; `None`
/// when it does.
pub(crate) fn refusal(token: Option<&AdminToken>, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "administration is disabled: this coordinator was started without an admin token"
                .into(),
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "an admin token is needed: Authorization: Bearer TOKEN".into(),
        );
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return Some(r);
    };
    if !token.matches(given) {
        tracing::warn!("admin request with a wrong token refused");
        return Some(error(StatusCode::FORBIDDEN, "wrong admin token".into()));
    }
    None
}

/// `POST /api/admin`.
pub(crate) async fn api_admin(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refusal(s.admin.as_ref(), &headers) {
        return r;
    }
    let req: AdminRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad request: {e}")),
    };
    let action = match req.action() {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (reply, answer) = oneshot::channel();
    let done = action.to_string();
    if s.events
        .send(Event::Admin {
            action,
            reason: req.reason,
            reply,
        })
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the run is not being served".into(),
        );
    }
    match answer.await {
        Ok(Ok(log_index)) => {
            tracing::info!(log_index, "admin: {done}");
            Json(AdminResponse { done, log_index }).into_response()
        }
        Ok(Err(why)) => error(StatusCode::CONFLICT, why),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the run stopped before answering".into(),
        ),
    }
}
