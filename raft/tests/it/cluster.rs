//! An in-process cluster harness: real vault, network and raft managers on 127.0.0.1 port 0.
use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{anyhow, Context, Result};
use lifecycle::{Component, FaultReporter, StartContext};
use network::{NetworkConfiguration, NetworkManager};
use raft::{
    testing::MemoryStateMachine, GroupMembers, LogStorageProvider, MemoryLogProvider,
    RaftConfiguration, RaftGroup, RaftManager, SledLogProvider, WalLogProvider,
};
use vault::VaultManager;

pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn fast_config() -> RaftConfiguration {
    RaftConfiguration {
        election_timeout_min_ms: 500,
        election_timeout_max_ms: 1_000,
        heartbeat_interval_ms: 100,
        ..RaftConfiguration::default()
    }
}

/// One node: its components and the state machines of its groups.
pub(crate) struct TestNode {
    pub(crate) name: String,
    vault: Arc<VaultManager>,
    network: Arc<NetworkManager>,
    pub(crate) raft: Arc<RaftManager>,
    pub(crate) sms: BTreeMap<String, Arc<MemoryStateMachine>>,
}

impl TestNode {
    pub(crate) async fn start(
        name: &str,
        seeds: Vec<String>,
        config: RaftConfiguration,
        storage: Arc<dyn LogStorageProvider>,
    ) -> Result<Self> {
        let ctx = StartContext {
            faults: FaultReporter::detached(),
        };
        let vault = Arc::new(VaultManager::in_memory());
        let net_config = NetworkConfiguration {
            listen: "127.0.0.1:0".into(),
            seeds,
            ..NetworkConfiguration::default()
        };
        let network = Arc::new(NetworkManager::with_config(
            name.to_owned(),
            Arc::clone(&vault),
            net_config,
            BTreeMap::new(),
        ));
        let raft = Arc::new(
            RaftManager::with_config(Arc::clone(&network), Arc::clone(&vault), config)
                .with_storage(storage),
        );
        vault.start(&ctx).await.map_err(|e| anyhow!("{e}"))?;
        network.start(&ctx).await.map_err(|e| anyhow!("{e}"))?;
        raft.start(&ctx).await.map_err(|e| anyhow!("{e}"))?;
        Ok(Self {
            name: name.to_owned(),
            vault,
            network,
            raft,
            sms: BTreeMap::new(),
        })
    }

    pub(crate) fn address(&self) -> String {
        self.network
            .local_address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    pub(crate) async fn start_group(
        &mut self,
        id: &str,
        members: &GroupMembers,
    ) -> Result<RaftGroup> {
        let sm = Arc::new(MemoryStateMachine::new());
        let group = self
            .raft
            .start_group(id, Arc::clone(&sm) as _, members.clone())
            .await?;
        self.sms.insert(id.to_owned(), sm);
        Ok(group)
    }

    pub(crate) fn group(&self, id: &str) -> Result<RaftGroup> {
        self.raft
            .group(id)
            .with_context(|| format!("group {id} on {}", self.name))
    }

    pub(crate) fn sm(&self, id: &str) -> Result<Arc<MemoryStateMachine>> {
        self.sms
            .get(id)
            .cloned()
            .with_context(|| format!("state machine {id} on {}", self.name))
    }

    /// Stops the node's components in reverse order.
    pub(crate) async fn stop(self) -> Result<()> {
        self.raft.before_stop().await;
        self.network.before_stop().await;
        self.raft.stop().await.map_err(|e| anyhow!("{e}"))?;
        // stop is idempotent
        self.raft.stop().await.map_err(|e| anyhow!("{e}"))?;
        self.network.stop().await.map_err(|e| anyhow!("{e}"))?;
        self.vault.stop().await.map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }
}

/// How each node keeps its raft logs.
pub(crate) enum Storage {
    Memory,
    Sled(PathBuf),
    Wal(PathBuf),
}

impl Storage {
    pub(crate) fn provider(&self, name: &str) -> Arc<dyn LogStorageProvider> {
        match self {
            Self::Memory => Arc::new(MemoryLogProvider::new()),
            Self::Sled(dir) => Arc::new(SledLogProvider::new(dir.join(name))),
            Self::Wal(dir) => Arc::new(WalLogProvider::new(dir.join(name))),
        }
    }
}

pub(crate) struct Cluster {
    pub(crate) nodes: Vec<TestNode>,
    pub(crate) config: RaftConfiguration,
    pub(crate) storage: Storage,
}

pub(crate) fn name(i: usize) -> String {
    format!("n{i}")
}

impl Cluster {
    pub(crate) async fn start(
        n: usize,
        config: RaftConfiguration,
        storage: Storage,
    ) -> Result<Self> {
        let mut cluster = Self {
            nodes: Vec::new(),
            config,
            storage,
        };
        for i in 1..=n {
            cluster.add_node(&name(i)).await?;
        }
        Ok(cluster)
    }

    pub(crate) fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(TestNode::address).collect()
    }

    /// Starts one more node and waits until every node sees every other.
    pub(crate) async fn add_node(&mut self, name: &str) -> Result<()> {
        let node = TestNode::start(
            name,
            self.seeds(),
            self.config.clone(),
            self.storage.provider(name),
        )
        .await?;
        self.nodes.push(node);
        self.wait_for_topology().await
    }

    pub(crate) async fn wait_for_topology(&self) -> Result<()> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for node in &self.nodes {
            let topology = node.network.topology();
            let mut events = topology.subscribe();
            tokio::time::timeout(WAIT, async {
                loop {
                    let have: Vec<String> =
                        topology.members().into_iter().map(|m| m.name).collect();
                    if names.iter().all(|n| have.contains(n)) {
                        return;
                    }
                    let _ = events.recv().await;
                }
            })
            .await
            .with_context(|| format!("{} sees every node", node.name))?;
        }
        Ok(())
    }

    pub(crate) fn node(&self, name: &str) -> Result<&TestNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("node {name}"))
    }

    pub(crate) fn node_mut(&mut self, name: &str) -> Result<&mut TestNode> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .with_context(|| format!("node {name}"))
    }

    pub(crate) async fn start_group(&mut self, id: &str, members: &GroupMembers) -> Result<()> {
        for node in &mut self.nodes {
            node.start_group(id, members).await?;
        }
        Ok(())
    }

    /// Waits until every running node agrees on a leader; returns its name.
    pub(crate) async fn leader(&self, id: &str) -> Result<String> {
        let first = self.nodes.first().context("no nodes")?;
        let leader = first.group(id)?.wait_for_leader(WAIT).await?;
        for node in &self.nodes {
            let leader = leader.clone();
            node.group(id)?
                .wait_for(WAIT, "agreeing on the leader", move |m| {
                    m.leader.as_deref() == Some(leader.as_str())
                })
                .await?;
        }
        Ok(leader)
    }

    /// Removes and stops node `name`.
    pub(crate) async fn stop_node(&mut self, name: &str) -> Result<()> {
        let pos = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("node {name}"))?;
        let node = self.nodes.remove(pos);
        node.stop().await
    }

    pub(crate) async fn stop(self) -> Result<()> {
        for node in self.nodes {
            node.stop().await?;
        }
        Ok(())
    }
}
