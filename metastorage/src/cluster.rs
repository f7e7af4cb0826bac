//! Cluster init (DESIGN section 4): the cluster state, the init request and the messages
//! that carry the state to every node.
//!
//! The state lives in each node's vault under [`CLUSTER_STATE_KEY`] (postcard behind a
//! format version byte), so a restarted node rejoins without another init.
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    command,
    error::{Error, Result},
};

/// Vault key of this node's cluster state.
pub const CLUSTER_STATE_KEY: &[u8] = b"metastorage.cluster_state";

/// Message group of [`ClusterMessage`] (raft uses 40).
pub(crate) const CLUSTER_MESSAGE_GROUP: u16 = 50;

/// How many MetaStorage voters init picks when the request names none.
pub const DEFAULT_VOTERS: usize = 3;

/// What cluster init decided: the cluster's id, its name and the MetaStorage voters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// A random id given at init; peers with another id are refused at the handshake.
    pub id: Uuid,
    /// The cluster's name.
    pub name: String,
    /// Node names of the MetaStorage Raft voters, sorted.
    pub metastorage_voters: Vec<String>,
}

impl ClusterState {
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        command::encode("cluster state", self)
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        command::decode("cluster state", bytes)
    }
}

/// The parameters of `ignite cluster init`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    /// The cluster's name.
    pub name: String,
    /// MetaStorage voters; empty: up to [`DEFAULT_VOTERS`] topology members, alphabetically.
    pub metastorage: Vec<String>,
}

impl InitRequest {
    /// The voters this request asks for given the physical topology's member names: the
    /// named ones (sorted, deduplicated; each must be a member) or the default choice.
    pub fn resolve_voters(&self, members: &[String]) -> Result<Vec<String>> {
        if self.name.trim().is_empty() {
            return Err(Error::InvalidInit("cluster name is empty".into()));
        }
        let mut sorted: Vec<String> = members.to_vec();
        sorted.sort();
        sorted.dedup();
        if self.metastorage.is_empty() {
            if sorted.is_empty() {
                return Err(Error::InvalidInit(
                    "the physical topology has no members".into(),
                ));
            }
            sorted.truncate(DEFAULT_VOTERS);
            return Ok(sorted);
        }
        let mut voters = self.metastorage.clone();
        voters.sort();
        voters.dedup();
        let unknown: Vec<&String> = voters
            .iter()
            .filter(|v| sorted.binary_search(v).is_err())
            .collect();
        if !unknown.is_empty() {
            let list: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
            return Err(Error::InvalidInit(format!(
                "metastorage nodes {} are not in the physical topology (members: {})",
                list.join(", "),
                sorted.join(", ")
            )));
        }
        Ok(voters)
    }

    /// Why `state` does not match this request (`None`: it does). An empty voter list in
    /// the request accepts whatever voters init chose.
    pub fn mismatch(&self, state: &ClusterState) -> Option<String> {
        let mut reasons = Vec::new();
        if self.name != state.name {
            reasons.push(format!(
                "its name is {:?}, the request says {:?}",
                state.name, self.name
            ));
        }
        if !self.metastorage.is_empty() {
            let mut asked = self.metastorage.clone();
            asked.sort();
            asked.dedup();
            if asked != state.metastorage_voters {
                reasons.push(format!(
                    "its metastorage voters are [{}], the request says [{}]",
                    state.metastorage_voters.join(", "),
                    asked.join(", ")
                ));
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// Messages of cluster init between nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum ClusterMessage {
    /// "Store this cluster state" (init, or an initialized node telling a newcomer). The
    /// reply is the state the receiver holds afterwards: the sent one, or the one it already
    /// had.
    Init(ClusterState),
    /// "Which cluster state do you hold?" The reply is the receiver's state, if any.
    Query,
}

impl network::Message for ClusterMessage {
    const GROUP: u16 = CLUSTER_MESSAGE_GROUP;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn default_voters_are_the_first_three_names() {
        let req = InitRequest {
            name: "c".into(),
            metastorage: vec![],
        };
        let members = names(&["d", "b", "a", "c"]);
        assert_eq!(
            req.resolve_voters(&members).unwrap(),
            names(&["a", "b", "c"])
        );
        assert_eq!(req.resolve_voters(&names(&["z"])).unwrap(), names(&["z"]));
    }

    #[test]
    fn named_voters_must_be_members() {
        let req = InitRequest {
            name: "c".into(),
            metastorage: names(&["b", "x", "a", "b"]),
        };
        let err = req
            .resolve_voters(&names(&["a", "b"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("metastorage nodes x are not in"), "{err}");
        let ok = InitRequest {
            metastorage: names(&["b", "a", "b"]),
            ..req
        };
        assert_eq!(
            ok.resolve_voters(&names(&["a", "b"])).unwrap(),
            names(&["a", "b"])
        );
        let empty = InitRequest::default();
        assert!(empty.resolve_voters(&names(&["a"])).is_err());
    }

    #[test]
    fn mismatch_names_what_differs() {
        let state = ClusterState {
            id: Uuid::from_u128(1),
            name: "prod".into(),
            metastorage_voters: names(&["a", "b"]),
        };
        let same = InitRequest {
            name: "prod".into(),
            metastorage: names(&["b", "a"]),
        };
        assert_eq!(same.mismatch(&state), None);
        let defaults = InitRequest {
            name: "prod".into(),
            metastorage: vec![],
        };
        assert_eq!(defaults.mismatch(&state), None);
        let other = InitRequest {
            name: "test".into(),
            metastorage: names(&["c"]),
        };
        let why = other.mismatch(&state).unwrap();
        assert!(why.contains("its name is \"prod\""), "{why}");
        assert!(
            why.contains("voters are [a, b], the request says [c]"),
            "{why}"
        );
    }

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let state = ClusterState {
            id: Uuid::new_v4(),
            name: "x".into(),
            metastorage_voters: names(&["a"]),
        };
        assert_eq!(
            ClusterState::decode(&state.encode().unwrap()).unwrap(),
            state
        );
        assert!(ClusterState::decode(&[1, 255, 255]).is_err());
        assert!(ClusterState::decode(&[]).is_err());
    }
}
