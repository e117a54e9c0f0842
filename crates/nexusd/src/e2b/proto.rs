//! The envd protocol types, generated at build time from `proto/envd` (prost messages with
//! pbjson's protobuf JSON mapping: camelCase names, bytes as base64, enums by name, 64-bit
//! integers as strings), as the Connect protocol's JSON encoding carries them.

#![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]

/// `process.Process`.
pub mod process {
    include!(concat!(env!("OUT_DIR"), "/process.rs"));
    include!(concat!(env!("OUT_DIR"), "/process.serde.rs"));
}

/// `filesystem.Filesystem`.
pub mod filesystem {
    include!(concat!(env!("OUT_DIR"), "/filesystem.rs"));
    include!(concat!(env!("OUT_DIR"), "/filesystem.serde.rs"));
}
