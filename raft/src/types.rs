//! The openraft type configuration and the small public types that replace openraft's at the
//! crate boundary (positions, members, node ids).
use serde::{Deserialize, Serialize};

/// The payload of a normal log entry: opaque bytes for the user's state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Command {
    /// One command.
    One(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Commands of concurrent writes committed together (group commit: one append and one
    /// fsync per replica for all of them), applied in order.
    Batch(#[serde(with = "network::bytes_serde::list")] Vec<Vec<u8>>),
}

/// The state machine's answers to the commands of one applied entry, in order (none for
/// blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Response(pub(crate) Vec<Vec<u8>>);

openraft::declare_raft_types!(
    /// Types of every group on this node.
    pub(crate) TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_data::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type LogId = openraft::LogId<u64>;
pub(crate) type Vote = openraft::Vote<u64>;
pub(crate) type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
pub(crate) type StorageError = openraft::StorageError<u64>;
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// The position of an entry in a group's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPosition {
    /// The entry's index.
    pub index: u64,
    /// The term of the leader that wrote it.
    pub term: u64,
}

impl From<&LogId> for LogPosition {
    fn from(id: &LogId) -> Self {
        Self {
            index: id.index,
            term: id.leader_id.term,
        }
    }
}

/// The members of a group by node name: voters decide, learners only replicate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    /// Node names that vote.
    pub voters: Vec<String>,
    /// Node names that replicate without voting.
    pub learners: Vec<String>,
}

impl GroupMembers {
    /// Voters only.
    pub fn voters<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self {
            voters: names.into_iter().map(Into::into).collect(),
            learners: Vec::new(),
        }
    }

    /// Every member, voters first.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.voters.iter().chain(self.learners.iter())
    }
}

/// The stable raft node id of a node name (FNV-1a, 64 bits): the same on every node and
/// across versions, so ids in stored logs keep their meaning.
pub fn node_id(name: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    name.bytes()
        .fold(OFFSET, |hash, b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The openraft node record of a node name (the name travels as the "address").
pub(crate) fn basic_node(name: &str) -> openraft::BasicNode {
    openraft::BasicNode::new(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        // Known FNV-1a 64 values: ids must never change, stored logs depend on them.
        assert_eq!(node_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(node_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(node_id("node1"), node_id("node2"));
    }
}
