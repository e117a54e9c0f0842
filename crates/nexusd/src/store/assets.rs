//! Queries on `providers`, `assets` and `asset_runs`. A run's assets are inserted in one
//! transaction, after their files are in the store.

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use nexus_lib::api::{Asset, AssetKind, Provider, ProviderKind, ProviderSettings};

use super::images::uuid_col;
use super::{StoreError, rfc3339_ms};

/// An asset row as stored: the API's view of it, and its creation time in ms.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetRow {
    pub asset: Asset,
    pub created_at_ms: i64,
}

impl std::ops::Deref for AssetRow {
    type Target = Asset;
    fn deref(&self) -> &Asset {
        &self.asset
    }
}

impl AssetRow {
    /// A new row created at `created_at_ms` (its `created_at` follows from it).
    pub fn new(mut asset: Asset, created_at_ms: i64) -> Self {
        asset.created_at = rfc3339_ms(created_at_ms);
        Self {
            asset,
            created_at_ms,
        }
    }

    pub fn to_api(&self) -> Asset {
        self.asset.clone()
    }
}

/// Outcome of inserting a provider.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    Ok,
    NameTaken,
}

/// Outcome of deleting a provider.
#[derive(Debug, PartialEq, Eq)]
pub enum ProviderDeleted {
    Ok,
    NotFound,
    Builtin,
}

/// Outcome of inserting a run's assets.
#[derive(Debug)]
pub enum AssetsInserted {
    /// The rows now in the table (new, or identical ones that were there already).
    Ok(Vec<AssetRow>),
    /// `kind/name/version` is installed already with another sha256.
    Conflict(AssetRow),
}

/// Outcome of looking an asset up by id, name or `name@version`.
#[derive(Debug)]
pub enum Found {
    One(AssetRow),
    None,
    /// Several assets carry that name (their versions).
    Ambiguous(Vec<String>),
}

fn text_col<T: std::str::FromStr<Err = String>>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn json_col<T: serde::de::DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

const PROVIDER_COLUMNS: &str = "name, kind, settings, stages, builtin, created_at_ms";

fn provider_from_row(row: &Row<'_>) -> rusqlite::Result<Provider> {
    let settings: ProviderSettings = json_col(row, 2)?;
    Ok(Provider {
        name: row.get(0)?,
        kind: text_col::<ProviderKind>(row, 1)?,
        settings,
        stages: json_col(row, 3)?,
        builtin: row.get::<_, i64>(4)? == 1,
        created_at: rfc3339_ms(row.get(5)?),
    })
}

/// Inserts provider `p`; `on_conflict` is the `ON CONFLICT(name)` action. Returns the rows
/// changed.
fn write_provider(
    conn: &Connection,
    p: &Provider,
    builtin: bool,
    on_conflict: &str,
    now_ms: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        &format!(
            "INSERT INTO providers ({PROVIDER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) {on_conflict}"
        ),
        params![
            p.name,
            p.kind.as_str(),
            to_json(&p.settings),
            to_json(&p.stages),
            builtin,
            now_ms
        ],
    )?)
}

/// Writes a built-in provider, replacing what an older nexusd wrote under that name.
pub fn upsert_builtin(conn: &Connection, p: &Provider, now_ms: i64) -> Result<(), StoreError> {
    let update = "DO UPDATE SET kind = excluded.kind, settings = excluded.settings,
                  stages = excluded.stages, builtin = 1";
    write_provider(conn, p, true, update, now_ms).map(drop)
}

/// Inserts a provider; a name clash writes nothing.
pub fn insert_provider(
    conn: &Connection,
    p: &Provider,
    now_ms: i64,
) -> Result<Inserted, StoreError> {
    Ok(
        match write_provider(conn, p, false, "DO NOTHING", now_ms)? {
            1 => Inserted::Ok,
            _ => Inserted::NameTaken,
        },
    )
}

pub fn get_provider(conn: &Connection, name: &str) -> Result<Option<Provider>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {PROVIDER_COLUMNS} FROM providers WHERE name = ?1"),
            [name],
            provider_from_row,
        )
        .optional()?)
}

/// All providers, built-in first, then by name.
pub fn list_providers(conn: &Connection) -> Result<Vec<Provider>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {PROVIDER_COLUMNS} FROM providers ORDER BY builtin DESC, name"
    ))?;
    let rows = stmt
        .query_map([], provider_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Deletes a provider that is not built in.
pub fn delete_provider(conn: &Connection, name: &str) -> Result<ProviderDeleted, StoreError> {
    let builtin: Option<i64> = conn
        .query_row(
            "SELECT builtin FROM providers WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match builtin {
        None => ProviderDeleted::NotFound,
        Some(1) => ProviderDeleted::Builtin,
        Some(_) => {
            conn.execute("DELETE FROM providers WHERE name = ?1", [name])?;
            ProviderDeleted::Ok
        }
    })
}

const ASSET_COLUMNS: &str =
    "id, kind, name, version, sha256, size_bytes, path, provider, inputs, created_at_ms";

fn asset_from_row(row: &Row<'_>) -> rusqlite::Result<AssetRow> {
    let asset = Asset {
        id: uuid_col(row, 0)?,
        kind: text_col(row, 1)?,
        name: row.get(2)?,
        version: row.get(3)?,
        sha256: row.get(4)?,
        size_bytes: row.get::<_, i64>(5)? as u64,
        path: row.get(6)?,
        provider: row.get(7)?,
        inputs: json_col(row, 8)?,
        created_at: String::new(),
    };
    Ok(AssetRow::new(asset, row.get(9)?))
}

fn existing(
    conn: &Connection,
    kind: AssetKind,
    name: &str,
    version: &str,
) -> Result<Option<AssetRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {ASSET_COLUMNS} FROM assets WHERE kind = ?1 AND name = ?2 AND version = ?3"
            ),
            params![kind.as_str(), name, version],
            asset_from_row,
        )
        .optional()?)
}

/// Inserts a run's assets in one transaction: all of them, or none when one clashes with an
/// installed asset of the same kind, name and version but another sha256. An identical asset
/// installed already is kept (and returned) as it is.
pub fn insert_assets(
    conn: &mut Connection,
    rows: &[AssetRow],
) -> Result<AssetsInserted, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(old) = existing(&tx, row.kind, &row.name, &row.version)? {
            if old.sha256 != row.sha256 {
                return Ok(AssetsInserted::Conflict(old));
            }
            out.push(old);
            continue;
        }
        tx.execute(
            &format!("INSERT INTO assets ({ASSET_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            params![
                row.id.to_string(),
                row.kind.as_str(),
                row.name,
                row.version,
                row.sha256,
                row.size_bytes as i64,
                row.path,
                row.provider,
                to_json(&row.inputs),
                row.created_at_ms
            ],
        )?;
        out.push(row.clone());
    }
    tx.commit()?;
    Ok(AssetsInserted::Ok(out))
}

/// Assets, oldest first, optionally of one kind.
pub fn list_assets(
    conn: &Connection,
    kind: Option<AssetKind>,
) -> Result<Vec<AssetRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ASSET_COLUMNS} FROM assets WHERE ?1 IS NULL OR kind = ?1 ORDER BY created_at_ms, id"
    ))?;
    let rows = stmt
        .query_map([kind.map(AssetKind::as_str)], asset_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// An asset by id, by name (when only one asset has it) or by `name@version`, optionally of one
/// kind only.
pub fn find_asset(
    conn: &Connection,
    key: &str,
    kind: Option<AssetKind>,
) -> Result<Found, StoreError> {
    let (name, version) = match key.rsplit_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (key, None),
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ASSET_COLUMNS} FROM assets
         WHERE (id = ?1 OR (name = ?2 AND (?3 IS NULL OR version = ?3)))
           AND (?4 IS NULL OR kind = ?4)
         ORDER BY created_at_ms, id LIMIT 50"
    ))?;
    let mut rows = stmt
        .query_map(
            params![key, name, version, kind.map(AssetKind::as_str)],
            asset_from_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if let Some(by_id) = rows.iter().position(|r| r.id.to_string() == key) {
        return Ok(Found::One(rows.swap_remove(by_id)));
    }
    Ok(match rows.len() {
        0 => Found::None,
        1 => Found::One(rows.pop().expect("one row")),
        _ => Found::Ambiguous(
            rows.iter()
                .map(|r| format!("{}@{} ({})", r.name, r.version, r.kind))
                .collect(),
        ),
    })
}

/// Deletes asset `id`; returns whether another asset still uses its file.
pub fn delete_asset(conn: &mut Connection, id: Uuid) -> Result<Option<bool>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let sha: Option<String> = tx
        .query_row(
            "SELECT sha256 FROM assets WHERE id = ?1",
            [id.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    let Some(sha) = sha else {
        return Ok(None);
    };
    tx.execute("DELETE FROM assets WHERE id = ?1", [id.to_string()])?;
    let shared = sha_referenced(&tx, &sha)?;
    tx.commit()?;
    Ok(Some(shared))
}

/// Whether any asset's file is `sha`.
pub fn sha_referenced(conn: &Connection, sha: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM assets WHERE sha256 = ?1)",
        [sha],
        |r| r.get(0),
    )?)
}

/// Every sha256 an asset uses.
pub fn referenced_hashes(
    conn: &Connection,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut stmt = conn.prepare("SELECT DISTINCT sha256 FROM assets")?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Records the start of a run.
pub fn start_run(
    conn: &Connection,
    id: Uuid,
    provider: &str,
    vars: &serde_json::Value,
    now_ms: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO asset_runs (id, provider, vars, state, started_at_ms) VALUES (?1, ?2, ?3, 'running', ?4)",
        params![id.to_string(), provider, to_json(vars), now_ms],
    )?;
    Ok(())
}

/// Records how a run ended (`succeeded` or `failed` with its error).
pub fn end_run(
    conn: &Connection,
    id: Uuid,
    error: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let state = if error.is_some() {
        "failed"
    } else {
        "succeeded"
    };
    conn.execute(
        "UPDATE asset_runs SET state = ?2, error = ?3, ended_at_ms = ?4 WHERE id = ?1",
        params![id.to_string(), state, error, now_ms],
    )?;
    Ok(())
}

/// Marks the runs a stopped daemon left `running` as `interrupted`; returns how many.
pub fn interrupt_runs(conn: &Connection, now_ms: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE asset_runs SET state = 'interrupted', ended_at_ms = ?1 WHERE state = 'running'",
        [now_ms],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn row(name: &str, sha: char) -> AssetRow {
        let asset = Asset {
            id: Uuid::now_v7(),
            kind: AssetKind::Kernel,
            name: name.into(),
            version: "1".into(),
            sha256: sha.to_string().repeat(64),
            size_bytes: 3,
            path: "/x".into(),
            provider: "url".into(),
            inputs: serde_json::json!({}),
            created_at: String::new(),
        };
        AssetRow::new(asset, 1)
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("n.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn a_clash_on_kind_name_version_with_another_hash_inserts_none_of_the_run() {
        let (_d, store) = store();
        store
            .call_blocking(|c| insert_assets(c, &[row("k", 'a')]).map(drop))
            .unwrap();

        let second = store
            .call_blocking(|c| insert_assets(c, &[row("other", 'c'), row("k", 'b')]))
            .unwrap();

        assert!(matches!(second, AssetsInserted::Conflict(ref old) if old.sha256.starts_with('a')));
        let names: Vec<String> = store
            .call_blocking(|c| list_assets(c, None))
            .unwrap()
            .into_iter()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(names, ["k"]);
    }

    #[test]
    fn the_same_asset_twice_keeps_the_first_row() {
        let (_d, store) = store();
        let first = row("k", 'a');
        store
            .call_blocking({
                let first = first.clone();
                move |c| insert_assets(c, &[first]).map(drop)
            })
            .unwrap();
        let again = store
            .call_blocking(|c| insert_assets(c, &[row("k", 'a')]))
            .unwrap();
        assert!(matches!(again, AssetsInserted::Ok(ref rows) if rows[0].id == first.id));
    }

    #[test]
    fn a_name_shared_by_two_versions_is_ambiguous_until_the_version_is_given() {
        let (_d, store) = store();
        let mut v2 = row("k", 'b');
        v2.asset.version = "2".into();
        store
            .call_blocking(move |c| insert_assets(c, &[row("k", 'a'), v2]).map(drop))
            .unwrap();
        let by_name = store.call_blocking(|c| find_asset(c, "k", None)).unwrap();
        let by_version = store.call_blocking(|c| find_asset(c, "k@2", None)).unwrap();
        assert!(matches!(by_name, Found::Ambiguous(ref v) if v.len() == 2));
        assert!(matches!(by_version, Found::One(ref r) if r.version == "2"));
    }

    #[test]
    fn deleting_one_of_two_assets_sharing_a_file_reports_the_file_still_used() {
        let (_d, store) = store();
        let (a, mut b) = (row("k", 'a'), row("k2", 'a'));
        b.asset.kind = AssetKind::File;
        let id = a.id;
        store
            .call_blocking(move |c| insert_assets(c, &[a, b]).map(drop))
            .unwrap();
        assert_eq!(
            store.call_blocking(move |c| delete_asset(c, id)).unwrap(),
            Some(true)
        );
    }

    #[test]
    fn a_builtin_provider_cannot_be_deleted() {
        let (_d, store) = store();
        let p = Provider {
            name: "url".into(),
            kind: ProviderKind::Url,
            builtin: true,
            settings: ProviderSettings::default(),
            stages: vec![],
            created_at: String::new(),
        };
        store
            .call_blocking(move |c| upsert_builtin(c, &p, 1))
            .unwrap();
        assert_eq!(
            store.call_blocking(|c| delete_provider(c, "url")).unwrap(),
            ProviderDeleted::Builtin
        );
    }
}
