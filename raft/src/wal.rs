//! The node's Raft logs in one write-ahead log file: [`WalLogProvider`].
//!
//! Every group's mutations (appends, metadata, truncations, purges, destroys) are encoded as
//! records into one shared buffer; a single flush thread writes what is buffered with one
//! `write` and one `fdatasync` and then completes every waiting [`FlushCallback`], so the
//! fsyncs of all groups and all concurrent writers become one. Reads never touch the disk:
//! each group keeps its live entries and metadata in memory (openraft purges the log behind
//! its snapshots, so a group holds at most `snapshot_logs_since_last +
//! max_in_snapshot_log_to_keep` entries).
//!
//! The file only grows until it holds twice the live state (and at least
//! [`MIN_REWRITE_BYTES`]); then the flush thread writes the live state as a new file (a
//! [`Record::Checkpoint`] followed by one record per group), fsyncs it, renames it over the
//! next sequence number, fsyncs the directory and deletes the old file. Recovery opens the
//! newest file, replays it and cuts a torn tail (a record whose length or CRC does not check
//! out is the end of the log: bytes after the last completed fsync were never acknowledged).
//!
//! The file is zero-filled ahead of the writes ([`PREALLOCATE_BYTES`] at a time), so an
//! `fdatasync` overwrites allocated blocks instead of growing the file (no journal commit
//! for the size); replay stops at the first zeroed header.
//!
//! Record framing: `len: u32 LE | crc32(payload): u32 LE | payload`, the payload a postcard
//! encoded [`Record`].
use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::Duration,
};

use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    snapshot_file,
    storage::{EntryLog, FlushCallback, LogStorage, LogStorageProvider, MetaKey},
};

/// The log file is rewritten once it is larger than twice the live state and this.
pub const MIN_REWRITE_BYTES: u64 = 64 << 20;
/// The file is zero-filled ahead of the writes in steps of this (at most; a quarter of the
/// rewrite threshold when that is smaller): overwriting blocks that are already allocated
/// and written lets `fdatasync` skip the journal commit that growing a file costs.
pub const PREALLOCATE_BYTES: u64 = 4 << 20;
/// Records larger than this are refused on write and taken for garbage on read.
const MAX_RECORD_BYTES: usize = 1 << 30;
const HEADER_BYTES: usize = 8;
const SUFFIX: &str = "wal";
const TMP_SUFFIX: &str = "tmp";
/// How long `destroy_group` waits for its record to become durable.
const DESTROY_WAIT: Duration = Duration::from_secs(60);

/// One record of the log file.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) enum Record<'a> {
    /// The first record of every file: the state is built from here on.
    Checkpoint,
    /// Entries by index, replacing any already there.
    Append {
        group: &'a str,
        #[serde(borrow)]
        entries: Vec<(u64, &'a serde_bytes::Bytes)>,
    },
    /// A metadata slot written.
    Meta {
        group: &'a str,
        key: u8,
        #[serde(borrow)]
        value: &'a serde_bytes::Bytes,
    },
    /// Entries with `index >= from` deleted.
    Truncate { group: &'a str, from: u64 },
    /// Entries with `index <= upto` deleted.
    Purge { group: &'a str, upto: u64 },
    /// The group's log and metadata deleted.
    Destroy { group: &'a str },
}

/// Appends one framed record to `out`.
fn encode(record: &Record<'_>, out: &mut Vec<u8>) -> std::result::Result<(), String> {
    let payload = postcard::to_allocvec(record).map_err(|e| e.to_string())?;
    if payload.len() > MAX_RECORD_BYTES {
        return Err(format!(
            "a record of {} bytes is over the limit of {MAX_RECORD_BYTES}",
            payload.len()
        ));
    }
    // the length fits: it is at most MAX_RECORD_BYTES
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Why decoding stopped before the end of the bytes.
#[derive(Debug, PartialEq)]
pub(crate) enum Stop {
    /// The last record is cut short or its checksum fails: a write that never completed.
    Torn { offset: usize, reason: String },
    /// A record that checks out but does not decode: not a crash, a bug or another format.
    Corrupt { offset: usize, reason: String },
}

/// Decodes records from the start of `bytes`, calling `each` with every record and its end
/// offset; returns where and why it stopped, `None` when all bytes were records.
pub(crate) fn decode_all<'a>(
    bytes: &'a [u8],
    mut each: impl FnMut(Record<'a>, usize),
) -> Option<Stop> {
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < HEADER_BYTES {
            return Some(Stop::Torn {
                offset,
                reason: format!("{} bytes, short of a record header", rest.len()),
            });
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 {
            // no record is empty: zeroes a crash left where a write was to go
            return Some(Stop::Torn {
                offset,
                reason: "an empty record (zeroed bytes)".into(),
            });
        }
        if len > MAX_RECORD_BYTES || len > rest.len() - HEADER_BYTES {
            return Some(Stop::Torn {
                offset,
                reason: format!(
                    "a record of {len} bytes with {} bytes left",
                    rest.len() - HEADER_BYTES
                ),
            });
        }
        let payload = &rest[HEADER_BYTES..HEADER_BYTES + len];
        if crc32fast::hash(payload) != crc {
            return Some(Stop::Torn {
                offset,
                reason: "checksum mismatch".into(),
            });
        }
        match postcard::from_bytes::<Record<'a>>(payload) {
            Ok(record) => {
                offset += HEADER_BYTES + len;
                each(record, offset);
            }
            Err(e) => {
                return Some(Stop::Corrupt {
                    offset,
                    reason: format!("undecodable record: {e}"),
                })
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// state

const META_SLOTS: usize = 5;

fn meta_code(key: MetaKey) -> u8 {
    match key {
        MetaKey::Vote => 0,
        MetaKey::Committed => 1,
        MetaKey::LastPurged => 2,
        MetaKey::AppliedMembership => 3,
        MetaKey::AppliedHint => 4,
    }
}

/// One group's live log and metadata.
#[derive(Default, Debug, Clone, PartialEq)]
pub(crate) struct GroupState {
    meta: [Option<Vec<u8>>; META_SLOTS],
    log: EntryLog,
}

impl GroupState {
    fn is_empty(&self) -> bool {
        self.log.entries().is_empty() && self.meta.iter().all(Option::is_none)
    }
}

/// Replays `record` onto `groups`. A metadata key we do not know is an error.
fn replay(
    groups: &mut HashMap<String, GroupState>,
    record: Record<'_>,
) -> std::result::Result<(), String> {
    match record {
        Record::Checkpoint => groups.clear(),
        Record::Append { group, entries } => {
            let state = groups.entry(group.to_owned()).or_default();
            state
                .log
                .insert_all(entries.into_iter().map(|(i, e)| (i, e.to_vec())));
        }
        Record::Meta { group, key, value } => {
            let slot = usize::from(key);
            if slot >= META_SLOTS {
                return Err(format!("unknown metadata slot {key} of group {group}"));
            }
            groups.entry(group.to_owned()).or_default().meta[slot] = Some(value.to_vec());
        }
        Record::Truncate { group, from } => {
            if let Some(state) = groups.get_mut(group) {
                state.log.truncate_from(from);
            }
        }
        Record::Purge { group, upto } => {
            if let Some(state) = groups.get_mut(group) {
                state.log.purge_upto(upto);
            }
        }
        Record::Destroy { group } => {
            groups.remove(group);
        }
    }
    Ok(())
}

/// The records that rebuild `groups` from nothing, after a [`Record::Checkpoint`].
fn encode_image<'a>(
    groups: impl Iterator<Item = (&'a str, &'a GroupState)>,
) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    encode(&Record::Checkpoint, &mut out)?;
    for (group, state) in groups {
        for (slot, value) in state.meta.iter().enumerate() {
            if let Some(value) = value {
                // META_SLOTS fits in u8
                let key = slot as u8;
                encode(
                    &Record::Meta {
                        group,
                        key,
                        value: serde_bytes::Bytes::new(value),
                    },
                    &mut out,
                )?;
            }
        }
        // bounded records, so one large log does not become one huge record
        let entries: Vec<(u64, &serde_bytes::Bytes)> = state
            .log
            .entries()
            .iter()
            .map(|(i, e)| (*i, serde_bytes::Bytes::new(e)))
            .collect();
        for chunk in entries.chunks(1024) {
            encode(
                &Record::Append {
                    group,
                    entries: chunk.to_vec(),
                },
                &mut out,
            )?;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// the shared log

/// What writers hand to the flush thread.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    waiters: Vec<FlushCallback>,
    closing: bool,
    /// Set when a write or fsync failed: nothing is acknowledged after that.
    broken: Option<String>,
}

/// The file being appended to.
struct Active {
    file: File,
    seq: u64,
    len: u64,
    /// Rewrite once `len` passes this.
    rewrite_at: u64,
    /// The least `rewrite_at` above the live state.
    min_rewrite: u64,
    /// Bytes from the start that are allocated: `len` and zeroes after it.
    allocated: u64,
}

impl Active {
    fn new(file: File, seq: u64, len: u64, allocated: u64, min_rewrite: u64) -> Self {
        Self {
            file,
            seq,
            len,
            rewrite_at: min_rewrite.max(len.saturating_mul(2)),
            min_rewrite,
            allocated: allocated.max(len),
        }
    }

    /// The zero-fill step for a file rewritten at `min_rewrite`.
    fn step(min_rewrite: u64) -> u64 {
        PREALLOCATE_BYTES.min((min_rewrite / 4).max(4096))
    }

    /// Makes sure `[len, len + more)` is allocated and zero, growing the file by whole
    /// steps and syncing it (the one journal commit per step).
    fn reserve(&mut self, more: u64) -> io::Result<()> {
        let need = self.len.saturating_add(more);
        if need <= self.allocated {
            return Ok(());
        }
        let step = Self::step(self.min_rewrite);
        let target = need.div_ceil(step).saturating_mul(step);
        write_zeroes(&self.file, self.allocated, target - self.allocated)?;
        self.file.sync_all()?;
        self.allocated = target;
        Ok(())
    }
}

/// Writes `count` zero bytes at `offset`.
fn write_zeroes(file: &File, offset: u64, count: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const BLOCK: usize = 64 << 10;
    let zeroes = [0u8; BLOCK];
    let mut done = 0u64;
    while done < count {
        // bounded by BLOCK
        let n = (count - done).min(BLOCK as u64) as usize;
        file.write_all_at(&zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

struct Wal {
    dir: PathBuf,
    /// Mutations hold it shared; a rewrite takes it exclusively to read a consistent state.
    gate: RwLock<()>,
    groups: RwLock<HashMap<String, Arc<Mutex<GroupState>>>>,
    queue: Mutex<Queue>,
    wake: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::storage(path.display().to_string(), format!("{what}: {e}"))
}

fn file_name(seq: u64, suffix: &str) -> String {
    format!("{seq:020}.{suffix}")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `image` as file `seq` of `dir` (temp file, fsync, rename, directory fsync) and
/// opens it for appending.
fn install_file(dir: &Path, seq: u64, image: &[u8], min_rewrite: u64) -> Result<Active> {
    let tmp = dir.join(file_name(seq, TMP_SUFFIX));
    let path = dir.join(file_name(seq, SUFFIX));
    let write = || -> io::Result<Active> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)?;
        file.write_all(image)?;
        let len = image.len() as u64;
        let step = Active::step(min_rewrite);
        let allocated = (len + 1).div_ceil(step) * step;
        write_zeroes(&file, len, allocated - len)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        let file = OpenOptions::new().write(true).open(&path)?;
        Ok(Active::new(file, seq, len, allocated, min_rewrite))
    };
    write().map_err(|e| io_err(&path, "writing the raft log file", e))
}

impl Wal {
    /// Queues one encoded record; the caller holds the gate shared and the group's lock, so the
    /// records of a group are queued in the order its state changes.
    fn push(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let mut queue = self.queue.lock();
        if queue.closing {
            return Err(Error::storage(name, "raft log storage is closed"));
        }
        if let Some(broken) = &queue.broken {
            return Err(Error::storage(
                name,
                format!("raft log storage failed: {broken}"),
            ));
        }
        if queue.bytes.is_empty() {
            queue.bytes = bytes;
        } else {
            queue.bytes.extend_from_slice(&bytes);
        }
        Ok(())
    }

    fn flush(&self, done: FlushCallback) {
        let mut queue = self.queue.lock();
        if let Some(broken) = &queue.broken {
            let reason = format!("raft log storage failed: {broken}");
            drop(queue);
            done(Err(io::Error::other(reason)));
            return;
        }
        if queue.closing {
            drop(queue);
            done(Err(io::Error::other("raft log storage is closed")));
            return;
        }
        queue.waiters.push(done);
        drop(queue);
        self.wake.notify_one();
    }

    /// The flush thread: write, fsync, complete, and rewrite when the file got large.
    fn run(&self, mut active: Active) {
        loop {
            let (bytes, waiters, closing) = {
                let mut queue = self.queue.lock();
                while queue.bytes.is_empty() && queue.waiters.is_empty() && !queue.closing {
                    self.wake.wait(&mut queue);
                }
                (
                    std::mem::take(&mut queue.bytes),
                    std::mem::take(&mut queue.waiters),
                    queue.closing,
                )
            };
            let result = self.write_out(&mut active, &bytes, waiters.len());
            complete(waiters, &result);
            if result.is_ok() && active.len >= active.rewrite_at {
                match self.rewrite(&mut active) {
                    Ok(next) => active = next,
                    Err(e) => {
                        // the old file still holds everything; try again after it grew more
                        tracing::error!(error = %e, "rewriting the raft log failed");
                        active.rewrite_at = active.len.saturating_add(active.min_rewrite);
                    }
                }
            }
            if closing {
                let queue = self.queue.lock();
                if queue.bytes.is_empty() && queue.waiters.is_empty() {
                    return;
                }
            }
        }
    }

    fn write_out(&self, active: &mut Active, bytes: &[u8], waiters: usize) -> io::Result<()> {
        if let Some(broken) = self.queue.lock().broken.clone() {
            return Err(io::Error::other(format!(
                "raft log storage failed: {broken}"
            )));
        }
        if bytes.is_empty() {
            // everything queued before these waiters was written by an earlier round
            return Ok(());
        }
        let started = std::time::Instant::now();
        let result = active.reserve(bytes.len() as u64).and_then(|()| {
            use std::os::unix::fs::FileExt;
            active.file.write_all_at(bytes, active.len)?;
            active.file.sync_data()
        });
        match &result {
            Ok(()) => {
                active.len += bytes.len() as u64;
                metrics::counter!("ignite_raft_log_flushes_total").increment(1);
                metrics::histogram!("ignite_raft_log_flush_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("ignite_raft_log_flush_batch").record(waiters as f64);
                metrics::gauge!("ignite_raft_log_file_bytes").set(active.len as f64);
            }
            Err(e) => {
                // what reached the disk is unknown: refuse everything from now on
                let path = self.dir.join(file_name(active.seq, SUFFIX));
                tracing::error!(path = %path.display(), error = %e, "raft log write failed");
                self.queue.lock().broken = Some(format!("{}: {e}", path.display()));
            }
        }
        result
    }

    /// Writes the live state as the next file and deletes the current one.
    fn rewrite(&self, active: &mut Active) -> Result<Active> {
        let (states, bytes, waiters) = {
            let _gate = self.gate.write();
            // what is queued now is in the state too, and goes to the old file first
            let (bytes, waiters) = {
                let mut queue = self.queue.lock();
                (
                    std::mem::take(&mut queue.bytes),
                    std::mem::take(&mut queue.waiters),
                )
            };
            let states: Vec<(String, GroupState)> = self
                .groups
                .read()
                .iter()
                .map(|(name, state)| (name.clone(), state.lock().clone()))
                .filter(|(_, state)| !state.is_empty())
                .collect();
            (states, bytes, waiters)
        };
        let result = self.write_out(active, &bytes, waiters.len());
        complete(waiters, &result);
        let path = self.dir.join(file_name(active.seq, SUFFIX));
        result.map_err(|e| io_err(&path, "raft log write", e))?;
        let image = encode_image(states.iter().map(|(n, s)| (n.as_str(), s)))
            .map_err(|e| Error::storage(self.dir.display().to_string(), e))?;
        let next = install_file(&self.dir, active.seq + 1, &image, active.min_rewrite)?;
        if let Err(e) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "removing the old raft log file");
        }
        metrics::counter!("ignite_raft_log_rewrites_total").increment(1);
        tracing::debug!(bytes = image.len(), seq = next.seq, "raft log rewritten");
        Ok(next)
    }

    fn close(&self) {
        self.queue.lock().closing = true;
        self.wake.notify_one();
        if let Some(thread) = self.thread.lock().take() {
            if thread.join().is_err() {
                tracing::error!("raft log flush thread panicked");
            }
        }
    }
}

fn complete(waiters: Vec<FlushCallback>, result: &io::Result<()>) {
    for done in waiters {
        done(match result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
}

/// Reads the newest log file of `dir` (creating the first when there is none), deletes
/// older and temporary files, cuts a torn tail, and returns the state and the open file.
fn recover(dir: &Path, min_rewrite: u64) -> Result<(HashMap<String, GroupState>, Active)> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, "creating the raft log directory", e))?;
    let mut files = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| io_err(dir, "listing the raft log directory", e))? {
        let item = item.map_err(|e| io_err(dir, "listing the raft log directory", e))?;
        let path = item.path();
        let name = item.file_name().to_string_lossy().into_owned();
        match name.split_once('.') {
            Some((_, TMP_SUFFIX)) => {
                // a rewrite that did not finish; the file before it is whole
                fs::remove_file(&path).map_err(|e| io_err(&path, "removing", e))?;
            }
            Some((seq, SUFFIX)) => {
                let seq = seq
                    .parse::<u64>()
                    .map_err(|_| io_err(&path, "not a raft log file name", "bad sequence"))?;
                files.push((seq, path));
            }
            _ => {
                return Err(io_err(
                    &path,
                    "unexpected file in the raft log directory",
                    name,
                ))
            }
        }
    }
    files.sort();
    let Some((seq, path)) = files.pop() else {
        return Ok((
            HashMap::new(),
            install_file(dir, 1, &checkpoint_only(), min_rewrite)?,
        ));
    };
    for (_, older) in files {
        // a rewrite finished but the old file was not removed yet
        fs::remove_file(&older).map_err(|e| io_err(&older, "removing", e))?;
    }
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_err(&path, "reading the raft log file", e))?;
    let mut groups = HashMap::new();
    let mut first = true;
    let mut failure = None;
    let mut valid = 0;
    let stop = decode_all(&bytes, |record, end| {
        if failure.is_some() {
            return;
        }
        if first && record != Record::Checkpoint {
            failure = Some("the file does not start with a checkpoint record".to_owned());
            return;
        }
        first = false;
        match replay(&mut groups, record) {
            Ok(()) => valid = end,
            Err(e) => failure = Some(format!("record ending at byte {end}: {e}")),
        }
    });
    if let Some(reason) = failure {
        return Err(io_err(&path, "corrupt raft log", reason));
    }
    match stop {
        None => {}
        Some(Stop::Corrupt { offset, reason }) => {
            return Err(io_err(
                &path,
                "corrupt raft log",
                format!("at byte {offset}: {reason}"),
            ))
        }
        Some(Stop::Torn { reason, .. }) if first => {
            return Err(io_err(
                &path,
                "corrupt raft log",
                format!("no checkpoint record at the start: {reason}"),
            ));
        }
        // the zero-filled space after the last record, or a write that did not finish
        Some(Stop::Torn { .. }) => {}
    }
    if first {
        return Err(io_err(&path, "corrupt raft log", "the file is empty"));
    }
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, "opening the raft log file", e))?;
    // bytes after the last record are a write that never completed (and was never
    // acknowledged): zero them, so later records never run into their remains
    if let Some(last) = bytes[valid..].iter().rposition(|b| *b != 0) {
        let torn = last as u64 + 1;
        tracing::warn!(
            path = %path.display(),
            offset = valid,
            bytes = torn,
            "zeroing the unfinished tail of the raft log"
        );
        write_zeroes(&file, valid as u64, torn)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_err(&path, "zeroing the raft log tail", e))?;
    }
    let len = valid as u64;
    // the live state is at most what the file holds: rewrite when it doubled
    Ok((
        groups,
        Active::new(file, seq, len, bytes.len() as u64, min_rewrite),
    ))
}

fn checkpoint_only() -> Vec<u8> {
    let mut out = Vec::new();
    // a unit variant always encodes
    let _ = encode(&Record::Checkpoint, &mut out);
    out
}

// ---------------------------------------------------------------------------------------
// public types

/// One group's log in the shared write-ahead log: reads from memory, writes queued for the
/// flush thread.
pub struct WalLogStorage {
    name: String,
    group: String,
    state: Arc<Mutex<GroupState>>,
    wal: Arc<Wal>,
    /// The file that keeps the group's latest snapshot, when the provider keeps them.
    snapshot: Option<PathBuf>,
    /// One snapshot file write at a time.
    keeping: Mutex<()>,
}

impl WalLogStorage {
    /// Applies a mutation to the state and queues its record, atomically with respect to
    /// other mutations of the group and to rewrites.
    fn mutate(&self, record: &Record<'_>, apply: impl FnOnce(&mut GroupState)) -> Result<()> {
        let bytes = self.encoded(record)?;
        self.mutate_encoded(bytes, apply)
    }

    fn encoded(&self, record: &Record<'_>) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        encode(record, &mut bytes).map_err(|e| Error::storage(&self.name, e))?;
        Ok(bytes)
    }

    fn mutate_encoded(&self, bytes: Vec<u8>, apply: impl FnOnce(&mut GroupState)) -> Result<()> {
        let _gate = self.wal.gate.read();
        let mut state = self.state.lock();
        // held until the record is queued: a destroy of the group queues its record either
        // before this check (and the write is refused) or after this record
        let groups = self.wal.groups.read();
        let live = groups
            .get(&self.group)
            .is_some_and(|s| Arc::ptr_eq(s, &self.state));
        if !live {
            return Err(Error::storage(
                &self.name,
                "the group's storage was destroyed",
            ));
        }
        self.wal.push(&self.name, bytes)?;
        drop(groups);
        apply(&mut state);
        Ok(())
    }
}

impl LogStorage for WalLogStorage {
    fn get_meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>> {
        Ok(self.state.lock().meta[usize::from(meta_code(key))].clone())
    }

    fn put_meta(&self, key: MetaKey, value: &[u8]) -> Result<()> {
        let code = meta_code(key);
        self.mutate(
            &Record::Meta {
                group: &self.group,
                key: code,
                value: serde_bytes::Bytes::new(value),
            },
            |state| state.meta[usize::from(code)] = Some(value.to_vec()),
        )
    }

    fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let record = Record::Append {
            group: &self.group,
            entries: entries
                .iter()
                .map(|(i, e)| (*i, serde_bytes::Bytes::new(e)))
                .collect(),
        };
        let bytes = self.encoded(&record)?;
        drop(record);
        self.mutate_encoded(bytes, |state| state.log.insert_all(entries))
    }

    fn range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self.state.lock().log.range(from, to))
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self.state.lock().log.last())
    }

    fn truncate_from(&self, from: u64) -> Result<()> {
        self.mutate(
            &Record::Truncate {
                group: &self.group,
                from,
            },
            |state| state.log.truncate_from(from),
        )
    }

    fn purge_upto(&self, upto: u64) -> Result<()> {
        self.mutate(
            &Record::Purge {
                group: &self.group,
                upto,
            },
            |state| state.log.purge_upto(upto),
        )
    }

    fn flush(&self, done: FlushCallback) {
        self.wal.flush(done);
    }

    fn memory_bytes(&self) -> Option<u64> {
        Some(self.state.lock().log.bytes())
    }

    fn keep_snapshot(&self, meta: &[u8], data: &[u8]) -> Result<()> {
        let Some(path) = &self.snapshot else {
            return Ok(());
        };
        let _keeping = self.keeping.lock();
        snapshot_file::write(path, meta, data)
            .map_err(|e| io_err(path, "keeping the group's snapshot", e))
    }

    fn kept_snapshot(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let Some(path) = &self.snapshot else {
            return Ok(None);
        };
        let Some(bytes) = snapshot_file::read(path)
            .map_err(|e| io_err(path, "reading the group's kept snapshot", e))?
        else {
            return Ok(None);
        };
        let (meta, data) = snapshot_file::decode(&bytes)
            .map_err(|reason| io_err(path, "reading the group's kept snapshot", reason))?;
        Ok(Some((meta.to_vec(), data.to_vec())))
    }
}

/// Logs of every group of a node in one write-ahead log under `dir` (the node's
/// `<data_dir>/raft-log`), with one flush thread that batches the fsyncs of all groups.
pub struct WalLogProvider {
    dir: PathBuf,
    /// Where the groups' latest snapshots are kept between starts (none when `None`).
    snapshots: Option<PathBuf>,
    min_rewrite: u64,
    open: Mutex<Option<Arc<Wal>>>,
}

impl WalLogProvider {
    /// No I/O: the log is read in [`LogStorageProvider::open`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_rewrite_bytes(dir, MIN_REWRITE_BYTES)
    }

    /// Rewrites the file once it holds twice the live state and at least `min_rewrite`
    /// bytes ([`MIN_REWRITE_BYTES`] by default; small values exercise rewrites in tests).
    pub fn with_rewrite_bytes(dir: impl Into<PathBuf>, min_rewrite: u64) -> Self {
        Self {
            dir: dir.into(),
            snapshots: None,
            min_rewrite,
            open: Mutex::new(None),
        }
    }

    /// Keeps each group's latest snapshot in a file in `dir` (not the log's directory), so
    /// a group that starts with a purged log reads its snapshot instead of rebuilding it.
    pub fn with_snapshot_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.snapshots = Some(dir.into());
        self
    }

    fn opened(&self) -> Result<Arc<Wal>> {
        self.open.lock().clone().ok_or_else(|| {
            Error::storage(
                self.dir.display().to_string(),
                "raft log storage is not open",
            )
        })
    }

    /// Flushes what is queued and waits until it is durable.
    fn sync(wal: &Wal, name: &str) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        wal.flush(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        match rx.recv_timeout(DESTROY_WAIT) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::storage(name, e)),
            Err(e) => Err(Error::storage(name, format!("waiting for the flush: {e}"))),
        }
    }
}

impl LogStorageProvider for WalLogProvider {
    fn open(&self) -> Result<()> {
        let mut open = self.open.lock();
        if open.is_some() {
            return Ok(());
        }
        let (groups, active) = recover(&self.dir, self.min_rewrite)?;
        tracing::info!(
            path = %self.dir.display(),
            groups = groups.len(),
            bytes = active.len,
            "raft log storage opened"
        );
        let wal = Arc::new(Wal {
            dir: self.dir.clone(),
            gate: RwLock::new(()),
            groups: RwLock::new(
                groups
                    .into_iter()
                    .map(|(name, state)| (name, Arc::new(Mutex::new(state))))
                    .collect(),
            ),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            thread: Mutex::new(None),
        });
        let runner = Arc::clone(&wal);
        let thread = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || runner.run(active))
            .map_err(|e| Error::storage("raft-log-flush thread", e))?;
        *wal.thread.lock() = Some(thread);
        *open = Some(wal);
        Ok(())
    }

    fn group(&self, group_id: &str) -> Result<Arc<dyn LogStorage>> {
        let wal = self.opened()?;
        let state = {
            let mut groups = wal.groups.write();
            Arc::clone(groups.entry(group_id.to_owned()).or_default())
        };
        Ok(Arc::new(WalLogStorage {
            name: format!("{} group {group_id}", self.dir.display()),
            group: group_id.to_owned(),
            state,
            wal,
            snapshot: self
                .snapshots
                .as_deref()
                .map(|dir| snapshot_file::path(dir, group_id)),
            keeping: Mutex::new(()),
        }))
    }

    fn destroy_group(&self, group_id: &str) -> Result<()> {
        let wal = self.opened()?;
        let name = format!("{} group {group_id}", self.dir.display());
        {
            let _gate = wal.gate.read();
            let mut groups = wal.groups.write();
            let mut bytes = Vec::new();
            encode(&Record::Destroy { group: group_id }, &mut bytes)
                .map_err(|e| Error::storage(&name, e))?;
            wal.push(&name, bytes)?;
            groups.remove(group_id);
        }
        Self::sync(&wal, &name)?;
        if let Some(dir) = &self.snapshots {
            let path = snapshot_file::path(dir, group_id);
            snapshot_file::remove(&path)
                .map_err(|e| io_err(&path, "removing the group's kept snapshot", e))?;
        }
        tracing::info!(group_id, "raft group storage destroyed");
        Ok(())
    }

    fn close(&self) -> Result<()> {
        let Some(wal) = self.open.lock().take() else {
            return Ok(());
        };
        wal.close();
        let broken = wal.queue.lock().broken.clone();
        if let Some(reason) = broken {
            return Err(Error::storage(self.dir.display().to_string(), reason));
        }
        tracing::info!(path = %self.dir.display(), "raft log storage closed");
        Ok(())
    }
}

impl Drop for WalLogProvider {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing raft log storage on drop");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut groups = HashMap::new();
            let _ = decode_all(&bytes, |record, _| {
                let _ = replay(&mut groups, record);
            });
        }

        #[test]
        fn framed_garbage_is_refused_or_replayed_never_a_panic(
            payload in proptest::collection::vec(any::<u8>(), 1..256),
        ) {
            // a payload with a valid frame reaches the record decoder itself
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
            let mut groups = HashMap::new();
            let mut seen = 0;
            let stop = decode_all(&bytes, |record, _| {
                seen += 1;
                let _ = replay(&mut groups, record);
            });
            let corrupt = matches!(stop, Some(Stop::Corrupt { .. }));
            prop_assert!(seen == 1 || corrupt, "seen {} records, stop {:?}", seen, stop);
        }
    }

    #[test]
    fn records_round_trip_and_a_cut_record_is_a_torn_tail() {
        let entries = [(7u64, b"seven".to_vec()), (8, Vec::new())];
        let records = [
            Record::Checkpoint,
            Record::Append {
                group: "g",
                entries: entries
                    .iter()
                    .map(|(i, e)| (*i, serde_bytes::Bytes::new(e)))
                    .collect(),
            },
            Record::Meta {
                group: "g",
                key: 0,
                value: serde_bytes::Bytes::new(b"vote"),
            },
            Record::Truncate {
                group: "g",
                from: 8,
            },
            Record::Purge {
                group: "g",
                upto: 6,
            },
            Record::Destroy { group: "g" },
        ];
        let mut bytes = Vec::new();
        for record in &records {
            encode(record, &mut bytes).unwrap();
        }
        let mut seen = Vec::new();
        assert_eq!(decode_all(&bytes, |r, _| seen.push(r)), None);
        assert_eq!(seen, records);
        let mut ends = Vec::new();
        decode_all(&bytes, |_, end| ends.push(end));
        for cut in 1..bytes.len() {
            let mut count = 0;
            let stop = decode_all(&bytes[..cut], |_, _| count += 1);
            if ends.contains(&cut) {
                assert_eq!(stop, None, "cut at the record boundary {cut}");
            } else {
                assert!(
                    matches!(stop, Some(Stop::Torn { .. })),
                    "cut at {cut}: {stop:?}"
                );
            }
            assert_eq!(count, ends.iter().filter(|e| **e <= cut).count());
        }
        let mut zeroed = bytes.clone();
        zeroed.extend_from_slice(&[0; 64]);
        let mut count = 0;
        assert!(matches!(
            decode_all(&zeroed, |_, _| count += 1),
            Some(Stop::Torn { .. })
        ));
        assert_eq!(
            count,
            records.len(),
            "zeroes after the last record are a torn tail"
        );
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let mut count = 0;
        assert!(matches!(
            decode_all(&flipped, |_, _| count += 1),
            Some(Stop::Torn { .. })
        ));
        assert_eq!(count, records.len() - 1);
    }
}
