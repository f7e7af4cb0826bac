//! Partition commands and responses: what travels through a partition's Raft log.
//!
//! Every command carries a [`CommandId`] (a client id and its sequence number): a retry of
//! the same id is applied once and answered with the first response. Encoding is a format
//! version byte then postcard; decoding is strict (no trailing bytes) and never panics.
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// The format version byte in front of every encoded command and response.
const WIRE_VERSION: u8 = 1;

/// Identifies a command across client retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId {
    /// The client (a random id per client instance).
    pub client: Uuid,
    /// The client's sequence number.
    pub seq: u64,
}

impl CommandId {
    /// A command id of a client.
    pub fn new(client: Uuid, seq: u64) -> Self {
        Self { client, seq }
    }

    /// A fresh random id (a one-shot client).
    pub fn random() -> Self {
        Self::new(Uuid::new_v4(), 0)
    }

    /// 24 bytes: the client id, then the sequence number big-endian.
    pub fn to_bytes(self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..16].copy_from_slice(self.client.as_bytes());
        out[16..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// The inverse of [`to_bytes`](Self::to_bytes); `None` unless exactly 24 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 24 {
            return None;
        }
        let client = Uuid::from_slice(bytes.get(..16)?).ok()?;
        let seq = u64::from_be_bytes(bytes.get(16..24)?.try_into().ok()?);
        Some(Self { client, seq })
    }
}

/// What a command does to a partition's rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PartitionOp {
    /// Sets every row (a later row with the same key wins).
    Upsert {
        /// (key, value) pairs.
        #[serde(with = "network::bytes_serde::pairs")]
        rows: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Deletes every key; answers [`PartitionResponse::Deleted`].
    Delete {
        /// The keys.
        #[serde(with = "network::bytes_serde::list")]
        keys: Vec<Vec<u8>>,
    },
    /// Deletes a key; answers [`PartitionResponse::Previous`] with the deleted value.
    GetAndDelete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Sets a row; answers [`PartitionResponse::Previous`] with the value it replaced.
    GetAndUpsert {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Sets a row only if the key is absent; answers [`PartitionResponse::Inserted`].
    Insert {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
}

/// A write command: what a partition's Raft log carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartitionCommand {
    /// Identifies the command across retries.
    pub id: CommandId,
    /// What it does.
    pub op: PartitionOp,
}

impl PartitionCommand {
    /// A command with id `id`.
    pub fn new(id: CommandId, op: PartitionOp) -> Self {
        Self { id, op }
    }

    /// Encodes for the log.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode("partition command", self)
    }

    /// Decodes bytes from the log or the network; fails (never panics) on malformed input.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode("partition command", bytes)
    }
}

/// The state machine's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PartitionResponse {
    /// An upsert was applied.
    Done,
    /// For each key of a delete: whether it existed.
    Deleted(Vec<bool>),
    /// The value before a get-and-delete or get-and-upsert.
    Previous(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// Whether an insert found the key absent and wrote it.
    Inserted(bool),
    /// The entry was not a valid command; nothing changed. Every replica answers the same.
    Invalid {
        /// Why.
        reason: String,
    },
}

impl PartitionResponse {
    /// Encodes for the reply to a Raft write.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode("partition response", self)
    }

    /// Decodes a reply; fails (never panics) on malformed input.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode("partition response", bytes)
    }
}

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    let mut out = vec![WIRE_VERSION];
    postcard::to_io(value, &mut out).map_err(|e| Error::Encode {
        what,
        reason: e.to_string(),
    })?;
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    let (version, body) = bytes
        .split_first()
        .ok_or_else(|| Error::decode(what, "empty input"))?;
    if *version != WIRE_VERSION {
        return Err(Error::decode(what, format!("unknown version {version}")));
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| Error::decode(what, e))?;
    if !rest.is_empty() {
        return Err(Error::decode(
            what,
            format!("{} trailing bytes", rest.len()),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn command_and_response_round_trip() {
        let command = PartitionCommand::new(
            CommandId::new(Uuid::from_u128(42), 7),
            PartitionOp::Upsert {
                rows: vec![(b"k".to_vec(), b"v".to_vec())],
            },
        );
        let bytes = command.encode().expect("encode");
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(PartitionCommand::decode(&bytes).expect("decode"), command);

        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(PartitionCommand::decode(&trailing).is_err());
        let mut versioned = bytes;
        versioned[0] = 2;
        assert!(PartitionCommand::decode(&versioned).is_err());

        for response in [
            PartitionResponse::Done,
            PartitionResponse::Deleted(vec![true, false]),
            PartitionResponse::Previous(Some(b"x".to_vec())),
            PartitionResponse::Inserted(false),
            PartitionResponse::Invalid {
                reason: "bad".into(),
            },
        ] {
            let bytes = response.encode().expect("encode");
            assert_eq!(PartitionResponse::decode(&bytes).expect("decode"), response);
        }
    }

    #[test]
    fn command_id_bytes_round_trip() {
        let id = CommandId::new(Uuid::from_u128(u128::MAX - 3), 99);
        assert_eq!(CommandId::from_bytes(&id.to_bytes()), Some(id));
        assert_eq!(CommandId::from_bytes(&[1; 23]), None);
        assert_eq!(CommandId::from_bytes(&[1; 25]), None);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = PartitionCommand::decode(&bytes);
            let _ = PartitionResponse::decode(&bytes);
            let _ = crate::storage::PartitionSnapshot::decode(&bytes);
        }

        #[test]
        fn versioned_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut input = vec![WIRE_VERSION];
            input.extend(bytes);
            let _ = PartitionCommand::decode(&input);
            let _ = PartitionResponse::decode(&input);
            let _ = crate::storage::PartitionSnapshot::decode(&input);
        }
    }
}
