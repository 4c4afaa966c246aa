//! Text generation on the GPU with a key/value cache: the prompt is run once (prefill), then
//! each new token costs one row through every stage, its attention reading the cached keys
//! and values of all earlier positions. Works on any slicing of [`GpuModel`].

use crate::error::ComputeError;
use crate::gpu::{Gpu, Tensor};
use crate::model::GpuModel;
use crate::reference::model::SplitMix;
use crate::sampling::{pick, Sampling};
use crate::shard::{MicroShard, Rows, ShardCache};

/// The key/value caches of every `Attn` shard of a model, and how many positions they hold.
pub struct KvCache {
    /// Per stage, per shard: a cache for `Attn` shards, nothing for the others.
    shards: Vec<Vec<Option<ShardCache>>>,
    len: usize,
    positions: usize,
}

impl KvCache {
    /// Positions written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache holds at most.
    pub fn positions(&self) -> usize {
        self.positions
    }
}

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct GenerateOptions {
    /// New tokens at most (fewer when the context fills).
    pub max_tokens: usize,
    /// How each token is chosen.
    pub sampling: Sampling,
    /// Seed of the draws (unused when greedy).
    pub seed: u64,
}

impl GpuModel {
    /// An empty cache for `positions` positions (at most the rows the model was built for).
    pub fn kv_cache(&self, gpu: &Gpu, positions: usize) -> Result<KvCache, ComputeError> {
        let shards = self
            .stages
            .iter()
            .map(|stage| {
                stage
                    .iter()
                    .map(|s| match s.shard() {
                        MicroShard::Attn { .. } => s.kv_cache(gpu, positions).map(Some),
                        _ => Ok(None),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KvCache {
            shards,
            len: 0,
            positions,
        })
    }

    /// Runs `ids` at the cache's next positions, writing their keys and values, and returns
    /// the logits `[vocab]` that follow the last of them.
    pub async fn extend(
        &self,
        gpu: &Gpu,
        cache: &mut KvCache,
        ids: &[u32],
    ) -> Result<Vec<f32>, ComputeError> {
        let (n, past) = (ids.len(), cache.len);
        if n == 0 || past + n > cache.positions {
            return Err(ComputeError::Shape(format!(
                "{n} new tokens after {past}: the context holds {} positions",
                cache.positions
            )));
        }
        if cache.shards.len() != self.stages.len() {
            return Err(ComputeError::Shape("cache of another model".into()));
        }
        let rows = Rows {
            seq: n,
            sequences: 1,
        };
        let last = self.stages.len() - 1;
        let mut h = self.embed(gpu, ids)?;
        for (stage, caches) in self.stages[1..last].iter().zip(&cache.shards[1..last]) {
            let parts: Vec<Tensor> = stage
                .iter()
                .zip(caches)
                .map(|(s, c)| match c {
                    Some(c) => s.attn_cached(gpu, &h, n, past, c),
                    None => s.block_forward(gpu, &h, rows),
                })
                .collect::<Result<_, _>>()?;
            h = Self::sum(gpu, Some(&h), parts)?;
        }
        let d = self.cfg.hidden_size;
        let tail = gpu.zeros(&[1, d])?;
        gpu.copy_region(&h, (n - 1) * d, &tail, 0, d)?;
        let one = Rows {
            seq: 1,
            sequences: 1,
        };
        let mut out = vec![0.0f32; self.cfg.vocab_size];
        for s in &self.stages[last] {
            let cols = s.shard().units();
            let part = s.head_logits(gpu, &tail, one).await?;
            out[cols].copy_from_slice(&part);
        }
        gpu.check()?;
        cache.len += n;
        Ok(out)
    }

    /// Generates after `prompt`, calling `on_token` with each new token as soon as it is
    /// chosen; stops after `opts.max_tokens` tokens or when the cache is full. Returns the new
    /// tokens.
    pub async fn generate(
        &self,
        gpu: &Gpu,
        cache: &mut KvCache,
        prompt: &[u32],
        opts: GenerateOptions,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>, ComputeError> {
        opts.sampling.validate()?;
        if prompt.is_empty() {
            return Err(ComputeError::Shape("an empty prompt".into()));
        }
        let mut rng = SplitMix(opts.seed);
        let mut logits = self.extend(gpu, cache, prompt).await?;
        let mut out = Vec::new();
        while out.len() < opts.max_tokens {
            let next = pick(&logits, opts.sampling, &mut rng)?;
            out.push(next);
            on_token(next);
            if out.len() == opts.max_tokens || cache.len() == cache.positions() {
                break;
            }
            logits = self.extend(gpu, cache, &[next]).await?;
        }
        Ok(out)
    }
}
