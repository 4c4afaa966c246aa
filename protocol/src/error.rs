//! Protocol errors: every way a frame or message from a peer can be refused.

/// Why a frame or message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame is larger than the limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Frame size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The frame does not start with the Tessera magic bytes.
    #[error("not a Tessera frame (bad magic)")]
    BadMagic,
    /// The peer speaks another protocol version.
    #[error("protocol version {got} is not supported (this side speaks {want})")]
    Version {
        /// Version in the frame.
        got: u32,
        /// Version this side speaks.
        want: u32,
    },
    /// The body does not decode as a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A tensor payload whose bytes do not match its dtype and shape, or holds NaN/Inf.
    #[error("bad tensor: {0}")]
    BadTensor(String),
    /// A signature that does not verify, or a key that is not a valid ed25519 point.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// Text that is not a public key (64 hex characters).
    #[error("not a public key: {0}")]
    BadKey(&'static str),
    /// A replayed or out-of-order message.
    #[error("replayed message: sequence {got} is not above {last}")]
    Replay {
        /// Sequence number received.
        got: u64,
        /// Highest sequence number accepted so far.
        last: u64,
    },
}
