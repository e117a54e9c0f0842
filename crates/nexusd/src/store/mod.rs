//! The SQLite store: the single source of truth of the daemon.
//!
//! One connection, owned by the store and used on blocking threads only (never on the async
//! reactor). A single writer connection inside one process means no `SQLITE_BUSY` between our
//! own requests; WAL and a busy timeout cover outside readers such as the `sqlite3` shell.
//! Schema changes are forward migrations tracked in `user_version`; the database is never
//! deleted to upgrade.

pub mod assets;
pub mod builds;
pub mod drives;
pub mod e2b;
pub mod images;
pub mod mcp_servers;
mod migrations;
pub mod network;
pub mod runtime;
pub mod templates;
pub mod tokens;
pub mod vms;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

/// How long a statement waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create database directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot migrate database {path}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error("database query failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database worker failed")]
    Worker(#[source] tokio::task::JoinError),
    #[error("a database call panicked; its transaction was rolled back")]
    Panicked,
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it to the latest schema.
    /// Blocking: call at start-up, before serving.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        migrations::migrations()
            .to_latest(&mut conn)
            .map_err(|source| StoreError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on a blocking thread.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.call_blocking(f))
            .await
            .map_err(StoreError::Worker)?
    }

    /// Like [`Store::call`] for callers already on a blocking thread.
    ///
    /// A panic inside `f` is caught and answered as [`StoreError::Panicked`]: whatever
    /// transaction it left open is rolled back, and the connection stays usable for later calls
    /// (one bad request must not disable the store until restart).
    pub fn call_blocking<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        // The mutex is poisoned only if a panic escaped while it was held, which the
        // `catch_unwind` below prevents; recover anyway rather than fail every later call.
        let mut guard = self.conn.lock().unwrap_or_else(|poisoned| {
            self.conn.clear_poison();
            poisoned.into_inner()
        });
        let conn: &mut Connection = &mut guard;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)));
        match result {
            Ok(result) => result,
            Err(_) => {
                // rusqlite's `Transaction` rolls back on drop, even while unwinding; a raw
                // `BEGIN` would not, so make sure the connection is back in autocommit mode.
                if !guard.is_autocommit() {
                    let _ = guard.execute_batch("ROLLBACK");
                }
                tracing::error!(database = %self.path.display(), "a database call panicked");
                Err(StoreError::Panicked)
            }
        }
    }

    /// The schema version, read from the database (fails when the database cannot be read).
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        self.call(|conn| {
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
            Ok(conn.pragma_query_value(None, "user_version", |r| r.get::<_, u32>(0))?)
        })
        .await
    }

    /// Checkpoints the WAL so the database file is complete on its own. Called at shutdown.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.call_blocking(|conn| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
    }
}

/// Whether `e` is SQLite refusing a write that breaks a foreign key: a row it points to is gone
/// (or, on delete, still in use). Callers that can race with a delete map it to a refusal.
pub fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(err, _)
            if err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
    )
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations::migrations().validate().unwrap();
    }

    #[test]
    fn reopening_keeps_the_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.db");
        drop(Store::open(&path).unwrap());
        let store = Store::open(&path).unwrap();
        let v = store
            .call_blocking(|c| {
                Ok(c.pragma_query_value(None, "user_version", |r| r.get::<_, u32>(0))?)
            })
            .unwrap();
        assert_eq!(v, migrations::LATEST);
    }

    #[tokio::test]
    async fn a_panic_inside_a_store_call_does_not_break_later_calls() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("n.db")).unwrap();

        let panicked = store
            .call(|c| -> Result<(), StoreError> {
                c.execute_batch("BEGIN IMMEDIATE")?;
                panic!("bug while holding the connection");
            })
            .await;

        assert!(
            matches!(panicked, Err(StoreError::Panicked)),
            "{panicked:?}"
        );
        assert_eq!(store.schema_version().await.unwrap(), migrations::LATEST);
        let write = store.call_blocking(|c| Ok(c.transaction()?.commit()?));
        assert!(write.is_ok(), "{write:?}");
    }

    #[test]
    fn rfc3339_has_millis() {
        assert_eq!(rfc3339_ms(1_500), "1970-01-01T00:00:01.500Z");
    }
}
