//! The HTTP server's accept loop, for a run and for the idle coordinator alike. Every TCP
//! socket holds a place from its accept to its close, counted against caps in all and per
//! address ([`socket_limits`]); a socket over either is answered 503 naming the cap and closed
//! unread. TLS handshakes run in the socket's own task, with a deadline. hyper serves each
//! connection with a header-read timeout ([`HEADER_READ_TIMEOUT`]), so a socket that sends
//! nothing, or the head of a request a byte at a time, or keeps an idle keep-alive open, is
//! closed. A WebSocket upgrade keeps its socket's place until the socket closes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::gate::{Admitted, ConnectionLimits, Gate, Peer, Refused};

/// How long a connection may take to send a request's head: from its accept, or from the
/// end of its last response on a kept-alive connection. Past it the socket is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TLS handshake may take before its socket is closed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sockets allowed beyond the WebSocket sessions' cap in all: page loads, status polls and
/// upgrades under way.
pub const SOCKETS_BEYOND_SESSIONS: usize = 1024;

/// How long a refused socket is given to take its 503 before it is closed.
const REFUSAL_GRACE: Duration = Duration::from_secs(2);

/// The caps on open sockets for the caps on WebSocket sessions: in all, the sessions' cap plus
/// [`SOCKETS_BEYOND_SESSIONS`]; per address, twice the sessions' (a browser loads the page on a
/// few sockets beside its WebSocket). A WebSocket over its own cap is still answered by the
/// upgrade's 503, which names that cap.
pub fn socket_limits(sessions: ConnectionLimits) -> ConnectionLimits {
    ConnectionLimits {
        total: sessions.total.saturating_add(SOCKETS_BEYOND_SESSIONS),
        per_address: sessions.per_address.saturating_mul(2),
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `stop` resolves, then stops
/// accepting, lets the requests in flight finish, and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    sockets: ConnectionLimits,
    app: Router,
    stop: impl Future<Output = ()>,
) {
    let gate = Gate::new(sockets);
    let tls = tls.map(TlsAcceptor::from);
    let (drain, draining) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let place = gate.admit(peer.ip());
                    connections.spawn(connection(
                        tcp,
                        peer,
                        place,
                        tls.clone(),
                        app.clone(),
                        draining.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut stop => break,
        }
    }
    drop(listener);
    let _ = drain.send(true);
    while connections.join_next().await.is_some() {}
}

/// One socket, from its accept to its close (or its upgrade's hand-over).
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    place: Result<Admitted, Refused>,
    tls: Option<TlsAcceptor>,
    app: Router,
    draining: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return http(tcp, peer, place, app, draining).await;
    };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(stream)) => http(stream, peer, place, app, draining).await,
        Ok(Err(e)) => tracing::info!(%peer, "TLS handshake failed: {e}"),
        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
    }
}

/// HTTP/1.1 on an accepted (and, with TLS, handshaken) socket, or the 503 of its refusal.
async fn http<IO>(
    mut io: IO,
    peer: SocketAddr,
    place: Result<Admitted, Refused>,
    app: Router,
    mut draining: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let place = match place {
        Ok(place) => place,
        Err(why) => {
            tracing::debug!(%peer, "socket refused: {why}");
            refuse(&mut io, &why).await;
            return;
        }
    };
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(Peer(peer)));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let placed = Placed { io, _place: place };
    let conn = builder
        .serve_connection(TokioIo::new(placed), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let drained = async move {
        let _ = draining.wait_for(|d| *d).await;
    };
    tokio::select! {
        ended = conn.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            return;
        }
        () = drained => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Answers a socket over a cap: 503 with the cap's text, then close. What the peer sent is
/// read and dropped (a little, briefly) so that the close does not reset the answer away.
async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO, why: &Refused) {
    let body = match why {
        Refused::Full(n) => format!("this coordinator holds its most sockets ({n}); try again later"),
        Refused::Address { address, limit } => format!(
            "{address} holds its most sockets to this coordinator ({limit}: twice its WebSocket limit)"
        ),
    };
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nretry-after: 5\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_GRACE, async {
        io.write_all(head.as_bytes()).await?;
        io.write_all(body.as_bytes()).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            let n = io.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// A socket with its place: the place is given back when the socket is dropped, after an
/// upgrade too (hyper hands the socket itself to the WebSocket).
struct Placed<IO> {
    io: IO,
    _place: Admitted,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Placed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Placed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_have_room_beyond_the_sessions() {
        let s = socket_limits(ConnectionLimits {
            total: 100,
            per_address: 3,
        });
        assert_eq!(s.total, 100 + SOCKETS_BEYOND_SESSIONS);
        assert_eq!(s.per_address, 6);
        let huge = socket_limits(ConnectionLimits {
            total: usize::MAX,
            per_address: usize::MAX,
        });
        assert_eq!((huge.total, huge.per_address), (usize::MAX, usize::MAX));
    }
}
