//! Cluster configuration in MetaStorage: a change on one node fires listeners on every
//! node, and concurrent changes are compare-and-set (retried by the manager).
use std::{collections::BTreeMap, sync::Arc};

use anyhow::{anyhow, Result};
use configuration::{
    ConfigChange, ConfigRoot, ConfigurationManager, ConfigurationStorage, ConfigurationType,
    RootKey,
};
use lifecycle::Component;
use metastorage::DistributedConfigurationStorage;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::harness::{ctx, Options, TestCluster, WAIT};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct Limits {
    max_tables: u32,
    max_columns: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tables: 100,
            max_columns: 10,
        }
    }
}

impl ConfigRoot for Limits {
    const KEY: &'static str = "limits";
    const TYPE: ConfigurationType = ConfigurationType::Distributed;
}

struct Node {
    cfg: Arc<ConfigurationManager>,
    storage: Arc<DistributedConfigurationStorage>,
    changes: mpsc::UnboundedReceiver<ConfigChange>,
}

/// A cluster configuration manager per node, started and its watch deployed.
async fn start_cluster_configuration(cluster: &TestCluster) -> Result<Vec<Node>> {
    let mut built = Vec::new();
    for node in &cluster.nodes {
        let storage = Arc::new(DistributedConfigurationStorage::new(Arc::clone(&node.ms)));
        storage.watch_id().map_err(|e| anyhow!(e))?;
        let cfg = Arc::new(
            ConfigurationManager::new(
                vec![RootKey::of::<Limits>()],
                vec![Arc::clone(&storage) as Arc<dyn ConfigurationStorage>],
                None,
            )
            .with_name("cluster-configuration"),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        cfg.listen(
            "limits",
            Arc::new(move |change: &ConfigChange| {
                let _ = tx.send(change.clone());
                Ok(())
            }),
        );
        built.push((node, cfg, storage, rx));
    }
    let starts = built
        .iter()
        .map(|(_, cfg, _, _)| async move { cfg.start(&ctx()).await });
    for r in futures::future::join_all(starts).await {
        r.map_err(|e| anyhow!("{e}"))?;
    }
    let mut out = Vec::new();
    for (node, cfg, storage, changes) in built {
        node.extra
            .lock()
            .push(Arc::clone(&cfg) as Arc<dyn Component>);
        node.ms.deploy_watches()?;
        out.push(Node {
            cfg,
            storage,
            changes,
        });
    }
    Ok(out)
}

async fn next_change(rx: &mut mpsc::UnboundedReceiver<ConfigChange>) -> Result<ConfigChange> {
    tokio::time::timeout(WAIT, rx.recv())
        .await?
        .ok_or_else(|| anyhow!("listener channel closed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_on_one_node_fires_listeners_on_every_node() -> Result<()> {
    let cluster = TestCluster::start(3, false, Options::default()).await?;
    cluster.init_and_start("n1").await?;
    let mut nodes = start_cluster_configuration(&cluster).await?;
    assert_eq!(nodes[1].cfg.root::<Limits>()?, Limits::default());

    nodes[0].cfg.change("limits.max_tables", json!(7)).await?;
    for (i, node) in nodes.iter_mut().enumerate() {
        let change = next_change(&mut node.changes).await?;
        assert_eq!(change.new["max_tables"], json!(7), "node {i}");
        assert_eq!(change.old["max_tables"], json!(100), "node {i}");
        assert_eq!(node.cfg.root::<Limits>()?.max_tables, 7, "node {i}");
    }
    // the stored snapshot is versioned by MetaStorage revision
    let snapshot = nodes[2].storage.read_all().await?;
    assert_eq!(snapshot.values.get("limits.max_tables"), Some(&json!(7)));
    assert!(snapshot.version > 0);
    assert!(nodes[2].storage.bootstrapped().await?);
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_are_compare_and_set() -> Result<()> {
    let cluster = TestCluster::start(3, false, Options::default()).await?;
    cluster.init_and_start("n1").await?;
    let mut nodes = start_cluster_configuration(&cluster).await?;

    // a stale version is refused by the storage itself
    let snapshot = nodes[0].storage.read_all().await?;
    let mut change = BTreeMap::new();
    change.insert("limits.max_columns".to_owned(), Some(json!(20)));
    assert!(
        nodes[0]
            .storage
            .write(change.clone(), snapshot.version)
            .await?
    );
    assert!(
        !nodes[1].storage.write(change, snapshot.version).await?,
        "the second writer with the same expected version loses"
    );

    // concurrent changes through the managers on two nodes both land (one is retried)
    let (a, b) = tokio::join!(
        nodes[1].cfg.change("limits.max_tables", json!(1)),
        nodes[2].cfg.change("limits.max_columns", json!(2)),
    );
    a?;
    b?;
    let expected = Limits {
        max_tables: 1,
        max_columns: 2,
    };
    for (i, node) in nodes.iter_mut().enumerate() {
        tokio::time::timeout(WAIT, async {
            while node.cfg.root::<Limits>()? != expected {
                next_change(&mut node.changes).await?;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .map_err(|_| anyhow!("node {i} sees both changes"))??;
    }
    cluster.stop().await
}
