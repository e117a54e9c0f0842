//! Start-up and shutdown of the daemon: the home lock, the database, the listeners, readiness
//! notification, and a bounded graceful stop.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, BearerToken, UnixPeer};
use crate::hostpath::ImportPolicy;
use crate::settings::Settings;
use crate::storage::reconcile::{self, ReconcileError};
use crate::storage::{PoolError, PoolManager};
use crate::store::{Store, StoreError};
use crate::vm::assets::BootAssets;
use crate::vm::lifecycle::LifecycleConfig;

/// Why the daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another nexusd is already running for this home (lock {lock} held{holder}); stop it first or use another --home"
    )]
    AlreadyRunning { lock: PathBuf, holder: String },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot recover the VMs of the previous run")]
    Recover(#[source] crate::vm::VmError),
    #[error("cannot listen on {what}")]
    Listen {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the TCP token file {path}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TCP token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("cannot set up TLS for the TCP listener")]
    Tls(#[source] crate::tcp::TlsError),
    #[error("cannot open the storage pool")]
    Pool(#[source] PoolError),
    #[error("cannot build the asset download client")]
    Assets(#[source] reqwest::Error),
    #[error("cannot prepare the asset store")]
    AssetStore(#[source] Box<crate::assets::AssetError>),
    #[error("cannot reconcile the storage pool with the database")]
    Reconcile(#[source] ReconcileError),
}

fn create_dir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| DaemonError::CreateDir {
            path: path.to_owned(),
            source,
        })
}

/// Holds the home's lock file for the life of the daemon.
#[derive(Debug)]
pub struct HomeLock {
    _lock: Flock<File>,
}

impl HomeLock {
    /// Takes the lock without waiting; a running daemon makes this fail with
    /// [`DaemonError::AlreadyRunning`].
    pub fn acquire(path: &Path) -> Result<Self, DaemonError> {
        let lock_err = |source| DaemonError::Lock {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(lock_err)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0).map_err(lock_err)?;
                writeln!(lock, "{}", std::process::id()).map_err(lock_err)?;
                Ok(Self { _lock: lock })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(path)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .map(|pid| format!(" by pid {pid}"))
                    .unwrap_or_default();
                Err(DaemonError::AlreadyRunning {
                    lock: path.to_owned(),
                    holder,
                })
            }
            Err((_, errno)) => Err(lock_err(errno.into())),
        }
    }
}

/// Removes the socket file when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the daemon until `shutdown` is cancelled, then stops within the grace period.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let paths = &settings.paths;
    create_dir(&paths.run_dir, 0o700)?;
    if let Some(dir) = paths.socket.parent() {
        create_dir(dir, 0o700)?;
    }
    create_dir(&paths.state_dir, 0o700)?;
    create_dir(&paths.data_dir, 0o700)?;
    let _lock = HomeLock::acquire(&paths.lock_file())?;

    let db_path = paths.database.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&db_path))
        .await
        .map_err(StoreError::Worker)??;
    let pool = open_pool(&settings, &store).await?;
    let lifecycle_cfg = LifecycleConfig {
        vmm: settings.vmm,
        boot_timeout: settings.boot_timeout,
        stop_timeout: settings.stop_timeout,
        qemu: settings.qemu_binary.clone(),
        vhost_vsock: settings.vhost_vsock_binary.clone(),
        firecracker: settings.firecracker_binary.clone(),
        firecracker_kernel: settings.firecracker_kernel.clone(),
        guest_kernel: settings.guest_kernel.clone(),
        jailer: settings.jailer_binary.clone(),
        jailer_chroot_base: settings.jailer_chroot_base.clone(),
        console_max_bytes: settings.console_max_bytes,
        vms_dir: paths.data_dir.join("vms"),
        jail: settings.jail.clone(),
    };
    let policy = import_policy(&settings);
    let asset_service = crate::assets::AssetService::new(
        store.clone(),
        crate::assets::AssetDirs::under(&paths.data_dir),
        settings.assets.clone(),
        Arc::new(policy.clone()),
    )
    .map_err(DaemonError::Assets)?;
    asset_service
        .start()
        .await
        .map_err(|e| DaemonError::AssetStore(Box::new(e)))?;
    let assets = BootAssets::new(
        settings.kernel_dir.clone(),
        paths.data_dir.join("boot"),
        settings.agent_binary.clone(),
    )
    .with_packages(asset_service.clone());
    let mut state = AppState::new(
        store.clone(),
        pool.clone(),
        assets,
        lifecycle_cfg,
        policy,
        settings.network.clone(),
        asset_service,
    );
    state.images = state.images.with_limits(settings.import_limits);
    state.builds = crate::builds::BuildService::new(
        store.clone(),
        state.lifecycle.clone(),
        state.images.clone(),
        state.assets.clone(),
        Arc::new(import_policy(&settings)),
        paths.data_dir.join("builds"),
        settings.max_concurrent_builds,
    )
    .with_images_kept(settings.build_images_keep);
    state.mcp = settings.mcp;
    state.shutdown = shutdown.clone();
    let lifecycle = state.lifecycle.clone();
    let network = state.vms.network().clone();
    lifecycle.recover().await.map_err(DaemonError::Recover)?;
    if let Err(e) = state.builds.recover().await {
        tracing::warn!(error = %crate::sanitize::Escaped(nexus_lib::error::error_chain(&e)), "cannot recover the builds of the previous run");
    }
    reconcile_network(&state).await;
    tokio::spawn(state.guest_mcp.clone().run(
        state.store.clone(),
        state.lifecycle.clone(),
        shutdown.clone(),
    ));

    // We hold the home lock, so a socket file left here belongs to a daemon that died.
    let _ = std::fs::remove_file(&paths.socket);
    let listen_err = |what: String| move |source| DaemonError::Listen { what, source };
    let unix = tokio::net::UnixListener::bind(&paths.socket)
        .map_err(listen_err(paths.socket.display().to_string()))?;
    let socket_guard = SocketFile(paths.socket.clone());
    std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(listen_err(paths.socket.display().to_string()))?;

    let mut servers = tokio::task::JoinSet::new();
    if let Some(addr) = settings.tcp_listen {
        let token = read_token(settings.tcp_token_file.as_deref())?;
        // Settings validation refuses a non-loopback address without TLS.
        let tls = match &settings.tls {
            Some((cert, key)) => Some(crate::tcp::load_tls(cert, key).map_err(DaemonError::Tls)?),
            None => None,
        };
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(listen_err(addr.to_string()))?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "TCP listener (TLS) is not on loopback; anyone who can reach it and has the token controls this host's VMs");
        }
        // With port 0 the kernel picks one: say which, in the log and in `run/tcp.addr`.
        let bound = tcp.local_addr().map_err(listen_err(addr.to_string()))?;
        let addr_file = paths.run_dir.join("tcp.addr");
        std::fs::write(&addr_file, format!("{bound}\n"))
            .map_err(listen_err(addr_file.display().to_string()))?;
        if !crate::ui::has_terminal_assets() {
            tracing::warn!(
                "the web UI was built without xterm.js: its terminal tab is off (npm ci --prefix ui, then rebuild)"
            );
        }
        let app = api::tcp_router(state.clone(), token, tls.is_some());
        let opts = crate::tcp::TcpOptions {
            max_connections: settings.tcp_max_connections,
            header_timeout: settings.tcp_header_timeout,
            tls,
        };
        let tls_on = opts.tls.is_some();
        servers.spawn(crate::tcp::serve(tcp, app, opts, shutdown.clone()));
        tracing::info!(addr = %bound, tls = tls_on, "listening on TCP");
    }

    if let Some(addr) = settings.e2b_listen {
        // Settings validation refuses a non-loopback address (the listener is plain HTTP).
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(listen_err(addr.to_string()))?;
        let bound = listener
            .local_addr()
            .map_err(listen_err(addr.to_string()))?;
        let addr_file = paths.run_dir.join("e2b.addr");
        std::fs::write(&addr_file, format!("{bound}\n"))
            .map_err(listen_err(addr_file.display().to_string()))?;
        let sandboxes = Arc::new(crate::e2b::SandboxService::new(state.clone()));
        crate::e2b::spawn_expiry(sandboxes.clone(), shutdown.clone());
        let app = crate::e2b::router(state.clone(), sandboxes);
        let opts = crate::tcp::TcpOptions {
            max_connections: settings.tcp_max_connections,
            header_timeout: settings.tcp_header_timeout,
            tls: None,
        };
        servers.spawn(crate::tcp::serve(listener, app, opts, shutdown.clone()));
        tracing::info!(addr = %bound, "serving the E2B-compatible API");
    }

    // The Unix socket answers last, so a client that sees it answer finds the TCP listener too.
    let unix_app = api::router(state.clone());
    let stop = shutdown.clone();
    servers.spawn(async move {
        // Each connection records its peer's credentials, which decide what it may import.
        axum::serve(
            api::JsonErrorsListener(unix),
            unix_app.into_make_service_with_connect_info::<UnixPeer>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    });
    tracing::info!(
        socket = %paths.socket.display(),
        database = %paths.database.display(),
        version = nexus_lib::VERSION,
        "nexusd ready"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    shutdown.cancelled().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(grace = ?settings.shutdown_grace, "shutting down: finishing in-flight requests");
    let drained = tokio::time::timeout(settings.shutdown_grace, async {
        while let Some(res) = servers.join_next().await {
            if let Ok(Err(e)) = res {
                tracing::warn!(error = %e, "listener ended with an error");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight requests did not finish within the grace period; dropping them");
        servers.abort_all();
    }
    drop(socket_guard);
    lifecycle.shutdown(settings.stop_vms_on_shutdown).await;
    network.shutdown().await;
    drop(state);
    close_pool(pool).await;
    tokio::task::spawn_blocking(move || store.checkpoint())
        .await
        .map_err(StoreError::Worker)??;
    tracing::info!("nexusd stopped");
    Ok(())
}

/// Opens the pool if it exists (the embedded one is created on first use instead) and reconciles it
/// with the database.
async fn open_pool(settings: &Settings, store: &Store) -> Result<Arc<PoolManager>, DaemonError> {
    let pool = Arc::new(PoolManager::new(settings.pool.clone()));
    let opening = pool.clone();
    tokio::task::spawn_blocking(move || opening.open_existing())
        .await
        .map_err(StoreError::Worker)?
        .map_err(DaemonError::Pool)?;
    reconcile::reconcile(store, &pool)
        .await
        .map_err(DaemonError::Reconcile)?;
    Ok(pool)
}

/// The import policy: the configured roots, and the daemon's own files as protected locations
/// (the pool, the data, state and run directories, the socket's directory, the token and TLS key).
fn import_policy(settings: &Settings) -> ImportPolicy {
    let paths = &settings.paths;
    let mut protected = vec![
        paths.data_dir.clone(),
        paths.state_dir.clone(),
        paths.run_dir.clone(),
    ];
    protected.extend(paths.socket.parent().map(Path::to_owned));
    match &settings.pool {
        crate::storage::PoolConfig::Dir(dir) => protected.push(dir.clone()),
        crate::storage::PoolConfig::Image {
            file, mountpoint, ..
        } => protected.extend([file.clone(), mountpoint.clone()]),
    }
    protected.extend(settings.tcp_token_file.clone());
    protected.extend(settings.tls.as_ref().map(|(_, key)| key.clone()));
    ImportPolicy::new(settings.import_roots.clone(), protected)
}

/// Unmounts the pool if this daemon mounted it; a busy pool (VMs still running) stays mounted.
async fn close_pool(pool: Arc<PoolManager>) {
    match tokio::task::spawn_blocking(move || pool.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e @ PoolError::Busy { .. })) => tracing::info!("{e}"),
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::sanitize::Escaped(nexus_lib::error::error_chain(&e)), "could not close the storage pool")
        }
        Err(e) => tracing::warn!(error = %e, "pool close worker failed"),
    }
}

fn read_token(path: Option<&Path>) -> Result<BearerToken, DaemonError> {
    // Settings validation guarantees a token file whenever a TCP address is set.
    let path = path.unwrap_or(Path::new(""));
    let text = std::fs::read_to_string(path).map_err(|source| DaemonError::Token {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(DaemonError::EmptyToken(path.to_owned()));
    }
    Ok(BearerToken::new(token))
}

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
    Ok(())
}

/// Brings the host network in line with the database once the running VMs were re-adopted.
/// A failure (say, no `CAP_NET_ADMIN`) is logged: VMs without a network still work, and `nat`
/// VMs say what is missing when they start.
async fn reconcile_network(state: &AppState) {
    let live: Vec<uuid::Uuid> = match state.vms.list(None).await {
        Ok(vms) => vms
            .into_iter()
            .filter(|v| crate::vm::state::is_live(v.state))
            .map(|v| v.id)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %nexus_lib::error::error_chain(&e), "cannot list VMs to reconcile the network");
            return;
        }
    };
    match state.vms.network().reconcile(&live).await {
        Ok(done) if !done.removed.is_empty() => {
            tracing::info!(removed = ?done.removed, "network reconciled");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %nexus_lib::error::error_chain(&e), "cannot reconcile the host network");
        }
    }
}

/// What a shutdown may take beyond its planned phases (the grace period for requests, and the
/// stop timeout when VMs are stopped) before [`exit_if_shutdown_hangs`] ends the process.
pub const HARD_STOP_MARGIN: Duration = Duration::from_secs(5);

/// The longest a shutdown may take once it started: the grace period for in-flight requests, the
/// VMs' stop timeout when they are stopped too, and [`HARD_STOP_MARGIN`] for the rest (closing
/// the pool, checkpointing the database).
pub fn shutdown_bound(settings: &Settings) -> Duration {
    let stopping_vms = if settings.stop_vms_on_shutdown {
        settings.stop_timeout
    } else {
        Duration::ZERO
    };
    settings.shutdown_grace + stopping_vms + HARD_STOP_MARGIN
}

/// Once `token` is cancelled, gives the shutdown `bound` to finish and otherwise exits the
/// process with status 1. The deadline runs on its own OS thread, so a wedged async runtime (a
/// blocking call on a worker, a hung `umount`) cannot hold it up. Binaries only: it ends the
/// whole process.
pub fn exit_if_shutdown_hangs(token: CancellationToken, bound: Duration) {
    tokio::spawn(async move {
        token.cancelled().await;
        std::thread::spawn(move || {
            std::thread::sleep(bound);
            tracing::error!(?bound, "shutdown did not finish in time; exiting");
            std::process::exit(1);
        });
    });
}
