//! The contributors' side of the load: the real handshake (Hello, Challenge, signed Proof,
//! Welcome) on a socket bound to a chosen 127.x source address, signed heartbeats, and a plain
//! `GET /api/status`, each timed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tessera_protocol::identity::{handshake_message, HANDSHAKE};
use tessera_protocol::messages::{Capabilities, ContributorKind, LogHead, SessionMessage};
use tessera_protocol::{decode, encode, Identity, Signed, ToContributor, ToCoordinator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A welcomed session's socket.
pub type Ws = WebSocketStream<TcpStream>;

/// How long one handshake step may take before the attempt counts as failed.
const STEP: Duration = Duration::from_secs(30);

/// A welcomed session: its socket, identity, session nonce and next sequence number.
pub struct Session {
    pub ws: Ws,
    pub id: Identity,
    pub nonce: [u8; 32],
    pub seq: u64,
    pub log_head: LogHead,
    /// How often the coordinator asked for heartbeats.
    pub heartbeat: Duration,
}

/// A TCP connection from `src` (any port) to the coordinator on 127.0.0.1:`port`.
async fn tcp_from(src: Ipv4Addr, port: u16) -> Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((src, 0)))
        .with_context(|| format!("binding {src}"))?;
    Ok(s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?)
}

/// The next protocol message.
async fn next(ws: &mut Ws) -> Result<ToContributor> {
    loop {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .map_err(|_| anyhow!("no answer in {STEP:?}"))?
            .ok_or_else(|| anyhow!("closed"))??;
        match m {
            Message::Binary(b) => return Ok(decode(&b, 64 << 20)?),
            Message::Close(f) => bail!("closed: {f:?}"),
            _ => continue,
        }
    }
}

async fn send(ws: &mut Ws, m: &ToCoordinator) -> Result<()> {
    Ok(ws.send(Message::Binary(encode(m)?.into())).await?)
}

/// The real handshake of `id` from `src`; small buffers, since thousands of these are held.
pub async fn join(port: u16, src: Ipv4Addr, id: Identity) -> Result<Session> {
    let tcp = tcp_from(src, port).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (mut ws, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async_with_config(url, tcp, Some(config)),
    )
    .await
    .map_err(|_| anyhow!("no upgrade in {STEP:?}"))??;
    let hello = ToCoordinator::Hello {
        key: id.public(),
        kind: ContributorKind::Native,
        software: "tessera-bench load".into(),
        capabilities: Capabilities {
            adapter: "none".into(),
            backend: "none".into(),
            max_binding_bytes: 1 << 20,
            // Too small for any lease: the session idles beside the real workers.
            memory_budget_bytes: 1,
        },
    };
    send(&mut ws, &hello).await?;
    let ToContributor::Challenge {
        nonce, coordinator, ..
    } = next(&mut ws).await?
    else {
        bail!("no challenge");
    };
    let signature = id.sign(
        HANDSHAKE,
        &handshake_message(&nonce, &coordinator, &id.public()),
    );
    send(&mut ws, &ToCoordinator::Proof { signature }).await?;
    match next(&mut ws).await? {
        // The crowd holds no lease: it heartbeats at the idle pace.
        ToContributor::Welcome {
            log_head,
            idle_heartbeat_ms,
            ..
        } => Ok(Session {
            ws,
            id,
            nonce,
            seq: 1,
            log_head,
            heartbeat: tessera_worker::heartbeat::every(idle_heartbeat_ms),
        }),
        other => bail!("not welcomed: {other:?}"),
    }
}

impl Session {
    /// Sends a signed session message.
    pub async fn say(&mut self, body: SessionMessage) -> Result<()> {
        let m = ToCoordinator::Session(Signed::new(&self.id, &self.nonce, self.seq, body)?);
        self.seq += 1;
        send(&mut self.ws, &m).await
    }

    /// Leaves cleanly and closes the socket.
    pub async fn leave(mut self) {
        let _ = self.say(SessionMessage::Leave).await;
        let _ = self.ws.close(None).await;
    }
}

/// One timed probe handshake from `src`: joins, leaves; the time to the Welcome.
pub async fn probe_handshake(port: u16, src: Ipv4Addr, id: Identity) -> Result<Duration> {
    let t = Instant::now();
    let s = join(port, src, id).await?;
    let took = t.elapsed();
    s.leave().await;
    Ok(took)
}

/// `GET /api/status` (first page): the time to the whole answer, and its JSON.
pub async fn status(port: u16) -> Result<(Duration, serde_json::Value)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let req =
        format!("GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut body = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut body))
        .await
        .map_err(|_| anyhow!("no status in {STEP:?}"))??;
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&body);
    let (head, json) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "status answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok((took, serde_json::from_str(json)?))
}

/// What the crowd of idle connections is doing.
#[derive(Default)]
pub struct Crowd {
    /// Welcomed and still open.
    pub held: AtomicUsize,
    /// Handshakes that failed.
    pub failed: AtomicUsize,
    /// Welcomed sessions the coordinator closed.
    pub dropped: AtomicUsize,
    /// The first failure or close, as text.
    pub first_error: Mutex<Option<String>>,
    /// Handshake times of the crowd (to the Welcome).
    pub joins: Mutex<Vec<Duration>>,
    /// The crowd's heartbeat interval (ms; 0 until a session is welcomed).
    pub heartbeat_ms: std::sync::atomic::AtomicU64,
}

impl Crowd {
    fn note(&self, e: String) {
        let mut f = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(e);
    }
}

/// One idle contributor: joins from `src`, releases its place in the ramp, then heartbeats every
/// `every` (as the coordinator's `Welcome` asks when `None`; the first after `phase` of it, so
/// the crowd's heartbeats spread evenly) until `stop` turns true, then leaves.
pub async fn idle(
    port: u16,
    src: Ipv4Addr,
    id: Identity,
    (every, phase): (Option<Duration>, f64),
    crowd: Arc<Crowd>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    ramp: tokio::sync::OwnedSemaphorePermit,
) {
    let t = Instant::now();
    let joined = join(port, src, id).await;
    drop(ramp);
    let mut s = match joined {
        Ok(s) => s,
        Err(e) => {
            crowd.failed.fetch_add(1, Ordering::Relaxed);
            crowd.note(format!("handshake from {src}: {e:#}"));
            return;
        }
    };
    crowd
        .joins
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(t.elapsed());
    crowd.held.fetch_add(1, Ordering::Relaxed);
    let every = every.unwrap_or(s.heartbeat);
    crowd
        .heartbeat_ms
        .store(every.as_millis() as u64, Ordering::Relaxed);
    let first = every.mul_f64(phase.clamp(0.0, 1.0));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + first, every);
    let outcome = loop {
        tokio::select! {
            _ = async { stop.wait_for(|&s| s).await.map(drop) } => break None,
            _ = beat.tick() => {
                let log_head = s.log_head;
                if let Err(e) = s.say(SessionMessage::Heartbeat { log_head }).await {
                    break Some(format!("heartbeat: {e:#}"));
                }
            }
            m = s.ws.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if let Ok(ToContributor::Error { reason, fatal: true }) = decode(&b, 64 << 20) {
                        break Some(format!("closed by the coordinator: {reason:?}"));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("socket: {e}")),
                None => break Some("socket closed".into()),
            },
        }
    };
    crowd.held.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        None => s.leave().await,
        Some(e) => {
            crowd.dropped.fetch_add(1, Ordering::Relaxed);
            crowd.note(e);
        }
    }
}
