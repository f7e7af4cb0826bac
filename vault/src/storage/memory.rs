//! [`MemoryVaultStorage`]: a `BTreeMap` behind a lock, for tests and embedding.
use std::collections::BTreeMap;

use parking_lot::RwLock;

use super::{VaultEntry, VaultStorage};
use crate::error::Result;

/// An in-memory [`VaultStorage`]; nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryVaultStorage {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryVaultStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl VaultStorage for MemoryVaultStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.read().get(key).cloned())
    }

    fn write_batch(&self, batch: &[VaultEntry]) -> Result<()> {
        // One write lock for the whole batch: readers see all of it or none of it.
        let mut map = self.map.write();
        for entry in batch {
            match &entry.value {
                Some(value) => {
                    map.insert(entry.key.clone(), value.clone());
                }
                None => {
                    map.remove(&entry.key);
                }
            }
        }
        Ok(())
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self
            .map
            .read()
            .range::<[u8], _>((
                std::ops::Bound::Included(from),
                std::ops::Bound::Excluded(to),
            ))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .map
            .read()
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
