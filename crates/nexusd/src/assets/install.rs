//! The content-addressed store (`<data>/assets/sha256/<hex>`) and the end of a run: staged files
//! are renamed into the store, then all of a run's asset rows are inserted in one transaction.
//! One lock orders commits and removals, so a file another run is about to reference is never
//! removed under it. A commit that fails removes the files it added; files no asset references
//! (a crash between rename and insert) are removed at start-up.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nexus_lib::api::Asset;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::engine::Staged;
use super::hashio::{self, FileError, file_err};
use crate::store::assets::{self as rows, AssetRow, AssetsInserted};
use crate::store::{Store, StoreError, now_ms};

/// Why installing failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "{kind} {name} {version} is installed already with sha256 {installed}; remove it first (this run made {new})"
    )]
    Conflict {
        kind: String,
        name: String,
        version: String,
        installed: String,
        new: String,
    },
    #[error(transparent)]
    Io(#[from] FileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("install worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// The store of installed files.
#[derive(Debug, Clone)]
pub struct Cas {
    dir: PathBuf,
    /// Held by commits and removals.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Cas {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            lock: Arc::default(),
        }
    }

    /// Where the file with hash `sha256` lives.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Moves a staged file into the store (read-only, executable if asked); `Ok(true)` when it
    /// was not there yet. Blocking.
    fn place(&self, staged: &Staged) -> Result<bool, InstallError> {
        fs::create_dir_all(&self.dir).map_err(file_err("create", &self.dir))?;
        let target = self.path(&staged.sha256);
        if let Ok(meta) = fs::symlink_metadata(&target)
            && meta.is_file()
            && meta.len() == staged.size
        {
            return Ok(false);
        }
        let mode = if staged.executable { 0o555 } else { 0o444 };
        let file = fs::File::open(&staged.path).map_err(file_err("open", &staged.path))?;
        file.sync_all().map_err(file_err("sync", &staged.path))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(file_err("chmod", &staged.path))?;
        fs::rename(&staged.path, &target).map_err(file_err("move into the store", &target))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(file_err("sync", &self.dir))?;
        Ok(true)
    }

    /// Installs a run's staged files: into the store, then their rows in one transaction.
    pub async fn commit(
        &self,
        store: &Store,
        provider: &str,
        staged: Vec<Staged>,
    ) -> Result<Vec<Asset>, InstallError> {
        let _guard = self.lock.lock().await;
        let this = self.clone();
        let placing = staged.clone();
        let placed = tokio::task::spawn_blocking(move || {
            let mut added = Vec::new();
            for s in &placing {
                match this.place(s) {
                    Ok(true) => added.push(s.sha256.clone()),
                    Ok(false) => {}
                    Err(e) => return (added, Err(e)),
                }
            }
            (added, Ok(()))
        })
        .await
        .map_err(InstallError::Worker)?;
        let (added, result) = placed;
        if let Err(e) = result {
            self.remove_unreferenced(store, added).await;
            return Err(e);
        }
        let now = now_ms();
        let new_rows: Vec<AssetRow> = staged
            .iter()
            .map(|s| {
                let asset = Asset {
                    id: Uuid::now_v7(),
                    kind: s.kind,
                    name: s.name.clone(),
                    version: s.version.clone(),
                    sha256: s.sha256.clone(),
                    size_bytes: s.size,
                    path: self.path(&s.sha256).display().to_string(),
                    provider: provider.to_owned(),
                    inputs: s.inputs.clone(),
                    created_at: String::new(),
                };
                AssetRow::new(asset, now)
            })
            .collect();
        let inserted = store
            .call(move |c| rows::insert_assets(c, &new_rows).map(|r| (r, new_rows)))
            .await;
        match inserted {
            Ok((AssetsInserted::Ok(rows), _)) => Ok(rows.iter().map(AssetRow::to_api).collect()),
            Ok((AssetsInserted::Conflict(old), new_rows)) => {
                self.remove_unreferenced(store, added).await;
                let new = new_rows
                    .iter()
                    .find(|r| (r.kind, &r.name, &r.version) == (old.kind, &old.name, &old.version))
                    .map(|r| r.sha256.clone())
                    .unwrap_or_default();
                Err(InstallError::Conflict {
                    kind: old.kind.to_string(),
                    name: old.name.clone(),
                    version: old.version.clone(),
                    installed: old.sha256.clone(),
                    new,
                })
            }
            Err(e) => {
                self.remove_unreferenced(store, added).await;
                Err(e.into())
            }
        }
    }

    /// Removes the store files of `hashes` that no asset references (the caller holds the lock).
    async fn remove_unreferenced(&self, store: &Store, hashes: Vec<String>) {
        for sha in hashes {
            let key = sha.clone();
            if let Ok(false) = store.call(move |c| rows::sha_referenced(c, &key)).await {
                let _ = fs::remove_file(self.path(&sha));
            }
        }
    }

    /// Deletes asset `id`'s row, and its file when no other asset uses it.
    pub async fn remove(&self, store: &Store, row: &AssetRow) -> Result<(), InstallError> {
        let _guard = self.lock.lock().await;
        let id = row.id;
        let shared = store.call(move |c| rows::delete_asset(c, id)).await?;
        if shared == Some(false) {
            let path = self.path(&row.sha256);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(file_err("remove", &path)(e).into()),
            }
        }
        Ok(())
    }

    /// Removes store files no asset references and anything that is not a store file. Blocking;
    /// at start-up, before requests are served.
    pub fn gc(&self, referenced: &HashSet<String>) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !referenced.contains(&name) && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Hashes the file of `row` again: `(sha256, size)`, or `None` when it is missing.
    pub fn rehash(
        &self,
        row: &AssetRow,
        cancel: &CancellationToken,
    ) -> Result<Option<(String, u64)>, InstallError> {
        let path = Path::new(&row.path);
        match hashio::hash_file(path, cancel) {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_err("read", path)(e).into()),
        }
    }
}
