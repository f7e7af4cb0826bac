//! The in-memory partition storage, for tests and embedding: the same contract as sled,
//! nothing survives the process.
use std::{collections::BTreeMap, ops::Bound, sync::Arc};

use parking_lot::{Mutex, RwLock};
use raft::LogPosition;

use super::{
    apply_changes, with_prefix, PartitionSnapshot, PartitionStorage, PartitionStorageProvider,
    WriteBatch,
};
use crate::error::{Error, Result};

#[derive(Default)]
struct State {
    rows: BTreeMap<Vec<u8>, Vec<u8>>,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
    applied: Option<LogPosition>,
}

/// One partition in memory. `None` state means destroyed.
pub struct MemoryPartitionStorage {
    name: String,
    state: RwLock<Option<State>>,
}

impl std::fmt::Debug for MemoryPartitionStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPartitionStorage")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryPartitionStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryPartitionStorage {
    /// An empty partition.
    pub fn new() -> Self {
        Self::named("memory")
    }

    fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: RwLock::new(Some(State::default())),
        }
    }

    fn destroyed(&self) -> Error {
        Error::storage(format!("memory {}", self.name), "partition was destroyed")
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T> {
        let guard = self.state.read();
        let state = guard.as_ref().ok_or_else(|| self.destroyed())?;
        Ok(f(state))
    }

    fn is_destroyed(&self) -> bool {
        self.state.read().is_none()
    }
}

impl PartitionStorage for MemoryPartitionStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read(|s| s.rows.get(key).cloned())
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.read(|s| keys.iter().map(|k| s.rows.get(k).cloned()).collect())
    }

    fn scan(&self, from: Bound<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.read(|s| {
            s.rows
                .range::<[u8], _>((from, Bound::Unbounded))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    fn len(&self) -> Result<u64> {
        self.read(|s| s.rows.len() as u64)
    }

    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read(|s| s.meta.get(key).cloned())
    }

    fn meta_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.read(|s| {
            with_prefix(&s.meta, prefix)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    fn apply(&self, batch: WriteBatch) -> Result<()> {
        let mut guard = self.state.write();
        let state = guard.as_mut().ok_or_else(|| self.destroyed())?;
        apply_changes(&mut state.rows, batch.rows);
        apply_changes(&mut state.meta, batch.meta);
        if let Some(position) = batch.applied {
            state.applied = Some(position);
        }
        Ok(())
    }

    fn last_applied(&self) -> Result<Option<LogPosition>> {
        self.read(|s| s.applied)
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        self.read(|s| PartitionSnapshot {
            last_applied: s.applied,
            rows: s.rows.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            meta: s.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })?
        .encode()
    }

    fn restore(&self, data: &[u8]) -> Result<()> {
        let snapshot = PartitionSnapshot::decode(data)?;
        let mut guard = self.state.write();
        if guard.is_none() {
            return Err(self.destroyed());
        }
        *guard = Some(State {
            rows: snapshot.rows.into_iter().collect(),
            meta: snapshot.meta.into_iter().collect(),
            applied: snapshot.last_applied,
        });
        Ok(())
    }

    fn destroy(&self) -> Result<()> {
        *self.state.write() = None;
        Ok(())
    }
}

/// Partitions in memory, kept by the provider: a "restarted" node that reuses the provider
/// finds its partitions again.
#[derive(Default)]
pub struct MemoryPartitionProvider {
    partitions: Mutex<BTreeMap<(String, u32), Arc<MemoryPartitionStorage>>>,
}

impl std::fmt::Debug for MemoryPartitionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPartitionProvider")
            .field("partitions", &self.partitions.lock().len())
            .finish()
    }
}

impl MemoryPartitionProvider {
    /// A provider with no partitions.
    pub fn new() -> Self {
        Self::default()
    }
}

impl PartitionStorageProvider for MemoryPartitionProvider {
    fn open(&self) -> Result<()> {
        Ok(())
    }

    fn partition(&self, table_id: &str, partition: u32) -> Result<Arc<dyn PartitionStorage>> {
        let mut partitions = self.partitions.lock();
        let key = (table_id.to_owned(), partition);
        if let Some(existing) = partitions.get(&key) {
            if !existing.is_destroyed() {
                return Ok(Arc::clone(existing) as Arc<dyn PartitionStorage>);
            }
        }
        let storage = Arc::new(MemoryPartitionStorage::named(&super::tree_name(
            table_id, partition,
        )));
        partitions.insert(key, Arc::clone(&storage));
        Ok(storage)
    }

    fn partitions(&self) -> Result<Vec<(String, u32)>> {
        Ok(self
            .partitions
            .lock()
            .iter()
            .filter(|(_, s)| !s.is_destroyed())
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn close(&self) -> Result<()> {
        Ok(())
    }
}
