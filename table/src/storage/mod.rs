//! The partition storage swap point: [`PartitionStorage`] (one partition's rows and
//! bookkeeping), [`PartitionStorageProvider`] (opens the partitions of a node), the batch
//! they apply and the snapshot format both implementations share.
//!
//! A partition holds two key spaces: rows (key bytes -> value bytes, scanned in key order)
//! and meta (the state machine's bookkeeping, such as the command-id window). A
//! [`WriteBatch`] changes both together with the last applied log position, atomically.
mod memory;
mod sled_store;

use std::{collections::BTreeMap, ops::Bound, sync::Arc};

use raft::LogPosition;
use serde::{Deserialize, Serialize};

pub use self::{
    memory::{MemoryPartitionProvider, MemoryPartitionStorage},
    sled_store::{SledPartitionProvider, SledPartitionStorage},
};
use crate::error::{Error, Result};

/// The format version byte in front of every encoded snapshot.
const SNAPSHOT_VERSION: u8 = 1;

/// What [`PartitionStorage::persist_job`] returns: makes the state as of its cut durable.
pub type PersistJob = Box<dyn FnOnce() -> Result<()> + Send>;

/// One partition's rows and bookkeeping. Every method is blocking (sled); callers on the
/// async runtime keep the calls short (point reads, bounded scans, one batch per command).
pub trait PartitionStorage: Send + Sync + 'static {
    /// The value of row `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The values of `keys`, in the same order.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>>;
    /// Up to `limit` rows in key order, starting at `from`.
    fn scan(&self, from: Bound<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The number of rows.
    fn len(&self) -> Result<u64>;
    /// True when the partition holds no rows.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// The value of meta key `key`.
    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Every meta key starting with `prefix` and its value, in key order.
    fn meta_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies `batch` atomically: all of it is visible or none, and after a restart all of
    /// it or none is there, together with its applied position. It may be lost in a crash
    /// (the sled storage writes behind): the Raft log, which is durable, applies it again.
    fn apply(&self, batch: WriteBatch) -> Result<()>;
    /// Whether the next [`apply`](Self::apply) could wait on the disk (a write-behind
    /// storage whose backlog is full). Only the partition's own applies add to its backlog,
    /// so a `false` holds until the next apply. Default: never.
    fn apply_would_wait(&self) -> bool {
        false
    }
    /// The log position of the last applied batch that carried one.
    fn last_applied(&self) -> Result<Option<LogPosition>>;
    /// The full state (rows, meta, last applied), encoded; see [`PartitionSnapshot`].
    /// Everything in it is durable when this returns.
    fn snapshot(&self) -> Result<Vec<u8>>;
    /// Starts making everything applied so far durable and returns the job that finishes
    /// it, which may run while more batches are applied; `None` when the storage is not
    /// durable by itself (memory). The partition's Raft group then purges its log behind
    /// the cut and exports the rows only when a follower needs a snapshot. Default: `None`.
    fn persist_job(&self) -> Result<Option<PersistJob>> {
        Ok(None)
    }
    /// Replaces the full state with a [`snapshot`](Self::snapshot)'s.
    fn restore(&self, data: &[u8]) -> Result<()>;
    /// Removes every row, meta key and the applied position, and the storage itself (the
    /// sled tree); later calls fail.
    fn destroy(&self) -> Result<()>;
}

/// Opens the partition storages of one node.
pub trait PartitionStorageProvider: Send + Sync + 'static {
    /// Opens the backing store (the sled database). Blocking; idempotent.
    fn open(&self) -> Result<()>;
    /// The storage of partition `partition` of table `table_id`, created empty if new.
    /// Every call for the same partition returns the same storage until it is destroyed.
    fn partition(&self, table_id: &str, partition: u32) -> Result<Arc<dyn PartitionStorage>>;
    /// The partitions with a storage, as (table id, partition), sorted.
    fn partitions(&self) -> Result<Vec<(String, u32)>>;
    /// Flushes and closes the backing store. Blocking; idempotent.
    fn close(&self) -> Result<()>;
}

/// The entries of `map` whose key starts with `prefix`, in key order.
pub(crate) fn with_prefix<'a, V>(
    map: &'a BTreeMap<Vec<u8>, V>,
    prefix: &'a [u8],
) -> impl Iterator<Item = (&'a Vec<u8>, &'a V)> + 'a {
    map.range(prefix.to_vec()..)
        .take_while(move |(k, _)| k.starts_with(prefix))
}

/// One change in a [`WriteBatch`]: a new value, or `None` to delete.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Changes to rows and meta keys plus the log position they were applied at, applied in
/// order (a later change to a key wins) and atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Row changes.
    pub rows: Vec<Change>,
    /// Meta key changes.
    pub meta: Vec<Change>,
    /// The log position to record as last applied (unchanged when `None`).
    pub applied: Option<LogPosition>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets row `key` to `value`.
    pub fn upsert(&mut self, key: Vec<u8>, value: Vec<u8>) -> &mut Self {
        self.rows.push((key, Some(value)));
        self
    }

    /// Deletes row `key`.
    pub fn delete(&mut self, key: Vec<u8>) -> &mut Self {
        self.rows.push((key, None));
        self
    }

    /// Sets meta key `key` to `value`.
    pub fn put_meta(&mut self, key: Vec<u8>, value: Vec<u8>) -> &mut Self {
        self.meta.push((key, Some(value)));
        self
    }

    /// Deletes meta key `key`.
    pub fn delete_meta(&mut self, key: Vec<u8>) -> &mut Self {
        self.meta.push((key, None));
        self
    }

    /// Records `position` as the last applied log position.
    pub fn applied_at(&mut self, position: LogPosition) -> &mut Self {
        self.applied = Some(position);
        self
    }
}

/// The full state of a partition: what a Raft snapshot carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// The last applied log position.
    pub last_applied: Option<LogPosition>,
    /// Every row, in key order.
    #[serde(with = "network::bytes_serde::pairs")]
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// Every meta key, in key order.
    #[serde(with = "network::bytes_serde::pairs")]
    pub meta: Vec<(Vec<u8>, Vec<u8>)>,
}

impl PartitionSnapshot {
    /// Encodes: a format version byte, then postcard.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = vec![SNAPSHOT_VERSION];
        postcard::to_io(self, &mut out).map_err(|e| Error::Encode {
            what: "partition snapshot",
            reason: e.to_string(),
        })?;
        Ok(out)
    }

    /// Decodes and checks that keys are strictly ascending; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "partition snapshot";
        let (version, body) = bytes
            .split_first()
            .ok_or_else(|| Error::decode(WHAT, "empty input"))?;
        if *version != SNAPSHOT_VERSION {
            return Err(Error::decode(WHAT, format!("unknown version {version}")));
        }
        let (snapshot, rest): (Self, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| Error::decode(WHAT, e))?;
        if !rest.is_empty() {
            return Err(Error::decode(
                WHAT,
                format!("{} trailing bytes", rest.len()),
            ));
        }
        for (name, list) in [("rows", &snapshot.rows), ("meta", &snapshot.meta)] {
            if list.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(Error::decode(
                    WHAT,
                    format!("{name} are not in strictly ascending key order"),
                ));
            }
        }
        Ok(snapshot)
    }
}

/// Applies `changes` in order to a map (used by the in-memory storage and models).
pub(crate) fn apply_changes(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, changes: Vec<Change>) {
    for (key, value) in changes {
        match value {
            Some(value) => {
                map.insert(key, value);
            }
            None => {
                map.remove(&key);
            }
        }
    }
}

/// The tree name of a partition: `<table_id>/<partition>`.
pub(crate) fn tree_name(table_id: &str, partition: u32) -> String {
    format!("{table_id}/{partition}")
}

/// Parses a tree name back; `None` for trees that are not partitions.
pub(crate) fn parse_tree_name(name: &str) -> Option<(String, u32)> {
    let (table, partition) = name.rsplit_once('/')?;
    Some((table.to_owned(), partition.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_and_rejects_disorder() {
        let snapshot = PartitionSnapshot {
            last_applied: Some(LogPosition { index: 7, term: 2 }),
            rows: vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec()),
            ],
            meta: vec![(b"m".to_vec(), b"x".to_vec())],
        };
        let bytes = snapshot.encode().expect("encode");
        assert_eq!(PartitionSnapshot::decode(&bytes).expect("decode"), snapshot);

        let disordered = PartitionSnapshot {
            rows: vec![
                (b"b".to_vec(), b"2".to_vec()),
                (b"a".to_vec(), b"1".to_vec()),
            ],
            ..PartitionSnapshot::default()
        };
        let bytes = disordered.encode().expect("encode");
        assert!(PartitionSnapshot::decode(&bytes).is_err());
        assert!(PartitionSnapshot::decode(&[]).is_err());
        assert!(PartitionSnapshot::decode(&[9, 0]).is_err());
    }

    #[test]
    fn tree_names_round_trip() {
        assert_eq!(tree_name("t/1", 3), "t/1/3");
        assert_eq!(parse_tree_name("t/1/3"), Some(("t/1".to_owned(), 3)));
        assert_eq!(parse_tree_name("__sled__default"), None);
    }
}
