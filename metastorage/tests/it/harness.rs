//! An in-process cluster of real nodes on 127.0.0.1 port 0: the shared node stack of
//! [`metastorage::testing::cluster`], plus a temporary data directory and watch helpers.
use std::ops::{Deref, DerefMut};

use anyhow::{anyhow, Context, Result};
use metastorage::{testing::cluster, KeyMatcher, WatchEvent};
use tokio::sync::mpsc;

pub(crate) use metastorage::testing::cluster::{ctx, Options, TestNode, WAIT};

/// The shared cluster, owning the temporary directory of its persistent nodes.
pub(crate) struct TestCluster {
    inner: cluster::TestCluster,
    _dirs: Option<tempfile::TempDir>,
}

impl Deref for TestCluster {
    type Target = cluster::TestCluster;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl TestCluster {
    pub(crate) async fn start(n: usize, persistent: bool, options: Options) -> Result<Self> {
        let dirs = if persistent {
            Some(tempfile::tempdir()?)
        } else {
            None
        };
        let root = dirs.as_ref().map(|d| d.path().to_path_buf());
        let inner = cluster::TestCluster::start(n, root, options).await?;
        Ok(Self { inner, _dirs: dirs })
    }

    pub(crate) async fn stop(self) -> Result<()> {
        Ok(self.inner.stop().await?)
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
