//! [`MetaStateMachine`]: the deterministic core the Raft state machine calls.
//!
//! Bytes in, bytes out: `apply` decodes a [`MetaCommand`], applies it once (a retried
//! command id gets its first response back) atomically with the log position, and encodes a
//! [`CommandResponse`]. Every replica that applies the same log produces the same state and
//! the same responses, invalid entries included.
use std::sync::Arc;

use tokio::sync::watch;

use crate::{
    command::{CommandOp, CommandResponse, MetaCommand},
    entry::LogPosition,
    error::Result,
    storage::{ApplyContext, KeyValueStorage, StorageSnapshot},
};

/// A full snapshot of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateMachineSnapshot {
    /// The last log position the snapshot includes.
    pub last_applied: Option<LogPosition>,
    /// The storage revision it holds.
    pub revision: u64,
    /// The encoded [`StorageSnapshot`].
    pub data: Vec<u8>,
}

/// The MetaStorage state machine over a [`KeyValueStorage`].
///
/// Calls are expected from one applying task; each method is still safe to call
/// concurrently (the storage serialises writers).
pub struct MetaStateMachine {
    storage: Arc<dyn KeyValueStorage>,
    revisions: watch::Sender<u64>,
}

impl std::fmt::Debug for MetaStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStateMachine")
            .field("revision", &self.storage.revision())
            .field("last_applied", &self.storage.last_applied())
            .finish()
    }
}

impl MetaStateMachine {
    /// A state machine over `storage` (which may hold state from before a restart).
    pub fn new(storage: Arc<dyn KeyValueStorage>) -> Self {
        let (revisions, _) = watch::channel(storage.revision());
        Self { storage, revisions }
    }

    /// The storage, for reads.
    pub fn storage(&self) -> &Arc<dyn KeyValueStorage> {
        &self.storage
    }

    /// The storage revision after each apply or restore (what wakes the watch processor).
    pub fn subscribe_revisions(&self) -> watch::Receiver<u64> {
        self.revisions.subscribe()
    }

    /// The last applied log position (persisted with the data).
    pub fn last_applied(&self) -> Option<LogPosition> {
        self.storage.last_applied()
    }

    /// Apply the log entry at `position` holding `command`; returns the encoded
    /// [`CommandResponse`]. An entry that does not decode changes nothing but the position
    /// and answers [`CommandResponse::Invalid`]. Errors are storage failures (fatal).
    pub fn apply(&self, position: LogPosition, command: &[u8]) -> Result<Vec<u8>> {
        let response = self.apply_one(position, command, true)?;
        self.publish();
        Ok(response)
    }

    /// Apply the commands of one log entry (a group commit) in order; one encoded
    /// [`CommandResponse`] per command, the same as applying them one by one. The storage
    /// applies them together ([`KeyValueStorage::apply_batch`]: one sled transaction) and
    /// records `position` with the last one: a storage that commits the batch atomically
    /// keeps all of it or none; one that commits command by command leaves the entry
    /// unrecorded after a crash part-way, so it is replayed and the commands already applied
    /// are recognised by their ids and answer their first outcome again.
    pub fn apply_batch(&self, position: LogPosition, commands: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        let position = self.monotonic(position);
        let mut items = Vec::with_capacity(commands.len() + 1);
        // per command: the index of its storage item, or why it is invalid
        let mut slots = Vec::with_capacity(commands.len());
        for command in commands {
            match MetaCommand::decode(command) {
                Ok(cmd) => {
                    slots.push(Ok(items.len()));
                    let ctx = ApplyContext {
                        id: Some(cmd.id),
                        position: None,
                    };
                    items.push((cmd.op, ctx));
                }
                Err(e) => {
                    tracing::warn!(index = position.index, term = position.term, error = %e, "log entry is not a metastorage command");
                    slots.push(Err(e.to_string()));
                }
            }
        }
        match (items.last_mut(), slots.last()) {
            // the last command is applied: it records the position
            (Some((_, ctx)), Some(Ok(_))) => ctx.position = Some(position),
            // it is not: an empty write after everything records it
            _ => items.push((
                CommandOp::Write { ops: Vec::new() },
                ApplyContext {
                    id: None,
                    position: Some(position),
                },
            )),
        }
        let outcomes = self.storage.apply_batch(&items);
        self.publish();
        let outcomes = outcomes?;
        slots
            .into_iter()
            .map(|slot| {
                let response = match slot {
                    Ok(i) => match outcomes.get(i) {
                        Some(outcome) => CommandResponse::Applied(*outcome),
                        None => {
                            return Err(crate::error::Error::Corrupt {
                                path: Default::default(),
                                reason: format!(
                                    "{} outcomes to a batch of {} commands",
                                    outcomes.len(),
                                    items.len()
                                ),
                            })
                        }
                    },
                    Err(reason) => CommandResponse::Invalid { reason },
                };
                response.encode()
            })
            .collect()
    }

    /// One command; records `position` only when `record`.
    fn apply_one(&self, position: LogPosition, command: &[u8], record: bool) -> Result<Vec<u8>> {
        let position = self.monotonic(position);
        let response = match MetaCommand::decode(command) {
            Ok(cmd) => {
                let ctx = ApplyContext {
                    id: Some(cmd.id),
                    position: record.then_some(position),
                };
                CommandResponse::Applied(self.storage.apply(&cmd.op, &ctx)?)
            }
            Err(e) => {
                tracing::warn!(index = position.index, term = position.term, error = %e, "log entry is not a metastorage command");
                if record {
                    self.storage.advance(position)?;
                }
                CommandResponse::Invalid {
                    reason: e.to_string(),
                }
            }
        };
        response.encode()
    }

    /// Record that the log reached `position` with an entry that is not a command (a blank
    /// or membership entry).
    pub fn advance(&self, position: LogPosition) -> Result<()> {
        self.storage.advance(self.monotonic(position))
    }

    /// A full snapshot of the current state, durable: Raft may purge the log up to the
    /// snapshot, so what the snapshot covers must not depend on the log any more.
    pub fn snapshot(&self) -> Result<StateMachineSnapshot> {
        self.snapshot_job()?()
    }

    /// Starts a [`snapshot`](Self::snapshot) of the state as of now (the cut) and returns
    /// the job that builds and encodes it, which may run while more commands are applied
    /// (see [`KeyValueStorage::snapshot_job`]).
    pub fn snapshot_job(&self) -> Result<Box<dyn FnOnce() -> Result<StateMachineSnapshot> + Send>> {
        let job = Arc::clone(&self.storage).snapshot_job()?;
        Ok(Box::new(move || {
            let s = job()?;
            Ok(StateMachineSnapshot {
                last_applied: s.last_applied,
                revision: s.revision,
                data: s.encode()?,
            })
        }))
    }

    /// Starts making the state as of now durable in the storage (the cut) and returns the
    /// job that finishes it, or `None` when the storage is not durable by itself (see
    /// [`KeyValueStorage::persist_job`]).
    pub fn persist_job(&self) -> Result<Option<crate::storage::PersistJob>> {
        Arc::clone(&self.storage).persist_job()
    }

    /// Replace the state with snapshot `data`, which includes the log up to `position`.
    pub fn restore(&self, position: LogPosition, data: &[u8]) -> Result<()> {
        let mut snapshot = StorageSnapshot::decode(data)?;
        snapshot.last_applied = Some(position);
        let revision = snapshot.revision;
        self.storage.restore(snapshot)?;
        tracing::info!(
            index = position.index,
            term = position.term,
            revision,
            "metastorage snapshot restored"
        );
        self.publish();
        Ok(())
    }

    /// Never move the applied position backwards (a re-delivered entry is deduplicated by
    /// its command id, its position is not re-recorded).
    fn monotonic(&self, position: LogPosition) -> LogPosition {
        match self.storage.last_applied() {
            Some(last) if last > position => last,
            _ => position,
        }
    }

    fn publish(&self) {
        let revision = self.storage.revision();
        self.revisions.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        command::{CommandId, CommandOp},
        storage::MemoryKeyValueStorage,
    };

    fn command(seq: u64, key: &str, value: &str) -> Vec<u8> {
        MetaCommand {
            id: CommandId::new(uuid::Uuid::from_u128(7), seq),
            op: CommandOp::put(key, value),
        }
        .encode()
        .expect("encode")
    }

    fn batch() -> Vec<Vec<u8>> {
        vec![
            command(1, "a", "1"),
            command(2, "b", "2"),
            b"\x01 not a command".to_vec(),
            command(1, "a", "retry of 1 must not apply"),
            command(3, "a", "3"),
        ]
    }

    #[test]
    fn a_batch_answers_like_single_applies_and_records_its_position_once() {
        let single = MetaStateMachine::new(Arc::new(MemoryKeyValueStorage::new()));
        let expected: Vec<Vec<u8>> = batch()
            .iter()
            .map(|c| single.apply(LogPosition::new(1, 1), c).expect("apply"))
            .collect();
        let batched = MetaStateMachine::new(Arc::new(MemoryKeyValueStorage::new()));
        let replies = batched
            .apply_batch(LogPosition::new(1, 1), &batch())
            .expect("apply batch");
        assert_eq!(replies, expected);
        assert_eq!(batched.last_applied(), Some(LogPosition::new(1, 1)));
        assert_eq!(batched.storage().revision(), 3);
        assert_eq!(*batched.subscribe_revisions().borrow(), 3);
        assert_eq!(
            batched.snapshot().expect("snapshot").data,
            single.snapshot().expect("snapshot").data
        );
    }

    #[test]
    fn a_batch_replayed_after_a_crash_part_way_applies_every_command_once() {
        let clean = MetaStateMachine::new(Arc::new(MemoryKeyValueStorage::new()));
        let expected = clean
            .apply_batch(LogPosition::new(2, 1), &batch())
            .expect("apply batch");

        let crashed = MetaStateMachine::new(Arc::new(MemoryKeyValueStorage::new()));
        crashed
            .apply(LogPosition::new(1, 1), &command(9, "z", "before"))
            .expect("apply");
        // the first two commands of the entry at index 2 commit, then the node dies
        for c in &batch()[..2] {
            crashed
                .apply_one(LogPosition::new(2, 1), c, false)
                .expect("apply");
        }
        assert_eq!(
            crashed.last_applied(),
            Some(LogPosition::new(1, 1)),
            "the entry is not recorded as applied: raft replays it"
        );
        let replayed = crashed
            .apply_batch(LogPosition::new(2, 1), &batch())
            .expect("replay");
        assert_eq!(crashed.last_applied(), Some(LogPosition::new(2, 1)));
        // every command applied exactly once: one revision more than the clean run (`z`)
        assert_eq!(crashed.storage().revision(), clean.storage().revision() + 1);
        let value = |sm: &MetaStateMachine, key: &str| {
            sm.storage()
                .get(key.as_bytes(), None)
                .expect("get")
                .and_then(|e| e.value)
        };
        for key in ["a", "b"] {
            assert_eq!(value(&crashed, key), value(&clean, key), "key {key}");
        }
        assert_eq!(replayed.len(), expected.len());
    }
}
