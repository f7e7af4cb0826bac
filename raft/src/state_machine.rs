//! The state-machine swap point: users (MetaStorage, table partitions) implement
//! [`StateMachine`] with plain bytes; [`StateMachineStore`] adapts it to openraft and keeps
//! the raft-only bits (the applied membership, snapshot metadata) in the group's log storage.
use std::{
    io::Cursor,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use lifecycle::BoxError;
use openraft::{
    storage::RaftStateMachine, AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot,
    StorageIOError,
};
use parking_lot::Mutex;

use crate::{
    log_store::{flush, read_meta, write_meta},
    storage::{LogStorage, MetaKey},
    types::{
        Command, Entry, LogId, LogPosition, Response, SnapshotMeta, StorageError, StoredMembership,
        TypeConfig,
    },
};

/// A replicated state machine: what a Raft group applies its committed commands to.
///
/// Every method is called from one group at a time; `apply` must be deterministic (every
/// replica reaches the same state from the same commands).
pub trait StateMachine: Send + Sync + 'static {
    /// Position of the last applied entry, persisted atomically with the state.
    fn last_applied(&self) -> Result<Option<LogPosition>, BoxError>;
    /// Apply one committed command, persisting its effect and `position` atomically.
    fn apply(&self, position: LogPosition, command: &[u8]) -> Result<Vec<u8>, BoxError>;
    /// Whether writes to the group may be batched: concurrent writes on the leader then
    /// share one log entry (one append and one fsync per replica) and are applied through
    /// [`apply_batch`](Self::apply_batch). Read once when the group starts. Default: no.
    fn batching(&self) -> bool {
        false
    }
    /// Apply the commands of one or more consecutive committed entries, in order, the last
    /// of them at `position`; one reply per command. Only a [`batching`](Self::batching)
    /// group is given several commands: the commands of one entry, or of every command
    /// entry openraft hands over together (one storage transaction for all of them).
    ///
    /// A crash part-way must not lose commands: either `position` is recorded only with the
    /// effect of the last command (so the whole entry is replayed, and replaying a command
    /// already applied changes nothing and gives its first reply), or the batch is applied
    /// atomically. The default applies each command with `position`, which is right only
    /// for a single command.
    fn apply_batch(
        &self,
        position: LogPosition,
        commands: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, BoxError> {
        commands.iter().map(|c| self.apply(position, c)).collect()
    }
    /// An entry without a command (blank, membership) still advances `last_applied`.
    fn advance(&self, position: LogPosition) -> Result<(), BoxError>;
    /// The full state as of `last_applied`, for a snapshot.
    fn snapshot(&self) -> Result<Vec<u8>, BoxError>;
    /// Replace the full state with a snapshot taken at `position`.
    fn restore(&self, position: LogPosition, data: &[u8]) -> Result<(), BoxError>;
}

struct Shared {
    group: String,
    sm: Arc<dyn StateMachine>,
    storage: Arc<dyn LogStorage>,
    /// Serializes the user state machine: a snapshot never interleaves with an apply.
    lock: Mutex<()>,
    current: Mutex<Option<(SnapshotMeta, Vec<u8>)>>,
    seq: AtomicU64,
    /// [`StateMachine::batching`], read once.
    batching: bool,
}

/// openraft's view of a user [`StateMachine`]. Cheap to clone (the snapshot builder is one).
#[derive(Clone)]
pub(crate) struct StateMachineStore {
    shared: Arc<Shared>,
}

fn sm_err(group: &str, what: &str, e: &BoxError) -> AnyError {
    AnyError::error(format!("state machine of raft group {group}: {what}: {e}"))
}

impl StateMachineStore {
    pub(crate) fn new(
        group: &str,
        sm: Arc<dyn StateMachine>,
        storage: Arc<dyn LogStorage>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                group: group.to_owned(),
                batching: sm.batching(),
                sm,
                storage,
                lock: Mutex::new(()),
                current: Mutex::new(None),
                seq: AtomicU64::new(0),
            }),
        }
    }

    /// The full log id of an applied position: the user state machine keeps (index, term);
    /// the leader's node id comes from the applied-id hint, the log, or the purge point.
    fn resolve(&self, pos: LogPosition) -> Result<LogId, AnyError> {
        let storage = self.shared.storage.as_ref();
        let matches = |id: &LogId| LogPosition::from(id) == pos;
        if let Some(id) = read_meta::<LogId>(storage, MetaKey::AppliedHint)? {
            if matches(&id) {
                return Ok(id);
            }
        }
        let next = pos.index.saturating_add(1);
        let raw = storage
            .range(pos.index, next)
            .map_err(|e| AnyError::new(&e))?;
        if let Some((_, bytes)) = raw.first() {
            let entry: Entry = crate::log_store::decode(bytes)?;
            if matches(&entry.log_id) {
                return Ok(entry.log_id);
            }
        }
        if let Some(id) = read_meta::<LogId>(storage, MetaKey::LastPurged)? {
            if matches(&id) {
                return Ok(id);
            }
        }
        Ok(LogId::new(
            openraft::CommittedLeaderId::new(pos.term, 0),
            pos.index,
        ))
    }

    fn applied(&self) -> Result<(Option<LogId>, StoredMembership), AnyError> {
        let shared = &self.shared;
        let last = shared
            .sm
            .last_applied()
            .map_err(|e| sm_err(&shared.group, "read last applied", &e))?;
        let last = match last {
            Some(pos) => Some(self.resolve(pos)?),
            None => None,
        };
        let membership: StoredMembership =
            read_meta(shared.storage.as_ref(), MetaKey::AppliedMembership)?.unwrap_or_default();
        Ok((last, membership))
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, AnyError> {
        let shared = &self.shared;
        let _serial = shared.lock.lock();
        let (last, membership) = self.applied()?;
        let data = shared
            .sm
            .snapshot()
            .map_err(|e| sm_err(&shared.group, "build snapshot", &e))?;
        let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last {
            Some(last) => format!("{}-{}-{seq}", last.leader_id.term, last.index),
            None => format!("empty-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id,
        };
        tracing::info!(
            group_id = %shared.group,
            index = last.map(|l| l.index),
            bytes = data.len(),
            "built snapshot"
        );
        *shared.current.lock() = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// `commands` of one entry (or of a run of entries ending at `id`) through `apply_batch`:
/// one reply per command, or a storage error.
fn apply_commands(
    shared: &Shared,
    id: LogId,
    commands: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, StorageError> {
    let replies = shared
        .sm
        .apply_batch(LogPosition::from(&id), commands)
        .map_err(|e| StorageIOError::apply(id, sm_err(&shared.group, "apply batch", &e)))?;
    if replies.len() != commands.len() {
        let e: BoxError =
            format!("{} replies to {} commands", replies.len(), commands.len()).into();
        return Err(StorageIOError::apply(id, sm_err(&shared.group, "apply batch", &e)).into());
    }
    Ok(replies)
}

/// Runs a state-machine apply on tokio's blocking pool: storage writes may block on the disk
/// (sled writes out its log buffers on the calling thread when its I/O pool is busy), and a
/// runtime worker blocked there would stall every other group's tasks on it.
async fn off_runtime<T: Send + 'static>(
    id: LogId,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        StorageError::from(StorageIOError::apply(
            id,
            AnyError::error(format!("state machine apply task failed: {e}")),
        ))
    })?
}

/// Consecutive committed command entries of a batching group, gathered so that one
/// `apply_batch` (one storage transaction) applies all of them, recorded at the last one's
/// position; the replies are split back per entry.
#[derive(Default)]
struct CommandRun {
    commands: Vec<Vec<u8>>,
    /// Per entry: how many of `commands` it holds.
    sizes: Vec<usize>,
    last: Option<LogId>,
}

impl CommandRun {
    fn push(&mut self, id: LogId, command: Command) {
        let before = self.commands.len();
        match command {
            Command::One(c) => self.commands.push(c),
            Command::Batch(cs) => self.commands.extend(cs),
        }
        self.sizes.push(self.commands.len() - before);
        self.last = Some(id);
    }

    /// Applies the gathered entries (if any) and appends one response per entry.
    async fn apply(
        &mut self,
        shared: &Arc<Shared>,
        replies: &mut Vec<Response>,
    ) -> Result<(), StorageError> {
        let Some(id) = self.last.take() else {
            return Ok(());
        };
        let commands = std::mem::take(&mut self.commands);
        let all = {
            let shared = Arc::clone(shared);
            off_runtime(id, move || {
                let _serial = shared.lock.lock();
                apply_commands(&shared, id, &commands)
            })
            .await?
        };
        let mut all = all.into_iter();
        for size in self.sizes.drain(..) {
            replies.push(Response(all.by_ref().take(size).collect()));
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        Ok(self.build().map_err(StorageIOError::read_state_machine)?)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let _serial = self.shared.lock.lock();
        Ok(self.applied().map_err(StorageIOError::read_state_machine)?)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let shared = Arc::clone(&self.shared);
        let storage = shared.storage.as_ref();
        let mut replies = Vec::new();
        let mut last = None;
        // consecutive command entries of a batching group: applied with one `apply_batch`
        let mut run = CommandRun::default();
        for entry in entries {
            let id = entry.log_id;
            let pos = LogPosition::from(&id);
            match entry.payload {
                EntryPayload::Normal(command) if shared.batching => {
                    run.push(id, command);
                }
                EntryPayload::Normal(Command::One(command)) => {
                    let shared = Arc::clone(&shared);
                    let reply = off_runtime(id, move || {
                        let _serial = shared.lock.lock();
                        shared.sm.apply(pos, &command).map_err(|e| {
                            StorageIOError::apply(id, sm_err(&shared.group, "apply", &e)).into()
                        })
                    })
                    .await?;
                    replies.push(Response(vec![reply]));
                }
                EntryPayload::Normal(batch @ Command::Batch(_)) => {
                    // a run of one entry: its commands apply together at its position
                    let mut one = CommandRun::default();
                    one.push(id, batch);
                    one.apply(&shared, &mut replies).await?;
                }
                EntryPayload::Membership(membership) => {
                    run.apply(&shared, &mut replies).await?;
                    // the membership first: a crash before `advance` re-applies this entry
                    let stored = StoredMembership::new(Some(id), membership);
                    write_meta(storage, MetaKey::AppliedMembership, &stored)
                        .map_err(|e| StorageIOError::apply(id, e))?;
                    flush(storage)
                        .await
                        .map_err(|e| StorageIOError::apply(id, e))?;
                    let _serial = shared.lock.lock();
                    shared.sm.advance(pos).map_err(|e| {
                        StorageIOError::apply(id, sm_err(&shared.group, "advance", &e))
                    })?;
                    replies.push(Response(Vec::new()));
                }
                EntryPayload::Blank => {
                    run.apply(&shared, &mut replies).await?;
                    let _serial = shared.lock.lock();
                    shared.sm.advance(pos).map_err(|e| {
                        StorageIOError::apply(id, sm_err(&shared.group, "advance", &e))
                    })?;
                    replies.push(Response(Vec::new()));
                }
            }
            last = Some(id);
        }
        run.apply(&shared, &mut replies).await?;
        if let Some(id) = last {
            write_meta(storage, MetaKey::AppliedHint, &id)
                .map_err(|e| StorageIOError::apply(id, e))?;
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.shared);
        let storage = shared.storage.as_ref();
        let data = snapshot.into_inner();
        let write_err = |e| StorageIOError::write_snapshot(Some(meta.signature()), e);
        write_meta(storage, MetaKey::AppliedMembership, &meta.last_membership)
            .map_err(write_err)?;
        if let Some(id) = meta.last_log_id {
            write_meta(storage, MetaKey::AppliedHint, &id).map_err(write_err)?;
        }
        flush(storage).await.map_err(write_err)?;
        if let Some(id) = &meta.last_log_id {
            let _serial = shared.lock.lock();
            shared
                .sm
                .restore(LogPosition::from(id), &data)
                .map_err(|e| write_err(sm_err(&shared.group, "restore snapshot", &e)))?;
        }
        tracing::info!(group_id = %shared.group, snapshot_id = %meta.snapshot_id, bytes = data.len(), "installed snapshot");
        *shared.current.lock() = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // Kept in memory only: after a restart openraft rebuilds one when logs were purged.
        let current = self.shared.current.lock().clone();
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::{storage::MemoryLogStorage, testing::MemoryStateMachine};

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload,
        }
    }

    fn reply(bytes: &[u8]) -> Option<String> {
        MemoryStateMachine::decode_reply(bytes)
    }

    #[tokio::test]
    async fn batch_entries_answer_every_command_in_order() {
        let sm = Arc::new(MemoryStateMachine::new());
        let mut store = StateMachineStore::new(
            "g",
            Arc::clone(&sm) as Arc<dyn StateMachine>,
            Arc::new(MemoryLogStorage::new()),
        );
        let entries = vec![
            entry(
                1,
                EntryPayload::Normal(Command::One(MemoryStateMachine::put("a", "1"))),
            ),
            entry(2, EntryPayload::Blank),
            entry(
                3,
                EntryPayload::Normal(Command::Batch(vec![
                    MemoryStateMachine::put("a", "2"),
                    MemoryStateMachine::put("b", "1"),
                    MemoryStateMachine::put("a", "3"),
                ])),
            ),
        ];
        let responses = store.apply(entries).await.unwrap();
        let decoded: Vec<Vec<Option<String>>> = responses
            .iter()
            .map(|r| r.0.iter().map(|b| reply(b)).collect())
            .collect();
        assert_eq!(
            decoded,
            vec![
                vec![None],
                vec![],
                vec![Some("1".into()), None, Some("2".into())]
            ]
        );
        assert_eq!(sm.get("a"), Some("3".into()));
        assert_eq!(sm.commands_applied(), 4);
        assert_eq!(sm.applied_index(), 3);
        let (applied, _) = store.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
    }

    #[tokio::test]
    async fn a_wrong_number_of_batch_replies_is_a_storage_error() {
        let short = Recording {
            short: true,
            ..Recording::default()
        };
        let mut store =
            StateMachineStore::new("g", Arc::new(short), Arc::new(MemoryLogStorage::new()));
        let batch = entry(
            1,
            EntryPayload::Normal(Command::Batch(vec![b"x".to_vec(), b"y".to_vec()])),
        );
        let err = store.apply(vec![batch]).await.unwrap_err();
        assert!(err.to_string().contains("1 replies to 2 commands"), "{err}");
    }

    /// Records each `apply_batch` call (position, command count); echoes every command, or,
    /// when `short`, answers one reply too few.
    #[derive(Default)]
    struct Recording {
        calls: Mutex<Vec<(u64, usize)>>,
        short: bool,
    }

    impl StateMachine for Recording {
        fn last_applied(&self) -> Result<Option<LogPosition>, BoxError> {
            Ok(None)
        }
        fn apply(&self, _: LogPosition, c: &[u8]) -> Result<Vec<u8>, BoxError> {
            Ok(c.to_vec())
        }
        fn batching(&self) -> bool {
            true
        }
        fn apply_batch(&self, p: LogPosition, c: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, BoxError> {
            self.calls.lock().push((p.index, c.len()));
            let n = if self.short {
                c.len().saturating_sub(1)
            } else {
                c.len()
            };
            Ok(c[..n].to_vec())
        }
        fn advance(&self, _: LogPosition) -> Result<(), BoxError> {
            Ok(())
        }
        fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
            Ok(Vec::new())
        }
        fn restore(&self, _: LogPosition, _: &[u8]) -> Result<(), BoxError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn consecutive_command_entries_of_a_batching_group_apply_together() {
        let sm = Arc::new(Recording::default());
        let mut store = StateMachineStore::new(
            "g",
            Arc::clone(&sm) as Arc<dyn StateMachine>,
            Arc::new(MemoryLogStorage::new()),
        );
        let one = |i: u64, c: &[u8]| entry(i, EntryPayload::Normal(Command::One(c.to_vec())));
        let batch = |i: u64, cs: &[&[u8]]| {
            entry(
                i,
                EntryPayload::Normal(Command::Batch(cs.iter().map(|c| c.to_vec()).collect())),
            )
        };
        let entries = vec![
            one(1, b"a"),
            batch(2, &[b"b", b"c"]),
            one(3, b"d"),
            entry(4, EntryPayload::Blank),
            batch(5, &[b"e", b"f"]),
            one(6, b"g"),
        ];
        let responses = store.apply(entries).await.unwrap();
        let got: Vec<Vec<Vec<u8>>> = responses.into_iter().map(|r| r.0).collect();
        let want: Vec<Vec<Vec<u8>>> = vec![
            vec![b"a".to_vec()],
            vec![b"b".to_vec(), b"c".to_vec()],
            vec![b"d".to_vec()],
            vec![],
            vec![b"e".to_vec(), b"f".to_vec()],
            vec![b"g".to_vec()],
        ];
        assert_eq!(
            got, want,
            "one response per entry, each with its own replies"
        );
        // entries 1-3 in one call at position 3, the blank apart, entries 5-6 at position 6
        assert_eq!(*sm.calls.lock(), vec![(3, 4), (6, 3)]);
    }
}
