//! The crate's error type.
use crate::root::ConfigurationType;

/// A configuration error. Messages name the origin (file, environment variable) when there is
/// one, the full dotted key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key (or root) that no configuration root declares.
    #[error("{}key {key}: unknown configuration key", origin_prefix(.origin))]
    UnknownKey {
        /// Where the value came from (`file /x/ignite.toml`), if not an API call.
        origin: Option<String>,
        /// The full dotted key.
        key: String,
    },
    /// A value of the wrong type, out of range, or refused by [`crate::ConfigRoot::validate`].
    #[error("{}key {key}: {reason}", origin_prefix(.origin))]
    InvalidValue {
        /// Where the value came from (`file /x/ignite.toml`), if not an API call.
        origin: Option<String>,
        /// The full dotted key.
        key: String,
        /// Why the value was refused.
        reason: String,
    },
    /// A configuration file that cannot be read or parsed.
    #[error("file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong (`malformed toml: ...`, `cannot read: ...`).
        reason: String,
    },
    /// A change to a root whose storage type has no storage in this manager.
    #[error("key {key}: no {storage_type:?} configuration storage")]
    NoStorage {
        /// The key that was changed.
        key: String,
        /// The missing storage's type.
        storage_type: ConfigurationType,
    },
    /// A stored value that cannot be decoded.
    #[error("stored configuration key {key}: {reason}")]
    Corrupt {
        /// The stored key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The storage kept moving under a change; it was retried and gave up.
    #[error("key {key}: configuration changed concurrently {attempts} times, giving up")]
    Conflict {
        /// The key that was changed.
        key: String,
        /// How many times the change was tried.
        attempts: usize,
    },
    /// A listener refused a change; the change itself is applied and durable.
    #[error("listener of {path} failed: {reason}")]
    ListenerFailed {
        /// The path the listener listens to.
        path: String,
        /// The listener's error.
        reason: String,
    },
    /// The manager has not been started yet.
    #[error("configuration manager {0} is not started")]
    NotStarted(String),
    /// The manager is stopping.
    #[error(transparent)]
    Stopping(#[from] lifecycle::Stopping),
    /// The vault under the local storage failed.
    #[error("local configuration storage: {0}")]
    Vault(#[from] vault::Error),
    /// Any other storage failure (for storages defined in other crates).
    #[error("{storage_type:?} configuration storage: {reason}")]
    Storage {
        /// The failing storage's type.
        storage_type: ConfigurationType,
        /// What went wrong.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn origin_prefix(origin: &Option<String>) -> String {
    match origin {
        Some(o) => format!("{o}: "),
        None => String::new(),
    }
}

impl Error {
    /// The same error, said to come from `origin` (`file /x/ignite.toml`) when it names none.
    pub(crate) fn with_origin(self, new: &str) -> Self {
        match self {
            Error::UnknownKey { origin: None, key } => Error::UnknownKey {
                origin: Some(new.to_owned()),
                key,
            },
            Error::InvalidValue {
                origin: None,
                key,
                reason,
            } => Error::InvalidValue {
                origin: Some(new.to_owned()),
                key,
                reason,
            },
            other => other,
        }
    }

    pub(crate) fn unknown(key: impl Into<String>) -> Self {
        Error::UnknownKey {
            origin: None,
            key: key.into(),
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidValue {
            origin: None,
            key: key.into(),
            reason: reason.into(),
        }
    }
}
