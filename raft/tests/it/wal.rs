//! The write-ahead log storage: durability across reopen, destroy, torn tails, corruption,
//! rewrites, and a model test with simulated crashes.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use proptest::prelude::*;
use raft::{LogStorage, LogStorageProvider, MemoryLogStorage, MetaKey, WalLogProvider};

const KEYS: [MetaKey; 5] = [
    MetaKey::Vote,
    MetaKey::Committed,
    MetaKey::LastPurged,
    MetaKey::AppliedMembership,
    MetaKey::AppliedHint,
];

type Dump = (Vec<(u64, Vec<u8>)>, Vec<Option<Vec<u8>>>);

fn dump(storage: &dyn LogStorage) -> Dump {
    (
        storage.range(0, u64::MAX).unwrap(),
        KEYS.iter().map(|k| storage.get_meta(*k).unwrap()).collect(),
    )
}

fn flush_and_wait(storage: &dyn LogStorage) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel();
    storage.flush(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(30))
        .map_err(std::io::Error::other)?
}

/// The newest log file of `dir` and how much of it is written: up to its last non-zero
/// byte (the rest is zero-filled ahead of the writes).
fn log_file(dir: &Path) -> (PathBuf, u64) {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    let path = files.pop().expect("a log file");
    let bytes = fs::read(&path).unwrap();
    let written = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    (path, written as u64)
}

/// Overwrites `bytes` of `path` at `offset`.
fn scribble(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, offset)
        .unwrap();
}

#[test]
fn logs_survive_reopen_groups_are_separate_and_destroy_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-log");
    {
        let provider = WalLogProvider::new(&path);
        assert!(
            provider.group("a").is_err(),
            "a group before open is refused"
        );
        provider.open().unwrap();
        let a = provider.group("a").unwrap();
        let b = provider.group("b").unwrap();
        let gone = provider.group("gone").unwrap();
        a.append((1..=10).map(|i| (i, vec![i as u8; 3])).collect())
            .unwrap();
        a.truncate_from(8).unwrap();
        a.purge_upto(2).unwrap();
        a.put_meta(MetaKey::Vote, b"v1").unwrap();
        a.put_meta(MetaKey::Vote, b"v2").unwrap();
        b.append(vec![(1, b"b1".to_vec())]).unwrap();
        gone.append(vec![(1, b"x".to_vec())]).unwrap();
        gone.put_meta(MetaKey::Committed, b"c").unwrap();
        flush_and_wait(a.as_ref()).unwrap();
        provider.destroy_group("gone").unwrap();
        assert!(
            gone.append(vec![(2, b"y".to_vec())]).is_err(),
            "a handle of a destroyed group refuses writes"
        );
        assert_eq!(
            dump(provider.group("gone").unwrap().as_ref()),
            (vec![], vec![None; 5]),
            "a destroyed group starts empty"
        );
        provider.close().unwrap();
        provider.close().unwrap();
        assert!(
            flush_and_wait(a.as_ref()).is_err(),
            "a flush after close fails instead of hanging"
        );
        assert!(
            a.append(vec![(8, vec![])]).is_err(),
            "a write after close fails"
        );
    }
    let provider = WalLogProvider::new(&path);
    provider.open().unwrap();
    let a = provider.group("a").unwrap();
    let (log, meta) = dump(a.as_ref());
    assert_eq!(
        log,
        (3..=7).map(|i| (i, vec![i as u8; 3])).collect::<Vec<_>>()
    );
    assert_eq!(meta[0].as_deref(), Some(&b"v2"[..]));
    assert_eq!(
        provider.group("b").unwrap().range(0, 10).unwrap(),
        vec![(1, b"b1".to_vec())]
    );
    assert_eq!(
        dump(provider.group("gone").unwrap().as_ref()),
        (vec![], vec![None; 5]),
        "the destroy survived the restart"
    );
}

#[test]
fn a_torn_tail_is_cut_and_corruption_is_reported_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-log");
    let expected = {
        let provider = WalLogProvider::new(&path);
        provider.open().unwrap();
        let g = provider.group("g").unwrap();
        g.append((1..=5).map(|i| (i, vec![7; 100])).collect())
            .unwrap();
        flush_and_wait(g.as_ref()).unwrap();
        let expected = dump(g.as_ref());
        provider.close().unwrap();
        expected
    };
    let (file, len) = log_file(&path);
    let size = fs::metadata(&file).unwrap().len();
    assert!(size > len, "the file is zero-filled ahead: {size} > {len}");
    // a write that never completed: half a record after the last one, and stray bytes
    // further on
    scribble(&file, len, &[9, 0, 0, 0, 1, 2, 3]);
    scribble(&file, size - 3, &[7, 7, 7]);
    {
        let provider = WalLogProvider::new(&path);
        provider.open().unwrap();
        let g = provider.group("g").unwrap();
        assert_eq!(dump(g.as_ref()), expected);
        assert_eq!(log_file(&path).1, len, "the torn tail was zeroed");
        // new records follow the last good one and survive the next restart
        g.append(vec![(6, vec![6; 10])]).unwrap();
        flush_and_wait(g.as_ref()).unwrap();
        provider.close().unwrap();
    }
    let expected = {
        let provider = WalLogProvider::new(&path);
        provider.open().unwrap();
        let got = dump(provider.group("g").unwrap().as_ref());
        assert_eq!(got.0.last(), Some(&(6, vec![6; 10])));
        provider.close().unwrap();
        got
    };
    assert_eq!(expected.0.len(), 6);
    let (file, _) = log_file(&path);

    // the file's start is not a log: refused with the file named
    let mut bytes = fs::read(&file).unwrap();
    bytes[8] ^= 0xff;
    fs::write(&file, &bytes).unwrap();
    let provider = WalLogProvider::new(&path);
    let err = provider.open().unwrap_err().to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("corrupt raft log"), "{err}");

    // a stranger in the directory is named, not deleted
    let other = tempfile::tempdir().unwrap();
    let odd = other.path().join("notes.txt");
    fs::write(&odd, b"hello").unwrap();
    let err = WalLogProvider::new(other.path())
        .open()
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.txt"), "{err}");
    assert!(odd.exists());
}

#[test]
fn rewrites_keep_the_live_state_and_bound_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-log");
    let provider = WalLogProvider::with_rewrite_bytes(&path, 16 << 10);
    provider.open().unwrap();
    let g = provider.group("g").unwrap();
    let h = provider.group("h").unwrap();
    for round in 0..200u64 {
        let first = round * 10 + 1;
        g.append((first..first + 10).map(|i| (i, vec![1; 200])).collect())
            .unwrap();
        // keep 20 entries, like openraft purging behind snapshots
        g.purge_upto((first + 9).saturating_sub(20)).unwrap();
        h.put_meta(MetaKey::Committed, &round.to_be_bytes())
            .unwrap();
        flush_and_wait(g.as_ref()).unwrap();
    }
    let expected = (dump(g.as_ref()), dump(h.as_ref()));
    assert_eq!(expected.0 .0.len(), 20);
    provider.close().unwrap();
    let (file, len) = log_file(&path);
    // 200 rounds wrote about 400 KiB: rewrites kept the file near its threshold
    assert!(len < 64 << 10, "{} is {len} bytes", file.display());
    assert_eq!(fs::read_dir(&path).unwrap().count(), 1, "old files removed");
    let provider = WalLogProvider::new(&path);
    provider.open().unwrap();
    assert_eq!(
        (
            dump(provider.group("g").unwrap().as_ref()),
            dump(provider.group("h").unwrap().as_ref())
        ),
        expected
    );
}

#[test]
fn concurrent_flushes_of_many_groups_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let provider = WalLogProvider::new(dir.path().join("raft-log"));
    provider.open().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for g in 0..8u64 {
            let storage = provider.group(&format!("g{g}")).unwrap();
            let tx = tx.clone();
            s.spawn(move || {
                for i in 1..=50u64 {
                    storage.append(vec![(i, vec![g as u8])]).unwrap();
                    let tx = tx.clone();
                    storage.flush(Box::new(move |r| {
                        let _ = tx.send(r.is_ok());
                    }));
                }
            });
        }
    });
    for _ in 0..400 {
        assert!(rx.recv_timeout(Duration::from_secs(30)).unwrap());
    }
    for g in 0..8u64 {
        let storage = provider.group(&format!("g{g}")).unwrap();
        assert_eq!(storage.range(0, 100).unwrap().len(), 50);
    }
    provider.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// model test

#[derive(Debug, Clone)]
enum Op {
    Append {
        group: usize,
        back: u64,
        n: u64,
        len: usize,
    },
    Meta {
        group: usize,
        key: usize,
        value: Vec<u8>,
    },
    Truncate {
        group: usize,
        back: u64,
    },
    Purge {
        group: usize,
        ahead: u64,
    },
    Destroy {
        group: usize,
    },
    Flush,
    /// Close, cut the file somewhere after the last flush, reopen.
    Crash {
        cut: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3u64, 1..5u64, 0..300usize)
            .prop_map(|(group, back, n, len)| Op::Append { group, back, n, len }),
        2 => (0..3usize, 0..5usize, proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(group, key, value)| Op::Meta { group, key, value }),
        1 => (0..3usize, 0..4u64).prop_map(|(group, back)| Op::Truncate { group, back }),
        1 => (0..3usize, 0..4u64).prop_map(|(group, ahead)| Op::Purge { group, ahead }),
        1 => (0..3usize).prop_map(|group| Op::Destroy { group }),
        2 => Just(Op::Flush),
        1 => any::<u64>().prop_map(|cut| Op::Crash { cut }),
    ]
}

const GROUPS: [&str; 3] = ["g0", "g1", "g2"];

fn model_dump(model: &[MemoryLogStorage]) -> Vec<Dump> {
    model.iter().map(|m| dump(m)).collect()
}

fn wal_dump(provider: &WalLogProvider) -> Vec<Dump> {
    GROUPS
        .iter()
        .map(|g| dump(provider.group(g).unwrap().as_ref()))
        .collect()
}

fn apply(op: &Op, storage: &dyn LogStorage, model: &mut [MemoryLogStorage]) {
    let last = |m: &MemoryLogStorage| m.last().unwrap().map_or(0, |(i, _)| i);
    match op {
        Op::Append {
            group,
            back,
            n,
            len,
        } => {
            let from = (last(&model[*group]) + 1).saturating_sub(*back).max(1);
            let entries: Vec<(u64, Vec<u8>)> = (from..from + n)
                .map(|i| (i, vec![(i % 251) as u8; *len]))
                .collect();
            storage.append(entries.clone()).unwrap();
            model[*group].append(entries).unwrap();
        }
        Op::Meta { group, key, value } => {
            storage.put_meta(KEYS[*key], value).unwrap();
            model[*group].put_meta(KEYS[*key], value).unwrap();
        }
        Op::Truncate { group, back } => {
            let from = (last(&model[*group]) + 1).saturating_sub(*back);
            storage.truncate_from(from).unwrap();
            model[*group].truncate_from(from).unwrap();
        }
        Op::Purge { group, ahead } => {
            let first = model[*group]
                .range(0, u64::MAX)
                .unwrap()
                .first()
                .map_or(0, |(i, _)| *i);
            storage.purge_upto(first + ahead).unwrap();
            model[*group].purge_upto(first + ahead).unwrap();
        }
        Op::Destroy { .. } | Op::Flush | Op::Crash { .. } => unreachable!("not a storage op"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_log_matches_a_model_across_flushes_crashes_and_rewrites(
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        // small enough that rewrites happen in most runs
        let open = || {
            let provider = WalLogProvider::with_rewrite_bytes(&path, 2 << 10);
            provider.open().unwrap();
            provider
        };
        let mut provider = open();
        let mut model: Vec<MemoryLogStorage> = GROUPS.iter().map(|_| MemoryLogStorage::new()).collect();
        // the model after the last flush and after every operation since
        let mut since_flush = vec![model_dump(&model)];
        let mut durable = log_file(&path);
        for op in &ops {
            match op {
                Op::Flush => {
                    flush_and_wait(provider.group("g0").unwrap().as_ref()).unwrap();
                    since_flush = vec![model_dump(&model)];
                    durable = log_file(&path);
                }
                Op::Destroy { group } => {
                    provider.destroy_group(GROUPS[*group]).unwrap();
                    model[*group] = MemoryLogStorage::new();
                    // destroy is durable with everything before it
                    since_flush = vec![model_dump(&model)];
                    durable = log_file(&path);
                }
                Op::Crash { cut } => {
                    provider.close().unwrap();
                    let (file, len) = log_file(&path);
                    if file == durable.0 && len >= durable.1 {
                        // the writes after the last flush reached the disk up to `keep`
                        let keep = durable.1 + cut % (len - durable.1 + 1);
                        let zeroes = vec![0; usize::try_from(len - keep).unwrap()];
                        scribble(&file, keep, &zeroes);
                    }
                    provider = open();
                    let recovered = wal_dump(&provider);
                    let at = since_flush.iter().position(|s| *s == recovered);
                    prop_assert!(at.is_some(), "recovered a state no prefix of the operations had");
                    // continue from what survived
                    since_flush.truncate(at.unwrap_or(0) + 1);
                    let state = since_flush.pop().unwrap_or_default();
                    model = GROUPS.iter().map(|_| MemoryLogStorage::new()).collect();
                    for (m, (log, meta)) in model.iter_mut().zip(state) {
                        m.append(log).unwrap();
                        for (k, v) in KEYS.iter().zip(meta) {
                            if let Some(v) = v {
                                m.put_meta(*k, &v).unwrap();
                            }
                        }
                    }
                    since_flush = vec![model_dump(&model)];
                    durable = log_file(&path);
                }
                op => {
                    let group = match op {
                        Op::Append { group, .. }
                        | Op::Meta { group, .. }
                        | Op::Truncate { group, .. }
                        | Op::Purge { group, .. } => *group,
                        _ => unreachable!(),
                    };
                    let storage = provider.group(GROUPS[group]).unwrap();
                    apply(op, storage.as_ref(), &mut model);
                    since_flush.push(model_dump(&model));
                }
            }
            prop_assert_eq!(wal_dump(&provider), model_dump(&model));
            for g in GROUPS {
                // the size that decides when a group snapshots for memory
                let storage = provider.group(g).unwrap();
                let held: u64 = storage.range(0, u64::MAX).unwrap().iter().map(|(_, e)| e.len() as u64).sum();
                prop_assert_eq!(storage.memory_bytes(), Some(held));
            }
        }
        provider.close().unwrap();
        let provider = open();
        prop_assert_eq!(wal_dump(&provider), model_dump(&model));
    }
}

#[test]
fn kept_snapshots_survive_a_reopen_and_go_with_their_group() {
    let dir = tempfile::tempdir().unwrap();
    let (log, snapshots) = (
        dir.path().join("raft-log"),
        dir.path().join("raft-snapshots"),
    );
    let open = || {
        let provider = WalLogProvider::new(&log).with_snapshot_dir(&snapshots);
        provider.open().unwrap();
        provider
    };
    {
        let provider = open();
        let a = provider.group("a").unwrap();
        assert_eq!(a.kept_snapshot().unwrap(), None, "nothing kept yet");
        a.keep_snapshot(b"meta-1", b"data-1").unwrap();
        a.keep_snapshot(b"meta-2", &[5u8; 70_000]).unwrap();
        provider
            .group("b")
            .unwrap()
            .keep_snapshot(b"mb", b"db")
            .unwrap();
        provider.close().unwrap();
    }
    let provider = open();
    let a = provider.group("a").unwrap();
    assert_eq!(
        a.kept_snapshot().unwrap(),
        Some((b"meta-2".to_vec(), vec![5u8; 70_000])),
        "the last one kept, whole"
    );
    provider.destroy_group("a").unwrap();
    assert_eq!(provider.group("a").unwrap().kept_snapshot().unwrap(), None);
    assert_eq!(
        provider.group("b").unwrap().kept_snapshot().unwrap(),
        Some((b"mb".to_vec(), b"db".to_vec())),
        "another group's snapshot stays"
    );

    // a damaged file is an error naming it, not a snapshot
    let file = fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut bytes = fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&file, bytes).unwrap();
    let err = provider.group("b").unwrap().kept_snapshot().unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(err.to_string().contains("raft-snapshots"), "{err}");
}
