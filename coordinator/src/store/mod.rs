//! Durable run state. The run's state row and a permanent ledger of accepted contributions live
//! in SQL (SQLite file in the run directory by default, PostgreSQL by URL, through sqlx); the
//! blobs (each contribution's update until its round commits, and a Hugging Face checkpoint per
//! closed round: `checkpoints/round-N-HASH/model.safetensors` + `config.json`, named by its
//! version and its weights' digest, [`checkpoint_name`]) live in an object
//! store (the run directory by default, via `object_store`). A coordinator killed mid-round
//! resumes from the last committed round plus the open round's accepted contributions.
//!
//! Writes come in batches ([`Store::write`]): the blobs first, each synced to disk before any
//! row names it, then every row of the batch (log entries, ledger rows, the state row) in one
//! transaction, so the log and the ledger never disagree after a crash.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tessera_compute::hf::params_from_safetensors;
use tessera_compute::reference::ModelParams;
use tessera_compute::ModelConfig;
use tessera_protocol::log::SignedEntry;
use tessera_protocol::log_store::StoredEntry;
use tessera_protocol::messages::LogHead;
use tessera_protocol::signed::from_signing_bytes;

use crate::core::rules::RunRules;
use crate::core::{Contribution, Snapshot};

mod batch;
pub use batch::Write;

/// The name of the checkpoint of weights `version` whose weights digest
/// (`core::weights_digest`) is `weights`, under `checkpoints/`: `round-N-` and the digest's
/// first 8 bytes in hex. Named by its content, a checkpoint's folder is never written twice
/// with different weights (a round that runs again after a crash writes another, and the one
/// no row names is collected), so whoever reads a name reads what the log recorded for it.
pub fn checkpoint_name(version: u64, weights: &[u8; 32]) -> String {
    format!(
        "round-{version}-{}",
        tessera_protocol::identity::hex(&weights[..8])
    )
}

/// The version a checkpoint's folder name (`round-N-HASH`, or `round-N` as runs named them
/// before their names carried the digest) holds, and the digest prefix (hex) it names.
pub fn parse_checkpoint_name(name: &str) -> Option<(u64, Option<&str>)> {
    let rest = name.strip_prefix("round-")?;
    let (version, hash) = match rest.split_once('-') {
        Some((v, h)) => (v, Some(h)),
        None => (rest, None),
    };
    Some((version.parse().ok()?, hash))
}

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The object store.
    #[error("object store: {0}")]
    Objects(#[from] object_store::Error),
    /// A local directory.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
    /// A run log written in another format than this build writes.
    #[error("this data directory holds a version-{version} run log; this coordinator writes version {} and cannot continue it: check it with `tessera verify --log DIR`, or start a new run from it with `tessera fork`", tessera_protocol::log::LOG_VERSION)]
    LogVersion {
        /// The log's format version.
        version: u32,
    },
    /// Another coordinator serves this run already (its data directory or its database).
    #[error("another coordinator is serving {what}: stop it first (two coordinators on one run would write two logs)")]
    Locked {
        /// The data directory or the database.
        what: String,
    },
    /// Stored data that does not parse.
    #[error("{what}: {why}")]
    Corrupt {
        /// What.
        what: String,
        /// Why.
        why: String,
    },
}

fn corrupt(what: impl Into<String>, why: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        why: why.to_string(),
    }
}

/// A run's storage.
#[derive(Clone, Debug)]
pub struct Store {
    db: AnyPool,
    objects: Arc<dyn ObjectStore>,
    dir: PathBuf,
    /// Whether the database is PostgreSQL (which also takes the serving lock).
    postgres: bool,
}

/// One coordinator's hold on a run: an exclusive lock on `DATA_DIR/coordinator.lock` and, for a
/// PostgreSQL database, a session advisory lock on a connection kept for the purpose. Both go
/// when it is dropped or the process ends (a killed coordinator holds nothing).
pub struct ServingLock {
    _file: std::fs::File,
    _db: Option<sqlx::AnyConnection>,
}

impl ServingLock {
    /// Gives the run up at once: unlocks PostgreSQL's advisory lock and closes its connection
    /// politely, so another coordinator may take the run the moment this returns. Merely
    /// dropping the lock frees the database's side only when the server notices the socket
    /// has closed, which may be a little later.
    pub async fn release(self) -> Result<(), StoreError> {
        if let Some(mut conn) = self._db {
            let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                .bind(ADVISORY_KEY)
                .fetch_one(&mut conn)
                .await?;
            sqlx::Connection::close(conn).await?;
        }
        drop(self._file);
        Ok(())
    }
}

/// The advisory lock's key in PostgreSQL: one run per database.
const ADVISORY_KEY: i64 = 0x0074_6573_7365_7261; // "tessera"

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS run_state (
        id INTEGER PRIMARY KEY,
        run TEXT NOT NULL,
        round BIGINT NOT NULL,
        version BIGINT NOT NULL,
        losses TEXT NOT NULL,
        next_unit BIGINT NOT NULL,
        next_lease BIGINT NOT NULL,
        checkpoint TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS run_log (
        idx BIGINT PRIMARY KEY,
        entry TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger (
        round BIGINT NOT NULL,
        slot BIGINT NOT NULL,
        unit BIGINT NOT NULL,
        contributor TEXT NOT NULL,
        tokens BIGINT NOT NULL,
        loss_sum DOUBLE PRECISION NOT NULL,
        blob TEXT NOT NULL,
        PRIMARY KEY (round, slot))",
];

impl Store {
    /// Opens (creating) the storage of a run in `dir`: SQLite at `dir/run.db` unless
    /// `database_url` names another database (e.g. `postgres://...`), objects under `dir`.
    pub async fn open(dir: &Path, database_url: Option<&str>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let dir = dir.canonicalize().map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        sqlx::any::install_default_drivers();
        let url = match database_url {
            Some(u) => u.to_string(),
            None => format!("sqlite://{}?mode=rwc", dir.join("run.db").display()),
        };
        let db = AnyPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await?;
        let postgres = url.starts_with("postgres");
        if !postgres {
            // Write-ahead logging: a batch's commit appends to the log file instead of
            // rewriting pages, and readers (the log's pages over HTTP) do not block it.
            sqlx::query("PRAGMA journal_mode=WAL")
                .fetch_optional(&db)
                .await?;
        }
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&db).await?;
        }
        let objects: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&dir)?);
        Ok(Store {
            db,
            objects,
            dir,
            postgres,
        })
    }

    /// Takes the run for this coordinator alone (see [`ServingLock`]), or says who holds it.
    /// Readers (`tessera verify`) do not take it; writers (`tessera coordinator`, and
    /// `tessera fork` into its new directory) do.
    pub async fn lock(&self) -> Result<ServingLock, StoreError> {
        let path = self.dir.join("coordinator.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    what: format!("the data directory {}", self.dir.display()),
                })
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::Io { path, source })
            }
        }
        let db = if self.postgres {
            let mut conn = self.db.acquire().await?;
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(ADVISORY_KEY)
                .fetch_one(&mut *conn)
                .await?;
            if !taken {
                return Err(StoreError::Locked {
                    what: "this PostgreSQL database".into(),
                });
            }
            // Its own connection from now on: closing it (drop, or the process ending) frees
            // the lock.
            Some(conn.detach())
        } else {
            None
        };
        Ok(ServingLock {
            _file: file,
            _db: db,
        })
    }

    /// The run directory (where local objects, and checkpoints, are).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn get(&self, path: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .objects
            .get(&ObjPath::from(path))
            .await?
            .bytes()
            .await?
            .to_vec())
    }

    /// Writes the run's rules (`checkpoints/rules.json`), which `tessera verify` replays
    /// checkpoints by.
    pub async fn write_rules(&self, rules: &RunRules) -> Result<(), StoreError> {
        let text = serde_json::to_string_pretty(rules).map_err(|e| corrupt("rules", e))?;
        self.put("checkpoints/rules.json", text.into_bytes()).await
    }

    /// Keeps the run's Hugging Face tokenizer beside its checkpoints
    /// (`checkpoints/tokenizer.json`), where `tessera generate` finds it.
    pub async fn write_tokenizer(&self, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.put("checkpoints/tokenizer.json", bytes).await
    }

    /// Commits a round boundary on its own (see [`Store::write`]): the checkpoint, then the
    /// state row pointing at it; then the closed rounds' update blobs are dropped (their ledger
    /// rows stay).
    pub async fn commit(
        &self,
        run: &str,
        cfg: &ModelConfig,
        snap: &Snapshot,
    ) -> Result<PathBuf, StoreError> {
        let mut written = self.write(&[Write::Commit { run, cfg, snap }]).await?;
        written
            .pop()
            .ok_or_else(|| corrupt("a commit", "no checkpoint was written"))
    }

    /// Records an accepted contribution durably on its own (see [`Store::write`]): its update
    /// as a blob, then its ledger row.
    pub async fn record(&self, c: &Contribution) -> Result<(), StoreError> {
        self.write(&[Write::Record(c)]).await.map(drop)
    }

    /// Forgets an accepted contribution that a later check threw out, on its own (its slot runs
    /// again).
    pub async fn withdraw(&self, round: u64, slot: u64) -> Result<(), StoreError> {
        self.write(&[Write::Withdraw { round, slot }])
            .await
            .map(drop)
    }

    /// Appends a run-log entry on its own (as [`StoredEntry::encode`] writes it); an index is
    /// written once.
    pub async fn append_log(&self, e: &SignedEntry) -> Result<(), StoreError> {
        self.write(&[Write::Log(e)]).await.map(drop)
    }

    /// Run-log entries from index `from`, at most `limit`, in order, as stored: index and text
    /// (of whichever format version wrote them; see [`StoredEntry::decode`]).
    pub async fn read_log_stored(
        &self,
        from: u64,
        limit: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT idx, entry FROM run_log WHERE idx >= $1 ORDER BY idx LIMIT $2")
                .bind(from.min(i64::MAX as u64) as i64)
                .bind(limit.min(i64::MAX as u64) as i64)
                .fetch_all(&self.db)
                .await?;
        rows.iter()
            .map(|r| {
                let idx: i64 = r.try_get("idx")?;
                Ok((idx as u64, r.try_get("entry")?))
            })
            .collect()
    }

    /// Run-log entries from index `from`, at most `limit`, in order; a log of another format
    /// version than this build writes is refused ([`StoreError::LogVersion`]).
    pub async fn read_log(&self, from: u64, limit: u64) -> Result<Vec<SignedEntry>, StoreError> {
        self.read_log_stored(from, limit)
            .await?
            .into_iter()
            .map(|(idx, text)| {
                match StoredEntry::decode(&text)
                    .map_err(|e| corrupt(format!("log entry {idx}"), e))?
                {
                    StoredEntry::Current(e) => Ok(e),
                    other => Err(StoreError::LogVersion {
                        version: other.version(),
                    }),
                }
            })
            .collect()
    }

    /// The last run-log entry's head, if the log has any.
    pub async fn log_head(&self) -> Result<Option<LogHead>, StoreError> {
        let Some(row) = sqlx::query("SELECT MAX(idx) AS last FROM run_log")
            .fetch_optional(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let last: Option<i64> = row.try_get("last")?;
        let Some(last) = last else { return Ok(None) };
        let e = self.read_log(last as u64, 1).await?;
        Ok(e.first().map(SignedEntry::head))
    }

    /// Accepted units per contributor (hex key), from the permanent ledger.
    pub async fn accepted_per_contributor(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query("SELECT contributor, COUNT(*) AS n FROM ledger GROUP BY contributor ORDER BY contributor").fetch_all(&self.db).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("contributor")?,
                    r.try_get::<i64, _>("n")? as u64,
                ))
            })
            .collect()
    }

    /// The open round and how many accepted contributions its ledger holds, if the run has
    /// committed anything. It only reads, so it is safe beside a serving coordinator.
    pub async fn open_round(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let Some(row) = sqlx::query("SELECT round FROM run_state WHERE id = 1")
            .fetch_optional(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let round = row.try_get::<i64, _>("round")?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE round = $1")
            .bind(round)
            .fetch_one(&self.db)
            .await?;
        Ok(Some((round as u64, n as u64)))
    }

    /// The last committed snapshot and the open round's accepted contributions, if the run has
    /// committed anything. It also deletes the blobs no committed row names and the checkpoints
    /// of versions after the committed one (a batch that never committed may have left them), which would break a batch a serving coordinator has in
    /// flight: hence the run's [`ServingLock`], as proof that no other coordinator is serving.
    pub async fn load(
        &self,
        cfg: &ModelConfig,
        _held: &ServingLock,
    ) -> Result<Option<(Snapshot, Vec<Contribution>)>, StoreError> {
        let Some(row) = sqlx::query("SELECT round, version, losses, next_unit, next_lease, checkpoint FROM run_state WHERE id = 1").fetch_optional(&self.db).await? else {
            return Ok(None);
        };
        let round = row.try_get::<i64, _>("round")? as u64;
        let checkpoint: String = row.try_get("checkpoint")?;
        let losses: Vec<f64> = serde_json::from_str(&row.try_get::<String, _>("losses")?)
            .map_err(|e| corrupt("losses", e))?;
        let bytes = self.get(&format!("{checkpoint}/model.safetensors")).await?;
        let weights = params_from_safetensors(cfg, &bytes).map_err(|e| corrupt(&checkpoint, e))?;
        let digest = crate::core::weights_digest(&weights);
        // A folder named by its digest (runs before that carried only the version) holds
        // those weights.
        let folder = checkpoint.rsplit('/').next().unwrap_or_default();
        if let Some((version, Some(_))) = parse_checkpoint_name(folder) {
            if checkpoint_name(version, &digest) != folder {
                return Err(corrupt(
                    &checkpoint,
                    "its weights are not the ones its name records",
                ));
            }
        }
        let rows = sqlx::query("SELECT blob FROM ledger WHERE round = $1 ORDER BY slot")
            .bind(round as i64)
            .fetch_all(&self.db)
            .await?;
        let mut accepted = Vec::new();
        let mut named = HashSet::new();
        for r in rows {
            let path: String = r.try_get("blob")?;
            let c: Contribution =
                from_signing_bytes(&self.get(&path).await?).map_err(|e| corrupt(&path, e))?;
            accepted.push(c);
            named.insert(path);
        }
        // Blobs no row names: written by a batch that never committed, withdrawn, or of a
        // closed round whose cleanup a crash interrupted.
        self.collect_blobs(round, Some(&named)).await?;
        let version = row.try_get::<i64, _>("version")? as u64;
        self.collect_checkpoints(version, &checkpoint).await?;
        let mut moments = Vec::new();
        for name in ["adam_m", "adam_v"] {
            let path = format!("{checkpoint}/{name}.safetensors");
            match self.objects.get(&ObjPath::from(path.as_str())).await {
                Ok(r) => moments.push(
                    params_from_safetensors(cfg, &r.bytes().await?)
                        .map_err(|e| corrupt(&path, e))?,
                ),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let moments = match <[ModelParams<f32>; 2]>::try_from(moments) {
            Ok([m, v]) => Some((m, v)),
            Err(v) if v.is_empty() => None,
            Err(_) => {
                return Err(corrupt(
                    checkpoint.as_str(),
                    "one of the two AdamW moment files is missing",
                ))
            }
        };
        let snap = Snapshot {
            moments,
            round,
            version,
            weights,
            digest,
            losses,
            next_unit: row.try_get::<i64, _>("next_unit")? as u64,
            next_lease: row.try_get::<i64, _>("next_lease")? as u64,
            aggregate: None,
        };
        Ok(Some((snap, accepted)))
    }
}
