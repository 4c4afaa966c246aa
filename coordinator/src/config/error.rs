//! Why a run configuration cannot be used: one variant per kind of mistake, each carrying the
//! typed error of the part that found it, so callers and tests match the kind, not its words.

use std::path::PathBuf;

use tessera_compute::ComputeError;
use tessera_plan::PlanError;
use tessera_train::TrainError;

use crate::core::spec::ChecksError;
use crate::data::DataError;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML, an unknown field, or an unknown name for a choice.
    #[error("run config: {0}")]
    Parse(String),
    /// A file it names cannot be read.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// `[model]` names more than one source.
    #[error("run config: [model] takes one of preset, config, init_from")]
    ModelSources,
    /// `[model] preset` names no preset.
    #[error("run config: unknown preset {0:?} (tiny-byte, small-byte)")]
    UnknownPreset(String),
    /// The model's `config.json` or weights cannot be used.
    #[error("run config: model: {0}")]
    Model(#[from] ComputeError),
    /// The data or the tokenizer cannot be used.
    #[error("run config: data: {0}")]
    Data(#[from] DataError),
    /// `[data] builtin = false` without a `path`.
    #[error("run config: [data] needs path = \"...\" when builtin = false")]
    NoData,
    /// The tokenizer makes ids the model has no embedding for.
    #[error("run config: token id {max} from the tokenizer (vocabulary {tokenizer}) is outside the model's vocabulary of {model}")]
    Vocabulary {
        /// The largest id in the data.
        max: u32,
        /// The tokenizer's vocabulary.
        tokenizer: usize,
        /// The model's vocabulary.
        model: usize,
    },
    /// `[train] quorum` is zero or more than the replicas.
    #[error("run config: [train] quorum = {quorum} must be between 1 and replicas = {replicas}")]
    Quorum {
        /// The quorum asked for.
        quorum: u64,
        /// The replicas per round.
        replicas: u64,
    },
    /// `[train] max_replicas` below `replicas` or above the most a round may have.
    #[error(
        "run config: [train] max_replicas = {max} must be between replicas = {replicas} and {}",
        crate::core::spec::MAX_REPLICAS
    )]
    MaxReplicas {
        /// The most asked for.
        max: u64,
        /// The least.
        replicas: u64,
    },
    /// A whole-model run that checks work with rounds of fewer than three updates.
    #[error("run config: a whole-model run that checks work needs [train] replicas and quorum of at least {} (its checks compare each update with the round's median, which says nothing of fewer; they are {replicas} and {quorum}); [checks] enabled = false trains without checks", super::MIN_CHECKED_REPLICAS)]
    TooFewChecked {
        /// The replicas a round opens with.
        replicas: u64,
        /// The quorum.
        quorum: u64,
    },
    /// A count that must be positive is zero.
    #[error("run config: {0} must be positive")]
    NotPositive(&'static str),
    /// Not one batch of data.
    #[error("run config: {tokens} tokens of data are too few for batches of {batch} x {seq}")]
    TooFewTokens {
        /// Tokens in the data.
        tokens: usize,
        /// Sequences per batch.
        batch: u64,
        /// Tokens per sequence.
        seq: u64,
    },
    /// SparseLoCo's settings for `setting` (`sync` or `[pipeline] grads`) cannot work.
    #[error("run config: {setting}: {source}")]
    Sparse {
        /// The setting that asked for SparseLoCo.
        setting: &'static str,
        /// What is wrong with the `[train]` chunk, k or beta.
        source: TrainError,
    },
    /// The planner cannot cut the model for `[pipeline]`.
    #[error("run config: [pipeline] {0}")]
    Plan(#[from] PlanError),
    /// The planner's cut does not make a pipeline (a planner bug, reported rather than run).
    #[error("run config: [pipeline] {0}")]
    Pipeline(String),
    /// A `[checks]` value cannot work.
    #[error("run config: {0}")]
    Checks(#[from] ChecksError),
    /// `[checks]` asked of a pipeline whose gradient sums are sparse.
    #[error("run config: [checks] need [pipeline] grads = \"dense\": sparse gradient sums carry each lease's private error feedback, which no other lease can reproduce")]
    ChecksOfSparseGrads,
    /// A whole-model check (`replay`, `held_out`) asked of a pipeline run.
    #[error("run config: [checks] {0} is for whole-model runs: pipeline leases are checked by second replicas")]
    WholeModelCheck(&'static str),
    /// So many sequences held out that a batch no longer fits in the rest.
    #[error("run config: [checks] held_out = {held_out} leaves too few of the data's {samples} sequences to train on (batch = {batch})")]
    HeldOutTooMany {
        /// Sequences held out.
        held_out: u64,
        /// Sequences in the data.
        samples: u64,
        /// Sequences per batch.
        batch: u64,
    },
    /// An invitation that is not a key.
    #[error(transparent)]
    Invite(#[from] BadInvite),
}

/// An `[admission] invite` entry that is not a public key.
#[derive(Debug, thiserror::Error)]
#[error("run config: [admission] invite entry {position} is not a public key (64 hex characters)")]
pub struct BadInvite {
    /// Its place in the list, from 1.
    pub position: usize,
}

impl ConfigError {
    /// A file that cannot be read.
    pub(crate) fn file(path: &std::path::Path, why: impl ToString) -> Self {
        ConfigError::File {
            path: path.to_path_buf(),
            why: why.to_string(),
        }
    }
}
