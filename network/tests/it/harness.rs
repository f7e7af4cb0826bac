//! An in-process cluster: each node runs vault, configuration and network under a
//! `LifecycleManager`, on 127.0.0.1 with OS-assigned ports.
use std::{collections::BTreeMap, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use configuration::{BootstrapConfig, ConfigurationManager, LocalConfigurationStorage, RootKey};
use lifecycle::{LifecycleConfig, LifecycleManager, RunLevel};
use network::{ClusterNode, NetworkConfiguration, NetworkManager};
use serde_json::json;
use vault::VaultManager;

/// Failure-detection bound used by the tests.
pub(crate) const FD_MS: u64 = 1500;
/// Generous deadline for conditions that need failure detection.
pub(crate) const FD_DEADLINE: Duration = Duration::from_millis(FD_MS + 8_000);
/// Deadline for conditions that should happen promptly.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "network=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub(crate) struct Options {
    pub(crate) listen: String,
    pub(crate) seeds: Vec<String>,
    pub(crate) failure_detection_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            seeds: Vec::new(),
            failure_detection_ms: FD_MS,
        }
    }
}

pub(crate) struct TestNode {
    pub(crate) vault: Arc<VaultManager>,
    pub(crate) net: Arc<NetworkManager>,
    lifecycle: LifecycleManager,
}

impl TestNode {
    /// Build a node (not started) so handlers can be registered first.
    pub(crate) fn build(name: &str, vault: Arc<VaultManager>, opts: &Options) -> Self {
        let roots = vec![RootKey::of::<NetworkConfiguration>()];
        let mut bootstrap = BootstrapConfig::new(&roots);
        bootstrap
            .set(
                "network",
                json!({
                    "listen": opts.listen,
                    "seeds": opts.seeds,
                    "failure_detection_ms": opts.failure_detection_ms,
                    "gossip_interval_ms": 100,
                    "announce_interval_ms": 100,
                    "handshake_timeout_ms": 1000,
                    "max_frame_bytes": 1024 * 1024,
                }),
            )
            .expect("valid bootstrap");
        let storage = Arc::new(LocalConfigurationStorage::new(Arc::clone(&vault)));
        let config = Arc::new(ConfigurationManager::new(
            roots,
            vec![storage],
            Some(bootstrap),
        ));
        let mut metadata = BTreeMap::new();
        metadata.insert("rest".to_owned(), format!("http://{name}.invalid:10300"));
        let net = Arc::new(NetworkManager::new(
            name.to_owned(),
            Arc::clone(&vault),
            Arc::clone(&config),
            metadata,
        ));
        let lifecycle = LifecycleManager::new(LifecycleConfig::default());
        lifecycle
            .register(RunLevel::Zombie, vault.clone())
            .expect("register vault");
        lifecycle
            .register(RunLevel::Zombie, config)
            .expect("register configuration");
        lifecycle
            .register(RunLevel::Zombie, net.clone())
            .expect("register network");
        Self {
            vault,
            net,
            lifecycle,
        }
    }

    pub(crate) async fn start(self) -> Self {
        self.lifecycle.start().await.expect("node starts");
        self
    }

    pub(crate) async fn launch(name: &str, opts: &Options) -> Self {
        Self::build(name, Arc::new(VaultManager::in_memory()), opts)
            .start()
            .await
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.net.local_address().expect("started")
    }

    pub(crate) fn me(&self) -> ClusterNode {
        self.net.topology().local_member()
    }

    pub(crate) fn member_names(&self) -> Vec<String> {
        self.net
            .topology()
            .members()
            .into_iter()
            .map(|m| m.name)
            .collect()
    }

    /// Graceful stop: goodbye, then every component stops.
    pub(crate) async fn stop(&self) {
        let report = self.lifecycle.stop().await;
        assert!(report.is_clean(), "{report:?}");
    }

    /// Crash: network dies without goodbye, then the rest stops.
    pub(crate) async fn kill(&self) {
        self.net.kill().await;
        self.lifecycle.stop().await;
    }
}

/// Wait until `cond` holds, polling; panics with `what` after `deadline`.
pub(crate) async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let res = tokio::time::timeout(deadline, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(res.is_ok(), "timed out waiting for: {what}");
}

/// Await `fut` with a deadline.
pub(crate) async fn within<F: Future>(what: &str, deadline: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(deadline, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

pub(crate) fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

/// A loopback address with no one listening (reserved then released).
pub(crate) fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Start `n` nodes `n0..` joined through the first one, and wait until all see all.
pub(crate) async fn cluster(n: usize) -> Vec<TestNode> {
    let first = TestNode::launch("n0", &Options::default()).await;
    let seeds = vec![first.addr().to_string()];
    let mut nodes = vec![first];
    for i in 1..n {
        let opts = Options {
            seeds: seeds.clone(),
            ..Options::default()
        };
        nodes.push(TestNode::launch(&format!("n{i}"), &opts).await);
    }
    for node in &nodes {
        wait_for("full membership", DEADLINE, || {
            node.member_names().len() == n
        })
        .await;
    }
    nodes
}
