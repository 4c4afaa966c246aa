//! A fixed run of steps whose every output bit is hashed: the same digest natively (x86, ARM)
//! and in a browser's wasm32 is what "every holder computes alike" means. The inputs are drawn
//! by an integer generator (no float library function), and include subnormal gradients,
//! moments that underflow, zeros of both signs and values across the exponent range.

use tessera_step::{adamw, sgd, sum_squares, AdamWConsts, StepScalars};

/// The digest every machine must reach.
pub const DIGEST: u64 = 0x304f_7626_e533_9eea;

/// splitmix64.
struct Bits(u64);

impl Bits {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A finite f32 from raw bits: sign, any exponent from subnormal up to 2^20, any mantissa.
    fn value(&mut self) -> f32 {
        let r = self.next();
        let sign = ((r >> 63) as u32) << 31;
        let exp = ((r >> 32) % 148) as u32; // 0 (subnormal) ..= 147 (2^20)
        let mantissa = (r as u32) & 0x007F_FFFF;
        f32::from_bits(sign | (exp << 23) | mantissa)
    }
}

/// FNV-1a over the bits of `xs`.
fn fold(mut h: u64, xs: &[f32]) -> u64 {
    for x in xs {
        for b in x.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    h
}

/// Runs the fixed steps and hashes every output.
pub fn digest() -> u64 {
    let n = 4096;
    let mut r = Bits(20261207);
    let mut p: Vec<f32> = (0..n).map(|_| r.value()).collect();
    let mut q = p.clone();
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let c = AdamWConsts {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
    };
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for t in 1..=5u32 {
        let g: Vec<f32> = (0..n).map(|_| r.value()).collect();
        // The coordinator's scalars, given as bits (here: fixed ones).
        let s = StepScalars {
            lr: 1e-3 * t as f32,
            decay: 1.0 - 1e-4 * t as f32,
            bias1: [0.1, 0.19, 0.271, 0.3439, 0.40951][t as usize - 1],
            bias2: [0.05, 0.0975, 0.142625, 0.18549375, 0.226_219_06][t as usize - 1],
            clip: 1.0 / (t as f32 + 0.5),
        };
        adamw(&mut p, &g, &mut m, &mut v, &c, &s).expect("a finite step");
        sgd(&mut q, &g, &s).expect("a finite step");
        h = fold(h, &p);
        h = fold(h, &m);
        h = fold(h, &v);
        h = fold(h, &q);
        h ^= sum_squares(&g).expect("finite").to_bits();
    }
    h
}
