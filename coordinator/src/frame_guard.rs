//! A contributor's socket, bounded before anything is buffered. [`FrameGuard`] wraps the
//! upgraded connection under the WebSocket codec and reads the header of every frame the
//! contributor sends; a frame (or a fragmented message) longer than the connection's current
//! limit is never read: the guard stops reading and tells the connection's task, which closes
//! the session with a `TooLarge` reason. Until the core has welcomed the session the limit is
//! [`HANDSHAKE_FRAME_BYTES`] (a `Hello` or a `Proof` is a few hundred bytes), so an anonymous
//! socket cannot make the coordinator hold more than that; once welcomed it is the protocol's
//! `MAX_FRAME_BYTES`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Longest frame a connection may send before its handshake is done.
pub const HANDSHAKE_FRAME_BYTES: usize = 4096;

/// A connection's read limit, shared by its guard, its task and the core's task.
#[derive(Debug)]
pub(crate) struct Limit {
    bytes: AtomicUsize,
    /// The announced length of the frame or message that went over the limit (0: none).
    over: AtomicUsize,
    /// The connection's writer is done: the session was closed.
    closed: AtomicBool,
    /// Everything read from now on is thrown away unread (the session is over).
    discard: AtomicBool,
    /// The bytes queued for the peer when it was found not to read them (0: it reads).
    slow: AtomicUsize,
    /// Wakes the connection's task when `over` or `closed` is set.
    pub(crate) wake: Notify,
}

impl Limit {
    /// A new connection's limit: [`HANDSHAKE_FRAME_BYTES`].
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Limit {
            bytes: AtomicUsize::new(HANDSHAKE_FRAME_BYTES),
            over: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            discard: AtomicBool::new(false),
            slow: AtomicUsize::new(0),
            wake: Notify::new(),
        })
    }

    /// The session was welcomed: frames up to `bytes` from now on.
    pub(crate) fn admit(&self, bytes: usize) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// The current limit.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether the session was welcomed.
    pub(crate) fn admitted(&self) -> bool {
        self.bytes() > HANDSHAKE_FRAME_BYTES
    }

    /// The length of the frame or message that went over the limit, if one did.
    pub(crate) fn over(&self) -> Option<usize> {
        match self.over.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// The session is closed: the connection's task stops reading.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether the session is closed.
    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The peer does not read what it is sent: `queued` bytes wait, over its budget. The
    /// connection's task closes the socket without sending them.
    pub(crate) fn slow_reader(&self, queued: usize) {
        self.slow.store(queued.max(1), Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// The bytes that were waiting when the peer was found not to read, if it was.
    pub(crate) fn slow(&self) -> Option<usize> {
        match self.slow.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// From now on the socket is drained: bytes are read and thrown away, never decoded, so
    /// that it can stay open until the peer has read why it was closed.
    pub(crate) fn discard(&self) {
        self.discard.store(true, Ordering::Relaxed);
    }

    fn trip(&self, len: u64) {
        let n = usize::try_from(len).unwrap_or(usize::MAX).max(1);
        self.over.store(n, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

/// Where the parser is in the stream of client frames.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Parse {
    /// Reading a frame header: `have` of its bytes so far.
    Header { have: usize },
    /// Passing `left` payload bytes through.
    Payload { left: u64 },
    /// Went over the limit: nothing more is read.
    Stopped,
}

/// Follows RFC 6455 frame headers through a byte stream.
#[derive(Debug)]
struct Frames {
    state: Parse,
    header: [u8; 14],
    /// Payload bytes of the data message being assembled (fragments so far).
    message: u64,
}

impl Frames {
    fn new() -> Self {
        Frames {
            state: Parse::Header { have: 0 },
            header: [0; 14],
            message: 0,
        }
    }

    /// The header's length once its first two bytes are known.
    fn header_len(&self) -> usize {
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
            127 => {
                let mut b = [0; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => n as u64,
        }
    }

    /// Feeds bytes read from the socket; `Err(len)` when a frame or message of `len` bytes
    /// goes over `limit`.
    fn feed(&mut self, mut bytes: &[u8], limit: usize) -> Result<(), u64> {
        while !bytes.is_empty() {
            match self.state {
                Parse::Stopped => return Ok(()),
                Parse::Payload { left } => {
                    let n = (bytes.len() as u64).min(left);
                    bytes = &bytes[n as usize..];
                    self.state = match left - n {
                        0 => Parse::Header { have: 0 },
                        left => Parse::Payload { left },
                    };
                }
                Parse::Header { mut have } => {
                    let need = if have < 2 { 2 } else { self.header_len() };
                    let n = (need - have).min(bytes.len());
                    self.header[have..have + n].copy_from_slice(&bytes[..n]);
                    have += n;
                    bytes = &bytes[n..];
                    if have < 2 || have < self.header_len() {
                        self.state = Parse::Header { have };
                        continue;
                    }
                    let len = self.payload_len();
                    let fin = self.header[0] & 0x80 != 0;
                    let control = self.header[0] & 0x08 != 0;
                    let total = if control { len } else { self.message + len };
                    if total > limit as u64 {
                        self.state = Parse::Stopped;
                        return Err(total);
                    }
                    if !control {
                        self.message = if fin { 0 } else { total };
                    }
                    self.state = match len {
                        0 => Parse::Header { have: 0 },
                        left => Parse::Payload { left },
                    };
                }
            }
        }
        Ok(())
    }
}

/// A socket whose incoming frames are held to a [`Limit`] (see the module doc).
pub(crate) struct FrameGuard<S> {
    inner: S,
    limit: Arc<Limit>,
    frames: Frames,
}

impl<S> FrameGuard<S> {
    /// Guards `inner` by `limit`.
    pub(crate) fn new(inner: S, limit: Arc<Limit>) -> Self {
        FrameGuard {
            inner,
            limit,
            frames: Frames::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.limit.discard.load(Ordering::Relaxed) {
            // Drained: read and thrown away until the peer closes (end of stream passes on).
            let this = &mut *self;
            let mut scratch = [0u8; 4096];
            loop {
                let mut b = ReadBuf::new(&mut scratch);
                match Pin::new(&mut this.inner).poll_read(cx, &mut b) {
                    Poll::Ready(Ok(())) if b.filled().is_empty() => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => continue,
                    other => return other,
                }
            }
        }
        if self.frames.state == Parse::Stopped {
            // Nothing more is read until the connection's task drains the socket.
            return Poll::Pending;
        }
        let start = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let limit = this.limit.bytes();
                if let Err(len) = this.frames.feed(&buf.filled()[start..], limit) {
                    this.limit.trip(len);
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header announcing `len` payload bytes.
    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![(u8::from(fin) << 7) | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = header(fin, opcode, len as u64);
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn frames_under_the_limit_pass_in_any_chunking() {
        let stream: Vec<u8> =
            [frame(true, 2, 100), frame(true, 9, 4), frame(true, 2, 4000)].concat();
        for chunk in [1, 3, 7, 64, 5000] {
            let mut f = Frames::new();
            for c in stream.chunks(chunk) {
                assert_eq!(f.feed(c, 4096), Ok(()), "chunks of {chunk}");
            }
            assert_eq!(f.state, Parse::Header { have: 0 });
        }
    }

    #[test]
    fn a_long_frame_is_refused_on_its_header_before_its_payload() {
        let mut f = Frames::new();
        assert_eq!(f.feed(&frame(true, 2, 10), 4096), Ok(()));
        assert_eq!(f.feed(&header(true, 2, 64 << 20), 4096), Err(64 << 20));
        assert_eq!(f.state, Parse::Stopped);
        // 16-bit lengths too.
        let mut f = Frames::new();
        assert_eq!(f.feed(&header(true, 2, 5000), 4096), Err(5000));
    }

    #[test]
    fn a_fragmented_message_counts_all_its_fragments_but_not_control_frames() {
        let mut f = Frames::new();
        assert_eq!(f.feed(&frame(false, 2, 3000), 4096), Ok(()));
        assert_eq!(f.feed(&frame(true, 9, 100), 4096), Ok(()), "a ping between");
        assert_eq!(f.feed(&header(true, 0, 2000), 4096), Err(5000));
        // A finished message starts the count again.
        let mut f = Frames::new();
        assert_eq!(f.feed(&frame(false, 2, 3000), 4096), Ok(()));
        assert_eq!(f.feed(&frame(true, 0, 1000), 4096), Ok(()));
        assert_eq!(f.feed(&frame(true, 2, 4000), 4096), Ok(()));
    }

    #[test]
    fn a_welcomed_connection_may_send_up_to_the_raised_limit() {
        let limit = Limit::new();
        assert!(!limit.admitted());
        limit.admit(64 << 20);
        assert!(limit.admitted());
        let mut f = Frames::new();
        assert_eq!(f.feed(&header(true, 2, 1 << 20), limit.bytes()), Ok(()));
    }
}
