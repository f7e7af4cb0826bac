//! Both storage implementations pass the conformance suite.
use std::sync::atomic::{AtomicUsize, Ordering};

use vault::{testing, MemoryVaultStorage, SledVaultStorage, VaultStorage};

#[test]
fn memory_storage_conforms() {
    testing::run_all(|| Box::new(MemoryVaultStorage::new()));
}

#[test]
fn sled_storage_conforms() {
    let root = tempfile::tempdir().expect("temp dir");
    let n = AtomicUsize::new(0);
    testing::run_all(|| {
        let dir = root
            .path()
            .join(format!("db{}", n.fetch_add(1, Ordering::SeqCst)));
        Box::new(SledVaultStorage::open(dir).expect("open sled storage")) as Box<dyn VaultStorage>
    });
}

#[test]
fn sled_storage_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vault");
    {
        let s = SledVaultStorage::open(&path).expect("open");
        assert_eq!(s.path(), path.as_path());
        s.write_batch(&[vault::VaultEntry::put(b"k".to_vec(), b"v".to_vec())])
            .expect("write");
    }
    let s = SledVaultStorage::open(&path).expect("reopen right after close");
    assert_eq!(s.get(b"k").expect("get"), Some(b"v".to_vec()));
}
