//! The asset service that API handlers call: providers (list, show, add, remove), assets (list,
//! show, verify, remove) and downloads.
//!
//! A download checks what it can before answering (the provider exists, the variables are
//! valid), then runs on its own task and reports through a stream of events. When the client
//! goes away the stream is dropped and the run cancelled: its staging directory is removed, an
//! http(s) part stays for the next run to resume, and nothing is installed. Only the commit at
//! the end (files into the store, rows in one transaction) is not cancelled once it started.

use std::sync::Arc;

use nexus_lib::api::pipeline::validate_pipeline;
use nexus_lib::api::{
    Asset, AssetKind, AssetVerification, CreateProvider, DownloadEvent, DownloadRequest, Provider,
};
use nexus_lib::names::validate_name;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use super::engine::Engine;
use super::install::{Cas, InstallError};
use super::progress::{EVENT_BUFFER, Progress};
use super::{AssetDirs, AssetSettings, builtin};
use crate::hostpath::{Caller, ImportPolicy};
use crate::sanitize::Escaped;
use crate::store::assets::{self as rows, Found, Inserted, ProviderDeleted};
use crate::store::{Store, StoreError, now_ms};

/// Errors of asset and provider operations (a run's own failure is a [`DownloadEvent::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("no provider named {0:?}")]
    ProviderNotFound(String),
    #[error("no asset {0:?}")]
    NotFound(String),
    #[error("{key:?} names several assets ({}); give its id or NAME@VERSION", .matches.join(", "))]
    Ambiguous { key: String, matches: Vec<String> },
    #[error("a provider named {0:?} exists already")]
    NameTaken(String),
    #[error("provider {0:?} is built in and cannot be removed")]
    Builtin(String),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("asset worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> AssetError {
    AssetError::Invalid {
        field,
        message: message.into(),
    }
}

/// How a run failed, as its `error` event says.
struct RunFailure {
    code: &'static str,
    stage: Option<usize>,
    message: String,
}

/// A started download: its events, and the guard that cancels it when dropped.
pub struct Download {
    pub events: mpsc::Receiver<DownloadEvent>,
    pub cancel_on_drop: DropGuard,
}

/// The asset service.
#[derive(Debug, Clone)]
pub struct AssetService {
    store: Store,
    engine: Engine,
    cas: Cas,
}

impl AssetService {
    pub fn new(
        store: Store,
        dirs: AssetDirs,
        settings: AssetSettings,
        host_files: Arc<ImportPolicy>,
    ) -> Result<Self, reqwest::Error> {
        let cas = Cas::new(dirs.store());
        Ok(Self {
            engine: Engine::new(dirs, settings, host_files)?,
            store,
            cas,
        })
    }

    /// At start-up: writes the built-in providers, marks runs cut short as interrupted, empties
    /// the staging directory, removes store files no asset references and partial downloads
    /// untouched for a week.
    pub async fn start(&self) -> Result<(), AssetError> {
        let now = now_ms();
        let interrupted = self
            .store
            .call(move |c| {
                for p in builtin::providers() {
                    rows::upsert_builtin(c, &p, now)?;
                }
                rows::interrupt_runs(c, now)
            })
            .await?;
        let referenced = self.store.call(|c| rows::referenced_hashes(c)).await?;
        let (tmp, cas, engine) = (
            self.engine.dirs.tmp(),
            self.cas.clone(),
            self.engine.clone(),
        );
        let (removed, stale) = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&tmp);
            (cas.gc(&referenced), engine.remove_stale_parts())
        })
        .await
        .map_err(AssetError::Worker)?;
        if interrupted > 0 || removed > 0 || stale > 0 {
            tracing::info!(
                interrupted,
                removed,
                stale,
                "assets: runs cut short marked, unreferenced files and stale partial downloads removed"
            );
        }
        Ok(())
    }

    pub async fn list_providers(&self) -> Result<Vec<Provider>, AssetError> {
        Ok(self.store.call(|c| rows::list_providers(c)).await?)
    }

    pub async fn get_provider(&self, name: &str) -> Result<Provider, AssetError> {
        let key = name.to_owned();
        self.store
            .call(move |c| rows::get_provider(c, &key))
            .await?
            .ok_or_else(|| AssetError::ProviderNotFound(name.to_owned()))
    }

    /// Adds a provider after checking its name, settings and pipeline.
    pub async fn add_provider(&self, req: CreateProvider) -> Result<Provider, AssetError> {
        validate_name(&req.name).map_err(|e| invalid("name", e.to_string()))?;
        if builtin::is_builtin_name(&req.name) {
            return Err(AssetError::NameTaken(req.name));
        }
        req.settings
            .validate()
            .map_err(|m| invalid("settings", m))?;
        let stages = req
            .stages
            .unwrap_or_else(|| builtin::default_stages(req.kind));
        validate_pipeline(req.kind, &req.settings, &stages)
            .map_err(|e| invalid("stages", e.to_string()))?;
        let now = now_ms();
        let provider = Provider {
            name: req.name,
            kind: req.kind,
            builtin: false,
            settings: req.settings,
            stages,
            created_at: crate::store::rfc3339_ms(now),
        };
        let row = provider.clone();
        match self
            .store
            .call(move |c| rows::insert_provider(c, &row, now))
            .await?
        {
            Inserted::Ok => {
                tracing::info!(provider = %provider.name, kind = %provider.kind, "provider added");
                Ok(provider)
            }
            Inserted::NameTaken => Err(AssetError::NameTaken(provider.name)),
        }
    }

    pub async fn remove_provider(&self, name: &str) -> Result<(), AssetError> {
        let key = name.to_owned();
        match self
            .store
            .call(move |c| rows::delete_provider(c, &key))
            .await?
        {
            ProviderDeleted::Ok => Ok(()),
            ProviderDeleted::NotFound => Err(AssetError::ProviderNotFound(name.to_owned())),
            ProviderDeleted::Builtin => Err(AssetError::Builtin(name.to_owned())),
        }
    }

    pub async fn list(&self, kind: Option<AssetKind>) -> Result<Vec<Asset>, AssetError> {
        let rows = self.store.call(move |c| rows::list_assets(c, kind)).await?;
        Ok(rows.iter().map(rows::AssetRow::to_api).collect())
    }

    async fn find(&self, key: &str, kind: Option<AssetKind>) -> Result<rows::AssetRow, AssetError> {
        let k = key.to_owned();
        match self
            .store
            .call(move |c| rows::find_asset(c, &k, kind))
            .await?
        {
            Found::One(row) => Ok(row),
            Found::None => Err(AssetError::NotFound(key.to_owned())),
            Found::Ambiguous(matches) => Err(AssetError::Ambiguous {
                key: key.to_owned(),
                matches,
            }),
        }
    }

    pub async fn get(&self, key: &str, kind: Option<AssetKind>) -> Result<Asset, AssetError> {
        Ok(self.find(key, kind).await?.to_api())
    }

    /// Removes an asset's row, and its file when no other asset shares it.
    pub async fn remove(&self, key: &str, kind: Option<AssetKind>) -> Result<(), AssetError> {
        let row = self.find(key, kind).await?;
        let (cas, store) = (self.cas.clone(), self.store.clone());
        // On its own task: a client that goes away cannot stop it between row and file.
        let removed = tokio::spawn(async move { cas.remove(&store, &row).await.map(|()| row) })
            .await
            .map_err(AssetError::Worker)??;
        tracing::info!(asset = %removed.name, version = %removed.version, kind = %removed.kind, "asset removed");
        Ok(())
    }

    /// Hashes an installed asset's file again and compares it with what was recorded.
    pub async fn verify(
        &self,
        key: &str,
        kind: Option<AssetKind>,
    ) -> Result<AssetVerification, AssetError> {
        let row = self.find(key, kind).await?;
        let (cas, checked) = (self.cas.clone(), row.clone());
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let found = tokio::task::spawn_blocking(move || cas.rehash(&checked, &cancel))
            .await
            .map_err(AssetError::Worker)??;
        let (ok, message) = match &found {
            None => (false, format!("{} is missing", row.path)),
            Some((sha, size)) if *sha == row.sha256 && *size == row.size_bytes => {
                (true, "sha256 and size match the record".to_string())
            }
            Some((sha, size)) => (
                false,
                format!(
                    "{} changed: sha256 {sha} ({size} bytes), recorded {} ({} bytes)",
                    row.path, row.sha256, row.size_bytes
                ),
            ),
        };
        if !ok {
            tracing::warn!(asset = %row.name, version = %row.version, message = %Escaped(&message), "asset failed verification");
        }
        Ok(AssetVerification {
            asset: row.to_api(),
            ok,
            actual_sha256: found.as_ref().map(|(s, _)| s.clone()),
            actual_size: found.map(|(_, n)| n),
            message,
        })
    }

    /// Starts a download: checks the provider and the variables, then runs on its own task.
    pub async fn download(
        &self,
        req: DownloadRequest,
        caller: &Caller,
    ) -> Result<Download, AssetError> {
        let provider = self.get_provider(&req.provider).await?;
        // Stored pipelines were checked when added; checked again, in case the rules grew since.
        validate_pipeline(provider.kind, &provider.settings, &provider.stages).map_err(|e| {
            invalid(
                "provider",
                format!("provider {}'s pipeline does not pass: {e}", provider.name),
            )
        })?;
        let vars = self
            .engine
            .vars(&provider, &req.vars)
            .map_err(|m| invalid("vars", m))?;
        let id = Uuid::now_v7();
        let logged = serde_json::to_value(&req.vars).unwrap_or_default();
        let name = provider.name.clone();
        self.store
            .call(move |c| rows::start_run(c, id, &name, &logged, now_ms()))
            .await?;
        let (tx, events) = mpsc::channel(EVENT_BUFFER);
        let cancel = CancellationToken::new();
        let (this, caller, run_cancel) = (self.clone(), caller.clone(), cancel.clone());
        tokio::spawn(async move {
            let progress = Progress::new(tx.clone());
            let outcome = this
                .run(&provider, vars, &caller, &progress, &run_cancel)
                .await;
            let error = outcome.as_ref().err().map(|f| f.message.clone());
            let ended = this
                .store
                .call(move |c| rows::end_run(c, id, error.as_deref(), now_ms()))
                .await;
            if let Err(e) = ended {
                tracing::warn!(error = %e, "cannot record the end of an asset run");
            }
            let event = match outcome {
                Ok(assets) => DownloadEvent::Done { assets },
                Err(f) => DownloadEvent::Error {
                    code: f.code.to_owned(),
                    stage: f.stage,
                    message: f.message,
                },
            };
            let _ = tx.send(event).await;
        });
        Ok(Download {
            events,
            cancel_on_drop: cancel.drop_guard(),
        })
    }

    /// Runs the pipeline and commits.
    async fn run(
        &self,
        provider: &Provider,
        vars: std::collections::BTreeMap<String, String>,
        caller: &Caller,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Vec<Asset>, RunFailure> {
        let prepared = match self
            .engine
            .prepare(provider, vars, caller, progress, cancel)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let message = nexus_lib::error::error_chain(&e);
                tracing::warn!(provider = %provider.name, code = e.code(), error = %Escaped(&message), "asset download failed");
                return Err(RunFailure {
                    code: e.code(),
                    stage: e.stage(),
                    message,
                });
            }
        };
        let committed = self
            .cas
            .commit(&self.store, &provider.name, prepared.staged)
            .await;
        drop(prepared.staging);
        match committed {
            Ok(assets) => {
                for a in &assets {
                    tracing::info!(provider = %provider.name, kind = %a.kind, asset = %a.name, version = %a.version, sha256 = %a.sha256, "asset installed");
                }
                Ok(assets)
            }
            Err(e) => {
                let message = nexus_lib::error::error_chain(&e);
                tracing::warn!(provider = %provider.name, error = %Escaped(&message), "asset install failed");
                let code = match e {
                    InstallError::Conflict { .. } => "conflict",
                    _ => "install",
                };
                Err(RunFailure {
                    code,
                    stage: None,
                    message,
                })
            }
        }
    }
}
