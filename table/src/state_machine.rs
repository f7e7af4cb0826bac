//! [`PartitionStateMachine`]: applies [`PartitionCommand`]s from a partition's Raft log to
//! its [`PartitionStorage`], with a bounded window of command ids for idempotent retries.
//!
//! The window lives in the partition's meta keys, written in the same batch as the rows and
//! the applied position, so it survives restarts and travels in snapshots:
//! `c<command id>` -> (sequence, encoded response), `s<sequence>` -> command id, `n` -> the
//! last sequence. Sequence `n` evicts `n - window`. Every replica must use the same window.
use std::{collections::HashMap, sync::Arc};

use lifecycle::BoxError;
use raft::{LogPosition, StateMachine};

use crate::{
    command::{CommandId, PartitionCommand, PartitionOp, PartitionResponse},
    error::{Error, Result},
    storage::{PartitionStorage, WriteBatch},
};

/// How many command ids a partition remembers for idempotent retries, unless told otherwise.
pub const DEFAULT_COMMAND_WINDOW: u64 = 10_000;

const COMMAND_PREFIX: u8 = b'c';
const SEQ_PREFIX: u8 = b's';
const LAST_SEQ_KEY: &[u8] = b"n";

fn command_key(id: CommandId) -> Vec<u8> {
    let mut key = vec![COMMAND_PREFIX];
    key.extend_from_slice(&id.to_bytes());
    key
}

fn seq_key(seq: u64) -> Vec<u8> {
    let mut key = vec![SEQ_PREFIX];
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn encode_u64(what: &'static str, value: &impl serde::Serialize) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Rows as a command sees them: its own earlier changes over the storage.
struct Overlay<'a> {
    storage: &'a dyn PartitionStorage,
    changed: HashMap<Vec<u8>, Option<Vec<u8>>>,
    batch: WriteBatch,
}

impl<'a> Overlay<'a> {
    fn new(storage: &'a dyn PartitionStorage) -> Self {
        Self {
            storage,
            changed: HashMap::new(),
            batch: WriteBatch::new(),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.changed.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.storage.get(key),
        }
    }

    fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.changed.insert(key.clone(), value.clone());
        self.batch.rows.push((key, value));
    }
}

/// The replicated state machine of one partition.
pub struct PartitionStateMachine {
    table_id: String,
    partition: u32,
    storage: Arc<dyn PartitionStorage>,
    window: u64,
}

impl std::fmt::Debug for PartitionStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionStateMachine")
            .field("table_id", &self.table_id)
            .field("partition", &self.partition)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl PartitionStateMachine {
    /// The state machine of `table_id`/`partition` over `storage`, with the default window.
    pub fn new(table_id: &str, partition: u32, storage: Arc<dyn PartitionStorage>) -> Self {
        Self::with_command_window(table_id, partition, storage, DEFAULT_COMMAND_WINDOW)
    }

    /// The same with a window of `window` command ids (at least 1).
    pub fn with_command_window(
        table_id: &str,
        partition: u32,
        storage: Arc<dyn PartitionStorage>,
        window: u64,
    ) -> Self {
        Self {
            table_id: table_id.to_owned(),
            partition,
            storage,
            window: window.max(1),
        }
    }

    /// The storage this state machine applies to (for local reads).
    pub fn storage(&self) -> &Arc<dyn PartitionStorage> {
        &self.storage
    }

    /// The table id.
    pub fn table_id(&self) -> &str {
        &self.table_id
    }

    /// The partition number.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The remembered response of command `id`, if it is in the window.
    pub fn remembered(&self, id: CommandId) -> Result<Option<PartitionResponse>> {
        let Some(raw) = self.storage.meta(&command_key(id))? else {
            return Ok(None);
        };
        let (_seq, response): (u64, Vec<u8>) =
            postcard::from_bytes(&raw).map_err(|e| Error::decode("command record", e))?;
        PartitionResponse::decode(&response).map(Some)
    }

    /// Applies one encoded command at `position` and returns the response.
    pub fn apply_command(
        &self,
        position: LogPosition,
        command: &[u8],
    ) -> Result<PartitionResponse> {
        self.apply_one(position, command, true)
    }

    /// Applies one command; records `position` with its effects only when `record` (the
    /// last command of an entry): a crash before the last command replays the whole entry,
    /// and the commands applied before answer from the command-id window, unchanged.
    fn apply_one(
        &self,
        position: LogPosition,
        command: &[u8],
        record: bool,
    ) -> Result<PartitionResponse> {
        let command = match PartitionCommand::decode(command) {
            Ok(command) => command,
            Err(e) => {
                tracing::warn!(
                    table_id = %self.table_id,
                    partition = self.partition,
                    index = position.index,
                    error = %e,
                    "invalid partition command in the log"
                );
                if record {
                    let mut batch = WriteBatch::new();
                    batch.applied_at(position);
                    self.storage.apply(batch)?;
                }
                return Ok(PartitionResponse::Invalid {
                    reason: e.to_string(),
                });
            }
        };
        if let Some(response) = self.remembered(command.id)? {
            tracing::debug!(
                table_id = %self.table_id,
                partition = self.partition,
                client = %command.id.client,
                seq = command.id.seq,
                "command applied before; answering the first response"
            );
            if record {
                let mut batch = WriteBatch::new();
                batch.applied_at(position);
                self.storage.apply(batch)?;
            }
            return Ok(response);
        }
        let mut overlay = Overlay::new(self.storage.as_ref());
        let response = match command.op {
            PartitionOp::Upsert { rows } => {
                for (key, value) in rows {
                    overlay.set(key, Some(value));
                }
                PartitionResponse::Done
            }
            PartitionOp::Delete { keys } => {
                let mut existed = Vec::with_capacity(keys.len());
                for key in keys {
                    let found = overlay.get(&key)?.is_some();
                    if found {
                        overlay.set(key, None);
                    }
                    existed.push(found);
                }
                PartitionResponse::Deleted(existed)
            }
            PartitionOp::GetAndDelete { key } => {
                let previous = overlay.get(&key)?;
                if previous.is_some() {
                    overlay.set(key, None);
                }
                PartitionResponse::Previous(previous)
            }
            PartitionOp::GetAndUpsert { key, value } => {
                let previous = overlay.get(&key)?;
                overlay.set(key, Some(value));
                PartitionResponse::Previous(previous)
            }
            PartitionOp::Insert { key, value } => {
                let absent = overlay.get(&key)?.is_none();
                if absent {
                    overlay.set(key, Some(value));
                }
                PartitionResponse::Inserted(absent)
            }
        };
        let mut batch = overlay.batch;
        self.remember(&mut batch, command.id, &response)?;
        if record {
            batch.applied_at(position);
        }
        self.storage.apply(batch)?;
        Ok(response)
    }

    /// Adds the window bookkeeping for `id` to `batch`, evicting the oldest id when full.
    fn remember(
        &self,
        batch: &mut WriteBatch,
        id: CommandId,
        response: &PartitionResponse,
    ) -> Result<()> {
        let last: u64 = match self.storage.meta(LAST_SEQ_KEY)? {
            Some(raw) => {
                postcard::from_bytes(&raw).map_err(|e| Error::decode("command sequence", e))?
            }
            None => 0,
        };
        let seq = last + 1;
        let record = encode_u64("command record", &(seq, response.encode()?))?;
        batch.put_meta(command_key(id), record);
        batch.put_meta(seq_key(seq), id.to_bytes().to_vec());
        batch.put_meta(LAST_SEQ_KEY.to_vec(), encode_u64("command sequence", &seq)?);
        if seq > self.window {
            let evicted = seq - self.window;
            if let Some(raw) = self.storage.meta(&seq_key(evicted))? {
                if let Some(old) = CommandId::from_bytes(&raw) {
                    batch.delete_meta(command_key(old));
                }
                batch.delete_meta(seq_key(evicted));
            }
        }
        Ok(())
    }
}

impl StateMachine for PartitionStateMachine {
    fn last_applied(&self) -> Result<Option<LogPosition>, BoxError> {
        Ok(self.storage.last_applied()?)
    }

    fn apply(&self, position: LogPosition, command: &[u8]) -> Result<Vec<u8>, BoxError> {
        Ok(self.apply_command(position, command)?.encode()?)
    }

    /// Concurrent writes to a partition share one log entry (one append and flush per
    /// replica); every command carries an id, so replaying an entry is safe.
    fn batching(&self) -> bool {
        true
    }

    fn apply_batch(
        &self,
        position: LogPosition,
        commands: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, BoxError> {
        let last = commands.len().saturating_sub(1);
        let mut replies = Vec::with_capacity(commands.len());
        for (i, command) in commands.iter().enumerate() {
            replies.push(self.apply_one(position, command, i == last)?.encode()?);
        }
        if commands.is_empty() {
            self.advance(position)?;
        }
        Ok(replies)
    }

    fn advance(&self, position: LogPosition) -> Result<(), BoxError> {
        let mut batch = WriteBatch::new();
        batch.applied_at(position);
        Ok(self.storage.apply(batch)?)
    }

    fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.storage.snapshot()?)
    }

    fn restore(&self, position: LogPosition, data: &[u8]) -> Result<(), BoxError> {
        self.storage.restore(data)?;
        let mut batch = WriteBatch::new();
        batch.applied_at(position);
        self.storage.apply(batch)?;
        tracing::info!(
            table_id = %self.table_id,
            partition = self.partition,
            index = position.index,
            "restored partition from a snapshot"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryPartitionStorage;

    fn pos(index: u64) -> LogPosition {
        LogPosition { index, term: 1 }
    }

    fn run(
        sm: &PartitionStateMachine,
        index: u64,
        command: &PartitionCommand,
    ) -> PartitionResponse {
        sm.apply_command(pos(index), &command.encode().expect("encode"))
            .expect("apply")
    }

    fn id(seq: u64) -> CommandId {
        CommandId::new(uuid::Uuid::from_u128(5), seq)
    }

    #[test]
    fn a_batch_replayed_after_a_crash_part_way_applies_each_command_once() {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let sm = PartitionStateMachine::new("t", 0, Arc::clone(&storage));
        let insert = |seq: u64, key: &[u8]| {
            PartitionCommand::new(
                id(seq),
                PartitionOp::Insert {
                    key: key.to_vec(),
                    value: b"v".to_vec(),
                },
            )
            .encode()
            .expect("encode")
        };
        let entry = vec![insert(1, b"a"), insert(2, b"b"), insert(3, b"a")];
        StateMachine::advance(&sm, pos(4)).expect("advance");
        // a crash after the first command: its effect is stored, the entry's position is not
        assert_eq!(
            sm.apply_one(pos(5), &entry[0], false).expect("apply"),
            PartitionResponse::Inserted(true)
        );
        assert_eq!(storage.last_applied().expect("read"), Some(pos(4)));
        // the whole entry is applied again after the restart: the first command answers
        // from the window, the others apply once
        let replies = sm.apply_batch(pos(5), &entry).expect("replay");
        let replies: Vec<PartitionResponse> = replies
            .iter()
            .map(|r| PartitionResponse::decode(r).expect("reply"))
            .collect();
        assert_eq!(
            replies,
            [
                PartitionResponse::Inserted(true),
                PartitionResponse::Inserted(true),
                PartitionResponse::Inserted(false),
            ]
        );
        assert_eq!(storage.last_applied().expect("read"), Some(pos(5)));
        assert!(sm.batching(), "partition writes share log entries");
    }

    #[test]
    fn ops_answer_and_change_rows() {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let sm = PartitionStateMachine::new("t", 0, Arc::clone(&storage));
        let upsert = PartitionOp::Upsert {
            rows: vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"a".to_vec(), b"2".to_vec()),
            ],
        };
        assert_eq!(
            run(&sm, 1, &PartitionCommand::new(id(1), upsert)),
            PartitionResponse::Done
        );
        assert_eq!(storage.get(b"a").expect("get"), Some(b"2".to_vec()));
        let insert = PartitionOp::Insert {
            key: b"a".to_vec(),
            value: b"3".to_vec(),
        };
        assert_eq!(
            run(&sm, 2, &PartitionCommand::new(id(2), insert)),
            PartitionResponse::Inserted(false)
        );
        let swap = PartitionOp::GetAndUpsert {
            key: b"a".to_vec(),
            value: b"4".to_vec(),
        };
        assert_eq!(
            run(&sm, 3, &PartitionCommand::new(id(3), swap)),
            PartitionResponse::Previous(Some(b"2".to_vec()))
        );
        let delete = PartitionOp::Delete {
            keys: vec![b"a".to_vec(), b"a".to_vec(), b"zz".to_vec()],
        };
        assert_eq!(
            run(&sm, 4, &PartitionCommand::new(id(4), delete)),
            PartitionResponse::Deleted(vec![true, false, false])
        );
        let take = PartitionOp::GetAndDelete { key: b"a".to_vec() };
        assert_eq!(
            run(&sm, 5, &PartitionCommand::new(id(5), take)),
            PartitionResponse::Previous(None)
        );
        assert_eq!(storage.last_applied().expect("applied"), Some(pos(5)));
        assert!(storage.is_empty().expect("empty"));
    }

    #[test]
    fn a_retried_command_applies_once_within_the_window() {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let sm = PartitionStateMachine::with_command_window("t", 0, Arc::clone(&storage), 2);
        let insert = |v: &str| PartitionOp::Insert {
            key: b"k".to_vec(),
            value: v.as_bytes().to_vec(),
        };
        let first = PartitionCommand::new(id(1), insert("1"));
        assert_eq!(run(&sm, 1, &first), PartitionResponse::Inserted(true));
        // a retry answers the first response even though the key now exists
        assert_eq!(run(&sm, 2, &first), PartitionResponse::Inserted(true));
        assert_eq!(storage.get(b"k").expect("get"), Some(b"1".to_vec()));
        let delete = |seq| {
            PartitionCommand::new(
                id(seq),
                PartitionOp::Delete {
                    keys: vec![b"x".to_vec()],
                },
            )
        };
        run(&sm, 3, &delete(2));
        run(&sm, 4, &delete(3));
        // the window of 2 evicted command 1: it is applied again
        assert_eq!(sm.remembered(id(1)).expect("read"), None);
        assert_eq!(run(&sm, 5, &first), PartitionResponse::Inserted(false));
        assert!(sm.remembered(id(3)).expect("read").is_some());
    }

    #[test]
    fn garbage_in_the_log_is_invalid_and_advances() {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let sm = PartitionStateMachine::new("t", 0, Arc::clone(&storage));
        let response = sm.apply_command(pos(9), &[1, 255, 255]).expect("apply");
        assert!(matches!(response, PartitionResponse::Invalid { .. }));
        assert_eq!(storage.last_applied().expect("applied"), Some(pos(9)));
    }
}
