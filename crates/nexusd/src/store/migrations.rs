//! Forward-only schema migrations. Append; never edit a migration that has shipped.

use rusqlite_migration::{M, Migrations};

/// The schema version after all migrations.
#[cfg(test)]
pub const LATEST: u32 = 11;

pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        // 1: VM records and their history.
        M::up(
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
        ),
        // 2: storage. An image or drive row exists only once its subvolume is published; the database
        // itself enforces one VM per drive (a single `vm_id` column), one root drive per VM (a partial
        // unique index) and that no image is deleted while a drive depends on it.
        M::up(
            r#"
        CREATE TABLE images (
            id              TEXT PRIMARY KEY NOT NULL,
            name            TEXT NOT NULL UNIQUE,
            state           TEXT NOT NULL CHECK (state IN ('ready','broken')),
            size_bytes      INTEGER NOT NULL CHECK (size_bytes > 0),
            sha256          TEXT NOT NULL,
            source          TEXT NOT NULL,
            created_at_ms   INTEGER NOT NULL
        ) STRICT;

        CREATE TABLE drives (
            id              TEXT PRIMARY KEY NOT NULL,
            name            TEXT NOT NULL UNIQUE,
            image_id        TEXT NOT NULL REFERENCES images(id) ON DELETE RESTRICT,
            size_bytes      INTEGER NOT NULL CHECK (size_bytes > 0),
            vm_id           TEXT REFERENCES vms(id) ON DELETE SET NULL,
            is_root         INTEGER NOT NULL DEFAULT 0 CHECK (is_root IN (0, 1)),
            created_with_vm INTEGER NOT NULL DEFAULT 0 CHECK (created_with_vm IN (0, 1)),
            state           TEXT NOT NULL CHECK (state IN ('ready','broken')),
            created_at_ms   INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX drives_image ON drives(image_id);
        CREATE INDEX drives_vm ON drives(vm_id);
        CREATE UNIQUE INDEX drives_one_root_per_vm ON drives(vm_id) WHERE is_root = 1;
        -- A detached drive (also when its VM row goes away) has no role.
        CREATE TRIGGER drives_detached_is_not_root AFTER UPDATE OF vm_id ON drives
            WHEN NEW.vm_id IS NULL AND NEW.is_root = 1
            BEGIN UPDATE drives SET is_root = 0 WHERE id = NEW.id; END;
        "#,
        ),
        // 3: the processes of live VMs and the record of every boot.
        M::up(
            r#"
        -- The processes of a live VM, so that a restarted daemon can re-adopt them.
        CREATE TABLE vm_runtime (
            vm_id               TEXT PRIMARY KEY NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
            boot_id             INTEGER NOT NULL,
            backend             TEXT NOT NULL,
            accel               TEXT NOT NULL,
            runtime_dir         TEXT NOT NULL,
            vmm_pid             INTEGER NOT NULL,
            vmm_start_ticks     INTEGER NOT NULL,
            helper_pid          INTEGER,
            helper_start_ticks  INTEGER
        ) STRICT;

        -- One row per boot: phase timings (ms) and how it ended.
        CREATE TABLE vm_boots (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            vm_id           TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
            started_at_ms   INTEGER NOT NULL,
            backend         TEXT NOT NULL,
            accel           TEXT NOT NULL,
            vmm_ready_ms    INTEGER,
            guest_init_ms   INTEGER,
            guest_ready_ms  INTEGER,
            agent_ready_ms  INTEGER,
            outcome         TEXT NOT NULL,
            ended_at_ms     INTEGER,
            exit            TEXT
        ) STRICT;
        CREATE INDEX vm_boots_vm ON vm_boots(vm_id, id);
        "#,
        ),
        // 4: VM networking.
        M::up(
            r#"
        -- A VM's network. `key` is never reused (AUTOINCREMENT): it names the tap and the
        -- VM's nftables objects, so a stale one can never be taken for a new VM's.
        CREATE TABLE vm_networks (
            key     INTEGER PRIMARY KEY AUTOINCREMENT,
            vm_id   TEXT NOT NULL UNIQUE REFERENCES vms(id) ON DELETE CASCADE,
            mode    TEXT NOT NULL CHECK (mode IN ('none','nat')),
            ip      INTEGER UNIQUE CHECK (ip IS NULL OR ip BETWEEN 0 AND 4294967295),
            prefix  INTEGER CHECK (prefix IS NULL OR prefix BETWEEN 0 AND 32),
            mac     TEXT UNIQUE,
            tap     TEXT UNIQUE,
            egress  TEXT NOT NULL,
            epoch   INTEGER NOT NULL DEFAULT 1,
            CHECK ((mode = 'nat') = (ip IS NOT NULL))
        ) STRICT;

        -- Host ports forwarded to VMs: a protocol's host port belongs to one VM.
        CREATE TABLE vm_publish (
            vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
            bind        TEXT NOT NULL,
            host_port   INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
            guest_port  INTEGER NOT NULL CHECK (guest_port BETWEEN 1 AND 65535),
            protocol    TEXT NOT NULL CHECK (protocol IN ('tcp','udp')),
            UNIQUE (protocol, host_port)
        ) STRICT;
        CREATE INDEX vm_publish_vm ON vm_publish(vm_id);

        -- The host network: the subnet addresses come from, and whether nexusd turned
        -- IPv4 forwarding on (so that `network down` turns it off again).
        CREATE TABLE network_host (
            id                     INTEGER PRIMARY KEY CHECK (id = 1),
            subnet                 TEXT NOT NULL,
            forwarding_set_by_us   INTEGER NOT NULL DEFAULT 0
        ) STRICT;
        "#,
        ),
        // 5: assets and the providers whose pipelines download them.
        M::up(
            r#"
        -- A provider: its kind, its settings and its pipeline, as JSON checked by nexusd.
        -- Built-in providers are written by nexusd at every start.
        CREATE TABLE providers (
            name            TEXT PRIMARY KEY NOT NULL,
            kind            TEXT NOT NULL CHECK (kind IN
                              ('debian-package','firecracker-release','url','kernel-build')),
            settings        TEXT NOT NULL CHECK (json_valid(settings)),
            stages          TEXT NOT NULL CHECK (json_valid(stages)),
            builtin         INTEGER NOT NULL DEFAULT 0 CHECK (builtin IN (0, 1)),
            created_at_ms   INTEGER NOT NULL
        ) STRICT;

        -- An installed file of the content-addressed store (<data>/assets/sha256/<hex>). The
        -- provider is a name, not a reference: assets outlive the provider that made them.
        CREATE TABLE assets (
            id              TEXT PRIMARY KEY NOT NULL,
            kind            TEXT NOT NULL CHECK (kind IN
                              ('kernel','rootfs','firecracker','jailer','initrd','package','file')),
            name            TEXT NOT NULL,
            version         TEXT NOT NULL,
            sha256          TEXT NOT NULL CHECK (length(sha256) = 64),
            size_bytes      INTEGER NOT NULL CHECK (size_bytes >= 0),
            path            TEXT NOT NULL,
            provider        TEXT NOT NULL,
            inputs          TEXT NOT NULL CHECK (json_valid(inputs)),
            created_at_ms   INTEGER NOT NULL,
            UNIQUE (kind, name, version)
        ) STRICT;
        CREATE INDEX assets_sha256 ON assets(sha256);

        -- Every pipeline run and how it ended; runs still `running` at start-up were cut short.
        CREATE TABLE asset_runs (
            id              TEXT PRIMARY KEY NOT NULL,
            provider        TEXT NOT NULL,
            vars            TEXT NOT NULL CHECK (json_valid(vars)),
            state           TEXT NOT NULL CHECK (state IN
                              ('running','succeeded','failed','interrupted')),
            error           TEXT,
            started_at_ms   INTEGER NOT NULL,
            ended_at_ms     INTEGER
        ) STRICT;
        "#,
        ),
        // 6: API tokens for the TCP listener, each scoped to VMs. Only the secret's SHA-256 is
        // kept. A VM's deletion takes it out of every scope.
        M::up(
            r#"
        CREATE TABLE api_tokens (
            id              TEXT PRIMARY KEY NOT NULL,
            name            TEXT,
            digest          BLOB NOT NULL UNIQUE CHECK (length(digest) = 32),
            lifecycle       INTEGER NOT NULL CHECK (lifecycle IN (0, 1)),
            created_at_ms   INTEGER NOT NULL
        ) STRICT;

        CREATE TABLE api_token_vms (
            token_id    TEXT NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
            vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
            PRIMARY KEY (token_id, vm_id)
        ) STRICT;
        CREATE INDEX api_token_vms_vm ON api_token_vms(vm_id);
        "#,
        ),
        // 7: MCP servers a VM runs (the agent supervises them; nexusd exposes their tools).
        M::up(
            r#"
        CREATE TABLE vm_mcp_servers (
            vm_id   TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
            name    TEXT NOT NULL,
            spec    TEXT NOT NULL,
            PRIMARY KEY (vm_id, name)
        ) STRICT;
        "#,
        ),
        // 8: the `debian-rootfs` provider kind. SQLite cannot change a CHECK: the table is
        // rebuilt (nothing references it; assets name their provider as text).
        M::up(
            r#"
        CREATE TABLE providers_new (
            name            TEXT PRIMARY KEY NOT NULL,
            kind            TEXT NOT NULL CHECK (kind IN
                              ('debian-package','firecracker-release','url','kernel-build',
                               'debian-rootfs')),
            settings        TEXT NOT NULL CHECK (json_valid(settings)),
            stages          TEXT NOT NULL CHECK (json_valid(stages)),
            builtin         INTEGER NOT NULL DEFAULT 0 CHECK (builtin IN (0, 1)),
            created_at_ms   INTEGER NOT NULL
        ) STRICT;
        INSERT INTO providers_new SELECT name, kind, settings, stages, builtin, created_at_ms
            FROM providers;
        DROP TABLE providers;
        ALTER TABLE providers_new RENAME TO providers;
        "#,
        ),
        // 9: templates (every version kept) and builds (each with the exact template text it
        // used, its cache key, timed steps and a bounded log). A build points at the image it
        // made; deleting the image leaves the build record with no image.
        M::up(
            r#"
        CREATE TABLE templates (
            id              TEXT PRIMARY KEY NOT NULL,
            name            TEXT NOT NULL,
            version         INTEGER NOT NULL CHECK (version >= 1),
            base            TEXT NOT NULL,
            source          TEXT NOT NULL,
            created_at_ms   INTEGER NOT NULL,
            UNIQUE (name, version)
        ) STRICT;

        CREATE TABLE builds (
            id                  TEXT PRIMARY KEY NOT NULL,
            template_name       TEXT NOT NULL,
            template_version    INTEGER NOT NULL,
            template_source     TEXT NOT NULL,
            cache_key           TEXT NOT NULL,
            state               TEXT NOT NULL CHECK (state IN
                                  ('queued','running','succeeded','failed','cancelled')),
            cached_from         TEXT,
            image_id            TEXT REFERENCES images(id) ON DELETE SET NULL,
            vm_id               TEXT,
            error               TEXT,
            steps               TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(steps)),
            log                 BLOB NOT NULL DEFAULT x'',
            created_at_ms       INTEGER NOT NULL,
            ended_at_ms         INTEGER
        ) STRICT;
        CREATE INDEX builds_cache_key ON builds(cache_key, state);
        CREATE INDEX builds_state ON builds(state);
        "#,
        ),
        // 10: sandboxes made through the E2B-compatible API: the VM behind each, its template,
        // metadata, environment, envd access token and the time it expires (stopped, deleted).
        M::up(
            r#"
        CREATE TABLE e2b_sandboxes (
            vm_id           TEXT PRIMARY KEY NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
            sandbox_id      TEXT NOT NULL UNIQUE,
            template_id     TEXT NOT NULL,
            metadata        TEXT NOT NULL CHECK (json_valid(metadata)),
            env_vars        TEXT NOT NULL CHECK (json_valid(env_vars)),
            access_token    TEXT NOT NULL,
            started_at_ms   INTEGER NOT NULL,
            end_at_ms       INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX e2b_sandboxes_end ON e2b_sandboxes(end_at_ms);
        "#,
        ),
        // 11: why each E2B sandbox ended (its VM row is gone by then).
        M::up(
            r#"
        CREATE TABLE e2b_sandbox_ends (
            seq             INTEGER PRIMARY KEY AUTOINCREMENT,
            sandbox_id      TEXT NOT NULL,
            vm_id           TEXT NOT NULL,
            reason          TEXT NOT NULL,
            ended_at_ms     INTEGER NOT NULL
        ) STRICT;
        "#,
        ),
    ])
}
