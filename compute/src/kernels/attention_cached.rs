//! Causal attention of a generation's new queries against a key/value cache: the prompt's
//! prefill and each later token reuse the keys and values of every earlier position.

use super::attention::AttnDims;
use super::{need, u32_of};
use crate::error::ComputeError;
use crate::gpu::{Gpu, Params, Tensor};
use crate::shaders::Const;

/// Shape of a cached attention call (generation): `n` new queries after `past` cached
/// positions, against a cache whose rows `0..past + n` are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedDims {
    /// New queries.
    pub n: usize,
    /// Positions before the first new query.
    pub past: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub hd: usize,
}

/// Invocations per workgroup of the cached attention kernel: one key each per tile.
const CACHED_WG: u32 = 64;

impl Gpu {
    /// `o = softmax(q k^T * scale, causal) v` for `n` new queries at positions `past..past + n`
    /// against key/value caches `k, v: [cache rows, kv_heads * hd]`.
    pub fn attention_cached(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        a: CachedDims,
    ) -> Result<(), ComputeError> {
        AttnDims {
            seq: a.n,
            sequences: 1,
            heads: a.heads,
            kv_heads: a.kv_heads,
            hd: a.hd,
        }
        .check()?;
        let kv = (a.past + a.n) * a.kv_heads * a.hd;
        need("cached attention q", q, a.n * a.heads * a.hd)?;
        need("cached attention o", o, a.n * a.heads * a.hd)?;
        need("cached attention k", k, kv)?;
        need("cached attention v", v, kv)?;
        let max = self.limits().max_compute_workgroups_per_dimension as usize;
        if a.n > max || a.heads > max {
            return Err(ComputeError::Shape(format!(
                "cached attention of {} queries and {} heads: at most {max} of each per call",
                a.n, a.heads
            )));
        }
        let hd = u32_of("head_dim", a.hd)?;
        let consts = [
            Const::U32("HD", hd),
            Const::U32("WG", CACHED_WG),
            Const::U32("ACC", hd.div_ceil(CACHED_WG)),
        ];
        let p = Params::new()
            .u(u32_of("n", a.n)?)
            .u(u32_of("past", a.past)?)
            .u(u32_of("heads", a.heads)?)
            .u(u32_of("kv_heads", a.kv_heads)?)
            .f((1.0 / (a.hd as f64).sqrt()) as f32);
        self.dispatch(
            "attention_cached",
            &consts,
            &[&q.buf, &k.buf, &v.buf, &o.buf],
            p,
            (a.n as u32, a.heads as u32, 1),
        )
    }
}
