//! Reading an update (dense or SparseLoCo) against the tensors it must cover: every tensor
//! present once, in order, with the right shape and finite values; sparse tensors checked
//! against the run's compression parameters. Used by the coordinator on submissions and by
//! replicas on outer steps.

use tessera_protocol::messages::Update;

use crate::error::TrainError;
use crate::sparseloco::{Compressed, SparseConfig};

/// A tensor shape as the `[rows, cols]` the chunking sees (a vector is one row).
pub fn two_d(shape: &[usize]) -> [usize; 2] {
    if shape.len() == 2 {
        [shape[0], shape[1]]
    } else {
        [1, shape.iter().product()]
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
        Update::Sparse(ts) => ts.len(),
    };
    if count != shapes.len() {
        return Err(bad(
            "update",
            format!("{count} tensors, the model has {}", shapes.len()),
        ));
    }
    let check_name = |got: &str, want: &str| {
        if got == want {
            Ok(())
        } else {
            Err(bad(got, format!("expected {want} here")))
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
        Update::Sparse(ts) => {
            let cfg = sparse.ok_or_else(|| bad("update", "this run syncs dense updates".into()))?;
            ts.iter()
                .zip(shapes)
                .map(|(t, (name, shape))| {
                    check_name(&t.name, name)?;
                    Ok(Compressed::from_wire(t, two_d(shape), cfg)?.to_dense())
                })
                .collect()
        }
    }
}
