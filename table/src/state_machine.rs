//! [`PartitionStateMachine`]: applies [`PartitionCommand`]s from a partition's Raft log to
//! its [`PartitionStorage`], with a bounded window of command ids for idempotent retries.
//!
//! The window lives in the partition's meta keys, written in the same batch as the rows and
//! the applied position, so it survives restarts and travels in snapshots:
//! `c<command id>` -> (sequence, encoded response), `b<sequence / 64>` -> the ids of up to 64
//! consecutive sequences (the first sequence, then 24 bytes per id), `n` -> the last
//! sequence. Sequence `n` evicts `n - window`; a block goes once its last sequence is
//! evicted. Every replica must use the same window.
//!
//! Blocks replaced one key per sequence (`s<sequence>` -> command id) to halve the keys a
//! command writes; ids a partition recorded that way are still evicted from those keys.
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
/// One key per sequence, as partitions recorded ids before blocks.
const SEQ_PREFIX: u8 = b's';
const BLOCK_PREFIX: u8 = b'b';
const LAST_SEQ_KEY: &[u8] = b"n";
/// Sequences per `b` block.
const SEQS_PER_BLOCK: u64 = 64;
const ID_BYTES: usize = 24;

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

fn block_key(seq: u64) -> Vec<u8> {
    let mut key = vec![BLOCK_PREFIX];
    key.extend_from_slice(&(seq / SEQS_PER_BLOCK).to_be_bytes());
    key
}

/// A block's first sequence and its ids, or why the bytes are not a block.
fn decode_block(raw: &[u8]) -> Result<(u64, &[u8])> {
    let bad = |reason: String| Error::Decode {
        what: "command id block",
        reason,
    };
    let (first, ids) = raw.split_first_chunk::<8>().ok_or_else(|| {
        bad(format!(
            "{} bytes, fewer than its first sequence",
            raw.len()
        ))
    })?;
    if ids.len() % ID_BYTES != 0 || ids.len() as u64 > SEQS_PER_BLOCK * ID_BYTES as u64 {
        return Err(bad(format!("{} bytes of ids", ids.len())));
    }
    Ok((u64::from_be_bytes(*first), ids))
}

/// The id recorded for `seq` in a block, if the block holds it.
fn id_in_block(raw: &[u8], seq: u64) -> Result<Option<CommandId>> {
    let (first, ids) = decode_block(raw)?;
    let Some(at) = seq.checked_sub(first) else {
        return Ok(None);
    };
    let start = usize::try_from(at)
        .unwrap_or(usize::MAX)
        .saturating_mul(ID_BYTES);
    Ok(ids
        .get(start..start.saturating_add(ID_BYTES))
        .and_then(CommandId::from_bytes))
}

fn encode_u64(what: &'static str, value: &impl serde::Serialize) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Rows and meta keys as a command sees them: the changes of the commands before it in the
/// same batch over the storage. Everything goes into one [`WriteBatch`].
struct Overlay<'a> {
    storage: &'a dyn PartitionStorage,
    changed: HashMap<Vec<u8>, Option<Vec<u8>>>,
    meta_changed: HashMap<Vec<u8>, Option<Vec<u8>>>,
    batch: WriteBatch,
}

impl<'a> Overlay<'a> {
    fn new(storage: &'a dyn PartitionStorage) -> Self {
        Self {
            storage,
            changed: HashMap::new(),
            meta_changed: HashMap::new(),
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

    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.meta_changed.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.storage.meta(key),
        }
    }

    fn put_meta(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.meta_changed.insert(key.clone(), Some(value.clone()));
        self.batch.put_meta(key, value);
    }

    fn delete_meta(&mut self, key: Vec<u8>) {
        self.meta_changed.insert(key.clone(), None);
        self.batch.delete_meta(key);
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
        decode_record(self.storage.meta(&command_key(id))?)
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
        let mut overlay = Overlay::new(self.storage.as_ref());
        let responses = commands
            .iter()
            .map(|command| self.apply_one(&mut overlay, position, command))
            .collect::<Result<Vec<_>>>()?;
        let mut batch = overlay.batch;
        batch.applied_at(position);
        self.storage.apply(batch)?;
        Ok(responses)
    }

    /// Plans one command over `overlay` (its writes and window bookkeeping join the batch).
    fn apply_one(
        &self,
        overlay: &mut Overlay<'_>,
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
        if let Some(response) = decode_record(overlay.meta(&command_key(command.id))?)? {
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
        self.remember(overlay, command.id, &response)?;
        Ok(response)
    }

    /// Adds the window bookkeeping for `id`, evicting the oldest id when full.
    fn remember(
        &self,
        overlay: &mut Overlay<'_>,
        id: CommandId,
        response: &PartitionResponse,
    ) -> Result<()> {
        let last: u64 = match overlay.meta(LAST_SEQ_KEY)? {
            Some(raw) => {
                postcard::from_bytes(&raw).map_err(|e| Error::decode("command sequence", e))?
            }
            None => 0,
        };
        let seq = last + 1;
        let record = encode_u64("command record", &(seq, response.encode()?))?;
        overlay.put_meta(command_key(id), record);
        let block = block_key(seq);
        let ids = match overlay.meta(&block)? {
            Some(mut ids) => {
                let (first, held) = decode_block(&ids)?;
                if first + (held.len() / ID_BYTES) as u64 != seq {
                    return Err(Error::Decode {
                        what: "command id block",
                        reason: format!(
                            "it holds {} ids from sequence {first}, the next is {seq}",
                            held.len() / ID_BYTES
                        ),
                    });
                }
                ids.extend_from_slice(&id.to_bytes());
                ids
            }
            None => [&seq.to_be_bytes()[..], &id.to_bytes()].concat(),
        };
        overlay.put_meta(block, ids);
        overlay.put_meta(LAST_SEQ_KEY.to_vec(), encode_u64("command sequence", &seq)?);
        if seq > self.window {
            self.evict(overlay, seq - self.window)?;
        }
        Ok(())
    }

    /// Forgets the id recorded for sequence `evicted` (in its block, or in the key per
    /// sequence of older records), and the block once its last sequence goes.
    fn evict(&self, overlay: &mut Overlay<'_>, evicted: u64) -> Result<()> {
        let block = block_key(evicted);
        if let Some(raw) = overlay.meta(&block)? {
            if let Some(old) = id_in_block(&raw, evicted)? {
                overlay.delete_meta(command_key(old));
                if evicted % SEQS_PER_BLOCK == SEQS_PER_BLOCK - 1 {
                    overlay.delete_meta(block);
                }
                return Ok(());
            }
        }
        if let Some(raw) = overlay.meta(&seq_key(evicted))? {
            if let Some(old) = CommandId::from_bytes(&raw) {
                overlay.delete_meta(command_key(old));
            }
            overlay.delete_meta(seq_key(evicted));
        }
        Ok(())
    }
}

/// A remembered command record's response.
fn decode_record(raw: Option<Vec<u8>>) -> Result<Option<PartitionResponse>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let (_seq, response): (u64, Vec<u8>) =
        postcard::from_bytes(&raw).map_err(|e| Error::decode("command record", e))?;
    PartitionResponse::decode(&response).map(Some)
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
    fn apply_would_wait(&self) -> bool {
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

    fn delete_x(seq: u64) -> PartitionCommand {
        PartitionCommand::new(
            id(seq),
            PartitionOp::Delete {
                keys: vec![b"x".to_vec()],
            },
        )
    }

    #[test]
    fn the_window_keeps_ids_in_blocks_and_drops_a_block_with_its_last_id() {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let sm = PartitionStateMachine::with_command_window("t", 0, Arc::clone(&storage), 100);
        for seq in 1..=300 {
            run(&sm, seq, &delete_x(seq));
        }
        for seq in 1..=300 {
            assert_eq!(
                sm.remembered(id(seq)).expect("read").is_some(),
                seq > 200,
                "command {seq} in a window of the last 100"
            );
        }
        // sequences 201..=300 live in blocks 3 (192..=255) and 4 (256..=319)
        for block in 0..5u64 {
            let held = storage
                .meta(&block_key(block * SEQS_PER_BLOCK))
                .expect("meta");
            assert_eq!(held.is_some(), block >= 3, "block {block}");
        }
        let raw = storage
            .meta(&block_key(256))
            .expect("meta")
            .expect("block 4");
        assert_eq!(id_in_block(&raw, 300).expect("decode"), Some(id(300)));
        assert_eq!(id_in_block(&raw, 255).expect("decode"), None);
        assert!(
            storage.meta(&seq_key(300)).expect("meta").is_none(),
            "no key per sequence"
        );
    }

    #[test]
    fn ids_recorded_one_key_per_sequence_are_still_evicted() {
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        // the layout before blocks: sequences 1..=5 for commands 1..=5
        let mut batch = WriteBatch::new();
        for seq in 1..=5u64 {
            let record = encode_u64(
                "command record",
                &(
                    seq,
                    PartitionResponse::Deleted(vec![false])
                        .encode()
                        .expect("encode"),
                ),
            )
            .expect("record");
            batch.put_meta(command_key(id(seq)), record);
            batch.put_meta(seq_key(seq), id(seq).to_bytes().to_vec());
        }
        batch.put_meta(LAST_SEQ_KEY.to_vec(), encode_u64("seq", &5u64).expect("n"));
        batch.applied_at(pos(5));
        storage.apply(batch).expect("old layout");
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

    proptest::proptest! {
        #[test]
        fn arbitrary_block_bytes_never_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), seq in proptest::prelude::any::<u64>()) {
            let _ = id_in_block(&raw, seq);
        }
    }

    #[test]
    fn a_damaged_block_is_a_decode_error_not_a_panic() {
        assert!(decode_block(&[1, 2, 3]).is_err());
        assert!(decode_block(&[0u8; 8 + 23]).is_err());
        assert!(decode_block(&vec![0u8; 8 + 24 * 65]).is_err());
        assert_eq!(id_in_block(&[0u8; 8 + 24], 5).expect("decode"), None);
        let storage: Arc<dyn PartitionStorage> = Arc::new(MemoryPartitionStorage::new());
        let mut batch = WriteBatch::new();
        batch.put_meta(block_key(1), vec![9u8; 5]);
        storage.apply(batch).expect("damage");
        let sm = PartitionStateMachine::new("t", 0, Arc::clone(&storage));
        let err = sm
            .apply_command(pos(1), &delete_x(1).encode().expect("encode"))
            .expect_err("a damaged block");
        assert!(err.to_string().contains("command id block"), "{err}");
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
