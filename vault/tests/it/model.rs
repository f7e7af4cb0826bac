//! Property test: random write batches, then a reopen, leave the same contents as a
//! `BTreeMap` model, for both storages (reopen only for sled: memory has nothing to reopen).
use std::collections::BTreeMap;

use proptest::prelude::*;
use vault::{testing, MemoryVaultStorage, SledVaultStorage, VaultEntry, VaultStorage};

/// Small key alphabet so batches overwrite and remove each other's keys.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), Just(0xff)],
        0..4,
    )
}

fn entry() -> impl Strategy<Value = VaultEntry> {
    (
        key(),
        prop::option::weighted(0.7, prop::collection::vec(any::<u8>(), 0..64)),
    )
        .prop_map(|(key, value)| VaultEntry { key, value })
}

fn batches() -> impl Strategy<Value = Vec<Vec<VaultEntry>>> {
    prop::collection::vec(prop::collection::vec(entry(), 0..8), 1..12)
}

fn apply(storage: &dyn VaultStorage, batches: &[Vec<VaultEntry>]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut model = BTreeMap::new();
    for batch in batches {
        storage.write_batch(batch).expect("write batch");
        testing::apply_to_model(&mut model, batch);
        testing::assert_matches_model(storage, &model);
    }
    model
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn memory_matches_model(batches in batches()) {
        let storage = MemoryVaultStorage::new();
        apply(&storage, &batches);
    }

    #[test]
    fn sled_matches_model_after_reopen(batches in batches()) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vault");
        let model = {
            let storage = SledVaultStorage::open(&path).expect("open");
            apply(&storage, &batches)
        };
        let reopened = SledVaultStorage::open(&path).expect("reopen");
        testing::assert_matches_model(&reopened, &model);
    }
}
