//! The state machine core: bytes in, bytes out, applied once, deterministic across
//! replicas, snapshots that restore to identical state.
use std::sync::Arc;

use metastorage::{
    CommandId, CommandOp, CommandResponse, CompareOp, Condition, KeyValueStorage, LogPosition,
    MemoryKeyValueStorage, MetaCommand, MetaStateMachine, Operation, Outcome, SledKeyValueStorage,
};

use crate::support::{memory, Dirs};

fn pos(index: u64) -> LogPosition {
    LogPosition::new(index, 1)
}

fn command(seq: u64, op: CommandOp) -> Vec<u8> {
    MetaCommand {
        id: CommandId::new(uuid::Uuid::from_u128(77), seq),
        op,
    }
    .encode()
    .expect("encode")
}

fn applied(bytes: &[u8]) -> Outcome {
    match CommandResponse::decode(bytes).expect("response decodes") {
        CommandResponse::Applied(o) => o,
        other => panic!("expected an applied response, got {other:?}"),
    }
}

/// A fixed log exercising every kind of command.
fn log() -> Vec<Vec<u8>> {
    vec![
        command(1, CommandOp::put("cfg/a", "1")),
        command(
            2,
            CommandOp::put_all(vec![
                (b"cfg/b".to_vec(), b"2".to_vec()),
                (b"x".to_vec(), b"x".to_vec()),
            ]),
        ),
        command(
            3,
            CommandOp::invoke(
                Condition::revision("cfg/a", CompareOp::Eq, 1),
                vec![Operation::put("cfg/a", "cas")],
                vec![Operation::put("lost", "1")],
            ),
        ),
        command(2, CommandOp::put("x", "retry of 2 must not apply")),
        b"\x01 not a command".to_vec(),
        command(
            4,
            CommandOp::remove_all(vec![b"x".to_vec(), b"never".to_vec()]),
        ),
        command(5, CommandOp::Compact { revision: 2 }),
        command(6, CommandOp::remove("cfg/b")),
    ]
}

#[test]
fn apply_answers_once_per_command_id() {
    let sm = MetaStateMachine::new(memory());
    let put = command(1, CommandOp::put("k", "v"));
    let first = sm.apply(pos(1), &put).expect("apply");
    assert_eq!(
        applied(&first),
        Outcome {
            revision: 1,
            succeeded: true
        }
    );
    let retry = sm.apply(pos(2), &put).expect("retry");
    assert_eq!(
        retry, first,
        "the retry answers the first response, byte for byte"
    );
    assert_eq!(sm.storage().revision(), 1, "and changes nothing");
    assert_eq!(sm.last_applied(), Some(pos(2)));
}

#[test]
fn invalid_entries_change_nothing_but_the_position() {
    let sm = MetaStateMachine::new(memory());
    for (i, bad) in [&b""[..], b"\x01", b"\x02abc", b"\x01\xff\xff\xff\xff\xff"]
        .iter()
        .enumerate()
    {
        let response = sm.apply(pos(i as u64 + 1), bad).expect("apply");
        match CommandResponse::decode(&response).expect("decode") {
            CommandResponse::Invalid { reason } => {
                assert!(reason.contains("cannot decode command"), "{reason}")
            }
            other => panic!("expected invalid, got {other:?}"),
        }
        assert_eq!(sm.last_applied(), Some(pos(i as u64 + 1)));
    }
    assert_eq!(sm.storage().revision(), 0);
}

#[test]
fn replicas_applying_the_same_log_agree_on_every_byte() {
    let dirs = Dirs::default();
    let replicas = [
        MetaStateMachine::new(memory()),
        MetaStateMachine::new(Arc::new(dirs.sled())),
    ];
    let mut responses = [Vec::new(), Vec::new()];
    for (i, entry) in log().iter().enumerate() {
        for (r, sm) in replicas.iter().enumerate() {
            responses[r].push(sm.apply(pos(i as u64 + 1), entry).expect("apply"));
        }
    }
    assert_eq!(responses[0], responses[1], "identical responses");
    let outcomes: Vec<Option<Outcome>> = responses[0]
        .iter()
        .map(|r| match CommandResponse::decode(r).expect("decode") {
            CommandResponse::Applied(o) => Some(o),
            CommandResponse::Invalid { .. } => None,
        })
        .collect();
    let o = |revision, succeeded| {
        Some(Outcome {
            revision,
            succeeded,
        })
    };
    assert_eq!(
        outcomes,
        vec![
            o(1, true),
            o(2, true),
            o(3, true),
            o(2, true),
            None,
            o(4, true),
            o(4, true),
            o(5, true)
        ]
    );
    let a = replicas[0].snapshot().expect("snapshot");
    let b = replicas[1].snapshot().expect("snapshot");
    assert_eq!(a, b, "identical snapshots");
    assert_eq!(a.last_applied, Some(pos(8)));
    assert_eq!(a.revision, 5);
}

#[test]
fn snapshot_restores_into_a_fresh_storage() {
    let dirs = Dirs::default();
    let source = MetaStateMachine::new(Arc::new(dirs.sled()));
    for (i, entry) in log().iter().enumerate() {
        source.apply(pos(i as u64 + 1), entry).expect("apply");
    }
    let snap = source.snapshot().expect("snapshot");
    for target in [
        MetaStateMachine::new(memory()),
        MetaStateMachine::new(Arc::new(dirs.sled())),
    ] {
        let mut revisions = target.subscribe_revisions();
        target.restore(pos(8), &snap.data).expect("restore");
        assert_eq!(
            *revisions.borrow_and_update(),
            5,
            "restore announces its revision"
        );
        assert_eq!(target.last_applied(), Some(pos(8)));
        assert_eq!(target.snapshot().expect("snapshot"), snap);
        assert_eq!(
            target.storage().prefix(b"", None).expect("prefix"),
            source.storage().prefix(b"", None).expect("prefix")
        );
        let retry = target
            .apply(pos(9), &log()[0])
            .expect("retry after restore");
        assert_eq!(
            applied(&retry),
            Outcome {
                revision: 1,
                succeeded: true
            },
            "ids restored"
        );
    }
}

#[test]
fn restore_refuses_garbage_and_keeps_the_state() {
    let sm = MetaStateMachine::new(memory());
    sm.apply(pos(1), &command(1, CommandOp::put("k", "v")))
        .expect("apply");
    let mut snap = sm.snapshot().expect("snapshot").data;
    assert!(sm.restore(pos(5), b"\x01garbage").is_err());
    let last = snap.len() - 1;
    snap[last] ^= 0xff;
    let _ = sm.restore(pos(5), &snap);
    snap.truncate(snap.len() / 2);
    assert!(sm.restore(pos(5), &snap).is_err());
    assert_eq!(
        sm.storage()
            .get(b"k", None)
            .expect("get")
            .and_then(|e| e.value),
        Some(b"v".to_vec())
    );
}

#[test]
fn snapshots_with_broken_invariants_are_refused() {
    let s = MemoryKeyValueStorage::new();
    s.put(b"a", b"1").expect("put");
    s.put(b"b", b"2").expect("put");
    let good = s.snapshot().expect("snapshot");
    let mut unsorted = good.clone();
    unsorted.entries.reverse();
    let mut ahead = good.clone();
    ahead.entries[0].revision = 9;
    let mut half_tombstone = good.clone();
    half_tombstone.entries[0].tombstone = true;
    let mut compacted_above = good.clone();
    compacted_above.compacted = 3;
    for bad in [unsorted, ahead, half_tombstone, compacted_above] {
        let bytes = bad.encode().expect("encode");
        assert!(
            metastorage::StorageSnapshot::decode(&bytes).is_err(),
            "{bad:?}"
        );
        assert!(s.restore(bad).is_err());
    }
    assert_eq!(s.snapshot().expect("snapshot"), good, "unchanged");
}

#[test]
fn positions_never_move_backwards_and_advance_records_blank_entries() {
    let sm = MetaStateMachine::new(memory());
    sm.advance(pos(3)).expect("advance");
    assert_eq!(sm.last_applied(), Some(pos(3)));
    sm.apply(pos(2), &command(1, CommandOp::put("k", "v")))
        .expect("apply");
    assert_eq!(sm.last_applied(), Some(pos(3)));
    sm.apply(
        LogPosition::new(4, 2),
        &command(2, CommandOp::put("k", "w")),
    )
    .expect("apply");
    assert_eq!(sm.last_applied(), Some(LogPosition::new(4, 2)));
}

#[test]
fn sled_state_machine_resumes_after_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let sm = MetaStateMachine::new(Arc::new(
            SledKeyValueStorage::open(dir.path()).expect("open"),
        ));
        for (i, entry) in log().iter().enumerate() {
            sm.apply(pos(i as u64 + 1), entry).expect("apply");
        }
        sm.storage().flush().expect("flush");
    }
    let sm = MetaStateMachine::new(Arc::new(
        SledKeyValueStorage::open(dir.path()).expect("reopen"),
    ));
    assert_eq!(sm.last_applied(), Some(pos(8)));
    assert_eq!(*sm.subscribe_revisions().borrow(), 5);
    let value = |k: &[u8]| {
        sm.storage()
            .get(k, None)
            .expect("get")
            .and_then(|e| e.value)
    };
    assert_eq!(value(b"cfg/a"), Some(b"cas".to_vec()));
    assert_eq!(value(b"cfg/b"), None);
}
