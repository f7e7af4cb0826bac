//! Shared helpers: storages in temporary directories.
use std::sync::Arc;

use metastorage::{KeyValueStorage, SledKeyValueStorage};
use parking_lot::Mutex;
use tempfile::TempDir;

/// Keeps temporary directories alive for as long as the storages in them.
#[derive(Default)]
pub(crate) struct Dirs(Mutex<Vec<TempDir>>);

impl Dirs {
    /// A sled storage in a fresh temporary directory.
    pub(crate) fn sled(&self) -> SledKeyValueStorage {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = SledKeyValueStorage::open(dir.path()).expect("open sled storage");
        self.0.lock().push(dir);
        storage
    }
}

/// A fresh in-memory storage behind the trait.
pub(crate) fn memory() -> Arc<dyn KeyValueStorage> {
    Arc::new(metastorage::MemoryKeyValueStorage::new())
}
