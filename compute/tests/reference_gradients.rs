#![cfg(not(target_arch = "wasm32"))]
//! Finite-difference checks of every backward of the f64 CPU reference, op by op and for the
//! whole model. Shapes are small and odd so nothing lines up by accident.

use tessera_compute::reference::model::{self, SplitMix};
use tessera_compute::reference::ops::{self, AttnShape, IGNORE};
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::rope_table::RopeTable;
use tessera_compute::ModelConfig;

const H: f64 = 1e-6;

/// Relative error ‖a−b‖/‖b‖.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Central finite differences of `f` at `x`.
fn numeric(f: &dyn Fn(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + H;
            let up = f(&x);
            x[i] = orig - H;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * H)
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn check(name: &str, analytic: &[f64], f: &dyn Fn(&[f64]) -> f64, x: &[f64]) {
    let num = numeric(f, x);
    let e = rel(analytic, &num);
    println!("{name}: finite-difference rel err {e:.2e}");
    assert!(
        e < 1e-6,
        "{name}: analytic gradient differs from finite differences (rel {e:.3e})"
    );
}

#[test]
fn matmul_gradients() {
    let mut r = SplitMix(1);
    let (m, n, k) = (3, 5, 4);
    let a: Vec<f64> = r.vec(m * k, 1.0);
    let b: Vec<f64> = r.vec(n * k, 1.0);
    let w: Vec<f64> = r.vec(m * n, 1.0);
    // y = a b^T; dA = w b (nn); dB = w^T a (tn)
    let da = ops::matmul_nn(&w, &b, m, k, n);
    let db = ops::matmul_tn(&w, &a, n, k, m);
    check(
        "matmul dA",
        &da,
        &|x| dot(&ops::matmul_nt(x, &b, m, n, k), &w),
        &a,
    );
    check(
        "matmul dB",
        &db,
        &|x| dot(&ops::matmul_nt(&a, x, m, n, k), &w),
        &b,
    );
}

#[test]
fn rmsnorm_gradients() {
    let mut r = SplitMix(2);
    let d = 7;
    let x: Vec<f64> = r.vec(3 * d, 2.0);
    let g: Vec<f64> = r.vec(d, 1.0);
    let w: Vec<f64> = r.vec(3 * d, 1.0);
    let (_, rstd) = ops::rmsnorm(&x, &g, d, 1e-5);
    let (dx, dg) = ops::rmsnorm_backward(&x, &g, &rstd, &w, d);
    check(
        "rmsnorm dx",
        &dx,
        &|v| dot(&ops::rmsnorm(v, &g, d, 1e-5).0, &w),
        &x,
    );
    check(
        "rmsnorm dw",
        &dg,
        &|v| dot(&ops::rmsnorm(&x, v, d, 1e-5).0, &w),
        &g,
    );
}

#[test]
fn rope_gradient() {
    let mut r = SplitMix(3);
    let (heads, hd, seq) = (3, 6, 5);
    let table = RopeTable::new(seq, hd, 10000.0);
    let x: Vec<f64> = r.vec(2 * seq * heads * hd, 1.0);
    let w: Vec<f64> = r.vec(x.len(), 1.0);
    let dx = ops::rope(&w, heads, hd, seq, &table, true);
    check(
        "rope dx",
        &dx,
        &|v| dot(&ops::rope(v, heads, hd, seq, &table, false), &w),
        &x,
    );
}

#[test]
fn attention_gradients() {
    let mut r = SplitMix(4);
    let s = AttnShape {
        seq: 5,
        heads: 4,
        kv_heads: 2,
        head_dim: 3,
    };
    let rows = 2 * s.seq;
    let q: Vec<f64> = r.vec(rows * s.heads * s.head_dim, 1.5);
    let k: Vec<f64> = r.vec(rows * s.kv_heads * s.head_dim, 1.5);
    let v: Vec<f64> = r.vec(rows * s.kv_heads * s.head_dim, 1.5);
    let w: Vec<f64> = r.vec(q.len(), 1.0);
    let (o, lse) = ops::attention(&q, &k, &v, s);
    let (dq, dk, dv) = ops::attention_backward(&q, &k, &v, &o, &lse, &w, s);
    check(
        "attention dq",
        &dq,
        &|x| dot(&ops::attention(x, &k, &v, s).0, &w),
        &q,
    );
    check(
        "attention dk",
        &dk,
        &|x| dot(&ops::attention(&q, x, &v, s).0, &w),
        &k,
    );
    check(
        "attention dv",
        &dv,
        &|x| dot(&ops::attention(&q, &k, x, s).0, &w),
        &v,
    );
}

#[test]
fn swiglu_gradients() {
    let mut r = SplitMix(5);
    let g: Vec<f64> = r.vec(11, 3.0);
    let u: Vec<f64> = r.vec(11, 3.0);
    let w: Vec<f64> = r.vec(11, 1.0);
    let (dg, du) = ops::swiglu_backward(&g, &u, &w);
    check("swiglu dg", &dg, &|x| dot(&ops::swiglu(x, &u), &w), &g);
    check("swiglu du", &du, &|x| dot(&ops::swiglu(&g, x), &w), &u);
}

#[test]
fn embedding_gradient() {
    let mut r = SplitMix(6);
    let (lo, n, d) = (3, 5, 4);
    let table: Vec<f64> = r.vec(n * d, 1.0);
    let ids = [0u32, 3, 4, 4, 7, 9, 3];
    let w: Vec<f64> = r.vec(ids.len() * d, 1.0);
    let dt = ops::embedding_backward(&ids, &w, lo, n, d);
    check(
        "embedding dtable",
        &dt,
        &|x| dot(&ops::embedding(x, lo, &ids, d), &w),
        &table,
    );
}

#[test]
fn cross_entropy_gradient_over_vocab_slices() {
    let mut r = SplitMix(7);
    let (rows, vocab) = (4, 9);
    let logits: Vec<f64> = r.vec(rows * vocab, 3.0);
    let targets = [2u32, 8, IGNORE, 5];
    // The loss from two slices (columns 0..4 and 4..9) equals the loss from the whole.
    let slice = |lg: &[f64], lo: usize, n: usize| -> Vec<f64> {
        (0..rows)
            .flat_map(|t| lg[t * vocab + lo..t * vocab + lo + n].to_vec())
            .collect()
    };
    let loss_of = |lg: &[f64]| {
        let a = ops::logit_stats(&slice(lg, 0, 4), &targets, 0, 4);
        let b = ops::logit_stats(&slice(lg, 4, 5), &targets, 4, 5);
        ops::combine_stats(&[a, b], &targets)
    };
    let (lse, loss, count) = loss_of(&logits);
    let whole = ops::combine_stats(&[ops::logit_stats(&logits, &targets, 0, vocab)], &targets);
    assert!((whole.1 - loss).abs() < 1e-12 && count == 3);
    let g = ops::cross_entropy_backward(&logits, &targets, &lse, 1.0 / count as f64, 0, vocab);
    check("cross-entropy dlogits", &g, &|x| loss_of(x).1, &logits);
}

#[test]
fn whole_model_gradients() {
    let cfg = ModelConfig {
        vocab_size: 11,
        hidden_size: 6,
        intermediate_size: 5,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 2,
        ..ModelConfig::tiny()
    };
    let p: ModelParams<f64> = ModelParams::random(&cfg, 8);
    let batch = Batch::from_sequences(&[1, 4, 9, 10, 0, 3, 3, 7], 4);
    let (loss, grads) = model::loss_and_grads(&cfg, &p, &batch);
    assert!((loss - model::loss(&cfg, &p, &batch)).abs() < 1e-12);
    let names: Vec<String> = p.named().into_iter().map(|(n, _)| n).collect();
    let analytic: Vec<Vec<f64>> = grads.named().into_iter().map(|(_, v)| v.clone()).collect();
    for (i, name) in names.iter().enumerate() {
        let f = |x: &[f64]| {
            let mut q = p.clone();
            *q.tensors_mut()[i] = x.to_vec();
            model::loss(&cfg, &q, &batch)
        };
        let x = p.named()[i].1.clone();
        check(name, &analytic[i], &f, &x);
    }
}

#[test]
fn adamw_matches_pytorch_formula_and_clip() {
    let h = ops::AdamW {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.5,
    };
    let mut p = vec![1.0f64];
    let (mut m, mut v) = (vec![0.0], vec![0.0]);
    ops::adamw_step(&mut p, &[2.0], &mut m, &mut v, h, 1);
    // Step 1: m_hat = g, v_hat = g^2 → update = lr * sign(g); decay first: 1 - 0.05.
    assert!((p[0] - (0.95 - 0.1 * 2.0 / (2.0 + 1e-8))).abs() < 1e-12);
    assert!((ops::global_norm::<f64>(&[&[3.0], &[4.0]]) - 5.0).abs() < 1e-12);
    assert!((ops::clip_coefficient(5.0, 1.0) - 1.0 / (5.0 + 1e-6)).abs() < 1e-15);
    assert_eq!(ops::clip_coefficient(0.5, 1.0), 1.0);
}
