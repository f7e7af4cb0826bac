//! [`MemoryKeyValueStorage`]: the in-memory storage, for tests and embedding.
//!
//! Each key keeps its history as a sorted vector of versions; one read-write lock over the
//! whole state makes every commit atomic for readers.
use std::{collections::BTreeMap, ops::Bound};

use parking_lot::{Mutex, RwLock};

use super::{
    mvcc::{self, check_compacted, impl_key_value_storage, Backend, CommandWindow, Meta, WriteSet},
    StorageSnapshot, DEFAULT_COMMAND_WINDOW,
};
use crate::{
    command::{CommandId, Outcome},
    entry::Entry,
    error::Result,
};

#[derive(Default)]
struct State {
    meta: Meta,
    /// key -> versions, ascending revision
    keys: BTreeMap<Vec<u8>, Vec<Entry>>,
    /// revision -> keys it wrote (key order)
    revisions: BTreeMap<u64, Vec<Vec<u8>>>,
    commands: CommandWindow,
}

impl State {
    fn version_at(&self, key: &[u8], revision: u64) -> Option<Entry> {
        let history = self.keys.get(key)?;
        let n = history.partition_point(|e| e.revision <= revision);
        n.checked_sub(1).map(|i| history[i].clone())
    }
}

/// The in-memory [`KeyValueStorage`](super::KeyValueStorage).
pub struct MemoryKeyValueStorage {
    state: RwLock<State>,
    writer: Mutex<()>,
    window: u64,
}

impl std::fmt::Debug for MemoryKeyValueStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.read();
        f.debug_struct("MemoryKeyValueStorage")
            .field("revision", &s.meta.revision)
            .field("keys", &s.keys.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryKeyValueStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryKeyValueStorage {
    /// An empty storage with the default command-id window.
    pub fn new() -> Self {
        Self::with_command_window(DEFAULT_COMMAND_WINDOW)
    }

    /// An empty storage remembering the last `window` command ids.
    pub fn with_command_window(window: u64) -> Self {
        Self {
            state: RwLock::new(State::default()),
            writer: Mutex::new(()),
            window,
        }
    }

    fn flush_impl(&self) -> Result<()> {
        Ok(())
    }

    /// Copies the state at once (it is in memory: the copy is the cheap part).
    fn snapshot_job_impl(self: std::sync::Arc<Self>) -> Result<super::SnapshotJob> {
        let snapshot = super::mvcc::snapshot(self.as_ref())?;
        Ok(Box::new(move || Ok(snapshot)))
    }

    /// Memory is not durable: Raft keeps whole snapshots of it.
    fn persist_job_impl(self: std::sync::Arc<Self>) -> Result<Option<super::PersistJob>> {
        Ok(None)
    }

    /// Memory never waits.
    fn would_wait_impl(&self, _incoming: usize) -> bool {
        false
    }
}

impl Backend for MemoryKeyValueStorage {
    fn writer(&self) -> &Mutex<()> {
        &self.writer
    }

    fn meta(&self) -> Meta {
        self.state.read().meta
    }

    fn command_window(&self) -> u64 {
        self.window
    }

    fn version_at(&self, key: &[u8], revision: u64) -> Result<Option<Entry>> {
        let s = self.state.read();
        check_compacted(revision, s.meta.compacted)?;
        Ok(s.version_at(key, revision))
    }

    fn scan_at(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        prefix: bool,
        revision: u64,
    ) -> Result<Vec<Entry>> {
        let s = self.state.read();
        check_compacted(revision, s.meta.compacted)?;
        let upper = match to {
            Some(to) if !prefix => Bound::Excluded(to),
            _ => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for (key, history) in s.keys.range::<[u8], _>((Bound::Included(from), upper)) {
            if prefix && !key.starts_with(from) {
                break;
            }
            let n = history.partition_point(|e| e.revision <= revision);
            if let Some(i) = n.checked_sub(1) {
                out.push(history[i].clone());
            }
        }
        Ok(out)
    }

    fn keys_of_revision(&self, revision: u64) -> Result<Vec<Vec<u8>>> {
        let s = self.state.read();
        mvcc::check_replayable(revision, s.meta.compacted)?;
        Ok(s.revisions.get(&revision).cloned().unwrap_or_default())
    }

    fn command(&self, id: &CommandId) -> Result<Option<Outcome>> {
        Ok(self.state.read().commands.outcome(id))
    }

    fn command_at_seq(&self, seq: u64) -> Result<Option<CommandId>> {
        Ok(self.state.read().commands.id_at(seq))
    }

    fn commit(&self, ws: WriteSet) -> Result<()> {
        let mut s = self.state.write();
        s.commands.apply(&ws);
        if !ws.entries.is_empty() {
            let keys = ws.entries.iter().map(|e| e.key.clone()).collect();
            s.revisions.insert(ws.meta.revision, keys);
            for e in ws.entries {
                s.keys.entry(e.key.clone()).or_default().push(e);
            }
        }
        if ws.compact {
            let compacted = ws.meta.compacted;
            s.keys.retain(|_, history| {
                let kept: Vec<Entry> = mvcc::retained(history, compacted).cloned().collect();
                *history = kept;
                !history.is_empty()
            });
            s.revisions = s.revisions.split_off(&(compacted + 1));
        }
        s.meta = ws.meta;
        Ok(())
    }

    fn export(&self) -> Result<StorageSnapshot> {
        let s = self.state.read();
        let meta = s.meta;
        Ok(StorageSnapshot {
            revision: meta.revision,
            compacted: meta.compacted,
            update_counter: meta.update_counter,
            last_applied: meta.last_applied,
            command_seq: meta.command_seq,
            entries: s.keys.values().flatten().cloned().collect(),
            commands: s.commands.records(),
        })
    }

    fn import(&self, snapshot: StorageSnapshot) -> Result<()> {
        let mut fresh = State {
            meta: Meta::of(&snapshot),
            ..State::default()
        };
        for e in snapshot.entries {
            if e.revision > snapshot.compacted {
                fresh
                    .revisions
                    .entry(e.revision)
                    .or_default()
                    .push(e.key.clone());
            }
            fresh.keys.entry(e.key.clone()).or_default().push(e);
        }
        for keys in fresh.revisions.values_mut() {
            keys.sort();
        }
        fresh.commands = CommandWindow::of(snapshot.commands);
        *self.state.write() = fresh;
        Ok(())
    }
}

impl_key_value_storage!(MemoryKeyValueStorage);
