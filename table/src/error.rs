//! The table crate's error type: retryable conditions (no leader, unreachable replica,
//! stopping, timeout) are kept apart from fatal ones (storage, codec).
use std::path::PathBuf;

use lifecycle::Stopping;

/// Errors of the table crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The partition storage failed.
    #[error("partition storage {path}: {reason}")]
    Storage {
        /// The database path or tree name (`memory` for the in-memory storage).
        path: String,
        /// Why.
        reason: String,
    },
    /// Creating or opening a storage directory failed.
    #[error("partition storage i/o at {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes read from disk, the log or the network could not be decoded.
    #[error("decoding {what}: {reason}")]
    Decode {
        /// What was decoded.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A value could not be encoded.
    #[error("encoding {what}: {reason}")]
    Encode {
        /// What was encoded.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The state machine refused a command (every replica refuses it the same way).
    #[error("partition {table_id}/{partition} refused the command: {reason}")]
    InvalidCommand {
        /// The table.
        table_id: String,
        /// The partition.
        partition: u32,
        /// Why.
        reason: String,
    },
    /// The partition has no replica on the node asked, or the storage was destroyed.
    #[error("partition {table_id}/{partition} is not served by node {node}")]
    PartitionNotFound {
        /// The table.
        table_id: String,
        /// The partition.
        partition: u32,
        /// The node that was asked.
        node: String,
    },
    /// No replica answered before the deadline; a write may or may not have been applied
    /// (retrying the same command id is safe).
    #[error("partition {table_id}/{partition}: {what} timed out: {last_error}")]
    Timeout {
        /// The table.
        table_id: String,
        /// The partition.
        partition: u32,
        /// What timed out.
        what: &'static str,
        /// The last retryable error seen.
        last_error: String,
    },
    /// Raft refused or failed the request.
    #[error(transparent)]
    Raft(#[from] raft::Error),
    /// A replica could not be reached.
    #[error("node {node} is unreachable: {reason}")]
    Unreachable {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// A remote replica failed the request with a fatal error.
    #[error("node {node} failed the request: {reason}")]
    Remote {
        /// The node.
        node: String,
        /// Its error.
        reason: String,
    },
    /// The component or the node is stopping; retry elsewhere.
    #[error(transparent)]
    Stopping(#[from] Stopping),
    /// The service was used in a state that does not allow it.
    #[error("partition service: {0}")]
    InvalidState(String),
    /// MetaStorage failed (table definitions live there).
    #[error(transparent)]
    MetaStorage(#[from] metastorage::Error),
    /// The schema manager refused or failed.
    #[error(transparent)]
    Schema(#[from] schema::Error),
    /// The affinity manager refused or failed.
    #[error(transparent)]
    Affinity(#[from] affinity::Error),
    /// A table with this name exists already.
    #[error("table {table} already exists")]
    TableExists {
        /// The table.
        table: String,
    },
    /// A table definition was refused.
    #[error("table {table}: {reason}")]
    InvalidTable {
        /// The table.
        table: String,
        /// Why.
        reason: String,
    },
    /// No table with this name.
    #[error("table {table} does not exist")]
    TableNotFound {
        /// The table.
        table: String,
    },
    /// The table manager is not started.
    #[error("table manager is not started")]
    NotStarted,
}

impl Error {
    /// True for conditions where retrying (later, or at another replica) can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Raft(e) => e.is_retryable(),
            Self::MetaStorage(e) => e.is_retryable(),
            Self::Schema(e) => e.is_retryable(),
            Self::Affinity(e) => e.is_retryable(),
            Self::Unreachable { .. }
            | Self::PartitionNotFound { .. }
            | Self::Timeout { .. }
            | Self::Stopping(_) => true,
            _ => false,
        }
    }

    pub(crate) fn storage(path: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Storage {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// `value` as postcard bytes; the error names `what`.
    pub(crate) fn postcard(what: &'static str, value: &impl serde::Serialize) -> Result<Vec<u8>> {
        postcard::to_stdvec(value).map_err(|e| Self::Encode {
            what,
            reason: e.to_string(),
        })
    }

    pub(crate) fn decode(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Decode {
            what,
            reason: reason.to_string(),
        }
    }
}

/// The table crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
