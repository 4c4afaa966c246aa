//! GPU checks shared by the native tests and the browser (wasm32) tests: async, so they run
//! under `pollster` natively and on the browser's event loop in Chromium.

#![allow(dead_code)]

use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::reference::model::{self, SplitMix};
use tessera_compute::reference::ops::{self, IGNORE};
use tessera_compute::reference::scalar::convert;
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::{Gpu, ModelConfig};

/// ‖a−b‖/‖b‖ in f64.
pub fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Asserts a relative error within `tol`; returns a line saying it.
pub fn close(name: &str, gpu: &[f32], cpu: &[f32], tol: f64) -> String {
    let e = rel(gpu, cpu);
    assert!(
        e <= tol,
        "{name}: GPU differs from the CPU reference, rel err {e:.3e} > {tol:.0e}"
    );
    format!("{name}: rel err {e:.2e}")
}

/// Per-tensor comparison of two models; returns the worst relative error.
pub fn compare_models(
    what: &str,
    got: &ModelParams<f32>,
    want: &ModelParams<f32>,
    tol: f64,
) -> f64 {
    let mut worst = 0.0f64;
    for ((name, a), (_, b)) in got.named().into_iter().zip(want.named()) {
        let e = rel(a, b);
        worst = worst.max(e);
        assert!(e <= tol, "{what}: {name} rel err {e:.3e} > {tol:.0e}");
    }
    worst
}

/// The test model: 2 layers, 6 query / 3 kv heads of width 8, FFN 40, vocabulary 67.
pub fn test_config() -> ModelConfig {
    ModelConfig {
        num_attention_heads: 6,
        num_key_value_heads: 3,
        head_dim: 8,
        ..ModelConfig::tiny()
    }
}

/// A random causal-LM batch of `sequences` sequences of `seq` tokens.
pub fn random_batch(cfg: &ModelConfig, seq: usize, sequences: usize, seed: u64) -> Batch {
    let mut r = SplitMix(seed);
    let toks: Vec<u32> = (0..seq * sequences)
        .map(|_| (r.next_u64() % cfg.vocab_size as u64) as u32)
        .collect();
    Batch::from_sequences(&toks, seq)
}

/// Forward and backward of full decoder blocks, cut into micro-shards (3 embed slices, 3
/// attention groups, 2 MLP column ranges, 3 head slices), against the f64 CPU reference.
pub async fn sliced_blocks_match_reference(g: &Gpu, layers: usize) -> Vec<String> {
    let cfg = ModelConfig {
        num_hidden_layers: layers,
        ..test_config()
    };
    let p: ModelParams<f32> = ModelParams::random(&cfg, 41);
    let b = random_batch(&cfg, 11, 2, 42);
    let (ref_loss, ref_grads) = model::loss_and_grads(&cfg, &p.map(convert::<f32, f64>), &b);
    let m = GpuModel::new(
        g,
        &cfg,
        &p,
        Slicing {
            embed: 3,
            attn: 3,
            mlp: 2,
            head: 3,
        },
        b.ids.len(),
    )
    .expect("upload");
    let loss = m.loss_and_grads(g, &b).await.expect("forward and backward");
    let grads = m.read_grads(g).await.expect("read gradients");
    assert!(
        (loss - ref_loss).abs() / ref_loss < 1e-5,
        "loss {loss} vs reference {ref_loss}"
    );
    let worst = compare_models(
        "sliced blocks vs reference",
        &grads,
        &ref_grads.map(convert),
        1e-4,
    );
    vec![format!("{layers}-layer sliced model: loss {loss:.6} (reference {ref_loss:.6}), worst gradient rel err {worst:.2e}")]
}

/// The vocab-parallel cross-entropy kernels on odd shapes, chunk by chunk, against the reference.
pub async fn cross_entropy_matches_reference(g: &Gpu) -> Vec<String> {
    let mut r = SplitMix(17);
    let (rows, vocab) = (19, 531);
    let logits: Vec<f32> = r.vec(rows * vocab, 8.0);
    let mut targets: Vec<u32> = (0..rows)
        .map(|_| (r.next_u64() % vocab as u64) as u32)
        .collect();
    targets[4] = IGNORE;
    let want = ops::logit_stats(&logits, &targets, 0, vocab);
    let (lse, _, count) = ops::combine_stats(std::slice::from_ref(&want), &targets);
    let cols = |lo: usize, n: usize| -> Vec<f32> {
        (0..rows)
            .flat_map(|t| logits[t * vocab + lo..t * vocab + lo + n].to_vec())
            .collect()
    };
    let tt = g.upload_u32(&targets).unwrap();
    let stats = g.zeros(&[rows, 4]).unwrap();
    for (i, (lo, n)) in [(0, 200), (200, 331)].into_iter().enumerate() {
        let chunk = g.upload(&cols(lo, n), &[rows, n]).unwrap();
        g.cross_entropy_stats(&chunk, &tt, &stats, rows, n, lo, i > 0)
            .unwrap();
    }
    let st = g.read(&stats).await.unwrap();
    let mut out = Vec::new();
    let gmax: Vec<f32> = (0..rows).map(|i| st[i * 4]).collect();
    let gse: Vec<f32> = (0..rows)
        .map(|i| st[i * 4 + 1] * (st[i * 4] as f64 - want.max[i]).exp() as f32)
        .collect();
    out.push(close(
        "cross-entropy max",
        &gmax,
        &want.max.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        1e-7,
    ));
    out.push(close(
        "cross-entropy sum-exp",
        &gse,
        &want.sum_exp.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        1e-6,
    ));
    for i in 0..rows {
        match want.target_logit[i] {
            Some(t) => assert!(
                st[i * 4 + 3] == 1.0 && (st[i * 4 + 2] as f64 - t).abs() < 1e-6,
                "target logit of row {i}"
            ),
            None => assert_eq!(st[i * 4 + 3], 0.0, "row {i} owns no target"),
        }
    }
    let tl = g
        .upload(&lse.iter().map(|&x| x as f32).collect::<Vec<_>>(), &[rows])
        .unwrap();
    let chunk = g.upload(&logits, &[rows, vocab]).unwrap();
    g.cross_entropy_backward(&chunk, &tt, &tl, rows, vocab, 0, 1.0 / count as f32)
        .unwrap();
    let want_g: Vec<f32> =
        ops::cross_entropy_backward(&logits, &targets, &lse, 1.0 / count as f64, 0, vocab);
    out.push(close(
        "cross-entropy dlogits",
        &g.read(&chunk).await.unwrap(),
        &want_g,
        1e-5,
    ));
    out
}
