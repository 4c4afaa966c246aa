//! Micro-shards and their gradient sums on the wire: conversion between the compute crate's
//! [`MicroShard`] / [`ShardTensors`] and the protocol's [`ShardSpec`] / [`ShardGrads`], checked
//! against the model on the way in.

use tessera_compute::shard::{MicroShard, ShardTensor, ShardTensors};
use tessera_compute::ModelConfig;
use tessera_protocol::messages::{NamedTensor, ShardSpec};
use tessera_protocol::pipeline::ShardGrads;
use tessera_protocol::TensorPayload;

use crate::error::TrainError;

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

/// A micro-shard's gradient sums for the wire.
pub fn grads_to_wire(t: &ShardTensors) -> ShardGrads {
    ShardGrads {
        shard: to_wire(&t.shard),
        tensors: t
            .tensors
            .iter()
            .map(|x| NamedTensor {
                name: x.name.clone(),
                tensor: TensorPayload::from_f32(&x.shape, &x.data),
            })
            .collect(),
    }
}

/// Gradient sums from the wire, checked against the model: the shard, every tensor's name and
/// shape, and that every value is finite.
pub fn grads_from_wire(g: &ShardGrads, cfg: &ModelConfig) -> Result<ShardTensors, TrainError> {
    let shard = from_wire(&g.shard, cfg)?;
    let want = ShardTensors::zeros(cfg, &shard).map_err(|e| TrainError::Config(e.to_string()))?;
    if g.tensors.len() != want.tensors.len() {
        return Err(TrainError::BadUpdate {
            name: shard.to_string(),
            why: format!(
                "{} tensors, the micro-shard has {}",
                g.tensors.len(),
                want.tensors.len()
            ),
        });
    }
    let tensors = want
        .tensors
        .iter()
        .zip(&g.tensors)
        .map(|(w, t)| {
            if w.name != t.name {
                return Err(TrainError::BadUpdate {
                    name: t.name.clone(),
                    why: format!("expected {}", w.name),
                });
            }
            t.tensor
                .expect_shape(&w.shape)
                .map_err(|e| TrainError::BadUpdate {
                    name: t.name.clone(),
                    why: e.to_string(),
                })?;
            Ok(ShardTensor {
                name: w.name.clone(),
                shape: w.shape,
                data: t.tensor.to_f32()?,
            })
        })
        .collect::<Result<_, TrainError>>()?;
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
        assert_eq!(grads_from_wire(&wire, &cfg).unwrap(), t);
        let mut bad = wire.clone();
        bad.tensors.pop();
        assert!(grads_from_wire(&bad, &cfg).is_err());
        let mut bad = wire.clone();
        bad.tensors[0].name = "x".into();
        assert!(grads_from_wire(&bad, &cfg).is_err());
        let mut bad = wire;
        bad.tensors[2].tensor = TensorPayload::from_f32(&[1], &[f32::NAN]);
        assert!(grads_from_wire(&bad, &cfg).is_err());
    }
}
