//! A micro-shard's parameters: on the host as slices of the Hugging Face tensors, on the GPU as
//! pieces within the binding limit with their gradients and AdamW moments.

use std::collections::HashMap;
use std::ops::Range;

use super::kind::MicroShard;
use super::layout::{self, Axis, TensorLayout};
use crate::config::ModelConfig;
use crate::error::ComputeError;
use crate::gpu::{Gpu, Tensor};
use crate::kernels::rope::GpuRope;
use crate::reference::ops::AdamW;
use crate::reference::ModelParams;
use crate::rope_table::RopeTable;

/// One tensor of a shard on the host: the shard's slice of a Hugging Face tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardTensor {
    /// Name of the full tensor.
    pub name: String,
    /// Rows and columns of the slice.
    pub shape: [usize; 2],
    /// Row-major values.
    pub data: Vec<f32>,
}

/// Every tensor of a shard, in the order of the shard's layout (replicated norm first).
#[derive(Clone, Debug, PartialEq)]
pub struct ShardTensors {
    /// The shard.
    pub shard: MicroShard,
    /// Its tensors.
    pub tensors: Vec<ShardTensor>,
}

fn index_of(params: &ModelParams<f32>) -> HashMap<String, usize> {
    params
        .named()
        .into_iter()
        .enumerate()
        .map(|(i, (n, _))| (n, i))
        .collect()
}

impl ShardTensors {
    /// Cuts the shard's slices out of a whole model.
    pub fn from_model(
        cfg: &ModelConfig,
        params: &ModelParams<f32>,
        shard: &MicroShard,
    ) -> Result<Self, ComputeError> {
        shard.validate(cfg)?;
        let idx = index_of(params);
        let named = params.named();
        let tensors = layout::tensors(cfg, shard)
            .into_iter()
            .map(|l| {
                let i = *idx.get(&l.name).ok_or_else(|| {
                    ComputeError::Shape(format!("model has no tensor {}", l.name))
                })?;
                let full = named[i].1;
                if full.len() != l.full[0] * l.full[1] {
                    return Err(ComputeError::Shape(format!(
                        "{} has {} values, expected {:?}",
                        l.name,
                        full.len(),
                        l.full
                    )));
                }
                let units = shard.units();
                Ok(ShardTensor {
                    shape: l.shape(units.len()),
                    data: layout::slice(full, &l, units),
                    name: l.name,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ShardTensors {
            shard: shard.clone(),
            tensors,
        })
    }

    /// The names and shapes of the shard's tensors, in order, without their values.
    pub fn shapes(
        cfg: &ModelConfig,
        shard: &MicroShard,
    ) -> Result<Vec<(String, [usize; 2])>, ComputeError> {
        shard.validate(cfg)?;
        let units = shard.units().len();
        Ok(layout::tensors(cfg, shard)
            .into_iter()
            .map(|l| {
                let shape = l.shape(units);
                (l.name, shape)
            })
            .collect())
    }

    /// The shard's tensors with the right names and shapes, all zero.
    pub fn zeros(cfg: &ModelConfig, shard: &MicroShard) -> Result<Self, ComputeError> {
        shard.validate(cfg)?;
        let units = shard.units().len();
        let tensors = layout::tensors(cfg, shard)
            .into_iter()
            .map(|l| {
                let shape = l.shape(units);
                ShardTensor {
                    data: vec![0.0; shape[0] * shape[1]],
                    shape,
                    name: l.name,
                }
            })
            .collect();
        Ok(ShardTensors {
            shard: shard.clone(),
            tensors,
        })
    }

    /// Checks names, shapes and lengths against the shard's layout, and that every value is
    /// finite: what must hold before slices from an untrusted peer touch a model.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<(), ComputeError> {
        self.check(cfg).map(|_| ())
    }

    /// Adds these slices into a whole-model accumulator (replicated norm slices add whole, so
    /// partial norm gradients from several slices sum).
    pub fn add_into(
        &self,
        cfg: &ModelConfig,
        acc: &mut ModelParams<f32>,
    ) -> Result<(), ComputeError> {
        self.merge_into(cfg, acc, layout::add)
    }

    /// Writes these slices into a whole model (replicated tensors overwrite).
    pub fn copy_into(
        &self,
        cfg: &ModelConfig,
        model: &mut ModelParams<f32>,
    ) -> Result<(), ComputeError> {
        self.merge_into(cfg, model, layout::assign)
    }

    fn merge_into(
        &self,
        cfg: &ModelConfig,
        acc: &mut ModelParams<f32>,
        op: fn(&mut f32, f32),
    ) -> Result<(), ComputeError> {
        let layouts = self.check(cfg)?;
        let idx = index_of(acc);
        let mut targets = acc.tensors_mut();
        for (l, t) in layouts.iter().zip(&self.tensors) {
            let i = *idx
                .get(&l.name)
                .ok_or_else(|| ComputeError::Shape(format!("model has no tensor {}", l.name)))?;
            layout::merge_slice(targets[i], l, self.shard.units(), &t.data, op);
        }
        Ok(())
    }

    fn check(&self, cfg: &ModelConfig) -> Result<Vec<TensorLayout>, ComputeError> {
        self.shard.validate(cfg)?;
        let layouts = layout::tensors(cfg, &self.shard);
        if layouts.len() != self.tensors.len() {
            return Err(ComputeError::Shape(format!(
                "{}: {} tensors, expected {}",
                self.shard,
                self.tensors.len(),
                layouts.len()
            )));
        }
        let units = self.shard.units().len();
        for (l, t) in layouts.iter().zip(&self.tensors) {
            let shape = l.shape(units);
            if t.name != l.name || t.shape != shape || t.data.len() != shape[0] * shape[1] {
                // Names the layout's tensor, never the sender's text.
                return Err(ComputeError::Shape(format!(
                    "{}: the tensor in the place of {} {:?} has another name or shape {:?}",
                    self.shard, l.name, shape, t.shape
                )));
            }
            if t.data.iter().any(|x| !x.is_finite()) {
                return Err(ComputeError::Shape(format!(
                    "{}: tensor {} holds NaN or infinity",
                    self.shard, l.name
                )));
            }
        }
        Ok(layouts)
    }
}

/// The update rule of an optimizer step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// `p -= lr * g`.
    Sgd {
        /// Learning rate.
        lr: f32,
    },
    /// AdamW with decoupled weight decay.
    AdamW(AdamW),
}

/// A parameter on the GPU with its gradient and (after the first step) AdamW moments.
pub(crate) struct Slot {
    pub(crate) w: Tensor,
    pub(crate) g: Tensor,
    pub(crate) adam: Option<(Tensor, Tensor)>,
}

/// The tensors of a range of the shard's units, each within the binding limit.
pub(crate) struct Piece {
    /// Absolute units (vocabulary rows, groups, columns).
    pub(crate) units: Range<usize>,
    /// Sliced tensors in layout order (after the replicated ones).
    pub(crate) slots: Vec<Slot>,
}

/// A micro-shard resident on the GPU.
pub struct GpuShard {
    pub(crate) cfg: ModelConfig,
    pub(crate) shard: MicroShard,
    layouts: Vec<TensorLayout>,
    pub(crate) max_rows: usize,
    pub(crate) replicated: Vec<Slot>,
    pub(crate) pieces: Vec<Piece>,
    pub(crate) rope: Option<GpuRope>,
}

/// Splits `units` into as few balanced pieces as the binding limit allows.
fn plan_pieces(
    cfg: &ModelConfig,
    shard: &MicroShard,
    layouts: &[TensorLayout],
    max_rows: usize,
    limit: u64,
) -> Result<Vec<Range<usize>>, ComputeError> {
    let act_row = (max_rows * cfg.hidden_size * 4) as u64;
    if act_row > limit {
        return Err(ComputeError::TooLarge {
            what: format!("activations of {max_rows} rows x {}", cfg.hidden_size),
            bytes: act_row,
            limit,
        });
    }
    let mut per_unit: Vec<(String, u64)> = layouts
        .iter()
        .filter(|l| l.axis != Axis::Replicated)
        .map(|l| {
            let other = if l.axis == Axis::Rows {
                l.full[1]
            } else {
                l.full[0]
            };
            (l.name.clone(), (l.per_unit * other * 4) as u64)
        })
        .collect();
    per_unit.push((
        format!("activations of {shard}"),
        (layout::activation_per_unit(cfg, shard) * max_rows * 4) as u64,
    ));
    let mut max_units = u64::MAX;
    for (what, bytes) in &per_unit {
        if *bytes > limit {
            return Err(ComputeError::TooLarge {
                what: format!("one unit of {what}"),
                bytes: *bytes,
                limit,
            });
        }
        if *bytes > 0 {
            max_units = max_units.min(limit / bytes);
        }
    }
    let units = shard.units();
    let n = units.len();
    let pieces = n.div_ceil(max_units.min(n as u64) as usize);
    let base = n / pieces;
    let extra = n % pieces;
    let mut out = Vec::with_capacity(pieces);
    let mut start = units.start;
    for i in 0..pieces {
        let len = base + usize::from(i < extra);
        out.push(start..start + len);
        start += len;
    }
    Ok(out)
}

/// Values and shapes of a shard's tensors: the replicated ones, then per piece the sliced ones.
type PieceValues = Vec<(Vec<f32>, [usize; 2])>;

fn split_values(
    params: &ShardTensors,
    layouts: &[TensorLayout],
    ranges: &[Range<usize>],
) -> (PieceValues, Vec<PieceValues>) {
    let s0 = params.shard.units().start;
    let mut replicated = Vec::new();
    let mut sliced = Vec::new();
    for (l, t) in layouts.iter().zip(&params.tensors) {
        if l.axis == Axis::Replicated {
            replicated.push((t.data.clone(), t.shape));
        } else {
            sliced.push((l, t));
        }
    }
    let pieces = ranges
        .iter()
        .map(|r| {
            sliced
                .iter()
                .map(|(l, t)| {
                    // The shard's slice is the "full" tensor the piece is cut from.
                    let local = TensorLayout {
                        full: t.shape,
                        ..(*l).clone()
                    };
                    (
                        layout::slice(&t.data, &local, r.start - s0..r.end - s0),
                        l.shape(r.len()),
                    )
                })
                .collect()
        })
        .collect();
    (replicated, pieces)
}

impl GpuShard {
    /// Uploads a shard's parameters for calls of at most `max_rows` rows, with zero gradients.
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        params: &ShardTensors,
        max_rows: usize,
    ) -> Result<Self, ComputeError> {
        cfg.validate()?;
        let layouts = params.check(cfg)?;
        let shard = params.shard.clone();
        let ranges = plan_pieces(
            cfg,
            &shard,
            &layouts,
            max_rows.max(1),
            gpu.max_binding_bytes(),
        )?;
        let (rep, per_piece) = split_values(params, &layouts, &ranges);
        let slot = |data: &[f32], shape: [usize; 2]| -> Result<Slot, ComputeError> {
            Ok(Slot {
                w: gpu.upload(data, &shape)?,
                g: gpu.zeros(&shape)?,
                adam: None,
            })
        };
        let replicated = rep
            .iter()
            .map(|(d, shape)| slot(d, *shape))
            .collect::<Result<Vec<_>, _>>()?;
        let pieces = ranges
            .into_iter()
            .zip(per_piece)
            .map(|(units, vals)| {
                Ok(Piece {
                    units,
                    slots: vals
                        .iter()
                        .map(|(d, shape)| slot(d, *shape))
                        .collect::<Result<_, ComputeError>>()?,
                })
            })
            .collect::<Result<Vec<_>, ComputeError>>()?;
        let rope = match shard {
            MicroShard::Attn { .. } => Some(GpuRope::new(
                gpu,
                &RopeTable::new(max_rows.max(1), cfg.head_dim, cfg.rope_theta),
            )?),
            _ => None,
        };
        gpu.check()?;
        Ok(GpuShard {
            cfg: cfg.clone(),
            shard,
            layouts,
            max_rows: max_rows.max(1),
            replicated,
            pieces,
            rope,
        })
    }

    /// Overwrites the parameters (same shard); gradients and optimizer moments stay.
    pub fn write_params(&self, gpu: &Gpu, params: &ShardTensors) -> Result<(), ComputeError> {
        self.write_with(gpu, params, |s| &s.w)
    }

    /// Drops the AdamW moments: the next optimizer step starts them at zero again.
    pub fn reset_moments(&mut self) {
        for s in self
            .replicated
            .iter_mut()
            .chain(self.pieces.iter_mut().flat_map(|p| p.slots.iter_mut()))
        {
            s.adam = None;
        }
    }

    /// Overwrites the gradient sums (same shard), e.g. to restore them after a check ran on
    /// the same buffers.
    pub fn write_grads(&self, gpu: &Gpu, grads: &ShardTensors) -> Result<(), ComputeError> {
        self.write_with(gpu, grads, |s| &s.g)
    }

    fn write_with(
        &self,
        gpu: &Gpu,
        values: &ShardTensors,
        which: impl Fn(&Slot) -> &Tensor,
    ) -> Result<(), ComputeError> {
        if values.shard != self.shard {
            return Err(ComputeError::Shape(format!(
                "values of {} written into {}",
                values.shard, self.shard
            )));
        }
        let layouts = values.check(&self.cfg)?;
        let ranges: Vec<Range<usize>> = self.pieces.iter().map(|p| p.units.clone()).collect();
        let (rep, per_piece) = split_values(values, &layouts, &ranges);
        for (s, (d, _)) in self.replicated.iter().zip(&rep) {
            gpu.write(which(s), d)?;
        }
        for (p, vals) in self.pieces.iter().zip(&per_piece) {
            for (s, (d, _)) in p.slots.iter().zip(vals) {
                gpu.write(which(s), d)?;
            }
        }
        Ok(())
    }

    /// The shard.
    pub fn shard(&self) -> &MicroShard {
        &self.shard
    }

    /// How many pieces the binding limit split it into.
    pub fn piece_count(&self) -> usize {
        self.pieces.len()
    }

    /// Every slot, replicated first, then piece by piece.
    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.replicated
            .iter()
            .chain(self.pieces.iter().flat_map(|p| p.slots.iter()))
    }

    /// Every gradient tensor (for the global norm and clipping).
    pub fn grads(&self) -> Vec<&Tensor> {
        self.slots().map(|s| &s.g).collect()
    }

    /// Gradients of the replicated (norm) weights: partial when the stage is sliced.
    pub fn replicated_grads(&self) -> Vec<&Tensor> {
        self.replicated.iter().map(|s| &s.g).collect()
    }

    /// Gradients of the sliced weights.
    pub fn sliced_grads(&self) -> Vec<&Tensor> {
        self.pieces
            .iter()
            .flat_map(|p| p.slots.iter())
            .map(|s| &s.g)
            .collect()
    }

    /// Zeroes the gradients (start of a step).
    pub fn zero_grads(&self, gpu: &Gpu) -> Result<(), ComputeError> {
        for s in self.slots() {
            gpu.clear(&s.g)?;
        }
        Ok(())
    }

    /// One optimizer step over every parameter with the accumulated gradients (`step` is
    /// 1-based, for AdamW's bias correction).
    pub fn optimizer_step(
        &mut self,
        gpu: &Gpu,
        opt: Optimizer,
        step: u32,
    ) -> Result<(), ComputeError> {
        let h = match opt {
            Optimizer::Sgd { lr } => {
                for s in self
                    .replicated
                    .iter()
                    .chain(self.pieces.iter().flat_map(|p| p.slots.iter()))
                {
                    gpu.add_scaled(&s.w, &s.g, -lr, s.w.len())?;
                }
                return Ok(());
            }
            Optimizer::AdamW(h) => h,
        };
        for s in self
            .replicated
            .iter_mut()
            .chain(self.pieces.iter_mut().flat_map(|p| p.slots.iter_mut()))
        {
            if s.adam.is_none() {
                s.adam = Some((gpu.zeros(s.w.shape())?, gpu.zeros(s.w.shape())?));
            }
            if let Some((m, v)) = &s.adam {
                gpu.adamw(&s.w, &s.g, m, v, h, step)?;
            }
        }
        Ok(())
    }

    async fn read_with(
        &self,
        gpu: &Gpu,
        pick: impl Fn(&Slot) -> &Tensor,
    ) -> Result<ShardTensors, ComputeError> {
        let units = self.shard.units();
        let mut tensors = Vec::new();
        let mut rep = self.replicated.iter();
        let mut sliced_index = 0;
        for l in &self.layouts {
            let shape = l.shape(units.len());
            let data = if l.axis == Axis::Replicated {
                let s = rep
                    .next()
                    .ok_or_else(|| ComputeError::Shape("replicated tensor missing".into()))?;
                gpu.read(pick(s)).await?
            } else {
                let mut full = vec![0.0f32; shape[0] * shape[1]];
                let local = TensorLayout {
                    full: shape,
                    ..l.clone()
                };
                for p in &self.pieces {
                    let part = gpu.read(pick(&p.slots[sliced_index])).await?;
                    layout::merge_slice(
                        &mut full,
                        &local,
                        p.units.start - units.start..p.units.end - units.start,
                        &part,
                        layout::assign,
                    );
                }
                sliced_index += 1;
                full
            };
            tensors.push(ShardTensor {
                name: l.name.clone(),
                shape,
                data,
            });
        }
        Ok(ShardTensors {
            shard: self.shard.clone(),
            tensors,
        })
    }

    /// Downloads the parameters.
    pub async fn read_params(&self, gpu: &Gpu) -> Result<ShardTensors, ComputeError> {
        self.read_with(gpu, |s| &s.w).await
    }

    /// Downloads the accumulated gradients.
    pub async fn read_grads(&self, gpu: &Gpu) -> Result<ShardTensors, ComputeError> {
        self.read_with(gpu, |s| &s.g).await
    }

    pub(crate) fn check_rows(&self, rows: super::Rows) -> Result<usize, ComputeError> {
        let n = rows.count();
        if n == 0 || n > self.max_rows {
            return Err(ComputeError::Shape(format!(
                "{}: {n} rows, this shard was sized for 1..={}",
                self.shard, self.max_rows
            )));
        }
        Ok(n)
    }

    pub(crate) fn check_tokens(&self, ids: &[u32], allow_ignore: bool) -> Result<(), ComputeError> {
        for (pos, &id) in ids.iter().enumerate() {
            if (id as usize) >= self.cfg.vocab_size
                && !(allow_ignore && id == crate::reference::ops::IGNORE)
            {
                return Err(ComputeError::TokenOutOfRange {
                    id,
                    pos,
                    vocab: self.cfg.vocab_size,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_count_what_the_tensors_hold() {
        let cfg = ModelConfig::tiny();
        let whole = crate::model::shards(&cfg, crate::model::Slicing::whole()).unwrap();
        let mut total = 0;
        for s in whole.iter().flatten() {
            let t = ShardTensors::zeros(&cfg, s).unwrap();
            let held: usize = t.tensors.iter().map(|x| x.data.len()).sum();
            assert_eq!(s.parameters(&cfg), held, "{s}");
            total += held;
        }
        assert_eq!(total as u64, cfg.parameter_count());
    }
}
