//! nexusd.
