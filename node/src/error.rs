//! Errors of node assembly.
use std::path::PathBuf;

/// Why a node could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bootstrap configuration (file, environment, flags) is invalid.
    #[error(transparent)]
    Configuration(#[from] configuration::Error),
    /// A component failed to start; the ones before it were stopped.
    #[error(transparent)]
    Start(#[from] lifecycle::StartError),
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The REST address could not be bound.
    #[error("rest address {address}: {source}")]
    RestBind {
        /// The address from `rest.listen`.
        address: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// MetaStorage or cluster init failed.
    #[error(transparent)]
    MetaStorage(#[from] metastorage::Error),
    /// A run level change was refused (the message says why).
    #[error("run level: {0}")]
    RunLevel(String),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] vault::Error),
}

/// Result of node operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
