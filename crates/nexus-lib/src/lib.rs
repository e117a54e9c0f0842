//! What `nexusd` and `nexusctl` share: wire types of the API, names and ids, the resolution of
//! Nexus's files and sockets, the config file schema, the typed client for the daemon's API, and
//! the guest-agent protocol types.
//!
//! No SQL, no ioctls, no processes here: this crate is what a third-party client links against.

pub mod agent;
pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod names;
pub mod paths;
pub mod size;
pub mod term_client;
pub mod terminal;

/// The version of this build, reported by `GET /v1/health` and `nexusctl --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
