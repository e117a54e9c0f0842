//! nexusd.
pub mod boot;
pub mod vmm;
pub mod agent;
