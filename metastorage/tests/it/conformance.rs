//! The conformance suite on both storages, and what only the sled storage promises: data,
//! counters, command ids and the last applied position survive a reopen.
use metastorage::{
    testing, ApplyContext, CommandId, CommandOp, Error, KeyValueStorage, LogPosition,
    MemoryKeyValueStorage, Outcome, SledKeyValueStorage,
};

use crate::support::Dirs;

#[test]
fn memory_storage_passes_the_suite() {
    testing::run_all(&|| Box::new(MemoryKeyValueStorage::new()));
}

#[test]
fn sled_storage_passes_the_suite() {
    let dirs = Dirs::default();
    testing::run_all(&|| Box::new(dirs.sled()));
}

#[test]
#[should_panic(expected = "metastorage conformance case")]
fn a_broken_storage_fails_the_suite() {
    /// Forgets the revision of every read: always answers at the latest.
    struct Forgetful(MemoryKeyValueStorage);
    impl KeyValueStorage for Forgetful {
        fn revision(&self) -> u64 {
            self.0.revision()
        }
        fn compacted_revision(&self) -> u64 {
            self.0.compacted_revision()
        }
        fn last_applied(&self) -> Option<LogPosition> {
            self.0.last_applied()
        }
        fn get(
            &self,
            key: &[u8],
            _: Option<u64>,
        ) -> metastorage::Result<Option<metastorage::Entry>> {
            self.0.get(key, None)
        }
        fn get_all(
            &self,
            keys: &[Vec<u8>],
            _: Option<u64>,
        ) -> metastorage::Result<Vec<Option<metastorage::Entry>>> {
            self.0.get_all(keys, None)
        }
        fn range(
            &self,
            from: &[u8],
            to: Option<&[u8]>,
            _: Option<u64>,
        ) -> metastorage::Result<Vec<metastorage::Entry>> {
            self.0.range(from, to, None)
        }
        fn prefix(
            &self,
            prefix: &[u8],
            _: Option<u64>,
        ) -> metastorage::Result<Vec<metastorage::Entry>> {
            self.0.prefix(prefix, None)
        }
        fn revision_entries(&self, revision: u64) -> metastorage::Result<Vec<metastorage::Entry>> {
            self.0.revision_entries(revision)
        }
        fn apply(&self, op: &CommandOp, ctx: &ApplyContext) -> metastorage::Result<Outcome> {
            self.0.apply(op, ctx)
        }
        fn snapshot(&self) -> metastorage::Result<metastorage::StorageSnapshot> {
            self.0.snapshot()
        }
        fn restore(&self, snapshot: metastorage::StorageSnapshot) -> metastorage::Result<()> {
            self.0.restore(snapshot)
        }
        fn flush(&self) -> metastorage::Result<()> {
            Ok(())
        }
    }
    testing::run_all(&|| Box::new(Forgetful(MemoryKeyValueStorage::new())));
}

#[test]
fn sled_reopen_keeps_data_counters_ids_and_last_applied() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = CommandId::new(uuid::Uuid::from_u128(5), 1);
    let first;
    {
        let s = SledKeyValueStorage::open(dir.path()).expect("open");
        s.put(b"a", b"1").expect("put");
        s.put(b"b\x00", b"2").expect("put");
        s.remove(b"a").expect("remove");
        s.put(b"c", b"3").expect("put");
        s.compact(2).expect("compact");
        let ctx = ApplyContext {
            id: Some(id),
            position: Some(LogPosition::new(42, 7)),
        };
        first = s.apply(&CommandOp::put("d", "4"), &ctx).expect("apply");
        s.flush().expect("flush");
    }
    let s = SledKeyValueStorage::open(dir.path()).expect("reopen");
    assert_eq!(s.revision(), 5);
    assert_eq!(s.compacted_revision(), 2);
    assert_eq!(s.last_applied(), Some(LogPosition::new(42, 7)));
    assert!(matches!(
        s.get(b"a", Some(1)),
        Err(Error::Compacted {
            requested: 1,
            compacted: 2
        })
    ));
    let live: Vec<(Vec<u8>, u64, u64)> = s
        .range(b"", None, None)
        .expect("range")
        .into_iter()
        .map(|e| (e.key, e.revision, e.update_counter))
        .collect();
    assert_eq!(
        live,
        vec![
            (b"b\x00".to_vec(), 2, 2),
            (b"c".to_vec(), 4, 4),
            (b"d".to_vec(), 5, 5)
        ]
    );
    assert!(s.get(b"a", None).expect("get").is_some_and(|e| e.tombstone));
    let ctx = ApplyContext {
        id: Some(id),
        position: Some(LogPosition::new(43, 7)),
    };
    assert_eq!(
        s.apply(&CommandOp::put("d", "4"), &ctx).expect("retry"),
        first,
        "ids persist"
    );
    assert_eq!(s.revision(), 5);
    assert_eq!(s.put(b"e", b"5").expect("put"), 6, "revisions continue");
    assert_eq!(
        s.get(b"e", None).expect("get").map(|e| e.update_counter),
        Some(6)
    );
}

#[test]
fn sled_refuses_a_database_of_another_format() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let db = vault::testing::raw_sled(dir.path());
        db.open_tree("meta")
            .expect("tree")
            .insert("format", "99")
            .expect("insert");
        db.flush().expect("flush");
    }
    let err = SledKeyValueStorage::open(dir.path()).expect_err("unknown format");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("unknown format 99"), "{msg}");
    assert!(
        msg.contains(&dir.path().display().to_string()),
        "names the directory: {msg}"
    );
}

#[test]
fn command_window_evicts_the_oldest_ids_on_both_storages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storages: Vec<Box<dyn KeyValueStorage>> = vec![
        Box::new(MemoryKeyValueStorage::with_command_window(2)),
        Box::new(SledKeyValueStorage::open_with_command_window(dir.path(), 2).expect("open")),
    ];
    for s in storages {
        let id = |seq| CommandId::new(uuid::Uuid::from_u128(3), seq);
        let ctx = |seq| ApplyContext {
            id: Some(id(seq)),
            position: None,
        };
        for seq in 1..=3 {
            s.apply(&CommandOp::put("k", format!("{seq}")), &ctx(seq))
                .expect("apply");
        }
        assert_eq!(s.revision(), 3);
        assert_eq!(
            s.apply(&CommandOp::put("k", "3"), &ctx(3))
                .expect("retry within the window"),
            Outcome {
                revision: 3,
                succeeded: true
            }
        );
        assert_eq!(s.revision(), 3);
        s.apply(&CommandOp::put("k", "1"), &ctx(1))
            .expect("evicted id");
        assert_eq!(s.revision(), 4, "an id outside the window is applied anew");
        let snap = s.snapshot().expect("snapshot");
        let seqs: Vec<u64> = snap.commands.iter().map(|c| c.id.seq).collect();
        assert_eq!(seqs, vec![3, 1], "the window holds the last two ids");
    }
}

#[test]
fn sled_restore_survives_reopen_and_an_interrupted_one_starts_empty() {
    let source = MemoryKeyValueStorage::new();
    source.put(b"a", b"1").expect("put");
    source.put(b"b", b"2").expect("put");
    source.remove(b"a").expect("remove");
    let mut snap = source.snapshot().expect("snapshot");
    snap.last_applied = Some(LogPosition::new(9, 2));
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let s = SledKeyValueStorage::open(dir.path()).expect("open");
        s.put(b"old", b"state").expect("put");
        s.restore(snap.clone()).expect("restore");
    }
    {
        let s = SledKeyValueStorage::open(dir.path()).expect("reopen");
        assert_eq!(
            s.snapshot().expect("snapshot"),
            snap,
            "the restored state is durable"
        );
        assert_eq!(
            s.revision_entries(3).expect("rev 3").len(),
            1,
            "the index is rebuilt"
        );
    }
    {
        // a crash in the middle of a restore leaves the flag behind
        let db = vault::testing::raw_sled(dir.path());
        db.open_tree("meta")
            .expect("tree")
            .insert("restoring", "1")
            .expect("insert");
        db.flush().expect("flush");
    }
    let s = SledKeyValueStorage::open(dir.path()).expect("reopen after an interrupted restore");
    assert_eq!(s.revision(), 0, "half a snapshot is never served");
    assert_eq!(s.last_applied(), None, "so Raft sends the snapshot again");
    assert!(s.range(b"", None, None).expect("range").is_empty());
    assert_eq!(s.put(b"k", b"v").expect("put"), 1);
}

/// A sled tree's name and its (key, value) pairs.
type RawTree = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Every tree of the sled database at `path` with all its (key, value) pairs.
fn raw_trees(path: &std::path::Path) -> Vec<RawTree> {
    let db = vault::testing::raw_sled(path);
    let mut trees = Vec::new();
    for name in db.tree_names() {
        let name = String::from_utf8(name.to_vec()).expect("tree name");
        let tree = db.open_tree(&name).expect("tree");
        let items = tree
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("item"))
            .collect();
        trees.push((name, items));
    }
    trees
}

/// A write-out cut short by a crash (its redo record written, only some of its changes) is
/// completed when the storage opens again: data, counters and position all at the later
/// state, never a mix.
#[test]
fn sled_completes_a_write_out_cut_short_on_open() {
    let finished = tempfile::tempdir().expect("temp dir");
    let want = {
        let s = SledKeyValueStorage::open(finished.path()).expect("open");
        s.put(b"a", b"1").expect("put");
        s.put(b"b", b"2").expect("put");
        s.put(b"a", b"3").expect("put");
        s.snapshot().expect("snapshot")
    };
    let target = raw_trees(finished.path());
    let changes: usize = target.iter().map(|(_, items)| items.len()).sum();
    for cut in [0, 1, changes / 2, changes - 1] {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let s = SledKeyValueStorage::open(dir.path()).expect("open");
            s.put(b"a", b"1").expect("put");
        }
        {
            let db = vault::testing::raw_sled(dir.path());
            let redo = vault::redo::Redo {
                trees: target
                    .iter()
                    .map(|(name, items)| {
                        let changes = items
                            .iter()
                            .map(|(k, v)| (k.clone(), Some(v.clone())))
                            .collect();
                        (name.clone(), changes)
                    })
                    .collect(),
            };
            vault::redo::write_cut_short(&db, &redo, cut).expect("cut short");
        }
        let s = SledKeyValueStorage::open(dir.path()).expect("reopen completes the write-out");
        assert_eq!(s.revision(), 3, "cut after {cut} of {changes} changes");
        assert_eq!(s.snapshot().expect("snapshot"), want, "cut after {cut}");
    }
}

#[test]
fn sled_refuses_a_corrupt_write_out_record_by_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let db = vault::testing::raw_sled(dir.path());
        db.open_tree("redo-record")
            .expect("tree")
            .insert("redo", &[1u8, 5][..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let Err(e) = SledKeyValueStorage::open(dir.path()) else {
        panic!("a corrupt redo record must be refused");
    };
    let e = e.to_string();
    assert!(
        e.contains(&dir.path().display().to_string()) && e.contains("redo record"),
        "{e}"
    );
}

/// Applies commands `seqs` (ids of one client) that each put key `k`.
fn apply_ids(s: &dyn KeyValueStorage, seqs: impl IntoIterator<Item = u64>) -> Vec<Outcome> {
    seqs.into_iter()
        .map(|seq| {
            let ctx = ApplyContext {
                id: Some(CommandId::new(uuid::Uuid::from_u128(8), seq)),
                position: None,
            };
            s.apply(&CommandOp::put("k", format!("{seq}")), &ctx)
                .expect("apply")
        })
        .collect()
}

/// The `command_log` blocks the sled database at `path` holds.
fn command_blocks(path: &std::path::Path) -> Vec<Vec<metastorage::CommandRecord>> {
    raw_trees(path)
        .into_iter()
        .filter(|(name, _)| name == "command_log")
        .flat_map(|(_, items)| items)
        .map(|(_, v)| postcard::from_bytes(&v).expect("block decodes"))
        .collect()
}

/// The command window outlives write-outs and reopens exactly (the memory storage is the
/// reference), and blocks whose ids all left the window are removed from disk.
#[test]
fn sled_command_window_survives_write_outs_and_reopen() {
    const WINDOW: u64 = 5;
    let dir = tempfile::tempdir().expect("temp dir");
    let reference = MemoryKeyValueStorage::with_command_window(WINDOW);
    apply_ids(&reference, 1..=40);
    {
        // a write-out after every command: one block each
        let s = SledKeyValueStorage::open_with(dir.path(), WINDOW, 1).expect("open");
        apply_ids(&s, 1..=40);
        s.flush().expect("flush");
        assert_eq!(
            s.snapshot().expect("snapshot").commands,
            reference.snapshot().expect("snapshot").commands
        );
    }
    let blocks = command_blocks(dir.path());
    assert!(
        blocks.len() <= WINDOW as usize + 1,
        "old blocks are removed: {} left",
        blocks.len()
    );
    assert!(blocks.iter().flatten().any(|r| r.id.seq == 40));
    let s = SledKeyValueStorage::open_with(dir.path(), WINDOW, 1).expect("reopen");
    let want = reference.snapshot().expect("snapshot");
    assert_eq!(s.snapshot().expect("snapshot").commands, want.commands);
    // ids in the window answer their first outcome, older ones apply anew
    let revision = s.revision();
    assert_eq!(apply_ids(&s, [40, 36]), apply_ids(&reference, [40, 36]));
    assert_eq!(
        s.revision(),
        revision,
        "retries within the window are not applied"
    );
    apply_ids(&s, [35]);
    apply_ids(&reference, [35]);
    assert_eq!(
        s.revision(),
        revision + 1,
        "an id outside the window is applied"
    );
    assert_eq!(
        s.snapshot().expect("snapshot"),
        reference.snapshot().expect("snapshot")
    );
}

/// A format 1 database (the window in two trees, by id and by sequence number) opens as
/// format 2 with the same window, the old trees gone.
#[test]
fn sled_converts_a_format_1_database_and_keeps_its_command_ids() {
    let dir = tempfile::tempdir().expect("temp dir");
    let before = {
        let s = SledKeyValueStorage::open(dir.path()).expect("open");
        apply_ids(&s, 1..=300);
        s.flush().expect("flush");
        s.snapshot().expect("snapshot")
    };
    {
        // rewrite the window the way format 1 kept it
        let db = vault::testing::raw_sled(dir.path());
        let (commands, order) = (
            db.open_tree("commands").expect("tree"),
            db.open_tree("command_order").expect("tree"),
        );
        for r in &before.commands {
            let mut id = r.id.client.as_bytes().to_vec();
            id.extend_from_slice(&r.id.seq.to_be_bytes());
            let value = postcard::to_allocvec(&(r.seq, r.outcome)).expect("encode");
            commands.insert(&id, value).expect("insert");
            order.insert(r.seq.to_be_bytes(), id).expect("insert");
        }
        db.drop_tree("command_log").expect("drop");
        db.open_tree("meta")
            .expect("tree")
            .insert("format", "1")
            .expect("insert");
        db.flush().expect("flush");
    }
    {
        let s = SledKeyValueStorage::open(dir.path()).expect("open format 1");
        assert_eq!(s.snapshot().expect("snapshot"), before);
        let revision = s.revision();
        apply_ids(&s, [1, 300]);
        assert_eq!(s.revision(), revision, "converted ids are remembered");
    }
    let names: Vec<String> = raw_trees(dir.path()).into_iter().map(|(n, _)| n).collect();
    assert!(
        !names
            .iter()
            .any(|n| n == "commands" || n == "command_order"),
        "{names:?}"
    );
    let blocks = command_blocks(dir.path());
    assert_eq!(blocks.iter().map(Vec::len).sum::<usize>(), 300);
}

#[test]
fn sled_refuses_a_command_block_that_does_not_decode_by_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let s = SledKeyValueStorage::open(dir.path()).expect("open");
        apply_ids(&s, 1..=3);
    }
    {
        let db = vault::testing::raw_sled(dir.path());
        db.open_tree("command_log")
            .expect("tree")
            .insert(7u64.to_be_bytes(), &[0xff, 0xff, 0xff][..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let Err(e) = SledKeyValueStorage::open(dir.path()) else {
        panic!("a command block that does not decode must be refused");
    };
    let e = e.to_string();
    assert!(
        e.contains(&dir.path().display().to_string()) && e.contains("command block 7"),
        "{e}"
    );
}

/// Every revision's entries, 1 to the storage's revision.
fn all_revision_entries(s: &dyn KeyValueStorage) -> Vec<Vec<metastorage::Entry>> {
    (1..=s.revision())
        .map(|r| s.revision_entries(r).expect("revision entries"))
        .collect()
}

#[test]
fn sled_converts_a_format_2_database_and_replays_every_revision() {
    let dir = tempfile::tempdir().expect("temp dir");
    let before = {
        // a write-out every 7 write sets: blocks of several revisions
        let s = SledKeyValueStorage::open_with(dir.path(), 100, 7).expect("open");
        for i in 0..300u32 {
            s.put(
                format!("k{}", i % 37).as_bytes(),
                format!("v{i}").as_bytes(),
            )
            .expect("put");
        }
        s.flush().expect("flush");
        all_revision_entries(&s)
    };
    assert_eq!(before.len(), 300);
    {
        // rewrite the revision index the way format 2 kept it: one key per revision
        let db = vault::testing::raw_sled(dir.path());
        let blocks = db.open_tree("revision_log").expect("tree");
        let old = db.open_tree("revisions").expect("tree");
        let mut written = 0;
        for item in blocks.iter() {
            let (_, v) = item.expect("item");
            let block: Vec<(u64, Vec<u8>)> = postcard::from_bytes(&v).expect("block decodes");
            for (revision, index) in block {
                old.insert(revision.to_be_bytes(), index).expect("insert");
                written += 1;
            }
        }
        assert_eq!(written, 300, "one index per revision in the blocks");
        db.drop_tree("revision_log").expect("drop");
        db.open_tree("meta")
            .expect("tree")
            .insert("format", "2")
            .expect("insert");
        db.flush().expect("flush");
    }
    {
        let s = SledKeyValueStorage::open(dir.path()).expect("open format 2");
        assert_eq!(all_revision_entries(&s), before);
        s.put(b"after", b"1").expect("put");
        s.flush().expect("flush");
        assert_eq!(s.revision_entries(301).expect("new revision").len(), 1);
    }
    let names: Vec<String> = raw_trees(dir.path()).into_iter().map(|(n, _)| n).collect();
    assert!(!names.iter().any(|n| n == "revisions"), "{names:?}");
    let s = SledKeyValueStorage::open(dir.path()).expect("reopen format 3");
    assert_eq!(all_revision_entries(&s)[..300], before[..]);
}

#[test]
fn sled_compaction_drops_whole_revision_blocks_and_refuses_a_damaged_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let s = SledKeyValueStorage::open_with(dir.path(), 100, 1000).expect("open");
        for i in 0..100u32 {
            s.put(format!("k{i}").as_bytes(), b"v").expect("put");
            if i % 10 == 9 {
                // a write-out of the last 10 revisions: one block each
                s.flush().expect("flush");
            }
        }
        s.compact(55).expect("compact");
        s.flush().expect("flush");
        assert!(s.revision_entries(55).is_err(), "compacted");
        assert_eq!(s.revision_entries(56).expect("kept").len(), 1);
        assert_eq!(s.revision_entries(100).expect("kept").len(), 1);
    }
    let firsts: Vec<u64> = raw_trees(dir.path())
        .into_iter()
        .filter(|(n, _)| n == "revision_log")
        .flat_map(|(_, items)| items)
        .map(|(k, _)| u64::from_be_bytes(k.try_into().expect("8 bytes")))
        .collect();
    // blocks of 10 revisions: 1-10 .. 41-50 went, 51-60 holds 56-60 still
    assert_eq!(firsts.first(), Some(&51), "{firsts:?}");
    {
        let db = vault::testing::raw_sled(dir.path());
        db.open_tree("revision_log")
            .expect("tree")
            .insert(91u64.to_be_bytes(), &[0xff, 0xff, 0xff][..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let s = SledKeyValueStorage::open(dir.path()).expect("open");
    let e = s
        .revision_entries(95)
        .expect_err("a damaged block")
        .to_string();
    assert!(
        e.contains(&dir.path().display().to_string()) && e.contains("revision block 91"),
        "{e}"
    );
}
