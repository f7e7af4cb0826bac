//! [`SchemaManager`]: the `schema` component (run level `ready`). Table schemas as
//! versioned records in MetaStorage under `schema/<table>/<version:08>` (JSON), and a local
//! cache of every version, rebuilt at start and kept current by a watch on `schema/`.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use lifecycle::{BoxError, Component, ComponentRuntime, StartContext, StopTicket};
use metastorage::{
    Condition, Entry, KeyMatcher, MetaStorageManager, Operation, WatchEvent, WatchId,
};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{
    codec::{decode_row, row_version},
    error::{Error, Result},
    row::{upgrade, Row},
    types::{check_name, AlterOp, TableSchema},
};

const NAME: &str = "schema";
/// The MetaStorage prefix of every schema record.
pub const SCHEMA_PREFIX: &[u8] = b"schema/";
/// How many times `alter` and `drop_table` re-read and retry after losing a race.
const MAX_ATTEMPTS: usize = 32;

/// The MetaStorage key of one schema version: `schema/<table>/<version:08>`.
pub fn schema_key(table: &str, version: u32) -> Vec<u8> {
    format!("schema/{table}/{version:08}").into_bytes()
}

fn table_prefix(table: &str) -> Vec<u8> {
    format!("schema/{table}/").into_bytes()
}

/// The table and version of a schema key; `None` for anything else under the prefix.
fn parse_key(key: &[u8]) -> Option<(String, u32)> {
    let rest = std::str::from_utf8(key.strip_prefix(SCHEMA_PREFIX)?).ok()?;
    let (table, version) = rest.split_once('/')?;
    if version.len() != 8 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    check_name("table", table).ok()?;
    Some((table.to_owned(), version.parse().ok()?))
}

/// Decodes a stored schema record and checks it against its key.
fn decode_record(key: &[u8], value: &[u8]) -> Result<TableSchema> {
    let bad = |reason: String| Error::Decode {
        what: "schema record",
        reason: format!("{}: {reason}", String::from_utf8_lossy(key)),
    };
    let (table, version) = parse_key(key).ok_or_else(|| bad("not a schema key".into()))?;
    let schema: TableSchema = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
    schema.validate().map_err(|e| bad(e.to_string()))?;
    if schema.table != table || schema.version != version {
        return Err(bad(format!(
            "record holds table {} version {}",
            schema.table, schema.version
        )));
    }
    Ok(schema)
}

fn encode_record(schema: &TableSchema) -> Result<Vec<u8>> {
    serde_json::to_vec(schema).map_err(|e| Error::InvalidSchema {
        table: schema.table.clone(),
        reason: format!("cannot encode the schema record: {e}"),
    })
}

/// One version in the cache: the revision that last wrote it, and the schema (`None`:
/// removed). A change applies only if its revision is newer, so the watch, the start-up
/// snapshot and a node's own writes can arrive in any order.
#[derive(Clone)]
struct Slot {
    revision: u64,
    schema: Option<Arc<TableSchema>>,
}

/// Every schema version this node knows.
struct Cache {
    tables: Mutex<HashMap<String, BTreeMap<u32, Slot>>>,
    /// Bumped on every change, for waiters.
    changes: watch::Sender<u64>,
}

impl Cache {
    fn new() -> Self {
        Self {
            tables: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
        }
    }

    fn notify(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Applies one MetaStorage entry (live or tombstone) if it is newer than what is cached.
    fn apply(&self, entry: &Entry) {
        let Some((table, version)) = parse_key(&entry.key) else {
            tracing::warn!(key = %String::from_utf8_lossy(&entry.key), "ignoring a malformed key under the schema prefix");
            return;
        };
        let schema = match entry.live_value() {
            None => None,
            Some(value) => match decode_record(&entry.key, value) {
                Ok(schema) => Some(Arc::new(schema)),
                Err(e) => {
                    tracing::error!(table = %table, version, error = %e, "ignoring an unreadable schema record");
                    return;
                }
            },
        };
        let changed = {
            let mut tables = self.tables.lock();
            let versions = tables.entry(table.clone()).or_default();
            match versions.get(&version) {
                Some(slot) if slot.revision >= entry.revision => false,
                _ => {
                    versions.insert(
                        version,
                        Slot {
                            revision: entry.revision,
                            schema,
                        },
                    );
                    true
                }
            }
        };
        if changed {
            tracing::debug!(table = %table, version, revision = entry.revision, removed = entry.tombstone, "schema cache updated");
            self.notify();
        }
    }

    /// Merges a snapshot of every live record at `revision`: cached versions written at or
    /// before it that the snapshot lacks were removed by then.
    fn merge_snapshot(&self, entries: &[Entry], revision: u64) {
        let live: HashSet<&[u8]> = entries.iter().map(|e| e.key.as_slice()).collect();
        {
            let mut tables = self.tables.lock();
            for (table, versions) in tables.iter_mut() {
                for (version, slot) in versions.iter_mut() {
                    if slot.schema.is_some()
                        && slot.revision <= revision
                        && !live.contains(schema_key(table, *version).as_slice())
                    {
                        *slot = Slot {
                            revision,
                            schema: None,
                        };
                    }
                }
            }
        }
        for entry in entries {
            self.apply(entry);
        }
        self.notify();
    }

    fn latest(&self, table: &str) -> Option<Arc<TableSchema>> {
        let tables = self.tables.lock();
        tables
            .get(table)?
            .values()
            .rev()
            .find_map(|slot| slot.schema.clone())
    }

    fn version(&self, table: &str, version: u32) -> Option<Arc<TableSchema>> {
        self.tables.lock().get(table)?.get(&version)?.schema.clone()
    }

    fn tables(&self) -> Vec<Arc<TableSchema>> {
        let tables = self.tables.lock();
        let mut out: Vec<Arc<TableSchema>> = tables
            .values()
            .filter_map(|versions| versions.values().rev().find_map(|s| s.schema.clone()))
            .collect();
        out.sort_by(|a, b| a.table.cmp(&b.table));
        out
    }
}

/// The schema component.
///
/// `new()` registers the `schema/` watch with MetaStorage (no I/O), so the manager must be
/// built before the node deploys watches. `start` rebuilds the cache from the records at
/// the recovery revision; the watch then delivers every later change, so every node sees
/// every version. Writes are conditional `invoke`s: `create` only if version 1 is absent,
/// `alter` only if the version it read is still the latest, so concurrent alters never
/// clobber each other. Reads (`latest`, `schema`, `tables`) come from the cache; a node
/// sees its own writes at once.
pub struct SchemaManager {
    ms: Arc<MetaStorageManager>,
    cache: Arc<Cache>,
    watch: std::result::Result<WatchId, String>,
    runtime: ComponentRuntime,
    started: Mutex<bool>,
    lifecycle: tokio::sync::Mutex<()>,
}

impl SchemaManager {
    /// No I/O, no tasks; registers the `schema/` watch with `ms` (watches must not be
    /// deployed yet, or `start` fails).
    pub fn new(ms: Arc<MetaStorageManager>) -> Self {
        let cache = Arc::new(Cache::new());
        let listener_cache = Arc::clone(&cache);
        let watch = ms
            .register_watch(
                KeyMatcher::Prefix(SCHEMA_PREFIX.to_vec()),
                move |event: WatchEvent| {
                    for change in &event.entries {
                        listener_cache.apply(&change.new);
                    }
                    futures_ready()
                },
            )
            .map_err(|e| e.to_string());
        Self {
            ms,
            cache,
            watch,
            runtime: ComponentRuntime::new(NAME),
            started: Mutex::new(false),
            lifecycle: tokio::sync::Mutex::new(()),
        }
    }

    fn enter(&self) -> Result<StopTicket> {
        let ticket = self.runtime.enter()?;
        if !*self.started.lock() {
            return Err(Error::NotStarted);
        }
        Ok(ticket)
    }

    // ----- reads (local cache) -----

    /// The latest schema of `table`.
    pub fn latest(&self, table: &str) -> Result<Arc<TableSchema>> {
        let _ticket = self.enter()?;
        self.cache
            .latest(table)
            .ok_or_else(|| Error::TableNotFound {
                table: table.to_owned(),
            })
    }

    /// Version `version` of `table`'s schema.
    pub fn schema(&self, table: &str, version: u32) -> Result<Arc<TableSchema>> {
        let _ticket = self.enter()?;
        match self.cache.version(table, version) {
            Some(schema) => Ok(schema),
            None if self.cache.latest(table).is_none() => Err(Error::TableNotFound {
                table: table.to_owned(),
            }),
            None => Err(Error::VersionNotFound {
                table: table.to_owned(),
                version,
            }),
        }
    }

    /// The latest schema of every table, by name.
    pub fn tables(&self) -> Result<Vec<Arc<TableSchema>>> {
        let _ticket = self.enter()?;
        Ok(self.cache.tables())
    }

    /// Waits up to `timeout` until this node knows version `version` of `table` (written
    /// on any node) and returns it.
    pub async fn wait_for(
        &self,
        table: &str,
        version: u32,
        timeout: Duration,
    ) -> Result<Arc<TableSchema>> {
        let guard = self.runtime.guard();
        let _ticket = self.enter()?;
        let mut changes = self.cache.changes.subscribe();
        let wait = async {
            loop {
                if let Some(schema) = self.cache.version(table, version) {
                    return Some(schema);
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        };
        match guard.wrap(tokio::time::timeout(timeout, wait)).await? {
            Ok(Some(schema)) => Ok(schema),
            _ => Err(Error::VersionNotFound {
                table: table.to_owned(),
                version,
            }),
        }
    }

    /// Waits up to `timeout` until this node knows that `table` has no schema any more.
    pub async fn wait_dropped(&self, table: &str, timeout: Duration) -> Result<()> {
        let guard = self.runtime.guard();
        let _ticket = self.enter()?;
        let mut changes = self.cache.changes.subscribe();
        let wait = async {
            while self.cache.latest(table).is_some() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        };
        match guard.wrap(tokio::time::timeout(timeout, wait)).await? {
            Ok(()) if self.cache.latest(table).is_none() => Ok(()),
            _ => Err(Error::TableExists {
                table: table.to_owned(),
            }),
        }
    }

    /// Reads `row` (of any version of `table`) through the latest schema, one version at a
    /// time.
    pub fn upgrade(&self, table: &str, row: &Row) -> Result<Row> {
        let latest = self.latest(table)?;
        let mut current = row.clone();
        let mut from = self.schema(table, row.version())?;
        while from.version < latest.version {
            let to = self.schema(table, from.version + 1)?;
            current = upgrade(&current, &from, &to)?;
            from = to;
        }
        Ok(current)
    }

    /// Decodes an encoded row of `table` (any version) and reads it through the latest
    /// schema.
    pub fn read_row(&self, table: &str, bytes: &[u8]) -> Result<Row> {
        let schema = self.schema(table, row_version(bytes)?)?;
        let row = decode_row(&schema, bytes)?;
        self.upgrade(table, &row)
    }

    // ----- writes (MetaStorage) -----

    /// The live versions of `table`, read linearizably, ordered by version.
    async fn read_versions(&self, table: &str) -> Result<Vec<TableSchema>> {
        let entries = self.ms.prefix(&table_prefix(table)).await?;
        let mut versions = Vec::with_capacity(entries.len());
        for entry in &entries {
            if let Some(value) = entry.live_value() {
                versions.push(decode_record(&entry.key, value)?);
            }
        }
        versions.sort_by_key(|s| s.version);
        Ok(versions)
    }

    /// Reads `keys` back linearizably and applies them to the cache: the node sees its own
    /// write at once, whatever the watch's progress.
    async fn refresh(&self, keys: &[Vec<u8>]) -> Result<()> {
        for entry in self.ms.get_all(keys).await?.into_iter().flatten() {
            self.cache.apply(&entry);
        }
        Ok(())
    }

    /// Creates `table` with `schema` as version 1 (whatever version it says); refused if
    /// the table exists.
    pub async fn create(&self, schema: TableSchema) -> Result<Arc<TableSchema>> {
        let _ticket = self.enter()?;
        let schema = TableSchema {
            version: 1,
            ..schema
        };
        schema.validate()?;
        let key = schema_key(&schema.table, 1);
        let created = self
            .ms
            .invoke(
                Condition::not_exists(key.clone()),
                vec![Operation::put(key.clone(), encode_record(&schema)?)],
                vec![],
            )
            .await?;
        if !created {
            return Err(Error::TableExists {
                table: schema.table,
            });
        }
        self.refresh(&[key]).await?;
        tracing::info!(table = %schema.table, columns = schema.column_count(), "table schema created");
        Ok(Arc::new(schema))
    }

    /// Applies `op` on top of version `expected` of `table`: refused with
    /// [`Error::Conflict`] if another change made a newer version (or dropped the table)
    /// first. Returns the new version.
    pub async fn alter_at(
        &self,
        table: &str,
        expected: u32,
        op: &AlterOp,
    ) -> Result<Arc<TableSchema>> {
        let _ticket = self.enter()?;
        check_name("table", table)?;
        let versions = self.read_versions(table).await?;
        let Some(latest) = versions.last() else {
            return Err(Error::TableNotFound {
                table: table.to_owned(),
            });
        };
        if latest.version != expected {
            return Err(Error::Conflict {
                table: table.to_owned(),
                expected,
                found: latest.version,
            });
        }
        let next = latest.apply(op)?;
        let current_key = schema_key(table, latest.version);
        let next_key = schema_key(table, next.version);
        let applied = self
            .ms
            .invoke(
                Condition::exists(current_key).and(Condition::not_exists(next_key.clone())),
                vec![Operation::put(next_key.clone(), encode_record(&next)?)],
                vec![],
            )
            .await?;
        if !applied {
            let found = self
                .read_versions(table)
                .await?
                .last()
                .map_or(0, |s| s.version);
            return Err(Error::Conflict {
                table: table.to_owned(),
                expected,
                found,
            });
        }
        self.refresh(&[next_key]).await?;
        tracing::info!(table = %table, version = next.version, op = ?op, "table schema altered");
        Ok(Arc::new(next))
    }

    /// Applies `op` on top of the latest version of `table`, re-reading and retrying when
    /// a concurrent change wins (the op is validated again each time). Returns the new
    /// version.
    pub async fn alter(&self, table: &str, op: AlterOp) -> Result<Arc<TableSchema>> {
        let mut last_conflict = None;
        for _ in 0..MAX_ATTEMPTS {
            let latest = {
                let _ticket = self.enter()?;
                check_name("table", table)?;
                match self.read_versions(table).await?.last() {
                    Some(s) => s.version,
                    None => {
                        return Err(Error::TableNotFound {
                            table: table.to_owned(),
                        })
                    }
                }
            };
            match self.alter_at(table, latest, &op).await {
                Err(e @ Error::Conflict { found, .. }) if found != 0 => {
                    tracing::debug!(table = %table, error = %e, "alter lost a race, retrying");
                    last_conflict = Some(e);
                }
                Err(Error::Conflict { .. }) => {
                    return Err(Error::TableNotFound {
                        table: table.to_owned(),
                    })
                }
                other => return other,
            }
        }
        Err(last_conflict.unwrap_or(Error::TableNotFound {
            table: table.to_owned(),
        }))
    }

    /// Removes every version of `table` in one revision.
    pub async fn drop_table(&self, table: &str) -> Result<()> {
        let _ticket = self.enter()?;
        check_name("table", table)?;
        let mut lost_to = 0;
        for _ in 0..MAX_ATTEMPTS {
            let versions = self.read_versions(table).await?;
            let Some(latest) = versions.last() else {
                return Err(Error::TableNotFound {
                    table: table.to_owned(),
                });
            };
            let keys: Vec<Vec<u8>> = versions
                .iter()
                .map(|s| schema_key(table, s.version))
                .collect();
            let condition = Condition::exists(schema_key(table, latest.version)).and(
                Condition::not_exists(schema_key(table, latest.version.saturating_add(1))),
            );
            let removes = keys.iter().cloned().map(Operation::remove).collect();
            if self.ms.invoke(condition, removes, vec![]).await? {
                self.refresh(&keys).await?;
                tracing::info!(table = %table, versions = keys.len(), "table schema dropped");
                return Ok(());
            }
            lost_to = latest.version;
        }
        Err(Error::Conflict {
            table: table.to_owned(),
            expected: lost_to,
            found: lost_to.saturating_add(1),
        })
    }
}

/// The listener's (synchronous) work is done; a ready future for the watch API.
fn futures_ready() -> std::future::Ready<std::result::Result<(), BoxError>> {
    std::future::ready(Ok(()))
}

#[async_trait]
impl Component for SchemaManager {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, _ctx: &StartContext) -> std::result::Result<(), BoxError> {
        let _serial = self.lifecycle.lock().await;
        if let Err(e) = &self.watch {
            return Err(format!("schema watch is not registered: {e}").into());
        }
        self.runtime.begin();
        let revision = self.ms.recovery_revision();
        let entries = self
            .ms
            .prefix_at(SCHEMA_PREFIX, revision)
            .map_err(Error::from)?;
        self.cache.merge_snapshot(&entries, revision);
        *self.started.lock() = true;
        tracing::info!(
            revision,
            tables = self.cache.tables().len(),
            records = entries.len(),
            "schema cache rebuilt"
        );
        Ok(())
    }

    async fn stop(&self) -> std::result::Result<(), BoxError> {
        let _serial = self.lifecycle.lock().await;
        *self.started.lock() = false;
        self.runtime.block().await;
        Ok(())
    }
}

impl Drop for SchemaManager {
    fn drop(&mut self) {
        if let Ok(id) = self.watch {
            self.ms.unregister_watch(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_reject_strangers() {
        assert_eq!(schema_key("people", 3), b"schema/people/00000003");
        assert_eq!(
            parse_key(b"schema/people/00000003"),
            Some(("people".into(), 3))
        );
        for bad in [
            &b"schema/people/3"[..],
            b"schema/people",
            b"schema/bad-name/00000001",
            b"other/people/00000001",
            b"schema/people/0000000x",
        ] {
            assert_eq!(parse_key(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    fn live(table: &str, version: u32, revision: u64) -> Entry {
        let schema = TableSchema {
            table: table.into(),
            version,
            key_columns: vec![crate::Column::new("id", crate::ColumnType::Int64)],
            value_columns: vec![],
        };
        Entry::live(
            schema_key(table, version),
            encode_record(&schema).unwrap(),
            revision,
            revision,
        )
    }

    #[test]
    fn cache_applies_only_newer_changes() {
        let cache = Cache::new();
        cache.apply(&live("t", 1, 5));
        cache.apply(&Entry::tombstone(schema_key("t", 1), 7, 7));
        cache.apply(&live("t", 1, 5));
        assert!(
            cache.latest("t").is_none(),
            "a late older write must not resurrect"
        );
        cache.apply(&live("t", 1, 9));
        assert_eq!(cache.latest("t").unwrap().version, 1);
    }

    #[test]
    fn snapshot_removes_what_it_lacks_up_to_its_revision() {
        let cache = Cache::new();
        cache.apply(&live("a", 1, 2));
        cache.apply(&live("b", 1, 3));
        cache.apply(&live("c", 1, 20));
        cache.merge_snapshot(&[live("b", 1, 3), live("b", 2, 4)], 10);
        assert!(cache.latest("a").is_none(), "removed by revision 10");
        assert_eq!(cache.latest("b").unwrap().version, 2);
        assert!(cache.latest("c").is_some(), "newer than the snapshot");
    }

    #[test]
    fn corrupt_records_are_skipped() {
        let cache = Cache::new();
        cache.apply(&Entry::live(schema_key("t", 1), b"{nope".to_vec(), 1, 1));
        let mut wrong = live("t", 2, 2);
        wrong.key = schema_key("t", 1);
        cache.apply(&wrong);
        assert!(cache.latest("t").is_none());
    }
}
