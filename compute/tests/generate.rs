#![cfg(not(target_arch = "wasm32"))]
//! Generation with a key/value cache against the CPU reference, which recomputes the whole
//! prefix at every step in f64 with no cache. The model is the golden fixture written by Hugging
//! Face transformers (`fixtures/golden`, whose logits the reference reproduces in
//! `golden_hf.rs`); the greedy fixture (`fixtures/generate/greedy.json`) holds a prompt, the
//! tokens greedy decoding writes after it, and the least top-1/top-2 logit margin over its
//! steps. Every step's margin is asserted, and the GPU's logits are held within a tolerance far
//! below it, so a rounding difference cannot flip a token.

mod common;

use common::gpu;
use tessera_compute::generate::GenerateOptions;
use tessera_compute::hf::params_from_safetensors;
use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::reference::model;
use tessera_compute::reference::scalar::convert;
use tessera_compute::reference::ModelParams;
use tessera_compute::sampling::Sampling;
use tessera_compute::ModelConfig;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/generate/greedy.json"
);

/// The least top-1/top-2 logit margin every step of the fixture must keep.
const MARGIN: f64 = 0.02;
/// The largest difference allowed between a GPU logit and the reference's.
const LOGIT_TOL: f64 = 1e-4;

fn golden() -> (ModelConfig, ModelParams<f32>) {
    let cfg = ModelConfig::from_hf_json(
        &std::fs::read_to_string(format!("{GOLDEN}/config.json")).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(format!("{GOLDEN}/model.safetensors")).unwrap();
    let params = params_from_safetensors(&cfg, &bytes).unwrap();
    (cfg, params)
}

#[derive(serde::Deserialize)]
struct Fixture {
    prompt: String,
    tokens: Vec<u32>,
}

fn fixture() -> Fixture {
    serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap()
}

/// The f64 reference's logits after the last of `ids` (the whole prefix recomputed).
fn reference_next(cfg: &ModelConfig, p64: &ModelParams<f64>, ids: &[u32]) -> Vec<f64> {
    let all = model::logits(cfg, p64, ids, ids.len());
    all[(ids.len() - 1) * cfg.vocab_size..].to_vec()
}

/// Index of the largest value and its margin over the second largest.
fn top(logits: &[f64]) -> (u32, f64) {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    (idx[0] as u32, logits[idx[0]] - logits[idx[1]])
}

#[test]
fn reference_greedy_equals_the_fixture_with_a_margin_at_every_step() {
    let (cfg, p) = golden();
    let p64: ModelParams<f64> = p.map(convert);
    let f = fixture();
    let mut ids: Vec<u32> = f.prompt.bytes().map(u32::from).collect();
    let mut least = f64::MAX;
    for (step, &want) in f.tokens.iter().enumerate() {
        let (next, margin) = top(&reference_next(&cfg, &p64, &ids));
        assert_eq!(next, want, "step {step}: the reference's greedy token");
        assert!(
            margin >= MARGIN,
            "step {step}: top-1/top-2 margin {margin:.4} below {MARGIN}"
        );
        least = least.min(margin);
        ids.push(next);
    }
    println!(
        "{} greedy tokens, least top-1/top-2 margin {least:.4}",
        f.tokens.len()
    );
}

/// Slicings the GPU path must generate alike under: whole, and every stage cut.
fn slicings() -> [Slicing; 2] {
    [
        Slicing::whole(),
        Slicing {
            embed: 2,
            attn: 3,
            mlp: 2,
            head: 3,
        },
    ]
}

#[test]
fn gpu_cached_logits_follow_the_reference_step_by_step() {
    let g = gpu();
    let (cfg, p) = golden();
    let p64: ModelParams<f64> = p.map(convert);
    let f = fixture();
    let prompt: Vec<u32> = f.prompt.bytes().map(u32::from).collect();
    for slicing in slicings() {
        let m = GpuModel::new(&g, &cfg, &p, slicing, cfg.max_position_embeddings).unwrap();
        let mut cache = m.kv_cache(&g, cfg.max_position_embeddings).unwrap();
        let mut ids = prompt.clone();
        let mut logits = pollster::block_on(m.extend(&g, &mut cache, &prompt)).unwrap();
        let mut worst = 0.0f64;
        for &next in &f.tokens {
            let want = reference_next(&cfg, &p64, &ids);
            let err = logits
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            worst = worst.max(err);
            assert!(
                err <= LOGIT_TOL,
                "{slicing:?} at position {}: logits differ by {err:.2e}",
                ids.len()
            );
            ids.push(next);
            logits = pollster::block_on(m.extend(&g, &mut cache, &[next])).unwrap();
        }
        assert_eq!(cache.len(), ids.len());
        println!("{slicing:?}: worst logit difference {worst:.2e} (margin at least {MARGIN})");
    }
}

#[test]
fn gpu_greedy_generation_equals_the_fixture() {
    let g = gpu();
    let (cfg, p) = golden();
    let f = fixture();
    let prompt: Vec<u32> = f.prompt.bytes().map(u32::from).collect();
    let opts = GenerateOptions {
        max_tokens: f.tokens.len(),
        sampling: Sampling::greedy(),
        seed: 0,
    };
    for slicing in slicings() {
        let m = GpuModel::new(&g, &cfg, &p, slicing, cfg.max_position_embeddings).unwrap();
        let mut cache = m.kv_cache(&g, cfg.max_position_embeddings).unwrap();
        let mut seen = Vec::new();
        let out = pollster::block_on(m.generate(&g, &mut cache, &prompt, opts, |t| seen.push(t)))
            .unwrap();
        assert_eq!(out, f.tokens, "{slicing:?}");
        assert_eq!(seen, out, "each token is reported as it is chosen");
    }
}

#[test]
fn generation_stops_when_the_context_is_full_and_sampling_repeats_by_seed() {
    let g = gpu();
    let (cfg, p) = golden();
    let ctx = cfg.max_position_embeddings;
    let m = GpuModel::new(&g, &cfg, &p, Slicing::whole(), ctx).unwrap();
    let prompt: Vec<u32> = (0..ctx as u32 - 3)
        .map(|i| i % cfg.vocab_size as u32)
        .collect();
    let greedy = GenerateOptions {
        max_tokens: 50,
        sampling: Sampling::greedy(),
        seed: 0,
    };
    let mut cache = m.kv_cache(&g, ctx).unwrap();
    let out = pollster::block_on(m.generate(&g, &mut cache, &prompt, greedy, |_| {})).unwrap();
    // Three positions left: the tokens after each of them and after the prompt's last.
    assert_eq!(out.len(), 4);
    assert_eq!(cache.len(), ctx);
    assert!(pollster::block_on(m.extend(&g, &mut cache, &[1])).is_err());
    let warm = GenerateOptions {
        max_tokens: 12,
        sampling: Sampling {
            temperature: 1.5,
            top_p: 0.95,
        },
        seed: 9,
    };
    let run = |seed: u64| {
        let mut c = m.kv_cache(&g, ctx).unwrap();
        let o = GenerateOptions { seed, ..warm };
        pollster::block_on(m.generate(&g, &mut c, &prompt[..4], o, |_| {})).unwrap()
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
    assert!(pollster::block_on(m.generate(
        &g,
        &mut m.kv_cache(&g, ctx).unwrap(),
        &[],
        greedy,
        |_| {}
    ))
    .is_err());
}

/// Prints candidate fixtures: each prompt's greedy tokens and least margin
/// (`cargo test -p tessera-compute --test generate -- --ignored --nocapture`).
#[test]
#[ignore]
fn print_candidate_fixtures() {
    let (cfg, p) = golden();
    let p64: ModelParams<f64> = p.map(convert);
    for prompt in [
        "12+34=", "0+1=", "9*8=", "<AB>", "A=B?", "1,2,3,", "(4)+(5)=",
    ] {
        let mut ids: Vec<u32> = prompt.bytes().map(u32::from).collect();
        let mut out = Vec::new();
        let mut least = f64::MAX;
        for _ in 0..24 {
            let (next, margin) = top(&reference_next(&cfg, &p64, &ids));
            least = least.min(margin);
            out.push(next);
            ids.push(next);
        }
        println!("{prompt:?}: least margin {least:.4} tokens {out:?}");
    }
}
