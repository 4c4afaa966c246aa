#![cfg(not(target_arch = "wasm32"))]
//! Every kernel on a real wgpu adapter (lavapipe without a GPU) against the CPU reference, on
//! shapes that are not multiples of the tile sizes, under the WebGPU default limits.

mod common;

use common::{checks, close, gpu, gpu_with, read, run_check};
use tessera_compute::kernels::attention::AttnDims;
use tessera_compute::kernels::attention_cached::CachedDims;
use tessera_compute::kernels::embedding::RowIndex;
use tessera_compute::kernels::rope::GpuRope;
use tessera_compute::kernels::{Layout, View};
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ops::{self, AttnShape};
use tessera_compute::rope_table::RopeTable;
use tessera_compute::{GpuOptions, MatmulTiles, Tiles};

/// Opens the GPU with the given matmul kernel and tiles.
fn gpu_matmul(t: MatmulTiles) -> tessera_compute::Gpu {
    gpu_with(GpuOptions {
        tiles: Some(Tiles {
            matmul: t,
            ..Tiles::default()
        }),
        ..Default::default()
    })
}

#[test]
fn matmul_three_layouts_odd_shapes() {
    // Both kernels, and a non-square shared tiling, whatever the adapter would pick.
    let odd = MatmulTiles {
        bm: 32,
        bn: 16,
        bk: 8,
        tm: 2,
        tn: 4,
        ..MatmulTiles::SHARED
    };
    for t in [
        MatmulTiles::SHARED,
        MatmulTiles::DIRECT,
        MatmulTiles::VEC4,
        odd,
    ] {
        println!("tiles {t:?}");
        matmul_case(&gpu_matmul(t));
    }
}

fn matmul_case(g: &tessera_compute::Gpu) {
    let mut r = SplitMix(10);
    // Odd shapes, and shapes whose dimensions are multiples of 4 (the vec4 kernel's path).
    for &(m, n, k) in &[
        (1, 1, 1),
        (67, 45, 93),
        (130, 7, 65),
        (5, 129, 200),
        (68, 44, 36),
        (12, 20, 8),
    ] {
        let a: Vec<f32> = r.vec(m * k, 1.0);
        let bt: Vec<f32> = r.vec(n * k, 1.0);
        let bn: Vec<f32> = r.vec(k * n, 1.0);
        let at: Vec<f32> = r.vec(k * m, 1.0);
        let ta = g.upload(&a, &[m, k]).unwrap();
        let tbt = g.upload(&bt, &[n, k]).unwrap();
        let tbn = g.upload(&bn, &[k, n]).unwrap();
        let tat = g.upload(&at, &[k, m]).unwrap();
        let c = g.zeros(&[m, n]).unwrap();
        g.matmul(Layout::NT, &ta, &tbt, &c, m, n, k, false).unwrap();
        close(
            &format!("matmul NT {m}x{n}x{k}"),
            &read(g, &c),
            &ops::matmul_nt(&a, &bt, m, n, k),
            1e-5,
        );
        g.matmul(Layout::NN, &ta, &tbn, &c, m, n, k, false).unwrap();
        close(
            &format!("matmul NN {m}x{n}x{k}"),
            &read(g, &c),
            &ops::matmul_nn(&a, &bn, m, n, k),
            1e-5,
        );
        g.matmul(Layout::TN, &tat, &tbn, &c, m, n, k, false)
            .unwrap();
        let want = ops::matmul_tn(&at, &bn, m, n, k);
        close(&format!("matmul TN {m}x{n}x{k}"), &read(g, &c), &want, 1e-5);
        // Accumulate adds onto what is there.
        g.matmul(Layout::TN, &tat, &tbn, &c, m, n, k, true).unwrap();
        let twice: Vec<f32> = want.iter().map(|x| 2.0 * x).collect();
        close("matmul accumulate", &read(g, &c), &twice, 1e-5);
    }
}

#[test]
fn matmul_on_strided_views() {
    // C[:, c0..c0+n] of a wider matrix = A[:, a0..a0+k] * B^T: unaligned, and aligned to 4 so
    // the vec4 kernel reads the view.
    for t in [MatmulTiles::SHARED, MatmulTiles::VEC4] {
        let g = gpu_matmul(t);
        strided_case(&g, 9, 5, 6, (11, 2), (13, 3));
        strided_case(&g, 9, 5, 8, (12, 4), (13, 3));
    }
}

fn strided_case(
    g: &tessera_compute::Gpu,
    m: usize,
    n: usize,
    k: usize,
    (aw, a0): (usize, usize),
    (cw, c0): (usize, usize),
) {
    let mut r = SplitMix(11);
    let a: Vec<f32> = r.vec(m * aw, 1.0);
    let b: Vec<f32> = r.vec(n * k, 1.0);
    let ta = g.upload(&a, &[m, aw]).unwrap();
    let tb = g.upload(&b, &[n, k]).unwrap();
    let tc = g.zeros(&[m, cw]).unwrap();
    g.matmul_view(
        Layout::NT,
        View::cols(&ta, aw, a0),
        View::full(&tb, k),
        View::cols(&tc, cw, c0),
        m,
        n,
        k,
        0.5,
        false,
    )
    .unwrap();
    let asub: Vec<f32> = (0..m)
        .flat_map(|i| a[i * aw + a0..i * aw + a0 + k].to_vec())
        .collect();
    let want = ops::matmul_nt(&asub, &b, m, n, k);
    let got = read(g, &tc);
    let gsub: Vec<f32> = (0..m)
        .flat_map(|i| got[i * cw + c0..i * cw + c0 + n].to_vec())
        .collect();
    close(
        &format!("matmul view A[:, {a0}..] of width {aw}"),
        &gsub,
        &want.iter().map(|x| 0.5 * x).collect::<Vec<_>>(),
        1e-5,
    );
    assert!(
        (0..m).all(|i| got[i * cw..i * cw + c0].iter().all(|&x| x == 0.0)),
        "columns outside the view stay untouched"
    );
    // A view running past the tensor is an error, not a GPU fault.
    assert!(g
        .matmul_view(
            Layout::NT,
            View::cols(&ta, aw, aw - k + 1),
            View::full(&tb, k),
            View::full(&tc, cw),
            m,
            n,
            k,
            1.0,
            false
        )
        .is_err());
}

#[test]
fn rmsnorm_forward_and_backward() {
    let g = gpu();
    let mut r = SplitMix(12);
    let (rows, d) = (13, 300);
    let x: Vec<f32> = r.vec(rows * d, 2.0);
    let w: Vec<f32> = r.vec(d, 1.0);
    let dy: Vec<f32> = r.vec(rows * d, 1.0);
    let (y, rstd) = ops::rmsnorm(&x, &w, d, 1e-5);
    let (dx, dw) = ops::rmsnorm_backward(&x, &w, &rstd, &dy, d);
    let (tx, tw, tdy) = (
        g.upload(&x, &[rows, d]).unwrap(),
        g.upload(&w, &[d]).unwrap(),
        g.upload(&dy, &[rows, d]).unwrap(),
    );
    let (ty, tr, tdx, tdw) = (
        g.zeros(&[rows, d]).unwrap(),
        g.zeros(&[rows]).unwrap(),
        g.zeros(&[rows, d]).unwrap(),
        g.zeros(&[d]).unwrap(),
    );
    g.rmsnorm(&tx, &tw, &ty, &tr, rows, d, 1e-5).unwrap();
    close("rmsnorm y", &read(&g, &ty), &y, 1e-6);
    close("rmsnorm rstd", &read(&g, &tr), &rstd, 1e-6);
    g.rmsnorm_backward(&tx, &tw, &tr, &tdy, &tdx, rows, d, false)
        .unwrap();
    g.rmsnorm_weight_grad(&tx, &tr, &tdy, &tdw, rows, d, false)
        .unwrap();
    close("rmsnorm dx", &read(&g, &tdx), &dx, 1e-5);
    close("rmsnorm dw", &read(&g, &tdw), &dw, 1e-5);
}

#[test]
fn rope_forward_and_inverse() {
    let g = gpu();
    let mut r = SplitMix(13);
    let (heads, hd, seq) = (3, 10, 37);
    let rows = 2 * seq;
    let table = RopeTable::new(seq, hd, 500000.0);
    let x: Vec<f32> = r.vec(rows * heads * hd, 1.0);
    let t = g.upload(&x, &[rows, heads * hd]).unwrap();
    let gt = GpuRope::new(&g, &table).unwrap();
    g.rope(&t, &gt, rows, heads, hd, seq, false).unwrap();
    close(
        "rope forward",
        &read(&g, &t),
        &ops::rope(&x, heads, hd, seq, &table, false),
        1e-6,
    );
    g.rope(&t, &gt, rows, heads, hd, seq, true).unwrap();
    close("rope inverse restores", &read(&g, &t), &x, 1e-6);
    // Rows after an offset (a generation's new rows) get the offset's positions.
    let (off, n) = (30, 5);
    let w = heads * hd;
    let full = ops::rope(&x[..seq * w], heads, hd, seq, &table, false);
    let t = g.upload(&x[off * w..(off + n) * w], &[n, w]).unwrap();
    g.rope_at(&t, &gt, n, heads, hd, n, off, false).unwrap();
    close(
        "rope at an offset",
        &read(&g, &t),
        &full[off * w..(off + n) * w],
        1e-6,
    );
    assert!(g
        .rope_at(&t, &gt, n, heads, hd, n, seq - n + 1, false)
        .is_err());
}

/// New queries at positions `past..past + n` against a cache of `past + n` keys equal the last
/// `n` rows of full causal attention.
fn attention_cached_case(past: usize, n: usize, heads: usize, kv_heads: usize, hd: usize) {
    let g = gpu();
    let mut r = SplitMix(40 + past as u64);
    let seq = past + n;
    let s = AttnShape {
        seq,
        heads,
        kv_heads,
        head_dim: hd,
    };
    let (qw, kw) = (heads * hd, kv_heads * hd);
    let q: Vec<f32> = r.vec(seq * qw, 1.5);
    let k: Vec<f32> = r.vec(seq * kw, 1.5);
    let v: Vec<f32> = r.vec(seq * kw, 1.0);
    let (o, _) = ops::attention(&q, &k, &v, s);
    // A cache longer than what is written: rows past the end must not be read.
    let mut kc = k.clone();
    let mut vc = v.clone();
    kc.extend(std::iter::repeat_n(1e30f32, 3 * kw));
    vc.extend(std::iter::repeat_n(1e30f32, 3 * kw));
    let up = |x: &[f32]| g.upload(x, &[x.len()]).unwrap();
    let (tq, tk, tv) = (up(&q[past * qw..]), up(&kc), up(&vc));
    let to = g.zeros(&[n * qw]).unwrap();
    let dims = CachedDims {
        n,
        past,
        heads,
        kv_heads,
        hd,
    };
    g.attention_cached(&tq, &tk, &tv, &to, dims).unwrap();
    let tag = format!("past {past} n {n} heads {heads}/{kv_heads} hd {hd}");
    close(
        &format!("cached attention ({tag})"),
        &read(&g, &to),
        &o[past * qw..],
        1e-5,
    );
}

#[test]
fn attention_cached_prefill_and_single_tokens() {
    attention_cached_case(0, 37, 4, 2, 6);
    attention_cached_case(36, 1, 4, 2, 6);
    attention_cached_case(130, 1, 2, 1, 64);
    attention_cached_case(129, 3, 3, 1, 130);
}

fn attention_case(seq: usize, sequences: usize, heads: usize, kv_heads: usize, hd: usize) {
    let g = gpu();
    let mut r = SplitMix(14 + seq as u64);
    let rows = seq * sequences;
    let s = AttnShape {
        seq,
        heads,
        kv_heads,
        head_dim: hd,
    };
    let q: Vec<f32> = r.vec(rows * heads * hd, 1.5);
    let k: Vec<f32> = r.vec(rows * kv_heads * hd, 1.5);
    let v: Vec<f32> = r.vec(rows * kv_heads * hd, 1.0);
    let d_o: Vec<f32> = r.vec(rows * heads * hd, 1.0);
    let (o, lse) = ops::attention(&q, &k, &v, s);
    let (dq, dk, dv) = ops::attention_backward(&q, &k, &v, &o, &lse, &d_o, s);
    let up = |x: &[f32]| g.upload(x, &[x.len()]).unwrap();
    let (tq, tk, tv, tdo) = (up(&q), up(&k), up(&v), up(&d_o));
    let z = |n: usize| g.zeros(&[n]).unwrap();
    let (to, tl, td, tdq, tdk, tdv) = (
        z(q.len()),
        z(rows * heads),
        z(rows * heads),
        z(q.len()),
        z(k.len()),
        z(v.len()),
    );
    let dims = AttnDims {
        seq,
        sequences,
        heads,
        kv_heads,
        hd,
    };
    g.attention(&tq, &tk, &tv, &to, &tl, dims).unwrap();
    let tag = format!("seq {seq} x{sequences} heads {heads}/{kv_heads} hd {hd}");
    close(&format!("attention o ({tag})"), &read(&g, &to), &o, 1e-5);
    close(
        &format!("attention lse ({tag})"),
        &read(&g, &tl),
        &lse,
        1e-6,
    );
    g.attention_backward(&tq, &tk, &tv, &to, &tl, &tdo, &td, &tdq, &tdk, &tdv, dims)
        .unwrap();
    close(&format!("attention dq ({tag})"), &read(&g, &tdq), &dq, 1e-5);
    close(&format!("attention dk ({tag})"), &read(&g, &tdk), &dk, 1e-5);
    close(&format!("attention dv ({tag})"), &read(&g, &tdv), &dv, 1e-5);
}

#[test]
fn attention_small_odd() {
    attention_case(37, 2, 4, 2, 6);
}

#[test]
fn attention_longer_than_tiles_wide_heads() {
    attention_case(150, 1, 2, 1, 64);
}

#[test]
fn attention_multi_query() {
    attention_case(70, 1, 3, 1, 8);
}

#[test]
fn swiglu_forward_and_backward() {
    let g = gpu();
    let mut r = SplitMix(15);
    let n = 1001;
    let (a, b, dh): (Vec<f32>, Vec<f32>, Vec<f32>) = (r.vec(n, 6.0), r.vec(n, 3.0), r.vec(n, 1.0));
    let (dg, du) = ops::swiglu_backward(&a, &b, &dh);
    let (ta, tb, tdh) = (
        g.upload(&a, &[n]).unwrap(),
        g.upload(&b, &[n]).unwrap(),
        g.upload(&dh, &[n]).unwrap(),
    );
    let (th, tdg, tdu) = (
        g.zeros(&[n]).unwrap(),
        g.zeros(&[n]).unwrap(),
        g.zeros(&[n]).unwrap(),
    );
    g.swiglu(&ta, &tb, &th, n).unwrap();
    close("swiglu h", &read(&g, &th), &ops::swiglu(&a, &b), 1e-6);
    g.swiglu_backward(&ta, &tb, &tdh, &tdg, &tdu, n).unwrap();
    close("swiglu dg", &read(&g, &tdg), &dg, 1e-6);
    close("swiglu du", &read(&g, &tdu), &du, 1e-6);
}

#[test]
fn embedding_gather_and_scatter() {
    let g = gpu();
    let mut r = SplitMix(16);
    let (lo, n, d) = (5, 9, 7);
    let ids: Vec<u32> = (0..41).map(|_| (r.next_u64() % 20) as u32).collect();
    let table: Vec<f32> = r.vec(n * d, 1.0);
    let dy: Vec<f32> = r.vec(ids.len() * d, 1.0);
    let tids = g.upload_u32(&ids).unwrap();
    let tt = g.upload(&table, &[n, d]).unwrap();
    let out = g.zeros(&[ids.len(), d]).unwrap();
    g.embedding(&tids, &tt, &out, ids.len(), lo, n, d, false)
        .unwrap();
    close(
        "embedding gather",
        &read(&g, &out),
        &ops::embedding(&table, lo, &ids, d),
        0.0,
    );
    let idx = RowIndex::new(&ids, lo, n);
    let (ts, to) = (
        g.upload_u32(&idx.starts).unwrap(),
        g.upload_u32(&idx.order).unwrap(),
    );
    let tdy = g.upload(&dy, &[ids.len(), d]).unwrap();
    let dt = g.zeros(&[n, d]).unwrap();
    g.embedding_backward(&ts, &to, &tdy, &dt, ids.len(), n, d, false)
        .unwrap();
    close(
        "embedding scatter-add",
        &read(&g, &dt),
        &ops::embedding_backward(&ids, &dy, lo, n, d),
        1e-6,
    );
}

#[test]
fn cross_entropy_vocab_parallel() {
    let g = gpu();
    run_check(pollster::block_on(checks::cross_entropy_matches_reference(
        &g,
    )));
}

#[test]
fn adamw_and_global_norm_clipping() {
    let g = gpu();
    let mut r = SplitMix(18);
    let n = 3001;
    let h = ops::AdamW {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut p: Vec<f32> = r.vec(n, 1.0);
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (tp, tm, tv) = (
        g.upload(&p, &[n]).unwrap(),
        g.zeros(&[n]).unwrap(),
        g.zeros(&[n]).unwrap(),
    );
    for step in 1..=3 {
        let grad: Vec<f32> = r.vec(n, 1.0);
        let tg = g.upload(&grad, &[n]).unwrap();
        g.adamw(&tp, &tg, &tm, &tv, h, step).unwrap();
        ops::adamw_step(&mut p, &grad, &mut m, &mut v, h, step);
    }
    close("adamw params", &read(&g, &tp), &p, 1e-6);
    close("adamw m", &read(&g, &tm), &m, 1e-6);
    let a: Vec<f32> = r.vec(70000, 1.0);
    let b: Vec<f32> = r.vec(17, 1.0);
    let (ta, tb) = (
        g.upload(&a, &[a.len()]).unwrap(),
        g.upload(&b, &[b.len()]).unwrap(),
    );
    let want = ops::global_norm::<f32>(&[&a, &b]);
    let norm = pollster::block_on(g.clip_global_norm(&[&ta, &tb], 1.0)).unwrap();
    println!("global norm: gpu {norm} cpu {want}");
    assert!((norm - want).abs() / want < 1e-5);
    let after = pollster::block_on(g.global_norm(&[&ta, &tb])).unwrap();
    assert!((after - 1.0).abs() < 1e-4, "clipped norm {after}");
}

/// Says which adapter runs the GPU tests, with the limits and tiles they run under
/// (`scripts/test-all` prints this test's output).
#[test]
fn adapter_report() {
    let g = gpu();
    let l = g.limits();
    println!(
        "limits: {} storage buffers per stage, {} bytes per binding, {} bytes per buffer, {} bytes workgroup storage",
        l.max_storage_buffers_per_shader_stage, l.max_storage_buffer_binding_size, l.max_buffer_size, l.max_compute_workgroup_storage_size
    );
    println!("tiles: {:?}", g.tiles());
    assert_eq!(
        l.max_storage_buffers_per_shader_stage,
        wgpu::Limits::default().max_storage_buffers_per_shader_stage
    );
}
