//! The vault's error type.
use std::path::PathBuf;

/// Everything that can go wrong in the vault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operation was called before the vault was started.
    #[error("vault is not started")]
    NotStarted,
    /// `start` was called on a vault that is already starting or running.
    #[error("vault is already started")]
    AlreadyStarted,
    /// The vault is stopping (or stopped): retry elsewhere, not fatal.
    #[error(transparent)]
    Stopping(#[from] lifecycle::Stopping),
    /// The data directory is held by another running vault (this or another process).
    #[error("data directory {} is in use by another node", path.display())]
    Locked {
        /// The vault directory that is locked.
        path: PathBuf,
    },
    /// The database could not be read: corrupt, or written by something else.
    #[error("vault database {} is corrupt or unreadable: {reason}", path.display())]
    Corrupt {
        /// The vault directory.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// An I/O error on a file of the vault.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A stored value has an unexpected shape (for example a node name that is not UTF-8).
    #[error("invalid value at key {key}: {reason}")]
    InvalidValue {
        /// The key, lossily decoded as UTF-8.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A storage operation panicked (in a storage without a path, such as an embedded one).
    #[error("vault storage operation panicked: {0}")]
    Panicked(String),
}

impl Error {
    /// True for errors that mean "this vault is going away, retry elsewhere".
    pub fn is_stopping(&self) -> bool {
        matches!(self, Error::Stopping(_))
    }
}

/// The vault's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
