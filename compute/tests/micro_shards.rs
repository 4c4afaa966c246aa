#![cfg(not(target_arch = "wasm32"))]
//! Micro-shard composition on a real adapter: a 2-layer model cut into ≥2 attention groups,
//! ≥2 MLP column ranges and ≥2 head vocabulary slices gives the same loss and every gradient as
//! the unsliced model, both match the CPU reference, and lowering the binding limit (so every
//! shard is split into several pieces) changes nothing.

mod common;

use common::{checks, gpu, gpu_with, run_check};
use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::reference::model;
use tessera_compute::reference::ops::{self, AdamW};
use tessera_compute::reference::scalar::convert;
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::shard::{GpuShard, MicroShard, Optimizer, ShardTensors};
use tessera_compute::{ComputeError, Gpu, GpuOptions, ModelConfig};

fn cfg() -> ModelConfig {
    checks::test_config()
}

fn batch(cfg: &ModelConfig, seq: usize, sequences: usize, seed: u64) -> Batch {
    checks::random_batch(cfg, seq, sequences, seed)
}

fn compare(what: &str, got: &ModelParams<f32>, want: &ModelParams<f32>, tol: f64) {
    let worst = checks::compare_models(what, got, want, tol);
    println!("{what}: worst tensor rel err {worst:.2e}");
}

fn run(
    g: &Gpu,
    cfg: &ModelConfig,
    p: &ModelParams<f32>,
    s: Slicing,
    b: &Batch,
) -> (f64, ModelParams<f32>, usize) {
    let m = GpuModel::new(g, cfg, p, s, b.ids.len()).unwrap();
    let loss = pollster::block_on(m.loss_and_grads(g, b)).unwrap();
    let pieces = m.shards().map(|s| s.piece_count()).sum();
    (loss, pollster::block_on(m.read_grads(g)).unwrap(), pieces)
}

#[test]
fn sliced_model_equals_unsliced_and_reference() {
    let cfg = cfg();
    let p: ModelParams<f32> = ModelParams::random(&cfg, 21);
    let b = batch(&cfg, 13, 2, 22);
    let p64: ModelParams<f64> = p.map(convert);
    let (ref_loss, ref_grads) = model::loss_and_grads(&cfg, &p64, &b);
    let ref_grads: ModelParams<f32> = ref_grads.map(convert);

    let g = gpu();
    let (loss_whole, grads_whole, _) = run(&g, &cfg, &p, Slicing::whole(), &b);
    println!("loss: reference {ref_loss:.6} unsliced GPU {loss_whole:.6}");
    assert!((loss_whole - ref_loss).abs() / ref_loss < 1e-5);
    compare(
        "unsliced GPU vs CPU reference",
        &grads_whole,
        &ref_grads,
        1e-4,
    );

    let sliced = Slicing {
        embed: 3,
        attn: 3,
        mlp: 2,
        head: 3,
    };
    let (loss_sliced, grads_sliced, _) = run(&g, &cfg, &p, sliced, &b);
    println!("loss: sliced GPU {loss_sliced:.6}");
    assert!((loss_sliced - loss_whole).abs() / loss_whole < 1e-6);
    compare("sliced vs unsliced GPU", &grads_sliced, &grads_whole, 1e-4);
}

#[test]
fn one_sliced_block_matches_reference() {
    run_check(pollster::block_on(checks::sliced_blocks_match_reference(
        &gpu(),
        1,
    )));
}

#[test]
fn lowered_binding_limit_splits_shards_into_pieces() {
    let cfg = cfg();
    let p: ModelParams<f32> = ModelParams::random(&cfg, 23);
    let b = batch(&cfg, 7, 1, 24);
    let g = gpu();
    let (loss, grads, pieces) = run(&g, &cfg, &p, Slicing::whole(), &b);
    assert_eq!(
        pieces,
        2 + 2 * cfg.num_hidden_layers,
        "one piece per shard under default limits"
    );
    // 1 KiB bindings: a q projection group (16 x 24 floats) still fits, whole tensors do not.
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: 2048,
        max_buffer_size: 2048,
        ..Default::default()
    };
    let small = gpu_with(GpuOptions {
        limits: Some(limits),
        ..Default::default()
    });
    assert_eq!(small.max_binding_bytes(), 2048);
    let (loss_small, grads_small, pieces_small) = run(
        &small,
        &cfg,
        &p,
        Slicing {
            embed: 1,
            attn: 1,
            mlp: 1,
            head: 2,
        },
        &b,
    );
    println!("pieces: {pieces} under default limits, {pieces_small} under 2 KiB bindings");
    assert!(pieces_small >= 3 * pieces, "the chunking path must run");
    assert!((loss_small - loss).abs() / loss < 1e-6);
    compare(
        "2 KiB bindings vs default limits",
        &grads_small,
        &grads,
        1e-5,
    );
    // A tensor that cannot be split small enough is a clear error, not a GPU fault.
    let err = small.upload(&vec![0.0; 1000], &[1000]).unwrap_err();
    assert!(matches!(err, ComputeError::TooLarge { .. }), "{err}");
}

/// Three AdamW steps with global-norm clipping (which bites: the norm is above 0.5). Sliced and
/// unsliced GPU runs agree with each other and with the f64 reference; the global norm counts a
/// replicated norm weight's summed gradient once and every slice applies the clipped sum.
#[test]
fn training_steps_match_unsliced_and_reference_adamw_with_global_clipping() {
    three_clipped_adamw_steps(&cfg(), 2);
}

/// The same with tied embeddings, the head cut differently from the embedding (3 slices and 2,
/// so pieces overlap across boundaries): the matrix's gradient is the sum of its embedding and
/// head parts, counted once by the global norm; the head stays equal to the embedding bit for
/// bit.
#[test]
fn tied_embeddings_train_as_one_matrix() {
    let cfg = ModelConfig {
        tie_word_embeddings: true,
        ..cfg()
    };
    three_clipped_adamw_steps(&cfg, 3);
}

fn three_clipped_adamw_steps(cfg: &ModelConfig, head_slices: usize) {
    let cfg = cfg.clone();
    let tied = cfg.tie_word_embeddings;
    let p: ModelParams<f32> = ModelParams::random(&cfg, 25);
    assert_eq!(p.head == p.embed, tied);
    let h = AdamW {
        lr: 1e-2,
        ..AdamW::default()
    };
    let g = gpu();
    let mut sliced = GpuModel::new(
        &g,
        &cfg,
        &p,
        Slicing {
            embed: 2,
            attn: 2,
            mlp: 2,
            head: head_slices,
        },
        16,
    )
    .unwrap();
    let mut whole = GpuModel::new(&g, &cfg, &p, Slicing::whole(), 16).unwrap();
    let mut q: ModelParams<f64> = p.map(convert);
    let mut m1 = q.zeros_like();
    let mut m2 = q.zeros_like();
    for step in 1..=3u32 {
        let b = batch(&cfg, 8, 2, 30 + step as u64);
        let mut norms = Vec::new();
        let mut losses = Vec::new();
        for m in [&mut sliced, &mut whole] {
            m.zero_grads(&g).unwrap();
            losses.push(pollster::block_on(m.loss_and_grads(&g, &b)).unwrap());
            norms.push(
                pollster::block_on(m.optimizer_step(&g, Optimizer::AdamW(h), step, Some(0.5)))
                    .unwrap()
                    .unwrap(),
            );
        }
        let (ref_loss, mut gr) = model::loss_and_grads(&cfg, &q, &b);
        if tied {
            gr.fold_tied();
        }
        let ref_norm = ops::global_norm(
            &gr.named()
                .iter()
                .map(|(_, v)| v.as_slice())
                .collect::<Vec<_>>(),
        );
        let c = ops::clip_coefficient(ref_norm, 0.5);
        for t in gr.tensors_mut() {
            t.iter_mut().for_each(|x| *x *= c);
        }
        let grads: Vec<Vec<f64>> = gr.named().into_iter().map(|(_, v)| v.clone()).collect();
        for (((pt, gt), mt), vt) in q
            .tensors_mut()
            .into_iter()
            .zip(&grads)
            .zip(m1.tensors_mut())
            .zip(m2.tensors_mut())
        {
            ops::adamw_step(pt, gt, mt, vt, h, step);
        }
        if tied {
            q.tie();
        }
        println!("step {step}: loss sliced {:.6} unsliced {:.6} ref {ref_loss:.6}; grad norm sliced {:.6} unsliced {:.6} ref {ref_norm:.6}", losses[0], losses[1], norms[0], norms[1]);
        assert!((losses[0] - losses[1]).abs() / losses[1] < 1e-6);
        assert!(
            (norms[0] - norms[1]).abs() / norms[1] < 1e-5,
            "global norm counts each replicated norm gradient once"
        );
        assert!((norms[1] - ref_norm).abs() / ref_norm < 1e-4);
        assert!((losses[1] - ref_loss).abs() / ref_loss < 1e-4);
    }
    let got_sliced = pollster::block_on(sliced.read_params(&g)).unwrap();
    let got_whole = pollster::block_on(whole.read_params(&g)).unwrap();
    for got in [&got_sliced, &got_whole] {
        assert_eq!(
            got.head == got.embed,
            tied,
            "a tied head equals the embedding"
        );
    }
    compare(
        "sliced vs unsliced params after 3 steps",
        &got_sliced,
        &got_whole,
        1e-5,
    );
    compare(
        "GPU vs f64 reference params after 3 steps",
        &got_whole,
        &q.map(convert),
        1e-4,
    );
}

#[test]
fn bad_inputs_are_errors() {
    let cfg = cfg();
    let p: ModelParams<f32> = ModelParams::random(&cfg, 26);
    let g = gpu();
    let shard = MicroShard::Embed { rows: 0..10 };
    let s = GpuShard::new(
        &g,
        &cfg,
        &ShardTensors::from_model(&cfg, &p, &shard).unwrap(),
        8,
    )
    .unwrap();
    assert!(matches!(
        s.embed_forward(&g, &[1, 999]),
        Err(ComputeError::TokenOutOfRange { id: 999, .. })
    ));
    assert!(
        s.embed_forward(&g, &[1; 9]).is_err(),
        "more rows than the shard was sized for"
    );
    let bad = MicroShard::Attn {
        layer: 5,
        groups: 0..1,
    };
    assert!(ShardTensors::from_model(&cfg, &p, &bad).is_err());
    let mut t = ShardTensors::from_model(
        &cfg,
        &p,
        &MicroShard::Mlp {
            layer: 0,
            cols: 3..9,
        },
    )
    .unwrap();
    t.tensors[1].data[0] = f32::NAN;
    assert!(
        GpuShard::new(&g, &cfg, &t, 8).is_err(),
        "NaN parameters are refused"
    );
    t.tensors[1].data.pop();
    assert!(
        GpuShard::new(&g, &cfg, &t, 8).is_err(),
        "wrong sizes are refused"
    );
}

/// SGD steps `p -= lr * g` on every slice, and writing parameters back replaces them exactly
/// while the gradients stay.
#[test]
fn sgd_step_and_write_params() {
    let cfg = cfg();
    let p: ModelParams<f32> = ModelParams::random(&cfg, 27);
    let b = batch(&cfg, 6, 2, 28);
    let g = gpu();
    let mut m = GpuModel::new(
        &g,
        &cfg,
        &p,
        Slicing {
            embed: 2,
            attn: 3,
            mlp: 2,
            head: 2,
        },
        12,
    )
    .unwrap();
    pollster::block_on(m.loss_and_grads(&g, &b)).unwrap();
    let grads = pollster::block_on(m.read_grads(&g)).unwrap();
    pollster::block_on(m.optimizer_step(&g, Optimizer::Sgd { lr: 0.5 }, 1, None)).unwrap();
    let got = pollster::block_on(m.read_params(&g)).unwrap();
    let mut want = p.clone();
    for (w, gr) in want.tensors_mut().into_iter().zip(grads.named()) {
        w.iter_mut().zip(gr.1).for_each(|(a, b)| *a -= 0.5 * b);
    }
    compare("SGD step", &got, &want, 1e-6);
    m.write_params(&g, &p).unwrap();
    assert_eq!(pollster::block_on(m.read_params(&g)).unwrap(), p);
}
