//! Raft RPCs over the node's shared network connections: one message group for every group
//! on the node, the group id inside each message. The messaging layer serves every request
//! on its own task, so a slow group never holds up another.
use std::{sync::Arc, time::Duration};

use network::{ClusterNode, Message, MessagingService, TopologyService};
use openraft::{
    error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable},
    network::RPCOption,
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
    BasicNode, RaftNetwork, RaftNetworkFactory,
};
use serde::{Deserialize, Serialize};

use crate::{error::Error, log_store::Durability, types::TypeConfig};

/// The message group of raft traffic (order 4 in the startup graph, times ten).
pub(crate) const RAFT_MESSAGE_GROUP: u16 = 40;

/// A request to one group on a peer.
#[derive(Serialize, Deserialize)]
pub(crate) struct RaftMessage {
    pub(crate) group: String,
    pub(crate) request: RaftRequest,
}

impl Message for RaftMessage {
    const GROUP: u16 = RAFT_MESSAGE_GROUP;
}

#[derive(Serialize, Deserialize)]
pub(crate) enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded to the leader.
    Write(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A follower asks the leader for a read index.
    ReadIndex,
    /// Client writes forwarded to the leader together, applied in order, answered each.
    WriteBatch(#[serde(with = "network::bytes_serde::list")] Vec<Vec<u8>>),
}

/// Why a forwarded request was not served.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Rejection {
    NotLeader { leader: Option<String> },
    Stopping(String),
    Failed(String),
}

#[derive(Serialize, Deserialize)]
pub(crate) enum RaftReply {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Write(Result<Vec<u8>, Rejection>),
    ReadIndex(Result<u64, Rejection>),
    /// The group is not running on the peer (not started yet, or stopped).
    NoGroup,
    /// One outcome per write of a [`RaftRequest::WriteBatch`], in order.
    WriteBatch(Result<Vec<Result<Vec<u8>, Rejection>>, Rejection>),
}

/// Sends one request to `to` and waits for the reply.
pub(crate) async fn call(
    messaging: &MessagingService,
    topology: &TopologyService,
    group: &str,
    to: &str,
    request: RaftRequest,
    timeout: Duration,
) -> Result<RaftReply, Error> {
    let node: ClusterNode = topology
        .member_by_name(to)
        .ok_or_else(|| Error::Unreachable {
            node: to.to_owned(),
            reason: "not in the physical topology".into(),
        })?;
    let message = RaftMessage {
        group: group.to_owned(),
        request,
    };
    messaging
        .invoke::<RaftMessage, RaftReply>(&node, message, timeout)
        .await
        .map_err(|e| match e {
            network::Error::Stopping(s) => Error::Stopping(s),
            network::Error::Timeout { .. } => Error::Timeout {
                group: group.to_owned(),
                what: format!("request to node {to}"),
            },
            other => Error::Unreachable {
                node: to.to_owned(),
                reason: other.to_string(),
            },
        })
}

/// Builds a client per peer of one group.
pub(crate) struct NetworkFactory {
    pub(crate) group: String,
    pub(crate) messaging: MessagingService,
    pub(crate) topology: TopologyService,
    /// The local log's durability: a commit index goes out only once it is durable here.
    pub(crate) durability: Arc<Durability>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            group: self.group.clone(),
            target,
            name: node.addr.clone(),
            messaging: self.messaging.clone(),
            topology: self.topology.clone(),
            durability: Arc::clone(&self.durability),
        }
    }
}

/// One group's view of one peer.
pub(crate) struct PeerClient {
    group: String,
    target: u64,
    name: String,
    messaging: MessagingService,
    topology: TopologyService,
    durability: Arc<Durability>,
}

type RpcError<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

impl PeerClient {
    async fn send<E: std::error::Error>(
        &self,
        request: RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftReply, RpcError<E>> {
        let reply = call(
            &self.messaging,
            &self.topology,
            &self.group,
            &self.name,
            request,
            option.hard_ttl(),
        )
        .await;
        match reply {
            Ok(RaftReply::NoGroup) => Err(RPCError::Unreachable(Unreachable::new(
                &Error::GroupNotFound(format!("{} on node {}", self.group, self.name)),
            ))),
            Ok(reply) => Ok(reply),
            Err(e @ (Error::Unreachable { .. } | Error::Stopping(_))) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RpcError<E> {
        RPCError::Network(NetworkError::new(&Error::codec(
            format!("reply from node {}", self.name),
            "unexpected reply kind",
        )))
    }

    fn remote<E: std::error::Error>(&self, e: RaftError<u64, E>) -> RpcError<E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            BasicNode::new(self.name.clone()),
            e,
        ))
    }
}

/// The first wait before replicating again to a peer that did not answer or has no such
/// group yet; it doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// The longest wait between attempts to reach an unreachable peer (openraft's constant).
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The waits between replication attempts to an unreachable peer: [`FIRST_BACKOFF`],
/// doubling, at most [`MAX_BACKOFF`]. A node that joins is often asked before its group
/// started (it answers "no such group"); openraft's constant 500 ms then delayed every
/// learner's catch-up by about that much.
fn backoff() -> impl Iterator<Item = Duration> + Send + 'static {
    std::iter::successors(Some(FIRST_BACKOFF), |d| Some((*d * 2).min(MAX_BACKOFF)))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(backoff())
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcError> {
        // The leader may count itself in a commit before its own copy is durable; a
        // follower that learned that commit would apply an entry a leader crash could still
        // take back. So the commit index leaves only once this node's log holds it.
        if let Some(committed) = rpc.leader_commit {
            self.durability.wait(committed.index).await.map_err(|e| {
                RPCError::Unreachable(Unreachable::new(&Error::Fatal {
                    group: self.group.clone(),
                    reason: format!("the local raft log is not durable: {e}"),
                }))
            })?;
        }
        match self.send(RaftRequest::AppendEntries(rpc), &option).await? {
            RaftReply::AppendEntries(Ok(r)) => Ok(r),
            RaftReply::AppendEntries(Err(e)) => Err(self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcError<InstallSnapshotError>> {
        match self
            .send(RaftRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            RaftReply::InstallSnapshot(Ok(r)) => Ok(r),
            RaftReply::InstallSnapshot(Err(e)) => Err(self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcError> {
        match self.send(RaftRequest::Vote(rpc), &option).await? {
            RaftReply::Vote(Ok(r)) => Ok(r),
            RaftReply::Vote(Err(e)) => Err(self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_starts_short_doubles_and_stops_at_openrafts_constant() {
        let waits: Vec<Duration> = backoff().take(8).collect();
        assert_eq!(waits[0], FIRST_BACKOFF);
        assert!(waits
            .windows(2)
            .all(|w| w[1] == (w[0] * 2).min(MAX_BACKOFF)));
        assert_eq!(waits[7], MAX_BACKOFF);
    }
}
