//! [`KeyValueView`]: a table seen as a map from keys to values. A key is a JSON object of
//! the key columns (or a bare value for a one-column key), a value a JSON object of the
//! value columns; together they are one row of the [`Table`] record view, stored the same
//! way, so both views see the same data.
use std::sync::Arc;

use schema::{key_from_json, Row, TableSchema};
use serde_json::{Map, Value as Json};

use crate::{error::Result, view::Table};

impl Table {
    /// The key-value view of this table (cheap: it shares the record view's state).
    pub fn kv_view(&self) -> KeyValueView {
        KeyValueView {
            table: self.clone(),
        }
    }
}

/// The key-value view of one table; cheap to clone.
///
/// Every key and value is checked against the table's current schema before anything is
/// sent, with the record view's errors (unknown column, wrong type, missing key column,
/// null in a non-nullable column); a key column in a value is refused too. A single-key
/// operation is one command: it applies whole or not at all. The `*_all` operations group
/// their keys by partition and run the partitions in parallel: each partition's share is
/// atomic, the call as a whole is not.
#[derive(Clone, Debug)]
pub struct KeyValueView {
    table: Table,
}

/// The JSON type of `json`, for error messages.
fn json_type(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

impl KeyValueView {
    /// The record view of the same table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The row of `key` and `value`, checked against `schema`.
    fn row(&self, schema: &TableSchema, key: &Json, value: &Json) -> Result<Row> {
        // the key alone first, so its errors say "key"
        key_from_json(schema, key)?;
        let values = value
            .as_object()
            .ok_or_else(|| schema::Error::NotAnObject {
                what: "value",
                table: schema.table.clone(),
                got: json_type(value),
            })?;
        if let Some(column) = values.keys().find(|c| schema.is_key_column(c)) {
            return Err(schema::Error::InvalidValue {
                column: column.clone(),
                reason: "a key column belongs in the key, not in the value".into(),
            }
            .into());
        }
        let mut row = values.clone();
        match key {
            Json::Object(columns) => {
                row.extend(columns.iter().map(|(c, v)| (c.clone(), v.clone())));
            }
            scalar => {
                // key_from_json accepted a bare value: the table has exactly one key column
                if let Some(column) = schema.key_columns.first() {
                    row.insert(column.name.clone(), scalar.clone());
                }
            }
        }
        Ok(Row::from_json(schema, &Json::Object(row))?)
    }

    /// The value columns of a stored row, as a JSON object.
    fn value(&self, bytes: &[u8]) -> Result<Json> {
        let (row, schema) = self.table.decode_row(bytes)?;
        Ok(value_json(&row, &schema))
    }

    fn values(&self, stored: Vec<Option<Vec<u8>>>) -> Result<Vec<Option<Json>>> {
        stored
            .into_iter()
            .map(|v| v.map(|bytes| self.value(&bytes)).transpose())
            .collect()
    }

    /// Sets the value of `key` (inserts or replaces the row).
    pub async fn put(&self, key: &Json, value: &Json) -> Result<()> {
        let schema = self.table.schema()?;
        let (p, key, row) = self.encoded(&schema, key, value)?;
        self.table.client(p)?.upsert(key, row).await
    }

    /// The value of `key`, `None` when absent (linearizable).
    pub async fn get(&self, key: &Json) -> Result<Option<Json>> {
        let schema = self.table.schema()?;
        let (p, key) = self.table.encode_key(&schema, key)?;
        match self.table.client(p)?.get(key).await? {
            Some(bytes) => Ok(Some(self.value(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether `key` has a value (linearizable).
    pub async fn contains(&self, key: &Json) -> Result<bool> {
        let schema = self.table.schema()?;
        let (p, key) = self.table.encode_key(&schema, key)?;
        Ok(self.table.client(p)?.get(key).await?.is_some())
    }

    /// Removes `key`; true when it had a value.
    pub async fn remove(&self, key: &Json) -> Result<bool> {
        let schema = self.table.schema()?;
        let (p, key) = self.table.encode_key(&schema, key)?;
        self.table.client(p)?.delete(key).await
    }

    /// Sets the value of `key` and returns the value it replaced.
    pub async fn get_and_put(&self, key: &Json, value: &Json) -> Result<Option<Json>> {
        let schema = self.table.schema()?;
        let (p, key, row) = self.encoded(&schema, key, value)?;
        match self.table.client(p)?.get_and_upsert(key, row).await? {
            Some(bytes) => Ok(Some(self.value(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Removes `key` and returns the value it had.
    pub async fn get_and_remove(&self, key: &Json) -> Result<Option<Json>> {
        let schema = self.table.schema()?;
        let (p, key) = self.table.encode_key(&schema, key)?;
        match self.table.client(p)?.get_and_delete(key).await? {
            Some(bytes) => Ok(Some(self.value(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Sets the value of `key` only if it has none; true when it was written.
    pub async fn put_if_absent(&self, key: &Json, value: &Json) -> Result<bool> {
        let schema = self.table.schema()?;
        let (p, key, row) = self.encoded(&schema, key, value)?;
        self.table.client(p)?.insert(key, row).await
    }

    /// Sets every `(key, value)` pair. Every pair is checked before anything is sent (one
    /// bad pair: nothing written); then one command per partition, the partitions in
    /// parallel. Each partition's pairs apply atomically, the call as a whole does not: on
    /// an error some partitions may be written (retrying is safe). Of two pairs with the
    /// same key, the later one wins.
    pub async fn put_all(&self, pairs: &[(Json, Json)]) -> Result<()> {
        let schema = self.table.schema()?;
        let encoded = pairs
            .iter()
            .map(|(key, value)| self.encoded(&schema, key, value))
            .collect::<Result<Vec<_>>>()?;
        self.table.write_partitioned(encoded).await
    }

    /// The values of `keys`, in the same order (`None` where absent). Every key is checked
    /// first; the partitions are read in parallel, each linearizably.
    pub async fn get_all(&self, keys: &[Json]) -> Result<Vec<Option<Json>>> {
        let schema = self.table.schema()?;
        let encoded = keys
            .iter()
            .map(|key| self.table.encode_key(&schema, key))
            .collect::<Result<Vec<_>>>()?;
        let stored = self.table.read_partitioned(encoded).await?;
        self.values(stored)
    }

    /// Removes every key; for each, in the order of `keys`, whether it had a value. Every
    /// key is checked first; one command per partition, the partitions in parallel (each
    /// partition's removals are atomic).
    pub async fn remove_all(&self, keys: &[Json]) -> Result<Vec<bool>> {
        let schema = self.table.schema()?;
        let encoded = keys
            .iter()
            .map(|key| self.table.encode_key(&schema, key))
            .collect::<Result<Vec<_>>>()?;
        self.table.delete_partitioned(encoded).await
    }

    fn encoded(
        &self,
        schema: &Arc<TableSchema>,
        key: &Json,
        value: &Json,
    ) -> Result<(u32, Vec<u8>, Vec<u8>)> {
        let row = self.row(schema, key, value)?;
        self.table.encode_row(schema, &row)
    }
}

/// The value columns of `row` (read through `schema`) as a JSON object.
fn value_json(row: &Row, schema: &TableSchema) -> Json {
    let mut out = Map::new();
    if let Json::Object(columns) = row.to_json(schema) {
        for (name, value) in columns {
            if !schema.is_key_column(&name) {
                out.insert(name, value);
            }
        }
    }
    Json::Object(out)
}
