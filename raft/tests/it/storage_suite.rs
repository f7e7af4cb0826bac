//! openraft's own storage suite over both log storages.
use std::sync::Arc;

use raft::{
    testing, LogStorage, LogStorageProvider, MemoryLogStorage, SledLogProvider, WalLogProvider,
};

#[test]
fn memory_storage_passes_openraft_suite() {
    testing::run_openraft_suite(|| {
        let storage: Arc<dyn LogStorage> = Arc::new(MemoryLogStorage::new());
        (storage, Box::new(()))
    })
    .unwrap();
}

#[test]
fn sled_storage_passes_openraft_suite() {
    testing::run_openraft_suite(|| {
        #[allow(clippy::unwrap_used)] // test setup
        let dir = tempfile::tempdir().unwrap();
        let provider = SledLogProvider::new(dir.path().join("raft"));
        provider.open().unwrap();
        let storage = provider.group("suite").unwrap();
        (storage, Box::new((provider, dir)))
    })
    .unwrap();
}

#[test]
fn wal_storage_passes_openraft_suite() {
    testing::run_openraft_suite(|| {
        #[allow(clippy::unwrap_used)] // test setup
        let dir = tempfile::tempdir().unwrap();
        // a tiny rewrite threshold: the suite also runs across rewrites of the file
        let provider = WalLogProvider::with_rewrite_bytes(dir.path().join("raft-log"), 512);
        provider.open().unwrap();
        let storage = provider.group("suite").unwrap();
        (storage, Box::new((provider, dir)))
    })
    .unwrap();
}
