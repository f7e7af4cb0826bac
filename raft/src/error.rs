//! The raft crate's error type: retryable conditions (no leader, stopping, timeout) are kept
//! apart from fatal ones (storage, codec, a group that died).
use lifecycle::Stopping;

/// Errors of the raft crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node is not the leader of the group and could not forward; retry (at `leader`).
    #[error("node is not the leader of group {group}; leader is {}", .leader.as_deref().unwrap_or("unknown"))]
    NotLeader {
        /// The group.
        group: String,
        /// The leader's node name, when known.
        leader: Option<String>,
    },
    /// The component or the node is stopping; retry elsewhere.
    #[error(transparent)]
    Stopping(#[from] Stopping),
    /// An operation did not finish within its deadline; it may or may not have taken effect.
    #[error("{what} in group {group} timed out")]
    Timeout {
        /// The group.
        group: String,
        /// What timed out.
        what: String,
    },
    /// A peer could not be reached; retry.
    #[error("node {node} is unreachable: {reason}")]
    Unreachable {
        /// The peer's node name.
        node: String,
        /// Why.
        reason: String,
    },
    /// The group is not running on this node.
    #[error("raft group {0} is not running on this node")]
    GroupNotFound(String),
    /// A group with this id is already running on this node.
    #[error("raft group {0} is already running on this node")]
    GroupExists(String),
    /// The request was refused (bad membership change, unknown node, ...).
    #[error("raft group {group}: {reason}")]
    Rejected {
        /// The group.
        group: String,
        /// Why.
        reason: String,
    },
    /// The user state machine failed to apply a command or restore a snapshot.
    #[error("state machine of raft group {group}: {reason}")]
    StateMachine {
        /// The group.
        group: String,
        /// Why.
        reason: String,
    },
    /// The log storage failed.
    #[error("raft log storage at {path}: {reason}")]
    Storage {
        /// The storage path (or `memory`) and group.
        path: String,
        /// Why.
        reason: String,
    },
    /// Encoding or decoding of a stored or received value failed.
    #[error("codec of {what}: {reason}")]
    Codec {
        /// What was being encoded or decoded.
        what: String,
        /// Why.
        reason: String,
    },
    /// The group stopped with a fatal error (storage failure, panic).
    #[error("raft group {group} failed: {reason}")]
    Fatal {
        /// The group.
        group: String,
        /// Why.
        reason: String,
    },
    /// The configuration could not be read.
    #[error("raft configuration: {0}")]
    Config(String),
    /// The component was used before start or after stop.
    #[error("raft manager is {0}")]
    InvalidState(&'static str),
}

impl Error {
    /// True for conditions where retrying (later, or at another node) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::NotLeader { .. }
                | Self::Stopping(_)
                | Self::Timeout { .. }
                | Self::Unreachable { .. }
                | Self::GroupNotFound(_)
        )
    }

    pub(crate) fn storage(path: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Storage {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn codec(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Codec {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// The raft crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
