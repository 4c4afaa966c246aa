//! The whole model on the CPU: parameters in Hugging Face layout, loss, and gradients by
//! hand-written backpropagation through the ops of [`super::ops`].

use super::ops::{self, AttnShape, IGNORE};
use super::scalar::Float;
use crate::config::ModelConfig;
use crate::rope_table::RopeTable;

/// One decoder layer's parameters, Hugging Face names and layouts (`[out, in]` weights).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams<F> {
    /// `input_layernorm.weight` `[d]`.
    pub input_norm: Vec<F>,
    /// `self_attn.q_proj.weight` `[heads*hd, d]`.
    pub q: Vec<F>,
    /// `self_attn.k_proj.weight` `[kv*hd, d]`.
    pub k: Vec<F>,
    /// `self_attn.v_proj.weight` `[kv*hd, d]`.
    pub v: Vec<F>,
    /// `self_attn.o_proj.weight` `[d, heads*hd]`.
    pub o: Vec<F>,
    /// `post_attention_layernorm.weight` `[d]`.
    pub post_norm: Vec<F>,
    /// `mlp.gate_proj.weight` `[ffn, d]`.
    pub gate: Vec<F>,
    /// `mlp.up_proj.weight` `[ffn, d]`.
    pub up: Vec<F>,
    /// `mlp.down_proj.weight` `[d, ffn]`.
    pub down: Vec<F>,
}

/// Every parameter of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelParams<F> {
    /// `model.embed_tokens.weight` `[vocab, d]`.
    pub embed: Vec<F>,
    /// Decoder layers.
    pub layers: Vec<LayerParams<F>>,
    /// `model.norm.weight` `[d]`.
    pub final_norm: Vec<F>,
    /// `lm_head.weight` `[vocab, d]`.
    pub head: Vec<F>,
}

/// Gradients have the parameters' shape.
pub type ModelGrads<F> = ModelParams<F>;

/// A micro-batch: `ids` and `targets` of `n * seq` tokens (targets may be [`IGNORE`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Input token ids.
    pub ids: Vec<u32>,
    /// Next-token targets.
    pub targets: Vec<u32>,
    /// Tokens per sequence.
    pub seq: usize,
}

impl Batch {
    /// Causal-LM batch from whole sequences of `seq` tokens: each position predicts the next, the
    /// last position of each sequence predicts nothing (Hugging Face's label shift).
    pub fn from_sequences(tokens: &[u32], seq: usize) -> Self {
        let mut targets = Vec::with_capacity(tokens.len());
        for s in tokens.chunks(seq) {
            targets.extend_from_slice(&s[1..]);
            targets.push(IGNORE);
        }
        Batch {
            ids: tokens.to_vec(),
            targets,
            seq,
        }
    }

    /// Batch from rows of `seq + 1` tokens each (a sample of the data stream): the first `seq`
    /// are the inputs, each predicting the token after it.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = &'a [u32]>, seq: usize) -> Self {
        let (mut ids, mut targets) = (Vec::new(), Vec::new());
        for row in rows {
            ids.extend_from_slice(&row[..seq]);
            targets.extend_from_slice(&row[1..]);
        }
        Batch { ids, targets, seq }
    }

    /// Tokens that contribute to the loss.
    pub fn counted(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }
}

/// A deterministic pseudo-random generator (splitmix64) for reproducible test weights.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[-1, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    /// `n` values uniform in `[-scale, scale)`.
    pub fn vec<F: Float>(&mut self, n: usize, scale: f64) -> Vec<F> {
        (0..n)
            .map(|_| F::from_f64(self.uniform() * scale))
            .collect()
    }
}

impl<F: Float> ModelParams<F> {
    /// Random parameters (uniform, scaled by fan-in; norm weights near one).
    pub fn random(cfg: &ModelConfig, seed: u64) -> Self {
        let mut r = SplitMix(seed);
        let d = cfg.hidden_size;
        let s = 1.0 / (d as f64).sqrt();
        let norm = |r: &mut SplitMix| -> Vec<F> {
            (0..d)
                .map(|_| F::from_f64(1.0 + 0.1 * r.uniform()))
                .collect()
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| LayerParams {
                input_norm: norm(&mut r),
                q: r.vec(cfg.q_width() * d, s),
                k: r.vec(cfg.kv_width() * d, s),
                v: r.vec(cfg.kv_width() * d, s),
                o: r.vec(d * cfg.q_width(), 1.0 / (cfg.q_width() as f64).sqrt()),
                post_norm: norm(&mut r),
                gate: r.vec(cfg.intermediate_size * d, s),
                up: r.vec(cfg.intermediate_size * d, s),
                down: r.vec(
                    d * cfg.intermediate_size,
                    1.0 / (cfg.intermediate_size as f64).sqrt(),
                ),
            })
            .collect();
        // A tied matrix serves as the head too: drawn at the head's scale.
        let embed = r.vec(
            cfg.vocab_size * d,
            if cfg.tie_word_embeddings { s } else { 1.0 },
        );
        let mut p = ModelParams {
            embed,
            layers,
            final_norm: norm(&mut r),
            head: r.vec(cfg.vocab_size * d, s),
        };
        if cfg.tie_word_embeddings {
            p.tie();
        }
        p
    }

    /// Makes the head the embedding again (a model with tied embeddings after anything that
    /// may have moved the two copies apart).
    pub fn tie(&mut self) {
        self.head.clone_from(&self.embed);
    }

    /// Turns gradients of a model with tied embeddings into those of its one matrix: the head's
    /// part is added to the embedding's and the head's is zeroed, so a global norm counts the
    /// matrix once. After the step, [`ModelParams::tie`] copies the matrix back to the head.
    pub fn fold_tied(&mut self) {
        for (e, h) in self.embed.iter_mut().zip(self.head.iter_mut()) {
            *e += *h;
            *h = F::zero();
        }
    }

    /// All-zero parameters of the model's shape (a gradient accumulator).
    pub fn zeros(cfg: &ModelConfig) -> Self {
        let d = cfg.hidden_size;
        let z = |n: usize| vec![F::zero(); n];
        ModelParams {
            embed: z(cfg.vocab_size * d),
            layers: (0..cfg.num_hidden_layers)
                .map(|_| LayerParams {
                    input_norm: z(d),
                    q: z(cfg.q_width() * d),
                    k: z(cfg.kv_width() * d),
                    v: z(cfg.kv_width() * d),
                    o: z(d * cfg.q_width()),
                    post_norm: z(d),
                    gate: z(cfg.intermediate_size * d),
                    up: z(cfg.intermediate_size * d),
                    down: z(d * cfg.intermediate_size),
                })
                .collect(),
            final_norm: z(d),
            head: z(cfg.vocab_size * d),
        }
    }

    /// Zeros of the same shape (a gradient accumulator).
    pub fn zeros_like(&self) -> Self {
        self.map(|v| vec![F::zero(); v.len()])
    }

    /// Applies `f` to every tensor.
    pub fn map<G>(&self, mut f: impl FnMut(&[F]) -> Vec<G>) -> ModelParams<G> {
        ModelParams {
            embed: f(&self.embed),
            layers: self
                .layers
                .iter()
                .map(|l| LayerParams {
                    input_norm: f(&l.input_norm),
                    q: f(&l.q),
                    k: f(&l.k),
                    v: f(&l.v),
                    o: f(&l.o),
                    post_norm: f(&l.post_norm),
                    gate: f(&l.gate),
                    up: f(&l.up),
                    down: f(&l.down),
                })
                .collect(),
            final_norm: f(&self.final_norm),
            head: f(&self.head),
        }
    }

    /// Every tensor with its Hugging Face name, in a fixed order.
    pub fn named(&self) -> Vec<(String, &Vec<F>)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed)];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), &l.input_norm));
            out.push((format!("{p}.self_attn.q_proj.weight"), &l.q));
            out.push((format!("{p}.self_attn.k_proj.weight"), &l.k));
            out.push((format!("{p}.self_attn.v_proj.weight"), &l.v));
            out.push((format!("{p}.self_attn.o_proj.weight"), &l.o));
            out.push((format!("{p}.post_attention_layernorm.weight"), &l.post_norm));
            out.push((format!("{p}.mlp.gate_proj.weight"), &l.gate));
            out.push((format!("{p}.mlp.up_proj.weight"), &l.up));
            out.push((format!("{p}.mlp.down_proj.weight"), &l.down));
        }
        out.push(("model.norm.weight".to_string(), &self.final_norm));
        out.push(("lm_head.weight".to_string(), &self.head));
        out
    }

    /// Mutable access to every tensor, same order as [`Self::named`].
    pub fn tensors_mut(&mut self) -> Vec<&mut Vec<F>> {
        let mut out = vec![&mut self.embed];
        for l in &mut self.layers {
            out.extend([
                &mut l.input_norm,
                &mut l.q,
                &mut l.k,
                &mut l.v,
                &mut l.o,
                &mut l.post_norm,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ]);
        }
        out.push(&mut self.final_norm);
        out.push(&mut self.head);
        out
    }
}

/// What the forward keeps for the backward of one layer.
struct LayerCache<F> {
    h_in: Vec<F>,
    xn: Vec<F>,
    rstd1: Vec<F>,
    q: Vec<F>,
    k: Vec<F>,
    v: Vec<F>,
    att: Vec<F>,
    lse: Vec<F>,
    h_mid: Vec<F>,
    xn2: Vec<F>,
    rstd2: Vec<F>,
    g: Vec<F>,
    u: Vec<F>,
    act: Vec<F>,
}

/// Forward of the whole model: returns the logits `[rows, vocab]`.
pub fn logits<F: Float>(cfg: &ModelConfig, p: &ModelParams<F>, ids: &[u32], seq: usize) -> Vec<F> {
    let (h, _) = trunk(cfg, p, ids, seq);
    let d = cfg.hidden_size;
    let (xn, _) = ops::rmsnorm(&h, &p.final_norm, d, cfg.rms_norm_eps);
    ops::matmul_nt(&xn, &p.head, ids.len(), cfg.vocab_size, d)
}

fn trunk<F: Float>(
    cfg: &ModelConfig,
    p: &ModelParams<F>,
    ids: &[u32],
    seq: usize,
) -> (Vec<F>, Vec<LayerCache<F>>) {
    let d = cfg.hidden_size;
    let rows = ids.len();
    let table = RopeTable::new(seq, cfg.head_dim, cfg.rope_theta);
    let shape = AttnShape {
        seq,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
    };
    let mut h = ops::embedding(&p.embed, 0, ids, d);
    let mut caches = Vec::new();
    for l in &p.layers {
        let (xn, rstd1) = ops::rmsnorm(&h, &l.input_norm, d, cfg.rms_norm_eps);
        let q = ops::rope(
            &ops::matmul_nt(&xn, &l.q, rows, cfg.q_width(), d),
            shape.heads,
            shape.head_dim,
            seq,
            &table,
            false,
        );
        let k = ops::rope(
            &ops::matmul_nt(&xn, &l.k, rows, cfg.kv_width(), d),
            shape.kv_heads,
            shape.head_dim,
            seq,
            &table,
            false,
        );
        let v = ops::matmul_nt(&xn, &l.v, rows, cfg.kv_width(), d);
        let (att, lse) = ops::attention(&q, &k, &v, shape);
        let delta = ops::matmul_nt(&att, &l.o, rows, d, cfg.q_width());
        let h_mid: Vec<F> = h.iter().zip(&delta).map(|(a, b)| *a + *b).collect();
        let (xn2, rstd2) = ops::rmsnorm(&h_mid, &l.post_norm, d, cfg.rms_norm_eps);
        let g = ops::matmul_nt(&xn2, &l.gate, rows, cfg.intermediate_size, d);
        let u = ops::matmul_nt(&xn2, &l.up, rows, cfg.intermediate_size, d);
        let act = ops::swiglu(&g, &u);
        let delta2 = ops::matmul_nt(&act, &l.down, rows, d, cfg.intermediate_size);
        let h_out: Vec<F> = h_mid.iter().zip(&delta2).map(|(a, b)| *a + *b).collect();
        caches.push(LayerCache {
            h_in: std::mem::replace(&mut h, h_out),
            xn,
            rstd1,
            q,
            k,
            v,
            att,
            lse,
            h_mid,
            xn2,
            rstd2,
            g,
            u,
            act,
        });
    }
    (h, caches)
}

/// Mean next-token cross-entropy of the batch.
pub fn loss<F: Float>(cfg: &ModelConfig, p: &ModelParams<F>, b: &Batch) -> f64 {
    let lg = logits(cfg, p, &b.ids, b.seq);
    let st = ops::logit_stats(&lg, &b.targets, 0, cfg.vocab_size);
    ops::combine_stats(&[st], &b.targets).1
}

/// Loss and the gradient of every parameter.
pub fn loss_and_grads<F: Float>(
    cfg: &ModelConfig,
    p: &ModelParams<F>,
    b: &Batch,
) -> (f64, ModelGrads<F>) {
    let d = cfg.hidden_size;
    let rows = b.ids.len();
    let seq = b.seq;
    let (h, caches) = trunk(cfg, p, &b.ids, seq);
    let (xn, rstd) = ops::rmsnorm(&h, &p.final_norm, d, cfg.rms_norm_eps);
    let lg = ops::matmul_nt(&xn, &p.head, rows, cfg.vocab_size, d);
    let st = ops::logit_stats(&lg, &b.targets, 0, cfg.vocab_size);
    let (lse, loss, count) = ops::combine_stats(&[st], &b.targets);
    let inv = if count > 0 { 1.0 / count as f64 } else { 0.0 };
    let dlg = ops::cross_entropy_backward(&lg, &b.targets, &lse, inv, 0, cfg.vocab_size);
    let mut gr = p.zeros_like();
    gr.head = ops::matmul_tn(&dlg, &xn, cfg.vocab_size, d, rows);
    let dxn = ops::matmul_nn(&dlg, &p.head, rows, d, cfg.vocab_size);
    let (mut dh, dnorm) = ops::rmsnorm_backward(&h, &p.final_norm, &rstd, &dxn, d);
    gr.final_norm = dnorm;
    let table = RopeTable::new(seq, cfg.head_dim, cfg.rope_theta);
    let shape = AttnShape {
        seq,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
    };
    for (li, c) in caches.iter().enumerate().rev() {
        let l = &p.layers[li];
        let g = &mut gr.layers[li];
        // MLP.
        let ffn = cfg.intermediate_size;
        g.down = ops::matmul_tn(&dh, &c.act, d, ffn, rows);
        let dact = ops::matmul_nn(&dh, &l.down, rows, ffn, d);
        let (dg, du) = ops::swiglu_backward(&c.g, &c.u, &dact);
        g.gate = ops::matmul_tn(&dg, &c.xn2, ffn, d, rows);
        g.up = ops::matmul_tn(&du, &c.xn2, ffn, d, rows);
        let mut dxn2 = ops::matmul_nn(&dg, &l.gate, rows, d, ffn);
        for (a, b) in dxn2
            .iter_mut()
            .zip(ops::matmul_nn(&du, &l.up, rows, d, ffn))
        {
            *a += b;
        }
        let (dmid, dpost) = ops::rmsnorm_backward(&c.h_mid, &l.post_norm, &c.rstd2, &dxn2, d);
        g.post_norm = dpost;
        for (a, b) in dh.iter_mut().zip(dmid) {
            *a += b;
        }
        // Attention.
        let qw = cfg.q_width();
        let kw = cfg.kv_width();
        g.o = ops::matmul_tn(&dh, &c.att, d, qw, rows);
        let datt = ops::matmul_nn(&dh, &l.o, rows, qw, d);
        let (dq, dk, dv) = ops::attention_backward(&c.q, &c.k, &c.v, &c.att, &c.lse, &datt, shape);
        let dq = ops::rope(&dq, shape.heads, shape.head_dim, seq, &table, true);
        let dk = ops::rope(&dk, shape.kv_heads, shape.head_dim, seq, &table, true);
        g.q = ops::matmul_tn(&dq, &c.xn, qw, d, rows);
        g.k = ops::matmul_tn(&dk, &c.xn, kw, d, rows);
        g.v = ops::matmul_tn(&dv, &c.xn, kw, d, rows);
        let mut dxn = ops::matmul_nn(&dq, &l.q, rows, d, qw);
        for part in [
            ops::matmul_nn(&dk, &l.k, rows, d, kw),
            ops::matmul_nn(&dv, &l.v, rows, d, kw),
        ] {
            for (a, b) in dxn.iter_mut().zip(part) {
                *a += b;
            }
        }
        let (din, dnorm) = ops::rmsnorm_backward(&c.h_in, &l.input_norm, &c.rstd1, &dxn, d);
        g.input_norm = dnorm;
        for (a, b) in dh.iter_mut().zip(din) {
            *a += b;
        }
    }
    gr.embed = ops::embedding_backward(&b.ids, &dh, 0, cfg.vocab_size, d);
    (loss, gr)
}
