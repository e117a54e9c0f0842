//! What each command does. One module per noun; each verb is a function.

pub mod guest;
pub mod drive;
pub mod image;
pub mod status;
pub mod vm;
