//! nexusd.

pub mod storage;
