//! The administrator's token: kept as its SHA-256 and compared in time independent of where a
//! guess differs. Wrong guesses are throttled per address: after [`FREE_GUESSES`] wrong tokens
//! an address waits, twice as long after each further one (up to [`MAX_WAIT`]), before its
//! next request is even compared; a right token clears its count. [`AdminTransport`] says over
//! what the token may arrive (TLS, or plain HTTP from this machine unless allowed).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Wrong tokens an address may send before it must wait.
pub const FREE_GUESSES: u32 = 5;
/// The longest wait after wrong tokens.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// An address's wrong guesses: how many, and until when it waits.
#[derive(Clone, Copy, Debug)]
struct Guesses {
    wrong: u32,
    until: Option<Instant>,
}

/// Shortest token accepted, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The administrator's token, kept as its SHA-256, with the wrong guesses of each address
/// (shared by clones).
#[derive(Clone)]
pub struct AdminToken {
    hash: [u8; 32],
    guesses: Arc<Mutex<HashMap<IpAddr, Guesses>>>,
}

/// Why a token was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    /// Not the token.
    Wrong,
    /// The address sent too many wrong tokens: it waits this long more.
    Wait(Duration),
}

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
        Ok(AdminToken {
            hash: Sha256::digest(secret.as_bytes()).into(),
            guesses: Arc::default(),
        })
    }

    /// Whether `given` is the token, in time independent of where they differ.
    fn matches(&self, given: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        h.iter()
            .zip(&self.hash)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Checks `given` from `from` at `now`: taken, wrong, or not compared while `from` waits.
    pub(crate) fn check(&self, given: &str, from: IpAddr, now: Instant) -> Result<(), Denied> {
        let mut all = self.guesses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = all.get(&from).and_then(|g| g.until) {
            if now < until {
                return Err(Denied::Wait(until - now));
            }
        }
        if self.matches(given) {
            all.remove(&from);
            return Ok(());
        }
        let g = all.entry(from).or_insert(Guesses {
            wrong: 0,
            until: None,
        });
        g.wrong = g.wrong.saturating_add(1);
        if g.wrong >= FREE_GUESSES {
            let doubling = (g.wrong - FREE_GUESSES).min(16);
            let wait = Duration::from_secs(1u64 << doubling).min(MAX_WAIT);
            g.until = Some(now + wait);
        }
        Err(Denied::Wrong)
    }
}

/// How administrators' requests reach the coordinator.
#[derive(Clone, Copy, Debug, Default)]
pub struct AdminTransport {
    /// Served over TLS.
    pub tls: bool,
    /// Take tokens over plain HTTP from other machines too (the operator's explicit choice).
    pub allow_plain: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_guesses_make_their_address_wait_longer_each_time() {
        let t = AdminToken::new("a-token-long-enough").unwrap();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        for _ in 0..FREE_GUESSES - 1 {
            assert_eq!(t.check("guess", a, t0), Err(Denied::Wrong));
        }
        assert_eq!(t.check("guess", a, t0), Err(Denied::Wrong));
        // Now it waits a second; even the right token is not compared meanwhile.
        assert_eq!(
            t.check("a-token-long-enough", a, t0),
            Err(Denied::Wait(Duration::from_secs(1)))
        );
        // Another address is not held up.
        assert_eq!(t.check("a-token-long-enough", b, t0), Ok(()));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.check("guess", a, t1), Err(Denied::Wrong));
        assert_eq!(
            t.check("guess", a, t1),
            Err(Denied::Wait(Duration::from_secs(2)))
        );
        // After the wait, the right token clears the count.
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(t.check("a-token-long-enough", a, t2), Ok(()));
        assert_eq!(t.check("guess", a, t2), Err(Denied::Wrong));
        assert_eq!(t.check("a-token-long-enough", a, t2), Ok(()));
        // The wait never exceeds the cap.
        let mut now = t2;
        for _ in 0..40 {
            if let Err(Denied::Wait(w)) = t.check("guess", a, now) {
                assert!(w <= MAX_WAIT);
                now += w;
            }
        }
    }
}
