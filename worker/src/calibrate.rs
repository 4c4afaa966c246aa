//! Calibration of the check tolerance: a fixed, seeded set of work run on this machine's
//! adapter, whose outputs another adapter's run is compared with. Honest GPUs do not agree bit
//! for bit (WGSL allows ULP-level error in `exp` and `inverseSqrt`, and fused multiply-add), so
//! the coordinator compares duplicated work within a tolerance; `tessera calibrate` measures how
//! far two honest adapters drift on the same work and suggests that tolerance.
//!
//! The work is what contributors run: one micro-batch forward and backward through a layer's
//! micro-shards as pipeline units (embedding, attention, MLP, head, each as its own unit, the
//! activations chained as the coordinator chains them) with the step's gradient sums, and one
//! whole-model replica round of AdamW inner steps with its pseudo-gradient.

use serde::{Deserialize, Serialize};
use tessera_compute::hf::tensor_shapes;
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ModelParams;
use tessera_compute::shard::{MicroShard, ShardTensors};
use tessera_compute::{Gpu, ModelConfig};
use tessera_protocol::messages::{InnerOptimizer, Lease, SyncMode, Update, Work};
use tessera_protocol::pipeline::{HeadBackward, Pass, PipeResult, PipeWork};
use tessera_protocol::{ActEncoding, Activation, TensorPayload};
use tessera_train::drift::{rel_l2, rel_max};
use tessera_train::shards::to_wire;

use crate::error::WorkerError;
use crate::pipeline::PipeReplica;
use crate::replica::Replica;

/// The shape of the calibration work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSpec {
    /// The model (`config.json`).
    pub config_json: String,
    /// Tokens per pipeline micro-batch and per replica sequence.
    pub seq: u64,
    /// Sequences per inner step of the replica round.
    pub batch: u64,
    /// Inner steps of the replica round.
    pub steps: u64,
    /// Seed of the weights and tokens.
    pub seed: u64,
}

/// One named output, as f32 values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// What it is (`pipeline/forward/attn`, `replica/pseudo-gradient`, ...).
    pub name: String,
    /// Its values.
    pub values: TensorPayload,
}

/// The outputs of the calibration work on one adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The work.
    pub spec: CalibrationSpec,
    /// The adapter that ran it (name, backend, driver).
    pub adapter: String,
    /// Outputs in a fixed order.
    pub outputs: Vec<Output>,
}

/// How two adapters differ on one output.
#[derive(Clone, Debug, PartialEq)]
pub struct Drift {
    /// The output.
    pub name: String,
    /// `|a - b|₂ / |b|₂`: the measure the coordinator's checks use.
    pub rel_l2: f64,
    /// Largest elementwise difference over the largest magnitude of `b`.
    pub rel_max: f64,
}

fn tokens(r: &mut SplitMix, n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|_| (r.next_u64() % vocab as u64) as u32)
        .collect()
}

fn values(name: &str, v: &[f32]) -> Output {
    Output {
        name: name.to_string(),
        values: TensorPayload::from_f32(&[v.len()], v),
    }
}

fn activation(r: &PipeResult, name: &str) -> Result<Vec<f32>, WorkerError> {
    match r {
        PipeResult::Activation(a) => Ok(a.decode()?),
        other => Err(WorkerError::Calibration(format!(
            "calibration unit {name} returned {other:?} instead of an activation"
        ))),
    }
}

fn dense(u: &Update) -> Result<Vec<f32>, WorkerError> {
    match u {
        Update::Dense(ts) => {
            let mut out = Vec::new();
            for t in ts {
                out.extend(t.tensor.to_f32()?);
            }
            Ok(out)
        }
        _ => Err(WorkerError::Calibration(
            "calibration expects dense tensors".into(),
        )),
    }
}

/// The outputs in the order they are produced, each announced to `progress`.
struct Outputs<P: FnMut(&str)> {
    list: Vec<Output>,
    progress: P,
}

impl<P: FnMut(&str)> Outputs<P> {
    fn push(&mut self, name: &str, v: &[f32]) {
        self.list.push(values(name, v));
        (self.progress)(name);
    }
}

/// Layer 0's micro-shards, each run as its own pipeline unit, the activations chained as the
/// coordinator chains them.
struct Chain<'g> {
    gpu: &'g Gpu,
    replica: PipeReplica,
    shards: [MicroShard; 4],
    /// Each micro-shard's stage.
    stage: [u64; 4],
    /// Units sent so far.
    sent: u64,
    seq: usize,
    width: usize,
}

impl Chain<'_> {
    /// A unit of micro-shard `s` in direction `pass`, with no inputs yet.
    fn unit(&mut self, s: usize, pass: Pass) -> PipeWork {
        self.sent += 1;
        PipeWork {
            unit: self.sent,
            lease: 1,
            step: 0,
            micro_batch: 0,
            stages: [self.stage[s], self.stage[s] + 1],
            shards: vec![to_wire(&self.shards[s])],
            pass,
            weights: 0,
            tokens: None,
            input: None,
            grad: None,
            head: None,
            output: ActEncoding::F32,
        }
    }

    /// `v` as an f32 activation of the chain's shape.
    fn act(&self, v: &[f32]) -> Activation {
        Activation::encode(&[self.seq, self.width], v, ActEncoding::F32)
    }

    /// Runs `w`.
    async fn run(&mut self, w: &PipeWork) -> Result<PipeResult, WorkerError> {
        self.replica.work(self.gpu, w).await
    }

    /// Runs `w`, whose result is an activation, recorded as output `name`.
    async fn activation(
        &mut self,
        w: PipeWork,
        name: &str,
        out: &mut Outputs<impl FnMut(&str)>,
    ) -> Result<Vec<f32>, WorkerError> {
        let v = activation(&self.run(&w).await?, name)?;
        out.push(name, &v);
        Ok(v)
    }
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// The log-sum-exp of each token from the head's statistics (max, sum of exponentials, target
/// logit per token).
fn log_sum_exp(r: PipeResult, seq: usize) -> Result<Vec<f32>, WorkerError> {
    let stats = match r {
        PipeResult::HeadStats(s) if s.len() == 1 => s[0].stats.to_f32()?,
        other => {
            return Err(WorkerError::Calibration(format!(
                "the head unit returned {other:?} instead of one slice's statistics"
            )))
        }
    };
    if stats.len() != 3 * seq {
        return Err(WorkerError::Calibration(format!(
            "{} head statistics for {seq} tokens",
            stats.len()
        )));
    }
    Ok(stats
        .chunks(3)
        .map(|s| s[0] + s[1].max(f32::MIN_POSITIVE).ln())
        .collect())
}

/// One micro-batch forward and backward through layer 0's micro-shards as pipeline units,
/// then the step's gradient sums.
async fn pipeline_outputs(
    gpu: &Gpu,
    cfg: &ModelConfig,
    params: &ModelParams<f32>,
    seq: usize,
    r: &mut SplitMix,
    out: &mut Outputs<impl FnMut(&str)>,
) -> Result<(), WorkerError> {
    let shards = [
        MicroShard::Embed {
            rows: 0..cfg.vocab_size,
        },
        MicroShard::Attn {
            layer: 0,
            groups: 0..cfg.num_key_value_heads,
        },
        MicroShard::Mlp {
            layer: 0,
            cols: 0..cfg.intermediate_size,
        },
        MicroShard::Head {
            cols: 0..cfg.vocab_size,
        },
    ];
    let tensors = shards
        .iter()
        .map(|s| ShardTensors::from_model(cfg, params, s))
        .collect::<Result<Vec<_>, _>>()?;
    let replica = PipeReplica::new(gpu, cfg.clone(), 1, 0, seq, &tensors, &SyncMode::Dense)?;
    let mut c = Chain {
        gpu,
        replica,
        stage: [0, 1, 2, 1 + 2 * cfg.num_hidden_layers as u64],
        shards,
        sent: 0,
        seq,
        width: cfg.hidden_size,
    };
    let ids = TensorPayload::from_u32(&[seq], &tokens(r, seq, cfg.vocab_size));
    let targets = TensorPayload::from_u32(&[seq], &tokens(r, seq, cfg.vocab_size));

    // Forward: embedding, attention and MLP (each added to the residual stream), head.
    let w = PipeWork {
        tokens: Some(ids.clone()),
        ..c.unit(0, Pass::Forward)
    };
    let h1 = c.activation(w, "pipeline/forward/embed", out).await?;
    let w = PipeWork {
        input: Some(c.act(&h1)),
        ..c.unit(1, Pass::Forward)
    };
    let h2 = add(&h1, &c.activation(w, "pipeline/forward/attn", out).await?);
    let w = PipeWork {
        input: Some(c.act(&h2)),
        ..c.unit(2, Pass::Forward)
    };
    let h3 = add(&h2, &c.activation(w, "pipeline/forward/mlp", out).await?);
    let w = PipeWork {
        input: Some(c.act(&h3)),
        tokens: Some(targets.clone()),
        ..c.unit(3, Pass::Forward)
    };
    let lse = log_sum_exp(c.run(&w).await?, seq)?;
    out.push("pipeline/forward/head", &lse);

    // Backward, the gradients chained back the same way.
    let w = PipeWork {
        input: Some(c.act(&h3)),
        tokens: Some(targets),
        head: Some(HeadBackward {
            lse: TensorPayload::from_f32(&[seq], &lse),
            inv_count: 1.0 / seq as f32,
        }),
        ..c.unit(3, Pass::Backward)
    };
    let g3 = c.activation(w, "pipeline/backward/head", out).await?;
    let w = PipeWork {
        input: Some(c.act(&h2)),
        grad: Some(c.act(&g3)),
        ..c.unit(2, Pass::Backward)
    };
    let g2 = add(&g3, &c.activation(w, "pipeline/backward/mlp", out).await?);
    let w = PipeWork {
        input: Some(c.act(&h1)),
        grad: Some(c.act(&g2)),
        ..c.unit(1, Pass::Backward)
    };
    let g1 = add(&g2, &c.activation(w, "pipeline/backward/attn", out).await?);
    let w = PipeWork {
        tokens: Some(ids),
        grad: Some(c.act(&g1)),
        ..c.unit(0, Pass::Backward)
    };
    c.run(&w).await?;
    let (_, grads) = c.replica.take_grads(gpu).await?;
    for (s, g) in c.shards.iter().zip(&grads) {
        out.push(&format!("pipeline/gradient-sums/{s}"), &dense(&g.tensors)?);
    }
    Ok(())
}

/// One whole-model replica round of AdamW inner steps: its pseudo-gradient and loss sum.
async fn replica_outputs(
    gpu: &Gpu,
    spec: &CalibrationSpec,
    cfg: &ModelConfig,
    params: ModelParams<f32>,
    r: &mut SplitMix,
    out: &mut Outputs<impl FnMut(&str)>,
) -> Result<(), WorkerError> {
    let (steps, batch, seq) = (spec.steps as usize, spec.batch as usize, spec.seq as usize);
    let lease = Lease {
        lease: 2,
        config_json: spec.config_json.clone(),
        shards: Vec::new(),
        optimizer: InnerOptimizer::AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        },
        clip: Some(1.0),
        sync: SyncMode::Dense,
        rows: (batch * seq) as u64,
        version: 0,
        frames: 0,
        activations: None,
        fresh_units: true,
    };
    let mut whole = Replica::new(gpu, cfg.clone(), &lease, params, batch * seq)?;
    let work = Work {
        unit: 1,
        lease: 2,
        round: 0,
        slot: 0,
        weights: 0,
        tokens: TensorPayload::from_u32(
            &[steps, batch, seq + 1],
            &tokens(r, steps * batch * (seq + 1), cfg.vocab_size),
        ),
        lrs: vec![1e-3; steps],
        dense: false,
    };
    let done = whole.work(gpu, &work).await?;
    let pg = dense(&done.update)?;
    debug_assert_eq!(
        pg.len(),
        tensor_shapes(cfg)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum::<usize>()
    );
    out.push("replica/pseudo-gradient", &pg);
    out.list
        .push(values("replica/loss-sum", &[done.loss_sum as f32]));
    Ok(())
}

/// Runs the calibration work on `gpu`; `progress` is told the name of each output as it is
/// produced.
pub async fn calibrate(
    gpu: &Gpu,
    spec: &CalibrationSpec,
    progress: impl FnMut(&str),
) -> Result<Calibration, WorkerError> {
    let cfg = ModelConfig::from_hf_json(&spec.config_json)
        .map_err(|e| WorkerError::Calibration(format!("the model: {e}")))?;
    let seq = spec.seq as usize;
    if seq == 0 || seq > cfg.max_position_embeddings || spec.batch == 0 || spec.steps == 0 {
        return Err(WorkerError::Calibration(format!(
            "the work needs 1..={} tokens per sequence, at least one sequence and one step",
            cfg.max_position_embeddings
        )));
    }
    let params = ModelParams::random(&cfg, spec.seed);
    let mut r = SplitMix(spec.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut out = Outputs {
        list: Vec::new(),
        progress,
    };
    pipeline_outputs(gpu, &cfg, &params, seq, &mut r, &mut out).await?;
    replica_outputs(gpu, spec, &cfg, params, &mut r, &mut out).await?;
    let a = gpu.adapter();
    Ok(Calibration {
        spec: spec.clone(),
        adapter: format!("{} ({}, {})", a.name, a.backend, a.driver),
        outputs: out.list,
    })
}

/// How `a` differs from `b`, output by output; an error when they ran different work.
pub fn compare(a: &Calibration, b: &Calibration) -> Result<Vec<Drift>, WorkerError> {
    if a.spec != b.spec || a.outputs.len() != b.outputs.len() {
        return Err(WorkerError::Calibration(
            "the two calibrations ran different work (model, sizes or seed differ)".into(),
        ));
    }
    a.outputs
        .iter()
        .zip(&b.outputs)
        .map(|(x, y)| {
            let (u, v) = (x.values.to_f32()?, y.values.to_f32()?);
            if x.name != y.name || u.len() != v.len() {
                return Err(WorkerError::Calibration(format!(
                    "output {} against {}: different outputs",
                    x.name, y.name
                )));
            }
            Ok(Drift {
                name: x.name.clone(),
                rel_l2: rel_l2(&u, &v),
                rel_max: rel_max(&u, &v),
            })
        })
        .collect()
}
