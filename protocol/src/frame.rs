//! Framing: `b"TSRA"`, the protocol version as a little-endian u32, then the postcard body.
//! The version is read before the body, so a peer on another version gets a clear error rather
//! than a decoding failure; every frame is size-limited before anything is parsed.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ProtocolError;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 5;

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

/// The length of `msg`'s frame, without encoding it.
pub fn encoded_len<T: Serialize>(msg: &T) -> Result<usize, ProtocolError> {
    postcard::experimental::serialized_size(msg)
        .map(|n| HEADER + n)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// The oldest protocol version whose encoding of work and its results (units, results, tensors,
/// calibration records) is today's: version 2 changed only refusals and the run log, version 3
/// only the `Welcome` (its heartbeat interval), version 4 only the `Welcome` again (the idle
/// heartbeat interval), version 5 only updates (SparseLoCo's packed form, and outer steps
/// published as the replicas' compressed updates), which no stored file holds. Files of
/// those types written since then (calibration files, unit fixtures) decode with
/// [`decode_since`].
pub const WORK_FORMAT_SINCE: u32 = 1;

/// Decodes a frame of at most `limit` bytes. Trailing bytes after the message are an error.
pub fn decode<T: DeserializeOwned>(frame: &[u8], limit: usize) -> Result<T, ProtocolError> {
    decode_since(frame, limit, PROTOCOL_VERSION)
}

/// [`decode`] for a frame written by this version or an earlier one from `since` on: for stored
/// files of types whose encoding has not changed since `since` (never for live messages, whose
/// peers must speak this version).
pub fn decode_since<T: DeserializeOwned>(
    frame: &[u8],
    limit: usize,
    since: u32,
) -> Result<T, ProtocolError> {
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
    if !(since..=PROTOCOL_VERSION).contains(&got) {
        return Err(ProtocolError::Version {
            got,
            want: PROTOCOL_VERSION,
        });
    }
    let (decoded, refused) =
        crate::bounded::within(crate::bounded::budget_for(frame.len()), || {
            postcard::take_from_bytes(&frame[HEADER..])
        });
    let (msg, rest) =
        decoded.map_err(|e| ProtocolError::Malformed(refused.unwrap_or_else(|| e.to_string())))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}
