//! A generation's pass through an `Attn` shard: the new rows' keys and values (after RoPE at
//! their positions) are written into the shard's key/value cache, and the new queries attend
//! to every cached position, so each token costs one row's projections, not the prefix's.

use super::kind::{MicroShard, Rows};
use super::params::GpuShard;
use crate::error::ComputeError;
use crate::gpu::{Gpu, Tensor};
use crate::kernels::attention_cached::CachedDims;
use crate::kernels::Layout;

/// One `Attn` shard's key/value cache: per piece, keys and values `[positions, groups * hd]`.
pub struct ShardCache {
    pieces: Vec<(Tensor, Tensor)>,
    positions: usize,
}

impl ShardCache {
    /// Positions the cache holds at most.
    pub fn positions(&self) -> usize {
        self.positions
    }
}

impl GpuShard {
    /// An empty key/value cache of `positions` positions for this `Attn` shard (at most the
    /// rows it was sized for, which is as far as its RoPE table reaches).
    pub fn kv_cache(&self, gpu: &Gpu, positions: usize) -> Result<ShardCache, ComputeError> {
        if !matches!(self.shard, MicroShard::Attn { .. }) {
            return Err(ComputeError::Shape(format!(
                "{} is not an Attn shard",
                self.shard
            )));
        }
        self.check_rows(Rows {
            seq: positions,
            sequences: 1,
        })?;
        let hd = self.cfg.head_dim;
        let pieces = self
            .pieces
            .iter()
            .map(|p| {
                let w = p.units.len() * hd;
                Ok((gpu.zeros(&[positions, w])?, gpu.zeros(&[positions, w])?))
            })
            .collect::<Result<_, ComputeError>>()?;
        Ok(ShardCache { pieces, positions })
    }

    /// This shard's partial output for the `n` rows of `h: [n, d]` at positions
    /// `past..past + n`, whose keys and values it writes into `cache` (positions before
    /// `past` must hold the earlier rows').
    pub fn attn_cached(
        &self,
        gpu: &Gpu,
        h: &Tensor,
        n: usize,
        past: usize,
        cache: &ShardCache,
    ) -> Result<Tensor, ComputeError> {
        let cfg = &self.cfg;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        if n == 0
            || past.saturating_add(n) > cache.positions
            || cache.pieces.len() != self.pieces.len()
        {
            return Err(ComputeError::Shape(format!(
                "{}: positions {past}..{} do not fit a cache of {}",
                self.shard,
                past.saturating_add(n),
                cache.positions
            )));
        }
        let rope = self
            .rope
            .as_ref()
            .ok_or_else(|| ComputeError::Shape("attention shard without RoPE table".into()))?;
        let (xn, _) = self.norm_forward(gpu, h, n)?;
        let out = gpu.zeros(&[n, d])?;
        for (i, (p, (kc, vc))) in self.pieces.iter().zip(&cache.pieces).enumerate() {
            let groups = p.units.len();
            let heads = groups * cfg.group_size();
            let (qw, kw) = (heads * hd, groups * hd);
            let q = gpu.zeros(&[n, qw])?;
            let k = gpu.zeros(&[n, kw])?;
            let v = gpu.zeros(&[n, kw])?;
            gpu.matmul(Layout::NT, &xn, &p.slots[0].w, &q, n, qw, d, false)?;
            gpu.matmul(Layout::NT, &xn, &p.slots[1].w, &k, n, kw, d, false)?;
            gpu.matmul(Layout::NT, &xn, &p.slots[2].w, &v, n, kw, d, false)?;
            gpu.rope_at(&q, rope, n, heads, hd, n, past, false)?;
            gpu.rope_at(&k, rope, n, groups, hd, n, past, false)?;
            gpu.copy_region(&k, 0, kc, past * kw, n * kw)?;
            gpu.copy_region(&v, 0, vc, past * kw, n * kw)?;
            let o = gpu.zeros(&[n, qw])?;
            let dims = CachedDims {
                n,
                past,
                heads,
                kv_heads: groups,
                hd,
            };
            gpu.attention_cached(&q, kc, vc, &o, dims)?;
            gpu.matmul(Layout::NT, &o, &p.slots[3].w, &out, n, d, qw, i > 0)?;
        }
        Ok(out)
    }
}
