//! Forward and backward of every op of the model on the CPU, row-major slices throughout.
//! These are the oracle the GPU kernels are tested against.

use super::scalar::Float;
use crate::rope_table::RopeTable;

/// Target id meaning "no loss at this position".
pub const IGNORE: u32 = u32::MAX;

/// `C[m,n] = sum_k A[m,k] B[n,k]` (A times B transposed: a linear layer with HF weight layout).
pub fn matmul_nt<F: Float>(a: &[F], b: &[F], m: usize, n: usize, k: usize) -> Vec<F> {
    let mut c = vec![F::zero(); m * n];
    for i in 0..m {
        let ar = &a[i * k..(i + 1) * k];
        for j in 0..n {
            let br = &b[j * k..(j + 1) * k];
            let mut s = F::zero();
            for t in 0..k {
                s += ar[t] * br[t];
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// `C[m,n] = sum_k A[m,k] B[k,n]`.
pub fn matmul_nn<F: Float>(a: &[F], b: &[F], m: usize, n: usize, k: usize) -> Vec<F> {
    let mut c = vec![F::zero(); m * n];
    for i in 0..m {
        for t in 0..k {
            let av = a[i * k + t];
            for j in 0..n {
                c[i * n + j] += av * b[t * n + j];
            }
        }
    }
    c
}

/// `C[m,n] = sum_k A[k,m] B[k,n]` (A transposed: a weight gradient).
pub fn matmul_tn<F: Float>(a: &[F], b: &[F], m: usize, n: usize, k: usize) -> Vec<F> {
    let mut c = vec![F::zero(); m * n];
    for t in 0..k {
        for i in 0..m {
            let av = a[t * m + i];
            for j in 0..n {
                c[i * n + j] += av * b[t * n + j];
            }
        }
    }
    c
}

/// RMSNorm forward: `y = x * rstd * w` per row; returns `(y, rstd)`.
pub fn rmsnorm<F: Float>(x: &[F], w: &[F], d: usize, eps: f64) -> (Vec<F>, Vec<F>) {
    let rows = x.len() / d;
    let mut y = vec![F::zero(); x.len()];
    let mut rstd = vec![F::zero(); rows];
    for r in 0..rows {
        let xr = &x[r * d..(r + 1) * d];
        let mut ss = F::zero();
        for v in xr {
            ss += *v * *v;
        }
        let rs = F::one() / (ss / F::from_f64(d as f64) + F::from_f64(eps)).sqrt();
        rstd[r] = rs;
        for c in 0..d {
            y[r * d + c] = xr[c] * rs * w[c];
        }
    }
    (y, rstd)
}

/// RMSNorm backward: returns `(dx, dw)`.
pub fn rmsnorm_backward<F: Float>(
    x: &[F],
    w: &[F],
    rstd: &[F],
    dy: &[F],
    d: usize,
) -> (Vec<F>, Vec<F>) {
    let rows = x.len() / d;
    let mut dx = vec![F::zero(); x.len()];
    let mut dw = vec![F::zero(); d];
    for r in 0..rows {
        let rs = rstd[r];
        let mut dot = F::zero();
        for c in 0..d {
            dot += dy[r * d + c] * w[c] * x[r * d + c];
            dw[c] += dy[r * d + c] * x[r * d + c] * rs;
        }
        let coef = dot * rs * rs * rs / F::from_f64(d as f64);
        for c in 0..d {
            dx[r * d + c] = rs * w[c] * dy[r * d + c] - x[r * d + c] * coef;
        }
    }
    (dx, dw)
}

/// RoPE in Hugging Face's rotate-half layout on `[rows, heads * head_dim]`, position
/// `row % seq`. `inverse` rotates the other way, which is the backward.
pub fn rope<F: Float>(
    x: &[F],
    heads: usize,
    head_dim: usize,
    seq: usize,
    table: &RopeTable,
    inverse: bool,
) -> Vec<F> {
    let width = heads * head_dim;
    let half = head_dim / 2;
    let mut y = x.to_vec();
    for (r, row) in y.chunks_mut(width).enumerate() {
        let pos = r % seq;
        for h in 0..heads {
            for i in 0..half {
                let c = F::from_f64(table.cos[pos * half + i] as f64);
                let mut s = F::from_f64(table.sin[pos * half + i] as f64);
                if inverse {
                    s = -s;
                }
                let a = x[r * width + h * head_dim + i];
                let b = x[r * width + h * head_dim + i + half];
                row[h * head_dim + i] = a * c - b * s;
                row[h * head_dim + i + half] = b * c + a * s;
            }
        }
    }
    y
}

/// Shape of a causal grouped-query attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Tokens per sequence.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl AttnShape {
    fn scale<F: Float>(&self) -> F {
        F::from_f64(1.0 / (self.head_dim as f64).sqrt())
    }
}

/// Causal GQA attention forward. `q: [rows, heads*hd]`, `k, v: [rows, kv_heads*hd]`, rows a
/// multiple of `seq`. Returns `(o, lse)` with `lse: [rows, heads]`.
pub fn attention<F: Float>(q: &[F], k: &[F], v: &[F], s: AttnShape) -> (Vec<F>, Vec<F>) {
    let (hd, qw, kw) = (s.head_dim, s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let rows = q.len() / qw;
    let group = s.heads / s.kv_heads;
    let scale: F = s.scale();
    let mut o = vec![F::zero(); q.len()];
    let mut lse = vec![F::zero(); rows * s.heads];
    let mut scores = vec![F::zero(); s.seq];
    for r in 0..rows {
        let base = r - r % s.seq;
        let t = r % s.seq;
        for h in 0..s.heads {
            let kh = h / group;
            let qr = &q[r * qw + h * hd..r * qw + (h + 1) * hd];
            let mut m = F::from_f64(f64::NEG_INFINITY);
            for j in 0..=t {
                let kr = &k[(base + j) * kw + kh * hd..(base + j) * kw + (kh + 1) * hd];
                let mut dot = F::zero();
                for c in 0..hd {
                    dot += qr[c] * kr[c];
                }
                scores[j] = dot * scale;
                m = m.max(scores[j]);
            }
            let mut l = F::zero();
            for sc in scores.iter_mut().take(t + 1) {
                *sc = (*sc - m).exp();
                l += *sc;
            }
            for j in 0..=t {
                let p = scores[j] / l;
                for c in 0..hd {
                    o[r * qw + h * hd + c] += p * v[(base + j) * kw + kh * hd + c];
                }
            }
            lse[r * s.heads + h] = m + l.ln();
        }
    }
    (o, lse)
}

/// Causal GQA attention backward from the forward's `o` and `lse`. Returns `(dq, dk, dv)`.
pub fn attention_backward<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    o: &[F],
    lse: &[F],
    d_o: &[F],
    s: AttnShape,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let (hd, qw, kw) = (s.head_dim, s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let rows = q.len() / qw;
    let group = s.heads / s.kv_heads;
    let scale: F = s.scale();
    let mut dq = vec![F::zero(); q.len()];
    let mut dk = vec![F::zero(); k.len()];
    let mut dv = vec![F::zero(); v.len()];
    for r in 0..rows {
        let base = r - r % s.seq;
        let t = r % s.seq;
        for h in 0..s.heads {
            let kh = h / group;
            let qo = r * qw + h * hd;
            let mut delta = F::zero();
            for c in 0..hd {
                delta += d_o[qo + c] * o[qo + c];
            }
            let l = lse[r * s.heads + h];
            for j in 0..=t {
                let ko = (base + j) * kw + kh * hd;
                let mut dot = F::zero();
                let mut dp = F::zero();
                for c in 0..hd {
                    dot += q[qo + c] * k[ko + c];
                    dp += d_o[qo + c] * v[ko + c];
                }
                let p = (dot * scale - l).exp();
                let ds = p * (dp - delta) * scale;
                for c in 0..hd {
                    dv[ko + c] += p * d_o[qo + c];
                    dq[qo + c] += ds * k[ko + c];
                    dk[ko + c] += ds * q[qo + c];
                }
            }
        }
    }
    (dq, dk, dv)
}

/// `silu(x) = x * sigmoid(x)`.
pub fn silu<F: Float>(x: F) -> F {
    x / (F::one() + (-x).exp())
}

/// SwiGLU forward: `silu(g) * u`.
pub fn swiglu<F: Float>(g: &[F], u: &[F]) -> Vec<F> {
    g.iter().zip(u).map(|(&g, &u)| silu(g) * u).collect()
}

/// SwiGLU backward: returns `(dg, du)`.
pub fn swiglu_backward<F: Float>(g: &[F], u: &[F], dh: &[F]) -> (Vec<F>, Vec<F>) {
    let mut dg = Vec::with_capacity(g.len());
    let mut du = Vec::with_capacity(g.len());
    for i in 0..g.len() {
        let sig = F::one() / (F::one() + (-g[i]).exp());
        du.push(dh[i] * g[i] * sig);
        dg.push(dh[i] * u[i] * sig * (F::one() + g[i] * (F::one() - sig)));
    }
    (dg, du)
}

/// Embedding gather from the table slice holding vocabulary rows `lo..lo+n`: ids outside the
/// slice give zero rows, so summing every slice's output gives the full embedding.
pub fn embedding<F: Float>(table: &[F], lo: usize, ids: &[u32], d: usize) -> Vec<F> {
    let n = table.len() / d;
    let mut out = vec![F::zero(); ids.len() * d];
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id >= lo && id < lo + n {
            out[t * d..(t + 1) * d].copy_from_slice(&table[(id - lo) * d..(id - lo + 1) * d]);
        }
    }
    out
}

/// Embedding backward: scatter-add of `dy` rows into the slice's `n` rows.
pub fn embedding_backward<F: Float>(
    ids: &[u32],
    dy: &[F],
    lo: usize,
    n: usize,
    d: usize,
) -> Vec<F> {
    let mut dt = vec![F::zero(); n * d];
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id >= lo && id < lo + n {
            for c in 0..d {
                dt[(id - lo) * d + c] += dy[t * d + c];
            }
        }
    }
    dt
}

/// Per-token statistics of one vocabulary slice of the logits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceStats {
    /// Max logit of the slice per token.
    pub max: Vec<f64>,
    /// `sum exp(logit - max)` over the slice per token.
    pub sum_exp: Vec<f64>,
    /// The target's logit where this slice owns the target, else `None`.
    pub target_logit: Vec<Option<f64>>,
}

/// Pass 1 of the vocab-parallel cross-entropy over logits `[rows, n]` holding vocabulary
/// columns `lo..lo+n`.
pub fn logit_stats<F: Float>(logits: &[F], targets: &[u32], lo: usize, n: usize) -> SliceStats {
    let rows = targets.len();
    let mut st = SliceStats::default();
    for r in 0..rows {
        let row = &logits[r * n..(r + 1) * n];
        let m = row
            .iter()
            .fold(F::from_f64(f64::NEG_INFINITY), |a, &b| a.max(b));
        let s = row.iter().fold(F::zero(), |a, &b| a + (b - m).exp());
        st.max.push(m.to_f64());
        st.sum_exp.push(s.to_f64());
        let t = targets[r] as usize;
        st.target_logit
            .push(if targets[r] != IGNORE && t >= lo && t < lo + n {
                Some(row[t - lo].to_f64())
            } else {
                None
            });
    }
    st
}

/// Pass 2: combines every slice's statistics into per-token log-sum-exp and the mean loss over
/// the tokens whose target is not [`IGNORE`]. Returns `(lse, loss, counted tokens)`.
pub fn combine_stats(slices: &[SliceStats], targets: &[u32]) -> (Vec<f64>, f64, usize) {
    let rows = targets.len();
    let mut lse = vec![0.0; rows];
    let mut total = 0.0;
    let mut count = 0;
    for r in 0..rows {
        let m = slices
            .iter()
            .map(|s| s.max[r])
            .fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = slices
            .iter()
            .map(|s| s.sum_exp[r] * (s.max[r] - m).exp())
            .sum();
        lse[r] = m + s.ln();
        if targets[r] != IGNORE {
            if let Some(tl) = slices.iter().find_map(|s| s.target_logit[r]) {
                total += lse[r] - tl;
                count += 1;
            }
        }
    }
    let loss = if count > 0 { total / count as f64 } else { 0.0 };
    (lse, loss, count)
}

/// Pass 3: gradient of the mean loss with respect to a slice's logits.
pub fn cross_entropy_backward<F: Float>(
    logits: &[F],
    targets: &[u32],
    lse: &[f64],
    inv_count: f64,
    lo: usize,
    n: usize,
) -> Vec<F> {
    let mut g = vec![F::zero(); logits.len()];
    for (r, &t) in targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        for c in 0..n {
            let p = (logits[r * n + c] - F::from_f64(lse[r])).exp();
            let hot = if t as usize == lo + c {
                F::one()
            } else {
                F::zero()
            };
            g[r * n + c] = (p - hot) * F::from_f64(inv_count);
        }
    }
    g
}

/// AdamW hyperparameters (decoupled weight decay, PyTorch semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// One AdamW step at 1-based `step` on parameter `p` with gradient `g`.
pub fn adamw_step<F: Float>(p: &mut [F], g: &[F], m: &mut [F], v: &mut [F], h: AdamW, step: u32) {
    let bc1 = 1.0 - h.beta1.powi(step as i32);
    let bc2 = 1.0 - h.beta2.powi(step as i32);
    let f = F::from_f64;
    for i in 0..p.len() {
        p[i] *= f(1.0 - h.lr * h.weight_decay);
        m[i] = f(h.beta1) * m[i] + f(1.0 - h.beta1) * g[i];
        v[i] = f(h.beta2) * v[i] + f(1.0 - h.beta2) * g[i] * g[i];
        let mh = m[i] / f(bc1);
        let vh = v[i] / f(bc2);
        p[i] -= f(h.lr) * mh / (vh.sqrt() + f(h.eps));
    }
}

/// Global L2 norm over several gradient tensors, summed in f64.
pub fn global_norm<F: Float>(grads: &[&[F]]) -> f64 {
    grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|x| x.to_f64() * x.to_f64())
        .sum::<f64>()
        .sqrt()
}

/// The factor PyTorch's `clip_grad_norm_` multiplies gradients by.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}
