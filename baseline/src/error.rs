//! The baseline error type.

/// Everything that can go wrong with the baseline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A baseline must name at least one node.
    #[error("baseline must name at least one node")]
    Empty,
    /// A manual baseline named nodes outside the logical topology.
    #[error("nodes {} are not in the logical topology", .0.join(", "))]
    NotInLogicalTopology(Vec<String>),
    /// The stored baseline did not decode.
    #[error("cannot decode the baseline at key {key}: {reason}")]
    Decode {
        /// The MetaStorage key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The baseline did not encode (should not happen).
    #[error("cannot encode the baseline: {0}")]
    Encode(String),
    /// The `baseline` configuration root could not be read.
    #[error("baseline configuration: {0}")]
    Config(String),
    /// The component is not running on this node.
    #[error("baseline is not started on this node")]
    NotStarted,
    /// Concurrent writers kept changing the baseline; retry.
    #[error("baseline changed concurrently {attempts} times; retry")]
    Contended {
        /// How many conditional writes failed.
        attempts: usize,
    },
    /// The component is stopping: retry elsewhere.
    #[error(transparent)]
    Stopping(#[from] lifecycle::Stopping),
    /// MetaStorage failed.
    #[error("baseline in metastorage: {0}")]
    MetaStorage(#[from] metastorage::Error),
}

impl Error {
    /// True for errors that mean "try again later or elsewhere".
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Stopping(_) | Error::NotStarted | Error::Contended { .. } => true,
            Error::MetaStorage(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// The baseline result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
