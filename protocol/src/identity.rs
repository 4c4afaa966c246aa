//! ed25519 identities: contributors and the coordinator sign with them. Every signature is
//! domain-separated (`tessera/v1/<domain>\0<message>`), so a signature made for one purpose can
//! never be presented for another.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;

/// A public key (32 bytes, compressed Edwards point).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "serde_bytes")] pub [u8; 64]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex(&self.0[..8]))
    }
}

/// Lower-case hex of bytes (one allocation: the status page writes thousands of keys).
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * b.len());
    for &x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    s
}

/// Parses hex (surrounding whitespace ignored) into bytes.
pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return Err("hex must be an even number of ASCII digits".into());
    }
    (0..s.len() / 2)
        .map(|i| {
            u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("{:?} is not a hex byte", &s[2 * i..2 * i + 2]))
        })
        .collect()
}

/// Parses exactly 64 hex characters (surrounding whitespace ignored) into 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    unhex(s).ok()?.try_into().ok()
}

fn domain_message(domain: &str, msg: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + domain.len() + msg.len());
    m.extend_from_slice(b"tessera/v1/");
    m.extend_from_slice(domain.as_bytes());
    m.push(0);
    m.extend_from_slice(msg);
    m
}

impl PublicKey {
    /// The first 8 bytes in hex: a short name for logs and pages.
    pub fn fingerprint(&self) -> String {
        hex(&self.0[..8])
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, ProtocolError> {
        parse_hex32(s)
            .map(PublicKey)
            .ok_or(ProtocolError::BadKey("a public key is 64 hex characters"))
    }

    /// Verifies `sig` over `msg` in `domain` (strict ed25519: no malleable signatures, no weak
    /// keys).
    pub fn verify(&self, domain: &str, msg: &[u8], sig: &Signature) -> Result<(), ProtocolError> {
        let key = VerifyingKey::from_bytes(&self.0)
            .map_err(|_| ProtocolError::BadSignature("not a valid ed25519 public key".into()))?;
        let s = ed25519_dalek::Signature::from_bytes(&sig.0);
        key.verify_strict(&domain_message(domain, msg), &s)
            .map_err(|_| {
                ProtocolError::BadSignature(format!(
                    "signature by {} does not verify",
                    self.fingerprint()
                ))
            })
    }
}

impl std::str::FromStr for PublicKey {
    type Err = ProtocolError;

    /// 64 hex characters, as [`PublicKey`]'s `Display` writes them.
    fn from_str(s: &str) -> Result<Self, ProtocolError> {
        PublicKey::from_hex(s)
    }
}

/// A private identity.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.public().fingerprint())
    }
}

impl Identity {
    /// The identity whose secret is `seed` (32 random bytes the caller draws, or a stored seed).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Identity {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The secret seed, for storing the identity.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `msg` in `domain`.
    pub fn sign(&self, domain: &str, msg: &[u8]) -> Signature {
        Signature(self.key.sign(&domain_message(domain, msg)).to_bytes())
    }
}

/// Domain of handshake proofs.
pub const HANDSHAKE: &str = "handshake";

/// What a contributor signs to prove it holds its key: the coordinator's fresh nonce, the
/// coordinator's key and its own key, so the proof is useless in any other session or to any
/// other coordinator.
pub fn handshake_message(
    nonce: &[u8; 32],
    coordinator: &PublicKey,
    contributor: &PublicKey,
) -> Vec<u8> {
    [nonce.as_slice(), &coordinator.0, &contributor.0].concat()
}

#[cfg(test)]
mod tests {
    use super::{hex, unhex};

    #[test]
    fn hex_is_lower_case_two_digits_a_byte_and_reads_back() {
        let bytes: Vec<u8> = (0..=255).collect();
        let h = hex(&bytes);
        assert_eq!(h.len(), 512);
        assert_eq!(&h[..8], "00010203");
        assert_eq!(&h[h.len() - 4..], "feff");
        assert_eq!(hex(&[0xa0, 0x0b]), "a00b");
        assert_eq!(unhex(&h).unwrap(), bytes);
        assert_eq!(hex(&[]), "");
    }
}
