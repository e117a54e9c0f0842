//! nexusd.
pub mod agent;
pub mod boot;
pub mod vmm;
