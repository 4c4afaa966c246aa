//! A contributor's WebSocket (`GET /ws`): the upgrade, the socket's guard, and the two halves
//! of a connection. The upgrade is done here rather than by axum's extractor so that the
//! socket under the WebSocket codec is a [`FrameGuard`]: before the core welcomes the session,
//! a frame may be at most [`HANDSHAKE_FRAME_BYTES`] long and is refused on its header, before
//! its payload is read; a handshake not done within [`HANDSHAKE_TIMEOUT`] closes the socket.
//! The reader decodes frames into the core's inputs and stops decoding as soon as the session is
//! closed; the writer sends the core's frames in order and the close frame when the core closes
//! the session; the socket is then drained unread until the peer closes it (at most a minute).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tessera_protocol::messages::SessionMessage;
use tessera_protocol::{
    decode, Code, ProtocolError, PublicKey, Reason, ToCoordinator, MAX_FRAME_BYTES,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::core::Input;
use crate::frame_guard::{FrameGuard, Limit, HANDSHAKE_FRAME_BYTES};
use crate::shared::{Event, Heard, Outbox, Outgoing, Shared};

/// How long a connection may take from its upgrade to the end of its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a closed session's socket is drained, unread, waiting for the peer to close it:
/// closing a socket with unread bytes resets it, and a reset can throw away the reason the peer
/// has not read yet (a worker reads it once its unit in flight is done).
const DRAIN: Duration = Duration::from_secs(60);

/// The WebSocket codec's own limits and buffers: messages up to the protocol's largest frame,
/// read in chunks small enough that thousands of idle sockets stay cheap.
fn codec() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
}

/// Why a request to `/ws` is not a WebSocket upgrade this server takes, if it is not.
fn upgrade_problem(method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if method != Method::GET {
        return Some("a WebSocket upgrade is a GET request");
    }
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return Some(
            "/ws takes WebSocket connections only (Connection: Upgrade, Upgrade: websocket)",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Some("only WebSocket version 13 is spoken here");
    }
    if headers.get(header::SEC_WEBSOCKET_KEY).is_none() {
        return Some("the upgrade has no Sec-WebSocket-Key");
    }
    None
}

/// Why a browser page of another origin may not open `/ws`, if it may not: a request with an
/// `Origin` (browsers always send one; native workers do not) must come from the coordinator's
/// own page (the origin's host is the request's `Host`) or from an origin in `allowed`.
fn origin_problem(headers: &HeaderMap, allowed: &[String]) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("?");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let authority = origin.split_once("://").map_or("", |(_, a)| a);
    if (!host.is_empty() && authority.eq_ignore_ascii_case(host))
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
    {
        return None;
    }
    Some(format!(
        "pages from {origin} may not contribute here: this coordinator takes browsers from its own page (its operator can allow an origin with --allow-origin)"
    ))
}

/// The `ticket` parameter of a `/ws` query, if any.
fn ticket_of(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| kv.strip_prefix("ticket="))
}

/// The answer to an upgrade whose ticket does not admit it: 401 with the refusal's code and
/// text and, when a ticket is what is missing or stale, a fresh puzzle (so that a native
/// worker needs no other request).
fn refused_admission(s: &Shared, why: &tessera_protocol::admission::AdmissionError) -> Response {
    use tessera_protocol::admission::AdmissionError as E;
    let status = match why {
        E::Busy => StatusCode::SERVICE_UNAVAILABLE,
        E::Malformed(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNAUTHORIZED,
    };
    let body = crate::admission::Refusal {
        code: why.code(),
        error: why.to_string(),
        offer: (status == StatusCode::UNAUTHORIZED).then(|| s.admission.offer()),
    };
    tracing::debug!("refused an upgrade: {why}");
    (status, axum::Json(body)).into_response()
}

/// Why a session's `Hello` may not open it on a connection its ticket admitted for `ticketed`.
fn hello_problem(input: &Input, ticketed: Option<PublicKey>) -> Option<Reason> {
    let (
        Some(want),
        Input::Message {
            msg: ToCoordinator::Hello { key, .. },
            ..
        },
    ) = (ticketed, input)
    else {
        return None;
    };
    (*key != want).then(|| {
        Reason::new(
            Code::Handshake,
            format!("this connection's admission ticket is for {want}, not for the Hello's key"),
        )
    })
}

/// `GET /ws`: admits the connection (see `gate.rs`), checks the upgrade's admission ticket
/// (see `admission.rs`), upgrades it to a guarded WebSocket and runs it.
pub(crate) async fn ws(State(s): State<Shared>, mut req: Request) -> Response {
    if let Some(why) = upgrade_problem(req.method(), req.headers()) {
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    if let Some(why) = origin_problem(req.headers(), &s.origins) {
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    // The gate first: a ticket is used up when it is checked, so a connection the gate
    // refuses keeps its ticket for the next try.
    let admitted = match s.gate.admit(crate::gate::peer(req.extensions())) {
        Ok(a) => a,
        Err(why) => {
            tracing::info!("refused a connection: {why}");
            return (StatusCode::SERVICE_UNAVAILABLE, why.to_string()).into_response();
        }
    };
    let ticketed = match s.admission.check(ticket_of(req.uri().query())) {
        Ok(key) => key,
        Err(why) => return refused_admission(&s, &why),
    };
    let accept = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let limit = Limit::new();
                let io = FrameGuard::new(TokioIo::new(upgraded), limit.clone());
                let socket =
                    WebSocketStream::from_raw_socket(io, Role::Server, Some(codec())).await;
                connection(s, socket, limit, ticketed).await;
                drop(admitted);
            }
            Err(e) => tracing::debug!("a WebSocket upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Whether a decoded message is a heartbeat, which the connection takes itself: it changes
/// nothing but the session's liveness, and the socket it came on is the session's (proved by
/// the handshake), so its signature is not worth a check per heartbeat on the core's task.
fn is_heartbeat(input: &Input) -> bool {
    matches!(input, Input::Message { msg: ToCoordinator::Session(s), .. }
        if matches!(s.body, SessionMessage::Heartbeat { .. }))
}

/// What of `input`, received at `at`, goes to the core: every frame is recorded in `heard`;
/// a welcomed session's heartbeat goes no further (the core's task reads `heard` for the
/// sessions the core would close as silent, see `core_task`), anything else goes as it is.
fn forward(input: Input, admitted: bool, at: Instant, heard: &Heard) -> Option<Input> {
    heard.set(at);
    (!(admitted && is_heartbeat(&input))).then_some(input)
}

/// A frame's input for the core (counted in `metrics`).
fn input_of(conn: u64, msg: Message, metrics: &crate::metrics::Metrics) -> Option<Input> {
    if let Message::Binary(b) = &msg {
        metrics.received(b.len());
    }
    Some(match msg {
        Message::Binary(b) => match decode::<ToCoordinator>(&b, MAX_FRAME_BYTES) {
            Ok(msg) => Input::Message { conn, msg },
            Err(e) => Input::BadFrame {
                conn,
                error: Reason::new(
                    match e {
                        ProtocolError::Version { .. } => Code::ProtocolVersion,
                        _ => Code::MalformedFrame,
                    },
                    format!("malformed frame: {e}"),
                ),
            },
        },
        Message::Text(_) => Input::BadFrame {
            conn,
            error: Reason::new(
                Code::MalformedFrame,
                "malformed frame: text frames are not part of the protocol",
            ),
        },
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => return None,
    })
}

/// Why a connection that went over its read limit is closed.
fn too_large(len: usize, limit: &Limit) -> Reason {
    let why = if limit.admitted() {
        format!("a frame of {len} bytes is over the protocol's limit of {MAX_FRAME_BYTES} bytes")
    } else {
        format!(
            "a frame of {len} bytes before the handshake is done; until then frames are at most {HANDSHAKE_FRAME_BYTES} bytes"
        )
    };
    Reason::new(Code::TooLarge, why)
}

async fn connection<S>(
    s: Shared,
    socket: WebSocketStream<S>,
    limit: Arc<Limit>,
    ticketed: Option<PublicKey>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = s.next_conn.fetch_add(1, Ordering::Relaxed);
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let mut nonce = [0u8; 32];
    if getrandom::fill(&mut nonce).is_err() {
        return;
    }
    let queued = Arc::new(AtomicUsize::new(0));
    let heard = Arc::new(Heard::default());
    let outbox = Outbox {
        frames: out_tx,
        limit: limit.clone(),
        queued: queued.clone(),
        heard: heard.clone(),
    };
    let _ = s.events.send(Event::Register(conn, outbox)).await;
    let _ = s
        .events
        .send(Event::Input(
            Box::new(Input::Connected { conn, nonce }),
            Instant::now(),
        ))
        .await;
    let (sink, mut stream) = socket.split();
    let closing = limit.clone();
    let writer = tokio::spawn(write(sink, out_rx, queued, closing, s.metrics.clone()));
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        // The core admits the session (its `Welcome`) while this loop waits for the next
        // frame, which a welcomed session may not send for a while (an idle one heartbeats
        // once a minute): so admission is looked at again when the deadline comes.
        let handshake = async {
            if !limit.admitted() {
                tokio::time::sleep_until(deadline).await;
            }
            if limit.admitted() {
                std::future::pending::<()>().await
            }
        };
        let input = tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(msg)) => match input_of(conn, msg, &s.metrics) {
                    Some(input) => input,
                    None => continue,
                },
                _ => break,
            },
            _ = limit.wake.notified() => match (limit.over(), limit.slow()) {
                (Some(len), _) => Input::BadFrame { conn, error: too_large(len, &limit) },
                (None, Some(queued)) => Input::BadFrame {
                    conn,
                    error: Reason::new(
                        Code::TimedOut,
                        format!("this session does not read what it is sent: {queued} bytes were waiting for it"),
                    ),
                },
                (None, None) if limit.closed() => break,
                (None, None) => continue,
            },
            _ = handshake, if !limit.admitted() => Input::BadFrame {
                conn,
                error: Reason::new(
                    Code::TimedOut,
                    format!("the handshake was not done within {} s", HANDSHAKE_TIMEOUT.as_secs()),
                ),
            },
        };
        let input = match hello_problem(&input, ticketed) {
            Some(error) => Input::BadFrame { conn, error },
            None => input,
        };
        let at = Instant::now();
        let Some(input) = forward(input, limit.admitted(), at, &heard) else {
            continue;
        };
        let bad = matches!(input, Input::BadFrame { .. });
        // A full queue holds this reader (and its socket) until the core catches up.
        let _ = s.events.send(Event::Input(Box::new(input), at)).await;
        if bad || limit.closed() {
            break;
        }
    }
    let _ = s
        .events
        .send(Event::Input(
            Box::new(Input::Disconnected { conn }),
            Instant::now(),
        ))
        .await;
    if limit.over().is_some() || limit.slow().is_some() {
        // A frame over the limit is never read, and a peer that does not read would not read
        // the reason either: the socket waits a moment, then closes.
        tokio::time::sleep(LINGER).await;
    } else {
        // Nothing more is decoded; the socket is drained until the peer closes it (it has the
        // close frame) or DRAIN passes.
        limit.discard();
        let _ = tokio::time::timeout(DRAIN, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
    // A peer that reads nothing cannot hold the writer (and its place at the gate) for ever.
    let mut writer = writer;
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// How long the socket may take to accept one frame; a peer that takes longer does not read
/// what it is sent, and is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// The writer half: sends what the core's task queues, in order (a weight stream frame by
/// frame, each cut and encoded once the socket took the one before), until the queue closes
/// or the peer stops taking frames; then closes the socket and stops the reading.
async fn write<S>(
    mut sink: S,
    mut out_rx: mpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
    closing: Arc<Limit>,
    metrics: Arc<crate::metrics::Metrics>,
) where
    S: futures_util::Sink<Message> + Unpin,
{
    let send = async |sink: &mut S, frame: bytes::Bytes| -> bool {
        let len = frame.len();
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Binary(frame))).await {
            Ok(Ok(())) => {
                metrics.sent(len);
                true
            }
            Ok(Err(_)) => false,
            Err(_) => {
                closing.slow_reader(len);
                false
            }
        }
    };
    'queue: while let Some(out) = out_rx.recv().await {
        if closing.slow().is_some() {
            // A peer that does not read gets nothing more; its socket closes.
            break;
        }
        match out {
            Outgoing::Frame(frame) => {
                let len = frame.len();
                let sent = send(&mut sink, frame).await;
                queued.fetch_sub(len, Ordering::Relaxed);
                if !sent {
                    break;
                }
            }
            Outgoing::Weights(stream) => {
                for msg in stream.frames() {
                    let Ok(frame) = tessera_protocol::encode(&msg) else {
                        tracing::error!(lease = stream.lease(), "a weight frame did not encode");
                        break 'queue;
                    };
                    if !send(&mut sink, frame.into()).await {
                        break 'queue;
                    }
                }
            }
        }
    }
    let _ = sink.close().await;
    closing.close();
}

/// How long a socket closed for an oversized frame waits, unread, before it closes.
const LINGER: Duration = Duration::from_millis(500);

/// How long the writer may still take to send what is queued once the socket was drained.
const WRITER_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_coordinator_s_own_page_or_an_allowed_origin_may_open_the_socket() {
        let h = |origin: Option<&str>| {
            let mut pairs = vec![(header::HOST, "coord.example:8080")];
            if let Some(o) = origin {
                pairs.push((header::ORIGIN, o));
            }
            headers(&pairs)
        };
        assert_eq!(
            origin_problem(&h(None), &[]),
            None,
            "native workers send none"
        );
        assert_eq!(
            origin_problem(&h(Some("https://coord.example:8080")), &[]),
            None
        );
        let evil = origin_problem(&h(Some("https://evil.example")), &[]).expect("refused");
        assert!(evil.contains("https://evil.example"), "{evil}");
        let allowed = ["https://friends.example".to_string()];
        assert_eq!(
            origin_problem(&h(Some("https://friends.example")), &allowed),
            None
        );
        assert!(origin_problem(&h(Some("null")), &allowed).is_some());
    }

    #[test]
    fn a_welcomed_session_s_heartbeats_stop_at_the_connection_and_every_frame_is_heard() {
        use tessera_protocol::messages::LogHead;
        use tessera_protocol::{Identity, Signed};
        let id = Identity::from_seed([1; 32]);
        let body = |seq, body| Input::Message {
            conn: 7,
            msg: ToCoordinator::Session(Signed::new(&id, &[0; 32], seq, body).unwrap()),
        };
        let beat = |seq| {
            body(
                seq,
                SessionMessage::Heartbeat {
                    log_head: LogHead::default(),
                },
            )
        };
        let heard = Heard::default();
        assert_eq!(heard.get(), None, "nothing heard yet");
        let t0 = Instant::now();
        // Before the handshake is done, a heartbeat goes to the core (which refuses it).
        assert_eq!(forward(beat(1), false, t0, &heard), Some(beat(1)));
        let t1 = t0 + Duration::from_secs(9);
        assert_eq!(forward(beat(2), true, t1, &heard), None);
        let got = heard.get().expect("heard");
        assert!(
            got.max(t1) - got.min(t1) <= Duration::from_millis(1),
            "{got:?}"
        );
        // Anything else goes as it is, and is heard too; time never goes back.
        let leave = body(3, SessionMessage::Leave);
        let t2 = t0 + Duration::from_secs(15);
        assert_eq!(forward(leave.clone(), true, t2, &heard), Some(leave));
        assert_eq!(forward(beat(4), true, t1, &heard), None);
        assert!(heard.get().expect("heard") + Duration::from_millis(1) >= t2);
    }

    #[test]
    fn only_a_version_13_websocket_upgrade_is_taken() {
        let good = [
            (header::CONNECTION, "keep-alive, Upgrade"),
            (header::UPGRADE, "websocket"),
            (header::SEC_WEBSOCKET_VERSION, "13"),
            (header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(upgrade_problem(&Method::GET, &headers(&good)), None);
        assert!(upgrade_problem(&Method::POST, &headers(&good)).is_some());
        assert!(upgrade_problem(&Method::GET, &headers(&good[1..])).is_some());
        let mut v8 = good.clone();
        v8[2].1 = "8";
        assert!(upgrade_problem(&Method::GET, &headers(&v8)).is_some());
        assert!(upgrade_problem(&Method::GET, &headers(&good[..3])).is_some());
        // RFC 6455's example key and answer.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
