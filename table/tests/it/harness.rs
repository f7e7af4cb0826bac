//! An in-process cluster of real nodes on 127.0.0.1 port 0 for the table manager: vault,
//! local configuration, network, raft, MetaStorage, the cluster configuration (with the
//! `baseline` root), the baseline, affinity and schema managers, the partition service and
//! the table manager per node (in-memory partition storage, or sled and a persistent vault in
//! a data directory for restarts), started by hand in graph order.
use std::{collections::BTreeSet, path::Path, sync::Arc, time::Duration};

use affinity::AffinityManager;
use anyhow::{anyhow, Context, Result};
use baseline::{Baseline, BaselineConfiguration, BaselineManager};
use configuration::{
    BootstrapConfig, ConfigurationManager, ConfigurationStorage, LocalConfigurationStorage, RootKey,
};
use lifecycle::{Component, FaultReporter, StartContext};
use metastorage::{
    DistributedConfigurationStorage, InitRequest, MetaStorageConfiguration, MetaStorageManager,
};
use network::{NetworkConfiguration, NetworkManager};
use raft::{RaftConfiguration, RaftManager};
use schema::SchemaManager;
use serde_json::json;
use table::{
    MemoryPartitionProvider, PartitionService, PartitionStorageProvider, SledPartitionProvider,
    TableManager,
};
use vault::VaultManager;

pub(crate) const WAIT: Duration = Duration::from_secs(60);

pub(crate) fn ctx() -> StartContext {
    StartContext {
        faults: FaultReporter::detached(),
    }
}

fn err(e: lifecycle::BoxError) -> anyhow::Error {
    anyhow!("{e}")
}

pub(crate) fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// One node's components.
pub(crate) struct TestNode {
    pub(crate) name: String,
    pub(crate) vault: Arc<VaultManager>,
    config: Arc<ConfigurationManager>,
    pub(crate) network: Arc<NetworkManager>,
    pub(crate) raft: Arc<RaftManager>,
    pub(crate) ms: Arc<MetaStorageManager>,
    pub(crate) cluster_config: Arc<ConfigurationManager>,
    pub(crate) baseline: Arc<BaselineManager>,
    pub(crate) affinity: Arc<AffinityManager>,
    pub(crate) schema: Arc<SchemaManager>,
    pub(crate) service: Arc<PartitionService>,
    pub(crate) tables: Arc<TableManager>,
    /// The node's partition storages.
    pub(crate) provider: Arc<dyn PartitionStorageProvider>,
}

impl TestNode {
    /// Builds every component and starts the zombie part (vault, configuration, network,
    /// raft); the baseline watch is registered at construction.
    /// `auto_adjust_ms: Some` bootstraps the cluster configuration from this node (one node
    /// only: concurrent bootstraps race).
    /// With `data_dir` the vault, raft logs and partitions persist there, else in memory.
    async fn start_in(
        name: &str,
        seeds: Vec<String>,
        auto_adjust_ms: Option<u64>,
        data_dir: Option<&Path>,
    ) -> Result<Self> {
        let vault = Arc::new(match data_dir {
            Some(dir) => VaultManager::persistent(dir),
            None => VaultManager::in_memory(),
        });
        let roots = vec![
            RootKey::of::<NetworkConfiguration>(),
            RootKey::of::<RaftConfiguration>(),
            RootKey::of::<MetaStorageConfiguration>(),
        ];
        let mut bootstrap = BootstrapConfig::new(&roots);
        bootstrap.set("network.listen", json!("127.0.0.1:0"))?;
        bootstrap.set("network.seeds", json!(seeds))?;
        bootstrap.set("network.failure_detection_ms", json!(1_000))?;
        // validated together: a minimum and a maximum in any order
        bootstrap.set_all([
            ("raft.election_timeout_min_ms".to_owned(), json!(500)),
            ("raft.election_timeout_max_ms".to_owned(), json!(1_000)),
            ("raft.heartbeat_interval_ms".to_owned(), json!(100)),
            ("raft.data_election_timeout_min_ms".to_owned(), json!(500)),
            ("raft.data_election_timeout_max_ms".to_owned(), json!(1_000)),
            ("raft.data_heartbeat_interval_ms".to_owned(), json!(100)),
        ])?;
        bootstrap.set("metastorage.learner_check_interval_ms", json!(200))?;
        let config = Arc::new(ConfigurationManager::new(
            roots,
            vec![Arc::new(LocalConfigurationStorage::new(Arc::clone(&vault)))],
            Some(bootstrap),
        ));
        let network = Arc::new(NetworkManager::new(
            name.to_owned(),
            Arc::clone(&vault),
            Arc::clone(&config),
            Default::default(),
        ));
        let raft = Arc::new(RaftManager::new(
            Arc::clone(&network),
            Arc::clone(&vault),
            Arc::clone(&config),
        ));
        let ms = Arc::new(MetaStorageManager::new(
            Arc::clone(&vault),
            Arc::clone(&network),
            Arc::clone(&raft),
            Arc::clone(&config),
        ));
        let distributed = Arc::new(DistributedConfigurationStorage::new(Arc::clone(&ms)));
        distributed.watch_id().map_err(|e| anyhow!(e))?;
        let cluster_roots = vec![RootKey::of::<BaselineConfiguration>()];
        let cluster_bootstrap = match auto_adjust_ms {
            Some(ms) => {
                let mut b = BootstrapConfig::new(&cluster_roots);
                b.set("baseline.auto_adjust_ms", json!(ms))?;
                Some(b)
            }
            None => None,
        };
        let cluster_config = Arc::new(
            ConfigurationManager::new(
                cluster_roots,
                vec![distributed as Arc<dyn ConfigurationStorage>],
                cluster_bootstrap,
            )
            .with_name("cluster-configuration"),
        );
        let baseline = Arc::new(BaselineManager::new(
            Arc::clone(&ms),
            Arc::clone(&network),
            Arc::clone(&cluster_config),
        ));
        let affinity = Arc::new(AffinityManager::new(Arc::clone(&ms), Arc::clone(&baseline)));
        let schema = Arc::new(SchemaManager::new(Arc::clone(&ms)));
        // built before the network starts: it registers the partition message handler
        let service = Arc::new(PartitionService::new(&network).with_timeout(WAIT));
        let provider: Arc<dyn PartitionStorageProvider> = match data_dir {
            Some(dir) => Arc::new(SledPartitionProvider::in_data_dir(dir)),
            None => Arc::new(MemoryPartitionProvider::new()),
        };
        let tables = Arc::new(TableManager::new(
            Arc::clone(&ms),
            Arc::clone(&affinity),
            Arc::clone(&schema),
            Arc::clone(&raft),
            Arc::clone(&network),
            Arc::clone(&service),
            Arc::clone(&provider),
            Arc::clone(&vault),
        ));
        let ctx = ctx();
        vault.start(&ctx).await.map_err(err)?;
        config.start(&ctx).await.map_err(err)?;
        network.start(&ctx).await.map_err(err)?;
        raft.start(&ctx).await.map_err(err)?;
        service.start(&ctx).await.map_err(err)?;
        let opened = Arc::clone(&provider);
        tokio::task::spawn_blocking(move || opened.open()).await??;
        Ok(Self {
            name: name.to_owned(),
            vault,
            config,
            network,
            raft,
            ms,
            cluster_config,
            baseline,
            affinity,
            schema,
            service,
            tables,
            provider,
        })
    }

    fn address(&self) -> String {
        self.network
            .local_address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    async fn start_ms(&self) -> Result<()> {
        self.ms
            .start(&ctx())
            .await
            .map_err(|e| anyhow!("metastorage on {}: {e}", self.name))
    }

    /// Waits until this node's view of the baseline satisfies `ok`.
    pub(crate) async fn wait_baseline(&self, ok: impl Fn(&Baseline) -> bool) -> Result<Baseline> {
        let mut rx = self.baseline.subscribe();
        tokio::time::timeout(WAIT, async {
            loop {
                let b = rx.borrow_and_update().clone();
                if ok(&b) {
                    return Ok::<_, anyhow::Error>(b);
                }
                rx.changed().await?;
            }
        })
        .await
        .with_context(|| format!("baseline on {}", self.name))?
    }

    /// Stops every component in reverse order.
    pub(crate) async fn stop(&self) -> Result<()> {
        self.tables.stop().await.map_err(err)?;
        self.tables.stop().await.map_err(err)?;
        self.service.stop().await.map_err(err)?;
        self.schema.stop().await.map_err(err)?;
        self.affinity.stop().await.map_err(err)?;
        self.baseline.stop().await.map_err(err)?;
        self.cluster_config.stop().await.map_err(err)?;
        self.ms.before_stop().await;
        self.raft.before_stop().await;
        self.network.before_stop().await;
        self.ms.stop().await.map_err(err)?;
        self.raft.stop().await.map_err(err)?;
        self.network.stop().await.map_err(err)?;
        self.config.stop().await.map_err(err)?;
        self.vault.stop().await.map_err(err)?;
        Ok(())
    }
}

/// Nodes `n1..=nN`, initialized from `n1` with the default voters, everything started.
pub(crate) struct TestCluster {
    pub(crate) nodes: Vec<TestNode>,
    /// Where persistent nodes keep their data (`<root>/<name>`), `None` in memory.
    dirs: Option<tempfile::TempDir>,
}

impl TestCluster {
    pub(crate) async fn start(n: usize, auto_adjust_ms: u64) -> Result<Self> {
        Self::start_with(n, auto_adjust_ms, None).await
    }

    /// [`Self::start`] with every node's data in its own directory, so nodes can restart.
    pub(crate) async fn start_persistent(n: usize, auto_adjust_ms: u64) -> Result<Self> {
        Self::start_with(n, auto_adjust_ms, Some(tempfile::tempdir()?)).await
    }

    async fn start_with(
        n: usize,
        auto_adjust_ms: u64,
        dirs: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        let mut nodes: Vec<TestNode> = Vec::new();
        for i in 1..=n {
            let seeds = nodes.iter().map(TestNode::address).collect();
            let bootstrap = (i == 1).then_some(auto_adjust_ms);
            let name = format!("n{i}");
            let dir = dirs.as_ref().map(|d| d.path().join(&name));
            nodes.push(TestNode::start_in(&name, seeds, bootstrap, dir.as_deref()).await?);
        }
        let cluster = Self { nodes, dirs };
        cluster.wait_for_topology().await?;
        cluster.nodes[0]
            .ms
            .init_cluster(InitRequest {
                name: "test".into(),
                metastorage: vec![],
            })
            .await?;
        for r in futures::future::join_all(cluster.nodes.iter().map(TestNode::start_ms)).await {
            r?;
        }
        // the first node bootstraps the cluster configuration, the others read it
        let ctx = ctx();
        for node in &cluster.nodes {
            node.cluster_config.start(&ctx).await.map_err(err)?;
        }
        for node in &cluster.nodes {
            node.baseline.start(&ctx).await.map_err(err)?;
            node.affinity.start(&ctx).await.map_err(err)?;
            node.schema.start(&ctx).await.map_err(err)?;
            node.tables.start(&ctx).await.map_err(err)?;
            node.ms.deploy_watches()?;
        }
        Ok(cluster)
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

    /// Waits until every node sees the same logical topology `want`.
    pub(crate) async fn wait_logical(&self, want: &BTreeSet<String>) -> Result<()> {
        for node in &self.nodes {
            tokio::time::timeout(WAIT, async {
                let mut events = node.network.topology().subscribe();
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                while &node.baseline.logical_topology() != want {
                    tokio::select! {
                        _ = events.recv() => {}
                        _ = tick.tick() => {}
                    }
                }
            })
            .await
            .with_context(|| format!("logical topology on {}", node.name))?;
        }
        Ok(())
    }

    /// Node `name`.
    pub(crate) fn node(&self, name: &str) -> Result<&TestNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no node {name}"))
    }

    /// Stops node `name` and removes it (a persistent node's data stays for a restart).
    pub(crate) async fn stop_node(&mut self, name: &str) -> Result<()> {
        let idx = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| anyhow!("no node {name}"))?;
        let node = self.nodes.remove(idx);
        node.stop().await
    }

    /// Starts persistent node `name` again on its data directory: it rejoins, recovers
    /// MetaStorage and starts every component up to the table manager.
    pub(crate) async fn restart_node(&mut self, name: &str) -> Result<()> {
        let dir = self
            .dirs
            .as_ref()
            .map(|d| d.path().join(name))
            .ok_or_else(|| anyhow!("node {name} is not persistent"))?;
        let seeds = self.nodes.iter().map(TestNode::address).collect();
        let node = TestNode::start_in(name, seeds, None, Some(&dir)).await?;
        node.start_ms().await?;
        let ctx = ctx();
        node.cluster_config.start(&ctx).await.map_err(err)?;
        node.baseline.start(&ctx).await.map_err(err)?;
        node.affinity.start(&ctx).await.map_err(err)?;
        node.schema.start(&ctx).await.map_err(err)?;
        node.tables.start(&ctx).await.map_err(err)?;
        node.ms.deploy_watches()?;
        self.nodes.push(node);
        Ok(())
    }

    pub(crate) async fn stop(self) -> Result<()> {
        for node in self.nodes.iter().rev() {
            node.stop().await?;
        }
        Ok(())
    }
}
