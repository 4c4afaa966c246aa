//! Signed messages and replay protection. A signed message names its signer, carries a sequence
//! number, and is signed over the session nonce, the sequence number and the body, so it is
//! worthless outside its session and a replay within the session is refused.

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;
use crate::identity::{Identity, PublicKey, Signature};

/// Domain of signed session messages.
pub const MESSAGE: &str = "message";

/// Domain of the coordinator's receipts.
pub const RECEIPT: &str = "receipt";

/// Decodes bytes written by [`signing_bytes`] (e.g. a ledger entry).
pub fn from_signing_bytes<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ProtocolError> {
    postcard::from_bytes(b).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// The bytes a detached signature over `v` covers: its postcard encoding.
pub fn signing_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, ProtocolError> {
    postcard::to_stdvec(v).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// A message signed by its sender.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// Who signed.
    pub signer: PublicKey,
    /// Strictly increasing within a session.
    pub seq: u64,
    /// The message.
    pub body: T,
    /// Signature over session nonce, `seq` and the postcard encoding of `body`.
    pub signature: Signature,
}

fn signed_bytes<T: Serialize>(
    session: &[u8; 32],
    seq: u64,
    body: &T,
) -> Result<Vec<u8>, ProtocolError> {
    let mut m = session.to_vec();
    m.extend_from_slice(&seq.to_le_bytes());
    postcard::to_extend(body, m).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

impl<T: Serialize> Signed<T> {
    /// Signs `body` as message `seq` of the session with nonce `session`.
    pub fn new(
        id: &Identity,
        session: &[u8; 32],
        seq: u64,
        body: T,
    ) -> Result<Self, ProtocolError> {
        let signature = id.sign(MESSAGE, &signed_bytes(session, seq, &body)?);
        Ok(Signed {
            signer: id.public(),
            seq,
            body,
            signature,
        })
    }

    /// Verifies the signature for the session and that `expected` signed it.
    pub fn verify(&self, session: &[u8; 32], expected: &PublicKey) -> Result<&T, ProtocolError> {
        if &self.signer != expected {
            return Err(ProtocolError::BadSignature(format!(
                "signed by {}, but this session belongs to {}",
                self.signer.fingerprint(),
                expected.fingerprint()
            )));
        }
        self.signer.verify(
            MESSAGE,
            &signed_bytes(session, self.seq, &self.body)?,
            &self.signature,
        )?;
        Ok(&self.body)
    }
}

/// Accepts each sequence number at most once, in increasing order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayGuard {
    last: Option<u64>,
}

impl ReplayGuard {
    /// Accepts `seq` if it is above every sequence number accepted before.
    pub fn accept(&mut self, seq: u64) -> Result<(), ProtocolError> {
        match self.last {
            Some(last) if seq <= last => Err(ProtocolError::Replay { got: seq, last }),
            _ => {
                self.last = Some(seq);
                Ok(())
            }
        }
    }
}
