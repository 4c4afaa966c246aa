//! The administrator's token: kept as its SHA-256 and compared in time independent of where a
//! guess differs.

use sha2::{Digest, Sha256};

/// Shortest token accepted, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The administrator's token, kept as its SHA-256.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    /// The token given (surrounding whitespace ignored); refused when shorter than
    /// [`MIN_TOKEN_BYTES`].
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "the admin token must be at least {MIN_TOKEN_BYTES} characters"
            ));
        }
        Ok(AdminToken(Sha256::digest(secret.as_bytes()).into()))
    }

    /// Whether `given` is the token, in time independent of where they differ.
    pub(crate) fn matches(&self, given: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        h.iter().zip(&self.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}
