//! Checking an update from a contributor against the model before it may touch anything (see
//! [`tessera_train::update::from_contributor`]).

use tessera_compute::hf::tensor_shapes;
use tessera_protocol::messages::{Submission, Update};
use tessera_protocol::{Code, Reason};
use tessera_train::update::from_contributor;
use tessera_train::TrainError;

use super::RunSpec;

/// Update `u` of a run `spec` as dense tensors in model order, or why it does not fit.
pub(super) fn dense_update(spec: &RunSpec, u: &Update) -> Result<Vec<Vec<f32>>, TrainError> {
    from_contributor(u, &tensor_shapes(&spec.model), spec.sparse().as_ref())
}

/// What is wrong with a whole-model submission's figures for a round of `spec` on weights
/// `version` (weights version, tokens, loss sum), if anything.
pub(super) fn submission_problem(spec: &RunSpec, version: u64, sub: &Submission) -> Option<Reason> {
    let expected_tokens = spec.inner_steps * spec.batch * spec.seq;
    if sub.weights != version {
        Some(Reason::new(
            Code::WrongVersion,
            format!(
                "computed on weights {} but the round uses {version}",
                sub.weights
            ),
        ))
    } else if sub.tokens != expected_tokens {
        Some(Reason::new(
            Code::WrongShape,
            format!("{} tokens, the unit has {expected_tokens}", sub.tokens),
        ))
    } else if !sub.loss_sum.is_finite() || sub.loss_sum < 0.0 {
        Some(Reason::new(
            Code::NotFinite,
            format!(
                "loss sum {} is not a finite non-negative number",
                sub.loss_sum
            ),
        ))
    } else {
        None
    }
}

/// Whether a float payload holds a NaN or an infinity (no honest computation sends one).
pub(super) fn payload_non_finite(t: &tessera_protocol::TensorPayload) -> bool {
    use tessera_protocol::DType;
    match t.dtype {
        DType::F32 => t
            .data
            .chunks_exact(4)
            .any(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
        DType::BF16 => t
            .data
            .chunks_exact(2)
            .any(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        _ => false,
    }
}

/// Why an update that does not fit the model (`why`) was refused: `NotFinite` when it holds NaN
/// or infinities, else `WrongShape`.
pub(super) fn update_refusal(u: &Update, why: impl std::fmt::Display) -> Reason {
    let code = if update_non_finite(u) {
        Code::NotFinite
    } else {
        Code::WrongShape
    };
    Reason::new(code, why.to_string())
}

/// Whether an update holds a NaN or an infinity.
pub(super) fn update_non_finite(u: &Update) -> bool {
    match u {
        Update::Dense(ts) => ts.iter().any(|t| payload_non_finite(&t.tensor)),
        Update::Sparse(u) => payload_non_finite(&u.levels),
        Update::Indexed(ts) => ts.iter().any(|t| payload_non_finite(&t.values)),
        Update::SparseMean(m) => m.parts.iter().any(|p| payload_non_finite(&p.levels)),
    }
}
