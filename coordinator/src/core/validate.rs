//! Checking an update from a contributor against the model before it may touch anything (see
//! [`tessera_train::update::to_dense`]).

use tessera_compute::hf::tensor_shapes;
use tessera_protocol::messages::Update;
use tessera_train::update::to_dense;
use tessera_train::TrainError;

use super::Core;

impl Core {
    /// The update as dense tensors in model order, or why it does not fit.
    pub(super) fn dense_update(&self, u: &Update) -> Result<Vec<Vec<f32>>, TrainError> {
        to_dense(
            u,
            &tensor_shapes(&self.spec.model),
            self.spec.sparse().as_ref(),
        )
    }
}
