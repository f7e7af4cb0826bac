//! [`PartitionStateMachine`]: applies [`PartitionCommand`]s from a partition's Raft log to
//! its [`PartitionStorage`], with a bounded window of command ids for idempotent retries
//! (see [`crate::window`] for its layout).
use std::{collections::HashMap, sync::Arc};

use lifecycle::BoxError;
use parking_lot::Mutex;
use raft::{LogPosition, StateMachine};

use crate::{
    command::{CommandId, PartitionCommand, PartitionOp, PartitionResponse},
    error::{Error, Result},
    storage::{PartitionStorage, WriteBatch},
    window::Index,
};

/// How many command ids a partition remembers for idempotent retries, unless told otherwise.
pub const DEFAULT_COMMAND_WINDOW: u64 = 10_000;

/// Rows and meta keys as a command sees them: the changes of the commands before it in the
/// same batch over the storage. [`into_batch`](Self::into_batch) makes them one
/// [`WriteBatch`] (the last change of each key).
pub(crate) struct Overlay<'a> {
    storage: &'a dyn PartitionStorage,
    rows: HashMap<Vec<u8>, Option<Vec<u8>>>,
    meta: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Overlay<'a> {
    pub(crate) fn new(storage: &'a dyn PartitionStorage) -> Self {
        Self {
            storage,
            rows: HashMap::new(),
            meta: HashMap::new(),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.rows.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.storage.get(key),
        }
    }

    fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.rows.insert(key, value);
    }

    pub(crate) fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.meta.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.storage.meta(key),
        }
    }

    /// Meta key `key`'s value to change in place (it joins the batch as it is left).
    pub(crate) fn meta_mut(&mut self, key: &[u8]) -> Result<&mut Option<Vec<u8>>> {
        if !self.meta.contains_key(key) {
            let value = self.storage.meta(key)?;
            self.meta.insert(key.to_vec(), value);
        }
        Ok(self.meta.entry(key.to_vec()).or_default())
    }

    pub(crate) fn put_meta(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.meta.insert(key, Some(value));
    }

    pub(crate) fn delete_meta(&mut self, key: Vec<u8>) {
        self.meta.insert(key, None);
    }

    fn into_batch(self) -> WriteBatch {
        WriteBatch {
            rows: self.rows.into_iter().collect(),
            meta: self.meta.into_iter().collect(),
            applied: None,
        }
    }
}

/// The replicated state machine of one partition.
pub struct PartitionStateMachine {
    table_id: String,
    partition: u32,
    storage: Arc<dyn PartitionStorage>,
    window: u64,
    /// The window's in-memory index, built at the first use (`None` again after a restore
    /// or a failed apply, so that it is rebuilt from what the storage holds).
    index: Mutex<Option<Index>>,
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
            index: Mutex::new(None),
        }
    }

    /// Runs `f` with the window's index, built first if needed; a failure drops the index,
    /// which may have run ahead of the storage.
    fn with_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let mut slot = self.index.lock();
        let index = match &mut *slot {
            Some(index) => index,
            None => slot.insert(Index::load(self.storage.as_ref())?),
        };
        let result = f(index);
        if result.is_err() {
            *slot = None;
        }
        result
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
        self.with_index(|index| index.lookup(&Overlay::new(self.storage.as_ref()), id, self.window))
    }

    /// Applies one encoded command at `position` and returns the response.
    pub fn apply_command(
        &self,
        position: LogPosition,
        command: &[u8],
    ) -> Result<PartitionResponse> {
        let mut responses =
            self.apply_commands(position, std::slice::from_ref(&command.to_vec()))?;
        responses.pop().ok_or_else(|| Error::Encode {
            what: "partition response",
            reason: "no response to a command".into(),
        })
    }

    /// Applies `commands` in order, each seeing the ones before it, and records `position`:
    /// ONE storage batch for all of them (one sled write), so a crash keeps all or none.
    fn apply_commands(
        &self,
        position: LogPosition,
        commands: &[Vec<u8>],
    ) -> Result<Vec<PartitionResponse>> {
        self.with_index(|index| {
            let mut overlay = Overlay::new(self.storage.as_ref());
            let responses = commands
                .iter()
                .map(|command| self.apply_one(&mut overlay, index, position, command))
                .collect::<Result<Vec<_>>>()?;
            let mut batch = overlay.into_batch();
            batch.applied_at(position);
            self.storage.apply(batch)?;
            Ok(responses)
        })
    }

    /// Plans one command over `overlay` (its writes and window bookkeeping join the batch).
    fn apply_one(
        &self,
        overlay: &mut Overlay<'_>,
        index: &mut Index,
        position: LogPosition,
        command: &[u8],
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
                return Ok(PartitionResponse::Invalid {
                    reason: e.to_string(),
                });
            }
        };
        if let Some(response) = index.lookup(overlay, command.id, self.window)? {
            tracing::debug!(
                table_id = %self.table_id,
                partition = self.partition,
                client = %command.id.client,
                seq = command.id.seq,
                "command applied before; answering the first response"
            );
            return Ok(response);
        }
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
        index.remember(overlay, command.id, &response, self.window)?;
        Ok(response)
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
    /// replica); the commands of an entry (or of consecutive entries) apply as one storage
    /// batch with the position, and every command carries an id, so replaying is safe.
    fn batching(&self) -> bool {
        true
    }

    /// One storage batch for all `commands` (rows, window bookkeeping and `position`).
    fn apply_batch(
        &self,
        position: LogPosition,
        commands: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, BoxError> {
        let responses = self.apply_commands(position, commands)?;
        Ok(responses
            .iter()
            .map(PartitionResponse::encode)
            .collect::<Result<Vec<_>>>()?)
    }

    /// Applies go to the storage's in-memory layer: they wait on the disk only when its
    /// write-behind backlog is full.
    fn apply_would_wait(&self, _commands: &[Vec<u8>]) -> bool {
        self.storage.apply_would_wait()
    }

    fn advance(&self, position: LogPosition) -> Result<(), BoxError> {
        let mut batch = WriteBatch::new();
        batch.applied_at(position);
        Ok(self.storage.apply(batch)?)
    }

    fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.storage.snapshot()?)
    }

    /// A sled partition persists itself: its rows are exported only for a follower.
    fn persist_job(&self) -> Result<Option<raft::PersistJob>, BoxError> {
        let Some(job) = self.storage.persist_job()? else {
            return Ok(None);
        };
        Ok(Some(Box::new(move || Ok(job()?))))
    }

    fn restore(&self, position: LogPosition, data: &[u8]) -> Result<(), BoxError> {
        // the window's index is rebuilt from the restored blocks at the next use
        let mut index = self.index.lock();
        *index = None;
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
    use crate::window::{
        append_record, command_key, decode_id_block, id_block_key, id_in_block, seq_key,
        walk_block, window_block_key, INLINE_LIMIT, LAST_SEQ_KEY, SEQS_PER_BLOCK,
    };

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
    fn a_batch_applies_as_one_and_a_replay_answers_from_the_window() {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let sm = PartitionStateMachine::new("t", 0, Arc::clone(&storage));
        let insert = |seq: u64, key: &[u8], value: &[u8]| {
            PartitionCommand::new(
                id(seq),
                PartitionOp::Insert {
                    key: key.to_vec(),
                    value: value.to_vec(),
                },
            )
            .encode()
            .expect("encode")
        };
        // the third command sees the first one's row; the fourth is a retry of the first
        let entry = vec![
            insert(1, b"a", b"1"),
            insert(2, b"b", b"2"),
            insert(3, b"a", b"3"),
            insert(1, b"a", b"1"),
        ];
        StateMachine::advance(&sm, pos(4)).expect("advance");
        let decode = |replies: Vec<Vec<u8>>| -> Vec<PartitionResponse> {
            replies
                .iter()
                .map(|r| PartitionResponse::decode(r).expect("reply"))
                .collect()
        };
        let expected = [
            PartitionResponse::Inserted(true),
            PartitionResponse::Inserted(true),
            PartitionResponse::Inserted(false),
            PartitionResponse::Inserted(true),
        ];
        let first = decode(sm.apply_batch(pos(5), &entry).expect("apply"));
        assert_eq!(first, expected);
        assert_eq!(storage.last_applied().expect("read"), Some(pos(5)));
        assert_eq!(storage.get(b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(storage.get(b"b").expect("get"), Some(b"2".to_vec()));
        // the entry applied again (a replay after a crash) changes nothing and answers the
        // same from the command-id window
        let again = decode(sm.apply_batch(pos(5), &entry).expect("replay"));
        assert_eq!(again, expected);
        assert_eq!(storage.get(b"a").expect("get"), Some(b"1".to_vec()));
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
        // sequences 2..=64 keep command 1 (its block holds to 63); 65 evicts 63 and the block
        for seq in 2..=64 {
            run(&sm, seq + 1, &delete_x(seq));
        }
        assert!(sm.remembered(id(1)).expect("read").is_some());
        run(&sm, 66, &delete_x(65));
        // the window of 2 evicted command 1: it is applied again
        assert_eq!(sm.remembered(id(1)).expect("read"), None);
        assert_eq!(run(&sm, 67, &first), PartitionResponse::Inserted(false));
        assert!(sm.remembered(id(65)).expect("read").is_some());
    }

    fn delete_x(seq: u64) -> PartitionCommand {
        PartitionCommand::new(
            id(seq),
            PartitionOp::Delete {
                keys: vec![b"x".to_vec()],
            },
        )
    }

    /// A state machine with a window of `window` over memory storage, after commands
    /// 1..=`commands` (sequence and log index alike).
    fn window_after_commands(
        window: u64,
        commands: u64,
    ) -> (Arc<dyn PartitionStorage>, PartitionStateMachine) {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let sm = PartitionStateMachine::with_command_window("t", 0, Arc::clone(&storage), window);
        for seq in 1..=commands {
            run(&sm, seq, &delete_x(seq));
        }
        (storage, sm)
    }

    #[test]
    fn the_window_keeps_records_in_blocks_and_drops_a_block_with_its_last_id() {
        let (storage, sm) = window_after_commands(100, 300);
        // sequence 300 evicted 200: blocks 0..=2 (to 191) went, block 3 (192..=255) stays
        // until 255 is evicted
        for seq in 1..=300 {
            assert_eq!(
                sm.remembered(id(seq)).expect("read").is_some(),
                seq >= 192,
                "command {seq} in a window of the last 100 to 163"
            );
        }
        for block in 0..5u64 {
            let held = storage
                .meta(&window_block_key(block * SEQS_PER_BLOCK))
                .expect("meta");
            assert_eq!(held.is_some(), block >= 3, "block {block}");
        }
        let raw = storage
            .meta(&window_block_key(256))
            .expect("meta")
            .expect("block 4");
        let mut records = Vec::new();
        let (first, count) = walk_block(&raw, |seq, (i, inline)| {
            records.push((seq, i, inline.is_some()))
        })
        .expect("decode");
        assert_eq!((first, count), (256, 45));
        assert_eq!(records.last(), Some(&(300, id(300), true)));
        // one meta key per block, none per command
        let keys = storage.meta_with_prefix(b"").expect("scan");
        assert_eq!(keys.len(), 3, "{keys:?}");
        // a state machine over the same storage (a restart) rebuilds the index from it
        let again = PartitionStateMachine::with_command_window("t", 0, Arc::clone(&storage), 100);
        assert!(again.remembered(id(250)).expect("read").is_some());
        assert_eq!(again.remembered(id(150)).expect("read"), None);
        assert_eq!(
            run(&again, 301, &delete_x(300)),
            PartitionResponse::Deleted(vec![false]),
            "a retry after the restart is answered from the window"
        );
        assert_eq!(storage.last_applied().expect("read"), Some(pos(301)));
    }

    #[test]
    fn a_smaller_window_drops_every_block_it_no_longer_covers() {
        let (storage, _) = window_after_commands(200, 300);
        // 300 evicted 100: block 0 (to 63) went, block 1 (64..=127) stays
        let held = |storage: &Arc<dyn PartitionStorage>| -> Vec<u64> {
            (0..5u64)
                .filter(|b| {
                    storage
                        .meta(&window_block_key(b * SEQS_PER_BLOCK))
                        .expect("meta")
                        .is_some()
                })
                .collect()
        };
        assert_eq!(held(&storage), vec![1, 2, 3, 4]);
        // restarted with a window of 50: sequence 301 evicts 251, so blocks 1 and 2 go at
        // once and block 3 (192..=255) stays
        let smaller = PartitionStateMachine::with_command_window("t", 0, Arc::clone(&storage), 50);
        run(&smaller, 301, &delete_x(301));
        assert_eq!(held(&storage), vec![3, 4]);
        assert_eq!(smaller.remembered(id(150)).expect("read"), None);
        assert!(smaller.remembered(id(200)).expect("read").is_some());
    }

    #[test]
    fn a_large_response_lives_out_of_line_and_goes_with_its_block() {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let sm = PartitionStateMachine::with_command_window("t", 0, Arc::clone(&storage), 10);
        let big = vec![7u8; INLINE_LIMIT * 2];
        let swap = |value: Vec<u8>| PartitionOp::GetAndUpsert {
            key: b"k".to_vec(),
            value,
        };
        run(&sm, 1, &PartitionCommand::new(id(1), swap(big.clone())));
        let second = PartitionCommand::new(id(2), swap(b"small".to_vec()));
        let answer = PartitionResponse::Previous(Some(big.clone()));
        assert_eq!(run(&sm, 2, &second), answer);
        assert!(
            storage.meta(&command_key(id(2))).expect("meta").is_some(),
            "the response holding the large row is out of line"
        );
        assert!(
            storage.meta(&command_key(id(1))).expect("meta").is_none(),
            "a small response is in the block"
        );
        // a retry gets the first (large) answer, not the current value
        assert_eq!(run(&sm, 3, &second), answer);
        assert_eq!(storage.get(b"k").expect("get"), Some(b"small".to_vec()));
        // sequence 73 evicts 63, the last of block 0: its out-of-line response goes too
        for seq in 3..=73 {
            run(&sm, 3 + seq, &delete_x(seq));
        }
        assert_eq!(sm.remembered(id(2)).expect("read"), None);
        assert!(storage.meta(&command_key(id(2))).expect("meta").is_none());
        assert!(storage.meta(&window_block_key(0)).expect("meta").is_none());
    }

    #[test]
    fn a_restored_snapshot_replaces_the_window() {
        let source: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let leader = PartitionStateMachine::new("t", 0, Arc::clone(&source));
        run(&leader, 1, &delete_x(1));
        run(&leader, 2, &delete_x(2));
        let snapshot = StateMachine::snapshot(&leader).expect("snapshot");
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let follower = PartitionStateMachine::new("t", 0, Arc::clone(&storage));
        run(&follower, 1, &delete_x(9));
        assert!(follower.remembered(id(9)).expect("read").is_some());
        StateMachine::restore(&follower, pos(2), &snapshot).expect("restore");
        assert_eq!(follower.remembered(id(9)).expect("read"), None);
        assert!(follower.remembered(id(2)).expect("read").is_some());
        // the next command continues the restored sequence
        run(&follower, 3, &delete_x(3));
        let raw = storage
            .meta(&window_block_key(0))
            .expect("meta")
            .expect("block 0");
        assert_eq!(walk_block(&raw, |_, _| {}).expect("decode"), (1, 3));
    }

    /// Writes what an earlier layout held for commands 1..=`last` (sequences alike): a
    /// record per command, the last sequence, and what `index` adds per sequence.
    fn write_old_records(
        storage: &dyn PartitionStorage,
        last: u64,
        mut index: impl FnMut(&mut WriteBatch, u64),
    ) {
        let mut batch = WriteBatch::new();
        for seq in 1..=last {
            let response = PartitionResponse::Deleted(vec![false])
                .encode()
                .expect("encode");
            let record = Error::postcard("command record", &(seq, response)).expect("record");
            batch.put_meta(command_key(id(seq)), record);
            index(&mut batch, seq);
        }
        batch.put_meta(
            LAST_SEQ_KEY.to_vec(),
            Error::postcard("seq", &last).expect("n"),
        );
        batch.applied_at(pos(last));
        storage.apply(batch).expect("old layout");
    }

    #[test]
    fn ids_recorded_one_key_per_sequence_are_still_evicted() {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        // the layout before blocks: sequences 1..=5 for commands 1..=5
        write_old_records(storage.as_ref(), 5, |batch, seq| {
            batch.put_meta(seq_key(seq), id(seq).to_bytes().to_vec());
        });
        let sm = PartitionStateMachine::with_command_window("t", 0, Arc::clone(&storage), 5);
        assert!(
            sm.remembered(id(3)).expect("read").is_some(),
            "old records answer retries"
        );
        for seq in 6..=8 {
            run(&sm, seq, &delete_x(seq));
        }
        for seq in 1..=3 {
            assert_eq!(
                sm.remembered(id(seq)).expect("read"),
                None,
                "command {seq} evicted"
            );
            assert!(
                storage.meta(&seq_key(seq)).expect("meta").is_none(),
                "its key too"
            );
        }
        for seq in 4..=8 {
            assert!(
                sm.remembered(id(seq)).expect("read").is_some(),
                "command {seq} kept"
            );
        }
    }

    #[test]
    fn ids_recorded_in_blocks_of_ids_are_still_answered_and_evicted() {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        // the layout before record blocks: a record per command, ids in `b` blocks
        let mut ids = 1u64.to_be_bytes().to_vec();
        for seq in 1..=63u64 {
            ids.extend_from_slice(&id(seq).to_bytes());
        }
        write_old_records(storage.as_ref(), 63, |batch, seq| {
            if seq == 63 {
                batch.put_meta(id_block_key(1), ids.clone());
            }
        });
        let sm = PartitionStateMachine::with_command_window("t", 0, Arc::clone(&storage), 63);
        assert_eq!(
            run(&sm, 64, &delete_x(5)),
            PartitionResponse::Deleted(vec![false]),
            "a retry of an old record is answered"
        );
        assert_eq!(storage.get(b"x").expect("get"), None);
        for seq in 64..=126 {
            run(&sm, seq + 1, &delete_x(seq));
        }
        // 126 evicted 63: every old record and the block of ids went
        assert!(storage.meta(&id_block_key(1)).expect("meta").is_none());
        for seq in 1..=63 {
            assert!(storage.meta(&command_key(id(seq))).expect("meta").is_none());
            assert_eq!(sm.remembered(id(seq)).expect("read"), None);
        }
        assert!(sm.remembered(id(100)).expect("read").is_some());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_block_bytes_never_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), seq in proptest::prelude::any::<u64>()) {
            let _ = id_in_block(&raw, seq);
            let _ = walk_block(&raw, |_, _| {});
        }

        #[test]
        fn window_blocks_round_trip_and_any_cut_is_refused_or_a_prefix(
            first in 0u64..10_000,
            responses in proptest::collection::vec(proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)), 1..64),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let room = (SEQS_PER_BLOCK - first % SEQS_PER_BLOCK) as usize;
            let responses = &responses[..responses.len().min(room)];
            let mut raw = first.to_be_bytes().to_vec();
            for (n, response) in responses.iter().enumerate() {
                append_record(&mut raw, id(n as u64), response.as_deref());
            }
            let mut seen = Vec::new();
            let (f, count) = walk_block(&raw, |seq, (i, r)| seen.push((seq, i, r.map(<[u8]>::to_vec)))).expect("decode");
            proptest::prop_assert_eq!((f, count as usize), (first, responses.len()));
            for (n, (seq, i, r)) in seen.into_iter().enumerate() {
                proptest::prop_assert_eq!(seq, first + n as u64);
                proptest::prop_assert_eq!(i, id(n as u64));
                proptest::prop_assert_eq!(r, responses[n].clone());
            }
            let at = cut.index(raw.len());
            if let Ok((f, count)) = walk_block(&raw[..at], |_, _| {}) {
                proptest::prop_assert_eq!(f, first);
                proptest::prop_assert!((count as usize) < responses.len() || at == raw.len());
            }
        }
    }

    #[test]
    fn a_damaged_block_is_a_decode_error_not_a_panic() {
        assert!(decode_id_block(&[1, 2, 3]).is_err());
        assert!(decode_id_block(&[0u8; 8 + 23]).is_err());
        assert!(decode_id_block(&vec![0u8; 8 + 24 * 65]).is_err());
        assert_eq!(id_in_block(&[0u8; 8 + 24], 5).expect("decode"), None);
        let mut raw = 63u64.to_be_bytes().to_vec();
        append_record(&mut raw, id(1), Some(b"x"));
        append_record(&mut raw, id(2), Some(b"y"));
        let err = walk_block(&raw, |_, _| {}).expect_err("two records where one fits");
        assert!(err.to_string().contains("more than the 1 records"), "{err}");
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let mut batch = WriteBatch::new();
        batch.put_meta(window_block_key(1), vec![9u8; 5]);
        storage.apply(batch).expect("damage");
        let sm = PartitionStateMachine::new("t", 0, Arc::clone(&storage));
        let err = sm
            .apply_command(pos(1), &delete_x(1).encode().expect("encode"))
            .expect_err("a damaged block");
        assert!(err.to_string().contains("command window block"), "{err}");
        assert_eq!(
            storage.last_applied().expect("read"),
            None,
            "nothing applied"
        );
        // a whole block that does not end at the last sequence: the next record would land
        // at the wrong sequence
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let mut block = 1u64.to_be_bytes().to_vec();
        append_record(&mut block, id(1), Some(b"x"));
        let mut batch = WriteBatch::new();
        batch.put_meta(window_block_key(1), block);
        batch.put_meta(
            LAST_SEQ_KEY.to_vec(),
            Error::postcard("seq", &5u64).expect("n"),
        );
        storage.apply(batch).expect("damage");
        let sm = PartitionStateMachine::new("t", 0, Arc::clone(&storage));
        let err = sm
            .apply_command(pos(1), &delete_x(6).encode().expect("encode"))
            .expect_err("a block behind the last sequence");
        assert!(
            err.to_string()
                .contains("ends at sequence 1, the last sequence is 5"),
            "{err}"
        );
        // a block with no record at all
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let mut batch = WriteBatch::new();
        batch.put_meta(window_block_key(0), 0u64.to_be_bytes().to_vec());
        storage.apply(batch).expect("damage");
        let sm = PartitionStateMachine::new("t", 0, Arc::clone(&storage));
        let err = sm.remembered(id(1)).expect_err("an empty block");
        assert!(err.to_string().contains("holds no records"), "{err}");
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
