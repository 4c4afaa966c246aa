//! The autotuner on a real adapter: every candidate the adapter's limits allow is timed on a
//! layer's matmuls and checked against the CPU reference; the fastest complete, correct rows
//! are timed again in turns and the fastest of those wins; candidates the limits refuse are named as such; the table marks the winner.

use std::time::Instant;

use tessera_compute::tune::{candidates, tune, Case};
use tessera_compute::{Gpu, GpuOptions, ModelConfig, Tiles};

fn cfg() -> ModelConfig {
    ModelConfig {
        vocab_size: 256,
        hidden_size: 64,
        intermediate_size: 172,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
    }
}

fn clock() -> impl Fn() -> f64 {
    let t0 = Instant::now();
    move || t0.elapsed().as_secs_f64() * 1e3
}

#[test]
fn the_fastest_correct_candidate_wins_and_every_row_says_why_it_is_out() {
    let cases = Case::of_layer(&cfg(), 64);
    let clock = clock();
    let mut seen = 0;
    let t = pollster::block_on(tune(
        &GpuOptions::default(),
        &cases,
        2.0,
        &clock,
        |_, _, _| seen += 1,
    ))
    .expect("tuning runs");
    print!("{}", t.table());
    assert_eq!(seen, candidates().len(), "progress for every candidate");
    assert_eq!(t.rows.len(), candidates().len());
    let chosen = t.chosen.expect("a winner");
    let total = |i: usize| t.rows[i].secs.iter().sum::<f64>();
    // The fastest few of the first pass were timed again in turns; the least of those wins.
    let finalists: Vec<usize> = (0..t.rows.len())
        .filter(|&i| t.rows[i].confirmed.is_some())
        .collect();
    assert!(finalists.len() >= 2, "{finalists:?}");
    assert!(finalists.contains(&chosen));
    let slowest_finalist = finalists.iter().map(|&i| total(i)).fold(0.0, f64::max);
    for (i, r) in t.rows.iter().enumerate() {
        if r.excluded.is_none() {
            assert_eq!(r.secs.len(), cases.len(), "{r:?} timed on every case");
            assert!(r.secs.iter().all(|s| *s > 0.0));
            match r.confirmed {
                Some(c) => assert!(
                    t.rows[chosen].confirmed.unwrap() <= c,
                    "{r:?} beats the winner"
                ),
                None => assert!(
                    total(i) >= slowest_finalist,
                    "{r:?} should have been a finalist"
                ),
            }
        } else {
            assert!(i != chosen);
        }
    }
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default())).unwrap();
    assert_eq!(t.adapter, gpu.adapter().to_string());
    let line = t.table();
    assert!(line.contains("chosen:") && line.lines().any(|l| l.starts_with("* ")));
    // The winner opens and validates like any tiling.
    let tiles = Tiles {
        matmul: t.choice().unwrap(),
        ..Tiles::default()
    };
    tiles.validate(gpu.limits()).unwrap();
}

#[test]
fn candidates_the_adapter_s_limits_refuse_are_named_and_never_chosen() {
    let limits = wgpu::Limits {
        max_compute_invocations_per_workgroup: 64,
        max_compute_workgroup_size_x: 64,
        max_compute_workgroup_size_y: 64,
        ..wgpu::Limits::default()
    };
    let opts = GpuOptions {
        limits: Some(limits),
        tiles: Some(Tiles {
            matmul: tessera_compute::MatmulTiles::VEC4,
            wg: 64,
            attn_rows: 16,
            ..Tiles::default()
        }),
        ..Default::default()
    };
    let cases = Case::of_layer(&cfg(), 32);
    let clock = clock();
    let t = pollster::block_on(tune(&opts, &cases, 1.0, &clock, |_, _, _| {})).unwrap();
    print!("{}", t.table());
    let refused: Vec<_> = t
        .rows
        .iter()
        .filter(|r| (r.tiles.bm / r.tiles.tm) * (r.tiles.bn / r.tiles.tn) > 64)
        .collect();
    assert!(!refused.is_empty());
    for r in refused {
        let why = r.excluded.as_deref().unwrap_or_default();
        assert!(why.starts_with("not on this adapter"), "{r:?}");
        assert!(r.secs.is_empty());
    }
    let w = t.choice().expect("a winner among the rest");
    assert!((w.bm / w.tm) * (w.bn / w.tn) <= 64);
}
