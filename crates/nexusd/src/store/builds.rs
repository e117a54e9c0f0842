//! Queries on the `builds` table. A build row is written when the build is queued, updated
//! while it runs (state, build VM, steps, log), and never again once final: every update is
//! guarded by the row still being `queued` or `running`.

use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use nexus_lib::api::{Build, BuildState, BuildStep};

use super::images::uuid_col;
use super::{StoreError, now_ms, rfc3339_ms};

/// A build as stored (without its log, read on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRow {
    pub id: Uuid,
    pub template_name: String,
    pub template_version: u32,
    pub template_source: String,
    pub cache_key: String,
    pub state: BuildState,
    pub cached_from: Option<Uuid>,
    pub image_id: Option<Uuid>,
    /// The image's name (joined), while the image exists.
    pub image_name: Option<String>,
    pub vm_id: Option<Uuid>,
    pub error: Option<String>,
    pub steps: Vec<BuildStep>,
    pub created_at_ms: i64,
    pub ended_at_ms: Option<i64>,
}

impl BuildRow {
    /// A queued build of template `name@version`.
    pub fn queued(name: &str, version: u32, source: &str, cache_key: &str) -> Self {
        Self {
            id: Uuid::now_v7(),
            template_name: name.to_owned(),
            template_version: version,
            template_source: source.to_owned(),
            cache_key: cache_key.to_owned(),
            state: BuildState::Queued,
            cached_from: None,
            image_id: None,
            image_name: None,
            vm_id: None,
            error: None,
            steps: Vec::new(),
            created_at_ms: now_ms(),
            ended_at_ms: None,
        }
    }

    pub fn to_api(&self) -> Build {
        Build {
            id: self.id,
            template: self.template_name.clone(),
            template_version: self.template_version,
            template_source: self.template_source.clone(),
            cache_key: self.cache_key.clone(),
            state: self.state,
            cached_from: self.cached_from,
            image_id: self.image_id,
            image: self.image_name.clone(),
            error: self.error.clone(),
            steps: self.steps.clone(),
            created_at: rfc3339_ms(self.created_at_ms),
            ended_at: self.ended_at_ms.map(rfc3339_ms),
            duration_ms: self
                .ended_at_ms
                .map(|e| e.saturating_sub(self.created_at_ms).max(0) as u64),
        }
    }
}

const COLUMNS: &str = "b.id, b.template_name, b.template_version, b.template_source, b.cache_key,
    b.state, b.cached_from, b.image_id, i.name, b.vm_id, b.error, b.steps, b.created_at_ms,
    b.ended_at_ms";
const FROM: &str = "builds b LEFT JOIN images i ON i.id = b.image_id";

fn opt_uuid(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Uuid>> {
    match row.get::<_, Option<String>>(idx)? {
        None => Ok(None),
        Some(_) => uuid_col(row, idx).map(Some),
    }
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<BuildRow> {
    let conv = |idx, e: String| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    };
    let state: String = row.get(5)?;
    let steps: String = row.get(11)?;
    Ok(BuildRow {
        id: uuid_col(row, 0)?,
        template_name: row.get(1)?,
        template_version: row.get(2)?,
        template_source: row.get(3)?,
        cache_key: row.get(4)?,
        state: state.parse().map_err(|e| conv(5, e))?,
        cached_from: opt_uuid(row, 6)?,
        image_id: opt_uuid(row, 7)?,
        image_name: row.get(8)?,
        vm_id: opt_uuid(row, 9)?,
        error: row.get(10)?,
        steps: serde_json::from_str(&steps).map_err(|e| conv(11, e.to_string()))?,
        created_at_ms: row.get(12)?,
        ended_at_ms: row.get(13)?,
    })
}

fn steps_json(steps: &[BuildStep]) -> String {
    serde_json::to_string(steps).unwrap_or_else(|_| "[]".into())
}

/// Inserts a build row as given (a queued build, or a cache hit already final).
pub fn insert(conn: &Connection, b: &BuildRow) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO builds (id, template_name, template_version, template_source, cache_key,
            state, cached_from, image_id, vm_id, error, steps, created_at_ms, ended_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            b.id.to_string(),
            b.template_name,
            b.template_version,
            b.template_source,
            b.cache_key,
            b.state.as_str(),
            b.cached_from.map(|u| u.to_string()),
            b.image_id.map(|u| u.to_string()),
            b.vm_id.map(|u| u.to_string()),
            b.error,
            steps_json(&b.steps),
            b.created_at_ms,
            b.ended_at_ms
        ],
    )?;
    Ok(())
}

/// A build by id (a prefix of at least 8 characters also finds it when unique).
pub fn get(conn: &Connection, id: &str) -> Result<Option<BuildRow>, StoreError> {
    if let Some(row) = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM {FROM} WHERE b.id = ?1"),
            [id],
            from_row,
        )
        .optional()?
    {
        return Ok(Some(row));
    }
    if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Ok(None);
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE b.id LIKE ?1 || '%' LIMIT 2"
    ))?;
    let mut rows = stmt
        .query_map([id], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(if rows.len() == 1 { rows.pop() } else { None })
}

/// Builds, newest first, of one template or of all, at most `limit`.
pub fn list(
    conn: &Connection,
    template: Option<&str>,
    limit: u32,
) -> Result<Vec<BuildRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE ?1 IS NULL OR b.template_name = ?1
         ORDER BY b.created_at_ms DESC, b.id DESC LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![template, limit], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The newest succeeded build with `cache_key` whose image still exists.
pub fn find_cached(conn: &Connection, cache_key: &str) -> Result<Option<BuildRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM {FROM} WHERE b.cache_key = ?1 AND b.state = 'succeeded'
                 AND i.id IS NOT NULL AND i.state = 'ready'
                 ORDER BY b.created_at_ms DESC LIMIT 1"
            ),
            [cache_key],
            from_row,
        )
        .optional()?)
}

/// Images built for template `template` past the newest `keep`, oldest last used first: each
/// image that a succeeded build of the template made or was answered with (a cache hit counts
/// as a use), ranked by its newest such build. Only images whose source is one of those builds.
pub fn superseded_images(
    conn: &Connection,
    template: &str,
    keep: u32,
) -> Result<Vec<Uuid>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT b.image_id, MAX(b.created_at_ms) AS used FROM builds b
         JOIN images i ON i.id = b.image_id
         WHERE b.template_name = ?1 AND b.state = 'succeeded'
           AND i.source IN (SELECT 'build:' || id FROM builds WHERE template_name = ?1)
         GROUP BY b.image_id ORDER BY used DESC, b.image_id LIMIT -1 OFFSET ?2",
    )?;
    let ids = stmt
        .query_map(params![template, keep], |r| uuid_col(r, 0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids)
}

/// Moves a queued build to `running`; false when it is no longer queued (cancelled).
pub fn set_running(conn: &Connection, id: Uuid) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE builds SET state = 'running' WHERE id = ?1 AND state = 'queued'",
        [id.to_string()],
    )? == 1)
}

/// Records the build VM of a running build.
pub fn set_vm(conn: &Connection, id: Uuid, vm: Option<Uuid>) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE builds SET vm_id = ?2 WHERE id = ?1 AND state IN ('queued','running')",
        params![id.to_string(), vm.map(|v| v.to_string())],
    )?;
    Ok(())
}

/// Saves the steps and log of a build in progress.
pub fn save_progress(
    conn: &Connection,
    id: Uuid,
    steps: &[BuildStep],
    log: &[u8],
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE builds SET steps = ?2, log = ?3 WHERE id = ?1 AND state IN ('queued','running')",
        params![id.to_string(), steps_json(steps), log],
    )?;
    Ok(())
}

/// The end of a build: its final state, error, image, steps and log.
pub struct Finish<'a> {
    pub state: BuildState,
    pub error: Option<&'a str>,
    pub image_id: Option<Uuid>,
    pub steps: &'a [BuildStep],
    pub log: &'a [u8],
}

/// Records the end of build `id`; false when it had already ended (the record is immutable
/// from then on).
pub fn finish(conn: &Connection, id: Uuid, f: &Finish<'_>) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE builds SET state = ?2, error = ?3, image_id = ?4, steps = ?5, log = ?6,
            ended_at_ms = ?7
         WHERE id = ?1 AND state IN ('queued','running')",
        params![
            id.to_string(),
            f.state.as_str(),
            f.error,
            f.image_id.map(|u| u.to_string()),
            steps_json(f.steps),
            f.log,
            now_ms()
        ],
    )? == 1)
}

/// The stored log of a build.
pub fn log(conn: &Connection, id: Uuid) -> Result<Vec<u8>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT log FROM builds WHERE id = ?1",
            [id.to_string()],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_default())
}

/// At start-up: every build still queued or running is marked failed with `reason`; returns
/// them (with their build VMs, for clean-up).
pub fn fail_unfinished(conn: &mut Connection, reason: &str) -> Result<Vec<BuildRow>, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let rows = {
        let mut stmt = tx.prepare(&format!(
            "SELECT {COLUMNS} FROM {FROM} WHERE b.state IN ('queued','running')"
        ))?;
        stmt.query_map([], from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.execute(
        "UPDATE builds SET state = 'failed', error = ?1, ended_at_ms = ?2
         WHERE state IN ('queued','running')",
        params![reason, now_ms()],
    )?;
    tx.commit()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_build_is_not_changed_again_and_unfinished_ones_fail_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("n.db")).unwrap();
        store
            .call_blocking(|c| {
                let a = BuildRow::queued("t", 1, "src", "k1");
                let b = BuildRow::queued("t", 1, "src", "k2");
                insert(c, &a)?;
                insert(c, &b)?;
                assert!(set_running(c, a.id)?);
                let done = Finish {
                    state: BuildState::Cancelled,
                    error: None,
                    image_id: None,
                    steps: &[],
                    log: b"x",
                };
                assert!(finish(c, a.id, &done)?);
                assert!(!finish(c, a.id, &done)?);
                assert!(!set_running(c, a.id)?);
                let failed = fail_unfinished(c, "restart")?;
                assert_eq!(failed.len(), 1);
                assert_eq!(failed[0].id, b.id);
                let b = get(c, &b.id.to_string())?.unwrap();
                assert_eq!(b.state, BuildState::Failed);
                assert_eq!(b.error.as_deref(), Some("restart"));
                assert_eq!(get(c, &a.id.to_string()[..30])?.unwrap().id, a.id);
                // Both ids start with the same millisecond: that prefix names neither.
                assert!(get(c, &a.id.to_string()[..8])?.is_none());
                assert!(find_cached(c, "k1")?.is_none());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn superseded_images_are_those_past_the_newest_used_of_the_template() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("n.db")).unwrap();
        store
            .call_blocking(|c| {
                // Builds t#0..t#3 at times 0..3 make images 0..3; build 4 (a cache hit) uses
                // image 0 again; a build of template u, and an image not made by a build of t.
                let mut images = Vec::new();
                let mut at = 0;
                let mut build = |c: &Connection, tpl: &str, image: Option<Uuid>, own: bool| {
                    let mut b = BuildRow::queued(tpl, 1, "src", "k");
                    b.created_at_ms = at;
                    at += 1;
                    let image = image.unwrap_or_else(|| {
                        let mut row = crate::store::images::ImageRow::ready(&format!("i{at}"));
                        if own {
                            row.source = format!("build:{}", b.id);
                        }
                        crate::store::images::insert(c, &row).unwrap();
                        row.id
                    });
                    b.state = BuildState::Succeeded;
                    b.image_id = Some(image);
                    insert(c, &b).unwrap();
                    image
                };
                for _ in 0..4 {
                    images.push(build(c, "t", None, true));
                }
                build(c, "t", Some(images[0]), true);
                build(c, "u", None, true);
                build(c, "t", None, false);
                assert_eq!(superseded_images(c, "t", 2)?, vec![images[2], images[1]]);
                assert_eq!(superseded_images(c, "t", 0)?.len(), 4);
                assert!(superseded_images(c, "t", 10)?.is_empty());
                Ok(())
            })
            .unwrap();
    }
}
