//! [`PartitionService`]: serves partition requests from nodes without a replica and hands
//! out [`PartitionClient`]s that route this node's requests.
//!
//! One message group ([`PARTITION_MESSAGE_GROUP`]) carries [`ReadRequest`]s and
//! [`WriteRequest`]s for every partition; a replica executes a write through its Raft group
//! (which forwards it to the leader) and a read with a read index, each on the messaging
//! layer's task for that request.
use std::{collections::HashMap, ops::Bound, sync::Arc, time::Duration};

use async_trait::async_trait;
use lifecycle::{BoxError, Component, ComponentRuntime, StartContext};
use network::{Message, MessagingService, NetworkManager, TopologyService};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{
    client::PartitionClient,
    command::{PartitionCommand, PartitionResponse},
    error::{Error, Result},
    partition::{Partition, DEFAULT_TIMEOUT},
};

/// The message group of partition requests (order 9 in the startup graph, times ten).
pub const PARTITION_MESSAGE_GROUP: u16 = 90;

const NAME: &str = "partition-service";

/// A read of a partition's rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadOp {
    /// The values of these keys.
    Get {
        /// The keys.
        keys: Vec<Vec<u8>>,
    },
    /// Up to `limit` rows in key order from `from`.
    Scan {
        /// Where the scan starts.
        from: Bound<Vec<u8>>,
        /// The most rows returned.
        limit: u32,
    },
}

/// The answer to a [`ReadOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadResult {
    /// For a get: each key's value, in order.
    Values(Vec<Option<Vec<u8>>>),
    /// For a scan: rows in key order.
    Rows(Vec<(Vec<u8>, Vec<u8>)>),
}

/// A linearizable read sent to a replica node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    /// The table.
    pub table_id: String,
    /// The partition.
    pub partition: u32,
    /// What to read.
    pub op: ReadOp,
    /// How long the replica may take.
    pub timeout_ms: u64,
}

/// A write sent to a replica node, which replicates it through its Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRequest {
    /// The table.
    pub table_id: String,
    /// The partition.
    pub partition: u32,
    /// The command (its id makes retries safe).
    pub command: PartitionCommand,
    /// How long the replica may take.
    pub timeout_ms: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum PartitionMessage {
    Read(ReadRequest),
    Write(WriteRequest),
}

impl Message for PartitionMessage {
    const GROUP: u16 = PARTITION_MESSAGE_GROUP;
}

/// Why a replica did not serve a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Rejection {
    /// The node holds no replica of the partition.
    NoPartition { table_id: String, partition: u32 },
    /// A retryable failure (no leader, timeout, stopping): try again or elsewhere.
    Retry(String),
    /// The state machine refused the command.
    Invalid {
        table_id: String,
        partition: u32,
        reason: String,
    },
    /// A fatal failure.
    Failed(String),
}

#[derive(Serialize, Deserialize)]
pub(crate) enum PartitionReply {
    Read(std::result::Result<ReadResult, Rejection>),
    Write(std::result::Result<PartitionResponse, Rejection>),
}

fn rejection(e: Error) -> Rejection {
    match e {
        Error::InvalidCommand {
            table_id,
            partition,
            reason,
        } => Rejection::Invalid {
            table_id,
            partition,
            reason,
        },
        Error::PartitionNotFound {
            table_id,
            partition,
            ..
        } => Rejection::NoPartition {
            table_id,
            partition,
        },
        e if e.is_retryable() => Rejection::Retry(e.to_string()),
        e => Rejection::Failed(e.to_string()),
    }
}

/// What the handler and the clients share.
pub(crate) struct ServiceShared {
    partitions: RwLock<HashMap<(String, u32), Partition>>,
    runtime: ComponentRuntime,
    messaging: MessagingService,
    topology: TopologyService,
}

impl ServiceShared {
    pub(crate) fn local_name(&self) -> Option<String> {
        self.topology.try_local_member().map(|m| m.name)
    }

    pub(crate) fn check_running(&self) -> Result<()> {
        let guard = self.runtime.guard();
        if guard.is_blocked() {
            return Err(Error::Stopping(guard.error()));
        }
        Ok(())
    }

    /// The local replica, when `node` is this node and it holds one.
    pub(crate) fn local(&self, table_id: &str, partition: u32, node: &str) -> Option<Partition> {
        if self.local_name().as_deref() != Some(node) {
            return None;
        }
        self.partitions
            .read()
            .get(&(table_id.to_owned(), partition))
            .cloned()
    }

    pub(crate) async fn invoke(
        &self,
        node: &str,
        request: PartitionMessage,
        timeout: Duration,
    ) -> Result<PartitionReply> {
        let member = self
            .topology
            .member_by_name(node)
            .ok_or_else(|| Error::Unreachable {
                node: node.to_owned(),
                reason: "not in the physical topology".into(),
            })?;
        self.messaging
            .invoke::<PartitionMessage, PartitionReply>(&member, request, timeout)
            .await
            .map_err(|e| match e {
                network::Error::Stopping(s) => Error::Stopping(s),
                other => Error::Unreachable {
                    node: node.to_owned(),
                    reason: other.to_string(),
                },
            })
    }

    async fn handle(&self, message: PartitionMessage) -> PartitionReply {
        let ticket = self.runtime.enter();
        match message {
            PartitionMessage::Read(request) => PartitionReply::Read(match ticket {
                Err(stopping) => Err(Rejection::Retry(stopping.to_string())),
                Ok(_ticket) => self.read(request).await.map_err(rejection),
            }),
            PartitionMessage::Write(request) => PartitionReply::Write(match ticket {
                Err(stopping) => Err(Rejection::Retry(stopping.to_string())),
                Ok(_ticket) => self.write(request).await.map_err(rejection),
            }),
        }
    }

    fn replica(&self, table_id: &str, partition: u32) -> Result<Partition> {
        self.partitions
            .read()
            .get(&(table_id.to_owned(), partition))
            .cloned()
            .ok_or_else(|| Error::PartitionNotFound {
                table_id: table_id.to_owned(),
                partition,
                node: self.local_name().unwrap_or_default(),
            })
    }

    async fn read(&self, request: ReadRequest) -> Result<ReadResult> {
        let partition = self.replica(&request.table_id, request.partition)?;
        let deadline = Instant::now() + Duration::from_millis(request.timeout_ms);
        let fut = partition.read_until(request.op, deadline);
        self.runtime.guard().wrap(fut).await?
    }

    async fn write(&self, request: WriteRequest) -> Result<PartitionResponse> {
        let partition = self.replica(&request.table_id, request.partition)?;
        let deadline = Instant::now() + Duration::from_millis(request.timeout_ms);
        let fut = partition.execute_until(request.command, deadline);
        self.runtime.guard().wrap(fut).await?
    }
}

/// Serves partition requests for the replicas registered on this node and routes this
/// node's requests to replicas.
///
/// Construction registers the message handler, so it must happen before the network
/// component starts; it does no I/O and spawns nothing (requests are served on the
/// messaging layer's tasks). `stop` refuses new requests, fails pending ones with
/// `Stopping` and forgets the registered replicas.
pub struct PartitionService {
    shared: Arc<ServiceShared>,
    registration: std::result::Result<(), String>,
    timeout: Duration,
}

impl PartitionService {
    /// A service on `network`, registering the partition message handler.
    pub fn new(network: &NetworkManager) -> Self {
        let shared = Arc::new(ServiceShared {
            partitions: RwLock::new(HashMap::new()),
            runtime: ComponentRuntime::new(NAME),
            messaging: network.messaging(),
            topology: network.topology(),
        });
        let handler = Arc::clone(&shared);
        let registration = network
            .messaging()
            .register_handler::<PartitionMessage, PartitionReply, _, _>(move |_from, msg| {
                let shared = Arc::clone(&handler);
                async move { Ok(shared.handle(msg).await) }
            })
            .map_err(|e| e.to_string());
        Self {
            shared,
            registration,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Uses `timeout` as the deadline (retries included) of the clients it hands out.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Serves `partition` (a replica on this node) to other nodes; replaces a previous one.
    pub fn register(&self, partition: Partition) -> Result<()> {
        self.shared.check_running()?;
        let key = (partition.table_id().to_owned(), partition.partition());
        self.shared.partitions.write().insert(key, partition);
        Ok(())
    }

    /// Stops serving a replica; returns it.
    pub fn unregister(&self, table_id: &str, partition: u32) -> Option<Partition> {
        self.shared
            .partitions
            .write()
            .remove(&(table_id.to_owned(), partition))
    }

    /// The replica of `table_id`/`partition` on this node, if registered.
    pub fn local(&self, table_id: &str, partition: u32) -> Option<Partition> {
        self.shared
            .partitions
            .read()
            .get(&(table_id.to_owned(), partition))
            .cloned()
    }

    /// The registered replicas, as (table id, partition), sorted.
    pub fn registered(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self.shared.partitions.read().keys().cloned().collect();
        out.sort();
        out
    }

    /// A client of `table_id`/`partition` whose replicas are on the nodes `replicas`.
    pub fn client(&self, table_id: &str, partition: u32, replicas: Vec<String>) -> PartitionClient {
        PartitionClient::new(
            Arc::clone(&self.shared),
            table_id,
            partition,
            replicas,
            self.timeout,
        )
    }
}

#[async_trait]
impl Component for PartitionService {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, _ctx: &StartContext) -> std::result::Result<(), BoxError> {
        if let Err(reason) = &self.registration {
            return Err(Box::new(Error::InvalidState(format!(
                "registering the partition message handler: {reason}"
            ))));
        }
        // a restart (run level back up) serves again with a fresh guard
        self.shared.runtime.begin();
        Ok(())
    }

    async fn stop(&self) -> std::result::Result<(), BoxError> {
        self.shared.runtime.block().await;
        self.shared.partitions.write().clear();
        tracing::info!("partition service stopped");
        Ok(())
    }
}
