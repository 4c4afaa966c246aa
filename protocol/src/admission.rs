//! The admission puzzle: what a contributor proves before the coordinator upgrades its `/ws`
//! request. The coordinator issues a [`Puzzle`] (over HTTP, statelessly: its fields are bound
//! by the coordinator's HMAC tag, so it keeps nothing per puzzle); the contributor finds a
//! nonce such that [`work_hash`] of the puzzle, its own public key and the nonce starts with
//! the puzzle's number of zero bits, and opens `/ws?ticket=` with the [`Ticket`]. The ticket
//! names the key, so it admits that identity's `Hello` only, once.
//!
//! The work is SHA-256 over [`DOMAIN`], the puzzle's bytes, the key and the nonce
//! (little-endian): 116 bytes, two compression blocks, of which the first does not depend on
//! the nonce ([`Solver`] computes it once). Expected tries: `2^bits`.
//!
//! This module draws no randomness and tells no time: the coordinator passes the salt and the
//! expiry in, and checks the tag itself.

use sha2::{Digest, Sha256};

use crate::identity::{hex, unhex, PublicKey};

/// Domain of the work hash.
pub const DOMAIN: &[u8] = b"tessera/admission/1";

/// The most zero bits a puzzle may ask for (beyond that no contributor could solve it).
pub const MAX_BITS: u8 = 40;

/// A puzzle's length in bytes: expiry (8), salt (16), bits (1), tag (32).
pub const PUZZLE_BYTES: usize = 8 + 16 + 1 + 32;

/// A ticket's length in bytes: the puzzle, the key (32) and the nonce (8).
pub const TICKET_BYTES: usize = PUZZLE_BYTES + 32 + 8;

/// A ticket's length as text (hex), which `/ws?ticket=` must have exactly.
pub const TICKET_CHARS: usize = 2 * TICKET_BYTES;

/// A puzzle as the coordinator issues it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Puzzle {
    /// When it expires, in seconds of the issuing coordinator's own clock.
    pub expires: u64,
    /// Random bytes that make it unique.
    pub salt: [u8; 16],
    /// Leading zero bits the work hash must have.
    pub bits: u8,
    /// The coordinator's tag over the fields above (HMAC-SHA-256 under its secret).
    pub tag: [u8; 32],
}

impl Puzzle {
    /// The bytes the coordinator's tag covers: expiry, salt and bits.
    pub fn tagged_bytes(expires: u64, salt: &[u8; 16], bits: u8) -> [u8; 25] {
        let mut b = [0u8; 25];
        b[..8].copy_from_slice(&expires.to_le_bytes());
        b[8..24].copy_from_slice(salt);
        b[24] = bits;
        b
    }

    /// Its bytes: the tagged bytes, then the tag.
    pub fn to_bytes(&self) -> [u8; PUZZLE_BYTES] {
        let mut b = [0u8; PUZZLE_BYTES];
        b[..25].copy_from_slice(&Self::tagged_bytes(self.expires, &self.salt, self.bits));
        b[25..].copy_from_slice(&self.tag);
        b
    }

    /// From its bytes.
    pub fn from_bytes(b: &[u8; PUZZLE_BYTES]) -> Puzzle {
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&b[..8]);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&b[8..24]);
        let mut tag = [0u8; 32];
        tag.copy_from_slice(&b[25..]);
        Puzzle {
            expires: u64::from_le_bytes(expires),
            salt,
            bits: b[24],
            tag,
        }
    }

    /// As hex, as `/api/admission` serves it.
    pub fn to_hex(&self) -> String {
        hex(&self.to_bytes())
    }

    /// From hex.
    pub fn from_hex(s: &str) -> Result<Puzzle, AdmissionError> {
        if s.len() != 2 * PUZZLE_BYTES {
            return Err(AdmissionError::Malformed(format!(
                "a puzzle is {} hex characters, not {}",
                2 * PUZZLE_BYTES,
                s.len().min(99_999)
            )));
        }
        let bytes = unhex(s).map_err(AdmissionError::Malformed)?;
        let mut b = [0u8; PUZZLE_BYTES];
        b.copy_from_slice(&bytes);
        Ok(Puzzle::from_bytes(&b))
    }
}

/// A solved puzzle, for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The puzzle.
    pub puzzle: Puzzle,
    /// The identity it admits.
    pub key: PublicKey,
    /// The nonce that solves it.
    pub nonce: u64,
}

impl Ticket {
    /// As `/ws?ticket=` takes it: [`TICKET_CHARS`] hex characters.
    pub fn to_hex(&self) -> String {
        let mut b = Vec::with_capacity(TICKET_BYTES);
        b.extend_from_slice(&self.puzzle.to_bytes());
        b.extend_from_slice(&self.key.0);
        b.extend_from_slice(&self.nonce.to_le_bytes());
        hex(&b)
    }

    /// From `/ws?ticket=`; anything but exactly [`TICKET_CHARS`] hex characters is refused
    /// before it is decoded.
    pub fn from_hex(s: &str) -> Result<Ticket, AdmissionError> {
        if s.len() != TICKET_CHARS {
            return Err(AdmissionError::Malformed(format!(
                "a ticket is {TICKET_CHARS} hex characters, not {}",
                s.len().min(99_999)
            )));
        }
        let b = unhex(s).map_err(AdmissionError::Malformed)?;
        let mut puzzle = [0u8; PUZZLE_BYTES];
        puzzle.copy_from_slice(&b[..PUZZLE_BYTES]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&b[PUZZLE_BYTES..PUZZLE_BYTES + 32]);
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&b[PUZZLE_BYTES + 32..]);
        Ok(Ticket {
            puzzle: Puzzle::from_bytes(&puzzle),
            key: PublicKey(key),
            nonce: u64::from_le_bytes(nonce),
        })
    }

    /// Whether its work hash has the puzzle's zero bits.
    pub fn is_solved(&self) -> bool {
        leading_zero_bits(&work_hash(&self.puzzle, &self.key, self.nonce))
            >= u32::from(self.puzzle.bits)
    }
}

/// Why a ticket does not admit (the coordinator's refusals; the checks of tag and expiry are
/// its own).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// Not a ticket (wrong length, not hex).
    #[error("not a ticket: {0}")]
    Malformed(String),
    /// No ticket, and this coordinator asks for one.
    #[error("this coordinator admits contributors with a solved puzzle only: GET /api/admission, solve it, and open /ws?ticket=")]
    Missing,
    /// The puzzle's tag is not this coordinator's (forged, altered, or from before a restart).
    #[error("the ticket's puzzle was not issued by this coordinator (or before it restarted): fetch a new one")]
    Forged,
    /// The puzzle expired.
    #[error("the ticket's puzzle expired: fetch a new one")]
    Expired,
    /// The puzzle asks for fewer bits than the coordinator does now.
    #[error("the ticket's puzzle asks for {0} zero bits, fewer than this coordinator's {1}")]
    TooEasy(u8, u8),
    /// The nonce does not solve the puzzle.
    #[error("the ticket's nonce does not solve its puzzle")]
    Unsolved,
    /// The puzzle was used already.
    #[error("the ticket was used already: each puzzle admits one connection")]
    Reused,
    /// The coordinator holds as many used tickets as it keeps; new ones wait until some expire.
    #[error("too many tickets were used in the last minutes; try again shortly")]
    Busy,
}

impl AdmissionError {
    /// A stable code for the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            AdmissionError::Malformed(_) => "malformed_ticket",
            AdmissionError::Missing => "admission_required",
            AdmissionError::Forged => "forged_ticket",
            AdmissionError::Expired => "expired_ticket",
            AdmissionError::TooEasy(..) => "easy_ticket",
            AdmissionError::Unsolved => "unsolved_ticket",
            AdmissionError::Reused => "reused_ticket",
            AdmissionError::Busy => "admission_busy",
        }
    }
}

/// The bytes hashed before the nonce: domain, puzzle, key (108 bytes).
fn prefix(puzzle: &Puzzle, key: &PublicKey) -> Sha256 {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(puzzle.to_bytes());
    h.update(key.0);
    h
}

/// SHA-256 over [`DOMAIN`], the puzzle's bytes, the key and the nonce (little-endian).
pub fn work_hash(puzzle: &Puzzle, key: &PublicKey, nonce: u64) -> [u8; 32] {
    let mut h = prefix(puzzle, key);
    h.update(nonce.to_le_bytes());
    h.finalize().into()
}

/// Leading zero bits of a hash (the first byte's high bit first).
pub fn leading_zero_bits(h: &[u8; 32]) -> u32 {
    let mut n = 0;
    for &b in h {
        if b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// Searches nonces for a puzzle and key, in chunks a caller can interleave with other work
/// (a browser's worker reports progress between them). The first block of the hash is
/// computed once.
pub struct Solver {
    puzzle: Puzzle,
    key: PublicKey,
    prefix: Sha256,
    next: u64,
}

impl Solver {
    /// A search from nonce `start` (a caller may start anywhere; 0 is fine).
    pub fn new(puzzle: Puzzle, key: PublicKey, start: u64) -> Solver {
        Solver {
            prefix: prefix(&puzzle, &key),
            puzzle,
            key,
            next: start,
        }
    }

    /// Tries at most `tries` nonces; the ticket when one solves the puzzle.
    pub fn step(&mut self, tries: u64) -> Option<Ticket> {
        let bits = u32::from(self.puzzle.bits);
        for _ in 0..tries {
            let nonce = self.next;
            self.next = self.next.wrapping_add(1);
            let mut h = self.prefix.clone();
            h.update(nonce.to_le_bytes());
            let hash: [u8; 32] = h.finalize().into();
            if leading_zero_bits(&hash) >= bits {
                return Some(Ticket {
                    puzzle: self.puzzle,
                    key: self.key,
                    nonce,
                });
            }
        }
        None
    }
}

/// Solves a puzzle for `key` (about `2^bits` tries), and the tries it took.
pub fn solve(puzzle: Puzzle, key: PublicKey) -> (Ticket, u64) {
    let mut s = Solver::new(puzzle, key, 0);
    loop {
        if let Some(t) = s.step(1 << 16) {
            return (t, t.nonce + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puzzle(bits: u8) -> Puzzle {
        Puzzle {
            expires: 1234,
            salt: [7; 16],
            bits,
            tag: [9; 32],
        }
    }

    #[test]
    fn zero_bits_are_counted_from_the_first_byte_s_high_bit() {
        let mut h = [0u8; 32];
        assert_eq!(leading_zero_bits(&h), 256);
        h[0] = 0x80;
        assert_eq!(leading_zero_bits(&h), 0);
        h[0] = 0;
        h[1] = 0x10;
        assert_eq!(leading_zero_bits(&h), 11);
    }

    #[test]
    fn a_solved_ticket_round_trips_and_checks_and_any_change_breaks_it() {
        let key = PublicKey([3; 32]);
        let (t, tries) = solve(puzzle(12), key);
        assert!(t.is_solved());
        assert_eq!(tries, t.nonce + 1);
        let text = t.to_hex();
        assert_eq!(text.len(), TICKET_CHARS);
        assert_eq!(Ticket::from_hex(&text).unwrap(), t);
        // The midstate solver agrees with the plain hash.
        assert!(leading_zero_bits(&work_hash(&t.puzzle, &key, t.nonce)) >= 12);
        // Another key, another puzzle or a harder one: the nonce no longer solves it (the
        // chance that it still does is 2^-12 each; these seeds are fixed).
        let other = Ticket {
            key: PublicKey([4; 32]),
            ..t
        };
        let salted = Ticket {
            puzzle: Puzzle {
                salt: [8; 16],
                ..t.puzzle
            },
            ..t
        };
        let harder = Ticket {
            puzzle: Puzzle {
                bits: 40,
                ..t.puzzle
            },
            ..t
        };
        assert!(!other.is_solved() && !salted.is_solved() && !harder.is_solved());
    }

    #[test]
    fn texts_that_are_not_tickets_are_refused_by_their_length_first() {
        let t = Ticket {
            puzzle: puzzle(1),
            key: PublicKey([1; 32]),
            nonce: 5,
        };
        let text = t.to_hex();
        for bad in [
            String::new(),
            text[1..].to_string(),
            format!("{text}00"),
            "x".repeat(1 << 20),
        ] {
            let e = Ticket::from_hex(&bad).unwrap_err();
            assert!(matches!(e, AdmissionError::Malformed(_)), "{e}");
            assert!(e.to_string().len() < 200);
        }
        let not_hex = format!("zz{}", &text[2..]);
        assert!(matches!(
            Ticket::from_hex(&not_hex),
            Err(AdmissionError::Malformed(_))
        ));
        assert_eq!(Puzzle::from_hex(&t.puzzle.to_hex()).unwrap(), t.puzzle);
    }

    #[test]
    fn solving_takes_about_two_to_the_bits_tries() {
        // Over 64 puzzles of 8 bits the mean number of tries is near 256 (a geometric mean
        // of 256 has a standard error of 32 here; the bound is five of those).
        let total: u64 = (0..64u8)
            .map(|i| {
                let p = Puzzle {
                    salt: [i; 16],
                    ..puzzle(8)
                };
                solve(p, PublicKey([i; 32])).1
            })
            .sum();
        let mean = total as f64 / 64.0;
        assert!((96.0..416.0).contains(&mean), "mean tries {mean}");
    }
}
