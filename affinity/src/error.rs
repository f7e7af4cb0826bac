//! The affinity error type.

/// Everything that can go wrong with assignments.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Assignments need at least one baseline node.
    #[error("cannot assign partitions of table {table}: the baseline is empty")]
    EmptyBaseline {
        /// The table.
        table: String,
    },
    /// A table needs at least one partition and one replica.
    #[error("table {table}: {reason}")]
    Invalid {
        /// The table.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// Stored assignments did not decode.
    #[error("cannot decode the assignments at key {key}: {reason}")]
    Decode {
        /// The MetaStorage key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Assignments did not encode (should not happen).
    #[error("cannot encode the assignments of table {table}: {reason}")]
    Encode {
        /// The table.
        table: String,
        /// Why.
        reason: String,
    },
    /// The component is not running on this node.
    #[error("affinity is not started on this node")]
    NotStarted,
    /// The component is stopping: retry elsewhere.
    #[error(transparent)]
    Stopping(#[from] lifecycle::Stopping),
    /// The baseline could not be read.
    #[error("affinity: {0}")]
    Baseline(#[from] baseline::Error),
    /// MetaStorage failed.
    #[error("assignments in metastorage: {0}")]
    MetaStorage(#[from] metastorage::Error),
}

impl Error {
    /// True for errors that mean "try again later or elsewhere".
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Stopping(_) | Error::NotStarted => true,
            Error::Baseline(e) => e.is_retryable(),
            Error::MetaStorage(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// The affinity result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
