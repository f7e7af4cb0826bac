//! openraft's `RaftLogStorage` over our byte-level [`LogStorage`]: the only place that knows
//! how openraft's log entries, votes and log ids are encoded at rest (postcard).
use std::{fmt::Debug, ops::RangeBounds, sync::Arc};

use openraft::{
    storage::{LogFlushed, RaftLogStorage},
    AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    storage::{LogStorage, MetaKey},
    types::{Entry, LogId, StorageError, TypeConfig, Vote},
};

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AnyError> {
    postcard::to_stdvec(value).map_err(|e| AnyError::new(&e))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AnyError> {
    postcard::from_bytes(bytes).map_err(|e| AnyError::new(&e))
}

fn any(e: crate::Error) -> AnyError {
    AnyError::new(&e)
}

/// Reads a metadata slot and decodes it.
pub(crate) fn read_meta<T: DeserializeOwned>(
    storage: &dyn LogStorage,
    key: MetaKey,
) -> Result<Option<T>, AnyError> {
    match storage.get_meta(key).map_err(any)? {
        Some(bytes) => Ok(Some(decode(&bytes)?)),
        None => Ok(None),
    }
}

/// Encodes and writes a metadata slot (not yet durable).
pub(crate) fn write_meta<T: Serialize>(
    storage: &dyn LogStorage,
    key: MetaKey,
    value: &T,
) -> Result<(), AnyError> {
    storage.put_meta(key, &encode(value)?).map_err(any)
}

/// Makes everything written so far durable and waits for it.
pub(crate) async fn flush(storage: &dyn LogStorage) -> Result<(), AnyError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    storage.flush(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AnyError::new(&e)),
        Err(_) => Err(AnyError::error("raft log flush was dropped")),
    }
}

/// A group's log as openraft sees it. Cheap to clone (the reader is a clone).
#[derive(Clone)]
pub(crate) struct LogStore {
    storage: Arc<dyn LogStorage>,
}

impl LogStore {
    pub(crate) fn new(storage: Arc<dyn LogStorage>) -> Self {
        Self { storage }
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    use std::ops::Bound;
    let from = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (from, to) = bounds(&range);
        let raw = self
            .storage
            .range(from, to)
            .map_err(|e| StorageIOError::read_logs(any(e)))?;
        raw.iter()
            .map(|(_, bytes)| {
                decode::<Entry>(bytes).map_err(|e| StorageIOError::read_logs(e).into())
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> =
            read_meta(self.storage.as_ref(), MetaKey::LastPurged)
                .map_err(StorageIOError::read_logs)?;
        let last = self
            .storage
            .last()
            .map_err(|e| StorageIOError::read_logs(any(e)))?;
        let last_log_id = match last {
            Some((_, bytes)) => Some(
                decode::<Entry>(&bytes)
                    .map_err(StorageIOError::read_logs)?
                    .log_id,
            ),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        write_meta(self.storage.as_ref(), MetaKey::Vote, vote)
            .map_err(StorageIOError::write_vote)?;
        // a vote counts only once it is on disk
        flush(self.storage.as_ref())
            .await
            .map_err(StorageIOError::write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(read_meta(self.storage.as_ref(), MetaKey::Vote).map_err(StorageIOError::read_vote)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // not flushed: a lost committed id is recomputed by the leader
        write_meta(self.storage.as_ref(), MetaKey::Committed, &committed)
            .map_err(StorageIOError::write)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> =
            read_meta(self.storage.as_ref(), MetaKey::Committed).map_err(StorageIOError::read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut raw = Vec::new();
        for entry in entries {
            raw.push((
                entry.log_id.index,
                encode(&entry).map_err(StorageIOError::write_logs)?,
            ));
        }
        self.storage
            .append(raw)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        // reported done by the flush thread, once the append is durable
        self.storage
            .flush(Box::new(move |result| callback.log_io_completed(result)));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.storage
            .truncate_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // record the purge point first: a crash in between leaves extra entries, never a gap
        write_meta(self.storage.as_ref(), MetaKey::LastPurged, &log_id)
            .map_err(StorageIOError::write_logs)?;
        flush(self.storage.as_ref())
            .await
            .map_err(StorageIOError::write_logs)?;
        self.storage
            .purge_upto(log_id.index)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        Ok(())
    }
}
