//! An in-process cluster harness: real vault, network, raft managers and partition services
//! on 127.0.0.1 port 0, with partition storages in memory or in sled.
use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{anyhow, Context, Result};
use lifecycle::{Component, FaultReporter, StartContext};
use network::{NetworkConfiguration, NetworkManager};
use raft::{
    GroupMembers, LogStorageProvider, MemoryLogProvider, RaftConfiguration, RaftManager,
    WalLogProvider,
};
use table::{
    MemoryPartitionProvider, Partition, PartitionClient, PartitionService,
    PartitionStorageProvider, SledPartitionProvider,
};
use vault::VaultManager;

pub(crate) const WAIT: Duration = Duration::from_secs(30);
/// The bound of every cluster test.
pub(crate) const BOUND: Duration = Duration::from_secs(120);
pub(crate) const TABLE: &str = "t1";

pub(crate) async fn bounded<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::time::timeout(BOUND, f).await.context("test bound")?
}

pub(crate) fn fast_config() -> RaftConfiguration {
    RaftConfiguration {
        election_timeout_min_ms: 500,
        election_timeout_max_ms: 1_000,
        heartbeat_interval_ms: 100,
        data_election_timeout_min_ms: 500,
        data_election_timeout_max_ms: 1_000,
        data_heartbeat_interval_ms: 100,
        write_timeout_ms: 5_000,
        ..RaftConfiguration::default()
    }
}

pub(crate) fn name(i: usize) -> String {
    format!("n{i}")
}

pub(crate) fn voters(n: usize) -> GroupMembers {
    GroupMembers::voters((1..=n).map(name))
}

/// How each node keeps its raft logs and partitions.
pub(crate) enum Storage {
    Memory,
    Sled(PathBuf),
}

/// One node: its components and its partition replicas.
pub(crate) struct TestNode {
    pub(crate) name: String,
    vault: Arc<VaultManager>,
    network: Arc<NetworkManager>,
    pub(crate) raft: Arc<RaftManager>,
    pub(crate) service: Arc<PartitionService>,
    pub(crate) partitions: Arc<dyn PartitionStorageProvider>,
}

impl TestNode {
    async fn start(
        name: &str,
        seeds: Vec<String>,
        storage: &Storage,
        config: RaftConfiguration,
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
        let (logs, partitions): (
            Arc<dyn LogStorageProvider>,
            Arc<dyn PartitionStorageProvider>,
        ) = match storage {
            Storage::Memory => (
                Arc::new(MemoryLogProvider::new()),
                Arc::new(MemoryPartitionProvider::new()),
            ),
            Storage::Sled(dir) => (
                Arc::new(WalLogProvider::new(dir.join(name).join("raft-log"))),
                Arc::new(SledPartitionProvider::in_data_dir(&dir.join(name))),
            ),
        };
        let raft = Arc::new(
            RaftManager::with_config(Arc::clone(&network), Arc::clone(&vault), config)
                .with_storage(logs),
        );
        let service = Arc::new(PartitionService::new(&network).with_timeout(WAIT));
        vault.start(&ctx).await.map_err(|e| anyhow!("{e}"))?;
        network.start(&ctx).await.map_err(|e| anyhow!("{e}"))?;
        raft.start(&ctx).await.map_err(|e| anyhow!("{e}"))?;
        service.start(&ctx).await.map_err(|e| anyhow!("{e}"))?;
        let opener = Arc::clone(&partitions);
        tokio::task::spawn_blocking(move || opener.open()).await??;
        Ok(Self {
            name: name.to_owned(),
            vault,
            network,
            raft,
            service,
            partitions,
        })
    }

    pub(crate) fn address(&self) -> String {
        self.network
            .local_address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Starts this node's replica of `TABLE`/`partition` and serves it to other nodes.
    pub(crate) async fn start_partition(
        &self,
        partition: u32,
        members: &GroupMembers,
    ) -> Result<Partition> {
        let storage = self.partitions.partition(TABLE, partition)?;
        let replica = Partition::start(&self.raft, TABLE, partition, storage, members.clone())
            .await?
            .with_timeout(WAIT);
        self.service.register(replica.clone())?;
        Ok(replica)
    }

    /// The local replica of `TABLE`/`partition`.
    pub(crate) fn replica(&self, partition: u32) -> Result<Partition> {
        self.service
            .local(TABLE, partition)
            .with_context(|| format!("replica of partition {partition} on {}", self.name))
    }

    /// A client of `TABLE`/`partition` whose replicas are `replicas`.
    pub(crate) fn client(&self, partition: u32, replicas: &GroupMembers) -> PartitionClient {
        self.service
            .client(TABLE, partition, replicas.voters.clone())
    }

    /// Stops the node's components in reverse order.
    pub(crate) async fn stop(self) -> Result<()> {
        self.service.before_stop().await;
        self.raft.before_stop().await;
        self.network.before_stop().await;
        self.service.stop().await.map_err(|e| anyhow!("{e}"))?;
        // stop is idempotent
        self.service.stop().await.map_err(|e| anyhow!("{e}"))?;
        self.raft.stop().await.map_err(|e| anyhow!("{e}"))?;
        let partitions = Arc::clone(&self.partitions);
        tokio::task::spawn_blocking(move || partitions.close()).await??;
        self.network.stop().await.map_err(|e| anyhow!("{e}"))?;
        self.vault.stop().await.map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }
}

pub(crate) struct Cluster {
    pub(crate) nodes: Vec<TestNode>,
    pub(crate) storage: Storage,
    pub(crate) config: RaftConfiguration,
}

impl Cluster {
    pub(crate) async fn start(n: usize, storage: Storage) -> Result<Self> {
        Self::start_with(n, storage, fast_config()).await
    }

    pub(crate) async fn start_with(
        n: usize,
        storage: Storage,
        config: RaftConfiguration,
    ) -> Result<Self> {
        let mut cluster = Self {
            nodes: Vec::new(),
            storage,
            config,
        };
        for i in 1..=n {
            cluster.add_node(&name(i)).await?;
        }
        Ok(cluster)
    }

    fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(TestNode::address).collect()
    }

    /// Starts one more node and waits until every node sees every other.
    pub(crate) async fn add_node(&mut self, name: &str) -> Result<()> {
        let node = TestNode::start(name, self.seeds(), &self.storage, self.config.clone()).await?;
        self.nodes.push(node);
        self.wait_for_topology().await
    }

    async fn wait_for_topology(&self) -> Result<()> {
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

    /// Starts a replica of `TABLE`/`partition` on every node named in `members`.
    pub(crate) async fn start_partition(
        &self,
        partition: u32,
        members: &GroupMembers,
    ) -> Result<()> {
        for node in self
            .nodes
            .iter()
            .filter(|n| members.voters.contains(&n.name))
        {
            node.start_partition(partition, members).await?;
        }
        Ok(())
    }

    /// Waits until every replica of `partition` agrees on a leader; returns its name.
    pub(crate) async fn leader(&self, partition: u32, members: &GroupMembers) -> Result<String> {
        let replicas: Vec<&TestNode> = self
            .nodes
            .iter()
            .filter(|n| members.voters.contains(&n.name))
            .collect();
        let first = replicas.first().context("no replicas")?;
        let leader = first
            .replica(partition)?
            .group()
            .wait_for_leader(WAIT)
            .await?;
        for node in &replicas {
            let leader = leader.clone();
            node.replica(partition)?
                .group()
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
