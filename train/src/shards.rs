//! Micro-shards and their gradient sums on the wire: conversion between the compute crate's
//! [`MicroShard`] / [`ShardTensors`] and the protocol's [`ShardSpec`] / [`ShardGrads`], checked
//! against the model on the way in.

use tessera_compute::shard::{MicroShard, ShardTensor, ShardTensors};
use tessera_compute::ModelConfig;
use tessera_protocol::messages::{NamedTensor, ShardSpec, Update};
use tessera_protocol::pipeline::ShardGrads;
use tessera_protocol::TensorPayload;

use crate::error::TrainError;
use crate::sparseloco::{ErrorFeedback, SparseConfig};
use crate::update::{from_contributor, two_d};

/// The wire form of a micro-shard.
pub fn to_wire(s: &MicroShard) -> ShardSpec {
    let r = |r: &std::ops::Range<usize>| [r.start as u64, r.end as u64];
    match s {
        MicroShard::Embed { rows } => ShardSpec::Embed { rows: r(rows) },
        MicroShard::Attn { layer, groups } => ShardSpec::Attn {
            layer: *layer as u64,
            groups: r(groups),
        },
        MicroShard::Mlp { layer, cols } => ShardSpec::Mlp {
            layer: *layer as u64,
            cols: r(cols),
        },
        MicroShard::Head { cols } => ShardSpec::Head { cols: r(cols) },
    }
}

/// A micro-shard from the wire, checked against the model.
pub fn from_wire(s: &ShardSpec, cfg: &ModelConfig) -> Result<MicroShard, TrainError> {
    let u = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
    let r = |[a, b]: [u64; 2]| u(a)..u(b);
    let shard = match s {
        ShardSpec::Embed { rows } => MicroShard::Embed { rows: r(*rows) },
        ShardSpec::Attn { layer, groups } => MicroShard::Attn {
            layer: u(*layer),
            groups: r(*groups),
        },
        ShardSpec::Mlp { layer, cols } => MicroShard::Mlp {
            layer: u(*layer),
            cols: r(*cols),
        },
        ShardSpec::Head { cols } => MicroShard::Head { cols: r(*cols) },
    };
    shard
        .validate(cfg)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    Ok(shard)
}

/// A micro-shard's gradient sums for the wire, dense.
pub fn grads_to_wire(t: &ShardTensors) -> ShardGrads {
    ShardGrads {
        shard: to_wire(&t.shard),
        tensors: Update::Dense(
            t.tensors
                .iter()
                .map(|x| NamedTensor {
                    name: x.name.clone(),
                    tensor: TensorPayload::from_f32(&x.shape, &x.data),
                })
                .collect(),
        ),
    }
}

/// Error feedback for each tensor of a micro-shard's gradient sums.
pub struct GradFeedback {
    cfg: SparseConfig,
    tensors: Vec<ErrorFeedback>,
}

impl GradFeedback {
    /// Fresh (zero) error feedback for the tensors of `t`'s shape.
    pub fn new(t: &ShardTensors, cfg: SparseConfig) -> Self {
        GradFeedback {
            cfg,
            tensors: t
                .tensors
                .iter()
                .map(|x| ErrorFeedback::new(two_d(&x.shape)))
                .collect(),
        }
    }

    /// The sums compressed (chunked top-k, 2-bit values) after adding the carried error; what
    /// was not sent is carried to the next step.
    pub fn compress(&mut self, t: &ShardTensors) -> ShardGrads {
        ShardGrads {
            shard: to_wire(&t.shard),
            tensors: Update::Sparse(Box::new(crate::sparse_wire::pack(
                &t.tensors
                    .iter()
                    .zip(&mut self.tensors)
                    .map(|(x, ef)| ef.step(&x.data, &self.cfg))
                    .collect::<Vec<_>>(),
                &self.cfg,
            ))),
        }
    }
}

/// Gradient sums from the wire, checked against the model: the shard, every tensor's name and
/// shape, that every value is finite, and (when compressed) the run's compression parameters
/// (`sparse`; `None` refuses compressed sums).
pub fn grads_from_wire(
    g: &ShardGrads,
    cfg: &ModelConfig,
    sparse: Option<&SparseConfig>,
) -> Result<ShardTensors, TrainError> {
    let shard = from_wire(&g.shard, cfg)?;
    let want = ShardTensors::zeros(cfg, &shard).map_err(|e| TrainError::Config(e.to_string()))?;
    let shapes: Vec<(String, Vec<usize>)> = want
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.to_vec()))
        .collect();
    let dense = from_contributor(&g.tensors, &shapes, sparse)?;
    let tensors = want
        .tensors
        .into_iter()
        .zip(dense)
        .map(|(w, data)| ShardTensor {
            name: w.name,
            shape: w.shape,
            data,
        })
        .collect();
    Ok(ShardTensors { shard, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_and_grads_round_trip_and_bad_ones_are_refused() {
        let cfg = ModelConfig::tiny();
        let s = MicroShard::Mlp {
            layer: 1,
            cols: 8..20,
        };
        assert_eq!(from_wire(&to_wire(&s), &cfg).unwrap(), s);
        assert!(from_wire(
            &ShardSpec::Mlp {
                layer: 2,
                cols: [0, 4]
            },
            &cfg
        )
        .is_err());
        assert!(from_wire(&ShardSpec::Head { cols: [5, 5] }, &cfg).is_err());
        assert!(from_wire(
            &ShardSpec::Embed {
                rows: [0, u64::MAX]
            },
            &cfg
        )
        .is_err());
        let mut t = ShardTensors::zeros(&cfg, &s).unwrap();
        t.tensors[1].data[3] = 1.5;
        let wire = grads_to_wire(&t);
        assert_eq!(grads_from_wire(&wire, &cfg, None).unwrap(), t);
        let Update::Dense(ts) = &wire.tensors else {
            panic!("dense")
        };
        let with = |ts: Vec<NamedTensor>| ShardGrads {
            shard: wire.shard.clone(),
            tensors: Update::Dense(ts),
        };
        let mut bad = ts.clone();
        bad.pop();
        assert!(grads_from_wire(&with(bad), &cfg, None).is_err());
        let mut bad = ts.clone();
        bad[0].name = "x".into();
        assert!(grads_from_wire(&with(bad), &cfg, None).is_err());
        let mut bad = ts.clone();
        bad[2].tensor = TensorPayload::from_f32(&[1], &[f32::NAN]);
        assert!(grads_from_wire(&with(bad), &cfg, None).is_err());
        // Compressed sums: refused by a dense run; with error feedback what was not sent is
        // carried, so two steps of the same gradient send more of it than one.
        let sc = SparseConfig {
            chunk: [8, 8],
            k: 4,
            beta: 1.0,
        };
        let mut g = ShardTensors::zeros(&cfg, &s).unwrap();
        for x in &mut g.tensors {
            for (i, v) in x.data.iter_mut().enumerate() {
                *v = ((i * 37 % 11) as f32 - 5.0) * 0.1;
            }
        }
        let mut fb = GradFeedback::new(&g, sc);
        let first = fb.compress(&g);
        assert!(grads_from_wire(&first, &cfg, None).is_err());
        let one = grads_from_wire(&first, &cfg, Some(&sc)).unwrap();
        let two = grads_from_wire(&fb.compress(&g), &cfg, Some(&sc)).unwrap();
        let err = |got: &ShardTensors, scale: f32| -> f32 {
            got.tensors
                .iter()
                .zip(&g.tensors)
                .flat_map(|(a, b)| {
                    a.data
                        .iter()
                        .zip(&b.data)
                        .map(move |(x, y)| (x - scale * y).abs())
                })
                .sum()
        };
        let sent_two: Vec<ShardTensor> = one
            .tensors
            .iter()
            .zip(&two.tensors)
            .map(|(a, b)| ShardTensor {
                data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(),
                ..a.clone()
            })
            .collect();
        let sent_two = ShardTensors {
            shard: s.clone(),
            tensors: sent_two,
        };
        assert!(err(&sent_two, 2.0) < err(&one, 2.0));
    }
}
