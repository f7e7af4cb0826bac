//! An in-process cluster of real nodes on 127.0.0.1 port 0: vault, local configuration,
//! network, raft and the MetaStorage manager per node, started by hand in graph order.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use configuration::{BootstrapConfig, ConfigurationManager, LocalConfigurationStorage, RootKey};
use lifecycle::{Component, FaultReporter, StartContext};
use metastorage::{
    ClusterState, InitRequest, KeyMatcher, MetaStorageConfiguration, MetaStorageManager, WatchEvent,
};
use network::{NetworkConfiguration, NetworkManager};
use parking_lot::Mutex;
use raft::{RaftConfiguration, RaftManager};
use serde_json::json;
use tokio::sync::mpsc;
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

/// Extra settings of the `metastorage` root for a test.
#[derive(Clone, Default)]
pub(crate) struct Options {
    pub(crate) retention: u64,
}

/// One node's components.
pub(crate) struct TestNode {
    pub(crate) name: String,
    pub(crate) vault: Arc<VaultManager>,
    pub(crate) config: Arc<ConfigurationManager>,
    pub(crate) network: Arc<NetworkManager>,
    pub(crate) raft: Arc<RaftManager>,
    pub(crate) ms: Arc<MetaStorageManager>,
    /// Components started after the zombie ones (a cluster configuration manager), stopped
    /// first.
    pub(crate) extra: Mutex<Vec<Arc<dyn Component>>>,
    ms_started: Mutex<bool>,
}

impl TestNode {
    /// Builds and starts the zombie part (vault, configuration, network, raft).
    pub(crate) async fn start(
        name: &str,
        seeds: Vec<String>,
        data_dir: Option<&Path>,
        options: &Options,
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
        bootstrap.set("metastorage.learner_check_interval_ms", json!(200))?;
        bootstrap.set("metastorage.compaction_interval_ms", json!(100))?;
        bootstrap.set(
            "metastorage.compaction_retention_revisions",
            json!(options.retention),
        )?;
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
            extra: Mutex::new(Vec::new()),
            ms_started: Mutex::new(false),
        })
    }

    pub(crate) fn address(&self) -> String {
        self.network
            .local_address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Starts the metastorage level (the cluster state must be there).
    pub(crate) async fn start_ms(&self) -> Result<()> {
        self.ms
            .start(&ctx())
            .await
            .map_err(|e| anyhow!("metastorage on {}: {e}", self.name))?;
        *self.ms_started.lock() = true;
        Ok(())
    }

    /// Waits until another node told this one the cluster state.
    pub(crate) async fn wait_cluster_state(&self) -> Result<ClusterState> {
        let mut rx = self.ms.subscribe_cluster_state();
        self.ms.cluster_state().await?;
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(s) = rx.borrow_and_update().clone() {
                    return Ok::<_, anyhow::Error>(s);
                }
                rx.changed().await?;
            }
        })
        .await
        .with_context(|| format!("{} receives the cluster state", self.name))?
    }

    /// Stops every component in reverse order.
    pub(crate) async fn stop(&self) -> Result<()> {
        let extra: Vec<Arc<dyn Component>> = self.extra.lock().drain(..).rev().collect();
        for c in &extra {
            c.stop().await.map_err(err)?;
        }
        self.ms.before_stop().await;
        self.raft.before_stop().await;
        self.network.before_stop().await;
        self.ms.stop().await.map_err(err)?;
        self.ms.stop().await.map_err(err)?;
        self.raft.stop().await.map_err(err)?;
        self.network.stop().await.map_err(err)?;
        self.config.stop().await.map_err(err)?;
        self.vault.stop().await.map_err(err)?;
        Ok(())
    }
}

pub(crate) fn name(i: usize) -> String {
    format!("n{i}")
}

/// Nodes `n1..=nN`; with `persistent`, each keeps its data in its own directory.
pub(crate) struct TestCluster {
    pub(crate) nodes: Vec<TestNode>,
    pub(crate) dirs: Option<tempfile::TempDir>,
    pub(crate) options: Options,
}

impl TestCluster {
    pub(crate) async fn start(n: usize, persistent: bool, options: Options) -> Result<Self> {
        let dirs = if persistent {
            Some(tempfile::tempdir()?)
        } else {
            None
        };
        let mut cluster = Self {
            nodes: Vec::new(),
            dirs,
            options,
        };
        for i in 1..=n {
            cluster.add_node(&name(i)).await?;
        }
        Ok(cluster)
    }

    pub(crate) fn data_dir(&self, name: &str) -> Option<PathBuf> {
        self.dirs.as_ref().map(|d| d.path().join(name))
    }

    pub(crate) fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(TestNode::address).collect()
    }

    /// Starts the zombie part of one more node and waits until every node sees every other.
    pub(crate) async fn add_node(&mut self, name: &str) -> Result<()> {
        let dir = self.data_dir(name);
        let node = TestNode::start(name, self.seeds(), dir.as_deref(), &self.options).await?;
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

    pub(crate) fn node(&self, name: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Inits from `from` with default voters and starts the metastorage level everywhere.
    pub(crate) async fn init_and_start(&self, from: &str) -> Result<ClusterState> {
        let state = self
            .node(from)
            .ms
            .init_cluster(InitRequest {
                name: "test".into(),
                metastorage: vec![],
            })
            .await?;
        self.start_all_ms().await?;
        Ok(state)
    }

    pub(crate) async fn start_all_ms(&self) -> Result<()> {
        let starts = self.nodes.iter().map(TestNode::start_ms);
        for r in futures::future::join_all(starts).await {
            r?;
        }
        Ok(())
    }

    /// Stops and removes node `name`; returns its data directory.
    pub(crate) async fn stop_node(&mut self, name: &str) -> Result<()> {
        let idx = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("no node {name}"))?;
        let node = self.nodes.remove(idx);
        node.stop().await
    }

    pub(crate) async fn stop(self) -> Result<()> {
        for node in self.nodes.iter().rev() {
            node.stop().await?;
        }
        Ok(())
    }
}

/// A watch listener that forwards every event.
pub(crate) fn collector() -> (
    impl Fn(WatchEvent) -> futures::future::Ready<Result<(), lifecycle::BoxError>> + Send + Sync,
    mpsc::UnboundedReceiver<WatchEvent>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = move |event: WatchEvent| {
        let _ = tx.send(event);
        futures::future::ready(Ok(()))
    };
    (listener, rx)
}

/// Registers a watch of every key on `node`.
pub(crate) fn watch_all(node: &TestNode) -> Result<mpsc::UnboundedReceiver<WatchEvent>> {
    let (listener, rx) = collector();
    node.ms
        .register_watch(KeyMatcher::Prefix(Vec::new()), listener)?;
    Ok(rx)
}

/// Receives events until one at `revision` arrived; returns them all.
pub(crate) async fn events_until(
    rx: &mut mpsc::UnboundedReceiver<WatchEvent>,
    revision: u64,
) -> Result<Vec<WatchEvent>> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        while out
            .last()
            .is_none_or(|e: &WatchEvent| e.revision < revision)
        {
            match rx.recv().await {
                Some(e) => out.push(e),
                None => return Err(anyhow!("watch channel closed")),
            }
        }
        Ok(())
    })
    .await
    .with_context(|| format!("events up to revision {revision}"))??;
    Ok(out)
}
