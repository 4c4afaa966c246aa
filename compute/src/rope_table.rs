//! The RoPE cos/sin table, computed on the host as Hugging Face computes it (f32 inverse
//! frequencies, f32 angle products), so every adapter uses the same angles.

/// Cosines and sines, each `[seq, head_dim / 2]` row-major.
#[derive(Clone, Debug)]
pub struct RopeTable {
    /// cos(position * inv_freq[i]).
    pub cos: Vec<f32>,
    /// sin(position * inv_freq[i]).
    pub sin: Vec<f32>,
    /// Half the head width.
    pub half: usize,
}

impl RopeTable {
    /// Builds the table for positions `0..seq`.
    pub fn new(seq: usize, head_dim: usize, theta: f64) -> Self {
        let half = head_dim / 2;
        // HF: inv_freq = 1 / (base ** (arange(0, dim, 2).float() / dim)), in f32.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let expo = (2 * i) as f32 / head_dim as f32;
                let pow = (theta as f32 as f64).powf(expo as f64) as f32;
                1.0f32 / pow
            })
            .collect();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in 0..seq {
            for f in &inv_freq {
                let angle = (p as f32) * f;
                cos.push((angle as f64).cos() as f32);
                sin.push((angle as f64).sin() as f32);
            }
        }
        RopeTable { cos, sin, half }
    }
}
