//! The storage swap point: a small synchronous trait and its implementations.
mod disk;
mod memory;

pub(crate) use self::disk::panic_message;
pub use self::{disk::SledVaultStorage, memory::MemoryVaultStorage};
use crate::error::Result;

/// One change: `value: None` means the key was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` for a removal.
    pub value: Option<Vec<u8>>,
}

impl VaultEntry {
    /// A change that sets `key` to `value`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// A change that removes `key`.
    pub fn remove(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            value: None,
        }
    }
}

/// Storage swap point (sync; the manager moves blocking calls off the async runtime).
///
/// Entries of one batch apply in order, so a later entry for the same key wins.
pub trait VaultStorage: Send + Sync + 'static {
    /// The value of `key`, if present.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Apply `batch` atomically; durable (flushed/fsynced) when it returns.
    fn write_batch(&self, batch: &[VaultEntry]) -> Result<()>;
    /// Entries with keys in `[from, to)`, in key order; empty when `from >= to`.
    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Entries whose keys start with `prefix`, in key order.
    fn prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Make everything written so far durable.
    fn flush(&self) -> Result<()>;
}
