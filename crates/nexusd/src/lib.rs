//! nexusd.
pub mod boot;
