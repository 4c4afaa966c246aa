//! Bit streams for packed updates: a writer and a bounded reader (least significant bit of each
//! byte first), and Rice codes of the gaps between ascending positions.

/// Bits appended to a byte vector, least significant bit of each byte first.
#[derive(Default)]
pub(crate) struct BitWriter {
    bytes: Vec<u8>,
    used: u32,
}

impl BitWriter {
    /// The low `n` bits of `v` (`n` at most 32).
    pub(crate) fn put(&mut self, v: u32, n: u32) {
        for i in 0..n {
            self.bit(v >> i & 1 == 1);
        }
    }

    fn bit(&mut self, b: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if b {
            *self.bytes.last_mut().expect("pushed above") |= 1 << self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    /// `v` Rice-coded with parameter `b`: `v >> b` ones, a zero, then the low `b` bits.
    pub(crate) fn rice(&mut self, v: u32, b: u32) {
        for _ in 0..v >> b {
            self.bit(true);
        }
        self.bit(false);
        self.put(v, b);
    }

    /// The bytes, the last padded with zeros.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Why a bit stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BitError {
    /// It ended early.
    Short,
    /// A Rice code's quotient went past the largest value possible there.
    TooLarge,
    /// Bits were left over, or the padding was not zeros.
    Trailing,
}

impl std::fmt::Display for BitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BitError::Short => "the packed positions end early",
            BitError::TooLarge => "a packed position gap runs past its chunk",
            BitError::Trailing => "bytes or non-zero padding after the packed positions",
        })
    }
}

/// A reader over packed bits; every read is bounded by the bytes it was given.
pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, at: 0 }
    }

    fn bit(&mut self) -> Result<bool, BitError> {
        let byte = self.bytes.get(self.at / 8).ok_or(BitError::Short)?;
        let b = byte >> (self.at % 8) & 1 == 1;
        self.at += 1;
        Ok(b)
    }

    /// `n` bits (at most 32) as a number.
    pub(crate) fn get(&mut self, n: u32) -> Result<u32, BitError> {
        let mut v = 0u32;
        for i in 0..n {
            v |= u32::from(self.bit()?) << i;
        }
        Ok(v)
    }

    /// A Rice-coded value with parameter `b`, refused above `max`: the unary quotient is read
    /// only as far as `max` allows.
    pub(crate) fn rice(&mut self, b: u32, max: u32) -> Result<u32, BitError> {
        let mut q = 0u32;
        while self.bit()? {
            q += 1;
            if q > max >> b {
                return Err(BitError::TooLarge);
            }
        }
        let v = (q << b) | self.get(b)?;
        if v > max {
            return Err(BitError::TooLarge);
        }
        Ok(v)
    }

    /// Checks that only zero padding (less than a byte) is left.
    pub(crate) fn end(self) -> Result<(), BitError> {
        if self.bytes.len() != self.at.div_ceil(8) {
            return Err(BitError::Trailing);
        }
        match self.at % 8 {
            0 => Ok(()),
            used if self.bytes[self.at / 8] >> used != 0 => Err(BitError::Trailing),
            _ => Ok(()),
        }
    }
}

/// The Rice parameter for `kept` ascending positions among `len`: `floor(log2(len / kept))`
/// (the mean gap's binary order; within a bit of the best parameter for gaps of that mean).
pub(crate) fn rice_parameter(len: usize, kept: usize) -> u32 {
    match len / kept.max(1) {
        0 => 0,
        m => m.ilog2(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_rice_codes_read_back() {
        let mut w = BitWriter::default();
        w.put(5, 3);
        w.rice(0, 6);
        w.rice(200, 6);
        w.put(0xdead_beef, 32);
        w.rice(3, 0);
        let bytes = w.finish();
        // 3 + 7 + (3 + 1 + 6) + 32 + 4 bits.
        assert_eq!(bytes.len(), 7);
        let mut r = BitReader::new(&bytes);
        assert_eq!(r.get(3), Ok(5));
        assert_eq!(r.rice(6, 4095), Ok(0));
        assert_eq!(r.rice(6, 4095), Ok(200));
        assert_eq!(r.get(32), Ok(0xdead_beef));
        assert_eq!(r.rice(0, 10), Ok(3));
        assert_eq!(r.end(), Ok(()));
    }

    #[test]
    fn malformed_streams_are_refused() {
        let mut w = BitWriter::default();
        w.rice(200, 6);
        let bytes = w.finish();
        // A bound below the value, a stream cut short, a byte too many, non-zero padding.
        assert_eq!(BitReader::new(&bytes).rice(6, 100), Err(BitError::TooLarge));
        assert_eq!(BitReader::new(&bytes).rice(6, 199), Err(BitError::TooLarge));
        assert_eq!(
            BitReader::new(&bytes[..1]).rice(6, 4095),
            Err(BitError::Short)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        let mut r = BitReader::new(&longer);
        assert_eq!(r.rice(6, 4095), Ok(200));
        assert_eq!(r.end(), Err(BitError::Trailing));
        let mut dirty = bytes.clone();
        *dirty.last_mut().unwrap() |= 0x80;
        let mut r = BitReader::new(&dirty);
        assert_eq!(r.rice(6, 4095), Ok(200));
        assert_eq!(r.end(), Err(BitError::Trailing));
        // Ones without end stop at the bound, not at the end of the bytes.
        let ones = vec![0xff; 1 << 16];
        assert_eq!(BitReader::new(&ones).rice(0, 10), Err(BitError::TooLarge));
    }

    #[test]
    fn the_rice_parameter_follows_the_mean_gap() {
        assert_eq!(rice_parameter(4096, 64), 6);
        assert_eq!(rice_parameter(3072, 64), 5);
        assert_eq!(rice_parameter(64, 64), 0);
        assert_eq!(rice_parameter(10, 64), 0);
        assert_eq!(rice_parameter(65536, 1), 16);
    }
}
