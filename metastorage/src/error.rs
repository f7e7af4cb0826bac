//! The MetaStorage error type.
use std::path::PathBuf;

/// Everything that can go wrong in the MetaStorage core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A read asked for a revision that compaction has removed.
    #[error("revision {requested} is compacted: history is compacted up to revision {compacted}")]
    Compacted {
        /// The revision that was asked for.
        requested: u64,
        /// The revision history is compacted up to (the oldest readable revision).
        compacted: u64,
    },
    /// A read asked for a revision this storage has not reached yet (retry later).
    #[error("revision {requested} is ahead of the storage revision {current}")]
    RevisionAhead {
        /// The revision that was asked for.
        requested: u64,
        /// The storage's current revision.
        current: u64,
    },
    /// An I/O error on the storage's files.
    #[error("i/o error on metastorage database {}: {source}", path.display())]
    Io {
        /// The database directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be read: corrupt, or written by something else.
    #[error("metastorage database {} is corrupt or unreadable: {reason}", path.display())]
    Corrupt {
        /// The database directory (empty for an in-memory storage).
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Bytes from disk or the wire did not decode.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded (`command`, `response`, `snapshot`, ...).
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A value did not encode (should not happen for the crate's own types).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A watch was registered after `deploy_watches()`.
    #[error("watches are already deployed: register watch {watch} before deploy_watches()")]
    WatchesDeployed {
        /// The watch's description.
        watch: String,
    },
    /// A watch listener failed; delivery stopped at this revision.
    #[error("watch {watch} listener failed at revision {revision}: {reason}")]
    ListenerFailed {
        /// The watch's id.
        watch: u64,
        /// The revision being delivered.
        revision: u64,
        /// The listener's error.
        reason: String,
    },
    /// Watch delivery stopped on a failure (a listener's or the storage's) at `revision`.
    #[error("watch delivery stopped at revision {revision}: {reason}")]
    DeliveryFailed {
        /// The revision that could not be delivered.
        revision: u64,
        /// The failure.
        reason: String,
    },
    /// The component is stopping (or stopped): retry elsewhere, not fatal.
    #[error(transparent)]
    Stopping(#[from] lifecycle::Stopping),
}

impl Error {
    /// True for errors that mean "try again later or elsewhere" rather than a fault.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Stopping(_) | Error::RevisionAhead { .. })
    }

    pub(crate) fn decode(what: &'static str, e: impl std::fmt::Display) -> Self {
        Error::Decode {
            what,
            reason: e.to_string(),
        }
    }

    pub(crate) fn encode(what: &'static str, e: impl std::fmt::Display) -> Self {
        Error::Encode {
            what,
            reason: e.to_string(),
        }
    }
}

/// The MetaStorage result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
