//! Log and vote storage behind our own byte-level traits: [`LogStorage`] (one group) and
//! [`LogStorageProvider`] (every group of a node), with an in-memory and a sled version.
//!
//! Entries and metadata are opaque bytes here; the openraft encoding lives in `log_store`.
//! Writes become durable only through [`LogStorage::flush`]: the sled provider runs one flush
//! thread per database that completes every waiting callback after a single `flush`, so the
//! fsyncs of concurrent groups are batched.
use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::PathBuf,
    sync::{mpsc, Arc},
    thread::JoinHandle,
};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// A metadata slot of a group's log storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetaKey {
    /// The last vote.
    Vote,
    /// The last known committed log id.
    Committed,
    /// The last purged log id.
    LastPurged,
    /// The membership last applied to the state machine.
    AppliedMembership,
    /// The full log id last applied (a hint: the state machine's own position wins).
    AppliedHint,
}

impl MetaKey {
    fn name(self) -> &'static [u8] {
        match self {
            Self::Vote => b"vote",
            Self::Committed => b"committed",
            Self::LastPurged => b"last_purged",
            Self::AppliedMembership => b"applied_membership",
            Self::AppliedHint => b"applied_hint",
        }
    }
}

/// Called once everything written before the `flush` call is durable (or failed to be).
pub type FlushCallback = Box<dyn FnOnce(io::Result<()>) + Send>;

/// The log and metadata of one Raft group. Writes are visible at once and durable after a
/// [`flush`](Self::flush) completes.
pub trait LogStorage: Send + Sync + 'static {
    /// Reads a metadata slot.
    fn get_meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>>;
    /// Writes a metadata slot.
    fn put_meta(&self, key: MetaKey, value: &[u8]) -> Result<()>;
    /// Writes entries by index, replacing any already there.
    fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<()>;
    /// Entries with `from <= index < to`, in index order.
    fn range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>>;
    /// The entry with the greatest index.
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>>;
    /// Deletes entries with `index >= from`.
    fn truncate_from(&self, from: u64) -> Result<()>;
    /// Deletes entries with `index <= upto`.
    fn purge_upto(&self, upto: u64) -> Result<()>;
    /// Makes every earlier write durable, then calls `done`. Never blocks.
    fn flush(&self, done: FlushCallback);
    /// Bytes of log entries this storage holds in memory for the group, `None` when it
    /// keeps them elsewhere. A group builds a snapshot (and so purges its log) when this
    /// passes `raft.snapshot_log_bytes`.
    fn memory_bytes(&self) -> Option<u64> {
        None
    }
    /// Keeps the group's latest snapshot (its encoded meta and data) for the next start,
    /// replacing the one kept before. Best effort, not durable: a kept snapshot may be lost
    /// or older after a crash, and the caller checks it before use. Default: nothing kept.
    fn keep_snapshot(&self, meta: &[u8], data: &[u8]) -> Result<()> {
        let _ = (meta, data);
        Ok(())
    }
    /// The snapshot [`keep_snapshot`](Self::keep_snapshot) kept last, `None` when there is
    /// none; an error when it is there but does not read back whole.
    fn kept_snapshot(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(None)
    }
}

/// Where a node keeps the logs of its groups.
pub trait LogStorageProvider: Send + Sync + 'static {
    /// Opens the storage (I/O happens here, not at construction).
    fn open(&self) -> Result<()>;
    /// The storage of `group_id`, created empty when new. Requires `open`.
    fn group(&self, group_id: &str) -> Result<Arc<dyn LogStorage>>;
    /// Deletes the log, vote and metadata of `group_id` durably (the group must not be
    /// running): a later start of the same group begins empty, as a new member. Deleting a
    /// group that has no storage succeeds. Requires `open`.
    fn destroy_group(&self, group_id: &str) -> Result<()>;
    /// Flushes everything and stops background work. Idempotent.
    fn close(&self) -> Result<()>;
}

// ---------------------------------------------------------------------------------------
// memory

/// Log entries by index in memory, with their total size: the log of [`MemoryLogStorage`]
/// and of each group of the write-ahead log.
#[derive(Default, Debug, Clone, PartialEq)]
pub(crate) struct EntryLog {
    entries: BTreeMap<u64, Vec<u8>>,
    bytes: u64,
}

fn total(entries: &BTreeMap<u64, Vec<u8>>) -> u64 {
    entries.values().map(|e| e.len() as u64).sum()
}

impl EntryLog {
    pub(crate) fn entries(&self) -> &BTreeMap<u64, Vec<u8>> {
        &self.entries
    }

    /// The sum of the entries' lengths.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes entries by index, replacing any already there.
    pub(crate) fn insert_all(&mut self, entries: impl IntoIterator<Item = (u64, Vec<u8>)>) {
        for (index, entry) in entries {
            self.bytes += entry.len() as u64;
            if let Some(old) = self.entries.insert(index, entry) {
                self.bytes -= old.len() as u64;
            }
        }
    }

    /// Entries with `from <= index < to`, in index order.
    pub(crate) fn range(&self, from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        if from >= to {
            return Vec::new();
        }
        self.entries
            .range(from..to)
            .map(|(i, e)| (*i, e.clone()))
            .collect()
    }

    /// The entry with the greatest index.
    pub(crate) fn last(&self) -> Option<(u64, Vec<u8>)> {
        self.entries.last_key_value().map(|(i, e)| (*i, e.clone()))
    }

    /// Deletes entries with `index >= from`.
    pub(crate) fn truncate_from(&mut self, from: u64) {
        let removed = self.entries.split_off(&from);
        self.bytes -= total(&removed);
    }

    /// Deletes entries with `index <= upto`.
    pub(crate) fn purge_upto(&mut self, upto: u64) {
        let kept = match upto.checked_add(1) {
            Some(next) => self.entries.split_off(&next),
            None => BTreeMap::new(),
        };
        self.bytes -= total(&self.entries);
        self.entries = kept;
    }
}

#[derive(Default)]
struct MemoryState {
    meta: HashMap<MetaKey, Vec<u8>>,
    log: EntryLog,
    snapshot: Option<(Vec<u8>, Vec<u8>)>,
}

/// One group's log in memory (tests, embedding): a flush completes at once.
#[derive(Default)]
pub struct MemoryLogStorage {
    state: Mutex<MemoryState>,
}

impl MemoryLogStorage {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }
}

impl LogStorage for MemoryLogStorage {
    fn get_meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>> {
        Ok(self.state.lock().meta.get(&key).cloned())
    }

    fn put_meta(&self, key: MetaKey, value: &[u8]) -> Result<()> {
        self.state.lock().meta.insert(key, value.to_vec());
        Ok(())
    }

    fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<()> {
        self.state.lock().log.insert_all(entries);
        Ok(())
    }

    fn range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self.state.lock().log.range(from, to))
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self.state.lock().log.last())
    }

    fn truncate_from(&self, from: u64) -> Result<()> {
        self.state.lock().log.truncate_from(from);
        Ok(())
    }

    fn purge_upto(&self, upto: u64) -> Result<()> {
        self.state.lock().log.purge_upto(upto);
        Ok(())
    }

    fn flush(&self, done: FlushCallback) {
        done(Ok(()));
    }

    fn keep_snapshot(&self, meta: &[u8], data: &[u8]) -> Result<()> {
        self.state.lock().snapshot = Some((meta.to_vec(), data.to_vec()));
        Ok(())
    }

    fn kept_snapshot(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.state.lock().snapshot.clone())
    }
}

/// Logs of every group in memory; a group's log survives `stop_group` / `start_group` for
/// the life of the provider.
#[derive(Default)]
pub struct MemoryLogProvider {
    groups: Mutex<HashMap<String, Arc<MemoryLogStorage>>>,
}

impl MemoryLogProvider {
    /// An empty provider.
    pub fn new() -> Self {
        Self::default()
    }
}

impl LogStorageProvider for MemoryLogProvider {
    fn open(&self) -> Result<()> {
        Ok(())
    }

    fn group(&self, group_id: &str) -> Result<Arc<dyn LogStorage>> {
        let storage = Arc::clone(self.groups.lock().entry(group_id.to_owned()).or_default());
        Ok(storage)
    }

    fn destroy_group(&self, group_id: &str) -> Result<()> {
        self.groups.lock().remove(group_id);
        Ok(())
    }

    fn close(&self) -> Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// sled

/// The flush thread of one sled database: every callback queued while a flush runs is
/// completed by the next single flush.
struct Flusher {
    tx: Mutex<Option<mpsc::Sender<FlushCallback>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Flusher {
    fn start(db: sled::Db, path: String) -> Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel::<FlushCallback>();
        let thread = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let result = db.flush().map(|_| ());
                    metrics::counter!("ignite_raft_log_flushes_total").increment(1);
                    metrics::histogram!("ignite_raft_log_flush_batch").record(batch.len() as f64);
                    if let Err(e) = &result {
                        tracing::error!(path = %path, error = %e, "raft log flush failed");
                    }
                    for done in batch {
                        done(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::other(e.to_string())),
                        });
                    }
                }
            })
            .map_err(|e| Error::storage("raft-log-flush thread", e))?;
        Ok(Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    fn submit(&self, done: FlushCallback) {
        let tx = self.tx.lock().clone();
        match tx {
            Some(tx) => {
                if let Err(mpsc::SendError(done)) = tx.send(done) {
                    done(Err(io::Error::other("raft log storage is closed")));
                }
            }
            None => done(Err(io::Error::other("raft log storage is closed"))),
        }
    }

    /// Completes what is queued, then ends the thread.
    fn stop(&self) {
        drop(self.tx.lock().take());
        if let Some(thread) = self.thread.lock().take() {
            if thread.join().is_err() {
                tracing::error!("raft log flush thread panicked");
            }
        }
    }
}

/// One group's log in a sled database: entries in tree `log/<group>` keyed by big-endian
/// index, metadata in tree `meta/<group>`.
pub struct SledLogStorage {
    name: String,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Arc<Flusher>,
}

impl SledLogStorage {
    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::storage(self.name.clone(), e)
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_index(name: &str, key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::storage(name, format!("bad log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl LogStorage for SledLogStorage {
    fn get_meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>> {
        Ok(self
            .meta
            .get(key.name())
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    fn put_meta(&self, key: MetaKey, value: &[u8]) -> Result<()> {
        self.meta
            .insert(key.name(), value)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<()> {
        // Plain inserts, not a `sled::Batch`: every sled batch or transaction writes and
        // syncs the log buffer twice on the spot, which cost more than the flush that
        // follows. Atomicity is not needed: nothing is reported appended before the flush,
        // and sled recovers its log in order, so a crash part-way keeps a prefix of the
        // entries (the same as an append that was never made, to Raft).
        for (index, entry) in entries {
            self.log
                .insert(index_key(index), entry)
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.log
            .range(index_key(from)..index_key(to))
            .map(|item| {
                let (k, v) = item.map_err(|e| self.err(e))?;
                Ok((decode_index(&self.name, &k)?, v.to_vec()))
            })
            .collect()
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        match self.log.last().map_err(|e| self.err(e))? {
            Some((k, v)) => Ok(Some((decode_index(&self.name, &k)?, v.to_vec()))),
            None => Ok(None),
        }
    }

    fn truncate_from(&self, from: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(from)..) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(|e| self.err(e))
    }

    fn purge_upto(&self, upto: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(upto)) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(|e| self.err(e))
    }

    fn flush(&self, done: FlushCallback) {
        self.flusher.submit(done);
    }
}

/// How long `open` waits for the database lock that a stopping run of this process holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Handles of the open database (cheap to clone out of the lock).
#[derive(Clone)]
struct OpenDb {
    db: sled::Db,
    flusher: Arc<Flusher>,
}

/// Logs of every group in one sled database at `path` (the node's `<data_dir>/raft`), a tree
/// pair per group, with one batching flush thread.
pub struct SledLogProvider {
    path: PathBuf,
    open: Mutex<Option<OpenDb>>,
}

impl SledLogProvider {
    /// The open database (a cheap handle) and the name of `group_id` in errors.
    fn opened(&self, group_id: &str) -> Result<(OpenDb, String)> {
        let open = self.open.lock();
        let Some(open) = open.as_ref() else {
            return Err(Error::storage(
                self.path_name(),
                "raft log storage is not open",
            ));
        };
        let name = format!("{} group {group_id}", self.path_name());
        Ok((open.clone(), name))
    }

    /// No I/O: the database opens in [`LogStorageProvider::open`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            open: Mutex::new(None),
        }
    }

    fn path_name(&self) -> String {
        self.path.display().to_string()
    }
}

impl LogStorageProvider for SledLogProvider {
    fn open(&self) -> Result<()> {
        let mut open = self.open.lock();
        if open.is_some() {
            return Ok(());
        }
        // A restart in the same process (tests, embedding) may come while the tasks of the
        // previous run drop their last handles of the database and with them its file lock:
        // wait for the lock a bounded time. Another process holding it is still refused.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new().path(&self.path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(Error::storage(self.path_name(), e)),
            }
        };
        let flusher = Flusher::start(db.clone(), self.path_name())?;
        tracing::info!(path = %self.path.display(), "raft log storage opened");
        *open = Some(OpenDb { db, flusher });
        Ok(())
    }

    fn group(&self, group_id: &str) -> Result<Arc<dyn LogStorage>> {
        let (open, name) = self.opened(group_id)?;
        let log = open
            .db
            .open_tree(format!("log/{group_id}"))
            .map_err(|e| Error::storage(name.clone(), e))?;
        let meta = open
            .db
            .open_tree(format!("meta/{group_id}"))
            .map_err(|e| Error::storage(name.clone(), e))?;
        Ok(Arc::new(SledLogStorage {
            name,
            log,
            meta,
            flusher: Arc::clone(&open.flusher),
        }))
    }

    fn destroy_group(&self, group_id: &str) -> Result<()> {
        let (open, name) = self.opened(group_id)?;
        for tree in [format!("log/{group_id}"), format!("meta/{group_id}")] {
            open.db
                .drop_tree(tree.as_bytes())
                .map_err(|e| Error::storage(name.clone(), e))?;
        }
        open.db.flush().map_err(|e| Error::storage(name, e))?;
        tracing::info!(group_id, "raft group storage destroyed");
        Ok(())
    }

    fn close(&self) -> Result<()> {
        let Some(open) = self.open.lock().take() else {
            return Ok(());
        };
        open.flusher.stop();
        open.db
            .flush()
            .map_err(|e| Error::storage(self.path_name(), e))?;
        tracing::info!(path = %self.path.display(), "raft log storage closed");
        Ok(())
    }
}

impl Drop for SledLogProvider {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing raft log storage on drop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(storage: &dyn LogStorage) {
        storage
            .append((1..=10).map(|i| (i, vec![i as u8])).collect())
            .unwrap();
        assert_eq!(
            storage.range(3, 5).unwrap(),
            vec![(3, vec![3]), (4, vec![4])]
        );
        assert_eq!(storage.last().unwrap(), Some((10, vec![10])));
        storage.truncate_from(8).unwrap();
        assert_eq!(storage.last().unwrap(), Some((7, vec![7])));
        storage.purge_upto(2).unwrap();
        assert_eq!(storage.range(0, 100).unwrap().first(), Some(&(3, vec![3])));
        storage.put_meta(MetaKey::Vote, b"v").unwrap();
        assert_eq!(
            storage.get_meta(MetaKey::Vote).unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(storage.get_meta(MetaKey::Committed).unwrap(), None);
    }

    fn flush_and_wait(storage: &dyn LogStorage) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        storage.flush(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .map_err(io::Error::other)?
    }

    #[test]
    fn memory_storage_basics() {
        let provider = MemoryLogProvider::new();
        provider.open().unwrap();
        let group = provider.group("g").unwrap();
        exercise(group.as_ref());
        flush_and_wait(group.as_ref()).unwrap();
        // the same group again sees the same log
        assert_eq!(
            provider.group("g").unwrap().last().unwrap(),
            Some((7, vec![7]))
        );
        assert_eq!(provider.group("other").unwrap().last().unwrap(), None);
    }

    #[test]
    fn sled_storage_is_durable_across_reopen_and_groups_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        {
            let provider = SledLogProvider::new(&path);
            assert!(provider.group("g").is_err(), "group before open is refused");
            provider.open().unwrap();
            let a = provider.group("a").unwrap();
            let b = provider.group("b").unwrap();
            exercise(a.as_ref());
            b.append(vec![(1, b"b1".to_vec())]).unwrap();
            flush_and_wait(a.as_ref()).unwrap();
            flush_and_wait(b.as_ref()).unwrap();
            provider.close().unwrap();
            provider.close().unwrap();
            assert!(
                flush_and_wait(a.as_ref()).is_err(),
                "a flush after close fails instead of hanging"
            );
        }
        let provider = SledLogProvider::new(&path);
        provider.open().unwrap();
        let a = provider.group("a").unwrap();
        assert_eq!(a.last().unwrap(), Some((7, vec![7])));
        assert_eq!(a.get_meta(MetaKey::Vote).unwrap(), Some(b"v".to_vec()));
        let b = provider.group("b").unwrap();
        assert_eq!(b.range(0, 10).unwrap(), vec![(1, b"b1".to_vec())]);
    }

    #[test]
    fn concurrent_flushes_of_many_groups_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let provider = SledLogProvider::new(dir.path().join("raft"));
        provider.open().unwrap();
        let (tx, rx) = mpsc::channel();
        let groups = 16u64;
        for g in 0..groups {
            let storage = provider.group(&format!("g{g}")).unwrap();
            storage.append(vec![(1, vec![g as u8])]).unwrap();
            let tx = tx.clone();
            storage.flush(Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            }));
        }
        for _ in 0..groups {
            assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap());
        }
        provider.close().unwrap();
    }
}
