//! What each command does. One module per noun; each verb is a function.

pub mod drive;
pub mod guest;
pub mod image;
pub mod mcp;
pub mod network;
pub mod status;
pub mod token;
pub mod vm;
