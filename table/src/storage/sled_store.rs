//! The sled partition storage: one tree per partition, named `<table_id>/<partition>`, in
//! one sled database per node (`<data_dir>/partitions`) opened by [`SledPartitionProvider`].
//!
//! Tree layout: `a` -> the last applied position, `m<key>` -> meta, `r<key>` -> rows, so a
//! row scan is one contiguous range.
//!
//! Write-behind: an applied batch goes into the partition's in-memory `active` layer (reads
//! look there first) and reaches sled later: the provider's write-out thread, woken once a
//! partition has `WRITE_BEHIND_CHANGES` changes pending and otherwise every
//! `WRITE_OUT_EVERY`, writes the pending changes of ALL partitions all or nothing, each
//! partition's with its applied position, through [`vault::redo`] (a flushed redo record,
//! then plain inserts): not a sled transaction, because sled 0.34 commits transactions and
//! batches under one process-wide lock that stops every sled read in the process, the
//! applies' reads among them. Nothing acknowledged depends on the write-out: the Raft log is
//! the durable record, and after a crash opening the database first completes a write-out
//! cut short, then Raft applies again the entries after the position found in sled, which
//! always matches the rows beside it. sled's periodic background fsync is off; a snapshot
//! writes out and flushes (so state that a purged log no longer covers is on disk), as do a
//! restore and closing.
use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::{Mutex, RwLock};
use raft::LogPosition;

use super::{
    parse_tree_name, tree_name, with_prefix, Change, PartitionSnapshot, PartitionStorage,
    PartitionStorageProvider, PersistJob, WriteBatch,
};
use crate::error::{Error, Result};

const APPLIED_KEY: &[u8] = b"a";
const META_PREFIX: u8 = b'm';
const ROW_PREFIX: u8 = b'r';
/// How long `open` waits for a previous instance in this process to release the file lock.
const SLED_RELEASE_WAIT: Duration = Duration::from_secs(10);
const SLED_RELEASE_POLL: Duration = Duration::from_millis(10);
/// Changes pending in a partition at which the write-out thread is woken.
pub(crate) const WRITE_BEHIND_CHANGES: usize = 256;
/// Pending changes (in multiples of the write-behind size) at which an apply writes out
/// itself.
const BACKLOG_FACTOR: usize = 8;
/// How often the write-out thread writes out whatever is pending.
pub(crate) const WRITE_OUT_EVERY: Duration = Duration::from_millis(500);
/// Completes a write-out that a crash cut short (see [`vault::redo`]), before any read.
fn replay_redo(db: &sled::Db, what: &str) -> Result<()> {
    let trees = match catch_unwind(AssertUnwindSafe(|| vault::redo::replay(db))) {
        Ok(Ok(trees)) => trees,
        Ok(Err(e)) => return Err(Error::storage(what, e)),
        Err(panic) => {
            return Err(Error::storage(
                what,
                format!("sled panicked: {}", panic_message(panic.as_ref())),
            ))
        }
    };
    if trees > 0 {
        tracing::info!(
            path = what,
            partitions = trees,
            "completed a partition write-out cut short by a crash"
        );
    }
    Ok(())
}

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

/// Applied changes not yet written to sled: the newest value (or `None`, deleted) of each
/// touched key and the last applied position among them.
#[derive(Debug, Default)]
struct Pending {
    rows: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    meta: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    applied: Option<LogPosition>,
    /// Changes absorbed (counting overwrites of a key), what triggers a write-out.
    changes: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.meta.is_empty() && self.applied.is_none()
    }

    /// The sled operations that write this out (keys prefixed as the tree lays them out).
    fn sled_ops(&self) -> Result<Vec<Change>> {
        let mut ops = Vec::with_capacity(self.rows.len() + self.meta.len() + 1);
        for (prefix, changes) in [(ROW_PREFIX, &self.rows), (META_PREFIX, &self.meta)] {
            ops.extend(
                changes
                    .iter()
                    .map(|(key, value)| (prefixed(prefix, key), value.clone())),
            );
        }
        if let Some(position) = self.applied {
            ops.push((APPLIED_KEY.to_vec(), Some(encode_position(&position)?)));
        }
        Ok(ops)
    }
}

/// The two layers of a partition's write-behind: `active` takes applies; a write-out moves
/// it to `frozen`, writes that to sled and then forgets it. Reads look at `active`, then
/// `frozen`, then sled.
#[derive(Debug, Default)]
struct Layers {
    active: Pending,
    frozen: Pending,
}

impl Layers {
    fn row(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.active
            .rows
            .get(key)
            .or_else(|| self.frozen.rows.get(key))
    }

    fn meta(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.active
            .meta
            .get(key)
            .or_else(|| self.frozen.meta.get(key))
    }

    /// The pending row changes at or after `from`, newest layer winning, in key order.
    fn rows_from(&self, from: Bound<&[u8]>) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let range = (from.map(<[u8]>::to_vec), Bound::Unbounded);
        let mut out: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .frozen
            .rows
            .range::<Vec<u8>, _>(range.clone())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.extend(
            self.active
                .rows
                .range::<Vec<u8>, _>(range)
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        out
    }

    /// The pending meta changes under `prefix`, newest layer winning, in key order.
    fn meta_with_prefix(&self, prefix: &[u8]) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        for layer in [&self.frozen, &self.active] {
            out.extend(with_prefix(&layer.meta, prefix).map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    /// Puts what a failed write-out froze back under the newer active changes.
    fn unfreeze(&mut self) {
        let frozen = std::mem::take(&mut self.frozen);
        for (key, value) in frozen.rows {
            self.active.rows.entry(key).or_insert(value);
        }
        for (key, value) in frozen.meta {
            self.active.meta.entry(key).or_insert(value);
        }
        self.active.applied = self.active.applied.or(frozen.applied);
        self.active.changes += frozen.changes;
    }
}

fn encode_position(position: &LogPosition) -> Result<Vec<u8>> {
    Error::postcard("applied position", position)
}

/// One partition: a tree in the node's partition database, with the applied changes that
/// are not written out yet (see the [module](self) docs).
pub struct SledPartitionStorage {
    db: sled::Db,
    tree: sled::Tree,
    name: String,
    destroyed: AtomicBool,
    pending: RwLock<Layers>,
    /// Changes pending at which the write-out thread is woken.
    write_behind: usize,
    /// The database's write-out lock: one write-out at a time, restore and destroy apart.
    writing: Arc<Mutex<()>>,
    wake: std::sync::mpsc::SyncSender<()>,
}

impl std::fmt::Debug for SledPartitionStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledPartitionStorage")
            .field("tree", &self.name)
            .finish_non_exhaustive()
    }
}

impl SledPartitionStorage {
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

    fn has_pending(&self) -> bool {
        !self.pending.read().active.is_empty()
    }

    /// Writes this partition's pending changes to sled.
    fn write_out(&self) -> Result<()> {
        let _writing = self.writing.lock();
        write_out(&self.db, &[self])
    }
}

/// Writes the pending changes of `partitions` to sled all or nothing ([`vault::redo`]), each
/// partition's with its applied position, then forgets them. Applies go on meanwhile into the active layers.
/// The caller holds the database's write-out lock.
fn write_out(db: &sled::Db, partitions: &[&SledPartitionStorage]) -> Result<()> {
    let partitions: Vec<&SledPartitionStorage> = partitions
        .iter()
        .copied()
        .filter(|p| !p.destroyed.load(Ordering::SeqCst) && p.has_pending())
        .collect();
    if partitions.is_empty() {
        return Ok(());
    }
    let mut ops = Vec::with_capacity(partitions.len());
    for p in &partitions {
        let mut layers = p.pending.write();
        layers.frozen = std::mem::take(&mut layers.active);
        drop(layers);
        ops.push(p.pending.read().frozen.sled_ops());
    }
    let written = ops.into_iter().collect::<Result<Vec<_>>>().and_then(|ops| {
        let redo = vault::redo::Redo {
            trees: partitions.iter().map(|p| p.name.clone()).zip(ops).collect(),
        };
        let what = format!(
            "partition database {:?}",
            String::from_utf8_lossy(&db.name())
        );
        guarded(&what, || vault::redo::write(db, &redo))
    });
    for p in &partitions {
        let mut layers = p.pending.write();
        match &written {
            Ok(()) => layers.frozen = Pending::default(),
            // still readable from the active layer; the next write-out tries again
            Err(_) => layers.unfreeze(),
        }
    }
    metrics::counter!("ignite_partition_write_outs_total").increment(1);
    written
}

impl PartitionStorage for SledPartitionStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check()?;
        // a key not pending now is in sled (or absent): a write-out forgets a change only
        // after sled has it
        if let Some(value) = self.pending.read().row(key) {
            return Ok(value.clone());
        }
        let key = prefixed(ROW_PREFIX, key);
        self.sled(|| self.tree.get(key).map(|v| v.map(|v| v.to_vec())))
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    fn scan(&self, from: Bound<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check()?;
        let overlay = self.pending.read().rows_from(from);
        let start = match from {
            Bound::Included(k) => Bound::Included(prefixed(ROW_PREFIX, k)),
            Bound::Excluded(k) => Bound::Excluded(prefixed(ROW_PREFIX, k)),
            Bound::Unbounded => Bound::Included(vec![ROW_PREFIX]),
        };
        let end = Bound::Excluded(vec![ROW_PREFIX + 1]);
        let mut stored = self.tree.range((start, end)).peekable();
        let mut pending = overlay.into_iter().peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            // which side holds the smallest next key (the pending change wins a tie: it is
            // newer than the stored row)
            let order = match (stored.peek(), pending.peek()) {
                (None, None) => break,
                (Some(Err(_)), _) | (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(Ok((s, _))), Some((p, _))) => s[1..].cmp(p.as_slice()),
            };
            if order == std::cmp::Ordering::Less {
                match stored.next() {
                    Some(Ok((k, v))) => out.push((k[1..].to_vec(), v.to_vec())),
                    Some(Err(e)) => return Err(Error::storage(&self.name, e)),
                    None => {}
                }
                continue;
            }
            if order == std::cmp::Ordering::Equal {
                stored.next();
            }
            if let Some((key, Some(value))) = pending.next() {
                out.push((key, value));
            }
        }
        Ok(out)
    }

    /// Counts the rows: a write-out, then a full scan of the partition.
    fn len(&self) -> Result<u64> {
        self.write_out()?;
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
        self.check()?;
        if let Some(value) = self.pending.read().meta(key) {
            return Ok(value.clone());
        }
        let key = prefixed(META_PREFIX, key);
        self.sled(|| self.tree.get(key).map(|v| v.map(|v| v.to_vec())))
    }

    fn meta_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check()?;
        // pending first: a write-out puts a change in sled before it forgets it, so what
        // left the pending layers by the time sled is read is in sled
        let pending = self.pending.read().meta_with_prefix(prefix);
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self.sled(|| {
            self.tree
                .scan_prefix(prefixed(META_PREFIX, prefix))
                .map(|kv| kv.map(|(k, v)| (k[1..].to_vec(), Some(v.to_vec()))))
                .collect()
        })?;
        merged.extend(pending);
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// Takes the batch into the active layer (visible to reads at once); it reaches sled at
    /// the next write-out, all or nothing with its applied position. When the backlog was
    /// already full before this batch, the apply first waits for a write-out of its own.
    fn apply(&self, batch: WriteBatch) -> Result<()> {
        self.check()?;
        if self.apply_would_wait() {
            // the write-out thread is behind: this apply waits for a write-out of its own
            self.write_out()?;
        }
        let changes = {
            let mut layers = self.pending.write();
            let active = &mut layers.active;
            active.changes += batch.rows.len() + batch.meta.len() + 1;
            active.rows.extend(batch.rows);
            active.meta.extend(batch.meta);
            if batch.applied.is_some() {
                active.applied = batch.applied;
            }
            active.changes
        };
        if changes >= self.write_behind {
            // a full channel means the thread is already woken
            let _ = self.wake.try_send(());
        }
        Ok(())
    }

    /// The backlog is full: the next apply writes out first (one batch may take the backlog
    /// past the limit; the apply after it waits).
    fn apply_would_wait(&self) -> bool {
        self.pending.read().active.changes >= self.write_behind.saturating_mul(BACKLOG_FACTOR)
    }

    fn last_applied(&self) -> Result<Option<LogPosition>> {
        self.check()?;
        {
            let layers = self.pending.read();
            if let Some(position) = layers.active.applied.or(layers.frozen.applied) {
                return Ok(Some(position));
            }
        }
        let raw = self.sled(|| self.tree.get(APPLIED_KEY))?;
        raw.map(|bytes| {
            postcard::from_bytes(&bytes).map_err(|e| Error::decode("applied position", e))
        })
        .transpose()
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        self.write_out()?;
        let snapshot = PartitionSnapshot {
            last_applied: self.last_applied()?,
            rows: self.collect(ROW_PREFIX)?,
            meta: self.collect(META_PREFIX)?,
        };
        self.flush()?;
        snapshot.encode()
    }

    /// The cut writes this partition's pending changes out; the job flushes sled.
    fn persist_job(&self) -> Result<Option<PersistJob>> {
        self.write_out()?;
        let (db, name) = (self.db.clone(), self.name.clone());
        Ok(Some(Box::new(move || {
            guarded(&name, || db.flush().map(|_| ()))
        })))
    }

    fn restore(&self, data: &[u8]) -> Result<()> {
        let snapshot = PartitionSnapshot::decode(data)?;
        let _writing = self.writing.lock();
        self.check()?;
        *self.pending.write() = Layers::default();
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
            batch.insert(APPLIED_KEY, encode_position(&position)?);
        }
        self.sled(|| self.tree.apply_batch(batch))?;
        self.flush()
    }

    fn destroy(&self) -> Result<()> {
        let _writing = self.writing.lock();
        self.check()?;
        self.destroyed.store(true, Ordering::SeqCst);
        *self.pending.write() = Layers::default();
        guarded(&self.name, || self.db.drop_tree(&self.name))?;
        guarded(&self.name, || self.db.flush().map(|_| ()))?;
        tracing::info!(tree = %self.name, "destroyed partition storage");
        Ok(())
    }
}

impl Drop for SledPartitionStorage {
    fn drop(&mut self) {
        if self.destroyed.load(Ordering::SeqCst) || !self.has_pending() {
            return;
        }
        if let Err(e) = self.write_out() {
            tracing::warn!(tree = %self.name, error = %e, "partition write-out on close failed");
        }
    }
}

/// What the provider shares with its write-out thread.
struct Shared {
    db: sled::Db,
    path: PathBuf,
    /// One write-out at a time (a partition's restore and destroy take it too).
    writing: Arc<Mutex<()>>,
    /// The open partitions, by tree name.
    partitions: Mutex<HashMap<String, Arc<SledPartitionStorage>>>,
    stop: AtomicBool,
}

impl Shared {
    /// Writes out every open partition's pending changes all or nothing.
    fn write_out_all(&self) -> Result<()> {
        let (open, destroyed) = {
            let mut partitions = self.partitions.lock();
            let gone: Vec<String> = partitions
                .iter()
                .filter(|(_, p)| p.destroyed.load(Ordering::SeqCst))
                .map(|(name, _)| name.clone())
                .collect();
            let destroyed: Vec<_> = gone.iter().filter_map(|n| partitions.remove(n)).collect();
            let open: Vec<Arc<SledPartitionStorage>> = partitions.values().cloned().collect();
            (open, destroyed)
        };
        let written = {
            let _writing = self.writing.lock();
            let refs: Vec<&SledPartitionStorage> = open.iter().map(Arc::as_ref).collect();
            write_out(&self.db, &refs)
        };
        // the last handle of a partition may go here: its drop takes the write-out lock
        drop((open, destroyed));
        written
    }
}

/// The open database, its write-out thread and the sender that wakes it.
struct Open {
    shared: Arc<Shared>,
    wake: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Opens partition trees in one sled database at a directory, and runs its write-out
/// thread.
pub struct SledPartitionProvider {
    path: PathBuf,
    write_behind: usize,
    open: Mutex<Option<Open>>,
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
        Self::with_write_behind(path, WRITE_BEHIND_CHANGES)
    }

    /// A provider that wakes its write-out thread once a partition has `changes` applied
    /// changes pending (at least 1; the thread also writes out twice a second whatever is
    /// pending). [`new`](Self::new) uses 256.
    pub fn with_write_behind(path: impl Into<PathBuf>, changes: usize) -> Self {
        Self {
            path: path.into(),
            write_behind: changes.max(1),
            open: Mutex::new(None),
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

    /// Writes every partition's pending changes to sled now (they are on disk after the
    /// next flush, which a snapshot or `close` does).
    pub fn write_out(&self) -> Result<()> {
        self.shared()?.write_out_all()
    }

    fn what(&self) -> String {
        self.path.display().to_string()
    }

    fn shared(&self) -> Result<Arc<Shared>> {
        self.open
            .lock()
            .as_ref()
            .map(|open| Arc::clone(&open.shared))
            .ok_or_else(|| Error::storage(self.what(), "partition database is not open"))
    }

    fn open_db(&self) -> Result<sled::Db> {
        std::fs::create_dir_all(&self.path).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        let deadline = Instant::now() + SLED_RELEASE_WAIT;
        loop {
            let config = sled::Config::new().path(&self.path).flush_every_ms(None);
            match guarded(&self.what(), || config.open()) {
                // sled's background threads of a previous instance in this process may hold
                // the file lock for a moment after it was dropped
                Err(Error::Storage { reason, .. })
                    if reason.contains("could not acquire lock") && Instant::now() < deadline =>
                {
                    std::thread::sleep(SLED_RELEASE_POLL);
                }
                other => return other,
            }
        }
    }
}

/// The write-out thread: writes out all partitions when woken, and every `WRITE_OUT_EVERY`
/// whatever is pending.
fn run_writer(shared: &Shared, wake: &std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        match wake.recv_timeout(WRITE_OUT_EVERY) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = shared.write_out_all() {
            tracing::error!(path = %shared.path.display(), error = %e, "partition write-out failed");
        }
    }
}

impl PartitionStorageProvider for SledPartitionProvider {
    fn open(&self) -> Result<()> {
        let mut slot = self.open.lock();
        if slot.is_some() {
            return Ok(());
        }
        let db = self.open_db()?;
        replay_redo(&db, &self.what())?;
        let shared = Arc::new(Shared {
            db,
            path: self.path.clone(),
            writing: Arc::new(Mutex::new(())),
            partitions: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("partition-write-out".into())
                .spawn(move || {
                    vault::redo::lower_thread_priority();
                    run_writer(&shared, &woken)
                })
                .map_err(|source| Error::Io {
                    path: self.path.clone(),
                    source,
                })?
        };
        tracing::info!(path = %self.path.display(), "opened partition database");
        *slot = Some(Open {
            shared,
            wake,
            thread,
        });
        Ok(())
    }

    fn partition(&self, table_id: &str, partition: u32) -> Result<Arc<dyn PartitionStorage>> {
        let (shared, wake) = {
            let open = self.open.lock();
            let open = open
                .as_ref()
                .ok_or_else(|| Error::storage(self.what(), "partition database is not open"))?;
            (Arc::clone(&open.shared), open.wake.clone())
        };
        let name = tree_name(table_id, partition);
        let mut partitions = shared.partitions.lock();
        if let Some(existing) = partitions.get(&name) {
            if !existing.destroyed.load(Ordering::SeqCst) {
                return Ok(Arc::clone(existing) as Arc<dyn PartitionStorage>);
            }
        }
        let tree = guarded(&name, || shared.db.open_tree(&name))?;
        let storage = Arc::new(SledPartitionStorage {
            db: shared.db.clone(),
            tree,
            name: name.clone(),
            destroyed: AtomicBool::new(false),
            pending: RwLock::new(Layers::default()),
            write_behind: self.write_behind,
            writing: Arc::clone(&shared.writing),
            wake,
        });
        partitions.insert(name, Arc::clone(&storage));
        Ok(storage)
    }

    fn partitions(&self) -> Result<Vec<(String, u32)>> {
        let shared = self.shared()?;
        let mut out: Vec<(String, u32)> = shared
            .db
            .tree_names()
            .into_iter()
            .filter_map(|n| std::str::from_utf8(&n).ok().and_then(parse_tree_name))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Stops the write-out thread, writes out what is pending and flushes.
    fn close(&self) -> Result<()> {
        let Some(open) = self.open.lock().take() else {
            return Ok(());
        };
        open.shared.stop.store(true, Ordering::SeqCst);
        let _ = open.wake.try_send(());
        drop(open.wake);
        if open.thread.join().is_err() {
            tracing::error!(path = %self.path.display(), "partition write-out thread panicked");
        }
        let shared = open.shared;
        shared.write_out_all()?;
        // partitions still in use elsewhere write out what they take later when dropped
        let partitions = std::mem::take(&mut *shared.partitions.lock());
        drop(partitions);
        guarded(&self.what(), || shared.db.flush().map(|_| ()))?;
        tracing::info!(path = %self.path.display(), "closed partition database");
        Ok(())
    }
}

impl Drop for SledPartitionProvider {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(path = %self.path.display(), error = %e, "closing the partition database failed");
        }
    }
}
