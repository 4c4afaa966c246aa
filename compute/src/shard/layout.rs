//! The tensors of each micro-shard kind, as slices of the Hugging Face tensors, how they
//! split into pieces along the shard's units, and so how many values a shard holds.

use super::kind::MicroShard;
use crate::config::ModelConfig;

impl MicroShard {
    /// Values the shard holds: every tensor slice, its own copy of a replicated norm weight
    /// included (what a replica keeps resident, per weight, gradient or moment).
    pub fn parameters(&self, cfg: &ModelConfig) -> usize {
        let units = self.units().len();
        tensors(cfg, self)
            .iter()
            .map(|l| {
                let [r, c] = l.shape(units);
                r * c
            })
            .sum()
    }
}

/// Along which axis a tensor is sliced by the shard's units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Rows (`per_unit` rows per unit).
    Rows,
    /// Columns (`per_unit` columns per unit).
    Cols,
    /// Not sliced: every slice holds the whole tensor (a norm weight).
    Replicated,
}

/// One tensor of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorLayout {
    /// Hugging Face name of the full tensor.
    pub name: String,
    /// Rows and columns of the full tensor.
    pub full: [usize; 2],
    /// Slicing axis.
    pub axis: Axis,
    /// Rows or columns per unit.
    pub per_unit: usize,
}

impl TensorLayout {
    /// Shape of the slice for `units` units.
    pub fn shape(&self, units: usize) -> [usize; 2] {
        match self.axis {
            Axis::Rows => [units * self.per_unit, self.full[1]],
            Axis::Cols => [self.full[0], units * self.per_unit],
            Axis::Replicated => self.full,
        }
    }
}

/// The tensors of `shard`, replicated (norm) first.
pub fn tensors(cfg: &ModelConfig, shard: &MicroShard) -> Vec<TensorLayout> {
    let d = cfg.hidden_size;
    let t = |name: String, full: [usize; 2], axis: Axis, per_unit: usize| TensorLayout {
        name,
        full,
        axis,
        per_unit,
    };
    match shard {
        MicroShard::Embed { .. } => vec![t(
            "model.embed_tokens.weight".into(),
            [cfg.vocab_size, d],
            Axis::Rows,
            1,
        )],
        MicroShard::Attn { layer, .. } => {
            let p = format!("model.layers.{layer}");
            let qg = cfg.group_size() * cfg.head_dim;
            vec![
                t(
                    format!("{p}.input_layernorm.weight"),
                    [1, d],
                    Axis::Replicated,
                    0,
                ),
                t(
                    format!("{p}.self_attn.q_proj.weight"),
                    [cfg.q_width(), d],
                    Axis::Rows,
                    qg,
                ),
                t(
                    format!("{p}.self_attn.k_proj.weight"),
                    [cfg.kv_width(), d],
                    Axis::Rows,
                    cfg.head_dim,
                ),
                t(
                    format!("{p}.self_attn.v_proj.weight"),
                    [cfg.kv_width(), d],
                    Axis::Rows,
                    cfg.head_dim,
                ),
                t(
                    format!("{p}.self_attn.o_proj.weight"),
                    [d, cfg.q_width()],
                    Axis::Cols,
                    qg,
                ),
            ]
        }
        MicroShard::Mlp { layer, .. } => {
            let p = format!("model.layers.{layer}");
            let f = cfg.intermediate_size;
            vec![
                t(
                    format!("{p}.post_attention_layernorm.weight"),
                    [1, d],
                    Axis::Replicated,
                    0,
                ),
                t(format!("{p}.mlp.gate_proj.weight"), [f, d], Axis::Rows, 1),
                t(format!("{p}.mlp.up_proj.weight"), [f, d], Axis::Rows, 1),
                t(format!("{p}.mlp.down_proj.weight"), [d, f], Axis::Cols, 1),
            ]
        }
        MicroShard::Head { .. } => vec![
            t("model.norm.weight".into(), [1, d], Axis::Replicated, 0),
            t("lm_head.weight".into(), [cfg.vocab_size, d], Axis::Rows, 1),
        ],
    }
}

/// Elements of activations per unit per row that a piece holds at once (sizes pieces so they
/// fit the binding limit): attention q/o per group, MLP hidden per column, logits per column.
pub fn activation_per_unit(cfg: &ModelConfig, shard: &MicroShard) -> usize {
    match shard {
        MicroShard::Embed { .. } => 0,
        MicroShard::Attn { .. } => cfg.group_size() * cfg.head_dim,
        MicroShard::Mlp { .. } | MicroShard::Head { .. } => 1,
    }
}

/// Copies the slice `units` (relative to 0 of the full tensor) of a full row-major tensor.
pub fn slice(full: &[f32], l: &TensorLayout, units: std::ops::Range<usize>) -> Vec<f32> {
    let [rows, cols] = l.full;
    match l.axis {
        Axis::Replicated => full.to_vec(),
        Axis::Rows => full[units.start * l.per_unit * cols..units.end * l.per_unit * cols].to_vec(),
        Axis::Cols => {
            let (c0, c1) = (units.start * l.per_unit, units.end * l.per_unit);
            (0..rows)
                .flat_map(|r| full[r * cols + c0..r * cols + c1].iter().copied())
                .collect()
        }
    }
}

/// Writes a slice back into a full row-major tensor, combining each element with `op`
/// (addition gathers gradients, so replicated norm slices sum; assignment gathers parameters).
pub fn merge_slice(
    full: &mut [f32],
    l: &TensorLayout,
    units: std::ops::Range<usize>,
    part: &[f32],
    op: fn(&mut f32, f32),
) {
    let [rows, cols] = l.full;
    match l.axis {
        Axis::Replicated => full.iter_mut().zip(part).for_each(|(a, b)| op(a, *b)),
        Axis::Rows => full[units.start * l.per_unit * cols..units.end * l.per_unit * cols]
            .iter_mut()
            .zip(part)
            .for_each(|(a, b)| op(a, *b)),
        Axis::Cols => {
            let (c0, c1) = (units.start * l.per_unit, units.end * l.per_unit);
            let w = c1 - c0;
            for r in 0..rows {
                for c in 0..w {
                    op(&mut full[r * cols + c0 + c], part[r * w + c]);
                }
            }
        }
    }
}

/// Element combiner: add.
pub fn add(a: &mut f32, b: f32) {
    *a += b;
}

/// Element combiner: overwrite.
pub fn assign(a: &mut f32, b: f32) {
    *a = b;
}
