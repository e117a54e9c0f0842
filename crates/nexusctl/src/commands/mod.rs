//! What each command does. One module per noun; each verb is a function.

pub mod asset;
pub mod build;
pub mod detach;
pub mod download;
pub mod drive;
pub mod firecracker;
pub mod guest;
pub mod image;
pub mod kernel;
pub mod mcp;
pub mod network;
pub mod provider;
pub mod rootfs;
pub mod status;
pub mod template;
pub mod terminal;
pub mod token;
pub mod vm;
