//! VM networking on the host: the resolver on the bridge's gateway address (`dns`).

pub mod dns;
