//! Durable run state in a directory: the latest committed snapshot (`state.json`, replaced
//! atomically), a Hugging Face checkpoint per closed round (`checkpoints/round-N/` with
//! `model.safetensors` and `config.json`, loadable by transformers), and a ledger of accepted
//! contributions of the open round (`ledger/`), so a coordinator killed mid-round resumes
//! without losing accepted work.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_compute::hf::{params_from_safetensors, params_to_safetensors};
use tessera_compute::ModelConfig;

use crate::core::{Contribution, Snapshot};

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
    /// A file that does not parse.
    #[error("{path}: {why}")]
    Corrupt {
        /// Where.
        path: PathBuf,
        /// What.
        why: String,
    },
}

/// The committed state besides the weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    run: String,
    round: u64,
    version: u64,
    losses: Vec<f64>,
    next_unit: u64,
    next_lease: u64,
    checkpoint: String,
}

/// A run's directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    let f = std::fs::File::open(&tmp).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl Store {
    /// Opens (creating) a run directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        for d in [dir.clone(), dir.join("checkpoints"), dir.join("ledger")] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(Store { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a Hugging Face checkpoint; returns its directory.
    pub fn write_checkpoint(
        &self,
        cfg: &ModelConfig,
        snap: &Snapshot,
    ) -> Result<PathBuf, StoreError> {
        let d = self
            .dir
            .join("checkpoints")
            .join(format!("round-{}", snap.version));
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        let st = params_to_safetensors(cfg, &snap.weights).map_err(|e| StoreError::Corrupt {
            path: d.clone(),
            why: e.to_string(),
        })?;
        write_atomic(&d.join("model.safetensors"), &st)?;
        write_atomic(&d.join("config.json"), cfg.to_hf_json().as_bytes())?;
        Ok(d)
    }

    /// Commits a round boundary: checkpoint, then the state pointing at it, then drops the
    /// closed round's ledger.
    pub fn commit(
        &self,
        run: &str,
        cfg: &ModelConfig,
        snap: &Snapshot,
    ) -> Result<PathBuf, StoreError> {
        let ck = self.write_checkpoint(cfg, snap)?;
        let state = State {
            run: run.to_string(),
            round: snap.round,
            version: snap.version,
            losses: snap.losses.clone(),
            next_unit: snap.next_unit,
            next_lease: snap.next_lease,
            checkpoint: ck
                .strip_prefix(&self.dir)
                .unwrap_or(&ck)
                .to_string_lossy()
                .into_owned(),
        };
        let json = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Corrupt {
            path: self.dir.join("state.json"),
            why: e.to_string(),
        })?;
        write_atomic(&self.dir.join("state.json"), &json)?;
        self.prune_ledger(snap.round)?;
        Ok(ck)
    }

    /// Records an accepted contribution durably (before its receipt is sent).
    pub fn record(&self, c: &Contribution) -> Result<(), StoreError> {
        let path = self
            .dir
            .join("ledger")
            .join(format!("round-{}-slot-{}.bin", c.round, c.slot));
        let bytes =
            tessera_protocol::signed::signing_bytes(c).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                why: e.to_string(),
            })?;
        write_atomic(&path, &bytes)
    }

    fn prune_ledger(&self, open_round: u64) -> Result<(), StoreError> {
        let d = self.dir.join("ledger");
        for e in std::fs::read_dir(&d).map_err(io(&d))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let round = name
                .strip_prefix("round-")
                .and_then(|r| r.split('-').next())
                .and_then(|r| r.parse::<u64>().ok());
            if round.is_some_and(|r| r < open_round) {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
            }
        }
        Ok(())
    }

    /// The last committed snapshot and the open round's accepted contributions, if the
    /// directory holds a run.
    pub fn load(
        &self,
        cfg: &ModelConfig,
    ) -> Result<Option<(Snapshot, Vec<Contribution>)>, StoreError> {
        let sp = self.dir.join("state.json");
        if !sp.exists() {
            return Ok(None);
        }
        let text = std::fs::read(&sp).map_err(io(&sp))?;
        let st: State = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            path: sp.clone(),
            why: e.to_string(),
        })?;
        let mp = self.dir.join(&st.checkpoint).join("model.safetensors");
        let bytes = std::fs::read(&mp).map_err(io(&mp))?;
        let weights = params_from_safetensors(cfg, &bytes).map_err(|e| StoreError::Corrupt {
            path: mp.clone(),
            why: e.to_string(),
        })?;
        let mut accepted = Vec::new();
        let d = self.dir.join("ledger");
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)
            .map_err(io(&d))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .collect();
        entries.sort();
        for p in entries {
            let b = std::fs::read(&p).map_err(io(&p))?;
            let c: Contribution =
                tessera_protocol::signed::from_signing_bytes(&b).map_err(|e| {
                    StoreError::Corrupt {
                        path: p.clone(),
                        why: e.to_string(),
                    }
                })?;
            if c.round == st.round {
                accepted.push(c);
            }
        }
        let snap = Snapshot {
            round: st.round,
            version: st.version,
            weights,
            losses: st.losses,
            next_unit: st.next_unit,
            next_lease: st.next_lease,
        };
        Ok(Some((snap, accepted)))
    }
}
