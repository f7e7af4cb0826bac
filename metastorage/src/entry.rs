//! The unit of MetaStorage data: one version of one key.
use serde::{Deserialize, Serialize};

/// One version of a key.
///
/// `revision` is the global revision of the write command that produced it;
/// `update_counter` is a global counter bumped once per entry written, so every version in
/// the storage has a distinct one (entries of one revision are numbered in key order). A
/// removal writes a tombstone: `value: None`, `tombstone: true`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value; `None` for a tombstone.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// The revision that wrote this version.
    pub revision: u64,
    /// The global update counter of this version.
    pub update_counter: u64,
    /// True when this version records a removal.
    pub tombstone: bool,
}

impl Entry {
    /// A live version of `key`.
    pub fn live(key: Vec<u8>, value: Vec<u8>, revision: u64, update_counter: u64) -> Self {
        Self {
            key,
            value: Some(value),
            revision,
            update_counter,
            tombstone: false,
        }
    }

    /// A tombstone for `key`.
    pub fn tombstone(key: Vec<u8>, revision: u64, update_counter: u64) -> Self {
        Self {
            key,
            value: None,
            revision,
            update_counter,
            tombstone: true,
        }
    }

    /// The value if this version is live.
    pub fn live_value(&self) -> Option<&[u8]> {
        if self.tombstone {
            None
        } else {
            self.value.as_deref()
        }
    }
}

/// Where the Raft log stands for the applied state: the index and term of the last applied
/// log entry. Persisted atomically with the data it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPosition {
    /// The log index.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
}

impl LogPosition {
    /// A position.
    pub fn new(index: u64, term: u64) -> Self {
        Self { index, term }
    }

    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.index.to_be_bytes());
        out[8..].copy_from_slice(&self.term.to_be_bytes());
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let index = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let term = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        (bytes.len() == 16).then_some(Self { index, term })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_position_round_trips_and_rejects_bad_lengths() {
        let p = LogPosition::new(7, u64::MAX);
        assert_eq!(LogPosition::from_bytes(&p.to_bytes()), Some(p));
        assert_eq!(LogPosition::from_bytes(&[0; 15]), None);
        assert_eq!(LogPosition::from_bytes(&[0; 17]), None);
    }

    #[test]
    fn tombstones_have_no_live_value() {
        assert_eq!(Entry::tombstone(b"k".to_vec(), 2, 3).live_value(), None);
        assert_eq!(
            Entry::live(b"k".to_vec(), b"v".to_vec(), 2, 3).live_value(),
            Some(&b"v"[..])
        );
    }
}
