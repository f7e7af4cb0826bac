//! An in-process cluster of real nodes on 127.0.0.1 port 0: vault, configuration, network,
//! raft, MetaStorage and the schema manager per node, started by hand in graph order.
use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{anyhow, Context, Result};
use configuration::{BootstrapConfig, ConfigurationManager, LocalConfigurationStorage, RootKey};
use lifecycle::{Component, FaultReporter, StartContext};
use metastorage::{InitRequest, MetaStorageConfiguration, MetaStorageManager};
use network::{NetworkConfiguration, NetworkManager};
use raft::{RaftConfiguration, RaftManager};
use schema::SchemaManager;
use serde_json::json;
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

/// One node's components.
pub(crate) struct TestNode {
    pub(crate) name: String,
    vault: Arc<VaultManager>,
    config: Arc<ConfigurationManager>,
    network: Arc<NetworkManager>,
    raft: Arc<RaftManager>,
    pub(crate) ms: Arc<MetaStorageManager>,
    pub(crate) schema: Arc<SchemaManager>,
}

impl TestNode {
    /// Builds every component and starts the zombie part (vault to raft).
    pub(crate) async fn start(
        name: &str,
        seeds: Vec<String>,
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
        bootstrap.set("raft.election_timeout_min_ms", json!(500))?;
        bootstrap.set("raft.election_timeout_max_ms", json!(1_000))?;
        bootstrap.set("raft.heartbeat_interval_ms", json!(100))?;
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
        let schema = Arc::new(SchemaManager::new(Arc::clone(&ms)));
        let ctx = ctx();
        vault.start(&ctx).await.map_err(err)?;
        config.start(&ctx).await.map_err(err)?;
        network.start(&ctx).await.map_err(err)?;
        raft.start(&ctx).await.map_err(err)?;
        Ok(Self {
            name: name.to_owned(),
            vault,
            config,
            network,
            raft,
            ms,
            schema,
        })
    }

    fn address(&self) -> String {
        self.network
            .local_address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Starts MetaStorage (the cluster state must exist), then schema, then deploys watches.
    pub(crate) async fn join(&self) -> Result<()> {
        self.ms
            .start(&ctx())
            .await
            .map_err(|e| anyhow!("metastorage on {}: {e}", self.name))?;
        self.schema
            .start(&ctx())
            .await
            .map_err(|e| anyhow!("schema on {}: {e}", self.name))?;
        self.ms.deploy_watches()?;
        Ok(())
    }

    /// Stops every component in reverse order.
    pub(crate) async fn stop(&self) -> Result<()> {
        self.schema.before_stop().await;
        self.ms.before_stop().await;
        self.raft.before_stop().await;
        self.network.before_stop().await;
        self.schema.stop().await.map_err(err)?;
        self.ms.stop().await.map_err(err)?;
        self.raft.stop().await.map_err(err)?;
        self.network.stop().await.map_err(err)?;
        self.config.stop().await.map_err(err)?;
        self.vault.stop().await.map_err(err)?;
        Ok(())
    }
}

/// Nodes `n1..=nN`, each with its data in its own directory.
pub(crate) struct TestCluster {
    pub(crate) nodes: Vec<TestNode>,
    dirs: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` nodes, inits the cluster from `n1` and joins every node.
    pub(crate) async fn start(n: usize) -> Result<Self> {
        let mut cluster = Self {
            nodes: Vec::new(),
            dirs: tempfile::tempdir()?,
        };
        for i in 1..=n {
            cluster.add_node(&format!("n{i}")).await?;
        }
        cluster.nodes[0]
            .ms
            .init_cluster(InitRequest {
                name: "test".into(),
                metastorage: vec![],
            })
            .await?;
        let joins = cluster.nodes.iter().map(TestNode::join);
        for r in futures::future::join_all(joins).await {
            r?;
        }
        Ok(cluster)
    }

    fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(TestNode::address).collect()
    }

    /// Starts the zombie part of a node and waits until every node sees every other.
    async fn add_node(&mut self, name: &str) -> Result<()> {
        let dir = self.dirs.path().join(name);
        let node = TestNode::start(name, self.seeds(), Some(&dir)).await?;
        self.nodes.push(node);
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

    /// Stops node `name` and starts it again on the same data directory; it rejoins.
    pub(crate) async fn restart(&mut self, name: &str) -> Result<()> {
        let idx = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("no node {name}"))?;
        let node = self.nodes.remove(idx);
        node.stop().await?;
        drop(node);
        let dir = self.dirs.path().join(name);
        let node = TestNode::start(name, self.seeds(), Some(&dir)).await?;
        node.join().await?;
        self.nodes.insert(idx, node);
        Ok(())
    }

    pub(crate) fn node(&self, name: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub(crate) async fn stop(self) -> Result<()> {
        for node in self.nodes.iter().rev() {
            node.stop().await?;
        }
        Ok(())
    }
}
