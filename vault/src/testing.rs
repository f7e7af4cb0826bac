//! The conformance suite every [`VaultStorage`] implementation passes.
//!
//! `run_all(|| Box::new(MyStorage::new()))` runs every case, each on a fresh, empty storage
//! from `make`; a failing case panics with its name. [`apply_to_model`] and
//! [`assert_matches_model`] let property tests compare a storage with a `BTreeMap` model.
//! This is test support: it asserts, it does not return errors.
use std::collections::BTreeMap;

use crate::storage::{VaultEntry, VaultStorage};

/// One conformance case: a name and a check run on an empty storage.
pub type Case = (&'static str, fn(&dyn VaultStorage));

/// Every case of the suite.
pub const CASES: &[Case] = &[
    ("get_missing_is_none", get_missing_is_none),
    ("put_get_overwrite", put_get_overwrite),
    ("remove", remove),
    ("batch_applies_in_order", batch_applies_in_order),
    ("batch_is_atomic_for_readers", batch_is_atomic_for_readers),
    ("range_bounds", range_bounds),
    ("prefix_scan", prefix_scan),
    ("empty_keys_and_values", empty_keys_and_values),
    ("large_values", large_values),
    ("many_keys_sorted", many_keys_sorted),
];

/// Run every case, each on a fresh storage from `make`.
pub fn run_all(make: impl Fn() -> Box<dyn VaultStorage>) {
    for (name, case) in CASES {
        let storage = make();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&*storage)));
        if let Err(panic) = outcome {
            let reason = crate::storage::panic_message(panic.as_ref());
            panic!("vault conformance case {name} failed: {reason}");
        }
    }
}

/// Apply `batch` to `model` the way a storage must: in order, `None` removes.
pub fn apply_to_model(model: &mut BTreeMap<Vec<u8>, Vec<u8>>, batch: &[VaultEntry]) {
    for entry in batch {
        match &entry.value {
            Some(v) => {
                model.insert(entry.key.clone(), v.clone());
            }
            None => {
                model.remove(&entry.key);
            }
        }
    }
}

/// Assert that `storage` holds exactly `model`: full scan, and a `get` per key.
pub fn assert_matches_model(storage: &dyn VaultStorage, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let all = storage.prefix(b"").expect("scan the whole storage");
    let expected: Vec<(Vec<u8>, Vec<u8>)> =
        model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(all, expected, "full scan differs from the model");
    for (k, v) in model {
        assert_eq!(
            storage.get(k).expect("get").as_deref(),
            Some(v.as_slice()),
            "get {k:?}"
        );
    }
}

fn put(storage: &dyn VaultStorage, key: &[u8], value: &[u8]) {
    storage
        .write_batch(&[VaultEntry::put(key, value)])
        .expect("write a batch");
}

fn pairs(items: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
    items
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

fn get_missing_is_none(s: &dyn VaultStorage) {
    assert_eq!(s.get(b"missing").expect("get"), None);
    assert!(
        s.prefix(b"").expect("scan").is_empty(),
        "a new storage is empty"
    );
    s.write_batch(&[]).expect("an empty batch is fine");
    assert!(s.prefix(b"").expect("scan").is_empty());
}

fn put_get_overwrite(s: &dyn VaultStorage) {
    put(s, b"k", b"v1");
    assert_eq!(s.get(b"k").expect("get"), Some(b"v1".to_vec()));
    put(s, b"k", b"v2");
    assert_eq!(s.get(b"k").expect("get"), Some(b"v2".to_vec()));
    assert_eq!(s.get(b"k2").expect("get"), None, "no neighbour appears");
    s.flush().expect("flush");
    assert_eq!(s.get(b"k").expect("get"), Some(b"v2".to_vec()));
}

fn remove(s: &dyn VaultStorage) {
    put(s, b"a", b"1");
    put(s, b"b", b"2");
    s.write_batch(&[VaultEntry::remove(b"a".to_vec())])
        .expect("remove");
    assert_eq!(s.get(b"a").expect("get"), None);
    assert_eq!(s.get(b"b").expect("get"), Some(b"2".to_vec()));
    s.write_batch(&[VaultEntry::remove(b"never".to_vec())])
        .expect("removing a missing key is fine");
    assert_eq!(s.prefix(b"").expect("scan"), pairs(&[(b"b", b"2")]));
}

fn batch_applies_in_order(s: &dyn VaultStorage) {
    put(s, b"gone", b"x");
    s.write_batch(&[
        VaultEntry::put(b"a".to_vec(), b"1".to_vec()),
        VaultEntry::put(b"a".to_vec(), b"2".to_vec()),
        VaultEntry::put(b"b".to_vec(), b"1".to_vec()),
        VaultEntry::remove(b"b".to_vec()),
        VaultEntry::remove(b"c".to_vec()),
        VaultEntry::put(b"c".to_vec(), b"3".to_vec()),
        VaultEntry::remove(b"gone".to_vec()),
    ])
    .expect("write a batch");
    assert_eq!(
        s.prefix(b"").expect("scan"),
        pairs(&[(b"a", b"2"), (b"c", b"3")]),
        "later entries of a batch win"
    );
}

/// Readers racing a writer never see half a batch: `x` and `y` always hold the same value.
fn batch_is_atomic_for_readers(s: &dyn VaultStorage) {
    const ROUNDS: u32 = 200;
    let batch = |i: u32| {
        let v = i.to_be_bytes().to_vec();
        vec![
            VaultEntry::put(b"x".to_vec(), v.clone()),
            VaultEntry::put(b"y".to_vec(), v),
        ]
    };
    s.write_batch(&batch(0)).expect("write");
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut checks = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || checks == 0 {
                let all = s.range(b"x", b"z").expect("range");
                assert_eq!(all.len(), 2, "both keys present");
                assert_eq!(all[0].1, all[1].1, "a reader saw half a batch");
                checks += 1;
            }
            checks
        });
        for i in 1..=ROUNDS {
            s.write_batch(&batch(i)).expect("write");
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let checks = reader.join().expect("reader thread");
        assert!(checks > 0);
    });
    assert_eq!(
        s.get(b"x").expect("get"),
        Some(ROUNDS.to_be_bytes().to_vec())
    );
}

fn range_bounds(s: &dyn VaultStorage) {
    for k in [&b"a"[..], b"b", b"b\x00", b"ba", b"c", b"\xff", b"\xff\xff"] {
        put(s, k, k);
    }
    let keys = |from: &[u8], to: &[u8]| -> Vec<Vec<u8>> {
        s.range(from, to)
            .expect("range")
            .into_iter()
            .map(|(k, v)| {
                assert_eq!(k, v, "values follow keys");
                k
            })
            .collect()
    };
    assert_eq!(
        keys(b"b", b"c"),
        vec![b"b".to_vec(), b"b\x00".to_vec(), b"ba".to_vec()],
        "from is included, to is excluded"
    );
    assert_eq!(keys(b"b", b"b\x00"), vec![b"b".to_vec()]);
    assert!(keys(b"b", b"b").is_empty(), "from == to is empty");
    assert!(keys(b"c", b"a").is_empty(), "from > to is empty");
    assert_eq!(
        keys(b"", b"b"),
        vec![b"a".to_vec()],
        "empty from starts at the first key"
    );
    assert_eq!(
        keys(b"c", b"\xff\xff\xff"),
        vec![b"c".to_vec(), b"\xff".to_vec(), b"\xff\xff".to_vec()]
    );
    assert!(keys(b"d", b"e").is_empty(), "a gap is empty");
}

fn prefix_scan(s: &dyn VaultStorage) {
    for k in [
        &b"cfg"[..],
        b"cfg.a",
        b"cfg.b",
        b"cfg/",
        b"cfh",
        b"cf",
        b"\xff",
        b"\xff\x00",
    ] {
        put(s, k, b"v");
    }
    let keys = |p: &[u8]| -> Vec<Vec<u8>> {
        s.prefix(p)
            .expect("prefix")
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(
        keys(b"cfg."),
        vec![b"cfg.a".to_vec(), b"cfg.b".to_vec()],
        "only keys that start with the prefix"
    );
    assert_eq!(
        keys(b"cfg"),
        vec![
            b"cfg".to_vec(),
            b"cfg.a".to_vec(),
            b"cfg.b".to_vec(),
            b"cfg/".to_vec()
        ],
        "the prefix itself is a match"
    );
    assert_eq!(keys(b"\xff"), vec![b"\xff".to_vec(), b"\xff\x00".to_vec()]);
    assert!(keys(b"zz").is_empty());
    assert_eq!(keys(b"").len(), 8, "the empty prefix matches everything");
}

fn empty_keys_and_values(s: &dyn VaultStorage) {
    put(s, b"", b"empty key");
    put(s, b"k", b"");
    assert_eq!(s.get(b"").expect("get"), Some(b"empty key".to_vec()));
    assert_eq!(
        s.get(b"k").expect("get"),
        Some(Vec::new()),
        "an empty value is not an absent one"
    );
    assert_eq!(
        s.range(b"", b"a").expect("range"),
        pairs(&[(b"", b"empty key")])
    );
    assert_eq!(s.prefix(b"").expect("scan").len(), 2);
    s.write_batch(&[VaultEntry::remove(Vec::new())])
        .expect("remove the empty key");
    assert_eq!(s.get(b"").expect("get"), None);
    assert_eq!(s.prefix(b"").expect("scan"), pairs(&[(b"k", b"")]));
}

fn large_values(s: &dyn VaultStorage) {
    let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let key = vec![7u8; 1024];
    s.write_batch(&[
        VaultEntry::put(key.clone(), big.clone()),
        VaultEntry::put(b"small".to_vec(), b"s".to_vec()),
    ])
    .expect("write a large value");
    assert_eq!(s.get(&key).expect("get").as_deref(), Some(big.as_slice()));
    let scanned = s.prefix(&key[..10]).expect("prefix");
    assert_eq!(scanned.len(), 1);
    assert_eq!(scanned[0].1.len(), big.len());
    s.write_batch(&[VaultEntry::put(key.clone(), b"now small".to_vec())])
        .expect("overwrite");
    assert_eq!(s.get(&key).expect("get"), Some(b"now small".to_vec()));
}

fn many_keys_sorted(s: &dyn VaultStorage) {
    let mut model = BTreeMap::new();
    // a fixed, shuffled-looking order (multiplicative stepping modulo a prime)
    let batch: Vec<VaultEntry> = (0..1000u32)
        .map(|i| {
            let k = (i * 7919) % 1009;
            VaultEntry::put(format!("key{k:05}").into_bytes(), i.to_le_bytes().to_vec())
        })
        .collect();
    apply_to_model(&mut model, &batch);
    s.write_batch(&batch).expect("write");
    assert_matches_model(s, &model);
    assert_eq!(
        s.range(b"key00100", b"key00200").expect("range").len(),
        model
            .range(b"key00100".to_vec()..b"key00200".to_vec())
            .count()
    );
}

/// The sled database at `path` opened directly, for tests that inspect or damage what a
/// storage wrote. sled's background threads of a database just dropped may hold the file
/// lock for a moment: retried within a deadline, then a panic naming the path.
pub fn raw_sled(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return db,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("raw sled at {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryVaultStorage;

    #[test]
    fn memory_storage_passes_the_suite() {
        run_all(|| Box::new(MemoryVaultStorage::new()));
    }

    #[test]
    #[should_panic(expected = "vault conformance case")]
    fn a_broken_storage_fails_the_suite() {
        /// Forgets every write.
        struct Amnesiac;
        impl VaultStorage for Amnesiac {
            fn get(&self, _: &[u8]) -> crate::Result<Option<Vec<u8>>> {
                Ok(None)
            }
            fn write_batch(&self, _: &[VaultEntry]) -> crate::Result<()> {
                Ok(())
            }
            fn range(&self, _: &[u8], _: &[u8]) -> crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
                Ok(Vec::new())
            }
            fn prefix(&self, _: &[u8]) -> crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
                Ok(Vec::new())
            }
            fn flush(&self) -> crate::Result<()> {
                Ok(())
            }
        }
        run_all(|| Box::new(Amnesiac));
    }
}
