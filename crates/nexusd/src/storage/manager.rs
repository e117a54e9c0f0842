//! The pool as the daemon holds it: opened at start only when it already exists (a configured `pool`
//! directory, or an embedded image file that was made before), created and mounted on first use
//! otherwise, so that a daemon that never stores anything never formats or mounts a 20 GiB pool.
//! Closed (unmounted when this process mounted it) at shutdown.
//!
//! Every method may block (mkfs, mount, statvfs): call them from `spawn_blocking` or at start-up.

use std::sync::{Mutex, MutexGuard};

use nexus_lib::api::PoolHealth;

use super::{Pool, PoolConfig, PoolError, Storage};

/// The daemon's pool, open or not yet.
#[derive(Debug)]
pub struct PoolManager {
    config: PoolConfig,
    open: Mutex<Option<(Pool, Storage)>>,
}

impl PoolManager {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            config,
            open: Mutex::new(None),
        }
    }

    /// A pool already open at `root`, which is not checked to be btrfs: for unit tests that need
    /// the paths of drives but never make a subvolume.
    #[cfg(test)]
    pub(crate) fn opened_unchecked(root: &std::path::Path) -> Self {
        Self {
            config: PoolConfig::Dir(root.to_owned()),
            open: Mutex::new(Some((Pool::unchecked(root), Storage::unchecked(root)))),
        }
    }

    /// Whether the pool exists already: a configured directory always does; the embedded pool once its
    /// image file was made.
    pub fn exists(&self) -> bool {
        match &self.config {
            PoolConfig::Dir(_) => true,
            PoolConfig::Image { file, .. } => file.exists(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<(Pool, Storage)>> {
        // A panic while holding the lock leaves the `Option` consistent: recover it.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At start-up: opens the pool when it exists (see [`PoolManager::exists`]), else does nothing.
    pub fn open_existing(&self) -> Result<Option<Storage>, PoolError> {
        if !self.exists() {
            return Ok(None);
        }
        self.get_or_create().map(Some)
    }

    /// The open pool's storage, if it is open.
    pub fn get(&self) -> Option<Storage> {
        self.lock().as_ref().map(|(_, storage)| storage.clone())
    }

    /// The pool's storage, opening (and for the embedded pool, formatting and mounting) it first.
    pub fn get_or_create(&self) -> Result<Storage, PoolError> {
        let mut open = self.lock();
        if let Some((_, storage)) = open.as_ref() {
            return Ok(storage.clone());
        }
        let pool = Pool::open(&self.config)?;
        let storage = match Storage::open(pool.root()) {
            Ok(storage) => storage,
            Err(e) => {
                let _ = pool.close();
                return Err(e);
            }
        };
        tracing::info!(
            root = %pool.root().display(),
            mounted_by_us = pool.mounted_by_us(),
            "storage pool open"
        );
        *open = Some((pool, storage.clone()));
        Ok(storage)
    }

    /// What `/v1/health` reports about the pool.
    pub fn health(&self) -> PoolHealth {
        let (path, mode) = match &self.config {
            PoolConfig::Dir(dir) => (dir, "dir"),
            PoolConfig::Image { mountpoint, .. } => (mountpoint, "image"),
        };
        let mut report = PoolHealth {
            path: path.display().to_string(),
            mode: mode.into(),
            status: "not created yet".into(),
            mounted: false,
            free_bytes: None,
            total_bytes: None,
            message: None,
        };
        let open = self.lock();
        if let Some((pool, _)) = open.as_ref() {
            report.path = pool.root().display().to_string();
            report.mounted = true;
            match pool.free_bytes().and_then(|f| Ok((f, pool.total_bytes()?))) {
                Ok((free, total)) => {
                    report.status = "ready".into();
                    report.free_bytes = Some(free);
                    report.total_bytes = Some(total);
                }
                Err(e) => {
                    report.status = "unavailable".into();
                    report.message = Some(e.to_string());
                }
            }
        } else if self.exists() {
            report.status = "unavailable".into();
        }
        report
    }

    /// Shuts the pool down: unmounts what this process mounted, unless it is busy (VMs keep running
    /// across a daemon restart), which is reported as [`PoolError::Busy`].
    pub fn close(&self) -> Result<(), PoolError> {
        match self.lock().take() {
            Some((pool, _)) => pool.close(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embedded_pool_without_its_image_file_is_not_created_yet() {
        let dir = tempfile::tempdir().unwrap();
        let manager = PoolManager::new(PoolConfig::embedded(dir.path()));

        let opened = manager.open_existing().unwrap();

        assert!(opened.is_none());
        assert_eq!(manager.health().status, "not created yet");
        assert!(!dir.path().join("pool.img").exists());
    }

    #[test]
    fn a_pool_dir_that_is_not_btrfs_fails_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let manager = PoolManager::new(PoolConfig::Dir(dir.path().into()));

        let err = manager.open_existing().unwrap_err();

        assert!(matches!(err, PoolError::NotBtrfs { .. }), "{err:?}");
    }
}
