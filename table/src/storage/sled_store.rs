//! The sled partition storage: one tree per partition, named `<table_id>/<partition>`, in
//! one sled database per node (`<data_dir>/partitions`) opened by [`SledPartitionProvider`].
//!
//! Tree layout: `a` -> the last applied position, `m<key>` -> meta, `r<key>` -> rows, so a
//! row scan is one contiguous range. A batch is one sled batch (atomic); applies are not
//! flushed one by one and sled's periodic background fsync is off (the Raft log is durable
//! and re-applies after a crash), but a snapshot, a restore and closing flush, so state that
//! a purged log no longer covers is always on disk.
use std::{
    ops::Bound,
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use raft::LogPosition;

use super::{
    parse_tree_name, tree_name, PartitionSnapshot, PartitionStorage, PartitionStorageProvider,
    WriteBatch,
};
use crate::error::{Error, Result};

const APPLIED_KEY: &[u8] = b"a";
const META_PREFIX: u8 = b'm';
const ROW_PREFIX: u8 = b'r';
/// How long `open` waits for a previous instance in this process to release the file lock.
const SLED_RELEASE_WAIT: Duration = Duration::from_secs(10);
const SLED_RELEASE_POLL: Duration = Duration::from_millis(10);

fn prefixed(prefix: u8, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(prefix);
    out.extend_from_slice(key);
    out
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Runs a sled call, turning its errors and panics into [`Error::Storage`] naming `what`.
fn guarded<T>(what: &str, f: impl FnOnce() -> sled::Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::storage(what, e)),
        Err(panic) => Err(Error::storage(
            what,
            format!("sled panicked: {}", panic_message(panic.as_ref())),
        )),
    }
}

/// One partition: a tree in the node's partition database.
pub struct SledPartitionStorage {
    db: sled::Db,
    tree: sled::Tree,
    name: String,
    destroyed: AtomicBool,
}

impl std::fmt::Debug for SledPartitionStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledPartitionStorage")
            .field("tree", &self.name)
            .finish_non_exhaustive()
    }
}

impl SledPartitionStorage {
    /// Opens (creating if needed) the tree of `table_id`/`partition` in `db`. Blocking.
    pub fn open(db: &sled::Db, table_id: &str, partition: u32) -> Result<Self> {
        let name = tree_name(table_id, partition);
        let tree = guarded(&name, || db.open_tree(&name))?;
        Ok(Self {
            db: db.clone(),
            tree,
            name,
            destroyed: AtomicBool::new(false),
        })
    }

    fn check(&self) -> Result<()> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(Error::storage(&self.name, "partition was destroyed"));
        }
        Ok(())
    }

    fn sled<T>(&self, f: impl FnOnce() -> sled::Result<T>) -> Result<T> {
        self.check()?;
        guarded(&self.name, f)
    }

    fn flush(&self) -> Result<()> {
        self.sled(|| self.db.flush().map(|_| ()))
    }

    fn collect(&self, prefix: u8) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.sled(|| {
            self.tree
                .scan_prefix([prefix])
                .map(|kv| kv.map(|(k, v)| (k[1..].to_vec(), v.to_vec())))
                .collect()
        })
    }
}

impl PartitionStorage for SledPartitionStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = prefixed(ROW_PREFIX, key);
        self.sled(|| self.tree.get(key).map(|v| v.map(|v| v.to_vec())))
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    fn scan(&self, from: Bound<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = match from {
            Bound::Included(k) => Bound::Included(prefixed(ROW_PREFIX, k)),
            Bound::Excluded(k) => Bound::Excluded(prefixed(ROW_PREFIX, k)),
            Bound::Unbounded => Bound::Included(vec![ROW_PREFIX]),
        };
        let end = Bound::Excluded(vec![ROW_PREFIX + 1]);
        self.sled(|| {
            self.tree
                .range((start, end))
                .take(limit)
                .map(|kv| kv.map(|(k, v)| (k[1..].to_vec(), v.to_vec())))
                .collect()
        })
    }

    /// Counts the rows: a full scan of the partition.
    fn len(&self) -> Result<u64> {
        self.sled(|| {
            let mut n = 0u64;
            for kv in self.tree.scan_prefix([ROW_PREFIX]) {
                kv?;
                n += 1;
            }
            Ok(n)
        })
    }

    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = prefixed(META_PREFIX, key);
        self.sled(|| self.tree.get(key).map(|v| v.map(|v| v.to_vec())))
    }

    fn apply(&self, batch: WriteBatch) -> Result<()> {
        let mut sled_batch = sled::Batch::default();
        for (prefix, changes) in [(ROW_PREFIX, batch.rows), (META_PREFIX, batch.meta)] {
            for (key, value) in changes {
                let key = prefixed(prefix, &key);
                match value {
                    Some(value) => sled_batch.insert(key, value),
                    None => sled_batch.remove(key),
                }
            }
        }
        if let Some(position) = batch.applied {
            let bytes = postcard::to_stdvec(&position).map_err(|e| Error::Encode {
                what: "applied position",
                reason: e.to_string(),
            })?;
            sled_batch.insert(APPLIED_KEY, bytes);
        }
        self.sled(|| self.tree.apply_batch(sled_batch))
    }

    fn last_applied(&self) -> Result<Option<LogPosition>> {
        let raw = self.sled(|| self.tree.get(APPLIED_KEY))?;
        raw.map(|bytes| {
            postcard::from_bytes(&bytes).map_err(|e| Error::decode("applied position", e))
        })
        .transpose()
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        let snapshot = PartitionSnapshot {
            last_applied: self.last_applied()?,
            rows: self.collect(ROW_PREFIX)?,
            meta: self.collect(META_PREFIX)?,
        };
        self.flush()?;
        snapshot.encode()
    }

    fn restore(&self, data: &[u8]) -> Result<()> {
        let snapshot = PartitionSnapshot::decode(data)?;
        let mut batch = sled::Batch::default();
        let existing: Vec<sled::IVec> = self.sled(|| self.tree.iter().keys().collect())?;
        for key in existing {
            batch.remove(key);
        }
        for (key, value) in snapshot.rows {
            batch.insert(prefixed(ROW_PREFIX, &key), value);
        }
        for (key, value) in snapshot.meta {
            batch.insert(prefixed(META_PREFIX, &key), value);
        }
        if let Some(position) = snapshot.last_applied {
            let bytes = postcard::to_stdvec(&position).map_err(|e| Error::Encode {
                what: "applied position",
                reason: e.to_string(),
            })?;
            batch.insert(APPLIED_KEY, bytes);
        }
        self.sled(|| self.tree.apply_batch(batch))?;
        self.flush()
    }

    fn destroy(&self) -> Result<()> {
        self.check()?;
        self.destroyed.store(true, Ordering::SeqCst);
        guarded(&self.name, || self.db.drop_tree(&self.name))?;
        guarded(&self.name, || self.db.flush().map(|_| ()))?;
        tracing::info!(tree = %self.name, "destroyed partition storage");
        Ok(())
    }
}

/// Opens partition trees in one sled database at a directory.
pub struct SledPartitionProvider {
    path: PathBuf,
    db: Mutex<Option<sled::Db>>,
}

impl std::fmt::Debug for SledPartitionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledPartitionProvider")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SledPartitionProvider {
    /// A provider of the database in directory `path` (opened by `open`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            db: Mutex::new(None),
        }
    }

    /// A provider at `<data_dir>/partitions`, the node's layout.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self::new(data_dir.join("partitions"))
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn what(&self) -> String {
        self.path.display().to_string()
    }

    fn db(&self) -> Result<sled::Db> {
        self.db
            .lock()
            .clone()
            .ok_or_else(|| Error::storage(self.what(), "partition database is not open"))
    }
}

impl PartitionStorageProvider for SledPartitionProvider {
    fn open(&self) -> Result<()> {
        let mut slot = self.db.lock();
        if slot.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.path).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        let deadline = Instant::now() + SLED_RELEASE_WAIT;
        let db = loop {
            let config = sled::Config::new().path(&self.path).flush_every_ms(None);
            match guarded(&self.what(), || config.open()) {
                // sled's background threads of a previous instance in this process may hold
                // the file lock for a moment after it was dropped
                Err(Error::Storage { reason, .. })
                    if reason.contains("could not acquire lock") && Instant::now() < deadline =>
                {
                    std::thread::sleep(SLED_RELEASE_POLL);
                }
                other => break other?,
            }
        };
        tracing::info!(path = %self.path.display(), "opened partition database");
        *slot = Some(db);
        Ok(())
    }

    fn partition(&self, table_id: &str, partition: u32) -> Result<Arc<dyn PartitionStorage>> {
        let db = self.db()?;
        Ok(Arc::new(SledPartitionStorage::open(
            &db, table_id, partition,
        )?))
    }

    fn partitions(&self) -> Result<Vec<(String, u32)>> {
        let db = self.db()?;
        let mut out: Vec<(String, u32)> = db
            .tree_names()
            .into_iter()
            .filter_map(|n| std::str::from_utf8(&n).ok().and_then(parse_tree_name))
            .collect();
        out.sort();
        Ok(out)
    }

    fn close(&self) -> Result<()> {
        let db = self.db.lock().take();
        if let Some(db) = db {
            guarded(&self.what(), || db.flush().map(|_| ()))?;
            tracing::info!(path = %self.path.display(), "closed partition database");
        }
        Ok(())
    }
}
