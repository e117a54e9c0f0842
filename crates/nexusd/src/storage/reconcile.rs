//! Start-up reconciliation of the pool with the database, which is the truth: subvolumes under
//! `images/` and `drives/` without a row are orphans (an import or drive creation interrupted after
//! publishing, or a delete interrupted after its row went) and are removed; rows whose subvolume is
//! gone are marked `broken`; debris of interrupted work under `tmp/` is removed.

use std::collections::HashSet;
use std::sync::Arc;

use nexus_lib::api::StorageState;
use uuid::Uuid;

use super::{FsError, PoolManager, SubvolumeError};
use crate::store::{Store, StoreError, drives, images};

/// What reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub orphan_images_removed: Vec<String>,
    pub orphan_drives_removed: Vec<String>,
    pub images_marked_broken: Vec<String>,
    pub drives_marked_broken: Vec<String>,
    pub tmp_removed: Vec<String>,
    /// Orphans that could not be removed (id and error).
    pub failures: Vec<String>,
}

/// Why reconciliation could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot clear the pool's tmp/")]
    CleanTmp(#[source] SubvolumeError),
    #[error("cannot list the pool's subvolumes")]
    List(#[source] FsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reconciliation worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// Reconciles the pool (open or not yet created) with the database and logs a summary.
pub async fn reconcile(store: &Store, pool: &Arc<PoolManager>) -> Result<Summary, ReconcileError> {
    let image_rows = store.call(|c| images::list(c)).await?;
    let drive_rows = store.call(|c| drives::list(c)).await?;
    let known_images: HashSet<String> = image_rows.iter().map(|r| r.id.to_string()).collect();
    let known_drives: HashSet<String> = drive_rows.iter().map(|r| r.id.to_string()).collect();

    let pool = pool.clone();
    let (mut summary, on_disk_images, on_disk_drives) = tokio::task::spawn_blocking(move || {
        let mut summary = Summary::default();
        // A pool that does not exist yet holds nothing: every row is then broken.
        let Some(storage) = pool.get() else {
            return Ok::<_, ReconcileError>((summary, HashSet::new(), HashSet::new()));
        };
        summary.tmp_removed = storage.clean_tmp().map_err(ReconcileError::CleanTmp)?;
        let list = ReconcileError::List;
        let disk_images: HashSet<String> = storage
            .list_image_ids()
            .map_err(list)?
            .into_iter()
            .collect();
        let disk_drives: HashSet<String> = storage
            .list_drive_ids()
            .map_err(list)?
            .into_iter()
            .collect();
        for id in disk_drives.difference(&known_drives) {
            match storage.delete_drive(id) {
                Ok(()) => summary.orphan_drives_removed.push(id.clone()),
                Err(e) => summary.failures.push(format!("drive {id}: {e}")),
            }
        }
        for id in disk_images.difference(&known_images) {
            match storage.delete_image(id) {
                Ok(()) => summary.orphan_images_removed.push(id.clone()),
                Err(e) => summary.failures.push(format!("image {id}: {e}")),
            }
        }
        Ok((summary, disk_images, disk_drives))
    })
    .await
    .map_err(ReconcileError::Worker)??;

    let broken_images: Vec<(Uuid, String)> = image_rows
        .iter()
        .filter(|r| r.state == StorageState::Ready && !on_disk_images.contains(&r.id.to_string()))
        .map(|r| (r.id, r.name.clone()))
        .collect();
    let broken_drives: Vec<(Uuid, String)> = drive_rows
        .iter()
        .filter(|r| r.state == StorageState::Ready && !on_disk_drives.contains(&r.id.to_string()))
        .map(|r| (r.id, r.name.clone()))
        .collect();
    summary.images_marked_broken = broken_images.iter().map(|(_, n)| n.clone()).collect();
    summary.drives_marked_broken = broken_drives.iter().map(|(_, n)| n.clone()).collect();
    store
        .call(move |c| {
            let tx = c.transaction()?;
            for (id, _) in &broken_images {
                images::mark_broken(&tx, *id)?;
            }
            for (id, _) in &broken_drives {
                drives::mark_broken(&tx, *id)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    log(&summary);
    Ok(summary)
}

fn log(s: &Summary) {
    let changed = !(s.orphan_images_removed.is_empty()
        && s.orphan_drives_removed.is_empty()
        && s.images_marked_broken.is_empty()
        && s.drives_marked_broken.is_empty()
        && s.tmp_removed.is_empty()
        && s.failures.is_empty());
    if changed {
        tracing::warn!(
            orphan_images_removed = ?s.orphan_images_removed,
            orphan_drives_removed = ?s.orphan_drives_removed,
            images_marked_broken = ?s.images_marked_broken,
            drives_marked_broken = ?s.drives_marked_broken,
            tmp_removed = ?s.tmp_removed,
            failures = ?s.failures,
            "storage reconciled: removed or marked what did not match the database"
        );
    } else {
        tracing::info!("storage reconciled: pool and database agree");
    }
}
