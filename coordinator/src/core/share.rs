//! A share of draws as an integer: a draw is a 64-bit number read from a hash, and a share
//! takes the draws below its threshold (out of 2^64). Rates are turned into shares once, by
//! a product with a power of two and a truncation (exact in IEEE arithmetic), and halved by
//! shifts, so every platform, and `tessera verify` replaying a log, makes the same draws bit
//! for bit; no `powf`, whose last bits may differ between platforms, decides who is checked.

/// A share of draws: those below the threshold (out of 2^64), or every one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Share(u64);

impl Share {
    /// Every draw.
    pub const ALL: Share = Share(u64::MAX);
    /// No draw.
    pub const NONE: Share = Share(0);

    /// `rate` (a share in `[0, 1]`) as a share of draws: `rate` times 2^64, truncated; 1 or
    /// more takes every draw, 0 or less (or NaN) none.
    pub fn of(rate: f64) -> Share {
        if rate >= 1.0 {
            Share::ALL
        } else if rate > 0.0 {
            Share((rate * 18_446_744_073_709_551_616.0) as u64)
        } else {
            Share::NONE
        }
    }

    /// The share whose threshold is `bits` (out of 2^64; `u64::MAX` takes every draw).
    pub fn from_bits(bits: u64) -> Share {
        Share(bits)
    }

    /// Its threshold (out of 2^64; `u64::MAX` takes every draw).
    pub fn bits(self) -> u64 {
        self.0
    }

    /// Half the share, `times` times over (a shift: exact).
    pub fn halved(self, times: u64) -> Share {
        Share(
            u32::try_from(times)
                .ok()
                .and_then(|t| self.0.checked_shr(t))
                .unwrap_or(0),
        )
    }

    /// Whether `draw` is in the share.
    pub fn takes(self, draw: u64) -> bool {
        self == Share::ALL || draw < self.0
    }

    /// The share as a rate, for people (never for a draw).
    pub fn rate(self) -> f64 {
        if self == Share::ALL {
            1.0
        } else {
            self.0 as f64 / 18_446_744_073_709_551_616.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_becomes_an_exact_threshold() {
        assert_eq!(Share::of(0.5), Share(1 << 63));
        assert_eq!(Share::of(0.25), Share(1 << 62));
        // 0.1 is the double 0x1.999999999999Ap-4: times 2^64, exactly 0x1999999999999A00.
        assert_eq!(Share::of(0.1), Share(0x1999_9999_9999_9A00));
        assert_eq!(Share::of(1.0), Share::ALL);
        assert_eq!(Share::of(2.0), Share::ALL);
        assert_eq!(Share::of(0.0), Share::NONE);
        assert_eq!(Share::of(-1.0), Share::NONE);
        assert_eq!(Share::of(f64::NAN), Share::NONE);
        assert!((Share::of(0.1).rate() - 0.1).abs() < 1e-15);
    }

    #[test]
    fn halving_is_a_shift_and_ends_at_none() {
        assert_eq!(Share::of(0.5).halved(1), Share::of(0.25));
        assert_eq!(Share::of(0.5).halved(0), Share::of(0.5));
        assert_eq!(Share::ALL.halved(1), Share(u64::MAX >> 1));
        assert_eq!(Share::ALL.halved(64), Share::NONE);
        assert_eq!(Share::ALL.halved(u64::MAX), Share::NONE);
    }

    #[test]
    fn a_share_takes_the_draws_below_it_and_all_takes_every_one() {
        let s = Share::of(0.5);
        assert!(s.takes(0) && s.takes((1 << 63) - 1));
        assert!(!s.takes(1 << 63) && !s.takes(u64::MAX));
        assert!(Share::ALL.takes(u64::MAX));
        assert!(!Share::NONE.takes(0));
    }
}
