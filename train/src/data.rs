//! Deterministic assignment of training samples: a token stream is cut into non-overlapping
//! samples of `seq + 1` tokens; each epoch visits them in a seeded permutation, and the n-th
//! sample drawn by the run (counted across rounds, replicas, inner steps and micro-batches) is a
//! pure function of the seed and n. Anyone can recompute which data any unit trained on.

use tessera_compute::reference::model::SplitMix;

/// The built-in corpus: original prose shipped with the binary, so demos need no download.
pub const BUILT_IN_CORPUS: &str = include_str!("../corpus/built-in.txt");

/// The byte-level tokenizer: a text's UTF-8 bytes are its token ids (vocabulary 256).
pub fn byte_tokens(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Samples of a token stream in a seeded order.
#[derive(Clone, Debug)]
pub struct Sampler {
    seed: u64,
    seq: usize,
    samples: usize,
    epoch: u64,
    perm: Vec<u32>,
}

impl Sampler {
    /// How many samples of `seq + 1` tokens (each starting `seq` after the last) a stream of
    /// `tokens` tokens holds.
    pub fn count(tokens: usize, seq: usize) -> usize {
        tokens.saturating_sub(1).checked_div(seq).unwrap_or(0)
    }

    /// Samples of `seq + 1` tokens from a stream of `tokens` tokens.
    pub fn new(seed: u64, tokens: usize, seq: usize) -> Self {
        let samples = Self::count(tokens, seq);
        let mut s = Sampler {
            seed,
            seq,
            samples,
            epoch: u64::MAX,
            perm: Vec::new(),
        };
        s.load(0);
        s
    }

    /// How many distinct samples there are.
    pub fn len(&self) -> usize {
        self.samples
    }

    /// True when the stream is too short for one sample.
    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    fn load(&mut self, epoch: u64) {
        if self.epoch == epoch {
            return;
        }
        let mut r = SplitMix(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.perm = (0..self.samples as u32).collect();
        for i in (1..self.samples).rev() {
            let j = (r.next_u64() % (i as u64 + 1)) as usize;
            self.perm.swap(i, j);
        }
        self.epoch = epoch;
    }

    /// Which sample the n-th draw of the run is.
    pub fn sample(&mut self, n: u64) -> usize {
        if self.samples == 0 {
            return 0;
        }
        self.load(n / self.samples as u64);
        self.perm[(n % self.samples as u64) as usize] as usize
    }

    /// The token range `[start, start + seq + 1)` of sample `s`: inputs are its first `seq`
    /// tokens, targets its last `seq`.
    pub fn span(&self, s: usize) -> std::ops::Range<usize> {
        s * self.seq..s * self.seq + self.seq + 1
    }
}

/// The draw index of micro-batch `b` of inner step `h` of replica slot `replica` in `round`.
pub fn draw_index(
    round: u64,
    replica: u64,
    replicas: u64,
    step: u64,
    steps: u64,
    batch: u64,
    batches: u64,
) -> u64 {
    ((round * replicas + replica) * steps + step) * batches + batch
}
