//! Where Nexus keeps its files, resolved the same way by `nexusd` and `nexusctl`.
//!
//! With a home (`--home DIR` or `NEXUS_HOME`) everything lives under that directory:
//! `DIR/nexus.toml`, `DIR/state/nexus.db`, `DIR/data/`, `DIR/run/nexusd.sock`. Without one the XDG
//! base directories are used: config in `$XDG_CONFIG_HOME/nexus`, state in `$XDG_STATE_HOME/nexus`,
//! data in `$XDG_DATA_HOME/nexus`, sockets in `$XDG_RUNTIME_DIR/nexus` (or `<state>/run` when there
//! is no runtime directory, as for root outside a login session).

use std::path::{Path, PathBuf};

/// Environment variable naming the home directory.
pub const HOME_ENV: &str = "NEXUS_HOME";

/// Every location Nexus uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The `nexus.toml` config file (it need not exist).
    pub config_file: PathBuf,
    /// Directory of the database and other durable state.
    pub state_dir: PathBuf,
    /// The SQLite database.
    pub database: PathBuf,
    /// Storage pool, assets, VM runtime data.
    pub data_dir: PathBuf,
    /// Sockets and the lock file.
    pub run_dir: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
}

impl Paths {
    /// All paths under one home directory.
    pub fn under_home(home: &Path) -> Self {
        Self::from_parts(
            home.join("nexus.toml"),
            home.join("state"),
            home.join("data"),
            home.join("run"),
        )
    }

    /// Resolves from an explicit home, else `NEXUS_HOME`, else the XDG base directories.
    pub fn resolve(home: Option<&Path>) -> Self {
        Self::resolve_with(home, |k| std::env::var_os(k).filter(|v| !v.is_empty()))
    }

    /// Like [`Paths::resolve`] with the environment passed in (for tests).
    pub fn resolve_with(
        home: Option<&Path>,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Self {
        if let Some(home) = home {
            return Self::under_home(home);
        }
        if let Some(home) = env(HOME_ENV) {
            return Self::under_home(Path::new(&home));
        }
        let user_home = env("HOME").map(PathBuf::from).unwrap_or_else(|| "/".into());
        let xdg = |var: &str, fallback: &str| {
            env(var)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| user_home.join(fallback))
                .join("nexus")
        };
        let config_dir = xdg("XDG_CONFIG_HOME", ".config");
        let state_dir = xdg("XDG_STATE_HOME", ".local/state");
        let data_dir = xdg("XDG_DATA_HOME", ".local/share");
        let run_dir = env("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|p| p.join("nexus"))
            .unwrap_or_else(|| state_dir.join("run"));
        Self::from_parts(config_dir.join("nexus.toml"), state_dir, data_dir, run_dir)
    }

    fn from_parts(
        config_file: PathBuf,
        state_dir: PathBuf,
        data_dir: PathBuf,
        run_dir: PathBuf,
    ) -> Self {
        Self {
            config_file,
            database: state_dir.join("nexus.db"),
            state_dir,
            data_dir,
            socket: run_dir.join("nexusd.sock"),
            run_dir,
        }
    }

    /// The lock file that keeps a second daemon off the same home.
    pub fn lock_file(&self) -> PathBuf {
        self.run_dir.join("nexusd.lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn home_puts_everything_under_it() {
        let p = Paths::resolve_with(Some(Path::new("/h")), env_of(&[]));
        assert_eq!(p.socket, Path::new("/h/run/nexusd.sock"));
        assert_eq!(p.database, Path::new("/h/state/nexus.db"));
        assert_eq!(p.config_file, Path::new("/h/nexus.toml"));
    }

    #[test]
    fn nexus_home_env_is_used_without_flag() {
        let p = Paths::resolve_with(None, env_of(&[("NEXUS_HOME", "/e")]));
        assert_eq!(p.socket, Path::new("/e/run/nexusd.sock"));
    }

    #[test]
    fn xdg_dirs_are_honoured() {
        let p = Paths::resolve_with(
            None,
            env_of(&[
                ("HOME", "/home/u"),
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
                ("XDG_STATE_HOME", "/s"),
            ]),
        );
        assert_eq!(p.socket, Path::new("/run/user/1000/nexus/nexusd.sock"));
        assert_eq!(p.database, Path::new("/s/nexus/nexus.db"));
        assert_eq!(p.config_file, Path::new("/home/u/.config/nexus/nexus.toml"));
        assert_eq!(p.data_dir, Path::new("/home/u/.local/share/nexus"));
    }

    #[test]
    fn no_runtime_dir_falls_back_to_state() {
        let p = Paths::resolve_with(None, env_of(&[("HOME", "/root")]));
        assert_eq!(
            p.socket,
            Path::new("/root/.local/state/nexus/run/nexusd.sock")
        );
    }
}
