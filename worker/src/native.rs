//! The native worker's transport: a WebSocket client (`ws://`, or `wss://` over rustls) around
//! a protocol [`Session`] and the [`Backend`] that runs its jobs (the GPU's for `tessera
//! worker`; tests wrap it to play hostile contributors over the same transport), that
//! reconnects with exponential backoff, sends heartbeats while idle, and leaves cleanly on
//! shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tessera_protocol::{
    decode, encode, Identity, PublicKey, ToContributor, ToCoordinator, MAX_FRAME_BYTES,
};
use tokio::sync::watch;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::Connector;

use crate::backend::Backend;
use crate::contributor::exchange;
use crate::error::WorkerError;
use crate::session::Session;

/// A TLS client configuration trusting the public web's roots and, when given, the
/// certificates in the PEM file `extra_ca` (e.g. a coordinator's self-signed certificate).
pub fn tls_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, WorkerError> {
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let bad = |why: String| WorkerError::Local(format!("{}: {why}", path.display()));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WorkerError::Local(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Draws a new identity from the operating system's randomness.
pub fn new_identity() -> Result<Identity, WorkerError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| WorkerError::Local(format!("no randomness for a key: {e}")))?;
    Ok(Identity::from_seed(seed))
}

/// How one session ended.
enum End {
    /// Shutdown requested; left cleanly.
    Shutdown,
    /// Connection lost or refused; try again.
    Retry(String),
    /// Connecting again cannot help ([`WorkerError::is_final`]).
    Final(WorkerError),
}

/// Runs until `shutdown` turns true: connects to `url` (`ws://host:port/ws`), contributes with
/// `session`, its jobs run on `backend` (for a GPU: [`crate::Contributor::parts`]), and
/// reconnects with backoff (0.5 s doubling to 30 s) whenever the connection drops. `progress`
/// sees the session (its counters, its new receipts) after every message.
pub async fn run<B: Backend>(
    url: &str,
    tls: Option<Arc<ClientConfig>>,
    contributor: &mut Session,
    backend: &mut B,
    mut shutdown: watch::Receiver<bool>,
    mut progress: impl FnMut(&mut Session),
) -> Result<(), WorkerError> {
    let tls = match (tls, url.starts_with("wss://")) {
        (Some(t), _) => Some(t),
        (None, true) => Some(tls_config(None)?),
        (None, false) => None,
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match session(
            url,
            tls.clone(),
            contributor,
            backend,
            &mut shutdown,
            &mut progress,
        )
        .await
        {
            End::Shutdown => return Ok(()),
            End::Final(e) => return Err(e),
            End::Retry(why) => {
                tracing::warn!("{why}; reconnecting in {:.1} s", backoff.as_secs_f64());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A failed upgrade, with the coordinator's reason when it gave one (its JSON `error`).
fn refusal(e: Error) -> String {
    if let Error::Http(answer) = &e {
        let why = answer
            .body()
            .as_deref()
            .and_then(|b| crate::admission::read_offer(b).ok()?.error)
            .map(|s| s.chars().take(300).collect::<String>())
            .or_else(|| {
                answer
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned())
            });
        if let Some(why) = why.filter(|w| !w.is_empty()) {
            return format!("{} ({why})", answer.status());
        }
    }
    e.to_string()
}

/// The socket a session runs on.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the WebSocket to `url`; when the coordinator asks for a proof of work (a 401 with a
/// puzzle), solves it for `key` and connects again with the ticket.
async fn open(url: &str, tls: Option<Arc<ClientConfig>>, key: PublicKey) -> Result<Socket, End> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let connector = tls.map(Connector::Rustls);
    let connect = |to: String| {
        tokio_tungstenite::connect_async_tls_with_config(to, Some(config), true, connector.clone())
    };
    match connect(url.to_string()).await {
        Ok((ws, _)) => Ok(ws),
        // A coordinator that asks for a proof of work offers the puzzle in its refusal.
        Err(Error::Http(answer)) if answer.status() == StatusCode::UNAUTHORIZED => {
            let body = answer.body().as_deref().unwrap_or_default();
            let puzzle = match crate::admission::read_offer(body) {
                Ok(crate::admission::Offer {
                    puzzle: Some(p), ..
                }) => p,
                Ok(offer) => {
                    let why = offer
                        .error
                        .unwrap_or_else(|| "the coordinator offered no puzzle".into());
                    return Err(End::Retry(format!("{url} refused the connection: {why}")));
                }
                Err(why) => return Err(End::Retry(format!("{url} refused the connection: {why}"))),
            };
            let (ticket, tries, secs) = crate::admission::solve(puzzle, key)
                .await
                .map_err(End::Retry)?;
            tracing::info!(
                bits = puzzle.bits,
                tries,
                secs,
                "solved the coordinator's admission puzzle ({} bits, {tries} hashes) in {secs:.2} s",
                puzzle.bits
            );
            match connect(crate::admission::with_ticket(url, &ticket)).await {
                Ok((ws, _)) => Ok(ws),
                Err(e) => Err(End::Retry(format!(
                    "{url} refused the ticketed connection: {}",
                    refusal(e)
                ))),
            }
        }
        Err(e) => Err(End::Retry(format!(
            "cannot reach the coordinator at {url}: {}",
            refusal(e)
        ))),
    }
}

async fn session<B: Backend>(
    url: &str,
    tls: Option<Arc<ClientConfig>>,
    c: &mut Session,
    backend: &mut B,
    shutdown: &mut watch::Receiver<bool>,
    progress: &mut impl FnMut(&mut Session),
) -> End {
    let ws = match open(url, tls, c.key()).await {
        Ok(ws) => ws,
        Err(end) => return end,
    };
    let (mut sink, mut stream) = ws.split();
    let send = |m: &ToCoordinator| encode(m).map(|f| Message::Binary(f.into()));
    let hello = match send(&c.hello()) {
        Ok(m) => m,
        Err(e) => return End::Retry(e.to_string()),
    };
    if let Err(e) = sink.send(hello).await {
        return End::Retry(format!("connection lost: {e}"));
    }
    let mut beat = tokio::time::interval(c.heartbeat_every());
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = beat.tick() => {
                if let Ok(hb) = c.heartbeat() {
                    if let Ok(m) = send(&hb) {
                        if sink.send(m).await.is_err() {
                            return End::Retry("connection lost".into());
                        }
                    }
                }
                continue;
            }
            _ = shutdown.changed() => {
                if let Ok(bye) = c.leave() {
                    if let Ok(m) = send(&bye) {
                        let _ = sink.send(m).await;
                    }
                }
                let _ = sink.close().await;
                return End::Shutdown;
            }
        };
        let frame = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(_))) | None => {
                return End::Retry("the coordinator closed the connection".into())
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return End::Retry(format!("connection lost: {e}")),
        };
        let incoming: ToContributor = match decode(&frame, MAX_FRAME_BYTES) {
            Ok(m) => m,
            Err(e) => return End::Retry(format!("undecodable frame from the coordinator: {e}")),
        };
        let replies = match exchange(c, backend, incoming).await {
            Ok(r) => r,
            Err(e) if e.is_final() => return End::Final(e),
            Err(e) => return End::Retry(e.to_string()),
        };
        progress(c);
        if c.heartbeat_every() != beat.period() {
            let every = c.heartbeat_every();
            beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        }
        for r in replies {
            match send(&r) {
                Ok(m) => {
                    if let Err(e) = sink.send(m).await {
                        return End::Retry(format!("connection lost: {e}"));
                    }
                }
                Err(e) => return End::Retry(e.to_string()),
            }
        }
    }
}
