//! [`NetworkManager`]: the `network` component that owns the listener, the membership loop
//! and every connection.
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use async_trait::async_trait;
use configuration::ConfigurationManager;
use lifecycle::{BoxError, Component, StartContext, StopGuard};
use parking_lot::Mutex;
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::{mpsc, oneshot},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;
use vault::VaultManager;

use crate::{
    config::NetworkConfiguration,
    error::{Error, Result},
    membership::{Command, Member, MembershipLoop},
    messaging::{Local, MessagingService},
    topology::{ClusterNode, TopologyService},
};

const NAME: &str = "network";
/// Vault key of the node's stable id (16 bytes).
pub const NODE_ID_KEY: &[u8] = b"network.node_id";
/// Vault key of the launch sequence number (8 bytes, big endian), increased on every start.
pub const LAUNCH_SEQ_KEY: &[u8] = b"network.launch_seq";

enum ConfigSource {
    Manager(Arc<ConfigurationManager>),
    Fixed(NetworkConfiguration),
}

enum Phase {
    Idle,
    Running {
        cancel: CancellationToken,
        /// Ends the accept loop (a child of `cancel`); `listener_closed` fires once the
        /// listener is dropped.
        accept: CancellationToken,
        listener_closed: oneshot::Receiver<()>,
        leave: mpsc::Sender<Command>,
    },
    Stopped,
}

/// Cluster membership and messaging, as the third component of the startup graph.
///
/// Start reads the `network` configuration, the node id (created on first start) and the
/// launch sequence from the vault, binds TCP and UDP on one port and joins through the seeds.
/// A stopped manager is not started again: build a new one (a restart is a new launch).
pub struct NetworkManager {
    local_name: String,
    metadata: Mutex<BTreeMap<String, String>>,
    vault: Arc<VaultManager>,
    config: ConfigSource,
    topology: TopologyService,
    messaging: MessagingService,
    guard: StopGuard,
    tracker: TaskTracker,
    phase: Mutex<Phase>,
    local_address: Mutex<Option<SocketAddr>>,
}

impl NetworkManager {
    /// No I/O. `local_name` is the node's name; `metadata` is gossiped with the member (the
    /// node puts `rest` => its REST address there). The configuration is read at start from
    /// the `network` root.
    pub fn new(
        local_name: String,
        vault: Arc<VaultManager>,
        config: Arc<ConfigurationManager>,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        Self::build(local_name, vault, ConfigSource::Manager(config), metadata)
    }

    /// Like [`new`](Self::new) with a fixed configuration instead of a configuration manager
    /// (embedding, benchmarks).
    pub fn with_config(
        local_name: String,
        vault: Arc<VaultManager>,
        config: NetworkConfiguration,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        Self::build(local_name, vault, ConfigSource::Fixed(config), metadata)
    }

    fn build(
        local_name: String,
        vault: Arc<VaultManager>,
        config: ConfigSource,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        let guard = StopGuard::for_component(NAME);
        let topology = TopologyService::new();
        let messaging = MessagingService::new(topology.clone(), guard.clone());
        Self {
            local_name,
            metadata: Mutex::new(metadata),
            vault,
            config,
            topology,
            messaging,
            guard,
            tracker: TaskTracker::new(),
            phase: Mutex::new(Phase::Idle),
            local_address: Mutex::new(None),
        }
    }

    /// The physical topology. Cheap clone.
    pub fn topology(&self) -> TopologyService {
        self.topology.clone()
    }

    /// Typed messaging. Cheap clone.
    pub fn messaging(&self) -> MessagingService {
        self.messaging.clone()
    }

    /// The bound address (TCP and UDP), after start.
    pub fn local_address(&self) -> Option<SocketAddr> {
        *self.local_address.lock()
    }

    /// The cluster id sent in handshakes; peers with another cluster id are refused.
    pub fn set_cluster_id(&self, id: Option<Uuid>) {
        self.messaging.set_cluster_id(id);
    }

    /// Stop abruptly without a goodbye, as a crash would: peers find out by failure
    /// detection. For tests and fault injection.
    pub async fn kill(&self) {
        tracing::warn!(node = %self.local_name, "killing network component without goodbye");
        self.shutdown().await;
    }

    fn read_config(&self) -> Result<NetworkConfiguration> {
        let config = match &self.config {
            ConfigSource::Fixed(c) => c.clone(),
            ConfigSource::Manager(m) => m
                .root::<NetworkConfiguration>()
                .map_err(|e| Error::Config(e.to_string()))?,
        };
        config
            .check()
            .map_err(|(key, reason)| Error::Config(format!("network.{key}: {reason}")))?;
        Ok(config)
    }

    async fn node_id(&self) -> Result<Uuid> {
        let vault_err = |e: vault::Error| Error::Vault {
            key: String::from_utf8_lossy(NODE_ID_KEY).into_owned(),
            reason: e.to_string(),
        };
        match self.vault.get(NODE_ID_KEY).await.map_err(vault_err)? {
            Some(bytes) => Uuid::from_slice(&bytes).map_err(|e| Error::Vault {
                key: String::from_utf8_lossy(NODE_ID_KEY).into_owned(),
                reason: format!("stored node id is not a uuid: {e}"),
            }),
            None => {
                let id = Uuid::new_v4();
                self.vault
                    .put(NODE_ID_KEY, id.as_bytes().to_vec())
                    .await
                    .map_err(vault_err)?;
                tracing::info!(node_id = %id, "generated node id");
                Ok(id)
            }
        }
    }

    async fn next_launch_seq(&self) -> Result<u64> {
        let vault_err = |e: vault::Error| Error::Vault {
            key: String::from_utf8_lossy(LAUNCH_SEQ_KEY).into_owned(),
            reason: e.to_string(),
        };
        let previous = match self.vault.get(LAUNCH_SEQ_KEY).await.map_err(vault_err)? {
            Some(bytes) => {
                let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| Error::Vault {
                    key: String::from_utf8_lossy(LAUNCH_SEQ_KEY).into_owned(),
                    reason: format!("expected 8 bytes, found {}", bytes.len()),
                })?;
                u64::from_be_bytes(arr)
            }
            None => 0,
        };
        let next = previous.saturating_add(1);
        self.vault
            .put(LAUNCH_SEQ_KEY, next.to_be_bytes().to_vec())
            .await
            .map_err(vault_err)?;
        Ok(next)
    }

    /// The node's name: the one stored in the vault at first start wins over the name this
    /// manager was built with (a restart with another `--name` keeps the node's identity).
    async fn node_name(&self) -> Result<String> {
        let vault_err = |e: vault::Error| Error::Vault {
            key: "node name".to_owned(),
            reason: e.to_string(),
        };
        match self.vault.name().await.map_err(vault_err)? {
            Some(stored) => {
                if stored != self.local_name {
                    tracing::warn!(stored = %stored, given = %self.local_name, "ignored node name: vault was bootstrapped");
                }
                Ok(stored)
            }
            None => {
                self.vault
                    .set_name(&self.local_name)
                    .await
                    .map_err(vault_err)?;
                Ok(self.local_name.clone())
            }
        }
    }

    /// Set a metadata attribute gossiped with the local member (e.g. `rest` => its URL).
    /// Takes effect at start: call it before the network component starts.
    pub fn set_metadata(&self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.lock().insert(key.into(), value.into());
    }

    async fn start_inner(&self, ctx: &StartContext) -> Result<()> {
        if !matches!(*self.phase.lock(), Phase::Idle) {
            return Err(Error::InvalidState("already started or stopped"));
        }
        let config = self.read_config()?;
        let name = self.node_name().await?;
        let node_id = self.node_id().await?;
        let launch_seq = self.next_launch_seq().await?;
        let (listener, socket) = bind(&config).await?;
        let address = listener.local_addr().map_err(|source| Error::Io {
            addr: config.listen.clone(),
            source,
        })?;
        let node = ClusterNode {
            name,
            id: node_id,
            launch_id: Uuid::new_v4(),
            address,
            metadata: self.metadata.lock().clone(),
        };
        let cancel = CancellationToken::new();
        let accept = cancel.child_token();
        let (closed_tx, listener_closed) = oneshot::channel();
        let (leave_tx, leave_rx) = mpsc::channel(4);
        {
            let mut phase = self.phase.lock();
            if !matches!(*phase, Phase::Idle) {
                return Err(Error::InvalidState("already started or stopped"));
            }
            *phase = Phase::Running {
                cancel: cancel.clone(),
                accept: accept.clone(),
                listener_closed,
                leave: leave_tx,
            };
        }
        *self.local_address.lock() = Some(address);
        self.topology.set_local(Some(node.clone()));
        metrics::gauge!("ignite_network_members").set(1.0);
        self.messaging.mark_started(Local {
            node: node.clone(),
            config: config.clone(),
            faults: ctx.faults.clone(),
            tracker: self.tracker.clone(),
            cancel: cancel.clone(),
        });
        let messaging = self.messaging.clone();
        lifecycle::spawn_supervised(&self.tracker, &ctx.faults, NAME, "accept", async move {
            messaging.accept_loop(listener, accept).await;
            let _ = closed_tx.send(());
            Ok(())
        });
        let membership = MembershipLoop {
            local: Member {
                node: node.clone(),
                launch_seq,
                bump: 0,
            },
            config,
            socket: Arc::new(socket),
            topology: self.topology.clone(),
            messaging: self.messaging.clone(),
            commands: leave_rx,
            cancel,
        };
        lifecycle::spawn_supervised(&self.tracker, &ctx.faults, NAME, "membership", async move {
            membership.run().await;
            Ok(())
        });
        tracing::info!(node = %node.name, node_id = %node.id, launch_id = %node.launch_id, launch_seq, address = %address, "network started");
        Ok(())
    }

    async fn shutdown(&self) {
        let previous = std::mem::replace(&mut *self.phase.lock(), Phase::Stopped);
        if let Phase::Running {
            cancel,
            accept,
            listener_closed,
            ..
        } = previous
        {
            // The port refuses connections before any connection closes: a peer that sees
            // its connection break finds the process gone (fast failover relies on it).
            accept.cancel();
            let _ = listener_closed.await;
            cancel.cancel();
        }
        // Refuse new sends, fail pending invokes, then wait for every task.
        self.guard.block().await;
        self.messaging.shutdown();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Bind the TCP listener and the UDP socket on the same port. With port 0 the OS picks the
/// TCP port; if that port is taken for UDP, try again with another.
async fn bind(config: &NetworkConfiguration) -> Result<(TcpListener, UdpSocket)> {
    let addr = config.listen_addr().map_err(Error::Config)?;
    let io_err = |source| Error::Io {
        addr: addr.to_string(),
        source,
    };
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let listener = TcpListener::bind(addr).await.map_err(io_err)?;
        let bound = listener.local_addr().map_err(io_err)?;
        match UdpSocket::bind(bound).await {
            Ok(socket) => return Ok((listener, socket)),
            Err(e) => last = Some(e),
        }
    }
    Err(io_err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no port free for tcp and udp",
        )
    })))
}

#[async_trait]
impl Component for NetworkManager {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, ctx: &StartContext) -> Result<(), BoxError> {
        self.start_inner(ctx).await.map_err(Into::into)
    }

    /// Say goodbye: peers drop this node from their topology at once.
    async fn before_stop(&self) {
        let leave = match &*self.phase.lock() {
            Phase::Running { leave, .. } => leave.clone(),
            _ => return,
        };
        let (ack_tx, ack_rx) = oneshot::channel();
        if leave.send(Command::Leave(ack_tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), ack_rx).await;
        }
    }

    async fn stop(&self) -> Result<(), BoxError> {
        self.shutdown().await;
        tracing::info!(node = %self.local_name, "network stopped");
        Ok(())
    }
}
