//! What one micro-shard costs for one micro-batch of one sequence: parameters, resident and
//! working memory, its largest buffer, FLOPs and wire bytes.
//!
//! Working memory follows the buffers the compute crate's kernels allocate (`compute/src/shard`):
//! the backward (which recomputes the forward) is the peak, and every buffer it allocates is
//! counted as alive at once. FLOPs count matrix products only (`2mnk`; causal attention as half
//! of the full score matrix); norms, RoPE and SwiGLU are elementwise and left out.

use std::fmt;

use tessera_compute::shard::MicroShard;
use tessera_compute::ModelConfig;

use crate::PlanOptions;

/// Bytes of an f32, the precision of weights, gradients and activations on the GPU.
const F32: u64 = 4;
/// Bytes of a token id or target (u32).
const ID: u64 = 4;
/// Bytes per token of the head's forward statistics: max, sum-exp and target logit, in f32.
const HEAD_STATS: u64 = 3 * 4;

/// The four kinds of micro-shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Embedding vocabulary rows.
    Embed,
    /// Attention kv groups of a layer.
    Attn,
    /// MLP hidden columns of a layer.
    Mlp,
    /// LM head vocabulary columns.
    Head,
}

impl Kind {
    /// The kind of `shard`.
    pub fn of(shard: &MicroShard) -> Kind {
        match shard {
            MicroShard::Embed { .. } => Kind::Embed,
            MicroShard::Attn { .. } => Kind::Attn,
            MicroShard::Mlp { .. } => Kind::Mlp,
            MicroShard::Head { .. } => Kind::Head,
        }
    }

    /// What one unit of this kind is, e.g. "kv group".
    pub fn unit(self) -> &'static str {
        match self {
            Kind::Embed => "vocab row",
            Kind::Attn => "kv group",
            Kind::Mlp => "hidden column",
            Kind::Head => "vocab column",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Embed => "Embed",
            Kind::Attn => "Attn",
            Kind::Mlp => "Mlp",
            Kind::Head => "Head",
        })
    }
}

/// The cost of one micro-shard for one micro-batch (one sequence of `seq` tokens).
#[derive(Clone, Debug, PartialEq)]
pub struct ShardCost {
    /// The micro-shard.
    pub shard: MicroShard,
    /// Index of its stage in pipeline order (0 is Embed).
    pub stage: usize,
    /// Its share of the model's parameters. A norm weight replicated in every slice of a stage
    /// is counted once, in the slice that starts at unit 0, so the shares sum to the model's
    /// parameter count.
    pub params: u64,
    /// What a replica keeps resident: f32 weights and f32 gradient accumulators of every tensor
    /// it holds (its copy of the norm weight included), plus the RoPE table of an attention
    /// shard. The AdamW moments are not here: the authoritative optimizer state of a
    /// micro-shard stays with the coordinator (docs/ARCHITECTURE.md, "Pipeline leases").
    pub state_bytes: u64,
    /// Transient GPU memory for one forward and one backward (with recomputation) of one
    /// sequence: input, output gradient, normed input and its statistics, projections,
    /// attention output and softmax statistics, gate/up/SwiGLU, the slice's logits, gradients.
    pub work_bytes: u64,
    /// The largest single buffer (weight slice or activation), to compare with the binding
    /// limit.
    pub largest_tensor: u64,
    /// Forward FLOPs per micro-batch.
    pub fwd_flops: u64,
    /// Backward FLOPs per micro-batch, recomputing the forward it needs.
    pub bwd_flops: u64,
    /// Forward wire bytes per micro-batch: input in, partial output out.
    pub fwd_bytes: u64,
    /// Backward wire bytes per micro-batch: input and output gradient in, input gradient out.
    pub bwd_bytes: u64,
}

/// Forward and backward wire bytes per micro-batch of a span of stages from `first` to `last`
/// (one micro-shard, several of one stage, or whole consecutive stages: what crosses its edge).
///
/// An `Embed` input is token ids and has no input gradient; a `Head` takes the targets, returns
/// per-token statistics (max, sum-exp, target logit) and its backward takes the per-token
/// log-sum-exp instead of an output gradient.
pub fn wire_bytes(
    model: &ModelConfig,
    options: &PlanOptions,
    first: &MicroShard,
    last: &MicroShard,
) -> (u64, u64) {
    let n = options.seq as u64;
    let act = n * model.hidden_size as u64 * options.act_bytes;
    let ends_in_head = matches!(last, MicroShard::Head { .. });
    let starts_at_embed = matches!(first, MicroShard::Embed { .. });
    let input = if starts_at_embed { n * ID } else { act } + if ends_in_head { n * ID } else { 0 };
    let (output, output_grad) = if ends_in_head {
        (n * HEAD_STATS, n * F32)
    } else {
        (act, act)
    };
    let input_grad = if starts_at_embed { 0 } else { act };
    (input + output, input + output_grad + input_grad)
}

impl ShardCost {
    /// The cost of `shard` (in stage `stage`) of `model` under `options`.
    pub fn new(
        model: &ModelConfig,
        shard: &MicroShard,
        stage: usize,
        options: &PlanOptions,
    ) -> ShardCost {
        let n = options.seq as u64;
        let d = model.hidden_size as u64;
        let hd = model.head_dim as u64;
        let u = shard.units().len() as u64;
        // A norm weight (width d) is replicated in every Attn, Mlp and Head slice.
        let norm = if matches!(shard, MicroShard::Embed { .. }) {
            0
        } else {
            d
        };
        let owns_norm = shard.units().start == 0;
        let (sliced, extra_state, work, biggest, fwd, bwd) = match shard {
            MicroShard::Embed { .. } => (
                u * d,
                0,
                // Backward: ids, row index (starts and order) and the output gradient.
                F32 * n * d + ID * (2 * n + u + 1),
                (u * d).max(n * d) * F32,
                0,
                0,
            ),
            MicroShard::Attn { .. } => {
                let heads = u * model.group_size() as u64;
                let (qw, kw) = (heads * hd, u * hd);
                let proj = 2 * n * d * (qw + 2 * kw);
                let out = 2 * n * d * qw;
                // One causal n x n x hd product per head: half of the full score matrix.
                let causal = n * n * hd * heads;
                (
                    2 * qw * d + 2 * kw * d,
                    // RoPE table: cos and sin of seq positions x hd/2 frequencies.
                    F32 * n * hd,
                    // h, dout, xn, dxn, dh; rstd; q, o, d_o, dq; k, v, dk, dv; lse, delta.
                    F32 * n * (5 * d + 1 + 4 * qw + 4 * kw + 2 * heads),
                    (qw * d).max(n * d).max(n * qw) * F32,
                    proj + out + 2 * causal,
                    // Recompute q/k/v and attention, o-projection weight and input gradients,
                    // flash backward (scores, dV, dP, dQ, dK), q/k/v weight and input gradients.
                    proj + 2 * causal + 2 * out + 5 * causal + 2 * proj,
                )
            }
            MicroShard::Mlp { .. } => (
                3 * u * d,
                0,
                // h, dout, xn, dxn, dh; rstd; gate, up, act, their gradients.
                F32 * n * (5 * d + 1 + 6 * u),
                (u * d).max(n * d).max(n * u) * F32,
                6 * n * d * u,
                // Recompute gate and up; down weight and input gradients; gate/up weight and
                // input gradients.
                4 * n * d * u + 4 * n * d * u + 8 * n * d * u,
            ),
            MicroShard::Head { .. } => (
                u * d,
                0,
                // h, xn, dxn, dh; targets, lse, rstd; the slice's logits.
                F32 * (4 * n * d + 3 * n + n * u),
                (u * d).max(n * d).max(n * u) * F32,
                2 * n * d * u,
                6 * n * d * u,
            ),
        };
        let (fwd_bytes, bwd_bytes) = wire_bytes(model, options, shard, shard);
        ShardCost {
            shard: shard.clone(),
            stage,
            params: sliced + if owns_norm { norm } else { 0 },
            state_bytes: 2 * F32 * (sliced + norm) + extra_state,
            work_bytes: work,
            largest_tensor: biggest,
            fwd_flops: fwd,
            bwd_flops: bwd,
            fwd_bytes,
            bwd_bytes,
        }
    }

    /// The micro-shard's kind.
    pub fn kind(&self) -> Kind {
        Kind::of(&self.shard)
    }

    /// Resident plus working memory of a lease holding only this micro-shard.
    pub fn bytes(&self) -> u64 {
        self.state_bytes + self.work_bytes
    }
}
