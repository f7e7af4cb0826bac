//! [`SledKeyValueStorage`]: the on-disk storage, trees in one sled 0.34 database.
//!
//! Layout:
//! - `entries`: `escape(key) 0x00 0x01 revision(be)` -> postcard `(value, update_counter)`;
//!   the escaping (`0x00` -> `0x00 0xff`) keeps keys in byte order and every key's versions
//!   together, ascending by revision, so a read at a revision is one reverse range step;
//! - `revision_log`: `revision(be)` of its first revision -> postcard of (revision, postcard
//!   of the keys it wrote) for the revisions one write-out wrote (a block; what watches
//!   replay). A block goes when compaction passes its last revision. Format 2 kept one key
//!   per revision (`revisions`), converted on open: a put now costs one sled insert in the
//!   write-out instead of two;
//! - `command_log`: `seq(be)` of its first record -> postcard of the command records one
//!   write-out wrote (a block); blocks whose records all fell out of the window are removed.
//!   The whole window is kept in memory ([`CommandWindow`], read from these blocks on open),
//!   so the idempotency check of a command never reads sled and a command costs no sled
//!   write of its own;
//! - `meta`: the counters and the last applied log position.
//!
//! Write-behind: committed write sets are first kept in memory ([`Pending`], read through
//! together with sled) and written to sled all or nothing over all trees by a write-out
//! thread (at lower CPU and IO priority than the threads serving requests) once
//! `WRITE_BEHIND_SETS` of them have gathered (applies go on meanwhile; a commit
//! writes out itself when the backlog reaches eight times that), and before a snapshot or
//! compaction, on `flush` and on close. The write-out goes through [`vault::redo`] (a
//! flushed redo record, then plain inserts), not a sled transaction: sled 0.34 commits
//! transactions under one process-wide lock that stops every sled read in the process.
//! Nothing acknowledged depends on it: the Raft log is the durable record, the applied
//! position is written all or nothing with the data (opening completes a write-out a crash
//! cut short), and after a crash Raft applies the entries after it again. Readers never see half a
//! commit: the counters are published in memory after the write set is in [`Pending`], and
//! reads only look at revisions at or below the published one. Compaction first commits its new revision,
//! then prunes history under a lock that readers share; a crash mid-prune is finished at
//! the next open (`pruned` lags `compacted`). A crash mid-restore leaves a `restoring`
//! flag: the next open starts empty, so Raft sends the snapshot again.
use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use std::collections::{BTreeMap, HashMap};

use parking_lot::{Condvar, Mutex, RwLock, RwLockWriteGuard};
use serde::{Deserialize, Serialize};

use super::{
    mvcc::{self, check_compacted, impl_key_value_storage, Backend, CommandWindow, Meta, WriteSet},
    CommandRecord, StorageSnapshot, DEFAULT_COMMAND_WINDOW,
};
use crate::{
    command::{CommandId, Outcome},
    entry::{Entry, LogPosition},
    error::{Error, Result},
};

/// Format 2 keeps the command window in blocks (`command_log`); format 1 kept it in two
/// trees keyed by id and by sequence number, and is converted on open.
const FORMAT: &[u8] = b"3";
const FORMAT_2: &[u8] = b"2";
const FORMAT_1: &[u8] = b"1";
const SLED_RELEASE_WAIT: Duration = Duration::from_secs(10);
const SLED_RELEASE_POLL: Duration = Duration::from_millis(10);
const IMPORT_BATCH: usize = 10_000;
/// Write sets kept in memory before they are written to sled in one write-out. Each
/// write-out flushes sled twice (`vault::redo`), and those flushes slow the Raft log's
/// `fdatasync`s that run beside them: at 256 a 3-node watch cell had 10-28 of 2,000 puts
/// over 1 ms, clustered at the write-outs; at 2,048, 5-12 (same throughput, same restart).
pub(crate) const WRITE_BEHIND_SETS: usize = 2048;
/// Pending sets (in multiples of the write-behind size) at which a commit writes out itself.
const BACKLOG_FACTOR: usize = 8;

/// The database's trees.
mod tree_name {
    pub(super) const ENTRIES: &str = "entries";
    pub(super) const REVISION_LOG: &str = "revision_log";
    pub(super) const COMMAND_LOG: &str = "command_log";
    /// Formats 1 and 2's revision index, one key per revision.
    pub(super) const FORMAT_2_REVISIONS: &str = "revisions";
    /// Format 1's command window, by id and by sequence number.
    pub(super) const FORMAT_1_COMMANDS: &str = "commands";
    pub(super) const FORMAT_1_COMMAND_ORDER: &str = "command_order";
    pub(super) const META: &str = "meta";
}

mod meta_key {
    pub(super) const FORMAT: &[u8] = b"format";
    pub(super) const REVISION: &[u8] = b"revision";
    pub(super) const COMPACTED: &[u8] = b"compacted";
    pub(super) const PRUNED: &[u8] = b"pruned";
    pub(super) const UPDATE_COUNTER: &[u8] = b"update_counter";
    pub(super) const LAST_APPLIED: &[u8] = b"last_applied";
    pub(super) const COMMAND_SEQ: &[u8] = b"command_seq";
    pub(super) const RESTORING: &[u8] = b"restoring";
}

#[derive(Serialize, Deserialize)]
struct StoredVersion {
    #[serde(with = "serde_bytes")]
    value: Option<Vec<u8>>,
    update_counter: u64,
}

/// [`StoredVersion`] over borrowed bytes: the same encoding without a copy of the value.
#[derive(Serialize)]
struct StoredVersionRef<'a> {
    #[serde(with = "serde_bytes")]
    value: Option<&'a [u8]>,
    update_counter: u64,
}

/// A version row's value in sled: `value` (`None`: a tombstone) and its update counter.
fn encode_version(value: Option<&[u8]>, update_counter: u64) -> Result<Vec<u8>> {
    postcard::to_allocvec(&StoredVersionRef {
        value,
        update_counter,
    })
    .map_err(|err| Error::encode("entry", err))
}

/// One write set, encoded for sled.
struct EncodedWriteSet {
    revision: u64,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
    index: Option<Vec<u8>>,
}

/// Committed write sets not yet in sled, indexed the way reads need them.
#[derive(Default)]
struct Pending {
    /// In commit order: what the next write-out writes.
    sets: Vec<WriteSet>,
    /// key -> its versions in `sets`, ascending revision.
    versions: BTreeMap<Vec<u8>, Vec<Entry>>,
    /// revision -> the keys it wrote.
    revisions: HashMap<u64, Vec<Vec<u8>>>,
}

impl Pending {
    fn absorb(&mut self, ws: WriteSet) {
        if !ws.entries.is_empty() {
            self.revisions.insert(
                ws.meta.revision,
                ws.entries.iter().map(|e| e.key.clone()).collect(),
            );
        }
        for e in &ws.entries {
            self.versions
                .entry(e.key.clone())
                .or_default()
                .push(e.clone());
        }
        self.sets.push(ws);
    }

    /// Drops from the indexes what `written` (the oldest sets, now in sled) put there;
    /// what later sets wrote stays.
    fn forget(&mut self, written: &[WriteSet]) {
        let Some(last) = written.last() else {
            return;
        };
        let revision = last.meta.revision;
        self.versions.retain(|_, history| {
            history.retain(|e| e.revision > revision);
            !history.is_empty()
        });
        self.revisions.retain(|r, _| *r > revision);
    }

    /// The latest pending version of `key` at or below `revision`.
    fn version_at(&self, key: &[u8], revision: u64) -> Option<Entry> {
        let history = self.versions.get(key)?;
        let n = history.partition_point(|e| e.revision <= revision);
        n.checked_sub(1).map(|i| history[i].clone())
    }

    /// For each pending key in the scanned range, its latest version at or below `revision`.
    fn scan_at(&self, from: &[u8], to: Option<&[u8]>, prefix: bool, revision: u64) -> Vec<Entry> {
        let range = self.versions.range(from.to_vec()..);
        let in_range = |key: &[u8]| {
            if prefix {
                key.starts_with(from)
            } else {
                to.is_none_or(|to| key < to)
            }
        };
        range
            .take_while(|(key, _)| in_range(key))
            .filter_map(|(key, _)| self.version_at(key, revision))
            .collect()
    }
}

/// `sled` (one key's latest version each, ascending key) with `pending` laid over it: a
/// pending version is always newer than any in sled.
fn merge_scans(sled: Vec<Entry>, pending: Vec<Entry>) -> Vec<Entry> {
    if pending.is_empty() {
        return sled;
    }
    let mut out = Vec::with_capacity(sled.len() + pending.len());
    let mut sled = sled.into_iter().peekable();
    for p in pending {
        while let Some(s) = sled.next_if(|s| s.key < p.key) {
            out.push(s);
        }
        sled.next_if(|s| s.key == p.key);
        out.push(p);
    }
    out.extend(sled);
    out
}

#[derive(Clone)]
struct Trees {
    db: sled::Db,
    entries: sled::Tree,
    revision_log: sled::Tree,
    command_log: sled::Tree,
    meta: sled::Tree,
}

/// The on-disk [`KeyValueStorage`](super::KeyValueStorage): a sled database in one
/// directory.
pub struct SledKeyValueStorage {
    db: sled::Db,
    trees: Trees,
    path: PathBuf,
    meta: RwLock<Meta>,
    /// Readers share it; pruning history takes it exclusively.
    prune: RwLock<()>,
    /// Snapshot jobs started and not yet done: pruning waits for them (a job reads the
    /// history as of its cut), see [`Self::prune_exclusive`].
    exports: Mutex<usize>,
    exports_done: Condvar,
    /// How many times pruning waited for a snapshot job (tests look at it).
    prunes_waited: AtomicU64,
    writer: Mutex<()>,
    window: u64,
    /// The command window (sled holds it in `command_log` blocks).
    commands: RwLock<CommandWindow>,
    /// The `revision_log` block read last (watch replay reads revisions in order).
    revision_cache: Mutex<Option<Arc<RevisionBlock>>>,
    write_behind: usize,
    wb: Arc<WriteBehind>,
    /// Wakes the write-out thread (a full channel means it is already woken).
    wake: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the write-out thread shares with the storage.
struct WriteBehind {
    trees: Trees,
    path: PathBuf,
    /// Committed, not yet written to sled; readers hold it across their sled reads, so a
    /// write-out (sled first, then forgotten here) never hides anything from them.
    pending: RwLock<Pending>,
    /// Serializes write-outs (and a restore against one).
    writing: Mutex<()>,
    /// The `command_log` blocks in sled: first sequence number -> last.
    blocks: Mutex<BTreeMap<u64, u64>>,
    /// The command window's size.
    window: u64,
}

impl WriteBehind {
    /// Writes the pending write sets to sled all or nothing, then forgets them. Commits
    /// may go on meanwhile: they join the next write-out.
    fn write_out(&self) -> Result<()> {
        let _writing = self.writing.lock();
        let sets = std::mem::take(&mut self.pending.write().sets);
        if sets.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.transact(&sets) {
            // still readable from the indexes; the next write-out tries again
            let mut pending = self.pending.write();
            let newer = std::mem::replace(&mut pending.sets, sets);
            pending.sets.extend(newer);
            return Err(e);
        }
        self.pending.write().forget(&sets);
        Ok(())
    }
}

impl std::fmt::Debug for SledKeyValueStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledKeyValueStorage")
            .field("path", &self.path)
            .field("meta", &*self.meta.read())
            .finish_non_exhaustive()
    }
}

impl SledKeyValueStorage {
    /// Open (creating if needed) the database in directory `path` with the default
    /// command-id window. Blocking.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with_command_window(path, DEFAULT_COMMAND_WINDOW)
    }

    /// Open with a command-id window of `window` ids. Blocking.
    pub fn open_with_command_window(path: impl Into<PathBuf>, window: u64) -> Result<Self> {
        Self::open_with(path, window, WRITE_BEHIND_SETS)
    }

    /// Open with a command-id window of `window` ids, writing committed write sets to sled
    /// once `write_behind` of them have gathered (at least 1). Blocking.
    pub fn open_with(path: impl Into<PathBuf>, window: u64, write_behind: usize) -> Result<Self> {
        let path = path.into();
        std::fs::create_dir_all(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let deadline = Instant::now() + SLED_RELEASE_WAIT;
        let db = loop {
            // No periodic background fsync: it stalls the log writes of applies behind it,
            // and nothing needs it. The Raft log is the durable record; this state is
            // flushed before a snapshot lets Raft purge the log and on close, and after a
            // crash the entries it lost are applied again from the log (the applied
            // position is stored atomically with the data).
            let config = sled::Config::new().path(&path).flush_every_ms(None);
            match guarded(&path, || config.open()) {
                // sled's background threads of a previous instance in this process may
                // still hold the file lock for a moment after it was dropped
                Err(Error::Io { source, .. })
                    if source.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(SLED_RELEASE_POLL);
                }
                other => break other?,
            }
        };
        // a write-out cut short by a crash is completed before anything is read
        match catch_unwind(AssertUnwindSafe(|| vault::redo::replay(&db))) {
            Ok(Ok(0)) => {}
            Ok(Ok(_)) => {
                tracing::info!(path = %path.display(), "completed a write-out cut short by a crash")
            }
            Ok(Err(e)) => {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            }
            Err(panic) => {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    reason: format!("sled panicked: {}", panic_message(panic.as_ref())),
                })
            }
        }
        let tree = |name: &str| guarded(&path, || db.open_tree(name));
        let trees = Trees {
            db: db.clone(),
            entries: tree(tree_name::ENTRIES)?,
            revision_log: tree(tree_name::REVISION_LOG)?,
            command_log: tree(tree_name::COMMAND_LOG)?,
            meta: tree(tree_name::META)?,
        };
        let trees_copy = trees.clone();
        let path_copy = path.clone();
        let storage = Self {
            db,
            trees,
            path,
            meta: RwLock::new(Meta::default()),
            prune: RwLock::new(()),
            exports: Mutex::new(0),
            exports_done: Condvar::new(),
            prunes_waited: AtomicU64::new(0),
            writer: Mutex::new(()),
            window,
            commands: RwLock::new(CommandWindow::default()),
            revision_cache: Mutex::new(None),
            write_behind: write_behind.max(1),
            wb: Arc::new(WriteBehind {
                trees: trees_copy,
                path: path_copy,
                pending: RwLock::new(Pending::default()),
                writing: Mutex::new(()),
                blocks: Mutex::new(BTreeMap::new()),
                window,
            }),
            wake: Mutex::new(None),
            thread: Mutex::new(None),
        };
        storage.recover()?;
        storage.start_writer()?;
        Ok(storage)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn call<T>(&self, f: impl FnOnce() -> sled::Result<T>) -> Result<T> {
        guarded(&self.path, f)
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn recover(&self) -> Result<()> {
        let m = &self.trees.meta;
        match self.call(|| m.get(meta_key::FORMAT))? {
            None => {
                if !self.trees.entries.is_empty() {
                    return Err(self.corrupt("entries exist but the format marker is missing"));
                }
                self.call(|| m.insert(meta_key::FORMAT, FORMAT))?;
            }
            Some(f) if f == FORMAT => {}
            Some(f) if f == FORMAT_2 => self.convert_format_2()?,
            Some(f) if f == FORMAT_1 => {
                self.convert_format_1()?;
                self.convert_format_2()?;
            }
            Some(f) => {
                return Err(self.corrupt(format!("unknown format {}", String::from_utf8_lossy(&f))))
            }
        }
        if self.call(|| m.get(meta_key::RESTORING))?.is_some() {
            tracing::warn!(path = %self.path.display(), "a snapshot restore was interrupted: starting empty");
            self.clear_all()?;
            self.call(|| m.remove(meta_key::RESTORING))?;
            self.call(|| self.db.flush().map(drop))?;
        }
        let meta = Meta {
            revision: self.read_u64(meta_key::REVISION)?,
            compacted: self.read_u64(meta_key::COMPACTED)?,
            update_counter: self.read_u64(meta_key::UPDATE_COUNTER)?,
            last_applied: match self.call(|| m.get(meta_key::LAST_APPLIED))? {
                None => None,
                Some(b) => Some(
                    LogPosition::from_bytes(&b)
                        .ok_or_else(|| self.corrupt("last applied position is not 16 bytes"))?,
                ),
            },
            command_seq: self.read_u64(meta_key::COMMAND_SEQ)?,
        };
        *self.meta.write() = meta;
        self.load_command_window(meta.command_seq)?;
        if self.read_u64(meta_key::PRUNED)? < meta.compacted {
            tracing::info!(path = %self.path.display(), compacted = meta.compacted, "finishing an interrupted compaction");
            self.prune_to(meta.compacted)?;
        }
        tracing::debug!(path = %self.path.display(), revision = meta.revision, last_applied = ?meta.last_applied, "metastorage database opened");
        Ok(())
    }

    /// Moves format 1's command window (two trees) into `command_log` blocks, all or
    /// nothing, and marks the database format 2.
    fn convert_format_1(&self) -> Result<()> {
        let db = &self.db;
        let (commands, order) = (
            self.call(|| db.open_tree(tree_name::FORMAT_1_COMMANDS))?,
            self.call(|| db.open_tree(tree_name::FORMAT_1_COMMAND_ORDER))?,
        );
        let mut records = Vec::new();
        let mut removed_order = Vec::new();
        for item in order.iter() {
            let (k, v) = self.call(|| item)?;
            let seq = self.be_u64(&k, "a command sequence number")?;
            let id = CommandId::from_bytes(&v)
                .ok_or_else(|| self.corrupt("a command id is not 24 bytes"))?;
            let stored = self
                .call(|| commands.get(id.to_bytes()))?
                .ok_or_else(|| self.corrupt(format!("command record {seq} is missing")))?;
            let (_, outcome) = postcard::from_bytes::<(u64, Outcome)>(&stored)
                .map_err(|e| self.corrupt(format!("command record does not decode: {e}")))?;
            records.push(CommandRecord { seq, id, outcome });
            removed_order.push((k.to_vec(), None));
        }
        let mut removed_commands = Vec::new();
        for item in commands.iter() {
            let (k, _) = self.call(|| item)?;
            removed_commands.push((k.to_vec(), None));
        }
        let blocks = encode_blocks(&records)?
            .into_iter()
            .map(|(first, _, block)| (first.to_be_bytes().to_vec(), Some(block)))
            .collect();
        let redo = vault::redo::Redo {
            trees: vec![
                (tree_name::COMMAND_LOG.to_owned(), blocks),
                (tree_name::FORMAT_1_COMMANDS.to_owned(), removed_commands),
                (tree_name::FORMAT_1_COMMAND_ORDER.to_owned(), removed_order),
                (
                    tree_name::META.to_owned(),
                    vec![(meta_key::FORMAT.to_vec(), Some(FORMAT_2.to_vec()))],
                ),
            ],
        };
        guarded(&self.path, || vault::redo::write(db, &redo))?;
        for name in [
            tree_name::FORMAT_1_COMMANDS,
            tree_name::FORMAT_1_COMMAND_ORDER,
        ] {
            self.call(|| db.drop_tree(name).map(drop))?;
        }
        tracing::info!(path = %self.path.display(), commands = records.len(), "metastorage database converted to format 2");
        Ok(())
    }

    /// Moves format 2's revision index (one key per revision) into `revision_log` blocks,
    /// all or nothing, and marks the database format 3.
    fn convert_format_2(&self) -> Result<()> {
        let db = &self.db;
        let old = self.call(|| db.open_tree(tree_name::FORMAT_2_REVISIONS))?;
        let mut revisions = Vec::new();
        let mut removed = Vec::new();
        for item in old.iter() {
            let (k, v) = self.call(|| item)?;
            let revision = self.be_u64(&k, "a revision index key")?;
            revisions.push((revision, v.to_vec()));
            removed.push((k.to_vec(), None));
        }
        let blocks = revisions
            .chunks(BLOCK_REVISIONS)
            .map(|chunk| {
                encode_revision_block(chunk).map(|b| (chunk[0].0.to_be_bytes().to_vec(), Some(b)))
            })
            .collect::<Result<Vec<_>>>()?;
        let redo = vault::redo::Redo {
            trees: vec![
                (tree_name::REVISION_LOG.to_owned(), blocks),
                (tree_name::FORMAT_2_REVISIONS.to_owned(), removed),
                (
                    tree_name::META.to_owned(),
                    vec![(meta_key::FORMAT.to_vec(), Some(FORMAT.to_vec()))],
                ),
            ],
        };
        guarded(&self.path, || vault::redo::write(db, &redo))?;
        self.call(|| db.drop_tree(tree_name::FORMAT_2_REVISIONS).map(drop))?;
        tracing::info!(path = %self.path.display(), revisions = revisions.len(), "metastorage database converted to format 3");
        Ok(())
    }

    /// Reads the command window (the records after `command_seq - window`) from the
    /// `command_log` blocks.
    fn load_command_window(&self, command_seq: u64) -> Result<()> {
        let low = command_seq.saturating_sub(self.window.max(1));
        let mut records = Vec::new();
        let mut blocks = BTreeMap::new();
        for item in self.trees.command_log.iter() {
            let (k, v) = self.call(|| item)?;
            let first = self.be_u64(&k, "a command block key")?;
            let block: Vec<CommandRecord> = postcard::from_bytes(&v)
                .map_err(|e| self.corrupt(format!("command block {first} does not decode: {e}")))?;
            let last = block.last().map_or(first, |r| r.seq);
            blocks.insert(first, last);
            records.extend(block.into_iter().filter(|r| r.seq > low));
        }
        *self.commands.write() = CommandWindow::of(records);
        *self.wb.blocks.lock() = blocks;
        Ok(())
    }

    /// The big-endian u64 in `bytes` (a key of `what`), or a corruption error.
    fn be_u64(&self, bytes: &[u8], what: &str) -> Result<u64> {
        bytes
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| self.corrupt(format!("{what} is not 8 bytes")))
    }

    fn read_u64(&self, key: &[u8]) -> Result<u64> {
        match self.call(|| self.trees.meta.get(key))? {
            None => Ok(0),
            Some(b) => b.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| {
                self.corrupt(format!(
                    "meta value {} is not 8 bytes",
                    String::from_utf8_lossy(key)
                ))
            }),
        }
    }

    fn clear_all(&self) -> Result<()> {
        let t = &self.trees;
        for tree in [&t.entries, &t.revision_log, &t.command_log] {
            self.call(|| tree.clear())?;
        }
        *self.revision_cache.lock() = None;
        *self.commands.write() = CommandWindow::default();
        self.wb.blocks.lock().clear();
        for key in [
            meta_key::REVISION,
            meta_key::COMPACTED,
            meta_key::PRUNED,
            meta_key::UPDATE_COUNTER,
            meta_key::LAST_APPLIED,
            meta_key::COMMAND_SEQ,
        ] {
            self.call(|| t.meta.remove(key))?;
        }
        Ok(())
    }

    fn decode_entry(&self, k: &[u8], v: &[u8]) -> Result<Entry> {
        let (key, revision) = decode_versioned(k)
            .ok_or_else(|| self.corrupt("an entry key is not a versioned key"))?;
        let stored: StoredVersion = postcard::from_bytes(v).map_err(|e| {
            self.corrupt(format!(
                "version {revision} of key {} does not decode: {e}",
                String::from_utf8_lossy(&key)
            ))
        })?;
        Ok(Entry {
            key,
            tombstone: stored.value.is_none(),
            value: stored.value,
            revision,
            update_counter: stored.update_counter,
        })
    }

    /// Drop every version compaction to `compacted` does not keep; idempotent.
    fn prune_to(&self, compacted: u64) -> Result<()> {
        let _exclusive = self.prune_exclusive();
        let mut batch = sled::Batch::default();
        let mut pruned = 0u64;
        let mut group: Vec<(sled::IVec, Entry)> = Vec::new();
        let mut flush_group = |group: &mut Vec<(sled::IVec, Entry)>, batch: &mut sled::Batch| {
            let history: Vec<Entry> = group.iter().map(|(_, e)| e.clone()).collect();
            let kept: Vec<u64> = mvcc::retained(&history, compacted)
                .map(|e| e.revision)
                .collect();
            for (k, e) in group.drain(..) {
                if !kept.contains(&e.revision) {
                    batch.remove(k);
                    pruned += 1;
                }
            }
        };
        for item in self.trees.entries.iter() {
            let (k, v) = self.call(|| item)?;
            let e = self.decode_entry(&k, &v)?;
            if group.first().is_some_and(|(_, g)| g.key != e.key) {
                flush_group(&mut group, &mut batch);
            }
            group.push((k, e));
        }
        flush_group(&mut group, &mut batch);
        let mut revs = sled::Batch::default();
        for item in self.trees.revision_log.range(..=compacted.to_be_bytes()) {
            let (k, v) = self.call(|| item)?;
            let block = self.decode_revision_block(&k, &v)?;
            if block.last <= compacted {
                revs.remove(k);
            }
        }
        self.call(|| self.trees.entries.apply_batch(batch))?;
        self.call(|| self.trees.revision_log.apply_batch(revs))?;
        self.call(|| {
            self.trees
                .meta
                .insert(meta_key::PRUNED, &compacted.to_be_bytes())
                .map(drop)
        })?;
        tracing::debug!(path = %self.path.display(), compacted, pruned, "history compacted");
        Ok(())
    }

    /// Every version sled holds with a revision at or below `revision`, in key order, then
    /// revision order. The caller holds `prune` shared.
    fn versions_up_to(&self, revision: u64) -> Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for item in self.trees.entries.iter() {
            let (k, v) = self.call(|| item)?;
            let e = self.decode_entry(&k, &v)?;
            if e.revision <= revision {
                entries.push(e);
            }
        }
        Ok(entries)
    }

    /// `prune` exclusively, once no snapshot job is running: a job started before a
    /// compaction or a restore reads the history that these remove. Both run on the apply
    /// path, like the cut of a job, so no job starts while this waits or holds the lock.
    fn prune_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        let mut exports = self.exports.lock();
        if *exports > 0 {
            self.prunes_waited.fetch_add(1, Ordering::Relaxed);
            while *exports > 0 {
                self.exports_done.wait(&mut exports);
            }
        }
        self.prune.write()
    }

    /// The cut writes everything pending out (so sled holds every version up to it) and
    /// takes the counters and the command window; the job flushes sled (what the snapshot
    /// covers must be durable before Raft purges the log behind it) and reads the versions
    /// up to the cut's revision. Applies go on meanwhile: their write-outs add only later
    /// revisions, which the job leaves out, and pruning waits for the job.
    fn snapshot_job_impl(self: Arc<Self>) -> Result<super::SnapshotJob> {
        let (meta, commands, running) = {
            let _writer = self.writer.lock();
            self.write_out()?;
            let running = RunningExport::new(Arc::clone(&self));
            (*self.meta.read(), self.commands.read().records(), running)
        };
        Ok(Box::new(move || {
            let _running = running;
            self.call(|| self.db.flush().map(drop))?;
            let _shared = self.prune.read();
            let entries = self.versions_up_to(meta.revision)?;
            Ok(snapshot_of(meta, entries, commands))
        }))
    }

    /// The cut writes everything pending out (so sled holds every version up to it); the
    /// job flushes sled.
    fn persist_job_impl(self: Arc<Self>) -> Result<Option<super::PersistJob>> {
        {
            let _writer = self.writer.lock();
            self.write_out()?;
        }
        Ok(Some(Box::new(move || {
            self.call(|| self.db.flush().map(drop))
        })))
    }

    /// How many times pruning has waited for a snapshot job.
    #[cfg(test)]
    fn prunes_waited(&self) -> u64 {
        self.prunes_waited.load(Ordering::Relaxed)
    }

    /// Starts the thread that writes pending write sets out once enough have gathered.
    fn start_writer(&self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let wb = Arc::clone(&self.wb);
        let thread = std::thread::Builder::new()
            .name("metastorage-write-out".into())
            .spawn(move || {
                vault::redo::lower_thread_priority();
                while rx.recv().is_ok() {
                    if let Err(e) = wb.write_out() {
                        tracing::error!(path = %wb.path.display(), error = %e, "metastorage write-out failed");
                    }
                }
            })
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        *self.wake.lock() = Some(tx);
        *self.thread.lock() = Some(thread);
        Ok(())
    }

    /// Ends the write-out thread (after the write-out it is running).
    fn stop_writer(&self) {
        drop(self.wake.lock().take());
        if let Some(thread) = self.thread.lock().take() {
            if thread.join().is_err() {
                tracing::error!(path = %self.path.display(), "metastorage write-out thread panicked");
            }
        }
    }

    fn write_out(&self) -> Result<()> {
        self.wb.write_out()
    }

    fn flush_impl(&self) -> Result<()> {
        self.write_out()?;
        self.call(|| self.db.flush().map(drop))
    }

    /// Whether `sets` pending write sets fill the backlog: the commit that fills it writes
    /// out itself, as the write-out thread fell behind (see `commit_batch`).
    fn backlog_full(&self, sets: usize) -> bool {
        sets >= self.write_behind.saturating_mul(BACKLOG_FACTOR)
    }

    /// Whether `incoming` more write sets would fill the backlog.
    fn would_wait_impl(&self, incoming: usize) -> bool {
        let pending = self.wb.pending.read().sets.len();
        self.backlog_full(pending.saturating_add(incoming))
    }
}

impl Drop for SledKeyValueStorage {
    fn drop(&mut self) {
        self.stop_writer();
        if let Err(e) = self.write_out() {
            tracing::warn!(path = %self.path.display(), error = %e, "metastorage write-out on close failed");
        }
        if let Err(e) = self.call(|| self.db.flush().map(drop)) {
            tracing::warn!(path = %self.path.display(), error = %e, "metastorage flush on close failed");
        }
    }
}

/// A snapshot job counted as running until it is done or dropped unrun.
struct RunningExport(Arc<SledKeyValueStorage>);

impl RunningExport {
    fn new(storage: Arc<SledKeyValueStorage>) -> Self {
        *storage.exports.lock() += 1;
        Self(storage)
    }
}

impl Drop for RunningExport {
    fn drop(&mut self) {
        let mut exports = self.0.exports.lock();
        *exports -= 1;
        if *exports == 0 {
            self.0.exports_done.notify_all();
        }
    }
}

fn snapshot_of(m: Meta, entries: Vec<Entry>, commands: Vec<CommandRecord>) -> StorageSnapshot {
    StorageSnapshot {
        revision: m.revision,
        compacted: m.compacted,
        update_counter: m.update_counter,
        last_applied: m.last_applied,
        command_seq: m.command_seq,
        entries,
        commands,
    }
}

/// Encode what one write set stores.
fn encode_write_set(ws: &WriteSet) -> Result<EncodedWriteSet> {
    let rows: Vec<(Vec<u8>, Vec<u8>)> = ws
        .entries
        .iter()
        .map(|e| {
            encode_version(e.value.as_deref(), e.update_counter)
                .map(|v| (versioned(&e.key, e.revision), v))
        })
        .collect::<Result<_>>()?;
    let index = if ws.entries.is_empty() {
        None
    } else {
        let keys: Vec<&[u8]> = ws.entries.iter().map(|e| e.key.as_slice()).collect();
        Some(postcard::to_allocvec(&keys).map_err(|e| Error::encode("revision index", e))?)
    };
    Ok(EncodedWriteSet {
        revision: ws.meta.revision,
        rows,
        index,
    })
}

/// Revisions per `revision_log` block written by a restore or a format conversion (a
/// write-out writes its revisions as one block).
const BLOCK_REVISIONS: usize = 256;

/// One `revision_log` block: its revisions in ascending order, each with the postcard of
/// the keys it wrote.
#[derive(Debug)]
struct RevisionBlock {
    first: u64,
    last: u64,
    revisions: Vec<(u64, Vec<u8>)>,
}

impl RevisionBlock {
    /// The encoded keys of `revision`, if this block holds it.
    fn index(&self, revision: u64) -> Option<&[u8]> {
        self.revisions
            .binary_search_by_key(&revision, |(r, _)| *r)
            .ok()
            .map(|at| self.revisions[at].1.as_slice())
    }
}

fn encode_revision_block(revisions: &[(u64, Vec<u8>)]) -> Result<Vec<u8>> {
    postcard::to_allocvec(revisions).map_err(|e| Error::encode("revision block", e))
}

impl SledKeyValueStorage {
    /// A `revision_log` block from its key and value, or why it is not one.
    fn decode_revision_block(&self, key: &[u8], value: &[u8]) -> Result<RevisionBlock> {
        let first = self.be_u64(key, "a revision block key")?;
        let revisions: Vec<(u64, Vec<u8>)> = postcard::from_bytes(value)
            .map_err(|e| self.corrupt(format!("revision block {first} does not decode: {e}")))?;
        let ascending = revisions.windows(2).all(|w| w[0].0 < w[1].0);
        match (revisions.first(), revisions.last()) {
            (Some((f, _)), Some((last, _))) if *f == first && ascending => Ok(RevisionBlock {
                first,
                last: *last,
                revisions,
            }),
            _ => Err(self.corrupt(format!(
                "revision block {first} is empty, out of order or does not start at {first}"
            ))),
        }
    }
}

/// Records per `command_log` block written by a restore or a format conversion (a
/// write-out writes its records as one block).
const BLOCK_RECORDS: usize = 256;

/// `records` as `command_log` blocks of at most [`BLOCK_RECORDS`]: (first sequence
/// number, last, encoded block).
fn encode_blocks(records: &[CommandRecord]) -> Result<Vec<(u64, u64, Vec<u8>)>> {
    records
        .chunks(BLOCK_RECORDS)
        .map(|chunk| {
            let value =
                postcard::to_allocvec(chunk).map_err(|e| Error::encode("command block", e))?;
            Ok((chunk[0].seq, chunk[chunk.len() - 1].seq, value))
        })
        .collect()
}

impl WriteBehind {
    /// Write `sets` in order and the counters of the last one all or nothing, through
    /// [`vault::redo`] (not a sled transaction: sled 0.34 commits those under one
    /// process-wide lock that stops every sled read in the process, the applies' among
    /// them): their versions, revision indexes, their command records as one block, and the
    /// removal of the blocks that fell out of the window. Publishing the counters is the
    /// caller's.
    fn transact(&self, sets: &[WriteSet]) -> Result<()> {
        let Some(m) = sets.last().map(|ws| ws.meta) else {
            return Ok(());
        };
        let encoded = sets
            .iter()
            .map(encode_write_set)
            .collect::<Result<Vec<_>>>()?;
        let (mut entries, mut indexes, mut meta) = (Vec::new(), Vec::new(), Vec::new());
        for ws in encoded {
            for (k, v) in ws.rows {
                entries.push((k, Some(v)));
            }
            if let Some(index) = ws.index {
                indexes.push((ws.revision, index));
            }
        }
        // in key order: consecutive inserts descend to neighbouring leaves (sled 0.34: 5-15%
        // less time per insert than revision order); stable, so a key's later row still wins
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut revisions = Vec::with_capacity(1);
        if let Some((first, _)) = indexes.first() {
            revisions.push((
                first.to_be_bytes().to_vec(),
                Some(encode_revision_block(&indexes)?),
            ));
        }
        let records: Vec<CommandRecord> = sets.iter().filter_map(|ws| ws.record).collect();
        let mut blocks = self.blocks.lock();
        let low = m.command_seq.saturating_sub(self.window.max(1));
        let gone: Vec<u64> = blocks
            .iter()
            .filter(|(_, last)| **last <= low)
            .map(|(first, _)| *first)
            .collect();
        let mut log = Vec::with_capacity(gone.len() + 1);
        for first in &gone {
            log.push((first.to_be_bytes().to_vec(), None));
        }
        let block = match (records.first(), records.last()) {
            (Some(first), Some(last)) => {
                let value = postcard::to_allocvec(&records)
                    .map_err(|e| Error::encode("command block", e))?;
                log.push((first.seq.to_be_bytes().to_vec(), Some(value)));
                Some((first.seq, last.seq))
            }
            _ => None,
        };
        let counter = |key: &[u8], value: u64| (key.to_vec(), Some(value.to_be_bytes().to_vec()));
        meta.push(counter(meta_key::REVISION, m.revision));
        meta.push(counter(meta_key::COMPACTED, m.compacted));
        meta.push(counter(meta_key::UPDATE_COUNTER, m.update_counter));
        meta.push(counter(meta_key::COMMAND_SEQ, m.command_seq));
        if let Some(p) = m.last_applied {
            meta.push((meta_key::LAST_APPLIED.to_vec(), Some(p.to_bytes().to_vec())));
        }
        let redo = vault::redo::Redo {
            trees: vec![
                (tree_name::ENTRIES.to_owned(), entries),
                (tree_name::REVISION_LOG.to_owned(), revisions),
                (tree_name::COMMAND_LOG.to_owned(), log),
                (tree_name::META.to_owned(), meta),
            ],
        };
        guarded(&self.path, || vault::redo::write(&self.trees.db, &redo))?;
        for first in gone {
            blocks.remove(&first);
        }
        if let Some((first, last)) = block {
            blocks.insert(first, last);
        }
        Ok(())
    }
}

/// `key` with `0x00` escaped as `0x00 0xff`, then the terminator `0x00 0x01`.
fn encode_key(key: &[u8]) -> Vec<u8> {
    let mut out = escape(key);
    out.extend_from_slice(&[0x00, 0x01]);
    out
}

fn escape(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out
}

fn versioned(key: &[u8], revision: u64) -> Vec<u8> {
    let mut out = encode_key(key);
    out.extend_from_slice(&revision.to_be_bytes());
    out
}

fn decode_versioned(bytes: &[u8]) -> Option<(Vec<u8>, u64)> {
    let mut key = Vec::with_capacity(bytes.len());
    let mut i = 0;
    loop {
        match *bytes.get(i)? {
            0 => match *bytes.get(i + 1)? {
                0xff => key.push(0),
                0x01 => break,
                _ => return None,
            },
            b => {
                key.push(b);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    let rest = bytes.get(i + 2..)?;
    let revision = u64::from_be_bytes(rest.try_into().ok()?);
    Some((key, revision))
}

impl Backend for SledKeyValueStorage {
    fn writer(&self) -> &Mutex<()> {
        &self.writer
    }

    fn meta(&self) -> Meta {
        *self.meta.read()
    }

    fn command_window(&self) -> u64 {
        self.window
    }

    fn version_at(&self, key: &[u8], revision: u64) -> Result<Option<Entry>> {
        let _shared = self.prune.read();
        check_compacted(revision, self.meta.read().compacted)?;
        let pending = self.wb.pending.read();
        if let Some(e) = pending.version_at(key, revision) {
            return Ok(Some(e));
        }
        let found = self.call(|| {
            self.trees
                .entries
                .range(versioned(key, 0)..=versioned(key, revision))
                .next_back()
                .transpose()
        })?;
        found.map(|(k, v)| self.decode_entry(&k, &v)).transpose()
    }

    fn scan_at(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        prefix: bool,
        revision: u64,
    ) -> Result<Vec<Entry>> {
        let _shared = self.prune.read();
        check_compacted(revision, self.meta.read().compacted)?;
        let pending = self.wb.pending.read();
        let iter = if prefix {
            self.trees.entries.scan_prefix(escape(from))
        } else {
            match to {
                Some(to) => self.trees.entries.range(encode_key(from)..encode_key(to)),
                None => self.trees.entries.range(encode_key(from)..),
            }
        };
        let mut out = Vec::new();
        // the best version so far of the current key: (key, its raw row)
        let mut current: Option<Vec<u8>> = None;
        let mut best: Option<(sled::IVec, sled::IVec)> = None;
        for item in iter {
            let (k, v) = self.call(|| item)?;
            let (key, rev) = decode_versioned(&k)
                .ok_or_else(|| self.corrupt("an entry key is not a versioned key"))?;
            if current.as_deref() != Some(key.as_slice()) {
                if let Some((bk, bv)) = best.take() {
                    out.push(self.decode_entry(&bk, &bv)?);
                }
                current = Some(key);
            }
            if rev <= revision {
                best = Some((k, v));
            }
        }
        if let Some((bk, bv)) = best {
            out.push(self.decode_entry(&bk, &bv)?);
        }
        Ok(merge_scans(
            out,
            pending.scan_at(from, to, prefix, revision),
        ))
    }

    fn keys_of_revision(&self, revision: u64) -> Result<Vec<Vec<u8>>> {
        let _shared = self.prune.read();
        mvcc::check_replayable(revision, self.meta.read().compacted)?;
        let pending = self.wb.pending.read();
        if let Some(keys) = pending.revisions.get(&revision) {
            return Ok(keys.clone());
        }
        drop(pending);
        let cached = self.revision_cache.lock().clone();
        let block = match cached {
            Some(block) if block.first <= revision && revision <= block.last => block,
            _ => {
                let found = self.call(|| {
                    self.trees
                        .revision_log
                        .range(..=revision.to_be_bytes())
                        .next_back()
                        .transpose()
                })?;
                let Some((k, v)) = found else {
                    return Ok(Vec::new());
                };
                let block = Arc::new(self.decode_revision_block(&k, &v)?);
                *self.revision_cache.lock() = Some(Arc::clone(&block));
                block
            }
        };
        match block.index(revision) {
            None => Ok(Vec::new()),
            Some(b) => postcard::from_bytes(b).map_err(|e| {
                self.corrupt(format!("revision index of {revision} does not decode: {e}"))
            }),
        }
    }

    fn command(&self, id: &CommandId) -> Result<Option<Outcome>> {
        Ok(self.commands.read().outcome(id))
    }

    fn command_at_seq(&self, seq: u64) -> Result<Option<CommandId>> {
        Ok(self.commands.read().id_at(seq))
    }

    fn commit(&self, ws: WriteSet) -> Result<()> {
        if !ws.compact {
            return self.commit_batch(vec![ws]);
        }
        // compaction prunes what sled holds: everything pending goes first
        self.write_out()?;
        let m = ws.meta;
        {
            let _writing = self.wb.writing.lock();
            self.wb.transact(std::slice::from_ref(&ws))?;
        }
        self.commands.write().apply(&ws);
        {
            let _exclusive = self.prune.write();
            *self.meta.write() = m;
        }
        self.prune_to(m.compacted)
    }

    fn commit_batch(&self, sets: Vec<WriteSet>) -> Result<()> {
        if sets.iter().any(|ws| ws.compact) {
            return sets.into_iter().try_for_each(|ws| self.commit(ws));
        }
        let Some(m) = sets.last().map(|ws| ws.meta) else {
            return Ok(());
        };
        let gathered = {
            let mut pending = self.wb.pending.write();
            let mut commands = self.commands.write();
            for ws in sets {
                commands.apply(&ws);
                pending.absorb(ws);
            }
            pending.sets.len()
        };
        *self.meta.write() = m;
        if self.backlog_full(gathered) {
            // the thread falls behind (or fails): write out here, surfacing any error
            self.write_out()?;
        } else if gathered >= self.write_behind {
            if let Some(wake) = self.wake.lock().as_ref() {
                let _ = wake.try_send(());
            }
        }
        Ok(())
    }

    fn export(&self) -> Result<StorageSnapshot> {
        self.write_out()?;
        let _shared = self.prune.read();
        let m = *self.meta.read();
        let commands = self.commands.read().records();
        Ok(snapshot_of(m, self.versions_up_to(m.revision)?, commands))
    }

    fn import(&self, snapshot: StorageSnapshot) -> Result<()> {
        let _exclusive = self.prune_exclusive();
        let _writing = self.wb.writing.lock();
        *self.wb.pending.write() = Pending::default();
        let t = &self.trees;
        self.call(|| t.meta.insert(meta_key::RESTORING, b"1").map(drop))?;
        self.call(|| self.db.flush().map(drop))?;
        self.clear_all()?;
        let mut index: std::collections::BTreeMap<u64, Vec<&[u8]>> = Default::default();
        for chunk in snapshot.entries.chunks(IMPORT_BATCH) {
            let mut batch = sled::Batch::default();
            for e in chunk {
                let v = encode_version(e.value.as_deref(), e.update_counter)?;
                batch.insert(versioned(&e.key, e.revision), v);
                if e.revision > snapshot.compacted {
                    index.entry(e.revision).or_default().push(&e.key);
                }
            }
            self.call(|| t.entries.apply_batch(batch))?;
        }
        let mut indexes = Vec::with_capacity(index.len());
        for (rev, mut keys) in index {
            keys.sort();
            let v = postcard::to_allocvec(&keys).map_err(|e| Error::encode("revision index", e))?;
            indexes.push((rev, v));
        }
        let mut batch = sled::Batch::default();
        for chunk in indexes.chunks(BLOCK_REVISIONS) {
            batch.insert(&chunk[0].0.to_be_bytes(), encode_revision_block(chunk)?);
        }
        self.call(|| t.revision_log.apply_batch(batch))?;
        let mut log = sled::Batch::default();
        let mut blocks = BTreeMap::new();
        for (first, last, block) in encode_blocks(&snapshot.commands)? {
            log.insert(&first.to_be_bytes(), block);
            blocks.insert(first, last);
        }
        self.call(|| t.command_log.apply_batch(log))?;
        let m = Meta::of(&snapshot);
        let mut batch = sled::Batch::default();
        batch.insert(meta_key::REVISION, &m.revision.to_be_bytes());
        batch.insert(meta_key::COMPACTED, &m.compacted.to_be_bytes());
        batch.insert(meta_key::PRUNED, &m.compacted.to_be_bytes());
        batch.insert(meta_key::UPDATE_COUNTER, &m.update_counter.to_be_bytes());
        batch.insert(meta_key::COMMAND_SEQ, &m.command_seq.to_be_bytes());
        if let Some(p) = m.last_applied {
            batch.insert(meta_key::LAST_APPLIED, &p.to_bytes());
        }
        batch.remove(meta_key::RESTORING);
        self.call(|| t.meta.apply_batch(batch))?;
        self.call(|| self.db.flush().map(drop))?;
        *self.wb.blocks.lock() = blocks;
        *self.commands.write() = CommandWindow::of(snapshot.commands);
        *self.meta.write() = m;
        Ok(())
    }
}

impl_key_value_storage!(SledKeyValueStorage);

/// Call into sled, turning its errors and panics into errors naming `path`.
fn guarded<T>(path: &Path, f: impl FnOnce() -> sled::Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(sled::Error::Io(source))) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
        Ok(Err(other)) => Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: other.to_string(),
        }),
        Err(panic) => Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("sled panicked: {}", panic_message(panic.as_ref())),
        }),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The borrowed encoding writes exactly what [`StoredVersion`] writes and reads.
        #[test]
        fn a_borrowed_version_encodes_like_a_stored_one(
            value in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
            update_counter in proptest::num::u64::ANY,
        ) {
            let owned = postcard::to_allocvec(&StoredVersion { value: value.clone(), update_counter }).unwrap();
            let borrowed = encode_version(value.as_deref(), update_counter).unwrap();
            proptest::prop_assert_eq!(&borrowed, &owned);
            let read: StoredVersion = postcard::from_bytes(&borrowed).unwrap();
            proptest::prop_assert_eq!(read.value, value);
            proptest::prop_assert_eq!(read.update_counter, update_counter);
        }
    }

    #[test]
    fn versioned_keys_round_trip_and_keep_key_order() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"a",
            b"a\x00",
            b"a\x00b",
            b"ab",
            b"\xff",
            b"\xff\x00",
        ];
        let mut encoded = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            for rev in [0u64, 1, u64::MAX] {
                let v = versioned(k, rev);
                assert_eq!(decode_versioned(&v), Some((k.to_vec(), rev)));
                encoded.push((v, i, rev));
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort();
        let order: Vec<(usize, u64)> = sorted.iter().map(|(_, i, r)| (*i, *r)).collect();
        let expected: Vec<(usize, u64)> = encoded.iter().map(|(_, i, r)| (*i, *r)).collect();
        assert_eq!(
            order, expected,
            "byte order of encodings = (key, revision) order"
        );
        assert_eq!(decode_versioned(b"a\x00\x02"), None);
        assert_eq!(decode_versioned(b"a\x00\x01\x00"), None);
        assert_eq!(decode_versioned(b"a"), None);
    }

    #[test]
    fn escaped_prefix_matches_only_keys_with_that_prefix() {
        let p = escape(b"a\x00");
        assert!(versioned(b"a\x00b", 1).starts_with(&p));
        assert!(versioned(b"a\x00", 1).starts_with(&p));
        assert!(!versioned(b"a", 1).starts_with(&p));
        assert!(!versioned(b"a\x01", 1).starts_with(&p));
    }
}

#[cfg(test)]
mod snapshot_job_tests {
    use super::*;
    use crate::storage::KeyValueStorage;

    /// A compaction that would prune history a running snapshot job still reads waits for
    /// the job; the job's snapshot is the state at its cut.
    #[test]
    fn compaction_waits_for_a_running_snapshot_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SledKeyValueStorage::open(dir.path()).unwrap());
        for v in ["1", "2", "3"] {
            s.put(b"k", v.as_bytes()).unwrap();
        }
        let at_cut = s.snapshot().unwrap();
        assert_eq!(at_cut.entries.len(), 3, "every version of k");
        let job = Arc::clone(&s).snapshot_job().unwrap();
        let compacting = std::thread::spawn({
            let s = Arc::clone(&s);
            move || s.compact(3)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.prunes_waited() == 0 {
            assert!(!compacting.is_finished(), "compaction ran past the job");
            assert!(Instant::now() < deadline, "compaction never waited");
            std::thread::yield_now();
        }
        assert_eq!(job().unwrap(), at_cut, "no version pruned under the job");
        compacting.join().unwrap().unwrap();
        assert_eq!(s.compacted_revision(), 3);
        assert_eq!(
            s.snapshot().unwrap().entries.len(),
            1,
            "pruned after the job"
        );
    }

    /// A persist job's cut writes out every pending write set, so the sled flush of its job
    /// covers everything applied before the cut; the memory storage has none.
    #[test]
    fn a_persist_job_covers_every_write_before_its_cut() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SledKeyValueStorage::open_with(dir.path(), 100, 1_000).unwrap());
        for v in ["1", "2", "3"] {
            s.put(b"k", v.as_bytes()).unwrap();
        }
        assert_eq!(
            s.wb.pending.read().sets.len(),
            3,
            "held back by the write-behind"
        );
        let job = Arc::clone(&s)
            .persist_job()
            .unwrap()
            .expect("sled persists itself");
        assert!(
            s.wb.pending.read().sets.is_empty(),
            "written out at the cut"
        );
        s.put(b"k", b"4").unwrap();
        job().unwrap();
        assert_eq!(
            s.wb.pending.read().sets.len(),
            1,
            "a later write is not the job's"
        );
        let memory = Arc::new(crate::storage::MemoryKeyValueStorage::new());
        assert!(memory.persist_job().unwrap().is_none());
    }
}
