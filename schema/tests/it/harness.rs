//! An in-process cluster of real nodes on 127.0.0.1 port 0: the shared node stack of
//! [`metastorage::testing::cluster`] (vault to MetaStorage) plus the schema manager per node.
use std::{ops::Deref, sync::Arc};

use anyhow::{anyhow, Result};
use lifecycle::Component;
use metastorage::testing::cluster::{self, Options};
use schema::SchemaManager;

pub(crate) use metastorage::testing::cluster::{ctx, WAIT};

/// One node's components: the shared stack and its schema manager.
pub(crate) struct TestNode {
    base: cluster::TestNode,
    pub(crate) schema: Arc<SchemaManager>,
}

impl Deref for TestNode {
    type Target = cluster::TestNode;

    fn deref(&self) -> &Self::Target {
        &self.base
    }
}

impl TestNode {
    /// Starts MetaStorage (the cluster state must exist), then schema, then deploys watches.
    async fn join(base: cluster::TestNode) -> Result<Self> {
        base.start_ms().await?;
        let schema = Arc::new(SchemaManager::new(Arc::clone(&base.ms)));
        schema
            .start(&ctx())
            .await
            .map_err(|e| anyhow!("schema on {}: {e}", base.name))?;
        base.extra
            .lock()
            .push(Arc::clone(&schema) as Arc<dyn Component>);
        base.ms.deploy_watches()?;
        Ok(Self { base, schema })
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
        let dirs = tempfile::tempdir()?;
        let mut base =
            cluster::TestCluster::start(n, Some(dirs.path().to_path_buf()), Options::default())
                .await?;
        base.node("n1")
            .ms
            .init_cluster(metastorage::InitRequest {
                name: "test".into(),
                metastorage: vec![],
            })
            .await?;
        let joins = base.nodes.drain(..).map(TestNode::join);
        let mut nodes = Vec::new();
        for r in futures::future::join_all(joins).await {
            nodes.push(r?);
        }
        Ok(Self { nodes, dirs })
    }

    /// Stops node `name` and starts it again on the same data directory; it rejoins.
    pub(crate) async fn restart(&mut self, name: &str) -> Result<()> {
        let idx = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| anyhow!("no node {name}"))?;
        let node = self.nodes.remove(idx);
        node.stop().await?;
        drop(node);
        let dir = self.dirs.path().join(name);
        let seeds: Vec<String> = self.nodes.iter().map(|n| n.address()).collect();
        let base = cluster::TestNode::start(name, seeds, Some(&dir), &Options::default()).await?;
        let node = TestNode::join(base).await?;
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
