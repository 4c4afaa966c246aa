//! Pipeline work: the messages of micro-shard leases (see docs/ARCHITECTURE.md, "Pipeline leases").
//!
//! A micro-batch is one sequence. A forward unit carries a stage's input; a backward unit
//! carries its input and output gradient and recomputes the forward. The contributor answers a
//! unit with [`UnitOutput`]: the partial output (or partial input gradient) summed over the
//! micro-shards it ran, or, for the head, each slice's per-token statistics. At the end of a step
//! the coordinator asks every lease for its gradient sums ([`StepGrads`]), listing the backward
//! units they cover; it then applies one optimizer step and sends each lease its new weights.

use serde::{Deserialize, Serialize};

use crate::activation::{ActEncoding, Activation};
use crate::tensor::TensorPayload;
use crate::terms::{LogHead, ShardSpec};
use crate::update::Update;

/// Direction of a pipeline unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Pass {
    /// Forward.
    Forward,
    /// Backward (recomputes the forward first).
    Backward,
}

/// The third pass of the vocab-parallel head: what the backward of a head slice needs besides
/// its input and the targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadBackward {
    /// Per-token log-sum-exp over the whole vocabulary (f32 `[seq]`).
    pub lse: TensorPayload,
    /// One over the tokens counted in the step's loss.
    pub inv_count: f32,
}

/// A pipeline work unit: one micro-batch through the named micro-shards of one stage, or
/// through several whole consecutive stages held by one lease (a span: fewer hops).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipeWork {
    /// Unit id.
    pub unit: u64,
    /// The lease it runs under.
    pub lease: u64,
    /// Optimizer step.
    pub step: u64,
    /// Micro-batch within the step.
    pub micro_batch: u64,
    /// Stages `[first, end)` in pipeline order: one stage, or a span of whole stages (never
    /// the head).
    pub stages: [u64; 2],
    /// The micro-shards to run, all held by the lease: some of one stage, or every micro-shard
    /// of each stage of a span.
    #[serde(deserialize_with = "crate::bounded::list")]
    pub shards: Vec<ShardSpec>,
    /// Forward or backward.
    pub pass: Pass,
    /// Weight version the unit must use.
    pub weights: u64,
    /// Token ids (Embed) or targets (Head), u32 `[seq]`.
    pub tokens: Option<TensorPayload>,
    /// The (first) stage's input `[seq, hidden]` (block and head stages).
    pub input: Option<Activation>,
    /// Gradient of the (last) stage's output `[seq, hidden]` (backward of embed and block
    /// stages).
    pub grad: Option<Activation>,
    /// Head backward only.
    pub head: Option<HeadBackward>,
    /// How to encode the result.
    pub output: ActEncoding,
}

/// One head slice's per-token statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadSlice {
    /// The slice.
    pub shard: ShardSpec,
    /// Per token: max logit, sum of `exp(logit - max)`, target logit (f32 `[seq, 3]`; the
    /// target logit is 0 where the slice does not own the target).
    pub stats: TensorPayload,
    /// Per token: 1 where the slice owns the target, else 0 (u8 `[seq]`).
    pub owned: TensorPayload,
}

/// What a pipeline unit produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PipeResult {
    /// Partial stage output (forward) or partial input gradient (backward), summed over the
    /// unit's micro-shards: `[seq, hidden]`.
    Activation(Activation),
    /// Head forward: each slice's statistics.
    HeadStats(#[serde(deserialize_with = "crate::bounded::list")] Vec<HeadSlice>),
    /// Embedding backward: gradients accumulated, nothing to pass on.
    Accumulated,
    /// A span of whole stages: forward, the residual stream after each stage of the span, in
    /// order; backward, the gradient of each stage's input in stage order (none for the
    /// embedding). The coordinator keeps them so that any stage can be re-run elsewhere.
    Span(#[serde(deserialize_with = "crate::bounded::list")] Vec<Activation>),
}

/// A finished pipeline unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitOutput {
    /// The unit.
    pub unit: u64,
    /// The lease it ran under.
    pub lease: u64,
    /// Weight version it used.
    pub weights: u64,
    /// The result.
    pub result: PipeResult,
    /// Latest log head seen.
    pub log_head: LogHead,
}

/// A micro-shard's gradient sums.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardGrads {
    /// The micro-shard.
    pub shard: ShardSpec,
    /// Its tensors' gradients (slices of the named Hugging Face tensors, in layout order):
    /// dense f32, or SparseLoCo-compressed with error feedback when the lease says so.
    pub tensors: Update,
}

/// A lease's gradient sums for a step, already weighted by tokens (each backward unit used
/// `1 / tokens counted in the step`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepGrads {
    /// The collect request it answers.
    pub unit: u64,
    /// The lease.
    pub lease: u64,
    /// The step.
    pub step: u64,
    /// Backward units the sums cover.
    #[serde(deserialize_with = "crate::bounded::list")]
    pub units: Vec<u64>,
    /// Per micro-shard of the lease.
    #[serde(deserialize_with = "crate::bounded::list")]
    pub shards: Vec<ShardGrads>,
    /// Latest log head seen.
    pub log_head: LogHead,
}

/// A check of another lease's step: units another lease ran, with the exact inputs it was
/// given, to run again on this lease's copy of the same micro-shards (identical weights). The
/// gradients of these units go to a separate accumulator: the lease's own sums are untouched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditWork {
    /// Audit id.
    pub audit: u64,
    /// The lease that runs it (this contributor's).
    pub lease: u64,
    /// The step.
    pub step: u64,
    /// The units, in the order they ran (their `lease` is this lease).
    #[serde(deserialize_with = "crate::bounded::list")]
    pub units: Vec<PipeWork>,
}

/// The answer to an [`AuditWork`]: every unit's result, and the dense gradient sums of the
/// backward units per micro-shard held (in the lease's order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditResult {
    /// The audit.
    pub audit: u64,
    /// The lease that ran it.
    pub lease: u64,
    /// One result per unit.
    #[serde(deserialize_with = "crate::bounded::list")]
    pub outputs: Vec<PipeResult>,
    /// Dense gradient sums of the audit's backward units, per micro-shard of the lease.
    #[serde(deserialize_with = "crate::bounded::list")]
    pub grads: Vec<ShardGrads>,
    /// Latest log head seen.
    pub log_head: LogHead,
}
