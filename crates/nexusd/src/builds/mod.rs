//! Templates and builds: the service API handlers call to store template versions, start builds
//! (or answer them from the cache), follow, cancel and list them.
//!
//! A build is queued with the inputs it will use already fixed (the template text, the base
//! image's id, copies of the host files), so its cache key describes exactly what it builds. It
//! then waits for one of `max_concurrent_builds` slots and runs on its own task ([`run`]) in a
//! build VM booted from a drive of the base; on success the stopped VM's root drive is published
//! as an image. Whatever way a build ends (success, failure, cancel), its VM and drive are
//! deleted; at start-up, builds a previous daemon left unfinished are failed and their VMs
//! removed ([`BuildService::recover`]).

mod inputs;
pub use inputs::hex;
mod log;
mod run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nexus_lib::api::template::{BaseRef, TemplateSpec};
use nexus_lib::api::{AssetKind, Build, BuildState, Template};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::assets::{AssetError, AssetService};
use crate::hostpath::{Caller, ImportPolicy};
use crate::images::{ImageError, ImageService};
use crate::sanitize::Escaped;
use crate::store::builds::{self, BuildRow};
use crate::store::templates::{self, TemplateRow};
use crate::store::{Store, StoreError};
use crate::vm::lifecycle::Lifecycle;

pub use log::BuildLog;

/// Builds that may run at once unless configured (`max_concurrent_builds`).
pub const DEFAULT_MAX_CONCURRENT: usize = 2;
/// Built images kept per template unless configured (`build_images_keep`).
pub const DEFAULT_IMAGES_KEPT: u32 = 3;
/// Most builds listed at once.
pub const MAX_LIST: u32 = 500;
/// The reason recorded for builds a daemon restart interrupted.
pub const RESTART_REASON: &str = "nexusd restarted while the build was queued or running";

/// Errors of template and build operations.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no template named or with id {0:?}")]
    TemplateNotFound(String),
    #[error("no build with id {0:?}")]
    NotFound(String),
    #[error("invalid template: {0}")]
    Template(#[from] nexus_lib::api::template::TemplateError),
    #[error("invalid {field}: {message}")]
    Input { field: String, message: String },
    #[error("{field}: {source}")]
    Path {
        field: String,
        #[source]
        source: crate::hostpath::HostPathError,
    },
    #[error("build {id} is {state}; only a queued or running build can be cancelled")]
    Finished { id: Uuid, state: BuildState },
    #[error("the base image: {0}")]
    Base(#[source] ImageError),
    #[error("the base asset: {0}")]
    BaseAsset(#[source] AssetError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("build worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

impl BuildError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what: "cannot write the build's scratch directory",
            path: path.to_owned(),
            source,
        }
    }
}

/// A queued or running build of this daemon: how to stop it and where its log grows.
#[derive(Debug, Clone)]
struct Live {
    cancel: CancellationToken,
    /// Cancelled once the build's final record is stored.
    done: CancellationToken,
    log: Arc<Mutex<BuildLog>>,
}

/// The template and build service.
#[derive(Debug, Clone)]
pub struct BuildService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    lifecycle: Lifecycle,
    images: ImageService,
    assets: AssetService,
    policy: Arc<ImportPolicy>,
    work_dir: PathBuf,
    slots: Arc<Semaphore>,
    live: Mutex<HashMap<Uuid, Live>>,
    /// Built images kept per template ([`BuildService::prune_images`]).
    images_kept: u32,
}

impl BuildService {
    pub fn new(
        store: Store,
        lifecycle: Lifecycle,
        images: ImageService,
        assets: AssetService,
        policy: Arc<ImportPolicy>,
        work_dir: PathBuf,
        max_concurrent: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                lifecycle,
                images,
                assets,
                policy,
                work_dir,
                slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
                live: Mutex::default(),
                images_kept: DEFAULT_IMAGES_KEPT,
            }),
        }
    }

    /// The same service keeping `n` built images per template. Call before sharing it.
    pub fn with_images_kept(mut self, n: u32) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.images_kept = n;
        }
        self
    }

    /// Deletes the images of `template`'s builds past the newest `build_images_keep` (by their
    /// last use, a cache hit included); an image drives still use is kept, and collected by a
    /// later build once they are gone. Failures are logged: the build that called this stands.
    pub(super) async fn prune_images(&self, template: &str) {
        let (t, keep) = (template.to_owned(), self.inner.images_kept);
        let old = match self
            .inner
            .store
            .call(move |c| builds::superseded_images(c, &t, keep))
            .await
        {
            Ok(old) => old,
            Err(e) => {
                tracing::warn!(template, error = %e, "cannot list a template's older images");
                return;
            }
        };
        for id in old {
            match self.inner.images.delete(&id.to_string()).await {
                Ok(()) => tracing::info!(template, image = %id, "older built image deleted"),
                Err(ImageError::InUse { drives, .. }) => {
                    tracing::debug!(template, image = %id, ?drives, "older built image kept: in use");
                }
                Err(ImageError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(template, image = %id, error = %Escaped(nexus_lib::error::error_chain(&e)), "cannot delete an older built image");
                }
            }
        }
    }

    /// Adds a version of the template in `source` (parsed and validated first).
    pub async fn create_template(&self, source: String) -> Result<Template, BuildError> {
        let spec = TemplateSpec::parse(&source)?;
        let row = self
            .inner
            .store
            .call(move |c| templates::insert_version(c, &spec.name, &spec.base, &source))
            .await?;
        tracing::info!(template = %row.name, version = row.version, "template version stored");
        Ok(row.to_api())
    }

    pub async fn list_templates(&self) -> Result<Vec<Template>, BuildError> {
        let rows = self.inner.store.call(|c| templates::list_latest(c)).await?;
        Ok(rows.iter().map(TemplateRow::to_api).collect())
    }

    /// The newest version of a template (by name or id, or `name@version`).
    pub async fn get_template(&self, key: &str) -> Result<Template, BuildError> {
        Ok(self.template_row(key).await?.to_api())
    }

    /// Every version of template `name`, oldest first.
    pub async fn template_versions(&self, key: &str) -> Result<Vec<Template>, BuildError> {
        let row = self.template_row(key).await?;
        let rows = self
            .inner
            .store
            .call(move |c| templates::versions(c, &row.name))
            .await?;
        Ok(rows.iter().map(TemplateRow::to_api).collect())
    }

    /// Deletes every version of a template; its builds and images stay.
    pub async fn delete_template(&self, key: &str) -> Result<(), BuildError> {
        let row = self.template_row(key).await?;
        let name = row.name.clone();
        self.inner
            .store
            .call(move |c| templates::delete(c, &name))
            .await?;
        tracing::info!(template = %row.name, "template deleted");
        Ok(())
    }

    async fn template_row(&self, key: &str) -> Result<TemplateRow, BuildError> {
        let k = key.to_owned();
        self.inner
            .store
            .call(move |c| templates::get(c, &k))
            .await?
            .ok_or_else(|| BuildError::TemplateNotFound(key.to_owned()))
    }

    /// Starts a build of template `key` (its newest version unless `name@version`), or answers
    /// from the cache: a build of the same inputs that succeeded and whose image still exists
    /// makes a new, already succeeded record pointing at that image. Host files are read with
    /// `caller`'s rights.
    pub async fn start(
        &self,
        key: &str,
        no_cache: bool,
        caller: &Caller,
    ) -> Result<Build, BuildError> {
        let tpl = self.template_row(key).await?;
        let spec = TemplateSpec::parse(&tpl.source)?;
        let base = self.base_image(&spec, caller).await?;
        let queued_id = Uuid::now_v7();
        let scratch = self.inner.work_dir.join(queued_id.to_string());
        let (spec2, policy, caller, dir) = (
            spec.clone(),
            self.inner.policy.clone(),
            caller.clone(),
            scratch.clone(),
        );
        let gathered =
            tokio::task::spawn_blocking(move || inputs::gather(&spec2, &policy, &caller, &dir))
                .await
                .map_err(BuildError::Worker)?;
        let inputs = match gathered {
            Ok(i) => i,
            Err(e) => {
                remove_dir(scratch).await;
                return Err(e);
            }
        };
        let key = inputs::cache_key(&spec, &base.to_string(), &inputs.digests);
        let mut row = BuildRow::queued(&tpl.name, tpl.version, &tpl.source, &key);
        row.id = queued_id;
        if !no_cache {
            let k = key.clone();
            let hit = self
                .inner
                .store
                .call(move |c| builds::find_cached(c, &k))
                .await?;
            if let Some(hit) = hit {
                remove_dir(scratch).await;
                row.state = BuildState::Succeeded;
                row.cached_from = Some(hit.id);
                row.image_id = hit.image_id;
                row.ended_at_ms = Some(crate::store::now_ms());
                let insert = row.clone();
                self.inner
                    .store
                    .call(move |c| builds::insert(c, &insert))
                    .await?;
                tracing::info!(template = %tpl.name, build = %row.id, from = %hit.id, "build answered from the cache");
                return self.get(&row.id.to_string()).await;
            }
        }
        let insert = row.clone();
        self.inner
            .store
            .call(move |c| builds::insert(c, &insert))
            .await?;
        let live = Live {
            cancel: CancellationToken::new(),
            done: CancellationToken::new(),
            log: Arc::new(Mutex::new(BuildLog::new())),
        };
        self.lock_live().insert(row.id, live.clone());
        let job = run::Job {
            id: row.id,
            template: tpl.name.clone(),
            spec,
            base,
            inputs,
            scratch,
            image_name: image_name(&tpl.name, row.id),
        };
        tracing::info!(template = %tpl.name, build = %row.id, "build queued");
        let this = self.clone();
        tokio::spawn(async move { this.run_job(job, live).await });
        self.get(&row.id.to_string()).await
    }

    /// Resolves the template's base to an image id.
    async fn base_image(&self, spec: &TemplateSpec, caller: &Caller) -> Result<Uuid, BuildError> {
        match spec.base_ref()? {
            BaseRef::Image(name) => {
                self.inner
                    .images
                    .ensure_default(Some(&name))
                    .await
                    .map_err(BuildError::Base)?;
                let image = self
                    .inner
                    .images
                    .get(&name)
                    .await
                    .map_err(BuildError::Base)?;
                Ok(image.id)
            }
            BaseRef::Oci(path) => Ok(self
                .inner
                .images
                .import_oci(&path, caller)
                .await
                .map_err(BuildError::Base)?
                .id),
            BaseRef::Asset(key) => {
                let asset = self
                    .inner
                    .assets
                    .get(&key, Some(AssetKind::Rootfs))
                    .await
                    .map_err(BuildError::BaseAsset)?;
                Ok(self
                    .inner
                    .images
                    .for_rootfs_asset(&asset)
                    .await
                    .map_err(BuildError::Base)?
                    .id)
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Build, BuildError> {
        let key = id.to_owned();
        self.inner
            .store
            .call(move |c| builds::get(c, &key))
            .await?
            .map(|r| r.to_api())
            .ok_or_else(|| BuildError::NotFound(id.to_owned()))
    }

    /// Builds, newest first, of one template or all.
    pub async fn list(&self, template: Option<String>) -> Result<Vec<Build>, BuildError> {
        let rows = self
            .inner
            .store
            .call(move |c| builds::list(c, template.as_deref(), MAX_LIST))
            .await?;
        Ok(rows.iter().map(BuildRow::to_api).collect())
    }

    /// Cancels a queued or running build: its step is stopped, its VM and drive deleted; waits
    /// until that is done.
    pub async fn cancel(&self, id: &str) -> Result<Build, BuildError> {
        let build = self.get(id).await?;
        let live = self.lock_live().get(&build.id).cloned();
        match live {
            Some(live) if !build.state.is_final() => {
                live.cancel.cancel();
                live.done.cancelled().await;
                self.get(&build.id.to_string()).await
            }
            _ => Err(BuildError::Finished {
                id: build.id,
                state: build.state,
            }),
        }
    }

    /// The log of a build: stored, for a build that is over, or live (to follow) for one that
    /// is queued or running in this daemon.
    pub async fn log(&self, id: &str) -> Result<LogSource, BuildError> {
        let build = self.get(id).await?;
        if let Some(live) = self.lock_live().get(&build.id).cloned() {
            return Ok(LogSource::Live {
                log: live.log,
                done: live.done,
            });
        }
        let bid = build.id;
        let log = self.inner.store.call(move |c| builds::log(c, bid)).await?;
        Ok(LogSource::Stored(log))
    }

    /// At start-up, after the life cycle re-adopted its VMs: builds left queued or running by
    /// the previous daemon are failed with a reason, their build VMs stopped and deleted with
    /// their drives, and the scratch directory emptied.
    pub async fn recover(&self) -> Result<(), BuildError> {
        let failed = self
            .inner
            .store
            .call(|c| builds::fail_unfinished(c, RESTART_REASON))
            .await?;
        for b in failed {
            tracing::warn!(build = %b.id, template = %b.template_name, "build interrupted by a restart: failed");
            let vm = b.vm_id.map_or_else(|| vm_name(b.id), |v| v.to_string());
            run::remove_vm(&self.inner.lifecycle, &vm).await;
        }
        let dir = self.inner.work_dir.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        Ok(())
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Live>> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a build's log is read from.
pub enum LogSource {
    Stored(Vec<u8>),
    Live {
        log: Arc<Mutex<BuildLog>>,
        done: CancellationToken,
    },
}

/// The name of a build's VM (unique per build).
pub fn vm_name(build: Uuid) -> String {
    let hex = build.simple().to_string();
    format!("build-{}", &hex[hex.len() - 12..])
}

/// The name of the image a build makes: the template's name and the build's unique part.
fn image_name(template: &str, build: Uuid) -> String {
    let hex = build.simple().to_string();
    format!(
        "{}-{}",
        &template[..template.len().min(50)],
        &hex[hex.len() - 12..]
    )
}

async fn remove_dir(dir: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}
