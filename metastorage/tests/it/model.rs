//! Model test: random command sequences applied to both storages and to the naive
//! [`Model`] give identical outcomes and identical reads at every revision.
use std::sync::Arc;

use metastorage::{
    testing::Model, ApplyContext, KeyValueStorage, MemoryKeyValueStorage, SledKeyValueStorage,
};
use proptest::prelude::*;

use crate::strategies::command_op;

fn probe_keys() -> Vec<Vec<u8>> {
    [
        &b""[..],
        b"\x00",
        b"a",
        b"a\x00",
        b"ab",
        b"b",
        b"\xff",
        b"zz",
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn storages_match_the_model(ops in prop::collection::vec(command_op(), 1..24)) {
        let dir = tempfile::tempdir().expect("temp dir");
        let storages: Vec<Arc<dyn KeyValueStorage>> = vec![
            Arc::new(MemoryKeyValueStorage::new()),
            Arc::new(SledKeyValueStorage::open(dir.path()).expect("open")),
        ];
        let mut model = Model::default();
        for op in &ops {
            let expected = model.apply(op);
            for s in &storages {
                let got = s.apply(op, &ApplyContext::default()).expect("apply");
                prop_assert_eq!(got, expected, "outcome of {:?}", op);
            }
        }
        for s in &storages {
            model.assert_matches(&**s, &probe_keys());
        }
        // a snapshot of either restores into the other kind
        let restored = MemoryKeyValueStorage::new();
        restored.restore(storages[1].snapshot().expect("snapshot")).expect("restore");
        model.assert_matches(&restored, &probe_keys());
    }
}
