//! The named choices of a run configuration as enums: serde refuses an unknown name when the
//! file is read, with the names it accepts, so no string is matched after that.

use serde::Deserialize;
use tessera_protocol::messages::{InnerOptimizer, SyncMode};
use tessera_protocol::ActEncoding;

/// `[train] optimizer`: the inner optimizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// AdamW (beta 0.9 / 0.95, eps 1e-8, the section's weight decay).
    #[default]
    AdamW,
    /// Plain SGD.
    Sgd,
}

impl Optimizer {
    /// The protocol's optimizer with `weight_decay` for AdamW.
    pub fn inner(self, weight_decay: f32) -> InnerOptimizer {
        match self {
            Optimizer::Sgd => InnerOptimizer::Sgd,
            Optimizer::AdamW => InnerOptimizer::AdamW {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay,
            },
        }
    }
}

/// `[train] sync` and `[pipeline] grads`: how updates travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// Every entry.
    Dense,
    /// SparseLoCo: the top-k entries of each chunk, with error feedback.
    Sparse,
}

impl Sync {
    /// The protocol's mode, with the `[train]` chunk side, k and beta for SparseLoCo.
    pub fn mode(self, chunk: u32, k: u32, beta: f32) -> SyncMode {
        match self {
            Sync::Dense => SyncMode::Dense,
            Sync::Sparse => SyncMode::Sparse {
                chunk: [chunk, chunk],
                k,
                beta,
            },
        }
    }
}

/// `[pipeline] activations`: how activations and their gradients travel between stages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activations {
    /// 4 bytes an entry.
    F32,
    /// 2 bytes an entry (default).
    #[default]
    Bf16,
    /// 1 byte an entry and a scale per row.
    Int8,
}

impl From<Activations> for ActEncoding {
    fn from(a: Activations) -> Self {
        match a {
            Activations::F32 => ActEncoding::F32,
            Activations::Bf16 => ActEncoding::Bf16,
            Activations::Int8 => ActEncoding::Int8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct One<T> {
        v: T,
    }

    fn read<T: for<'de> Deserialize<'de>>(v: &str) -> Result<T, String> {
        toml::from_str::<One<T>>(&format!("v = {v:?}"))
            .map(|o| o.v)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_read_as_choices_and_unknown_names_list_the_known_ones() {
        assert_eq!(read::<Optimizer>("adamw"), Ok(Optimizer::AdamW));
        assert_eq!(read::<Optimizer>("sgd"), Ok(Optimizer::Sgd));
        assert_eq!(read::<Sync>("sparse"), Ok(Sync::Sparse));
        assert_eq!(read::<Activations>("int8"), Ok(Activations::Int8));
        let e = read::<Optimizer>("adam").unwrap_err();
        assert!(e.contains("adamw") && e.contains("sgd"), "{e}");
        assert!(read::<Sync>("Dense").is_err(), "names are lower case");
    }

    #[test]
    fn choices_become_the_protocol_values() {
        assert_eq!(Optimizer::Sgd.inner(0.1), InnerOptimizer::Sgd);
        assert!(matches!(
            Optimizer::AdamW.inner(0.5),
            InnerOptimizer::AdamW { weight_decay, .. } if weight_decay == 0.5
        ));
        assert_eq!(Sync::Dense.mode(8, 2, 0.9), SyncMode::Dense);
        assert_eq!(
            Sync::Sparse.mode(8, 2, 0.9),
            SyncMode::Sparse {
                chunk: [8, 8],
                k: 2,
                beta: 0.9
            }
        );
        assert_eq!(ActEncoding::from(Activations::F32), ActEncoding::F32);
    }
}
