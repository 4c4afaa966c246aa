//! The same pipeline work units run by a native worker and by a browser: a small model's
//! micro-shards (an embedding slice, an attention group, MLP columns and a head slice), their
//! weights, forward and backward units with random inputs, and the native results (outputs and
//! gradient sums). Written natively (`tests/tests/unit_fixture.rs`), checked in the browser
//! (`client-wasm/tests/browser.rs`).

#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use tessera_compute::shard::{MicroShard, ShardTensor, ShardTensors};
use tessera_compute::ModelConfig;
use tessera_protocol::messages::{NamedTensor, ShardSpec};
use tessera_protocol::pipeline::{PipeResult, PipeWork, ShardGrads};

/// Everything both sides need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fixture {
    /// The model (`config.json`).
    pub config_json: String,
    /// Tokens per micro-batch.
    pub seq: u64,
    /// The lease's micro-shards.
    pub shards: Vec<ShardSpec>,
    /// Their weights, tensor by tensor in layout order.
    pub weights: Vec<Vec<NamedTensor>>,
    /// The units, in the order they run.
    pub units: Vec<PipeWork>,
    /// The native results, one per unit.
    pub outputs: Vec<PipeResult>,
    /// The native gradient sums after every unit.
    pub grads: Vec<ShardGrads>,
}

/// The weights as the worker crate takes them.
pub fn weights(f: &Fixture, cfg: &ModelConfig) -> Vec<ShardTensors> {
    f.shards
        .iter()
        .zip(&f.weights)
        .map(|(spec, ts)| ShardTensors {
            shard: tessera_train::shards::from_wire(spec, cfg).expect("a valid shard"),
            tensors: ts
                .iter()
                .map(|t| ShardTensor {
                    name: t.name.clone(),
                    shape: [t.tensor.shape[0] as usize, t.tensor.shape[1] as usize],
                    data: t.tensor.to_f32().expect("f32"),
                })
                .collect(),
        })
        .collect()
}

/// The micro-shards of the fixture's lease.
pub fn lease() -> Vec<MicroShard> {
    vec![
        MicroShard::Embed { rows: 16..48 },
        MicroShard::Attn {
            layer: 0,
            groups: 1..2,
        },
        MicroShard::Mlp {
            layer: 0,
            cols: 24..48,
        },
        MicroShard::Head { cols: 32..64 },
    ]
}

/// The largest absolute difference between two results, relative to the largest absolute value
/// of `want`; `None` when they are not the same kind or shape.
pub fn result_error(got: &PipeResult, want: &PipeResult) -> Option<f64> {
    let vals = |r: &PipeResult| -> Option<Vec<f32>> {
        match r {
            PipeResult::Activation(a) => a.decode().ok(),
            PipeResult::HeadStats(s) => Some(
                s.iter()
                    .flat_map(|x| x.stats.to_f32().unwrap_or_default())
                    .collect(),
            ),
            PipeResult::Accumulated => Some(Vec::new()),
            PipeResult::Span(v) => Some(
                v.iter()
                    .flat_map(|a| a.decode().unwrap_or_default())
                    .collect(),
            ),
        }
    };
    if std::mem::discriminant(got) != std::mem::discriminant(want) {
        return None;
    }
    if let (PipeResult::HeadStats(a), PipeResult::HeadStats(b)) = (got, want) {
        if a.iter().map(|x| &x.owned).ne(b.iter().map(|x| &x.owned)) {
            return None;
        }
    }
    rel(&vals(got)?, &vals(want)?)
}

/// Max |a - b| / max |b| (0 for two empty vectors).
pub fn rel(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs() as f64)).max(1e-30);
    Some(
        a.iter()
            .zip(b)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64))
            / scale,
    )
}

/// Every gradient sum, flattened in order.
pub fn grad_values(g: &[ShardGrads]) -> Vec<f32> {
    g.iter()
        .flat_map(|s| match &s.tensors {
            tessera_protocol::messages::Update::Dense(ts) => ts
                .iter()
                .flat_map(|t| t.tensor.to_f32().unwrap_or_default())
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect()
}
