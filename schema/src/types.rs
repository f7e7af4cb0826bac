//! Column types, typed values, columns and table schemas with their validation rules.
use std::{cmp::Ordering, fmt, hash::Hash, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest table or column name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// 32-bit signed integer.
    Int32,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit IEEE 754 float.
    Float64,
    /// `true` or `false`.
    Boolean,
    /// UTF-8 text.
    String,
    /// Raw bytes (base64 in JSON).
    Bytes,
    /// Microseconds since the Unix epoch, UTC (RFC 3339 text or an integer in JSON).
    Timestamp,
}

impl ColumnType {
    /// Every type, in tag order.
    pub const ALL: [ColumnType; 7] = [
        ColumnType::Int32,
        ColumnType::Int64,
        ColumnType::Float64,
        ColumnType::Boolean,
        ColumnType::String,
        ColumnType::Bytes,
        ColumnType::Timestamp,
    ];

    /// The name used in JSON, the CLI and errors (`int32`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Boolean => "boolean",
            ColumnType::String => "string",
            ColumnType::Bytes => "bytes",
            ColumnType::Timestamp => "timestamp",
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ColumnType {
    type Err = String;

    /// Parses a type name, case-insensitively, with the usual aliases (`int`, `long`,
    /// `double`, `bool`, `varchar`, `binary`).
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "int32" | "int" | "integer" => ColumnType::Int32,
            "int64" | "long" | "bigint" => ColumnType::Int64,
            "float64" | "double" => ColumnType::Float64,
            "boolean" | "bool" => ColumnType::Boolean,
            "string" | "varchar" | "text" => ColumnType::String,
            "bytes" | "binary" | "varbinary" => ColumnType::Bytes,
            "timestamp" => ColumnType::Timestamp,
            _ => {
                return Err(format!(
                    "unknown column type {s:?}: expected one of int32, int64, float64, boolean, string, bytes, timestamp"
                ))
            }
        })
    }
}

/// A typed, non-null value.
///
/// Equality, hashing and ordering are total: floats compare by [`f64::total_cmp`] (so
/// `NaN == NaN` and `-0.0 < 0.0`), which is also the order of the key encoding. Values of
/// different types order by type.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// An `int32`.
    Int32(i32),
    /// An `int64`.
    Int64(i64),
    /// A `float64`.
    Float64(f64),
    /// A `boolean`.
    Boolean(bool),
    /// A `string`.
    String(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// A `timestamp`: microseconds since the Unix epoch.
    Timestamp(i64),
}

impl Value {
    /// The type of this value.
    pub fn column_type(&self) -> ColumnType {
        match self {
            Value::Int32(_) => ColumnType::Int32,
            Value::Int64(_) => ColumnType::Int64,
            Value::Float64(_) => ColumnType::Float64,
            Value::Boolean(_) => ColumnType::Boolean,
            Value::String(_) => ColumnType::String,
            Value::Bytes(_) => ColumnType::Bytes,
            Value::Timestamp(_) => ColumnType::Timestamp,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Int32(a), Value::Int32(b)) => a.cmp(b),
            (Value::Int64(a), Value::Int64(b)) => a.cmp(b),
            (Value::Float64(a), Value::Float64(b)) => a.total_cmp(b),
            (Value::Boolean(a), Value::Boolean(b)) => a.cmp(b),
            (Value::String(a), Value::String(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
            (a, b) => a.column_type().cmp(&b.column_type()),
        }
    }
}

impl Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.column_type().hash(state);
        match self {
            Value::Int32(v) => v.hash(state),
            Value::Int64(v) | Value::Timestamp(v) => v.hash(state),
            Value::Float64(v) => v.to_bits().hash(state),
            Value::Boolean(v) => v.hash(state),
            Value::String(v) => v.hash(state),
            Value::Bytes(v) => v.hash(state),
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Column {
    /// The name, `[A-Za-z_][A-Za-z0-9_]*`, case-sensitive.
    pub name: String,
    /// The type.
    pub ty: ColumnType,
    /// Whether the column may hold null (never for a key column).
    pub nullable: bool,
    /// The value a row gets when it does not give one (and rows written before the column
    /// was added); must have the column's type.
    pub default: Option<Value>,
}

impl Column {
    /// A non-nullable column without default.
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        Self {
            name: name.into(),
            ty,
            nullable: false,
            default: None,
        }
    }

    /// The same column, nullable.
    #[must_use]
    pub fn nullable(mut self) -> Self {
        self.nullable = true;
        self
    }

    /// The same column with a default.
    #[must_use]
    pub fn with_default(mut self, default: Value) -> Self {
        self.default = Some(default);
        self
    }
}

/// A change to a table's value columns (key columns never change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlterOp {
    /// Add a value column at the end; it must be nullable or have a default.
    AddColumn(Column),
    /// Drop a value column by name.
    DropColumn(String),
}

/// One version of a table's schema: key columns first, then value columns.
///
/// Invariant (checked by [`validate`](Self::validate)): a valid name, version at least 1,
/// at least one key column, no nullable key column, unique column names, defaults of the
/// column's type (finite for floats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// The table's name.
    pub table: String,
    /// The schema version, 1 for a new table, +1 per alter.
    pub version: u32,
    /// The key columns, in key order.
    pub key_columns: Vec<Column>,
    /// The value columns.
    pub value_columns: Vec<Column>,
}

/// Checks a table or column name.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_NAME_LEN
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

impl TableSchema {
    /// Version 1 of a new table, validated.
    pub fn new(
        table: impl Into<String>,
        key_columns: Vec<Column>,
        value_columns: Vec<Column>,
    ) -> Result<Self> {
        let schema = Self {
            table: table.into(),
            version: 1,
            key_columns,
            value_columns,
        };
        schema.validate()?;
        Ok(schema)
    }

    fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::InvalidSchema {
            table: self.table.clone(),
            reason: reason.into(),
        }
    }

    /// Checks every rule of the type's invariant.
    pub fn validate(&self) -> Result<()> {
        check_name("table", &self.table)?;
        if self.version == 0 {
            return Err(self.invalid("schema version must be at least 1"));
        }
        if self.key_columns.is_empty() {
            return Err(self.invalid("a table needs at least one key column"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, column) in self.columns().enumerate() {
            check_name("column", &column.name)?;
            if !seen.insert(column.name.as_str()) {
                return Err(self.invalid(format!("duplicate column {}", column.name)));
            }
            if i < self.key_columns.len() && column.nullable {
                return Err(self.invalid(format!("key column {} cannot be nullable", column.name)));
            }
            if let Some(default) = &column.default {
                if default.column_type() != column.ty {
                    return Err(self.invalid(format!(
                        "default of column {} is {}, expected {}",
                        column.name,
                        default.column_type(),
                        column.ty
                    )));
                }
                if let Value::Float64(f) = default {
                    if !f.is_finite() {
                        return Err(self.invalid(format!(
                            "default of column {} must be a finite number",
                            column.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every column: key columns first, then value columns (the row order).
    pub fn columns(&self) -> impl Iterator<Item = &Column> + '_ {
        self.key_columns.iter().chain(&self.value_columns)
    }

    /// The number of columns.
    pub fn column_count(&self) -> usize {
        self.key_columns.len() + self.value_columns.len()
    }

    /// The position of `name` in the row order.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns().position(|c| c.name == name)
    }

    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns().find(|c| c.name == name)
    }

    /// The column at `index` in the row order.
    pub fn column_at(&self, index: usize) -> Option<&Column> {
        self.columns().nth(index)
    }

    /// Whether `name` is a key column.
    pub fn is_key_column(&self, name: &str) -> bool {
        self.key_columns.iter().any(|c| c.name == name)
    }

    /// The next version with `op` applied; refuses adding an existing column or a
    /// non-nullable column without default, and dropping a key column or an unknown one.
    pub fn apply(&self, op: &AlterOp) -> Result<TableSchema> {
        let refused = |reason: String| Error::AlterRefused {
            table: self.table.clone(),
            reason,
        };
        let version = self
            .version
            .checked_add(1)
            .ok_or_else(|| refused("schema version limit reached".into()))?;
        let mut next = TableSchema {
            version,
            ..self.clone()
        };
        match op {
            AlterOp::AddColumn(column) => {
                check_name("column", &column.name)?;
                if self.column(&column.name).is_some() {
                    return Err(refused(format!("column {} already exists", column.name)));
                }
                if !column.nullable && column.default.is_none() {
                    return Err(refused(format!(
                        "column {} is not nullable and has no default: existing rows would have no value",
                        column.name
                    )));
                }
                next.value_columns.push(column.clone());
            }
            AlterOp::DropColumn(name) => {
                if self.is_key_column(name) {
                    return Err(refused(format!("column {name} is a key column")));
                }
                let before = next.value_columns.len();
                next.value_columns.retain(|c| &c.name != name);
                if next.value_columns.len() == before {
                    return Err(refused(format!("column {name} does not exist")));
                }
            }
        }
        next.validate()?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> TableSchema {
        TableSchema::new(
            "people",
            vec![Column::new("id", ColumnType::Int64)],
            vec![Column::new("name", ColumnType::String).nullable()],
        )
        .unwrap()
    }

    #[test]
    fn validation_rules_name_the_column() {
        let cases: Vec<(TableSchema, &str)> = vec![
            (
                TableSchema {
                    key_columns: vec![],
                    ..base()
                },
                "at least one key column",
            ),
            (
                TableSchema {
                    key_columns: vec![Column::new("id", ColumnType::Int64).nullable()],
                    ..base()
                },
                "key column id cannot be nullable",
            ),
            (
                TableSchema {
                    value_columns: vec![Column::new("id", ColumnType::String)],
                    ..base()
                },
                "duplicate column id",
            ),
            (
                TableSchema {
                    value_columns: vec![
                        Column::new("n", ColumnType::Int32).with_default(Value::String("x".into()))
                    ],
                    ..base()
                },
                "default of column n is string, expected int32",
            ),
            (
                TableSchema {
                    value_columns: vec![Column::new("9lives", ColumnType::Int32)],
                    ..base()
                },
                "invalid column name \"9lives\"",
            ),
            (
                TableSchema {
                    table: "bad-name".into(),
                    ..base()
                },
                "invalid table name \"bad-name\"",
            ),
            (
                TableSchema {
                    version: 0,
                    ..base()
                },
                "version must be at least 1",
            ),
        ];
        for (schema, expected) in cases {
            let err = schema.validate().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
        assert!(base().validate().is_ok());
    }

    #[test]
    fn alter_adds_and_drops_value_columns_only() {
        let s = base();
        let v2 = s
            .apply(&AlterOp::AddColumn(
                Column::new("age", ColumnType::Int32).with_default(Value::Int32(0)),
            ))
            .unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(v2.column_index("age"), Some(2));
        let v3 = v2.apply(&AlterOp::DropColumn("name".into())).unwrap();
        assert_eq!(v3.version, 3);
        assert!(v3.column("name").is_none());

        let refusals = [
            (
                AlterOp::DropColumn("id".into()),
                "column id is a key column",
            ),
            (
                AlterOp::DropColumn("nope".into()),
                "column nope does not exist",
            ),
            (
                AlterOp::AddColumn(Column::new("name", ColumnType::String).nullable()),
                "column name already exists",
            ),
            (
                AlterOp::AddColumn(Column::new("strict", ColumnType::Int32)),
                "column strict is not nullable and has no default",
            ),
        ];
        for (op, expected) in refusals {
            let err = s.apply(&op).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn type_names_parse_and_print() {
        for ty in ColumnType::ALL {
            assert_eq!(ty.as_str().parse::<ColumnType>().unwrap(), ty);
        }
        assert_eq!("BIGINT".parse::<ColumnType>().unwrap(), ColumnType::Int64);
        assert!("decimal".parse::<ColumnType>().is_err());
    }

    #[test]
    fn float_values_are_totally_ordered() {
        assert_eq!(Value::Float64(f64::NAN), Value::Float64(f64::NAN));
        assert!(Value::Float64(-0.0) < Value::Float64(0.0));
        assert!(
            Value::Int32(5) < Value::Int64(0),
            "values order by type first"
        );
    }
}
