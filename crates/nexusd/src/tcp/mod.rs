//! The optional TCP listener's server loop: a cap on open connections, a deadline for each
//! request's headers (and for the TLS handshake), TLS when configured, HTTP/1.1 only, hyper's own
//! parse-error answers given the JSON error body (`api::JsonErrors`), and a graceful stop. `axum::serve` has none of the first three, and an idle unauthenticated
//! connection otherwise stays open for ever (3,000 of them cost 180 MB).
//!
//! Connections may upgrade (the terminal WebSocket); an upgraded connection leaves the server's
//! accounting (its slot is freed) and lives on its own task until either side closes it, counted
//! instead against the host's terminal cap (`api::terminal::MAX_TERMINALS`).
//!
//! Over the cap a new connection is accepted and closed at once: the client sees the refusal
//! instead of waiting in the kernel's backlog, and the listener keeps draining the backlog.

mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::JsonErrors;

pub use tls::{TlsError, load_tls};

/// How the TCP listener treats its connections.
#[derive(Clone)]
pub struct TcpOptions {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time a client gets for a request's headers, and for the TLS handshake.
    pub header_timeout: Duration,
    /// TLS, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets open connections finish
/// their requests (the caller bounds how long it waits for this future).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: TcpOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout);
    let mut last_warning: Option<Instant> = None;
    loop {
        let (stream, _peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: not fatal.
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Rate-limited: a flood of connections must not become a flood of log lines.
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(
                    max = opts.max_connections,
                    "TCP connection limit reached; closing new connections (tcp_max_connections)"
                );
                last_warning = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        let http = http.clone();
        let tls = opts.tls.clone();
        let deadline = opts.header_timeout;
        connections.spawn(async move {
            let _permit = permit;
            let result = match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(deadline, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = http
                        .serve_connection(TokioIo::new(JsonErrors::new(stream)), service)
                        .with_upgrades();
                    until_stopped(conn, &stop).await
                }
                None => {
                    let conn = http
                        .serve_connection(TokioIo::new(JsonErrors::new(stream)), service)
                        .with_upgrades();
                    until_stopped(conn, &stop).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "TCP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves one connection; at shutdown it finishes its current request and closes. A connection
/// upgraded to a WebSocket (a terminal) leaves this future and runs on its own task.
async fn until_stopped<I, S>(
    conn: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    stop: &CancellationToken,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}
