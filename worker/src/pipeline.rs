//! A pipeline lease on the GPU: the lease's micro-shards, the forward and backward of a unit
//! (one micro-batch through some micro-shards of one stage, the backward recomputing its
//! forward), gradient sums accumulated across the step's backward units, and new weights after
//! each step.

use tessera_compute::shard::{GpuShard, MicroShard, Rows, ShardTensors};
use tessera_compute::{Gpu, ModelConfig, Tensor};
use tessera_protocol::messages::SyncMode;
use tessera_protocol::pipeline::{HeadSlice, Pass, PipeResult, PipeWork, ShardGrads};
use tessera_protocol::{ActEncoding, Activation, TensorPayload};
use tessera_train::shards::{from_wire, grads_to_wire, to_wire, GradFeedback};
use tessera_train::sparseloco::SparseConfig;

use crate::error::WorkerError;

/// A micro-shard from the wire, checked against the model (for reports by clients).
pub fn shard_from_wire(
    s: &tessera_protocol::messages::ShardSpec,
    cfg: &ModelConfig,
) -> Result<MicroShard, WorkerError> {
    Ok(from_wire(s, cfg)?)
}

/// A pipeline lease's micro-shards resident on the GPU.
pub struct PipeReplica {
    cfg: ModelConfig,
    lease: u64,
    seq: usize,
    version: u64,
    shards: Vec<GpuShard>,
    /// Backward units whose gradients are in the accumulators and not yet sent.
    owed: Vec<u64>,
    /// Error feedback per micro-shard when gradient sums travel compressed.
    feedback: Option<Vec<GradFeedback>>,
}

/// The stage of a micro-shard in pipeline order: embed, then attention and MLP per layer, then
/// the head.
fn stage_of(s: &MicroShard, layers: usize) -> usize {
    match s {
        MicroShard::Embed { .. } => 0,
        MicroShard::Attn { layer, .. } => 1 + 2 * layer,
        MicroShard::Mlp { layer, .. } => 2 + 2 * layer,
        MicroShard::Head { .. } => 1 + 2 * layers,
    }
}

/// A unit that does not fit this lease's micro-shards or the protocol's shapes.
fn bad(msg: String) -> WorkerError {
    WorkerError::unexpected(tessera_protocol::Code::WrongShape, msg)
}

impl PipeReplica {
    /// Uploads the lease's micro-shards, sized for one sequence of `seq` tokens.
    pub fn new(
        gpu: &Gpu,
        cfg: ModelConfig,
        lease: u64,
        version: u64,
        seq: usize,
        weights: &[ShardTensors],
        grads: &SyncMode,
    ) -> Result<Self, WorkerError> {
        let shards = weights
            .iter()
            .map(|w| GpuShard::new(gpu, &cfg, w, seq))
            .collect::<Result<_, _>>()?;
        let feedback = match SparseConfig::from_sync(grads) {
            Some(sc) => {
                sc.validate()?;
                Some(weights.iter().map(|w| GradFeedback::new(w, sc)).collect())
            }
            None => None,
        };
        Ok(PipeReplica {
            cfg,
            lease,
            seq,
            version,
            shards,
            owed: Vec::new(),
            feedback,
        })
    }

    /// The lease.
    pub fn lease(&self) -> u64 {
        self.lease
    }

    /// The model.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Weight version held.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The micro-shards held.
    pub fn shards(&self) -> Vec<MicroShard> {
        self.shards.iter().map(|s| s.shard().clone()).collect()
    }

    /// Overwrites the weights with a new version (gradient sums stay).
    pub fn set_weights(
        &mut self,
        gpu: &Gpu,
        version: u64,
        weights: &[ShardTensors],
    ) -> Result<(), WorkerError> {
        if weights.len() != self.shards.len() {
            return Err(bad(format!(
                "{} micro-shards of weights for a lease of {}",
                weights.len(),
                self.shards.len()
            )));
        }
        for (s, w) in self.shards.iter().zip(weights) {
            s.write_params(gpu, w)?;
        }
        self.version = version;
        Ok(())
    }

    fn activation(&self, a: Option<&Activation>, what: &str) -> Result<Vec<f32>, WorkerError> {
        let a = a.ok_or_else(|| bad(format!("the unit carries no {what}")))?;
        Ok(a.decode_shaped(&[self.seq, self.cfg.hidden_size])?)
    }

    fn tokens(&self, t: Option<&TensorPayload>) -> Result<Vec<u32>, WorkerError> {
        let t = t.ok_or_else(|| bad("the unit carries no tokens".into()))?;
        t.expect_shape(&[self.seq])?;
        let ids = t.to_u32()?;
        if ids.iter().any(|&x| x as usize >= self.cfg.vocab_size) {
            return Err(bad("token id outside the vocabulary".into()));
        }
        Ok(ids)
    }

    fn sum(gpu: &Gpu, parts: Vec<Tensor>) -> Result<Tensor, WorkerError> {
        let mut parts = parts.into_iter();
        let acc = parts
            .next()
            .ok_or_else(|| bad("a unit with no micro-shards".into()))?;
        for p in parts {
            gpu.add_assign(&acc, &p, p.len())?;
        }
        Ok(acc)
    }

    async fn encode(
        &self,
        gpu: &Gpu,
        t: &Tensor,
        enc: ActEncoding,
    ) -> Result<PipeResult, WorkerError> {
        let v = gpu.read(t).await?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(WorkerError::Compute(tessera_compute::ComputeError::Shape(
                "the unit's result holds NaN or infinity".into(),
            )));
        }
        Ok(PipeResult::Activation(Activation::encode(
            &[self.seq, self.cfg.hidden_size],
            &v,
            enc,
        )))
    }

    /// Runs a unit and returns its result.
    pub async fn work(&mut self, gpu: &Gpu, w: &PipeWork) -> Result<PipeResult, WorkerError> {
        let (idx, stages) = self.locate(w)?;
        let layers = self.cfg.num_hidden_layers;
        let (a, b) = (stages.start, stages.end);
        if b - a > 1 {
            if b == 2 + 2 * layers {
                return Err(bad(format!(
                    "unit {}: a span never includes the head",
                    w.unit
                )));
            }
            return self.span(gpu, w, &idx, a..b).await;
        }
        let rows = Rows {
            seq: self.seq,
            sequences: 1,
        };
        let (seq, d) = (self.seq, self.cfg.hidden_size);
        let shards: Vec<&GpuShard> = idx.iter().map(|&i| &self.shards[i]).collect();
        let first = self.shards[idx[0]].shard().clone();
        let result = match (&first, w.pass) {
            (MicroShard::Embed { .. }, Pass::Forward) => {
                let ids = self.tokens(w.tokens.as_ref())?;
                let parts = shards
                    .iter()
                    .map(|s| s.embed_forward(gpu, &ids))
                    .collect::<Result<_, _>>()?;
                let out = Self::sum(gpu, parts)?;
                self.encode(gpu, &out, w.output).await?
            }
            (MicroShard::Embed { .. }, Pass::Backward) => {
                let ids = self.tokens(w.tokens.as_ref())?;
                let g = gpu.upload(
                    &self.activation(w.grad.as_ref(), "output gradient")?,
                    &[seq, d],
                )?;
                for s in &shards {
                    s.embed_backward(gpu, &ids, &g)?;
                }
                gpu.check()?;
                PipeResult::Accumulated
            }
            (MicroShard::Attn { .. } | MicroShard::Mlp { .. }, Pass::Forward) => {
                let h = gpu.upload(&self.activation(w.input.as_ref(), "input")?, &[seq, d])?;
                let parts = shards
                    .iter()
                    .map(|s| s.block_forward(gpu, &h, rows))
                    .collect::<Result<_, _>>()?;
                let out = Self::sum(gpu, parts)?;
                self.encode(gpu, &out, w.output).await?
            }
            (MicroShard::Attn { .. } | MicroShard::Mlp { .. }, Pass::Backward) => {
                let h = gpu.upload(&self.activation(w.input.as_ref(), "input")?, &[seq, d])?;
                let g = gpu.upload(
                    &self.activation(w.grad.as_ref(), "output gradient")?,
                    &[seq, d],
                )?;
                let parts = shards
                    .iter()
                    .map(|s| s.block_backward(gpu, &h, &g, rows))
                    .collect::<Result<_, _>>()?;
                let out = Self::sum(gpu, parts)?;
                self.encode(gpu, &out, w.output).await?
            }
            (MicroShard::Head { .. }, Pass::Forward) => self.head_stats(gpu, &shards, w).await?,
            (MicroShard::Head { .. }, Pass::Backward) => {
                let targets = self.tokens(w.tokens.as_ref())?;
                let h = gpu.upload(&self.activation(w.input.as_ref(), "input")?, &[seq, d])?;
                let hb = w
                    .head
                    .as_ref()
                    .ok_or_else(|| bad("head backward without log-sum-exp".into()))?;
                hb.lse.expect_shape(&[seq])?;
                let lse = hb.lse.to_f32()?;
                let parts = shards
                    .iter()
                    .map(|s| s.head_backward(gpu, &h, &targets, &lse, hb.inv_count, rows))
                    .collect::<Result<_, _>>()?;
                let out = Self::sum(gpu, parts)?;
                self.encode(gpu, &out, w.output).await?
            }
        };
        if w.pass == Pass::Backward {
            self.owed.push(w.unit);
        }
        Ok(result)
    }

    /// The indices of the micro-shards unit `w` names among this lease's, and its stages;
    /// refused when it needs other weights, names micro-shards this lease does not hold, or
    /// stages they do not sit in.
    fn locate(&self, w: &PipeWork) -> Result<(Vec<usize>, std::ops::Range<usize>), WorkerError> {
        if w.weights != self.version || w.lease != self.lease {
            return Err(bad(format!(
                "unit {} needs lease {} weights {}; this replica holds lease {} weights {}",
                w.unit, w.lease, w.weights, self.lease, self.version
            )));
        }
        let mut idx = Vec::with_capacity(w.shards.len());
        for spec in &w.shards {
            let s = from_wire(spec, &self.cfg)?;
            let i = self
                .shards
                .iter()
                .position(|g| *g.shard() == s)
                .ok_or_else(|| {
                    bad(format!(
                        "unit {} names {s}, which this lease does not hold",
                        w.unit
                    ))
                })?;
            idx.push(i);
        }
        if idx.is_empty() {
            return Err(bad(format!("unit {} names no micro-shard", w.unit)));
        }
        let layers = self.cfg.num_hidden_layers;
        let [a, b] = w.stages;
        let (a, b) = (a as usize, b as usize);
        if a >= b
            || b > 2 + 2 * layers
            || idx
                .iter()
                .any(|&i| !(a..b).contains(&stage_of(self.shards[i].shard(), layers)))
        {
            return Err(bad(format!(
                "unit {} names micro-shards outside its stages {a}..{b}",
                w.unit
            )));
        }
        Ok((idx, a..b))
    }

    /// The head's statistics of unit `w` (forward) on `shards`: per token the largest logit,
    /// the sum of exponentials and the target's logit where a slice owns the target.
    async fn head_stats(
        &self,
        gpu: &Gpu,
        shards: &[&GpuShard],
        w: &PipeWork,
    ) -> Result<PipeResult, WorkerError> {
        let (seq, d) = (self.seq, self.cfg.hidden_size);
        let rows = Rows {
            seq: self.seq,
            sequences: 1,
        };
        let targets = self.tokens(w.tokens.as_ref())?;
        let h = gpu.upload(&self.activation(w.input.as_ref(), "input")?, &[seq, d])?;
        let mut slices = Vec::new();
        for s in shards {
            let st = s.head_forward(gpu, &h, &targets, rows).await?;
            let mut stats = Vec::with_capacity(seq * 3);
            let mut owned = Vec::with_capacity(seq);
            for r in 0..seq {
                stats.push(st.max[r] as f32);
                stats.push(st.sum_exp[r] as f32);
                stats.push(st.target_logit[r].unwrap_or(0.0) as f32);
                owned.push(u8::from(st.target_logit[r].is_some()));
            }
            slices.push(HeadSlice {
                shard: to_wire(s.shard()),
                stats: TensorPayload::from_f32(&[seq, 3], &stats),
                owned: TensorPayload::from_u8(&[seq], owned),
            });
        }
        Ok(PipeResult::HeadStats(slices))
    }

    /// The forward or backward of a span of whole stages `stages`: forward returns the residual
    /// after each stage; backward recomputes the forward from the span's input, then returns the
    /// gradient of each stage's input (the embedding's backward only accumulates).
    async fn span(
        &mut self,
        gpu: &Gpu,
        w: &PipeWork,
        idx: &[usize],
        stages: std::ops::Range<usize>,
    ) -> Result<PipeResult, WorkerError> {
        let (seq, d) = (self.seq, self.cfg.hidden_size);
        let rows = Rows { seq, sequences: 1 };
        let layers = self.cfg.num_hidden_layers;
        let of = |k: usize| -> Vec<&GpuShard> {
            idx.iter()
                .map(|&i| &self.shards[i])
                .filter(|s| stage_of(s.shard(), layers) == k)
                .collect()
        };
        if stages.clone().any(|k| of(k).is_empty()) {
            return Err(bad(format!(
                "unit {} has a stage with no micro-shard",
                w.unit
            )));
        }
        let ids = if stages.start == 0 {
            Some(self.tokens(w.tokens.as_ref())?)
        } else {
            None
        };
        // Forward through the span, keeping each stage's input.
        let mut h = match &ids {
            Some(_) => None,
            None => Some(gpu.upload(&self.activation(w.input.as_ref(), "input")?, &[seq, d])?),
        };
        let mut inputs = Vec::new();
        let mut outs = Vec::new();
        for k in stages.clone() {
            let next = match (&ids, k) {
                (Some(ids), 0) => {
                    let parts = of(0)
                        .iter()
                        .map(|s| s.embed_forward(gpu, ids))
                        .collect::<Result<_, _>>()?;
                    Self::sum(gpu, parts)?
                }
                _ => {
                    let x = h
                        .as_ref()
                        .ok_or_else(|| bad("a span with no input".into()))?;
                    let parts: Vec<Tensor> = of(k)
                        .iter()
                        .map(|s| s.block_forward(gpu, x, rows))
                        .collect::<Result<_, _>>()?;
                    let acc = gpu.zeros(&[seq, d])?;
                    gpu.copy(x, &acc)?;
                    for p in &parts {
                        gpu.add_assign(&acc, p, p.len())?;
                    }
                    acc
                }
            };
            inputs.push(h.replace(next));
        }
        if w.pass == Pass::Forward {
            // The residual after each stage: the inputs of the following stages and the end.
            let mut after: Vec<&Tensor> = inputs.iter().skip(1).flatten().collect();
            let end = h.as_ref().ok_or_else(|| bad("an empty span".into()))?;
            after.push(end);
            for t in after {
                outs.push(self.read_activation(gpu, t, w.output).await?);
            }
            return Ok(PipeResult::Span(outs));
        }
        // Backward from the gradient of the span's output, stage by stage.
        let dh = gpu.upload(
            &self.activation(w.grad.as_ref(), "output gradient")?,
            &[seq, d],
        )?;
        for (k, input) in stages.clone().zip(inputs).rev() {
            match (&ids, k) {
                (Some(ids), 0) => {
                    for s in of(0) {
                        s.embed_backward(gpu, ids, &dh)?;
                    }
                }
                _ => {
                    let x = input.ok_or_else(|| bad("a span with no input".into()))?;
                    let parts: Vec<Tensor> = of(k)
                        .iter()
                        .map(|s| s.block_backward(gpu, &x, &dh, rows))
                        .collect::<Result<_, _>>()?;
                    for p in &parts {
                        gpu.add_assign(&dh, p, p.len())?;
                    }
                    outs.push(self.read_activation(gpu, &dh, w.output).await?);
                }
            }
        }
        gpu.check()?;
        outs.reverse();
        self.owed.push(w.unit);
        Ok(PipeResult::Span(outs))
    }

    async fn read_activation(
        &self,
        gpu: &Gpu,
        t: &Tensor,
        enc: ActEncoding,
    ) -> Result<Activation, WorkerError> {
        match self.encode(gpu, t, enc).await? {
            PipeResult::Activation(a) => Ok(a),
            _ => Err(bad("an activation was expected".into())),
        }
    }

    /// Runs another lease's units again to check them: every unit's result, and the dense
    /// gradient sums of those units per micro-shard. The lease's own gradient sums and the
    /// units they cover are set aside and put back afterwards, untouched.
    pub async fn audit(
        &mut self,
        gpu: &Gpu,
        units: &[PipeWork],
    ) -> Result<(Vec<PipeResult>, Vec<ShardGrads>), WorkerError> {
        let mut stash = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            stash.push(s.read_grads(gpu).await?);
            s.zero_grads(gpu)?;
        }
        let owed = std::mem::take(&mut self.owed);
        let mut run = async || -> Result<_, WorkerError> {
            let mut outputs = Vec::with_capacity(units.len());
            for w in units {
                outputs.push(self.work(gpu, w).await?);
            }
            let mut grads = Vec::with_capacity(self.shards.len());
            for s in &self.shards {
                grads.push(grads_to_wire(&s.read_grads(gpu).await?));
            }
            Ok((outputs, grads))
        };
        let result = run().await;
        for (s, g) in self.shards.iter().zip(&stash) {
            s.write_grads(gpu, g)?;
        }
        self.owed = owed;
        result
    }

    /// The gradient sums of every micro-shard and the backward units they cover; the
    /// accumulators start again from zero.
    pub async fn take_grads(
        &mut self,
        gpu: &Gpu,
    ) -> Result<(Vec<u64>, Vec<ShardGrads>), WorkerError> {
        let mut out = Vec::with_capacity(self.shards.len());
        for (i, s) in self.shards.iter().enumerate() {
            let sums = s.read_grads(gpu).await?;
            out.push(match self.feedback.as_mut().and_then(|f| f.get_mut(i)) {
                Some(fb) => fb.compress(&sums),
                None => grads_to_wire(&sums),
            });
            s.zero_grads(gpu)?;
        }
        Ok((std::mem::take(&mut self.owed), out))
    }
}
