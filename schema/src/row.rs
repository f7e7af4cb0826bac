//! [`Row`]: the values of one row in one schema version, its JSON form, and [`upgrade`]
//! between versions.
use serde_json::{Map, Value as Json};

use crate::{
    error::{Error, Result},
    json::{json_type, value_from_json, value_to_json},
    types::{Column, TableSchema, Value},
};

/// One row: the schema version it belongs to and a value (or null) per column in row order
/// (key columns first).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Row {
    version: u32,
    values: Vec<Option<Value>>,
}

impl Row {
    /// A row of `schema` from its values in row order, checked against the schema.
    pub fn new(schema: &TableSchema, values: Vec<Option<Value>>) -> Result<Self> {
        let row = Self {
            version: schema.version,
            values,
        };
        row.check(schema)?;
        Ok(row)
    }

    /// A row without checks: the decoder has checked already.
    pub(crate) fn from_parts(version: u32, values: Vec<Option<Value>>) -> Self {
        Self { version, values }
    }

    /// The schema version of the row.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The values in row order (`None`: null).
    pub fn values(&self) -> &[Option<Value>] {
        &self.values
    }

    /// The values, consumed.
    pub fn into_values(self) -> Vec<Option<Value>> {
        self.values
    }

    /// The value of column `name` (`None`: null or no such column).
    pub fn get(&self, schema: &TableSchema, name: &str) -> Option<&Value> {
        self.values.get(schema.column_index(name)?)?.as_ref()
    }

    /// The key columns' values, in key order.
    pub fn key(&self, schema: &TableSchema) -> Vec<Value> {
        self.values
            .iter()
            .take(schema.key_columns.len())
            .flatten()
            .cloned()
            .collect()
    }

    /// Checks that the row belongs to `schema`: version, column count, types and nulls.
    pub fn check(&self, schema: &TableSchema) -> Result<()> {
        if self.version != schema.version {
            return Err(Error::VersionMismatch {
                table: schema.table.clone(),
                row_version: self.version,
                expected: schema.version,
            });
        }
        if self.values.len() != schema.column_count() {
            return Err(Error::InvalidSchema {
                table: schema.table.clone(),
                reason: format!(
                    "row has {} values, schema version {} has {} columns",
                    self.values.len(),
                    schema.version,
                    schema.column_count()
                ),
            });
        }
        for (column, value) in schema.columns().zip(&self.values) {
            match value {
                None if !column.nullable => {
                    return Err(Error::NullNotAllowed {
                        column: column.name.clone(),
                    })
                }
                Some(v) if v.column_type() != column.ty => {
                    return Err(Error::InvalidValue {
                        column: column.name.clone(),
                        reason: format!("expected {}, got {}", column.ty, v.column_type()),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A row of `schema` from a JSON object. Key columns are required; a missing value
    /// column gets its default, else null (refused if not nullable). Unknown columns, wrong
    /// types and null in a non-nullable column are errors naming the column.
    pub fn from_json(schema: &TableSchema, json: &Json) -> Result<Self> {
        let object = as_object(schema, "row", json)?;
        if let Some(unknown) = object.keys().find(|k| schema.column(k).is_none()) {
            return Err(Error::UnknownColumn {
                table: schema.table.clone(),
                column: unknown.clone(),
                value_column: false,
            });
        }
        let key_count = schema.key_columns.len();
        let mut values = Vec::with_capacity(schema.column_count());
        for (i, column) in schema.columns().enumerate() {
            let value = match object.get(&column.name) {
                None if i < key_count => {
                    return Err(Error::MissingColumn {
                        column: column.name.clone(),
                        reason: "key columns are required",
                    })
                }
                None => match &column.default {
                    Some(default) => Some(default.clone()),
                    None if column.nullable => None,
                    None => {
                        return Err(Error::MissingColumn {
                            column: column.name.clone(),
                            reason: "not nullable and no default",
                        })
                    }
                },
                Some(json) => column_value(column, json)?,
            };
            values.push(value);
        }
        Ok(Self {
            version: schema.version,
            values,
        })
    }

    /// The row as a JSON object with every column (null as `null`).
    pub fn to_json(&self, schema: &TableSchema) -> Json {
        let mut object = Map::new();
        for (column, value) in schema.columns().zip(&self.values) {
            object.insert(
                column.name.clone(),
                value.as_ref().map_or(Json::Null, value_to_json),
            );
        }
        Json::Object(object)
    }
}

fn as_object<'a>(
    schema: &TableSchema,
    what: &'static str,
    json: &'a Json,
) -> Result<&'a Map<String, Json>> {
    json.as_object().ok_or_else(|| Error::NotAnObject {
        what,
        table: schema.table.clone(),
        got: json_type(json),
    })
}

fn column_value(column: &Column, json: &Json) -> Result<Option<Value>> {
    if json.is_null() {
        return if column.nullable {
            Ok(None)
        } else {
            Err(Error::NullNotAllowed {
                column: column.name.clone(),
            })
        };
    }
    value_from_json(column, json)
        .map(Some)
        .map_err(|reason| Error::InvalidValue {
            column: column.name.clone(),
            reason,
        })
}

/// The key values (in key order) from a JSON object of the key columns, or from a bare
/// value when the table has one key column.
pub fn key_from_json(schema: &TableSchema, json: &Json) -> Result<Vec<Value>> {
    if !json.is_object() {
        if let [column] = schema.key_columns.as_slice() {
            if json.is_array() {
                return Err(Error::NotAnObject {
                    what: "key",
                    table: schema.table.clone(),
                    got: json_type(json),
                });
            }
            return column_value(column, json).map(|v| v.into_iter().collect());
        }
    }
    let object = as_object(schema, "key", json)?;
    if let Some(other) = object.keys().find(|k| !schema.is_key_column(k)) {
        return Err(Error::UnknownColumn {
            table: schema.table.clone(),
            column: other.clone(),
            value_column: schema.column(other).is_some(),
        });
    }
    schema
        .key_columns
        .iter()
        .map(|column| match object.get(&column.name) {
            None => Err(Error::MissingColumn {
                column: column.name.clone(),
                reason: "key columns are required",
            }),
            Some(json) => column_value(column, json)?.ok_or_else(|| Error::NullNotAllowed {
                column: column.name.clone(),
            }),
        })
        .collect()
}

/// Reads `row`, written with `from`, through `to`: columns are matched by name and type;
/// dropped columns disappear; added columns get their default or null.
///
/// Exact between consecutive versions. Across several versions, go one version at a time
/// (as [`crate::SchemaManager::upgrade`] does): a column dropped and added again with the
/// same name and type in between would otherwise keep its old values.
pub fn upgrade(row: &Row, from: &TableSchema, to: &TableSchema) -> Result<Row> {
    row.check(from)?;
    if from.table != to.table {
        return Err(Error::InvalidSchema {
            table: to.table.clone(),
            reason: format!("cannot read a row of table {} through it", from.table),
        });
    }
    let mut values = Vec::with_capacity(to.column_count());
    for column in to.columns() {
        let old = from
            .column_index(&column.name)
            .filter(|&i| from.column_at(i).is_some_and(|c| c.ty == column.ty));
        let value = match old {
            Some(i) => row.values[i].clone(),
            None => column.default.clone(),
        };
        if value.is_none() && !column.nullable {
            return Err(Error::NullNotAllowed {
                column: column.name.clone(),
            });
        }
        values.push(value);
    }
    Ok(Row {
        version: to.version,
        values,
    })
}
