//! A run's durable writes in batches: [`Write`], and [`Store::write`], which makes a batch
//! durable all or nothing (blobs synced first, then every row in one transaction), with the
//! collection of blobs that no row names.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tessera_compute::hf::params_to_safetensors;
use tessera_compute::ModelConfig;
use tessera_protocol::identity::hex;
use tessera_protocol::log::SignedEntry;
use tessera_protocol::log_store::StoredEntry;
use tessera_protocol::signed::signing_bytes;

use super::{checkpoint_name, corrupt, Store, StoreError};
use crate::core::{Action, Contribution, Snapshot};

/// Where the checkpoint of `version` with weights digest `weights` lies in the object store.
fn checkpoint_path(version: u64, weights: &[u8; 32]) -> String {
    format!("checkpoints/{}", checkpoint_name(version, weights))
}

/// Where a contribution's update is kept until its round closes: named by its round and its
/// content, so a blob once written is never overwritten (a slot that runs again after a
/// withdrawal writes another).
fn blob_path(round: u64, bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("ledger/round-{round}-{}.bin", hex(&digest[..16]))
}

/// One durable write of a [`Store::write`] batch.
#[derive(Clone, Copy, Debug)]
pub enum Write<'a> {
    /// A run-log entry.
    Log(&'a SignedEntry),
    /// An accepted contribution: its update as a blob, its row in the ledger.
    Record(&'a Contribution),
    /// A contribution a later check threw out: its ledger row goes (its slot runs again).
    Withdraw {
        /// Its round.
        round: u64,
        /// Its slot.
        slot: u64,
    },
    /// A round boundary: the snapshot's checkpoint, and the state row pointing at it.
    Commit {
        /// The run's name.
        run: &'a str,
        /// The model's shape.
        cfg: &'a ModelConfig,
        /// What to commit.
        snap: &'a Snapshot,
    },
}

impl<'a> Write<'a> {
    /// The write an action of the core asks for, if it asks for one (a round's commit needs
    /// the core's snapshot, so it is not one of these).
    pub fn of(action: &'a Action) -> Option<Self> {
        match action {
            Action::Logged(e) => Some(Write::Log(e)),
            Action::Accepted(c) => Some(Write::Record(c)),
            &Action::Withdrawn { round, slot } => Some(Write::Withdraw { round, slot }),
            _ => None,
        }
    }
}

/// Syncs `file` and every directory from its own up to `root`.
fn sync_path(root: &Path, file: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    let sync = |p: &Path| {
        std::fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(|e| (p.to_path_buf(), e))
    };
    sync(file)?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        sync(d)?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

impl Store {
    /// Writes an object and makes it durable before returning: the object store writes a
    /// temporary file and renames it into place; the file, then every directory from its own up
    /// to the run directory, is synced, so that neither its bytes nor its name can be lost
    /// after a row that names it commits.
    pub(super) async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.objects
            .put(&ObjPath::from(path), PutPayload::from(bytes))
            .await?;
        let (root, file) = (self.dir.clone(), self.dir.join(path));
        let synced = tokio::task::spawn_blocking(move || sync_path(&root, &file))
            .await
            .map_err(|e| corrupt(path, e))?;
        synced.map_err(|(path, source)| StoreError::Io { path, source })
    }

    /// Writes a checkpoint's files durably (see [`Store::put`]): the Hugging Face checkpoint of
    /// a snapshot, with the AdamW moments of pipeline runs and the aggregate that produced it
    /// (for replays), in the folder its version and weights name; returns the folder, as a
    /// path and as the object store names it.
    async fn write_checkpoint(
        &self,
        cfg: &ModelConfig,
        snap: &Snapshot,
    ) -> Result<(PathBuf, String), StoreError> {
        let base = checkpoint_path(snap.version, &snap.digest);
        let st = params_to_safetensors(cfg, &snap.weights).map_err(|e| corrupt(&base, e))?;
        self.put(&format!("{base}/model.safetensors"), st).await?;
        self.put(
            &format!("{base}/config.json"),
            cfg.to_hf_json().into_bytes(),
        )
        .await?;
        // Moments move like the weights (a tied head's equal the embedding's); an aggregate's
        // head part is its own.
        let untied = cfg.untied();
        let kept = snap
            .moments
            .iter()
            .flat_map(|(m, v)| [("adam_m", m, cfg), ("adam_v", v, cfg)])
            .chain(snap.aggregate.iter().map(|a| ("aggregate", a, &untied)));
        for (name, t, cfg) in kept {
            let path = format!("{base}/{name}.safetensors");
            let st = params_to_safetensors(cfg, t).map_err(|e| corrupt(&path, e))?;
            self.put(&path, st).await?;
        }
        Ok((self.dir.join(&base), base))
    }

    /// Makes a batch of writes durable, all or nothing: first the blobs the rows will name
    /// (contributions' updates, checkpoints), each on disk before any row names it; then every
    /// row, in the batch's order, in one transaction; then the blobs no row can name any more
    /// (closed rounds' updates) are dropped. Returns the checkpoints written. A crash at any
    /// point leaves the rows of the last whole batch, and at worst blobs that no row names
    /// ([`Store::load`] collects them).
    pub async fn write(&self, batch: &[Write<'_>]) -> Result<Vec<PathBuf>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut blobs = Vec::with_capacity(batch.len());
        let mut checkpoints = Vec::new();
        for w in batch {
            blobs.push(match w {
                Write::Record(c) => {
                    let bytes = signing_bytes(*c).map_err(|e| corrupt("a contribution", e))?;
                    let path = blob_path(c.round, &bytes);
                    self.put(&path, bytes).await?;
                    Some(path)
                }
                Write::Commit { cfg, snap, .. } => {
                    let (dir, name) = self.write_checkpoint(cfg, snap).await?;
                    checkpoints.push(dir);
                    Some(name)
                }
                Write::Log(_) | Write::Withdraw { .. } => None,
            });
        }
        let mut tx = self.db.begin().await?;
        for (w, blob) in batch.iter().zip(&blobs) {
            match w {
                Write::Log(e) => {
                    sqlx::query("INSERT INTO run_log (idx, entry) VALUES ($1, $2)")
                        .bind(e.entry.index as i64)
                        .bind(StoredEntry::encode(e))
                        .execute(&mut *tx)
                        .await?;
                }
                Write::Record(c) => {
                    sqlx::query("INSERT INTO ledger (round, slot, unit, contributor, tokens, loss_sum, blob) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                        .bind(c.round as i64)
                        .bind(c.slot as i64)
                        .bind(c.unit as i64)
                        .bind(c.contributor.to_string())
                        .bind(c.tokens as i64)
                        .bind(c.loss_sum)
                        .bind(blob.as_deref().unwrap_or_default())
                        .execute(&mut *tx)
                        .await?;
                }
                Write::Withdraw { round, slot } => {
                    sqlx::query("DELETE FROM ledger WHERE round = $1 AND slot = $2")
                        .bind(*round as i64)
                        .bind(*slot as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                Write::Commit { run, snap, .. } => {
                    let checkpoint = blob;
                    let losses =
                        serde_json::to_string(&snap.losses).map_err(|e| corrupt("losses", e))?;
                    sqlx::query(
                        "INSERT INTO run_state (id, run, round, version, losses, next_unit, next_lease, checkpoint)
                         VALUES (1, $1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (id) DO UPDATE SET run = excluded.run, round = excluded.round, version = excluded.version,
                           losses = excluded.losses, next_unit = excluded.next_unit, next_lease = excluded.next_lease,
                           checkpoint = excluded.checkpoint",
                    )
                    .bind(*run)
                    .bind(snap.round as i64)
                    .bind(snap.version as i64)
                    .bind(losses)
                    .bind(snap.next_unit as i64)
                    .bind(snap.next_lease as i64)
                    .bind(checkpoint.as_deref().unwrap_or_default())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        let committed = batch
            .iter()
            .filter_map(|w| match w {
                Write::Commit { snap, .. } => Some(snap.round),
                _ => None,
            })
            .max();
        if let Some(round) = committed {
            self.collect_blobs(round, None).await?;
        }
        Ok(checkpoints)
    }

    /// Drops the update blobs of rounds before `open`, and, given the paths the ledger names,
    /// those of round `open` that it does not name (an update written by a batch that never
    /// committed, or withdrawn).
    pub(super) async fn collect_blobs(
        &self,
        open: u64,
        named: Option<&HashSet<String>>,
    ) -> Result<(), StoreError> {
        let mut listed = self.objects.list(Some(&ObjPath::from("ledger")));
        let mut doomed = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta?;
            let name = meta.location.filename().unwrap_or_default().to_string();
            let round = name
                .strip_prefix("round-")
                .and_then(|r| r.split('-').next())
                .and_then(|r| r.parse::<u64>().ok());
            let orphan = named.is_some_and(|n| !n.contains(meta.location.as_ref()));
            if round.is_some_and(|r| r < open || (r == open && orphan)) {
                doomed.push(meta.location);
            }
        }
        for path in doomed {
            self.objects.delete(&path).await?;
        }
        Ok(())
    }

    /// Drops the checkpoint files of versions after `committed`, and those of version
    /// `committed` outside `named` (the state row's checkpoint): written by a batch whose rows
    /// never committed (its round runs again and writes another), so that no folder in
    /// `checkpoints/` holds a version the run does not hold.
    pub(super) async fn collect_checkpoints(
        &self,
        committed: u64,
        named: &str,
    ) -> Result<(), StoreError> {
        let mut listed = self.objects.list(Some(&ObjPath::from("checkpoints")));
        let mut doomed = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta?;
            let Some(folder) = meta
                .location
                .as_ref()
                .strip_prefix("checkpoints/")
                .and_then(|rest| rest.split_once('/'))
                .map(|(folder, _)| folder)
            else {
                continue;
            };
            let version = super::parse_checkpoint_name(folder).map(|(v, _)| v);
            let outside = format!("checkpoints/{folder}") != named;
            if version.is_some_and(|v| v > committed || (v == committed && outside)) {
                doomed.push(meta.location);
            }
        }
        for path in doomed {
            self.objects.delete(&path).await?;
        }
        Ok(())
    }
}
