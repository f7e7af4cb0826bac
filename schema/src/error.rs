//! The schema error type.

/// Everything that can go wrong with schemas, rows and the schema manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A table or column name is not `[A-Za-z_][A-Za-z0-9_]*` (at most 128 characters).
    #[error(
        "invalid {what} name {name:?}: expected [A-Za-z_][A-Za-z0-9_]* of at most 128 characters"
    )]
    InvalidName {
        /// `table` or `column`.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// A schema breaks a rule (no key column, nullable key, duplicate name, bad default...).
    #[error("invalid schema for table {table}: {reason}")]
    InvalidSchema {
        /// The table.
        table: String,
        /// Which rule, naming the column.
        reason: String,
    },
    /// A JSON row or key is not an object (or a scalar for a one-column key).
    #[error("expected a JSON object for a {what} of table {table}, got {got}")]
    NotAnObject {
        /// `row` or `key`.
        what: &'static str,
        /// The table.
        table: String,
        /// The JSON type found.
        got: &'static str,
    },
    /// A JSON row or key names a column the table does not have (or, for a key, a value
    /// column).
    #[error("unknown column {column} in table {table}{}", if *.value_column { " key: it is a value column" } else { "" })]
    UnknownColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// True when the column exists but is not part of the key.
        value_column: bool,
    },
    /// A key column (or a non-nullable column without default) is missing.
    #[error("missing column {column}: {reason}")]
    MissingColumn {
        /// The column.
        column: String,
        /// Why it is required.
        reason: &'static str,
    },
    /// A value has the wrong type or is out of range for its column.
    #[error("invalid value for column {column}: {reason}")]
    InvalidValue {
        /// The column.
        column: String,
        /// What was wrong.
        reason: String,
    },
    /// Null (or nothing) in a column that does not allow it.
    #[error("column {column} is not nullable")]
    NullNotAllowed {
        /// The column.
        column: String,
    },
    /// Encoded row or key bytes did not decode.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// `row`, `key` or `schema record`.
        what: &'static str,
        /// Why, with the byte offset where it applies.
        reason: String,
    },
    /// A row does not belong to the schema it is used with.
    #[error("row of table {table} has schema version {row_version}, expected {expected}")]
    VersionMismatch {
        /// The table.
        table: String,
        /// The row's version.
        row_version: u32,
        /// The schema's version.
        expected: u32,
    },
    /// `create` of a table that exists.
    #[error("table {table} already exists")]
    TableExists {
        /// The table.
        table: String,
    },
    /// The table has no schema.
    #[error("table {table} not found")]
    TableNotFound {
        /// The table.
        table: String,
    },
    /// The table has no such schema version.
    #[error("table {table} has no schema version {version}")]
    VersionNotFound {
        /// The table.
        table: String,
        /// The version.
        version: u32,
    },
    /// An alter was refused: adding a column that exists, dropping an unknown or key column,
    /// adding a non-nullable column without default.
    #[error("cannot alter table {table}: {reason}")]
    AlterRefused {
        /// The table.
        table: String,
        /// Why, naming the column.
        reason: String,
    },
    /// Another alter (or a drop) changed the table first: re-read and retry.
    #[error(
        "concurrent change of table {table}: expected latest version {expected}, found {found}"
    )]
    Conflict {
        /// The table.
        table: String,
        /// The version the caller based its change on.
        expected: u32,
        /// The latest version now (0: the table was dropped).
        found: u32,
    },
    /// The schema manager is not started on this node.
    #[error("schema manager is not started")]
    NotStarted,
    /// The component is stopping: retry elsewhere, not fatal.
    #[error(transparent)]
    Stopping(#[from] lifecycle::Stopping),
    /// A MetaStorage operation failed.
    #[error("metastorage: {0}")]
    MetaStorage(#[from] metastorage::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True for errors where a retry may succeed (stopping, a lost race, MetaStorage
    /// unavailable), as opposed to a request that is wrong.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Stopping(_) | Error::Conflict { .. } | Error::NotStarted => true,
            Error::MetaStorage(e) => e.is_retryable(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_told_apart_from_wrong_requests() {
        let conflict = Error::Conflict {
            table: "t".into(),
            expected: 1,
            found: 2,
        };
        assert!(conflict.is_retryable());
        assert!(Error::Stopping(lifecycle::Stopping::NodeStopping).is_retryable());
        assert!(!Error::TableNotFound { table: "t".into() }.is_retryable());
        assert_eq!(
            conflict.to_string(),
            "concurrent change of table t: expected latest version 1, found 2"
        );
    }
}
