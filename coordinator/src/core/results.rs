//! What the core hands the shell to keep: an accepted [`Contribution`], a closed round's
//! [`RoundSummary`], and the [`Snapshot`] a restarted coordinator resumes from.

use serde::{Deserialize, Serialize};
use tessera_compute::reference::ModelParams;
use tessera_protocol::messages::Update;
use tessera_protocol::PublicKey;

/// An accepted work unit's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// Round.
    pub round: u64,
    /// Replica slot.
    pub slot: u64,
    /// Unit id.
    pub unit: u64,
    /// Who did it.
    pub contributor: PublicKey,
    /// Tokens trained on.
    pub tokens: u64,
    /// Sum of token losses.
    pub loss_sum: f64,
    /// The update as received.
    pub update: Update,
}

/// A closed round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundSummary {
    /// The round that closed.
    pub round: u64,
    /// The weight version it produced.
    pub version: u64,
    /// Mean training loss over the round's tokens.
    pub loss: f64,
    /// Tokens trained.
    pub tokens: u64,
    /// Contributors whose units were accepted.
    pub contributors: Vec<PublicKey>,
    /// Scale each slot's pseudo-gradient got from the median clip.
    pub clip_scales: Vec<f64>,
}

/// Everything needed to resume a run after a crash, besides the accepted contributions of the
/// open round (which the ledger holds).
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Current (open) round.
    pub round: u64,
    /// Weight version (rounds closed).
    pub version: u64,
    /// Weights at that version.
    pub weights: ModelParams<f32>,
    /// Their digest (`core::weights_digest`), as the log's `Closed` entry records it: it
    /// names the checkpoint (`store::checkpoint_name`).
    pub digest: [u8; 32],
    /// Loss of each closed round.
    pub losses: Vec<f64>,
    /// Next unit id.
    pub next_unit: u64,
    /// Next lease id.
    pub next_lease: u64,
    /// Pipeline runs: the authoritative AdamW moments (first, second) at that version, once a
    /// step was taken.
    pub moments: Option<(ModelParams<f32>, ModelParams<f32>)>,
    /// The aggregate that produced this version from the previous one (see [`rules`]), kept
    /// beside the checkpoint; none for the initial weights and for a resumed snapshot.
    pub aggregate: Option<ModelParams<f32>>,
}
