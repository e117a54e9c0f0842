//! `nexusd`, the Nexus daemon, as a library: the binary only parses flags, installs logging and
//! calls [`daemon::run`]. Tests drive [`api::router`] directly or the real binary.

pub mod agent;
pub mod api;
pub mod assets;
pub mod boot;
pub mod builds;
pub mod command;
pub mod daemon;
pub mod drives;
pub mod e2b;
pub mod hostpath;
pub mod images;
pub mod jail;
pub mod mcp;
pub mod network;
pub mod sanitize;
pub mod settings;
pub mod storage;
pub mod store;
pub mod tcp;
pub mod tokens;
pub mod ui;
pub mod vm;
pub mod vmm;
