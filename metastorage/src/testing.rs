//! The conformance suite every [`KeyValueStorage`] passes, and a reference model.
//!
//! `run_all(&|| Box::new(MyStorage::new()))` runs every case; each case asks the factory
//! for the fresh, empty storages it needs. A failing case panics with its name. [`Model`]
//! is a deliberately naive MVCC model (a full copy of the state per revision) that property
//! tests compare storages with. This is test support: it asserts, it does not return errors.
pub mod cluster;

use std::collections::BTreeMap;

use crate::{
    command::{CommandId, CommandOp, CompareOp, Condition, Operation, Outcome},
    entry::{Entry, LogPosition},
    error::Error,
    storage::{ApplyContext, KeyValueStorage},
};

/// Makes a fresh, empty storage.
pub type Factory<'a> = &'a dyn Fn() -> Box<dyn KeyValueStorage>;

/// One conformance case.
pub type Case = (&'static str, fn(Factory<'_>));

/// Every case of the suite.
pub const CASES: &[Case] = &[
    ("empty_storage", empty_storage),
    (
        "revisions_and_update_counters",
        revisions_and_update_counters,
    ),
    ("tombstones", tombstones),
    ("reads_at_old_revisions", reads_at_old_revisions),
    ("range_and_prefix_bounds", range_and_prefix_bounds),
    ("get_all_keeps_order", get_all_keeps_order),
    ("later_operation_wins", later_operation_wins),
    (
        "invoke_conditions_both_branches",
        invoke_conditions_both_branches,
    ),
    ("invoke_and_or", invoke_and_or),
    ("revision_entries", revision_entries),
    ("compaction", compaction),
    ("idempotent_retry", idempotent_retry),
    ("last_applied", last_applied),
    ("snapshot_restore", snapshot_restore),
    (
        "snapshot_job_is_as_of_its_cut",
        snapshot_job_is_as_of_its_cut,
    ),
    (
        "commits_are_atomic_for_readers",
        commits_are_atomic_for_readers,
    ),
];

/// Run every case with storages from `make`.
pub fn run_all(make: Factory<'_>) {
    for (name, case) in CASES {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(make)));
        if let Err(panic) = outcome {
            let reason = if let Some(s) = panic.downcast_ref::<&str>() {
                (*s).to_owned()
            } else if let Some(s) = panic.downcast_ref::<String>() {
                s.clone()
            } else {
                "unknown panic".to_owned()
            };
            panic!("metastorage conformance case {name} failed: {reason}");
        }
    }
}

fn live(s: &dyn KeyValueStorage, key: &[u8], at: Option<u64>) -> Option<Vec<u8>> {
    s.get(key, at)
        .expect("get")
        .and_then(|e| e.live_value().map(<[u8]>::to_vec))
}

fn keys(entries: Vec<Entry>) -> Vec<Vec<u8>> {
    entries.into_iter().map(|e| e.key).collect()
}

fn v(items: &[&[u8]]) -> Vec<Vec<u8>> {
    items.iter().map(|i| i.to_vec()).collect()
}

fn empty_storage(make: Factory<'_>) {
    let s = make();
    assert_eq!(s.revision(), 0);
    assert_eq!(s.compacted_revision(), 0);
    assert_eq!(s.last_applied(), None);
    assert_eq!(s.get(b"k", None).expect("get"), None);
    assert!(s.range(b"", None, None).expect("range").is_empty());
    assert!(s.prefix(b"", Some(0)).expect("prefix").is_empty());
    assert!(s.revision_entries(0).expect("revision 0").is_empty());
    assert!(matches!(
        s.get(b"k", Some(1)),
        Err(Error::RevisionAhead {
            requested: 1,
            current: 0
        })
    ));
}

fn revisions_and_update_counters(make: Factory<'_>) {
    let s = make();
    assert_eq!(s.put(b"a", b"1").expect("put"), 1);
    assert_eq!(
        s.put_all(&[
            (b"c".to_vec(), b"3".to_vec()),
            (b"b".to_vec(), b"2".to_vec())
        ])
        .expect("put_all"),
        2,
        "one revision per command"
    );
    assert_eq!(s.put(b"a", b"1'").expect("put"), 3);
    let a = s.get(b"a", None).expect("get").expect("a exists");
    assert_eq!(a, Entry::live(b"a".to_vec(), b"1'".to_vec(), 3, 4));
    let b = s.get(b"b", None).expect("get").expect("b exists");
    let c = s.get(b"c", None).expect("get").expect("c exists");
    assert_eq!(
        (b.revision, b.update_counter),
        (2, 2),
        "numbered in key order"
    );
    assert_eq!((c.revision, c.update_counter), (2, 3));
    assert_eq!(
        s.get(b"a", Some(2)).expect("get"),
        Some(Entry::live(b"a".to_vec(), b"1".to_vec(), 1, 1))
    );
    assert_eq!(s.revision(), 3);
    assert_eq!(
        s.put_all(&[]).expect("empty put_all"),
        3,
        "a command that changes nothing adds no revision"
    );
}

fn tombstones(make: Factory<'_>) {
    let s = make();
    s.put(b"a", b"1").expect("put");
    s.put(b"b", b"2").expect("put");
    assert_eq!(s.remove(b"a").expect("remove"), 3);
    let a = s.get(b"a", None).expect("get").expect("a tombstone");
    assert_eq!(a, Entry::tombstone(b"a".to_vec(), 3, 3));
    assert_eq!(keys(s.range(b"", None, None).expect("range")), v(&[b"b"]));
    assert_eq!(
        keys(s.prefix(b"", Some(2)).expect("prefix")),
        v(&[b"a", b"b"])
    );
    assert_eq!(
        s.remove(b"a").expect("remove again"),
        3,
        "no second tombstone"
    );
    assert_eq!(s.remove(b"never").expect("remove absent"), 3);
    assert_eq!(
        s.remove_all(&[b"never".to_vec(), b"b".to_vec()])
            .expect("remove_all"),
        4
    );
    assert_eq!(s.revision_entries(4).expect("rev 4").len(), 1);
    assert_eq!(s.put(b"a", b"again").expect("put"), 5);
    let a = s.get(b"a", None).expect("get").expect("a");
    assert!(!a.tombstone);
    assert_eq!(a.update_counter, 5);
    assert_eq!(live(&*s, b"a", Some(4)), None);
    assert_eq!(live(&*s, b"a", Some(2)), Some(b"1".to_vec()));
}

fn reads_at_old_revisions(make: Factory<'_>) {
    let s = make();
    s.put(b"k1", b"a").expect("put"); // 1
    s.put(b"k2", b"b").expect("put"); // 2
    s.put(b"k1", b"c").expect("put"); // 3
    s.remove(b"k2").expect("remove"); // 4
    s.put(b"k3", b"d").expect("put"); // 5
    type Pairs<'a> = &'a [(&'a [u8], &'a [u8])];
    let expect: [(u64, Pairs<'_>); 6] = [
        (0, &[]),
        (1, &[(b"k1", b"a")]),
        (2, &[(b"k1", b"a"), (b"k2", b"b")]),
        (3, &[(b"k1", b"c"), (b"k2", b"b")]),
        (4, &[(b"k1", b"c")]),
        (5, &[(b"k1", b"c"), (b"k3", b"d")]),
    ];
    for (rev, pairs) in expect {
        let got: Vec<(Vec<u8>, Vec<u8>)> = s
            .prefix(b"k", Some(rev))
            .expect("prefix")
            .into_iter()
            .map(|e| (e.key, e.value.expect("live")))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(got, want, "state at revision {rev}");
        for k in [&b"k1"[..], b"k2", b"k3"] {
            let expected = pairs
                .iter()
                .find(|(pk, _)| *pk == k)
                .map(|(_, v)| v.to_vec());
            assert_eq!(live(&*s, k, Some(rev)), expected, "get {k:?} at {rev}");
        }
    }
    assert!(matches!(
        s.range(b"", None, Some(6)),
        Err(Error::RevisionAhead {
            requested: 6,
            current: 5
        })
    ));
}

fn range_and_prefix_bounds(make: Factory<'_>) {
    let s = make();
    let all: Vec<&[u8]> = vec![
        b"",
        b"\x00",
        b"a",
        b"b",
        b"b\x00",
        b"ba",
        b"c",
        b"\xff",
        b"\xff\xff",
    ];
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = all.iter().map(|k| (k.to_vec(), k.to_vec())).collect();
    s.put_all(&pairs).expect("put_all");
    let range = |from: &[u8], to: Option<&[u8]>| keys(s.range(from, to, None).expect("range"));
    assert_eq!(
        range(b"b", Some(b"c")),
        v(&[b"b", b"b\x00", b"ba"]),
        "[from, to)"
    );
    assert_eq!(range(b"b", Some(b"b\x00")), v(&[b"b"]));
    assert!(range(b"b", Some(b"b")).is_empty(), "from == to is empty");
    assert!(range(b"c", Some(b"a")).is_empty(), "from > to is empty");
    assert_eq!(range(b"", Some(b"a")), v(&[b"", b"\x00"]));
    assert_eq!(
        range(b"c", None),
        v(&[b"c", b"\xff", b"\xff\xff"]),
        "unbounded"
    );
    assert_eq!(range(b"", None).len(), all.len());
    let prefix = |p: &[u8]| keys(s.prefix(p, None).expect("prefix"));
    assert_eq!(prefix(b"b"), v(&[b"b", b"b\x00", b"ba"]));
    assert_eq!(prefix(b"b\x00"), v(&[b"b\x00"]));
    assert_eq!(prefix(b"\xff"), v(&[b"\xff", b"\xff\xff"]));
    assert_eq!(prefix(b"\x00"), v(&[b"\x00"]));
    assert!(prefix(b"zz").is_empty());
    assert_eq!(prefix(b"").len(), all.len());
    for e in s.range(b"", None, None).expect("range") {
        assert_eq!(
            e.value.as_deref(),
            Some(e.key.as_slice()),
            "values follow keys"
        );
    }
}

fn get_all_keeps_order(make: Factory<'_>) {
    let s = make();
    s.put_all(&[
        (b"a".to_vec(), b"1".to_vec()),
        (b"b".to_vec(), b"2".to_vec()),
    ])
    .expect("put_all");
    s.remove(b"a").expect("remove");
    let got = s
        .get_all(&v(&[b"b", b"missing", b"a"]), None)
        .expect("get_all");
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0].as_ref().and_then(|e| e.value.clone()),
        Some(b"2".to_vec())
    );
    assert_eq!(got[1], None);
    assert!(got[2].as_ref().is_some_and(|e| e.tombstone));
    let old = s.get_all(&v(&[b"a"]), Some(1)).expect("get_all at 1");
    assert_eq!(
        old[0].as_ref().and_then(|e| e.value.clone()),
        Some(b"1".to_vec())
    );
}

fn later_operation_wins(make: Factory<'_>) {
    let s = make();
    s.put(b"old", b"x").expect("put");
    let ops = vec![
        Operation::put("a", "1"),
        Operation::put("a", "2"),
        Operation::put("new", "n"),
        Operation::remove("new"),
        Operation::remove("old"),
        Operation::put("old", "back"),
    ];
    let out = s
        .apply(&CommandOp::Write { ops }, &ApplyContext::default())
        .expect("apply");
    assert_eq!(
        out,
        Outcome {
            revision: 2,
            succeeded: true
        }
    );
    assert_eq!(live(&*s, b"a", None), Some(b"2".to_vec()));
    assert_eq!(
        s.get(b"new", None).expect("get"),
        None,
        "put then remove of a new key: nothing"
    );
    assert_eq!(live(&*s, b"old", None), Some(b"back".to_vec()));
    assert_eq!(
        keys(s.revision_entries(2).expect("rev 2")),
        v(&[b"a", b"old"])
    );
}

fn invoke_conditions_both_branches(make: Factory<'_>) {
    // state: k = "m" written at revision 1, gone removed at revision 3
    let table: Vec<(&str, Condition, bool)> = vec![
        ("value eq", Condition::value("k", CompareOp::Eq, "m"), true),
        (
            "value eq other",
            Condition::value("k", CompareOp::Eq, "x"),
            false,
        ),
        ("value ne", Condition::value("k", CompareOp::Ne, "x"), true),
        ("value lt", Condition::value("k", CompareOp::Lt, "n"), true),
        ("value le", Condition::value("k", CompareOp::Le, "l"), false),
        ("value gt", Condition::value("k", CompareOp::Gt, "l"), true),
        (
            "value ge",
            Condition::value("k", CompareOp::Ge, "mm"),
            false,
        ),
        (
            "value on absent",
            Condition::value("absent", CompareOp::Ne, "x"),
            false,
        ),
        (
            "value on tombstone",
            Condition::value("gone", CompareOp::Eq, "g"),
            false,
        ),
        (
            "revision eq",
            Condition::revision("k", CompareOp::Eq, 1),
            true,
        ),
        (
            "revision gt",
            Condition::revision("k", CompareOp::Gt, 1),
            false,
        ),
        (
            "revision of absent is 0",
            Condition::revision("absent", CompareOp::Eq, 0),
            true,
        ),
        (
            "revision of tombstone",
            Condition::revision("gone", CompareOp::Eq, 3),
            true,
        ),
        ("exists", Condition::exists("k"), true),
        ("exists absent", Condition::exists("absent"), false),
        ("exists tombstone", Condition::exists("gone"), false),
        ("not exists absent", Condition::not_exists("absent"), true),
        ("not exists tombstone", Condition::not_exists("gone"), true),
        ("not exists live", Condition::not_exists("k"), false),
        ("tombstone", Condition::tombstone("gone"), true),
        ("tombstone live", Condition::tombstone("k"), false),
        ("tombstone absent", Condition::tombstone("absent"), false),
    ];
    for (name, condition, expected) in table {
        let s = make();
        s.put(b"k", b"m").expect("put");
        s.put(b"gone", b"g").expect("put");
        s.remove(b"gone").expect("remove");
        let held = s
            .invoke(
                &condition,
                &[Operation::put("out", "success")],
                &[Operation::put("out", "failure")],
            )
            .expect("invoke");
        assert_eq!(held, expected, "condition {name}");
        let want: &[u8] = if expected { b"success" } else { b"failure" };
        assert_eq!(
            live(&*s, b"out", None),
            Some(want.to_vec()),
            "branch of {name}"
        );
        assert_eq!(s.revision(), 4, "the branch wrote one revision ({name})");
    }
    let s = make();
    let held = s
        .invoke(&Condition::exists("k"), &[Operation::put("k", "v")], &[])
        .expect("invoke");
    assert!(!held);
    assert_eq!(s.revision(), 0, "an empty failure branch adds no revision");
}

fn invoke_and_or(make: Factory<'_>) {
    let s = make();
    s.put_all(&[
        (b"a".to_vec(), b"1".to_vec()),
        (b"b".to_vec(), b"2".to_vec()),
    ])
    .expect("put_all");
    let t = || Condition::exists("a");
    let f = || Condition::exists("zzz");
    let cases = vec![
        ("t and t", t().and(t()), true),
        ("t and f", t().and(f()), false),
        ("f and t", f().and(t()), false),
        ("t or f", t().or(f()), true),
        ("f or t", f().or(t()), true),
        ("f or f", f().or(f()), false),
        ("all of none", Condition::All(vec![]), true),
        ("any of none", Condition::Any(vec![]), false),
        (
            "nested",
            Condition::value("a", CompareOp::Eq, "1").and(
                Condition::value("b", CompareOp::Eq, "x").or(Condition::revision(
                    "b",
                    CompareOp::Eq,
                    1,
                )),
            ),
            true,
        ),
        ("three", Condition::All(vec![t(), t(), f()]), false),
    ];
    for (name, condition, expected) in cases {
        let before = s.revision();
        let held = s
            .invoke(
                &condition,
                &[Operation::put("s", name)],
                &[Operation::put("f", name)],
            )
            .expect("invoke");
        assert_eq!(held, expected, "{name}");
        let key: &[u8] = if expected { b"s" } else { b"f" };
        assert_eq!(
            live(&*s, key, None),
            Some(name.as_bytes().to_vec()),
            "{name}"
        );
        assert_eq!(s.revision(), before + 1);
    }
}

fn revision_entries(make: Factory<'_>) {
    let s = make();
    s.put_all(&[
        (b"b".to_vec(), b"1".to_vec()),
        (b"a".to_vec(), b"1".to_vec()),
    ])
    .expect("put_all");
    s.remove_all(&v(&[b"a", b"b"])).expect("remove_all");
    s.put(b"c", b"3").expect("put");
    let r1 = s.revision_entries(1).expect("rev 1");
    assert_eq!(keys(r1.clone()), v(&[b"a", b"b"]), "key order");
    assert!(r1.iter().all(|e| e.revision == 1 && !e.tombstone));
    let r2 = s.revision_entries(2).expect("rev 2");
    assert!(r2.iter().all(|e| e.revision == 2 && e.tombstone));
    assert_eq!(r2.len(), 2);
    assert_eq!(keys(s.revision_entries(3).expect("rev 3")), v(&[b"c"]));
    assert!(matches!(
        s.revision_entries(4),
        Err(Error::RevisionAhead { requested: 4, .. })
    ));
}

fn compaction(make: Factory<'_>) {
    let s = make();
    s.put(b"a", b"1").expect("put"); // 1
    s.put(b"a", b"2").expect("put"); // 2
    s.put(b"b", b"1").expect("put"); // 3
    s.remove(b"b").expect("remove"); // 4
    s.put(b"c", b"1").expect("put"); // 5
    s.put(b"a", b"3").expect("put"); // 6
    assert!(matches!(
        s.compact(7),
        Err(Error::RevisionAhead {
            requested: 7,
            current: 6
        })
    ));
    s.compact(5).expect("compact");
    assert_eq!(s.compacted_revision(), 5);
    assert_eq!(s.revision(), 6, "compaction adds no revision");
    for rev in 0..5 {
        match s.get(b"a", Some(rev)) {
            Err(Error::Compacted {
                requested,
                compacted,
            }) => assert_eq!((requested, compacted), (rev, 5)),
            other => panic!("read at {rev} below compaction: {other:?}"),
        }
        assert!(matches!(
            s.range(b"", None, Some(rev)),
            Err(Error::Compacted { .. })
        ));
        assert!(matches!(
            s.prefix(b"", Some(rev)),
            Err(Error::Compacted { .. })
        ));
    }
    assert!(matches!(
        s.revision_entries(5),
        Err(Error::Compacted { .. })
    ));
    assert_eq!(
        live(&*s, b"a", Some(5)),
        Some(b"2".to_vec()),
        "latest at or below kept"
    );
    assert_eq!(live(&*s, b"a", None), Some(b"3".to_vec()));
    assert_eq!(live(&*s, b"c", Some(5)), Some(b"1".to_vec()));
    assert_eq!(
        s.get(b"b", Some(5)).expect("get"),
        None,
        "a compacted tombstone is gone"
    );
    assert_eq!(
        keys(s.range(b"", None, Some(5)).expect("range")),
        v(&[b"a", b"c"])
    );
    assert_eq!(keys(s.revision_entries(6).expect("rev 6")), v(&[b"a"]));
    let snap = s.snapshot().expect("snapshot");
    assert_eq!(
        snap.entries
            .iter()
            .map(|e| (e.key.clone(), e.revision))
            .collect::<Vec<_>>(),
        vec![(b"a".to_vec(), 2), (b"a".to_vec(), 6), (b"c".to_vec(), 5)],
        "exactly the retained versions"
    );
    s.compact(3).expect("compacting lower is a no-op");
    assert_eq!(s.compacted_revision(), 5);
    s.put(b"b", b"new").expect("put");
    assert_eq!(s.get(b"b", None).expect("get").map(|e| e.revision), Some(7));
    s.compact(7).expect("compact to the current revision");
    assert_eq!(
        keys(s.range(b"", None, None).expect("range")),
        v(&[b"a", b"b", b"c"])
    );
}

fn idempotent_retry(make: Factory<'_>) {
    let s = make();
    let id = CommandId::new(uuid::Uuid::from_u128(1), 1);
    let op = CommandOp::invoke(
        Condition::not_exists("lock"),
        vec![Operation::put("lock", "me")],
        vec![],
    );
    let ctx = |index| ApplyContext {
        id: Some(id),
        position: Some(LogPosition::new(index, 1)),
    };
    let first = s.apply(&op, &ctx(1)).expect("apply");
    assert_eq!(
        first,
        Outcome {
            revision: 1,
            succeeded: true
        }
    );
    let retry = s.apply(&op, &ctx(2)).expect("retry");
    assert_eq!(retry, first, "a retry gets the first outcome");
    assert_eq!(s.revision(), 1, "and does not bump the revision");
    assert_eq!(
        s.last_applied(),
        Some(LogPosition::new(2, 1)),
        "but the log moves on"
    );
    let other = CommandId::new(uuid::Uuid::from_u128(1), 2);
    let second = s
        .apply(
            &op,
            &ApplyContext {
                id: Some(other),
                position: Some(LogPosition::new(3, 1)),
            },
        )
        .expect("another command");
    assert_eq!(
        second,
        Outcome {
            revision: 1,
            succeeded: false
        },
        "a new id is applied anew"
    );
}

fn last_applied(make: Factory<'_>) {
    let s = make();
    s.advance(LogPosition::new(1, 1)).expect("advance");
    assert_eq!(s.last_applied(), Some(LogPosition::new(1, 1)));
    assert_eq!(s.revision(), 0, "advance changes no data");
    let ctx = ApplyContext {
        id: None,
        position: Some(LogPosition::new(2, 3)),
    };
    s.apply(&CommandOp::put("k", "v"), &ctx).expect("apply");
    assert_eq!(s.last_applied(), Some(LogPosition::new(2, 3)));
    s.put(b"k", b"w").expect("put without a position");
    assert_eq!(
        s.last_applied(),
        Some(LogPosition::new(2, 3)),
        "unchanged without a position"
    );
}

fn snapshot_job_is_as_of_its_cut(make: Factory<'_>) {
    let s: std::sync::Arc<dyn KeyValueStorage> = std::sync::Arc::from(make());
    s.put(b"a", b"1").expect("put");
    s.put(b"b", b"1").expect("put");
    s.put(b"a", b"2").expect("put");
    s.remove(b"b").expect("remove");
    let id = CommandId::new(uuid::Uuid::from_u128(7), 1);
    let ctx = ApplyContext {
        id: Some(id),
        position: Some(LogPosition::new(5, 1)),
    };
    s.apply(&CommandOp::put("c", "1"), &ctx).expect("apply");
    let at_cut = s.snapshot().expect("snapshot");
    let job = std::sync::Arc::clone(&s)
        .snapshot_job()
        .expect("start a snapshot");
    // applied after the cut: a new version of a key in the cut, a new key, a removal, a
    // remembered command
    s.put(b"a", b"3").expect("put");
    s.put(b"d", b"1").expect("put");
    s.remove(b"c").expect("remove");
    let later = ApplyContext {
        id: Some(CommandId::new(uuid::Uuid::from_u128(7), 2)),
        position: Some(LogPosition::new(6, 1)),
    };
    s.apply(&CommandOp::put("e", "1"), &later).expect("apply");
    s.flush().expect("flush");
    let built = job().expect("snapshot job");
    assert_eq!(built, at_cut, "the job builds the state as of its cut");
    assert_ne!(
        s.snapshot().expect("snapshot"),
        at_cut,
        "the state moved on"
    );
    // a job dropped without running holds nothing up
    drop(
        std::sync::Arc::clone(&s)
            .snapshot_job()
            .expect("start a snapshot"),
    );
    s.compact(s.revision())
        .expect("compaction after a dropped job");
    assert_eq!(s.compacted_revision(), s.revision());
}

fn snapshot_restore(make: Factory<'_>) {
    let s = make();
    s.put_all(&[
        (b"a".to_vec(), b"1".to_vec()),
        (b"\x00z".to_vec(), b"0".to_vec()),
    ])
    .expect("put_all");
    s.remove(b"a").expect("remove");
    s.put(b"b", b"2").expect("put");
    s.put(b"b", b"3").expect("put");
    s.compact(2).expect("compact");
    let id = CommandId::new(uuid::Uuid::from_u128(9), 9);
    let ctx = ApplyContext {
        id: Some(id),
        position: Some(LogPosition::new(10, 2)),
    };
    let first = s.apply(&CommandOp::put("c", "4"), &ctx).expect("apply");
    let snap = s.snapshot().expect("snapshot");
    let bytes = snap.encode().expect("encode");
    let decoded = crate::storage::StorageSnapshot::decode(&bytes).expect("decode");
    assert_eq!(decoded, snap);

    let fresh = make();
    fresh.put(b"junk", b"gone after restore").expect("put");
    fresh.restore(decoded).expect("restore");
    assert_eq!(fresh.snapshot().expect("snapshot"), snap, "identical state");
    assert_eq!(fresh.revision(), s.revision());
    assert_eq!(fresh.compacted_revision(), 2);
    assert_eq!(fresh.last_applied(), Some(LogPosition::new(10, 2)));
    assert_eq!(fresh.get(b"junk", None).expect("get"), None);
    for rev in 2..=s.revision() {
        assert_eq!(
            fresh.range(b"", None, Some(rev)).expect("range"),
            s.range(b"", None, Some(rev)).expect("range"),
            "reads at revision {rev}"
        );
    }
    for rev in 3..=s.revision() {
        assert_eq!(
            fresh.revision_entries(rev).expect("entries"),
            s.revision_entries(rev).expect("entries")
        );
    }
    let retry = fresh.apply(&CommandOp::put("c", "4"), &ctx).expect("retry");
    assert_eq!(retry, first, "command ids travel with the snapshot");
    assert_eq!(fresh.revision(), s.revision());
}

fn commits_are_atomic_for_readers(make: Factory<'_>) {
    const ROUNDS: u32 = 200;
    let s = make();
    let write = |i: u32| {
        let v = i.to_be_bytes().to_vec();
        s.put_all(&[(b"x".to_vec(), v.clone()), (b"y".to_vec(), v)])
            .expect("put_all");
    };
    write(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut checks = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || checks == 0 {
                let all = s.range(b"x", Some(b"z"), None).expect("range");
                assert_eq!(all.len(), 2, "both keys present");
                assert_eq!(all[0].value, all[1].value, "a reader saw half a revision");
                assert_eq!(all[0].revision, all[1].revision);
                checks += 1;
            }
            checks
        });
        for i in 1..=ROUNDS {
            write(i);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(reader.join().expect("reader thread") > 0);
    });
    assert_eq!(s.revision(), u64::from(ROUNDS) + 1);
}

/// A naive reference model of the MVCC rules: a full copy of every key's latest version
/// per revision.
#[derive(Debug, Clone)]
pub struct Model {
    /// `states[r]`: every key's latest version at revision `r`, tombstones included.
    states: Vec<BTreeMap<Vec<u8>, Entry>>,
    update_counter: u64,
    compacted: u64,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            states: vec![BTreeMap::new()],
            update_counter: 0,
            compacted: 0,
        }
    }
}

impl Model {
    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.states.len() as u64 - 1
    }

    /// The compacted revision.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// `get(key, at)`; `None` on a compacted or future revision too (check first).
    pub fn get(&self, key: &[u8], at: u64) -> Option<Entry> {
        let e = self.states.get(at as usize)?.get(key)?;
        // compaction drops tombstones at or below the compacted revision
        if e.tombstone && e.revision <= self.compacted {
            None
        } else {
            Some(e.clone())
        }
    }

    /// Live entries at `at` with keys in `[from, to)`.
    pub fn range(&self, from: &[u8], to: Option<&[u8]>, at: u64) -> Vec<Entry> {
        self.states[at as usize]
            .values()
            .filter(|e| e.key.as_slice() >= from && to.is_none_or(|to| e.key.as_slice() < to))
            .filter(|e| !e.tombstone)
            .cloned()
            .collect()
    }

    /// Live entries at `at` whose keys start with `prefix`.
    pub fn prefix(&self, prefix: &[u8], at: u64) -> Vec<Entry> {
        self.states[at as usize]
            .values()
            .filter(|e| e.key.starts_with(prefix) && !e.tombstone)
            .cloned()
            .collect()
    }

    /// The versions written by `revision`.
    pub fn revision_entries(&self, revision: u64) -> Vec<Entry> {
        self.states[revision as usize]
            .values()
            .filter(|e| e.revision == revision)
            .cloned()
            .collect()
    }

    /// Apply a command the way a storage must.
    pub fn apply(&mut self, op: &CommandOp) -> Outcome {
        let current = self.revision();
        match op {
            CommandOp::Write { ops } => {
                self.write(ops);
                Outcome {
                    revision: self.revision(),
                    succeeded: true,
                }
            }
            CommandOp::Invoke {
                condition,
                success,
                failure,
            } => {
                let held = condition
                    .evaluate(&mut |k| Ok::<_, ()>(self.get(k, current)))
                    .unwrap_or(false);
                self.write(if held { success } else { failure });
                Outcome {
                    revision: self.revision(),
                    succeeded: held,
                }
            }
            CommandOp::Compact { revision } => {
                self.compacted = self.compacted.max((*revision).min(current));
                Outcome {
                    revision: current,
                    succeeded: true,
                }
            }
        }
    }

    fn write(&mut self, ops: &[Operation]) {
        let current = self.revision();
        let mut next = self.states[current as usize].clone();
        let mut finals: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for op in ops {
            match op {
                Operation::Put { key, value } => finals.insert(key.clone(), Some(value.clone())),
                Operation::Remove { key } => finals.insert(key.clone(), None),
            };
        }
        let revision = current + 1;
        let mut changed = false;
        for (key, value) in finals {
            match value {
                Some(value) => {
                    self.update_counter += 1;
                    next.insert(
                        key.clone(),
                        Entry::live(key, value, revision, self.update_counter),
                    );
                    changed = true;
                }
                None => {
                    if self.get(&key, current).is_some_and(|e| !e.tombstone) {
                        self.update_counter += 1;
                        next.insert(
                            key.clone(),
                            Entry::tombstone(key, revision, self.update_counter),
                        );
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.states.push(next);
        }
    }

    /// Assert that `storage` answers every read like the model, at every readable revision.
    pub fn assert_matches(&self, storage: &dyn KeyValueStorage, probe_keys: &[Vec<u8>]) {
        assert_eq!(storage.revision(), self.revision(), "revision");
        assert_eq!(
            storage.compacted_revision(),
            self.compacted,
            "compacted revision"
        );
        for rev in 0..=self.revision() {
            if rev < self.compacted {
                assert!(
                    matches!(storage.get(b"", Some(rev)), Err(Error::Compacted { .. })),
                    "read at {rev} below compaction {}",
                    self.compacted
                );
                continue;
            }
            assert_eq!(
                storage.range(b"", None, Some(rev)).expect("range"),
                self.range(b"", None, rev),
                "full range at revision {rev}"
            );
            for key in probe_keys {
                assert_eq!(
                    storage.get(key, Some(rev)).expect("get"),
                    self.get(key, rev),
                    "get {key:?} at revision {rev}"
                );
                assert_eq!(
                    storage.prefix(key, Some(rev)).expect("prefix"),
                    self.prefix(key, rev),
                    "prefix {key:?} at revision {rev}"
                );
                assert_eq!(
                    storage.range(key, Some(b"\x80"), Some(rev)).expect("range"),
                    self.range(key, Some(b"\x80"), rev),
                    "range from {key:?} at revision {rev}"
                );
            }
            if rev > self.compacted {
                assert_eq!(
                    storage.revision_entries(rev).expect("revision entries"),
                    self.revision_entries(rev),
                    "entries of revision {rev}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryKeyValueStorage;

    #[test]
    fn memory_storage_passes_the_suite() {
        run_all(&|| Box::new(MemoryKeyValueStorage::new()));
    }
}
