//! Tessera's side of the benchmark: its matmul kernel and its whole-model forward+backward.

use std::time::Instant;

use anyhow::{Context, Result};
use tessera_compute::kernels::Layout;
use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::{Gpu, GpuOptions, MatmulTiles, ModelConfig, Tiles};

/// Opens the adapter with the WebGPU default limits (what a browser grants); `tiles` overrides
/// the matmul defaults the adapter type picks.
pub fn open(tiles: Option<MatmulTiles>) -> Result<Gpu> {
    let t = tiles.map(|matmul| Tiles {
        matmul,
        ..Tiles::default()
    });
    pollster::block_on(Gpu::new(GpuOptions {
        tiles: t,
        ..Default::default()
    }))
    .context("opening the GPU")
}

/// GFLOP/s of `C = A B` at `n³`, after one warm-up run (pipeline compilation).
pub fn matmul_gflops(gpu: &Gpu, n: usize, iters: usize) -> Result<f64> {
    let mut r = SplitMix(1);
    let a = gpu.upload(&r.vec::<f32>(n * n, 1.0), &[n, n])?;
    let b = gpu.upload(&r.vec::<f32>(n * n, 1.0), &[n, n])?;
    let c = gpu.zeros(&[n, n])?;
    gpu.matmul(Layout::NN, &a, &b, &c, n, n, n, false)?;
    pollster::block_on(gpu.finish())?;
    let t = Instant::now();
    for _ in 0..iters {
        gpu.matmul(Layout::NN, &a, &b, &c, n, n, n, false)?;
    }
    pollster::block_on(gpu.finish())?;
    let secs = t.elapsed().as_secs_f64();
    Ok(2.0 * (n as f64).powi(3) * iters as f64 / secs / 1e9)
}

/// Forward+backward tokens/s of the benchmark model on one 256-token sequence.
pub fn model_tokens_per_second(gpu: &Gpu, iters: usize) -> Result<(f64, f64)> {
    let cfg = ModelConfig {
        vocab_size: 256,
        hidden_size: 256,
        intermediate_size: 688,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 256,
        tie_word_embeddings: false,
    };
    let seq = 256;
    let params: ModelParams<f32> = ModelParams::random(&cfg, 7);
    let model = GpuModel::new(gpu, &cfg, &params, Slicing::whole(), seq)?;
    let mut r = SplitMix(8);
    let toks: Vec<u32> = (0..seq).map(|_| (r.next_u64() % 256) as u32).collect();
    let batch = Batch::from_sequences(&toks, seq);
    let mut loss = pollster::block_on(model.loss_and_grads(gpu, &batch))?;
    pollster::block_on(gpu.finish())?;
    let t = Instant::now();
    for _ in 0..iters {
        loss = pollster::block_on(model.loss_and_grads(gpu, &batch))?;
    }
    pollster::block_on(gpu.finish())?;
    Ok((seq as f64 * iters as f64 / t.elapsed().as_secs_f64(), loss))
}
