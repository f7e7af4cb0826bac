//! [`Table`]: the record view of one table. Rows cross it as JSON objects; inside they are
//! `schema`'s encodings (order-preserving key bytes, compact row bytes) routed to the
//! partition `hash(key bytes) % partitions`.
use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::Arc,
};

use futures::future::try_join_all;
use parking_lot::Mutex;
use schema::{encode_key, encode_row, key_from_json, Row, TableSchema};
use serde_json::Value as Json;

use crate::{
    client::PartitionClient,
    error::{Error, Result},
    manager::{Shared, TableInfo},
};

/// An encoded (key, row) pair.
type KeyValue = (Vec<u8>, Vec<u8>);

/// The partition of an encoded key: 64-bit FNV-1a of the bytes modulo `partitions`, the same
/// on every node and across versions.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = key
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME));
    // the remainder is below `partitions`, so it fits
    (hash % u64::from(partitions.max(1))) as u32
}

/// The record view of one table; cheap to clone.
#[derive(Clone)]
pub struct Table {
    shared: Arc<Shared>,
    info: TableInfo,
    /// Partition clients by partition, shared by clones.
    clients: Arc<Mutex<HashMap<u32, PartitionClient>>>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("info", &self.info).finish()
    }
}

impl Table {
    pub(crate) fn new(shared: Arc<Shared>, info: TableInfo) -> Self {
        Self {
            shared,
            info,
            clients: Arc::default(),
        }
    }

    /// The table's definition.
    pub fn info(&self) -> &TableInfo {
        &self.info
    }

    pub(crate) fn schema(&self) -> Result<Arc<TableSchema>> {
        Ok(self.shared.schema.latest(&self.info.name)?)
    }

    /// The client of `partition`: cached per partition while its replicas stay the same, so
    /// it keeps its command-id sequence and the replica that answered last.
    pub(crate) fn client(&self, partition: u32) -> Result<PartitionClient> {
        let replicas = self
            .shared
            .catalog
            .read()
            .replicas(&self.info.name, partition)
            .ok_or_else(|| Error::TableNotFound {
                table: self.info.name.clone(),
            })?;
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(&partition) {
            if client.replicas() == replicas.as_slice() {
                return Ok(client.clone());
            }
        }
        let client = self
            .shared
            .service
            .client(&self.info.id, partition, replicas);
        clients.insert(partition, client.clone());
        Ok(client)
    }

    fn encode(&self, schema: &TableSchema, row: &Json) -> Result<(u32, Vec<u8>, Vec<u8>)> {
        let row = Row::from_json(schema, row)?;
        self.encode_row(schema, &row)
    }

    /// The partition, key bytes and row bytes of a checked row.
    pub(crate) fn encode_row(
        &self,
        schema: &TableSchema,
        row: &Row,
    ) -> Result<(u32, Vec<u8>, Vec<u8>)> {
        let key = encode_key(schema, &row.key(schema))?;
        let value = encode_row(schema, row)?;
        Ok((partition_of(&key, self.info.partitions), key, value))
    }

    /// The partition and key bytes of a JSON key (an object of the key columns, or a bare
    /// value for a one-column key).
    pub(crate) fn encode_key(&self, schema: &TableSchema, key: &Json) -> Result<(u32, Vec<u8>)> {
        let key = encode_key(schema, &key_from_json(schema, key)?)?;
        Ok((partition_of(&key, self.info.partitions), key))
    }

    /// A stored row read through the current schema, with that schema.
    pub(crate) fn decode_row(&self, bytes: &[u8]) -> Result<(Row, Arc<TableSchema>)> {
        let row = self.shared.schema.read_row(&self.info.name, bytes)?;
        let schema = self.shared.schema.schema(&self.info.name, row.version())?;
        Ok((row, schema))
    }

    fn decode(&self, bytes: &[u8]) -> Result<Json> {
        let (row, schema) = self.decode_row(bytes)?;
        Ok(row.to_json(&schema))
    }

    /// Writes encoded `(partition, key, row)` triples: one command per partition, the
    /// partitions in parallel. Each partition's command is atomic; the whole is not.
    pub(crate) async fn write_partitioned(&self, rows: Vec<(u32, Vec<u8>, Vec<u8>)>) -> Result<()> {
        let mut by_partition: BTreeMap<u32, Vec<KeyValue>> = BTreeMap::new();
        for (p, key, value) in rows {
            by_partition.entry(p).or_default().push((key, value));
        }
        let mut writes = Vec::with_capacity(by_partition.len());
        for (p, rows) in by_partition {
            let client = self.client(p)?;
            writes.push(async move { client.upsert_all(rows).await });
        }
        try_join_all(writes).await?;
        Ok(())
    }

    /// Reads encoded `(partition, key)` pairs: one read per partition, the partitions in
    /// parallel; the values come back in the order of `keys`.
    pub(crate) async fn read_partitioned(
        &self,
        keys: Vec<(u32, Vec<u8>)>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.per_partition(
            keys,
            |client, keys| async move { client.get_all(keys).await },
        )
        .await
    }

    /// Deletes encoded `(partition, key)` pairs: one command per partition, the partitions
    /// in parallel; for each key, in the order of `keys`, whether it existed.
    pub(crate) async fn delete_partitioned(&self, keys: Vec<(u32, Vec<u8>)>) -> Result<Vec<bool>> {
        self.per_partition(
            keys,
            |client, keys| async move { client.delete_all(keys).await },
        )
        .await
    }

    /// Runs `op` once per partition with that partition's keys, the partitions in parallel;
    /// one answer per key, in the order of `keys`.
    async fn per_partition<T, F, Fut>(&self, keys: Vec<(u32, Vec<u8>)>, op: F) -> Result<Vec<T>>
    where
        T: Default + Clone,
        F: Fn(PartitionClient, Vec<Vec<u8>>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>>>,
    {
        let count = keys.len();
        let mut by_partition: BTreeMap<u32, (Vec<usize>, Vec<Vec<u8>>)> = BTreeMap::new();
        for (i, (p, key)) in keys.into_iter().enumerate() {
            let slot = by_partition.entry(p).or_default();
            slot.0.push(i);
            slot.1.push(key);
        }
        let mut calls = Vec::with_capacity(by_partition.len());
        for (p, (indexes, keys)) in by_partition {
            let answers = op(self.client(p)?, keys);
            calls.push(async move { Ok::<_, Error>((indexes, answers.await?)) });
        }
        let mut out = vec![T::default(); count];
        for (indexes, answers) in try_join_all(calls).await? {
            for (i, answer) in indexes.into_iter().zip(answers) {
                if let Some(slot) = out.get_mut(i) {
                    *slot = answer;
                }
            }
        }
        Ok(out)
    }

    /// Inserts or replaces the row (a JSON object of column values); nothing is written if
    /// the row does not fit the schema.
    pub async fn upsert(&self, row: &Json) -> Result<()> {
        let schema = self.schema()?;
        let (p, key, value) = self.encode(&schema, row)?;
        self.client(p)?.upsert(key, value).await
    }

    /// Inserts or replaces every row.
    ///
    /// Every row is checked and encoded before anything is sent: one bad row (unknown
    /// column, wrong type, missing key column) fails the call with nothing written. Rows are
    /// then grouped by partition and the partitions written in parallel, one command each:
    /// each partition's rows are applied atomically, but the call as a whole is not, so an
    /// error (a timeout, say) may leave some partitions written and others not. Retrying the
    /// same rows is safe (an upsert is idempotent). Of two rows with the same key, the later
    /// one wins.
    pub async fn upsert_all(&self, rows: &[Json]) -> Result<()> {
        let schema = self.schema()?;
        let encoded = rows
            .iter()
            .map(|row| self.encode(&schema, row))
            .collect::<Result<Vec<_>>>()?;
        self.write_partitioned(encoded).await
    }

    /// The row with the key columns of `key` (a JSON object, or a bare value for a
    /// one-column key), read through the current schema.
    pub async fn get(&self, key: &Json) -> Result<Option<Json>> {
        let schema = self.schema()?;
        let (p, key) = self.encode_key(&schema, key)?;
        match self.client(p)?.get(key).await? {
            Some(bytes) => Ok(Some(self.decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The rows of `keys`, in the same order (`None` where absent). Every key is checked
    /// before anything is read; the partitions are read in parallel, each linearizably.
    pub async fn get_all(&self, keys: &[Json]) -> Result<Vec<Option<Json>>> {
        let schema = self.schema()?;
        let encoded = keys
            .iter()
            .map(|key| self.encode_key(&schema, key))
            .collect::<Result<Vec<_>>>()?;
        self.read_partitioned(encoded)
            .await?
            .into_iter()
            .map(|value| value.map(|bytes| self.decode(&bytes)).transpose())
            .collect()
    }

    /// Deletes the row with the key of `key`; true if it existed.
    pub async fn delete(&self, key: &Json) -> Result<bool> {
        let schema = self.schema()?;
        let (p, key) = self.encode_key(&schema, key)?;
        self.client(p)?.delete(key).await
    }

    /// Up to `limit` rows in key order: of one partition, or of all partitions (read in
    /// parallel) merged.
    pub async fn scan(&self, partition: Option<u32>, limit: u32) -> Result<Vec<Json>> {
        let partitions: Vec<u32> = match partition {
            Some(p) if p < self.info.partitions => vec![p],
            Some(p) => {
                return Err(Error::PartitionNotFound {
                    table_id: self.info.id.clone(),
                    partition: p,
                    node: String::new(),
                })
            }
            None => (0..self.info.partitions).collect(),
        };
        let mut scans = Vec::with_capacity(partitions.len());
        for p in partitions {
            let client = self.client(p)?;
            scans.push(async move { client.scan(Bound::Unbounded, limit).await });
        }
        let mut rows: Vec<KeyValue> = try_join_all(scans).await?.into_iter().flatten().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.truncate(limit as usize);
        rows.iter().map(|(_, value)| self.decode(value)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::partition_of;

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(partition_of(b"", 4), partition_of(b"", 4));
        let mut seen = [0usize; 4];
        for i in 0u32..1_000 {
            let p = partition_of(&i.to_be_bytes(), 4);
            assert!(p < 4);
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
        assert_eq!(partition_of(b"abc", 1), 0);
    }
}
