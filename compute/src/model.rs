//! A whole model as micro-shards on one GPU: the stages of the design (embed, then attention
//! and MLP per layer, then head), each tensor-sliced into as many shards as asked, composed
//! exactly as the coordinator composes them across contributors (partial outputs summed,
//! residual added, three-pass vocab-parallel loss). With one slice per stage it is the
//! unsliced model.

use std::ops::Range;

use crate::config::ModelConfig;
use crate::error::ComputeError;
use crate::gpu::{Gpu, Tensor};
use crate::reference::{Batch, ModelParams};
use crate::shard::{combine, GpuShard, MicroShard, Optimizer, Rows, ShardTensors};

/// How many slices each stage kind is cut into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slicing {
    /// Embedding vocabulary-row slices.
    pub embed: usize,
    /// Attention kv-group slices per layer.
    pub attn: usize,
    /// MLP hidden-column slices per layer.
    pub mlp: usize,
    /// Head vocabulary-column slices.
    pub head: usize,
}

impl Slicing {
    /// One slice per stage: the unsliced model.
    pub fn whole() -> Self {
        Slicing {
            embed: 1,
            attn: 1,
            mlp: 1,
            head: 1,
        }
    }
}

/// `0..n` cut into `k` balanced non-empty ranges.
pub fn split(n: usize, k: usize) -> Result<Vec<Range<usize>>, ComputeError> {
    if k == 0 || k > n {
        return Err(ComputeError::Shape(format!(
            "cannot cut {n} units into {k} slices"
        )));
    }
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    for i in 0..k {
        let len = n / k + usize::from(i < n % k);
        out.push(start..start + len);
        start += len;
    }
    Ok(out)
}

/// The micro-shards of `cfg` under `slicing`, stage by stage.
pub fn shards(cfg: &ModelConfig, s: Slicing) -> Result<Vec<Vec<MicroShard>>, ComputeError> {
    let mut stages = vec![split(cfg.vocab_size, s.embed)?
        .into_iter()
        .map(|rows| MicroShard::Embed { rows })
        .collect()];
    for layer in 0..cfg.num_hidden_layers {
        stages.push(
            split(cfg.num_key_value_heads, s.attn)?
                .into_iter()
                .map(|groups| MicroShard::Attn { layer, groups })
                .collect(),
        );
        stages.push(
            split(cfg.intermediate_size, s.mlp)?
                .into_iter()
                .map(|cols| MicroShard::Mlp { layer, cols })
                .collect(),
        );
    }
    stages.push(
        split(cfg.vocab_size, s.head)?
            .into_iter()
            .map(|cols| MicroShard::Head { cols })
            .collect(),
    );
    Ok(stages)
}

/// A whole model resident on one GPU as micro-shards.
pub struct GpuModel {
    pub(crate) cfg: ModelConfig,
    pub(crate) stages: Vec<Vec<GpuShard>>,
}

impl GpuModel {
    /// Uploads `params` cut by `slicing`, for micro-batches of at most `max_rows` tokens.
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        params: &ModelParams<f32>,
        slicing: Slicing,
        max_rows: usize,
    ) -> Result<Self, ComputeError> {
        cfg.validate()?;
        let stages = shards(cfg, slicing)?
            .iter()
            .map(|stage| {
                stage
                    .iter()
                    .map(|s| {
                        GpuShard::new(
                            gpu,
                            cfg,
                            &ShardTensors::from_model(cfg, params, s)?,
                            max_rows,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GpuModel {
            cfg: cfg.clone(),
            stages,
        })
    }

    /// Overwrites every parameter (gradients and optimizer moments stay).
    pub fn write_params(&self, gpu: &Gpu, params: &ModelParams<f32>) -> Result<(), ComputeError> {
        for s in self.shards() {
            s.write_params(
                gpu,
                &ShardTensors::from_model(&self.cfg, params, s.shard())?,
            )?;
        }
        Ok(())
    }

    /// Every shard, stage by stage.
    pub fn shards(&self) -> impl Iterator<Item = &GpuShard> {
        self.stages.iter().flatten()
    }

    pub(crate) fn sum(
        gpu: &Gpu,
        base: Option<&Tensor>,
        parts: Vec<Tensor>,
    ) -> Result<Tensor, ComputeError> {
        let mut parts = parts.into_iter();
        let acc = match base {
            Some(b) => {
                let t = gpu.zeros(b.shape())?;
                gpu.copy(b, &t)?;
                t
            }
            None => parts
                .next()
                .ok_or_else(|| ComputeError::Shape("empty stage".into()))?,
        };
        for p in parts {
            gpu.add_assign(&acc, &p, p.len())?;
        }
        Ok(acc)
    }

    fn rows_of(ids: usize, seq: usize) -> Result<Rows, ComputeError> {
        if seq == 0 || ids == 0 || !ids.is_multiple_of(seq) {
            return Err(ComputeError::Shape(format!(
                "{ids} tokens do not make whole sequences of {seq}"
            )));
        }
        Ok(Rows {
            seq,
            sequences: ids / seq,
        })
    }

    /// The embedding stage's output for `ids`: its slices' rows summed.
    pub(crate) fn embed(&self, gpu: &Gpu, ids: &[u32]) -> Result<Tensor, ComputeError> {
        let parts: Vec<Tensor> = self.stages[0]
            .iter()
            .map(|s| s.embed_forward(gpu, ids))
            .collect::<Result<_, _>>()?;
        Self::sum(gpu, None, parts)
    }

    /// Forward through embedding and every block: the final hidden state and each block
    /// stage's input.
    fn trunk(
        &self,
        gpu: &Gpu,
        ids: &[u32],
        rows: Rows,
    ) -> Result<(Tensor, Vec<Tensor>), ComputeError> {
        let last = self.stages.len() - 1;
        let mut h = self.embed(gpu, ids)?;
        let mut inputs = Vec::with_capacity(last);
        for stage in &self.stages[1..last] {
            let parts: Vec<Tensor> = stage
                .iter()
                .map(|s| s.block_forward(gpu, &h, rows))
                .collect::<Result<_, _>>()?;
            let next = Self::sum(gpu, Some(&h), parts)?;
            inputs.push(std::mem::replace(&mut h, next));
        }
        Ok((h, inputs))
    }

    /// Logits `[ids.len(), vocab]` for whole sequences of `seq` tokens.
    pub async fn logits(
        &self,
        gpu: &Gpu,
        ids: &[u32],
        seq: usize,
    ) -> Result<Vec<f32>, ComputeError> {
        let rows = Self::rows_of(ids.len(), seq)?;
        let (h, _) = self.trunk(gpu, ids, rows)?;
        let v = self.cfg.vocab_size;
        let mut out = vec![0.0f32; ids.len() * v];
        for s in &self.stages[self.stages.len() - 1] {
            let cols = s.shard().units();
            let part = s.head_logits(gpu, &h, rows).await?;
            for r in 0..ids.len() {
                out[r * v + cols.start..r * v + cols.end]
                    .copy_from_slice(&part[r * cols.len()..(r + 1) * cols.len()]);
            }
        }
        Ok(out)
    }

    /// Forward only: the mean next-token loss of a batch (for held-out evaluation).
    pub async fn loss(&self, gpu: &Gpu, batch: &Batch) -> Result<f64, ComputeError> {
        if batch.targets.len() != batch.ids.len() {
            return Err(ComputeError::Shape(format!(
                "batch of {} ids and {} targets",
                batch.ids.len(),
                batch.targets.len()
            )));
        }
        let rows = Self::rows_of(batch.ids.len(), batch.seq)?;
        let (h, _) = self.trunk(gpu, &batch.ids, rows)?;
        let mut stats = Vec::new();
        for s in &self.stages[self.stages.len() - 1] {
            stats.push(s.head_forward(gpu, &h, &batch.targets, rows).await?);
        }
        Ok(combine(&stats, &batch.targets).1)
    }

    /// Forward and backward of one micro-batch: returns the mean loss and adds the gradients
    /// into the shards' accumulators.
    pub async fn loss_and_grads(&self, gpu: &Gpu, batch: &Batch) -> Result<f64, ComputeError> {
        let n = batch.ids.len();
        if batch.targets.len() != n {
            return Err(ComputeError::Shape(format!(
                "batch of {n} ids and {} targets",
                batch.targets.len()
            )));
        }
        let rows = Self::rows_of(n, batch.seq)?;
        let last = self.stages.len() - 1;
        let (h, inputs) = self.trunk(gpu, &batch.ids, rows)?;
        let mut stats = Vec::new();
        for s in &self.stages[last] {
            stats.push(s.head_forward(gpu, &h, &batch.targets, rows).await?);
        }
        let (lse, loss, count) = combine(&stats, &batch.targets);
        let lse: Vec<f32> = lse.iter().map(|&x| x as f32).collect();
        let inv = if count > 0 { 1.0 / count as f32 } else { 0.0 };
        // Backward.
        let parts: Vec<Tensor> = self.stages[last]
            .iter()
            .map(|s| s.head_backward(gpu, &h, &batch.targets, &lse, inv, rows))
            .collect::<Result<_, _>>()?;
        let mut dh = Self::sum(gpu, None, parts)?;
        for (stage, input) in self.stages[1..last].iter().zip(&inputs).rev() {
            let parts: Vec<Tensor> = stage
                .iter()
                .map(|s| s.block_backward(gpu, input, &dh, rows))
                .collect::<Result<_, _>>()?;
            dh = Self::sum(gpu, Some(&dh), parts)?;
        }
        for s in &self.stages[0] {
            s.embed_backward(gpu, &batch.ids, &dh)?;
        }
        gpu.check()?;
        Ok(loss)
    }

    /// Zeroes every gradient.
    pub fn zero_grads(&self, gpu: &Gpu) -> Result<(), ComputeError> {
        self.shards().try_for_each(|s| s.zero_grads(gpu))
    }

    /// Sums the partial gradients of each stage's replicated norm weight into the first
    /// slice's copy.
    fn sum_replicated(&self, gpu: &Gpu) -> Result<(), ComputeError> {
        for stage in self.stages.iter().filter(|s| s.len() > 1) {
            let first = stage[0].replicated_grads();
            for other in &stage[1..] {
                for (a, b) in first.iter().zip(other.replicated_grads()) {
                    gpu.add_assign(a, b, a.len())?;
                }
            }
        }
        Ok(())
    }

    /// Gives the first slice's (summed, clipped) replicated gradients to every other slice, so
    /// all slices apply the same update.
    fn broadcast_replicated(&self, gpu: &Gpu) -> Result<(), ComputeError> {
        for stage in self.stages.iter().filter(|s| s.len() > 1) {
            let first = stage[0].replicated_grads();
            for other in &stage[1..] {
                for (a, b) in first.iter().zip(other.replicated_grads()) {
                    gpu.copy(a, b)?;
                }
            }
        }
        Ok(())
    }

    /// Every distinct gradient tensor: replicated ones once per stage.
    fn distinct_grads(&self) -> Vec<&Tensor> {
        let mut out = Vec::new();
        for stage in &self.stages {
            for (i, s) in stage.iter().enumerate() {
                if i == 0 {
                    out.extend(s.replicated_grads());
                }
                out.extend(s.sliced_grads());
            }
        }
        out
    }

    /// Drops every shard's AdamW moments: the next optimizer step starts from fresh state.
    pub fn reset_moments(&mut self) {
        self.stages
            .iter_mut()
            .flatten()
            .for_each(GpuShard::reset_moments);
    }

    /// Ends a step: sums replicated partial gradients (and, with tied embeddings, the head's
    /// gradient into the embedding's), clips to the global norm across every shard when
    /// `max_norm` is given, and applies AdamW at 1-based `step`. Returns the global
    /// gradient norm before clipping when it was computed.
    pub async fn optimizer_step(
        &mut self,
        gpu: &Gpu,
        opt: Optimizer,
        step: u32,
        max_norm: Option<f64>,
    ) -> Result<Option<f64>, ComputeError> {
        if self.cfg.tie_word_embeddings {
            self.fold_tied_grads(gpu)?;
        }
        self.sum_replicated(gpu)?;
        let norm = match max_norm {
            Some(m) => Some(gpu.clip_global_norm(&self.distinct_grads(), m).await?),
            None => None,
        };
        self.broadcast_replicated(gpu)?;
        self.stages
            .iter_mut()
            .flatten()
            .try_for_each(|s| s.optimizer_step(gpu, opt, step))?;
        if self.cfg.tie_word_embeddings {
            self.retie(gpu)?;
        }
        gpu.check()?;
        Ok(norm)
    }

    async fn gather(&self, gpu: &Gpu, grads: bool) -> Result<ModelParams<f32>, ComputeError> {
        let mut acc = ModelParams::<f32>::zeros(&self.cfg);
        for s in self.shards() {
            if grads {
                s.read_grads(gpu).await?.add_into(&self.cfg, &mut acc)?;
            } else {
                s.read_params(gpu).await?.copy_into(&self.cfg, &mut acc)?;
            }
        }
        Ok(acc)
    }

    /// The accumulated gradients as whole tensors (partial norm gradients summed).
    pub async fn read_grads(&self, gpu: &Gpu) -> Result<ModelParams<f32>, ComputeError> {
        self.gather(gpu, true).await
    }

    /// The parameters as whole tensors (replicated norm weights are identical in every slice).
    pub async fn read_params(&self, gpu: &Gpu) -> Result<ModelParams<f32>, ComputeError> {
        self.gather(gpu, false).await
    }
}
