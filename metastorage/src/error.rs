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
    /// The cluster has no cluster state yet: nothing replicated exists.
    #[error("cluster is not initialized: run `ignite cluster init`")]
    NotInitialized,
    /// The cluster is initialized but the MetaStorage component is not running on this node
    /// (it has not started yet, or it stopped).
    #[error("metastorage is not started on node {node}")]
    NotStarted {
        /// This node's name (empty before the network started).
        node: String,
    },
    /// Watches were deployed already, or deploy was asked for twice.
    #[error("metastorage watches are already deployed")]
    AlreadyDeployed,
    /// An init request asked for other parameters than the cluster was initialized with.
    #[error("cluster is already initialized: {0}")]
    AlreadyInitialized(String),
    /// An init request that cannot be carried out (unknown node names, empty name, ...).
    #[error("cluster init refused: {0}")]
    InvalidInit(String),
    /// The cluster state was stored on some nodes but not delivered to others.
    #[error("cluster state was not delivered to every node: {0}; retry the same init")]
    InitIncomplete(String),
    /// The Raft group of the MetaStorage failed.
    #[error("metastorage raft group: {0}")]
    Raft(#[from] raft::Error),
    /// The vault (where the cluster state lives) failed.
    #[error("metastorage cluster state in the vault: {0}")]
    Vault(#[from] vault::Error),
    /// A message to another node failed.
    #[error("metastorage messaging: {0}")]
    Network(#[from] network::Error),
    /// The `metastorage` configuration could not be read.
    #[error("metastorage configuration: {0}")]
    Config(String),
    /// A write command was rejected by the state machine (it did not decode there).
    #[error("metastorage command rejected: {0}")]
    Rejected(String),
    /// An operation did not finish in time; a write may or may not have been applied.
    #[error("metastorage {what} timed out after {millis} ms")]
    Timeout {
        /// What timed out.
        what: String,
        /// The deadline, in milliseconds.
        millis: u64,
    },
}

impl Error {
    /// True for errors that mean "try again later or elsewhere" rather than a fault.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Stopping(_)
            | Error::RevisionAhead { .. }
            | Error::NotStarted { .. }
            | Error::Timeout { .. } => true,
            Error::Raft(e) => e.is_retryable(),
            Error::Network(e) => network_retryable(e),
            _ => false,
        }
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

fn network_retryable(e: &network::Error) -> bool {
    matches!(
        e,
        network::Error::Stopping(_)
            | network::Error::Timeout { .. }
            | network::Error::UnknownPeer(_)
            | network::Error::ConnectionLost { .. }
            | network::Error::Io { .. }
    )
}

/// The MetaStorage result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
