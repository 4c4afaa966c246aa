//! Framing: `b"TSRA"`, the protocol version as a little-endian u32, then the postcard body.
//! The version is read before the body, so a peer on another version gets a clear error rather
//! than a decoding failure; every frame is size-limited before anything is parsed.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ProtocolError;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default hard limit on a frame (parameter and gradient payloads included): 64 MiB.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

const MAGIC: &[u8; 4] = b"TSRA";
const HEADER: usize = 8;

/// Encodes a message into a frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    postcard::to_extend(msg, out).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Decodes a frame of at most `limit` bytes. Trailing bytes after the message are an error.
pub fn decode<T: DeserializeOwned>(frame: &[u8], limit: usize) -> Result<T, ProtocolError> {
    if frame.len() > limit {
        return Err(ProtocolError::TooLarge {
            size: frame.len(),
            limit,
        });
    }
    if frame.len() < HEADER || &frame[..4] != MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    let got = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if got != PROTOCOL_VERSION {
        return Err(ProtocolError::Version {
            got,
            want: PROTOCOL_VERSION,
        });
    }
    let (msg, rest) = postcard::take_from_bytes(&frame[HEADER..])
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}
