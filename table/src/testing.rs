//! The conformance suite of the storage swap point: every [`PartitionStorage`] and
//! [`PartitionStorageProvider`] implementation must pass it.
//!
//! ```
//! use std::sync::Arc;
//! use table::MemoryPartitionStorage;
//! table::testing::run_all(|| (Arc::new(MemoryPartitionStorage::new()) as _, Box::new(())));
//! ```
//! The checks panic with a message naming the failed property, like a test does.
use std::{any::Any, ops::Bound, sync::Arc};

use raft::LogPosition;

use crate::storage::{PartitionStorage, PartitionStorageProvider, WriteBatch};

/// Makes a fresh, empty storage plus whatever must live as long as it (a temp dir).
pub type MakeStorage = dyn Fn() -> (Arc<dyn PartitionStorage>, Box<dyn Any>);

/// Makes a fresh provider with no partitions, already opened, plus its guard.
pub type MakeProvider = dyn Fn() -> (Arc<dyn PartitionStorageProvider>, Box<dyn Any>);

fn pos(index: u64) -> LogPosition {
    LogPosition { index, term: 3 }
}

fn kv(k: &[u8], v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (k.to_vec(), v.to_vec())
}

/// One check of one storage.
type Check = fn(&dyn PartitionStorage);

/// Every storage check, each on a fresh storage from `make`.
pub fn run_all(make: impl Fn() -> (Arc<dyn PartitionStorage>, Box<dyn Any>)) {
    let checks: [(&str, Check); 8] = [
        ("empty", empty),
        ("batch_applies_in_order", batch_applies_in_order),
        ("get_many_keeps_order", get_many_keeps_order),
        ("scan_bounds_and_limit", scan_bounds_and_limit),
        ("meta_is_apart_from_rows", meta_is_apart_from_rows),
        (
            "applied_only_moves_when_given",
            applied_only_moves_when_given,
        ),
        ("restore_rejects_garbage", restore_rejects_garbage),
        ("destroy_ends_the_storage", destroy_ends_the_storage),
    ];
    for (name, check) in checks {
        let (storage, _guard) = make();
        tracing::debug!(check = name, "partition storage conformance");
        check(storage.as_ref());
    }
    let (from, _g1) = make();
    let (to, _g2) = make();
    snapshot_restores_elsewhere(from.as_ref(), to.as_ref());
}

fn empty(s: &dyn PartitionStorage) {
    assert_eq!(s.get(b"a").expect("get"), None, "empty: get");
    assert!(
        s.scan(Bound::Unbounded, 10).expect("scan").is_empty(),
        "empty: scan"
    );
    assert_eq!(
        s.last_applied().expect("applied"),
        None,
        "empty: last applied"
    );
    assert_eq!(s.len().expect("len"), 0, "empty: len");
    assert!(s.is_empty().expect("is_empty"), "empty: is_empty");
    assert_eq!(s.meta(b"a").expect("meta"), None, "empty: meta");
}

fn batch_applies_in_order(s: &dyn PartitionStorage) {
    let mut batch = WriteBatch::new();
    batch
        .upsert(b"a".to_vec(), b"1".to_vec())
        .upsert(b"b".to_vec(), b"2".to_vec())
        .upsert(b"a".to_vec(), b"3".to_vec())
        .delete(b"b".to_vec())
        .upsert(b"c".to_vec(), b"4".to_vec())
        .delete(b"missing".to_vec())
        .applied_at(pos(1));
    s.apply(batch).expect("apply");
    assert_eq!(
        s.get(b"a").expect("get"),
        Some(b"3".to_vec()),
        "later upsert wins"
    );
    assert_eq!(s.get(b"b").expect("get"), None, "delete after upsert wins");
    assert_eq!(s.get(b"c").expect("get"), Some(b"4".to_vec()));
    assert_eq!(s.len().expect("len"), 2, "row count");
    assert_eq!(s.last_applied().expect("applied"), Some(pos(1)));

    let mut batch = WriteBatch::new();
    batch
        .delete(b"a".to_vec())
        .upsert(b"b".to_vec(), Vec::new())
        .applied_at(pos(2));
    s.apply(batch).expect("apply");
    assert_eq!(s.get(b"a").expect("get"), None, "deleted");
    assert_eq!(
        s.get(b"b").expect("get"),
        Some(Vec::new()),
        "an empty value is a value"
    );
    assert_eq!(s.last_applied().expect("applied"), Some(pos(2)));
}

fn get_many_keeps_order(s: &dyn PartitionStorage) {
    let mut batch = WriteBatch::new();
    batch
        .upsert(b"x".to_vec(), b"1".to_vec())
        .upsert(b"y".to_vec(), b"2".to_vec());
    s.apply(batch).expect("apply");
    let keys = vec![
        b"y".to_vec(),
        b"none".to_vec(),
        b"x".to_vec(),
        b"y".to_vec(),
    ];
    assert_eq!(
        s.get_many(&keys).expect("get_many"),
        vec![
            Some(b"2".to_vec()),
            None,
            Some(b"1".to_vec()),
            Some(b"2".to_vec())
        ],
        "get_many answers in the order asked"
    );
    assert!(s.get_many(&[]).expect("get_many").is_empty());
}

fn scan_bounds_and_limit(s: &dyn PartitionStorage) {
    // edge keys: empty, 0x00, 0xff runs (next to the implementation's own prefixes)
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        b"a".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        vec![0xff],
        vec![0xff, 0xff],
    ];
    let mut batch = WriteBatch::new();
    for (i, k) in keys.iter().enumerate().rev() {
        batch.upsert(k.clone(), vec![i as u8]);
    }
    batch.put_meta(b"a".to_vec(), b"meta".to_vec());
    s.apply(batch).expect("apply");
    let all = s.scan(Bound::Unbounded, 100).expect("scan");
    let got: Vec<Vec<u8>> = all.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(got, keys, "scan returns every row in key order, no meta");
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, (_, v))| v == &vec![i as u8]),
        "values"
    );
    let limited = s.scan(Bound::Unbounded, 3).expect("scan");
    assert_eq!(limited.len(), 3, "limit");
    assert_eq!(limited[2].0, b"a".to_vec());
    let from = s.scan(Bound::Included(b"ab"), 100).expect("scan");
    assert_eq!(
        from.first().map(|r| r.0.clone()),
        Some(b"ab".to_vec()),
        "included"
    );
    assert_eq!(from.len(), 4);
    let after = s.scan(Bound::Excluded(b"ab"), 2).expect("scan");
    assert_eq!(
        after.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        vec![b"b".to_vec(), vec![0xff]],
        "excluded"
    );
    let between = s.scan(Bound::Included(b"aa"), 1).expect("scan");
    assert_eq!(
        between[0].0,
        b"ab".to_vec(),
        "a missing start key starts at the next"
    );
    assert!(
        s.scan(Bound::Excluded(&[0xff, 0xff]), 10)
            .expect("scan")
            .is_empty(),
        "end"
    );
    assert!(
        s.scan(Bound::Unbounded, 0).expect("scan").is_empty(),
        "limit 0"
    );
}

fn meta_is_apart_from_rows(s: &dyn PartitionStorage) {
    let mut batch = WriteBatch::new();
    batch
        .upsert(b"k".to_vec(), b"row".to_vec())
        .put_meta(b"k".to_vec(), b"meta".to_vec())
        .put_meta(b"gone".to_vec(), b"x".to_vec())
        .delete_meta(b"gone".to_vec());
    s.apply(batch).expect("apply");
    assert_eq!(s.get(b"k").expect("get"), Some(b"row".to_vec()));
    assert_eq!(s.meta(b"k").expect("meta"), Some(b"meta".to_vec()));
    assert_eq!(s.meta(b"gone").expect("meta"), None, "meta delete");
    assert_eq!(s.len().expect("len"), 1, "meta keys are not rows");
    let mut batch = WriteBatch::new();
    batch.delete(b"k".to_vec());
    s.apply(batch).expect("apply");
    assert_eq!(
        s.meta(b"k").expect("meta"),
        Some(b"meta".to_vec()),
        "row delete keeps meta"
    );
}

fn applied_only_moves_when_given(s: &dyn PartitionStorage) {
    let mut batch = WriteBatch::new();
    batch.applied_at(pos(5));
    s.apply(batch).expect("apply");
    let mut batch = WriteBatch::new();
    batch.upsert(b"k".to_vec(), b"v".to_vec());
    s.apply(batch).expect("apply");
    assert_eq!(
        s.last_applied().expect("applied"),
        Some(pos(5)),
        "no position: unchanged"
    );
    s.apply(WriteBatch::new()).expect("an empty batch applies");
    assert_eq!(s.get(b"k").expect("get"), Some(b"v".to_vec()));
}

fn snapshot_restores_elsewhere(from: &dyn PartitionStorage, to: &dyn PartitionStorage) {
    let mut batch = WriteBatch::new();
    batch
        .upsert(b"a".to_vec(), b"1".to_vec())
        .upsert(b"b".to_vec(), b"2".to_vec())
        .put_meta(b"m".to_vec(), b"x".to_vec())
        .applied_at(pos(7));
    from.apply(batch).expect("apply");
    let mut stale = WriteBatch::new();
    stale
        .upsert(b"old".to_vec(), b"0".to_vec())
        .put_meta(b"old".to_vec(), b"0".to_vec())
        .applied_at(pos(1));
    to.apply(stale).expect("apply");
    let data = from.snapshot().expect("snapshot");
    to.restore(&data).expect("restore");
    assert_eq!(
        to.scan(Bound::Unbounded, 10).expect("scan"),
        vec![kv(b"a", b"1"), kv(b"b", b"2")],
        "restore replaces every row"
    );
    assert_eq!(
        to.meta(b"m").expect("meta"),
        Some(b"x".to_vec()),
        "meta travels"
    );
    assert_eq!(to.meta(b"old").expect("meta"), None, "old meta is gone");
    assert_eq!(
        to.last_applied().expect("applied"),
        Some(pos(7)),
        "position travels"
    );
    assert_eq!(
        to.snapshot().expect("snapshot"),
        data,
        "the same state, the same bytes"
    );
}

fn restore_rejects_garbage(s: &dyn PartitionStorage) {
    let mut batch = WriteBatch::new();
    batch
        .upsert(b"k".to_vec(), b"v".to_vec())
        .applied_at(pos(2));
    s.apply(batch).expect("apply");
    assert!(s.restore(&[]).is_err(), "empty snapshot");
    assert!(
        s.restore(&[1, 0xff, 0xff, 0xff]).is_err(),
        "garbage snapshot"
    );
    assert_eq!(
        s.get(b"k").expect("get"),
        Some(b"v".to_vec()),
        "state unchanged"
    );
    assert_eq!(s.last_applied().expect("applied"), Some(pos(2)));
}

fn destroy_ends_the_storage(s: &dyn PartitionStorage) {
    let mut batch = WriteBatch::new();
    batch.upsert(b"k".to_vec(), b"v".to_vec());
    s.apply(batch).expect("apply");
    s.destroy().expect("destroy");
    assert!(s.get(b"k").is_err(), "get after destroy fails");
    assert!(
        s.apply(WriteBatch::new()).is_err(),
        "apply after destroy fails"
    );
}

/// Every provider check, each on a fresh provider from `make`.
pub fn run_provider_suite(make: impl Fn() -> (Arc<dyn PartitionStorageProvider>, Box<dyn Any>)) {
    let (provider, _guard) = make();
    partitions_are_isolated(provider.as_ref());
    let (provider, _guard) = make();
    destroyed_partition_comes_back_empty(provider.as_ref());
}

fn partitions_are_isolated(p: &dyn PartitionStorageProvider) {
    let a = p.partition("t1", 0).expect("partition");
    let b = p.partition("t1", 1).expect("partition");
    let c = p.partition("t2", 0).expect("partition");
    for (s, v) in [(&a, b"a"), (&b, b"b"), (&c, b"c")] {
        let mut batch = WriteBatch::new();
        batch.upsert(b"k".to_vec(), v.to_vec()).applied_at(pos(1));
        s.apply(batch).expect("apply");
    }
    assert_eq!(a.get(b"k").expect("get"), Some(b"a".to_vec()));
    assert_eq!(b.get(b"k").expect("get"), Some(b"b".to_vec()));
    assert_eq!(c.get(b"k").expect("get"), Some(b"c".to_vec()));
    let again = p.partition("t1", 1).expect("partition");
    assert_eq!(
        again.get(b"k").expect("get"),
        Some(b"b".to_vec()),
        "the same partition again"
    );
    assert_eq!(
        p.partitions().expect("partitions"),
        vec![
            ("t1".to_owned(), 0),
            ("t1".to_owned(), 1),
            ("t2".to_owned(), 0)
        ],
        "partitions are listed"
    );
}

fn destroyed_partition_comes_back_empty(p: &dyn PartitionStorageProvider) {
    let s = p.partition("t", 3).expect("partition");
    let mut batch = WriteBatch::new();
    batch
        .upsert(b"k".to_vec(), b"v".to_vec())
        .applied_at(pos(4));
    s.apply(batch).expect("apply");
    s.destroy().expect("destroy");
    assert!(
        p.partitions().expect("partitions").is_empty(),
        "destroyed is not listed"
    );
    let fresh = p.partition("t", 3).expect("partition");
    assert_eq!(fresh.get(b"k").expect("get"), None, "recreated empty");
    assert_eq!(fresh.last_applied().expect("applied"), None);
}
