//! The storage conformance suite on both implementations, and a model test: random batches
//! against a `BTreeMap`, with sled reopened in between.
use std::{collections::BTreeMap, ops::Bound, sync::Arc};

use proptest::prelude::*;
use raft::LogPosition;
use table::{
    testing, MemoryPartitionProvider, MemoryPartitionStorage, PartitionStorage,
    PartitionStorageProvider, SledPartitionProvider, WriteBatch,
};

fn sled_provider() -> (Arc<SledPartitionProvider>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let provider = Arc::new(SledPartitionProvider::in_data_dir(dir.path()));
    provider.open().expect("open sled");
    (provider, dir)
}

#[test]
fn memory_storage_passes_the_suite() {
    testing::run_all(|| (Arc::new(MemoryPartitionStorage::new()) as _, Box::new(())));
    testing::run_provider_suite(|| (Arc::new(MemoryPartitionProvider::new()) as _, Box::new(())));
}

#[test]
fn sled_storage_passes_the_suite() {
    testing::run_all(|| {
        let (provider, dir) = sled_provider();
        let storage = provider.partition("t", 0).expect("partition");
        (storage, Box::new((provider, dir)))
    });
    testing::run_provider_suite(|| {
        let (provider, dir) = sled_provider();
        (provider as _, Box::new(dir))
    });
}

#[test]
fn sled_partitions_live_in_one_database_under_partitions() {
    let (provider, dir) = sled_provider();
    assert_eq!(provider.path(), dir.path().join("partitions"));
    assert!(
        dir.path().join("partitions").is_dir(),
        "database directory created"
    );
    let storage = provider.partition("users", 2).expect("partition");
    let mut batch = WriteBatch::new();
    batch.upsert(b"k".to_vec(), b"v".to_vec());
    storage.apply(batch).expect("apply");
    assert_eq!(
        provider.partitions().expect("partitions"),
        vec![("users".to_owned(), 2)]
    );
    provider.close().expect("close");
    assert!(
        provider.partition("users", 2).is_err(),
        "closed provider refuses"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(u8, u8),
    Delete(u8),
    Meta(u8, Option<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    // a small key space, so deletes and overwrites hit existing keys
    prop_oneof![
        4 => (0u8..24, any::<u8>()).prop_map(|(k, v)| Op::Upsert(k, v)),
        2 => (0u8..24).prop_map(Op::Delete),
        1 => (0u8..4, proptest::option::of(any::<u8>())).prop_map(|(k, v)| Op::Meta(k, v)),
    ]
}

fn key(k: u8) -> Vec<u8> {
    // keys of different lengths around the prefix bytes an implementation may use
    match k % 3 {
        0 => vec![k],
        1 => vec![b'r', k],
        _ => vec![0xff, k, 0],
    }
}

fn meta_key(k: u8) -> Vec<u8> {
    // two of them share the prefix [1] (prefix scans)
    if k % 2 == 1 {
        vec![1, k]
    } else {
        vec![k]
    }
}

#[derive(Default)]
struct Model {
    rows: BTreeMap<Vec<u8>, Vec<u8>>,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
    applied: Option<LogPosition>,
}

fn check(storage: &dyn PartitionStorage, model: &Model) -> Result<(), TestCaseError> {
    let all = storage.scan(Bound::Unbounded, usize::MAX).expect("scan");
    let want: Vec<(Vec<u8>, Vec<u8>)> = model
        .rows
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    prop_assert_eq!(&all, &want);
    prop_assert_eq!(storage.len().expect("len"), want.len() as u64);
    prop_assert_eq!(storage.last_applied().expect("applied"), model.applied);
    for k in 0u8..24 {
        prop_assert_eq!(
            storage.get(&key(k)).expect("get"),
            model.rows.get(&key(k)).cloned()
        );
    }
    for k in 0u8..4 {
        prop_assert_eq!(
            storage.meta(&meta_key(k)).expect("meta"),
            model.meta.get(&meta_key(k)).cloned()
        );
    }
    for prefix in [&[][..], &[1], &[2], &[1, 3], &[9]] {
        let want: Vec<(Vec<u8>, Vec<u8>)> = model
            .meta
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        prop_assert_eq!(storage.meta_with_prefix(prefix).expect("meta scan"), want);
    }
    // a scan from every key with a small limit matches the model's range
    for k in 0u8..24 {
        let from = key(k);
        let got = storage.scan(Bound::Excluded(&from), 3).expect("scan");
        let want: Vec<(Vec<u8>, Vec<u8>)> = model
            .rows
            .range::<Vec<u8>, _>((Bound::Excluded(&from), Bound::Unbounded))
            .take(3)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        prop_assert_eq!(got, want);
    }
    Ok(())
}

fn run_model(
    batches: Vec<Vec<Op>>,
    mut storage: Arc<dyn PartitionStorage>,
    mut reopen: impl FnMut() -> Arc<dyn PartitionStorage>,
    mut write_out: impl FnMut(),
) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for (i, ops) in batches.into_iter().enumerate() {
        let mut batch = WriteBatch::new();
        for op in ops {
            match op {
                Op::Upsert(k, v) => {
                    batch.upsert(key(k), vec![v]);
                    model.rows.insert(key(k), vec![v]);
                }
                Op::Delete(k) => {
                    batch.delete(key(k));
                    model.rows.remove(&key(k));
                }
                Op::Meta(k, Some(v)) => {
                    batch.put_meta(meta_key(k), vec![v]);
                    model.meta.insert(meta_key(k), vec![v]);
                }
                Op::Meta(k, None) => {
                    batch.delete_meta(meta_key(k));
                    model.meta.remove(&meta_key(k));
                }
            }
        }
        if i % 2 == 0 {
            let position = LogPosition {
                index: i as u64 + 1,
                term: 1,
            };
            batch.applied_at(position);
            model.applied = Some(position);
        }
        storage.apply(batch).expect("apply");
        check(storage.as_ref(), &model)?;
        if i % 3 == 1 {
            write_out();
            check(storage.as_ref(), &model)?;
        }
        if i % 4 == 3 {
            drop(storage);
            storage = reopen();
            check(storage.as_ref(), &model)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn memory_storage_follows_the_model(
        batches in proptest::collection::vec(proptest::collection::vec(op(), 0..12), 1..12)
    ) {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let same = Arc::clone(&storage);
        run_model(batches, storage, move || Arc::clone(&same), || {})?;
    }

    /// Write-behind of 1 change (the write-out thread races every read), 3, and never
    /// (only the explicit write-outs and closing write anything to sled).
    #[test]
    fn sled_storage_follows_the_model_across_reopens(
        batches in proptest::collection::vec(proptest::collection::vec(op(), 0..12), 1..12),
        write_behind in prop_oneof![Just(1usize), Just(3), Just(usize::MAX)],
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let current = Arc::new(parking_lot::Mutex::new(None::<SledPartitionProvider>));
        let open = {
            let current = Arc::clone(&current);
            move || {
                // close the database (the caller dropped its handle) and open it again
                if let Some(old) = current.lock().take() {
                    old.close().expect("close");
                }
                let provider = SledPartitionProvider::with_write_behind(&path, write_behind);
                provider.open().expect("open");
                let storage = provider.partition("t", 1).expect("partition");
                *current.lock() = Some(provider);
                storage
            }
        };
        let storage = open();
        let writer = Arc::clone(&current);
        run_model(batches, storage, open, move || {
            if let Some(provider) = writer.lock().as_ref() {
                provider.write_out().expect("write out");
            }
        })?;
    }
}

/// Reads while write-outs run back to back on another thread: a change being written out
/// is read from the frozen layer, never lost between the layers and sled.
#[test]
fn sled_reads_stay_whole_while_write_outs_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let provider = Arc::new(SledPartitionProvider::with_write_behind(
        dir.path(),
        usize::MAX,
    ));
    provider.open().expect("open");
    let storage = provider.partition("t", 0).expect("partition");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (provider, stop) = (Arc::clone(&provider), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                provider.write_out().expect("write out");
            }
        })
    };
    let mut model = BTreeMap::new();
    for i in 0u32..3_000 {
        let mut batch = WriteBatch::new();
        let key = (i % 64).to_be_bytes().to_vec();
        if i % 5 == 4 {
            batch.delete(key.clone());
            model.remove(&key);
        } else {
            batch.upsert(key.clone(), i.to_be_bytes().to_vec());
            model.insert(key.clone(), i.to_be_bytes().to_vec());
        }
        storage.apply(batch).expect("apply");
        assert_eq!(
            storage.get(&key).expect("get"),
            model.get(&key).cloned(),
            "key {key:?} after batch {i}"
        );
        if i % 50 == 0 {
            let all = storage.scan(Bound::Unbounded, usize::MAX).expect("scan");
            let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(all, want, "scan after batch {i}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().expect("writer thread");
}

/// Every (key, value) of the sled tree `tree` in the database at `path`.
fn raw_tree(path: &std::path::Path, tree: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = vault::testing::raw_sled(path);
    let tree = db.open_tree(tree).expect("tree");
    tree.iter()
        .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("item"))
        .collect()
}

/// A write-out cut short by a crash (its redo record written, some of its changes not) is
/// completed when the database opens again: rows and applied position match, as with a
/// transaction, never the new rows with the old position.
#[test]
fn a_write_out_cut_short_is_completed_on_open() {
    let batch = |rows: &[(&str, &str)], at: u64| {
        let mut batch = WriteBatch::new();
        for (k, v) in rows {
            batch.upsert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        batch.applied_at(LogPosition { index: at, term: 1 });
        batch
    };
    let old = [("a", "1"), ("b", "2")];
    let new = [("a", "10"), ("c", "30")];
    // the state a finished write-out of `new` leaves, taken from a second database
    let finished = tempfile::tempdir().expect("temp dir");
    let provider = SledPartitionProvider::in_data_dir(finished.path());
    provider.open().expect("open");
    let storage = provider.partition("t", 0).expect("partition");
    storage.apply(batch(&old, 5)).expect("apply");
    storage.apply(batch(&new, 9)).expect("apply");
    drop(storage);
    provider.close().expect("close");
    let target = raw_tree(&finished.path().join("partitions"), "t/0");
    for cut in 0..target.len() {
        let dir = tempfile::tempdir().expect("temp dir");
        let provider = SledPartitionProvider::in_data_dir(dir.path());
        provider.open().expect("open");
        let storage = provider.partition("t", 0).expect("partition");
        storage.apply(batch(&old, 5)).expect("apply");
        drop(storage);
        provider.close().expect("close");
        {
            let db = vault::testing::raw_sled(&dir.path().join("partitions"));
            let redo = vault::redo::Redo {
                trees: vec![(
                    "t/0".to_owned(),
                    target
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone())))
                        .collect(),
                )],
            };
            vault::redo::write_cut_short(&db, &redo, cut).expect("cut short");
        }
        let provider = SledPartitionProvider::in_data_dir(dir.path());
        provider.open().expect("open completes the write-out");
        let storage = provider.partition("t", 0).expect("partition");
        assert_eq!(
            storage.last_applied().expect("applied"),
            Some(LogPosition { index: 9, term: 1 }),
            "cut after {cut} changes"
        );
        let rows = storage.scan(Bound::Unbounded, usize::MAX).expect("scan");
        let want: Vec<(Vec<u8>, Vec<u8>)> = [("a", "10"), ("b", "2"), ("c", "30")]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(rows, want, "cut after {cut} changes");
        drop(storage);
        provider.close().expect("close");
    }
}

/// A redo record that does not decode stops the open with an error naming the database.
#[test]
fn a_corrupt_write_out_record_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let db = vault::testing::raw_sled(&dir.path().join("partitions"));
        db.open_tree("redo-record")
            .expect("tree")
            .insert("redo", &[7u8, 1, 2][..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let provider = SledPartitionProvider::in_data_dir(dir.path());
    let e = provider.open().expect_err("refused").to_string();
    assert!(
        e.contains("partitions") && e.contains("redo record") && e.contains("unknown format 7"),
        "{e}"
    );
}

/// A batch may take the write-behind backlog past its limit (8 x the write-behind changes);
/// the storage then says the next apply would wait, and that apply writes out first, so the
/// backlog never grows by more than one batch past the limit. Nothing is lost on the way.
#[test]
fn a_full_backlog_makes_the_next_apply_write_out_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let provider = SledPartitionProvider::with_write_behind(dir.path(), 4);
    provider.open().expect("open");
    let storage = provider.partition("t", 0).expect("partition");
    let mut model = BTreeMap::new();
    for round in 0u32..20 {
        // 40 rows: past the limit of 32 in one batch
        let mut big = WriteBatch::new();
        for i in 0u32..40 {
            let key = (round * 100 + i).to_be_bytes().to_vec();
            big.upsert(key.clone(), vec![1]);
            model.insert(key, vec![1]);
        }
        storage.apply(big).expect("big apply");
        let mut one = WriteBatch::new();
        let key = (round * 100 + 99).to_be_bytes().to_vec();
        one.upsert(key.clone(), vec![2]);
        model.insert(key, vec![2]);
        storage.apply(one).expect("small apply");
        assert!(
            !storage.apply_would_wait(),
            "round {round}: the apply after a full backlog wrote it out first"
        );
    }
    let all = storage.scan(Bound::Unbounded, usize::MAX).expect("scan");
    let want: Vec<_> = model.into_iter().collect();
    assert_eq!(all, want);
    let memory = MemoryPartitionStorage::new();
    assert!(!memory.apply_would_wait(), "memory storage never waits");
}
