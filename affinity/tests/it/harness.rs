//! An in-process cluster of real nodes on 127.0.0.1 port 0: the shared node stack of
//! [`metastorage::testing::cluster`] (vault to MetaStorage) plus the cluster configuration
//! (with the `baseline` root), the baseline and affinity managers per node; each node also
//! watches `assignments/` into a channel.
use std::{collections::BTreeSet, ops::Deref, sync::Arc, time::Duration};

use affinity::{AffinityManager, Assignments, ASSIGNMENTS_PREFIX};
use anyhow::{anyhow, Context, Result};
use baseline::{Baseline, BaselineConfiguration, BaselineManager};
use configuration::{BootstrapConfig, ConfigurationManager, ConfigurationStorage, RootKey};
use lifecycle::Component;
use metastorage::{
    testing::cluster::{self, ctx, Options, WAIT},
    DistributedConfigurationStorage, InitRequest, KeyMatcher, WatchEvent,
};
use serde_json::json;
use tokio::sync::mpsc;

fn err(e: lifecycle::BoxError) -> anyhow::Error {
    anyhow!("{e}")
}

pub(crate) fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// One node's components: the shared stack plus the cluster configuration, baseline and
/// affinity.
pub(crate) struct TestNode {
    base: cluster::TestNode,
    pub(crate) cluster_config: Arc<ConfigurationManager>,
    pub(crate) baseline: Arc<BaselineManager>,
    pub(crate) affinity: Arc<AffinityManager>,
    /// Every stored assignments version this node's watch delivered.
    pub(crate) assignments: tokio::sync::Mutex<mpsc::UnboundedReceiver<Assignments>>,
}

impl Deref for TestNode {
    type Target = cluster::TestNode;

    fn deref(&self) -> &Self::Target {
        &self.base
    }
}

impl TestNode {
    /// Adds the upper components to a node whose zombie part runs; the baseline watch is
    /// registered at construction.
    /// `auto_adjust_ms: Some` bootstraps the cluster configuration from this node (one node
    /// only: concurrent bootstraps race).
    fn new(base: cluster::TestNode, auto_adjust_ms: Option<u64>) -> Result<Self> {
        let ms = Arc::clone(&base.ms);
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
            Arc::clone(&base.network),
            Arc::clone(&cluster_config),
        ));
        let affinity = Arc::new(AffinityManager::new(Arc::clone(&ms), Arc::clone(&baseline)));
        let (tx, rx) = mpsc::unbounded_channel();
        ms.register_watch(
            KeyMatcher::Prefix(ASSIGNMENTS_PREFIX.to_vec()),
            move |event: WatchEvent| {
                for change in &event.entries {
                    if let Ok(Some(a)) = Assignments::decode(&change.new) {
                        let _ = tx.send(a);
                    }
                }
                futures::future::ready(Ok::<(), lifecycle::BoxError>(()))
            },
        )?;
        Ok(Self {
            base,
            cluster_config,
            baseline,
            affinity,
            assignments: tokio::sync::Mutex::new(rx),
        })
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

    /// Waits until this node's watch delivered assignments of `table` satisfying `ok`.
    pub(crate) async fn wait_assignments(
        &self,
        table: &str,
        ok: impl Fn(&Assignments) -> bool,
    ) -> Result<Assignments> {
        let mut rx = self.assignments.lock().await;
        tokio::time::timeout(WAIT, async {
            loop {
                match rx.recv().await {
                    Some(a) if a.table == table && ok(&a) => return Ok(a),
                    Some(_) => {}
                    None => return Err(anyhow!("assignments watch closed")),
                }
            }
        })
        .await
        .with_context(|| format!("assignments of {table} on {}", self.name))?
    }
}

/// Nodes `n1..=nN`, initialized from `n1` with the default voters, everything started.
pub(crate) struct TestCluster {
    pub(crate) nodes: Vec<TestNode>,
}

impl TestCluster {
    pub(crate) async fn start(n: usize, auto_adjust_ms: u64) -> Result<Self> {
        let mut base = cluster::TestCluster::start(n, None, Options::default()).await?;
        let mut nodes = Vec::new();
        for (i, node) in base.nodes.drain(..).enumerate() {
            let bootstrap = (i == 0).then_some(auto_adjust_ms);
            nodes.push(TestNode::new(node, bootstrap)?);
        }
        let cluster = Self { nodes };
        cluster.nodes[0]
            .ms
            .init_cluster(InitRequest {
                name: "test".into(),
                metastorage: vec![],
            })
            .await?;
        for r in futures::future::join_all(cluster.nodes.iter().map(|n| n.start_ms())).await {
            r?;
        }
        // the first node bootstraps the cluster configuration, the others read it
        let ctx = ctx();
        for node in &cluster.nodes {
            node.cluster_config.start(&ctx).await.map_err(err)?;
            node.extra
                .lock()
                .push(Arc::clone(&node.cluster_config) as Arc<dyn Component>);
        }
        for node in &cluster.nodes {
            node.baseline.start(&ctx).await.map_err(err)?;
            node.extra
                .lock()
                .push(Arc::clone(&node.baseline) as Arc<dyn Component>);
            node.affinity.start(&ctx).await.map_err(err)?;
            node.extra
                .lock()
                .push(Arc::clone(&node.affinity) as Arc<dyn Component>);
            node.ms.deploy_watches()?;
        }
        Ok(cluster)
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

    pub(crate) async fn stop(self) -> Result<()> {
        for node in self.nodes.iter().rev() {
            node.stop().await?;
        }
        Ok(())
    }
}
