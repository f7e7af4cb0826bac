//! Test support: an in-process cluster of real nodes on 127.0.0.1 port 0 (vault, local
//! configuration, network, raft and the MetaStorage manager per node), started by hand in
//! graph order. Used by the integration tests and benches of metastorage and the crates
//! above it; not meant for production code.
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use configuration::{BootstrapConfig, ConfigurationManager, LocalConfigurationStorage, RootKey};
use lifecycle::{Component, FaultReporter, StartContext};
use network::{NetworkConfiguration, NetworkManager};
use parking_lot::Mutex;
use raft::{RaftConfiguration, RaftManager};
use serde_json::json;
use vault::VaultManager;

use crate::{ClusterState, InitRequest, MetaStorageConfiguration, MetaStorageManager};

/// How long every wait of the harness lasts at most.
pub const WAIT: Duration = Duration::from_secs(60);

/// A failure of the test harness, with a message naming the node and step.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

/// The harness's result.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

fn fail(what: impl fmt::Display, e: impl fmt::Display) -> HarnessError {
    HarnessError(format!("{what}: {e}"))
}

/// A start context whose faults go nowhere.
pub fn ctx() -> StartContext {
    StartContext {
        faults: FaultReporter::detached(),
    }
}

/// Extra settings of a test node.
#[derive(Clone, Default)]
pub struct Options {
    /// `metastorage.compaction_retention_revisions`.
    pub retention: u64,
    /// Extra configuration roots (besides network, raft and metastorage).
    pub roots: Vec<RootKey>,
    /// Extra bootstrap settings, `(path, value)`.
    pub settings: Vec<(String, serde_json::Value)>,
}

/// One node's components.
pub struct TestNode {
    /// The node's name.
    pub name: String,
    /// Its vault.
    pub vault: Arc<VaultManager>,
    /// Its local configuration.
    pub config: Arc<ConfigurationManager>,
    /// Its network.
    pub network: Arc<NetworkManager>,
    /// Its raft manager.
    pub raft: Arc<RaftManager>,
    /// Its MetaStorage manager.
    pub ms: Arc<MetaStorageManager>,
    /// Components started after the MetaStorage, stopped first (in reverse order).
    pub extra: Mutex<Vec<Arc<dyn Component>>>,
}

impl TestNode {
    /// Builds and starts the zombie part (vault, configuration, network, raft); with
    /// `data_dir` the vault is persistent there, else in memory.
    pub async fn start(
        name: &str,
        seeds: Vec<String>,
        data_dir: Option<&Path>,
        options: &Options,
    ) -> Result<Self> {
        let vault = Arc::new(match data_dir {
            Some(dir) => VaultManager::persistent(dir),
            None => VaultManager::in_memory(),
        });
        let mut roots = vec![
            RootKey::of::<NetworkConfiguration>(),
            RootKey::of::<RaftConfiguration>(),
            RootKey::of::<MetaStorageConfiguration>(),
        ];
        roots.extend(options.roots.iter().cloned());
        let mut bootstrap = BootstrapConfig::new(&roots);
        let mut settings = vec![
            ("network.listen".to_owned(), json!("127.0.0.1:0")),
            ("network.seeds".to_owned(), json!(seeds)),
            ("network.failure_detection_ms".to_owned(), json!(1_000)),
            ("raft.election_timeout_min_ms".to_owned(), json!(500)),
            ("raft.election_timeout_max_ms".to_owned(), json!(1_000)),
            ("raft.heartbeat_interval_ms".to_owned(), json!(100)),
            (
                "metastorage.learner_check_interval_ms".to_owned(),
                json!(200),
            ),
            ("metastorage.compaction_interval_ms".to_owned(), json!(100)),
            (
                "metastorage.compaction_retention_revisions".to_owned(),
                json!(options.retention),
            ),
        ];
        settings.extend(options.settings.iter().cloned());
        bootstrap
            .set_all(settings)
            .map_err(|e| fail(format_args!("bootstrap settings of {name}"), e))?;
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
        let start = |what: &'static str| move |e| fail(format_args!("{what} on {name}"), e);
        vault.start(&ctx).await.map_err(start("vault"))?;
        config.start(&ctx).await.map_err(start("configuration"))?;
        network.start(&ctx).await.map_err(start("network"))?;
        raft.start(&ctx).await.map_err(start("raft"))?;
        Ok(Self {
            name: name.to_owned(),
            vault,
            config,
            network,
            raft,
            ms,
            extra: Mutex::new(Vec::new()),
        })
    }

    /// The address the node listens on, empty when it does not listen.
    pub fn address(&self) -> String {
        self.network
            .local_address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Starts the metastorage level (the cluster state must be there).
    pub async fn start_ms(&self) -> Result<()> {
        self.ms
            .start(&ctx())
            .await
            .map_err(|e| fail(format_args!("metastorage on {}", self.name), e))
    }

    /// Waits until another node told this one the cluster state.
    pub async fn wait_cluster_state(&self) -> Result<ClusterState> {
        let mut rx = self.ms.subscribe_cluster_state();
        self.ms
            .cluster_state()
            .await
            .map_err(|e| fail(format_args!("cluster state on {}", self.name), e))?;
        let what = || format!("{} receives the cluster state", self.name);
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(s) = rx.borrow_and_update().clone() {
                    return Ok(s);
                }
                rx.changed().await.map_err(|e| fail(what(), e))?;
            }
        })
        .await
        .map_err(|e| fail(what(), e))?
    }

    /// Stops every component in reverse order: the extra ones, then the node stack.
    pub async fn stop(&self) -> Result<()> {
        let stop = |what: &'static str| {
            let name = self.name.clone();
            move |e| fail(format_args!("stopping {what} on {name}"), e)
        };
        let extra: Vec<Arc<dyn Component>> = self.extra.lock().drain(..).rev().collect();
        for c in &extra {
            c.stop().await.map_err(stop("an extra component"))?;
        }
        self.ms.before_stop().await;
        self.raft.before_stop().await;
        self.network.before_stop().await;
        self.ms.stop().await.map_err(stop("metastorage"))?;
        self.raft.stop().await.map_err(stop("raft"))?;
        self.network.stop().await.map_err(stop("network"))?;
        self.config.stop().await.map_err(stop("configuration"))?;
        self.vault.stop().await.map_err(stop("vault"))?;
        Ok(())
    }
}

/// The name of the `i`-th node, `n{i}`.
pub fn name(i: usize) -> String {
    format!("n{i}")
}

/// Nodes `n1..=nN`; with a data root, each keeps its data in `<root>/<name>`.
pub struct TestCluster {
    /// The running nodes, in start order.
    pub nodes: Vec<TestNode>,
    /// Where persistent nodes keep their data, `None` for in-memory vaults.
    pub data_root: Option<PathBuf>,
    /// The options every node starts with.
    pub options: Options,
}

impl TestCluster {
    /// Starts the zombie part of `n` nodes, each seeing every other.
    pub async fn start(n: usize, data_root: Option<PathBuf>, options: Options) -> Result<Self> {
        let mut cluster = Self {
            nodes: Vec::new(),
            data_root,
            options,
        };
        for i in 1..=n {
            cluster.add_node(&name(i)).await?;
        }
        Ok(cluster)
    }

    /// The data directory of node `name`, if persistent.
    pub fn data_dir(&self, name: &str) -> Option<PathBuf> {
        self.data_root.as_ref().map(|d| d.join(name))
    }

    /// The addresses of the running nodes.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(TestNode::address).collect()
    }

    /// Starts the zombie part of one more node (or a restart on the same data directory)
    /// and waits until every node sees every other.
    pub async fn add_node(&mut self, name: &str) -> Result<()> {
        let dir = self.data_dir(name);
        let node = TestNode::start(name, self.seeds(), dir.as_deref(), &self.options).await?;
        self.nodes.push(node);
        self.wait_for_topology().await
    }

    /// Waits until every node sees every running node.
    pub async fn wait_for_topology(&self) -> Result<()> {
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
            .map_err(|e| fail(format_args!("{} sees every node", node.name), e))?;
        }
        Ok(())
    }

    /// Node `name`.
    ///
    /// # Panics
    ///
    /// When there is no such node (a bug in the test).
    pub fn node(&self, name: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Inits from `from` with default voters and starts the metastorage level everywhere.
    pub async fn init_and_start(&self, from: &str) -> Result<ClusterState> {
        let state = self
            .node(from)
            .ms
            .init_cluster(InitRequest {
                name: "test".into(),
                metastorage: vec![],
            })
            .await
            .map_err(|e| fail(format_args!("init from {from}"), e))?;
        self.start_all_ms().await?;
        Ok(state)
    }

    /// Starts the metastorage level on every node at once.
    pub async fn start_all_ms(&self) -> Result<()> {
        let starts = self.nodes.iter().map(TestNode::start_ms);
        for r in futures::future::join_all(starts).await {
            r?;
        }
        Ok(())
    }

    /// Stops and removes node `name` (its data directory stays for a restart).
    pub async fn stop_node(&mut self, name: &str) -> Result<()> {
        let idx = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| HarnessError(format!("no node {name}")))?;
        let node = self.nodes.remove(idx);
        node.stop().await
    }

    /// Stops every node, last started first.
    pub async fn stop(self) -> Result<()> {
        for node in self.nodes.iter().rev() {
            node.stop().await?;
        }
        Ok(())
    }
}
