//! The network crate's error type.
use std::net::SocketAddr;

use uuid::Uuid;

/// What can go wrong in membership and messaging.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The network component (or the whole node) is stopping: retry elsewhere.
    #[error(transparent)]
    Stopping(#[from] lifecycle::Stopping),
    /// No reply from the peer within the caller's timeout.
    #[error("invoke to node {peer} timed out after {timeout_ms} ms")]
    Timeout {
        /// The peer's name.
        peer: String,
        /// The timeout the caller gave.
        timeout_ms: u64,
    },
    /// The peer is not (or no longer) in the physical topology with that launch id.
    #[error("node {0} is not in the physical topology")]
    UnknownPeer(String),
    /// The connection to the peer was lost before a reply arrived.
    #[error("connection to node {peer} lost: {reason}")]
    ConnectionLost {
        /// The peer's name.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The peer's handler failed (returned an error or panicked).
    #[error("handler on node {peer} for message group {group} failed: {reason}")]
    Remote {
        /// The peer's name.
        peer: String,
        /// The message group.
        group: u16,
        /// The handler's error.
        reason: String,
    },
    /// A handler is already registered for this message group.
    #[error("a handler for message group {0} is already registered")]
    DuplicateHandler(u16),
    /// Handlers must be registered before the component starts.
    #[error("handler for message group {0} registered after start")]
    RegisteredAfterStart(u16),
    /// A message could not be encoded or decoded.
    #[error("codec error for message group {group}: {reason}")]
    Codec {
        /// The message group.
        group: u16,
        /// What postcard said.
        reason: String,
    },
    /// A frame or envelope read from the network is malformed.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The handshake with a peer was refused.
    #[error("handshake with {addr} refused: {reason}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid network configuration: {0}")]
    Config(String),
    /// Binding or using a socket failed.
    #[error("network i/o error on {addr}: {source}")]
    Io {
        /// The local or remote address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The vault failed while reading or writing the node id.
    #[error("vault error for key {key}: {reason}")]
    Vault {
        /// The vault key.
        key: String,
        /// What the vault said.
        reason: String,
    },
    /// The component was started twice, or used before start.
    #[error("network component is {0}")]
    InvalidState(&'static str),
    /// A peer with an unexpected id or launch answered at an address.
    #[error("node at {addr} is {actual}, expected launch {expected}")]
    WrongPeer {
        /// The address.
        addr: SocketAddr,
        /// The launch id we expected.
        expected: Uuid,
        /// Who answered.
        actual: String,
    },
}

/// The network crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
