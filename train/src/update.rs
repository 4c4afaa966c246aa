//! Reading an update (dense or SparseLoCo) against the tensors it must cover: every tensor
//! present once, in order, with the right shape and finite values; sparse tensors checked
//! against the run's compression parameters. Used by the coordinator on submissions and by
//! replicas on outer steps.

use tessera_protocol::messages::{IndexedTensor, SparseUpdate, Update};
use tessera_protocol::TensorPayload;

use crate::error::TrainError;
use crate::outer::Mean;
use crate::sparse_wire::unpack;
use crate::sparseloco::SparseConfig;

/// A tensor shape as the `[rows, cols]` the chunking sees (a vector is one row).
pub fn two_d(shape: &[usize]) -> [usize; 2] {
    if shape.len() == 2 {
        [shape[0], shape[1]]
    } else {
        [1, shape.iter().product()]
    }
}

/// A dense tensor as its nonzero entries.
pub fn to_indexed(name: &str, shape: &[usize], values: &[f32]) -> IndexedTensor {
    let (idx, vals): (Vec<u32>, Vec<f32>) = values
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != 0.0)
        .map(|(i, v)| (i as u32, *v))
        .unzip();
    IndexedTensor {
        name: name.to_string(),
        shape: shape.iter().map(|&d| d as u64).collect(),
        indices: TensorPayload::from_u32(&[idx.len()], &idx),
        values: TensorPayload::from_f32(&[vals.len()], &vals),
    }
}

/// A contributor's update as dense tensors ([`to_dense`]): dense or SparseLoCo-compressed only.
/// Explicit entries and means of parts are how the coordinator publishes outer steps; from a
/// contributor they would skip the compression's checks (or cost one decode per part).
pub fn from_contributor(
    u: &Update,
    shapes: &[(String, Vec<usize>)],
    sparse: Option<&SparseConfig>,
) -> Result<Vec<Vec<f32>>, TrainError> {
    match u {
        Update::Dense(_) | Update::Sparse(_) => to_dense(u, shapes, sparse),
        Update::Indexed(_) | Update::SparseMean(_) => Err(TrainError::BadUpdate {
            name: "update".into(),
            why:
                "explicit entries or a mean of parts: the coordinator's forms, not a contributor's"
                    .into(),
        }),
    }
}

/// The update as dense tensors in the order of `shapes` (name, shape), or why it does not fit.
/// `sparse` is the run's compression, `None` when the run syncs dense updates.
pub fn to_dense(
    u: &Update,
    shapes: &[(String, Vec<usize>)],
    sparse: Option<&SparseConfig>,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let bad = |name: &str, why: String| TrainError::BadUpdate {
        name: name.to_string(),
        why,
    };
    let count = match u {
        Update::Dense(ts) => ts.len(),
        // Packed: the receiver's tensors in order, the counts checked as it is read.
        Update::Sparse(_) | Update::SparseMean(_) => shapes.len(),
        Update::Indexed(ts) => ts.len(),
    };
    if count != shapes.len() {
        return Err(bad(
            "update",
            format!("{count} tensors, the model has {}", shapes.len()),
        ));
    }
    // A refusal names the model's tensor, never the contributor's text.
    let check_name = |got: &str, want: &str| {
        if got == want {
            Ok(())
        } else {
            Err(bad(
                want,
                "the update names another tensor in its place".into(),
            ))
        }
    };
    match u {
        Update::Dense(ts) => ts
            .iter()
            .zip(shapes)
            .map(|(t, (name, shape))| {
                check_name(&t.name, name)?;
                t.tensor.expect_shape(shape)?;
                Ok(t.tensor.to_f32()?)
            })
            .collect(),
        Update::Indexed(ts) => ts
            .iter()
            .zip(shapes)
            .map(|(t, (name, shape))| {
                check_name(&t.name, name)?;
                let n: usize = shape.iter().product();
                if t.shape.len() != shape.len()
                    || t.shape.iter().zip(shape).any(|(&a, &b)| a != b as u64)
                {
                    return Err(bad(
                        name,
                        format!("shape {:?}, expected {shape:?}", t.shape),
                    ));
                }
                let idx = t.indices.to_u32()?;
                let vals = t.values.to_f32()?;
                if idx.len() != vals.len()
                    || idx.windows(2).any(|w| w[0] >= w[1])
                    || idx.last().is_some_and(|&i| i as usize >= n)
                {
                    return Err(bad(
                        name,
                        "positions must be strictly increasing, within the tensor, one per value"
                            .into(),
                    ));
                }
                let mut d = vec![0.0f32; n];
                for (&i, &v) in idx.iter().zip(&vals) {
                    d[i as usize] = v;
                }
                Ok(d)
            })
            .collect(),
        Update::Sparse(packed) => {
            let cfg = sparse.ok_or_else(|| bad("update", "this run syncs dense updates".into()))?;
            unpack_dense(packed, shapes, cfg)
        }
        Update::SparseMean(m) => {
            let cfg = sparse.ok_or_else(|| bad("update", "this run syncs dense updates".into()))?;
            if m.parts.is_empty()
                || m.scales.len() != m.parts.len()
                || m.scales.iter().any(|s| !(*s > 0.0 && *s <= 1.0))
            {
                return Err(bad(
                    "update",
                    format!(
                        "{} scales for {} parts: one each, within (0, 1], and at least one part",
                        m.scales.len(),
                        m.parts.len()
                    ),
                ));
            }
            let mut mean = Mean::new(shapes.iter().map(|(_, s)| s.iter().product()));
            for (part, &scale) in m.parts.iter().zip(&m.scales) {
                mean.add(&unpack_dense(part, shapes, cfg)?, scale);
            }
            Ok(mean.finish())
        }
    }
}

/// A packed SparseLoCo update read against `shapes`, as dense tensors.
fn unpack_dense(
    packed: &SparseUpdate,
    shapes: &[(String, Vec<usize>)],
    cfg: &SparseConfig,
) -> Result<Vec<Vec<f32>>, TrainError> {
    Ok(unpack(packed, shapes, cfg)?
        .iter()
        .map(|t| t.to_dense())
        .collect())
}
