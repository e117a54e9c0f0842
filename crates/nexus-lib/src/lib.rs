//! Shared types.
pub mod agent;
