//! Forward-only schema migrations. Append; never edit a migration that has shipped.

use rusqlite_migration::{M, Migrations};

/// The schema version after all migrations.
#[cfg(test)]
pub const LATEST: u32 = 1;

pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(
        r#"
        CREATE TABLE vms (
            id              TEXT PRIMARY KEY NOT NULL,
            name            TEXT NOT NULL UNIQUE,
            state           TEXT NOT NULL CHECK (state IN
                              ('created','starting','running','stopping','stopped','crashed','failed')),
            vcpus           INTEGER NOT NULL CHECK (vcpus BETWEEN 1 AND 32),
            memory_mib      INTEGER NOT NULL CHECK (memory_mib BETWEEN 64 AND 65536),
            vsock_cid       INTEGER NOT NULL UNIQUE CHECK (vsock_cid >= 3),
            created_at_ms   INTEGER NOT NULL,
            state_changed_at_ms INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX vms_state ON vms(state);

        CREATE TABLE vm_transitions (
            seq         INTEGER PRIMARY KEY AUTOINCREMENT,
            vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
            from_state  TEXT,
            to_state    TEXT NOT NULL,
            reason      TEXT NOT NULL,
            at_ms       INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX vm_transitions_vm ON vm_transitions(vm_id, seq);
        "#,
    )])
}
