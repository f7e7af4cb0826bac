//! Node assembly: build each manager with its dependencies, register, start; the facade.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use affinity::AffinityManager;
use baseline::{Baseline, BaselineConfiguration, BaselineManager};
use configuration::{BootstrapConfig, ConfigurationManager, LocalConfigurationStorage, RootKey};
use lifecycle::{
    Fault, LifecycleConfig, LifecycleManager, NodeState, RunLevel, RunOutcome, StopReport,
};
use metastorage::{
    ClusterState, DistributedConfigurationStorage, InitRequest, MetaStorageConfiguration,
    MetaStorageManager,
};
use network::{NetworkConfiguration, NetworkManager, TopologyService};
use raft::{RaftConfiguration, RaftManager};
use schema::SchemaManager;
use serde::Serialize;
use table::{PartitionService, SledPartitionProvider, TableManager};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use vault::VaultManager;

use crate::{
    config::{ClusterConfiguration, NodeConfiguration, RestConfiguration},
    error::{Error, Result},
    rest::RestComponent,
};

/// How to start a node: the bootstrap sources, in increasing precedence file < environment <
/// flags.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// TOML configuration file.
    pub config_file: Option<PathBuf>,
    /// Read `IGNITE__SECTION__KEY` environment variables (on for the binary).
    pub use_env: bool,
    /// Explicit values (`--name` becomes `("node.name", "n1")`), applied last.
    pub overrides: Vec<(String, serde_json::Value)>,
    /// Initialise as a one-node cluster instead of waiting for `cluster init` in `ZOMBIE`.
    pub standalone: bool,
}

impl NodeOptions {
    /// Options for a standalone node in `data_dir` with REST on an OS-assigned port: what
    /// embedding code and tests want.
    pub fn standalone(name: &str, data_dir: &Path) -> Self {
        Self {
            config_file: None,
            use_env: false,
            overrides: vec![
                ("node.name".into(), name.into()),
                (
                    "node.data_dir".into(),
                    data_dir.to_string_lossy().into_owned().into(),
                ),
                ("rest.listen".into(), "127.0.0.1:0".into()),
                ("network.listen".into(), "127.0.0.1:0".into()),
            ],
            standalone: true,
        }
    }

    /// Add an override (`path`, JSON value).
    #[must_use]
    pub fn with(mut self, path: &str, value: impl Into<serde_json::Value>) -> Self {
        self.overrides.push((path.into(), value.into()));
        self
    }
}

/// What `GET /management/v1/node/info` reports.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Current state.
    pub state: NodeState,
    /// Product version.
    pub version: &'static str,
    /// Process id.
    pub pid: u32,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Bound REST address.
    pub rest_address: Option<SocketAddr>,
    /// Bound network (messaging and membership) address.
    pub network_address: Option<SocketAddr>,
    /// Whether the node runs as a one-node cluster.
    pub standalone: bool,
    /// Seconds since the node was built.
    pub uptime_seconds: f64,
    /// Threads of the task scheduler the node runs on (1 for a single-threaded one; 0 when
    /// asked from outside a tokio runtime).
    pub worker_threads: usize,
}

struct Inner {
    name: String,
    data_dir: PathBuf,
    standalone: bool,
    created: Instant,
    lifecycle: Arc<LifecycleManager>,
    vault: Arc<VaultManager>,
    configuration: Arc<ConfigurationManager>,
    network: Arc<NetworkManager>,
    metastorage: Arc<MetaStorageManager>,
    cluster_configuration: Arc<ConfigurationManager>,
    baseline: Arc<BaselineManager>,
    schema: Arc<SchemaManager>,
    tables: Arc<TableManager>,
    rest: Arc<RestComponent>,
    /// The task that moves a zombie node on once the cluster is initialized.
    join_tasks: TaskTracker,
    join_cancel: CancellationToken,
}

/// The facade a started node offers: what REST handlers, the CLI and embedding code use.
/// Cheap to clone.
#[derive(Clone)]
pub struct IgniteImpl {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IgniteImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IgniteImpl")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish()
    }
}

/// Every configuration root this node knows, in one place.
fn roots() -> Vec<RootKey> {
    vec![
        RootKey::of::<NodeConfiguration>(),
        RootKey::of::<RestConfiguration>(),
        RootKey::of::<NetworkConfiguration>(),
        RootKey::of::<RaftConfiguration>(),
        RootKey::of::<MetaStorageConfiguration>(),
    ]
}

impl IgniteImpl {
    /// Build and start a node. On a start failure the components already started are stopped
    /// and the error names the one that failed.
    pub async fn start(options: NodeOptions) -> Result<Self> {
        // The recorder goes in before any component records a metric.
        let _ = crate::telemetry::prometheus();
        let ignite = Self::build(options)?;
        let lifecycle = &ignite.inner.lifecycle;
        lifecycle
            .start_up_to(RunLevel::Zombie, NodeState::Zombie)
            .await?;
        if let Err(e) = ignite.after_zombie().await {
            lifecycle.stop().await;
            return Err(e);
        }
        tracing::info!(node = %ignite.name(), state = %ignite.state(), rest = ?ignite.rest_address(), "node started");
        Ok(ignite)
    }

    /// From ZOMBIE: a standalone node initializes itself; an initialized node (a restart)
    /// joins now; any other waits for `cluster init` in the background.
    async fn after_zombie(&self) -> Result<()> {
        let metastorage = &self.inner.metastorage;
        if self.inner.standalone && metastorage.cluster_state().await?.is_none() {
            let request = InitRequest {
                name: "standalone".into(),
                metastorage: vec![self.name()],
            };
            metastorage.init_cluster(request).await?;
        }
        if metastorage.cluster_state().await?.is_some() {
            self.join().await
        } else {
            self.spawn_joiner();
            Ok(())
        }
    }

    /// Move from ZOMBIE to STARTED: MetaStorage joins and recovers, the components above it
    /// start, then watches deploy (every listener is registered by then).
    async fn join(&self) -> Result<()> {
        let lifecycle = &self.inner.lifecycle;
        lifecycle.set_state(NodeState::Recovering);
        lifecycle
            .start_up_to(RunLevel::Metastorage, NodeState::Recovering)
            .await?;
        lifecycle
            .start_up_to(RunLevel::Ready, NodeState::Recovering)
            .await?;
        self.inner.metastorage.deploy_watches()?;
        if self.inner.standalone && self.inner.baseline.baseline().nodes.is_empty() {
            // a one-node cluster holds its data itself from the first moment: no quiet period
            let me: std::collections::BTreeSet<String> = [self.name()].into();
            if let Err(e) = self.inner.baseline.set(me).await {
                tracing::warn!(error = %e, "could not set the standalone baseline; auto-adjust will");
            }
        }
        lifecycle.set_state(NodeState::Started);
        tracing::info!(
            recovery_revision = self.inner.metastorage.recovery_revision(),
            "joined the cluster"
        );
        Ok(())
    }

    /// Wait in ZOMBIE for the cluster state (from `cluster init` on any node), then join. A
    /// failure to join is a runtime fault: the node stops and exits non-zero.
    fn spawn_joiner(&self) {
        let ignite = self.clone();
        let mut states = self.inner.metastorage.subscribe_cluster_state();
        let cancel = self.inner.join_cancel.clone();
        self.inner.join_tasks.spawn(async move {
            let initialized = tokio::select! {
                () = cancel.cancelled() => return,
                r = states.wait_for(Option::is_some) => r.is_ok(),
            };
            if !initialized {
                return;
            }
            if let Err(e) = ignite.join().await {
                if cancel.is_cancelled() {
                    return;
                }
                ignite.inner.lifecycle.faults().report(Fault {
                    component: "node".into(),
                    task: "join".into(),
                    reason: e.to_string(),
                });
            }
        });
        self.inner.join_tasks.close();
    }

    /// Construct every manager with its dependencies (no I/O but reading the bootstrap
    /// sources) and register them in startup order.
    fn build(options: NodeOptions) -> Result<Self> {
        let roots = roots();
        let mut bootstrap = if options.use_env {
            BootstrapConfig::load(&roots, options.config_file.as_deref())?
        } else {
            BootstrapConfig::load_with_env(
                &roots,
                options.config_file.as_deref(),
                std::iter::empty(),
            )?
        };
        // flags are validated together: a minimum and a maximum may come in any order
        bootstrap.set_all(options.overrides)?;
        let node_cfg: NodeConfiguration = bootstrap.root()?;
        let data_dir = node_cfg.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| Error::DataDir {
            path: data_dir.clone(),
            source,
        })?;

        let lifecycle = Arc::new(LifecycleManager::new(LifecycleConfig {
            stop_timeout: Duration::from_millis(node_cfg.stop_timeout_ms),
        }));
        // 1. vault
        let vault = Arc::new(VaultManager::persistent(&data_dir));
        // 2. configuration (local storage on the vault)
        let local_storage = Arc::new(LocalConfigurationStorage::new(Arc::clone(&vault)));
        let configuration = Arc::new(ConfigurationManager::new(
            roots,
            vec![local_storage],
            Some(bootstrap),
        ));
        // 3. network (its node name is the vault's once bootstrapped)
        let network = Arc::new(NetworkManager::new(
            node_cfg.name.clone(),
            Arc::clone(&vault),
            Arc::clone(&configuration),
            BTreeMap::new(),
        ));
        // 4. raft (registers its message handlers with the network before it starts)
        let raft = Arc::new(RaftManager::new(
            Arc::clone(&network),
            Arc::clone(&vault),
            Arc::clone(&configuration),
        ));
        // 5. metastorage (its cluster-init handlers work from the zombie state on) and the
        //    cluster-wide configuration stored in it
        let metastorage = Arc::new(MetaStorageManager::new(
            Arc::clone(&vault),
            Arc::clone(&network),
            Arc::clone(&raft),
            Arc::clone(&configuration),
        ));
        let distributed = Arc::new(DistributedConfigurationStorage::new(Arc::clone(
            &metastorage,
        )));
        let cluster_configuration = Arc::new(
            ConfigurationManager::new(
                vec![
                    RootKey::of::<ClusterConfiguration>(),
                    RootKey::of::<BaselineConfiguration>(),
                ],
                vec![distributed],
                None,
            )
            .with_name("cluster-configuration"),
        );
        // 6-8. the business layer: baseline (from the logical topology), affinity (partition
        //      assignments over the baseline), schema (versioned table schemas). Their
        //      MetaStorage watches are registered here, before `deploy_watches`.
        let baseline = Arc::new(BaselineManager::new(
            Arc::clone(&metastorage),
            Arc::clone(&network),
            Arc::clone(&cluster_configuration),
        ));
        let affinity = Arc::new(AffinityManager::new(
            Arc::clone(&metastorage),
            Arc::clone(&baseline),
        ));
        let schema = Arc::new(SchemaManager::new(Arc::clone(&metastorage)));
        // 9. tables: partition replicas (one Raft group each) in <data_dir>/partitions, the
        //    service that routes row operations from any node to a replica
        let partition_service = Arc::new(PartitionService::new(&network));
        let tables = Arc::new(TableManager::new(
            Arc::clone(&metastorage),
            Arc::clone(&affinity),
            Arc::clone(&schema),
            Arc::clone(&raft),
            Arc::clone(&network),
            Arc::clone(&partition_service),
            Arc::new(SledPartitionProvider::in_data_dir(&data_dir)),
            Arc::clone(&vault),
        ));
        // REST answers from the zombie state on; it starts before the network so that its
        // address is gossiped with the member.
        let rest = Arc::new(RestComponent::new(
            Arc::clone(&configuration),
            Arc::clone(&network),
        ));

        lifecycle.register(RunLevel::Zombie, vault.clone())?;
        lifecycle.register(RunLevel::Zombie, configuration.clone())?;
        lifecycle.register(RunLevel::Zombie, rest.clone())?;
        lifecycle.register(RunLevel::Zombie, network.clone())?;
        lifecycle.register(RunLevel::Zombie, raft)?;
        lifecycle.register(RunLevel::Metastorage, metastorage.clone())?;
        lifecycle.register(RunLevel::Metastorage, cluster_configuration.clone())?;
        lifecycle.register(RunLevel::Ready, baseline.clone())?;
        lifecycle.register(RunLevel::Ready, affinity)?;
        lifecycle.register(RunLevel::Ready, schema.clone())?;
        lifecycle.register(RunLevel::Ready, partition_service)?;
        lifecycle.register(RunLevel::Ready, tables.clone())?;

        let ignite = Self {
            inner: Arc::new(Inner {
                name: node_cfg.name,
                data_dir,
                standalone: options.standalone,
                created: Instant::now(),
                lifecycle,
                vault,
                configuration,
                network,
                metastorage,
                cluster_configuration,
                baseline,
                schema,
                tables,
                rest,
                join_tasks: TaskTracker::new(),
                join_cancel: CancellationToken::new(),
            }),
        };
        ignite.inner.rest.attach(ignite.clone());
        Ok(ignite)
    }

    /// The node's name (as stored in the vault at first start).
    pub fn name(&self) -> String {
        self.inner
            .configuration
            .root::<NodeConfiguration>()
            .map(|c| c.name)
            .unwrap_or_else(|_| self.inner.name.clone())
    }

    /// The current node state.
    pub fn state(&self) -> NodeState {
        self.inner.lifecycle.state()
    }

    /// A receiver of node state changes.
    pub fn subscribe_state(&self) -> tokio::sync::watch::Receiver<NodeState> {
        self.inner.lifecycle.subscribe()
    }

    /// The configuration manager (node-local roots; cluster roots come with MetaStorage).
    pub fn configuration(&self) -> &Arc<ConfigurationManager> {
        &self.inner.configuration
    }

    /// The physical topology: the members this node sees.
    pub fn topology(&self) -> TopologyService {
        self.inner.network.topology()
    }

    /// The network manager (messaging between nodes).
    pub fn network(&self) -> &Arc<NetworkManager> {
        &self.inner.network
    }

    /// The MetaStorage: the replicated, revisioned store every node holds a copy of.
    pub fn metastorage(&self) -> &Arc<MetaStorageManager> {
        &self.inner.metastorage
    }

    /// The cluster-wide configuration (`[cluster]`), usable once the node joined a cluster.
    pub fn cluster_configuration(&self) -> &Arc<ConfigurationManager> {
        &self.inner.cluster_configuration
    }

    /// Distributed tables: create, drop, list, and the record view of each.
    pub fn tables(&self) -> &Arc<TableManager> {
        &self.inner.tables
    }

    /// Table schemas (versions, alter).
    pub fn schemas(&self) -> &Arc<SchemaManager> {
        &self.inner.schema
    }

    /// The cluster-wide defaults for new tables.
    pub fn table_defaults(&self) -> (u32, u32) {
        self.inner
            .cluster_configuration
            .root::<ClusterConfiguration>()
            .map(|c| (c.default_partitions, c.default_replicas))
            .unwrap_or((25, 1))
    }

    /// The baseline: the nodes that hold data, as this node last saw it.
    pub fn baseline(&self) -> Baseline {
        self.inner.baseline.baseline()
    }

    /// Set the baseline by hand (every node must be in the logical topology).
    pub async fn set_baseline(
        &self,
        nodes: std::collections::BTreeSet<String>,
    ) -> std::result::Result<Baseline, baseline::Error> {
        self.inner.baseline.set(nodes).await
    }

    /// Initialize the cluster from this node (any node of the physical topology). Same
    /// parameters again succeed; different ones are refused with the reason.
    pub async fn init_cluster(&self, request: InitRequest) -> Result<ClusterState> {
        Ok(self.inner.metastorage.init_cluster(request).await?)
    }

    /// The cluster state, `None` before init.
    pub async fn cluster_state(&self) -> Result<Option<ClusterState>> {
        Ok(self.inner.metastorage.cluster_state().await?)
    }

    /// The highest run level whose components all run (`None` before the first start).
    pub fn run_level(&self) -> Option<RunLevel> {
        self.inner.lifecycle.run_level()
    }

    /// Move the node to `level` (DESIGN section 5) and return the level reached.
    ///
    /// Down to `metastorage` stops the table layer (tables, partition replicas, schema,
    /// affinity, baseline) in reverse order; the node stays `STARTED` and keeps serving
    /// MetaStorage and configuration. Back up to `ready` restarts them: each rebuilds its
    /// state from MetaStorage and follows watches from where it left off. `zombie` is the
    /// level of a node before init; an initialized node leaves it only by stopping.
    pub async fn set_run_level(&self, level: RunLevel) -> Result<RunLevel> {
        let state = self.state();
        let current = self.run_level();
        match state {
            NodeState::Started => {}
            NodeState::Zombie if level == RunLevel::Zombie => return Ok(RunLevel::Zombie),
            NodeState::Zombie => {
                return Err(Error::RunLevel(format!(
                "cannot move to {level}: the cluster is not initialized, run `ignite cluster init`"
            )))
            }
            other => {
                return Err(Error::RunLevel(format!(
                    "cannot move to {level} while the node is {other}"
                )))
            }
        }
        if level == RunLevel::Zombie {
            return Err(Error::RunLevel(
                "cannot move an initialized node down to zombie: stop the node instead".into(),
            ));
        }
        let lifecycle = &self.inner.lifecycle;
        match current {
            Some(current) if current == level => {}
            Some(current) if current > level => {
                lifecycle.stop_above(level, NodeState::Started).await?;
                tracing::info!(from = %current, to = %level, "run level lowered");
            }
            _ => {
                lifecycle.start_up_to(level, NodeState::Started).await?;
                tracing::info!(from = ?current, to = %level, "run level raised");
            }
        }
        self.run_level()
            .ok_or_else(|| Error::RunLevel(format!("the node did not reach {level}")))
    }

    /// Wait until the node state satisfies `pred`, up to `timeout`.
    pub async fn wait_for_state(
        &self,
        timeout: Duration,
        pred: impl Fn(NodeState) -> bool,
    ) -> Option<NodeState> {
        let mut rx = self.subscribe_state();
        let r = tokio::time::timeout(timeout, rx.wait_for(|s| pred(*s))).await;
        match r {
            Ok(Ok(s)) => Some(*s),
            _ => None,
        }
    }

    /// The vault.
    pub fn vault(&self) -> &Arc<VaultManager> {
        &self.inner.vault
    }

    /// The node-wide stop guard: user operations enter it.
    pub fn guard(&self) -> &lifecycle::StopGuard {
        self.inner.lifecycle.guard()
    }

    /// The address the REST API is bound to.
    pub fn rest_address(&self) -> Option<SocketAddr> {
        self.inner.rest.local_address()
    }

    /// A description of the node.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            name: self.name(),
            state: self.state(),
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            data_dir: self.inner.data_dir.clone(),
            rest_address: self.rest_address(),
            network_address: self.inner.network.local_address(),
            standalone: self.inner.standalone,
            uptime_seconds: self.inner.created.elapsed().as_secs_f64(),
            worker_threads: tokio::runtime::Handle::try_current()
                .map_or(0, |runtime| runtime.metrics().num_workers()),
        }
    }

    /// Keys of the bootstrap sources that were ignored because the vault already held
    /// configuration.
    pub fn ignored_bootstrap_keys(&self) -> Vec<String> {
        self.inner.configuration.ignored_bootstrap_keys()
    }

    /// Stop every component in reverse order. Idempotent.
    pub async fn stop(&self) -> StopReport {
        self.inner.join_cancel.cancel();
        let report = self.inner.lifecycle.stop().await;
        self.inner.join_tasks.close();
        self.inner.join_tasks.wait().await;
        report
    }

    /// Serve until `shutdown` completes or a component reports a runtime fault, then stop.
    pub async fn run_until(&self, shutdown: impl std::future::Future<Output = ()>) -> RunOutcome {
        let outcome = self.inner.lifecycle.run(shutdown).await;
        self.inner.join_cancel.cancel();
        self.inner.join_tasks.close();
        self.inner.join_tasks.wait().await;
        outcome
    }
}
