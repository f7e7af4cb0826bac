//! Test roots, a started vault and manager, and bounded waits.
use std::{collections::BTreeMap, future::Future, path::Path, sync::Arc, time::Duration};

use configuration::{
    BootstrapConfig, ConfigRoot, ConfigurationManager, ConfigurationStorage, ConfigurationType,
    LocalConfigurationStorage, RootKey,
};
use lifecycle::{Component, FaultReporter, StartContext};
use serde::{Deserialize, Serialize};
use vault::VaultManager;

/// Every wait in these tests is bounded by this.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// A node-local root with a range check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TestNode {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) seeds: Vec<String>,
    pub(crate) limits: TestLimits,
}

impl Default for TestNode {
    fn default() -> Self {
        Self {
            name: "node".into(),
            port: 3344,
            seeds: Vec::new(),
            limits: TestLimits::default(),
        }
    }
}

impl ConfigRoot for TestNode {
    const KEY: &'static str = "node";
    const TYPE: ConfigurationType = ConfigurationType::Local;

    fn validate(&self) -> Result<(), (String, String)> {
        if self.port < 1024 {
            return Err(("port".into(), "must be at least 1024".into()));
        }
        Ok(())
    }
}

/// A nested section of [`TestNode`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TestLimits {
    pub(crate) max_connections: u32,
    pub(crate) timeout_ms: u64,
    pub(crate) tags: BTreeMap<String, String>,
}

impl Default for TestLimits {
    fn default() -> Self {
        Self {
            max_connections: 16,
            timeout_ms: 1000,
            tags: BTreeMap::new(),
        }
    }
}

/// A second node-local root.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TestRest {
    pub(crate) listen: String,
    pub(crate) enabled: bool,
}

impl ConfigRoot for TestRest {
    const KEY: &'static str = "rest";
    const TYPE: ConfigurationType = ConfigurationType::Local;
}

/// A cluster-wide root.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TestCluster {
    pub(crate) replicas: u32,
    pub(crate) partitions: u32,
}

impl Default for TestCluster {
    fn default() -> Self {
        Self {
            replicas: 1,
            partitions: 8,
        }
    }
}

impl ConfigRoot for TestCluster {
    const KEY: &'static str = "cluster";
    const TYPE: ConfigurationType = ConfigurationType::Distributed;

    fn validate(&self) -> Result<(), (String, String)> {
        if self.replicas == 0 {
            return Err(("replicas".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

pub(crate) fn local_roots() -> Vec<RootKey> {
    vec![RootKey::of::<TestNode>(), RootKey::of::<TestRest>()]
}

pub(crate) fn ctx() -> StartContext {
    StartContext {
        faults: FaultReporter::detached(),
    }
}

/// Run `fut` with the test deadline.
pub(crate) async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("operation did not finish before the test deadline")
}

/// A started vault: in memory, or persistent in `dir`.
pub(crate) async fn start_vault(dir: Option<&Path>) -> Arc<VaultManager> {
    let vault = Arc::new(match dir {
        Some(dir) => VaultManager::persistent(dir),
        None => VaultManager::in_memory(),
    });
    bounded(vault.start(&ctx())).await.expect("vault starts");
    vault
}

/// A node's local configuration: the vault, its storage and a manager of [`local_roots`].
pub(crate) struct Local {
    pub(crate) vault: Arc<VaultManager>,
    pub(crate) storage: Arc<LocalConfigurationStorage>,
    pub(crate) manager: ConfigurationManager,
}

impl Local {
    pub(crate) fn new(vault: Arc<VaultManager>, bootstrap: Option<BootstrapConfig>) -> Self {
        let storage = Arc::new(LocalConfigurationStorage::new(Arc::clone(&vault)));
        let storages: Vec<Arc<dyn ConfigurationStorage>> = vec![storage.clone()];
        let manager = ConfigurationManager::new(local_roots(), storages, bootstrap);
        Self {
            vault,
            storage,
            manager,
        }
    }

    /// Start the manager, returning its error message on failure.
    pub(crate) async fn start(&self) -> Result<(), String> {
        bounded(self.manager.start(&ctx()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Stop the manager, then the vault.
    pub(crate) async fn stop(&self) {
        bounded(self.manager.stop()).await.expect("manager stops");
        bounded(self.vault.stop()).await.expect("vault stops");
    }

    /// Every value stored in the local storage.
    pub(crate) async fn stored(&self) -> BTreeMap<String, serde_json::Value> {
        bounded(self.storage.read_all())
            .await
            .expect("read storage")
            .values
    }
}

/// Write `text` to `ignite.toml` in `dir`.
pub(crate) fn write_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("ignite.toml");
    std::fs::write(&path, text).expect("write config file");
    path
}

pub(crate) fn no_env() -> Vec<(String, String)> {
    Vec::new()
}
