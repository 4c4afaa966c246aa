//! Checking an update from a contributor against the model before it may touch anything:
//! every tensor present once, in order, with the right shape, finite values; sparse tensors
//! decoded and checked against the run's compression parameters.

use tessera_compute::hf::tensor_shapes;
use tessera_protocol::messages::Update;
use tessera_train::sparseloco::Compressed;
use tessera_train::TrainError;

use super::Core;

impl Core {
    /// The update as dense tensors in model order, or why it does not fit.
    pub(super) fn dense_update(&self, u: &Update) -> Result<Vec<Vec<f32>>, TrainError> {
        let shapes = tensor_shapes(&self.spec.model);
        let bad = |name: &str, why: String| TrainError::BadUpdate {
            name: name.to_string(),
            why,
        };
        match u {
            Update::Dense(ts) => {
                if ts.len() != shapes.len() {
                    return Err(bad(
                        "update",
                        format!("{} tensors, the model has {}", ts.len(), shapes.len()),
                    ));
                }
                ts.iter()
                    .zip(&shapes)
                    .map(|(t, (name, shape))| {
                        if &t.name != name {
                            return Err(bad(&t.name, format!("expected {name} here")));
                        }
                        t.tensor.expect_shape(shape)?;
                        Ok(t.tensor.to_f32()?)
                    })
                    .collect()
            }
            Update::Sparse(ts) => {
                let cfg = self
                    .spec
                    .sparse()
                    .ok_or_else(|| bad("update", "this run syncs dense updates".into()))?;
                if ts.len() != shapes.len() {
                    return Err(bad(
                        "update",
                        format!("{} tensors, the model has {}", ts.len(), shapes.len()),
                    ));
                }
                ts.iter()
                    .zip(&shapes)
                    .map(|(t, (name, shape))| {
                        if &t.name != name {
                            return Err(bad(&t.name, format!("expected {name} here")));
                        }
                        let two_d = if shape.len() == 2 {
                            [shape[0], shape[1]]
                        } else {
                            [1, shape[0]]
                        };
                        Ok(Compressed::from_wire(t, two_d, &cfg)?.to_dense())
                    })
                    .collect()
            }
        }
    }
}
