//! Admission by proof of work (see `tessera_protocol::admission`): the coordinator issues
//! puzzles statelessly (`GET /api/admission`, and the 401 answer to a `/ws` upgrade without a
//! ticket), each bound by an HMAC tag under a secret drawn at start, with an expiry; a `/ws`
//! upgrade must carry a ticket that solves one, checked before the upgrade. A ticket admits
//! the key it names (the connection holds its `Hello` to it) and is used once: used puzzles
//! are kept until they expire, at most [`MAX_USED`] of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::digest::generic_array::GenericArray;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tessera_protocol::admission::{AdmissionError, Puzzle, Ticket, MAX_BITS};
use tessera_protocol::PublicKey;

/// How long a puzzle may be solved and used.
pub const PUZZLE_TTL: Duration = Duration::from_secs(120);

/// The most used puzzles kept at once (about 60 bytes each): a coordinator that used this many
/// in the last [`PUZZLE_TTL`] refuses new tickets (`admission_busy`) until some expire.
pub const MAX_USED: usize = 1 << 20;

/// The default difficulty: zero bits the work hash must start with.
pub const DEFAULT_BITS: u8 = 20;

/// The coordinator's admission: its difficulty, its secret and the puzzles used.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    bits: u8,
    /// The HMAC keyed with the secret, cloned for each tag.
    mac: HmacSha256,
    start: Instant,
    /// Used puzzles' tags, with when they expire.
    used: Mutex<HashMap<[u8; 32], u64>>,
}

/// What `/api/admission` serves (and the 401 answer to a ticketless upgrade).
#[derive(Debug, serde::Serialize)]
pub struct Offer {
    /// Zero bits asked for (0: no ticket is needed).
    pub bits: u8,
    /// The puzzle, as hex (absent when `bits` is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub puzzle: Option<String>,
    /// Seconds it stays valid.
    pub expires_in_secs: u64,
    /// How to solve it.
    pub scheme: &'static str,
}

/// The answer to an upgrade whose ticket does not admit it: the refusal's code and text and,
/// when a ticket is what is missing or stale, a fresh offer.
#[derive(Debug, serde::Serialize)]
pub struct Refusal {
    /// The refusal's code (`AdmissionError::code`).
    pub code: &'static str,
    /// What is wrong, for people.
    pub error: String,
    /// A fresh puzzle to solve.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Offer>,
}

/// How a ticket is solved, as an offer says it.
const SCHEME: &str = "find a nonce such that SHA-256(\"tessera/admission/1\" || puzzle bytes || your ed25519 public key || nonce as u64 little-endian) starts with `bits` zero bits; open /ws?ticket= with the hex of puzzle bytes || key || nonce";

type HmacSha256 = Hmac<Sha256>;

impl Admission {
    /// An admission asking for `bits` zero bits (0 turns it off; at most
    /// [`MAX_BITS`]), with a fresh secret from the system's randomness (an error without it:
    /// a guessable secret would let anyone mint tickets).
    pub fn new(bits: u8) -> Result<Admission, getrandom::Error> {
        // A key of SHA-256's block size, HMAC's natural one.
        let mut secret = [0u8; 64];
        getrandom::fill(&mut secret)?;
        Ok(Admission::with(bits.min(MAX_BITS), &secret))
    }

    /// No admission: every upgrade is taken without a ticket.
    pub fn off() -> Admission {
        Admission::with(0, &[0; 64])
    }

    fn with(bits: u8, secret: &[u8; 64]) -> Admission {
        Admission {
            inner: Arc::new(Inner {
                bits,
                mac: <HmacSha256 as Mac>::new(GenericArray::from_slice(secret)),
                start: Instant::now(),
                used: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Zero bits asked for.
    pub fn bits(&self) -> u8 {
        self.inner.bits
    }

    fn now(&self) -> u64 {
        self.inner.start.elapsed().as_secs()
    }

    /// The HMAC over a puzzle's tagged fields, not yet finalized.
    fn mac(&self, expires: u64, salt: &[u8; 16], bits: u8) -> HmacSha256 {
        let mut mac = self.inner.mac.clone();
        mac.update(&Puzzle::tagged_bytes(expires, salt, bits));
        mac
    }

    fn tag(&self, expires: u64, salt: &[u8; 16], bits: u8) -> [u8; 32] {
        self.mac(expires, salt, bits).finalize().into_bytes().into()
    }

    /// A new puzzle (none when admission is off).
    pub fn issue(&self) -> Option<Puzzle> {
        if self.inner.bits == 0 {
            return None;
        }
        let mut salt = [0u8; 16];
        let _ = getrandom::fill(&mut salt);
        let expires = self.now() + PUZZLE_TTL.as_secs();
        Some(Puzzle {
            expires,
            salt,
            bits: self.inner.bits,
            tag: self.tag(expires, &salt, self.inner.bits),
        })
    }

    /// What `/api/admission` serves.
    pub fn offer(&self) -> Offer {
        Offer {
            bits: self.inner.bits,
            puzzle: self.issue().map(|p| p.to_hex()),
            expires_in_secs: PUZZLE_TTL.as_secs(),
            scheme: SCHEME,
        }
    }

    /// Checks a `/ws` upgrade's ticket (`None`: it has none) and uses it: the key it admits,
    /// or `None` when admission is off.
    pub fn check(&self, ticket: Option<&str>) -> Result<Option<PublicKey>, AdmissionError> {
        if self.inner.bits == 0 {
            return Ok(None);
        }
        let t = Ticket::from_hex(ticket.ok_or(AdmissionError::Missing)?)?;
        let p = &t.puzzle;
        // The tag is the coordinator's secret's: compared in constant time.
        self.mac(p.expires, &p.salt, p.bits)
            .verify_slice(&p.tag)
            .map_err(|_| AdmissionError::Forged)?;
        let now = self.now();
        if p.expires <= now {
            return Err(AdmissionError::Expired);
        }
        if p.bits < self.inner.bits {
            return Err(AdmissionError::TooEasy(p.bits, self.inner.bits));
        }
        if !t.is_solved() {
            return Err(AdmissionError::Unsolved);
        }
        let mut used = self.inner.used.lock().map_err(|_| AdmissionError::Busy)?;
        if used.contains_key(&p.tag) {
            return Err(AdmissionError::Reused);
        }
        if used.len() >= MAX_USED {
            used.retain(|_, expires| *expires > now);
            if used.len() >= MAX_USED {
                return Err(AdmissionError::Busy);
            }
        }
        used.insert(p.tag, p.expires);
        Ok(Some(t.key))
    }

    /// Used puzzles kept now.
    pub fn used(&self) -> usize {
        self.inner.used.lock().map_or(0, |u| u.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::admission::solve;

    #[test]
    fn a_solved_puzzle_admits_its_key_once_and_nothing_else_admits() {
        let a = Admission::new(10).unwrap();
        let key = PublicKey([5; 32]);
        let (t, _) = solve(a.issue().unwrap(), key);
        let text = t.to_hex();
        assert_eq!(a.check(Some(&text)), Ok(Some(key)));
        assert_eq!(a.check(Some(&text)), Err(AdmissionError::Reused));
        assert_eq!(a.check(None), Err(AdmissionError::Missing));
        // Another coordinator's puzzle (another secret), solved: forged here.
        let other = Admission::new(10).unwrap();
        let (t, _) = solve(other.issue().unwrap(), key);
        assert_eq!(a.check(Some(&t.to_hex())), Err(AdmissionError::Forged));
        // A puzzle whose bits were lowered by the solver: its tag no longer matches.
        let mut p = a.issue().unwrap();
        p.bits = 1;
        let (t, _) = solve(p, key);
        assert_eq!(a.check(Some(&t.to_hex())), Err(AdmissionError::Forged));
        // One the coordinator issued, with a nonce that does not solve it.
        let p = a.issue().unwrap();
        let (mut t, _) = solve(p, key);
        while t.is_solved() {
            t.nonce += 1;
        }
        assert_eq!(a.check(Some(&t.to_hex())), Err(AdmissionError::Unsolved));
        assert_eq!(a.used(), 1);
    }

    #[test]
    fn an_expired_or_easier_puzzle_is_refused() {
        let a = Admission::new(6).unwrap();
        let key = PublicKey([6; 32]);
        // Made with the coordinator's own tag: as if issued long ago, and easier than asked.
        let own = |expires, bits| {
            let salt = [1; 16];
            Puzzle {
                expires,
                salt,
                bits,
                tag: a.tag(expires, &salt, bits),
            }
        };
        let (t, _) = solve(own(0, 6), key);
        assert_eq!(a.check(Some(&t.to_hex())), Err(AdmissionError::Expired));
        let (t, _) = solve(own(1000, 2), key);
        assert_eq!(
            a.check(Some(&t.to_hex())),
            Err(AdmissionError::TooEasy(2, 6))
        );
    }

    #[test]
    fn off_admits_everyone_and_issues_nothing() {
        let a = Admission::new(0).unwrap();
        assert!(a.issue().is_none());
        assert_eq!(a.check(None), Ok(None));
        assert_eq!(a.offer().puzzle, None);
        let on = Admission::new(200).unwrap();
        assert_eq!(on.bits(), MAX_BITS);
    }
}
