//! nexusd.
pub mod boot;
pub mod vmm;
