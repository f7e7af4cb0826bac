//! [`Table`]: the record view of one table. Rows cross it as JSON objects; inside they are
//! `schema`'s encodings (order-preserving key bytes, compact row bytes) routed to the
//! partition `hash(key bytes) % partitions`.
use std::{collections::BTreeMap, ops::Bound, sync::Arc};

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
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("info", &self.info).finish()
    }
}

impl Table {
    pub(crate) fn new(shared: Arc<Shared>, info: TableInfo) -> Self {
        Self { shared, info }
    }

    /// The table's definition.
    pub fn info(&self) -> &TableInfo {
        &self.info
    }

    fn schema(&self) -> Result<Arc<TableSchema>> {
        Ok(self.shared.schema.latest(&self.info.name)?)
    }

    fn client(&self, partition: u32) -> Result<PartitionClient> {
        let replicas = self
            .shared
            .catalog
            .read()
            .replicas(&self.info.name, partition)
            .ok_or_else(|| Error::TableNotFound {
                table: self.info.name.clone(),
            })?;
        Ok(self
            .shared
            .service
            .client(&self.info.id, partition, replicas))
    }

    fn encode(&self, schema: &TableSchema, row: &Json) -> Result<(u32, Vec<u8>, Vec<u8>)> {
        let row = Row::from_json(schema, row)?;
        let key = encode_key(schema, &row.key(schema))?;
        let value = encode_row(schema, &row)?;
        Ok((partition_of(&key, self.info.partitions), key, value))
    }

    fn encode_key(&self, schema: &TableSchema, key: &Json) -> Result<(u32, Vec<u8>)> {
        let key = encode_key(schema, &key_from_json(schema, key)?)?;
        Ok((partition_of(&key, self.info.partitions), key))
    }

    fn decode(&self, bytes: &[u8]) -> Result<Json> {
        let row = self.shared.schema.read_row(&self.info.name, bytes)?;
        let schema = self.schema()?;
        Ok(row.to_json(&schema))
    }

    /// Inserts or replaces the row (a JSON object of column values).
    pub async fn upsert(&self, row: &Json) -> Result<()> {
        let schema = self.schema()?;
        let (p, key, value) = self.encode(&schema, row)?;
        self.client(p)?.upsert(key, value).await
    }

    /// Inserts or replaces every row; all are encoded before anything is written, and each
    /// partition's rows are written in one command.
    pub async fn upsert_all(&self, rows: &[Json]) -> Result<()> {
        let schema = self.schema()?;
        let mut by_partition: BTreeMap<u32, Vec<KeyValue>> = BTreeMap::new();
        for row in rows {
            let (p, key, value) = self.encode(&schema, row)?;
            by_partition.entry(p).or_default().push((key, value));
        }
        for (p, rows) in by_partition {
            self.client(p)?.upsert_all(rows).await?;
        }
        Ok(())
    }

    /// The row with the key columns of `key` (a JSON object), read through the current
    /// schema.
    pub async fn get(&self, key: &Json) -> Result<Option<Json>> {
        let schema = self.schema()?;
        let (p, key) = self.encode_key(&schema, key)?;
        match self.client(p)?.get(key).await? {
            Some(bytes) => Ok(Some(self.decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The rows of `keys`, in the same order (`None` where absent).
    pub async fn get_all(&self, keys: &[Json]) -> Result<Vec<Option<Json>>> {
        let schema = self.schema()?;
        let mut by_partition: BTreeMap<u32, (Vec<usize>, Vec<Vec<u8>>)> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let (p, key) = self.encode_key(&schema, key)?;
            let slot = by_partition.entry(p).or_default();
            slot.0.push(i);
            slot.1.push(key);
        }
        let mut out = vec![None; keys.len()];
        for (p, (indexes, keys)) in by_partition {
            let values = self.client(p)?.get_all(keys).await?;
            for (i, value) in indexes.into_iter().zip(values) {
                if let Some(bytes) = value {
                    out[i] = Some(self.decode(&bytes)?);
                }
            }
        }
        Ok(out)
    }

    /// Deletes the row with the key of `key`; true if it existed.
    pub async fn delete(&self, key: &Json) -> Result<bool> {
        let schema = self.schema()?;
        let (p, key) = self.encode_key(&schema, key)?;
        self.client(p)?.delete(key).await
    }

    /// Up to `limit` rows in key order: of one partition, or of all partitions merged.
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
        let mut rows: Vec<KeyValue> = Vec::new();
        for p in partitions {
            rows.extend(self.client(p)?.scan(Bound::Unbounded, limit).await?);
        }
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
