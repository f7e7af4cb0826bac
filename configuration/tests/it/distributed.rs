//! A second storage of type `Distributed`, defined here, proves cluster-wide roots work the
//! same way once MetaStorage provides one: bootstrap, changes, remote updates, conflicts.
use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use configuration::{
    BootstrapConfig, ConfigChange, ConfigurationManager, ConfigurationStorage, ConfigurationType,
    Error, LocalConfigurationStorage, RootKey, StorageSnapshot,
};
use lifecycle::Component;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::support::{bounded, ctx, start_vault, TestCluster, TestNode};

/// An in-memory distributed storage; `remote_write` plays another node.
#[derive(Default)]
struct MemoryStorage {
    state: Mutex<StorageSnapshot>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<StorageSnapshot>>>,
}

impl MemoryStorage {
    /// Another node writes `key`; subscribers hear of it when `announce`.
    fn remote_write(&self, key: &str, value: Value, announce: bool) {
        let snapshot = {
            let mut state = self.state.lock();
            state.values.insert(key.to_owned(), value);
            state.version += 1;
            state.clone()
        };
        if announce {
            for tx in self.subscribers.lock().iter() {
                let _ = tx.send(snapshot.clone());
            }
        }
    }

    fn snapshot(&self) -> StorageSnapshot {
        self.state.lock().clone()
    }
}

#[async_trait]
impl ConfigurationStorage for MemoryStorage {
    fn storage_type(&self) -> ConfigurationType {
        ConfigurationType::Distributed
    }

    async fn read_all(&self) -> configuration::Result<StorageSnapshot> {
        Ok(self.snapshot())
    }

    async fn write(
        &self,
        changes: BTreeMap<String, Option<Value>>,
        expected_version: u64,
    ) -> configuration::Result<bool> {
        let mut state = self.state.lock();
        if state.version != expected_version {
            return Ok(false);
        }
        for (key, value) in changes {
            match value {
                Some(v) => state.values.insert(key, v),
                None => state.values.remove(&key),
            };
        }
        state.version += 1;
        Ok(true)
    }

    fn subscribe(&self) -> mpsc::UnboundedReceiver<StorageSnapshot> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.lock().push(tx);
        rx
    }

    async fn bootstrapped(&self) -> configuration::Result<bool> {
        Ok(self.state.lock().version > 0)
    }
}

fn roots() -> Vec<RootKey> {
    vec![RootKey::of::<TestNode>(), RootKey::of::<TestCluster>()]
}

struct Both {
    vault: Arc<vault::VaultManager>,
    local: Arc<LocalConfigurationStorage>,
    distributed: Arc<MemoryStorage>,
    manager: ConfigurationManager,
}

async fn start_both(bootstrap: Option<BootstrapConfig>) -> Both {
    let vault = start_vault(None).await;
    let local = Arc::new(LocalConfigurationStorage::new(Arc::clone(&vault)));
    let distributed = Arc::new(MemoryStorage::default());
    let storages: Vec<Arc<dyn ConfigurationStorage>> = vec![local.clone(), distributed.clone()];
    let manager = ConfigurationManager::new(roots(), storages, bootstrap);
    bounded(manager.start(&ctx())).await.expect("start");
    Both {
        vault,
        local,
        distributed,
        manager,
    }
}

impl Both {
    async fn stop(&self) {
        bounded(self.manager.stop()).await.expect("stop");
        bounded(self.vault.stop()).await.expect("vault stops");
    }
}

#[tokio::test]
async fn each_root_goes_to_the_storage_of_its_type() {
    let mut bootstrap = BootstrapConfig::new(&roots());
    bootstrap.set("node.name", json!("n1")).expect("valid");
    bootstrap.set("cluster.replicas", json!(3)).expect("valid");
    let both = start_both(Some(bootstrap)).await;

    let local = bounded(both.local.read_all()).await.expect("read");
    assert_eq!(local.values, [("node.name".to_owned(), json!("n1"))].into());
    let distributed = both.distributed.snapshot();
    assert_eq!(
        distributed.values,
        [("cluster.replicas".to_owned(), json!(3))].into()
    );
    assert_eq!(
        both.manager.root::<TestCluster>().expect("root").replicas,
        3
    );

    bounded(both.manager.change("cluster", json!({"partitions": 32})))
        .await
        .expect("valid");
    assert_eq!(
        both.distributed.snapshot().values.get("cluster.partitions"),
        Some(&json!(32))
    );
    let local_after = bounded(both.local.read_all()).await.expect("read");
    assert_eq!(
        local_after, local,
        "a cluster change does not touch the vault"
    );
    let err = bounded(both.manager.change("cluster.replicas", json!(0)))
        .await
        .expect_err("invalid");
    assert_eq!(err.to_string(), "key cluster.replicas: must be at least 1");

    // one change over both storages
    bounded(both.manager.change(
        "",
        json!({"node": {"port": 4001}, "cluster": {"replicas": 2}}),
    ))
    .await
    .expect("valid");
    assert_eq!(both.manager.get("node.port").expect("get"), json!(4001));
    assert_eq!(both.manager.get("cluster.replicas").expect("get"), json!(2));
    both.stop().await;
}

#[tokio::test]
async fn remote_changes_reach_listeners_and_invalid_ones_are_not_applied() {
    let both = start_both(None).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<ConfigChange>();
    both.manager.listen(
        "cluster.replicas",
        Arc::new(move |c: &ConfigChange| tx.send(c.clone()).map_err(|e| e.to_string())),
    );
    both.distributed
        .remote_write("cluster.replicas", json!(5), true);
    let change = bounded(rx.recv()).await.expect("listener called");
    assert_eq!(change.path, "cluster.replicas");
    assert_eq!((change.old, change.new), (json!(1), json!(5)));
    assert_eq!(
        both.manager.root::<TestCluster>().expect("root").replicas,
        5
    );

    // an invalid remote value is not applied; a later valid one is
    both.distributed
        .remote_write("cluster.replicas", json!(0), true);
    both.distributed
        .remote_write("cluster.replicas", json!(6), true);
    let change = bounded(rx.recv()).await.expect("listener called");
    assert_eq!((change.old, change.new), (json!(5), json!(6)));
    both.stop().await;
}

#[tokio::test]
async fn a_change_retries_when_another_node_wrote_first() {
    let both = start_both(None).await;
    // another node writes without this node having heard of it yet
    both.distributed
        .remote_write("cluster.partitions", json!(64), false);
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    both.manager.listen(
        "cluster",
        Arc::new(move |c: &ConfigChange| {
            l.lock().push(c.new.clone());
            Ok(())
        }),
    );
    bounded(both.manager.change("cluster.replicas", json!(3)))
        .await
        .expect("retried and applied");
    let values = both.distributed.snapshot().values;
    assert_eq!(
        values.get("cluster.partitions"),
        Some(&json!(64)),
        "the other write stays"
    );
    assert_eq!(values.get("cluster.replicas"), Some(&json!(3)));
    assert_eq!(*log.lock(), vec![json!({"replicas": 3, "partitions": 64})]);
    both.stop().await;
}

#[tokio::test]
async fn a_root_without_its_storage_keeps_bootstrap_values_and_refuses_changes() {
    let vault = start_vault(None).await;
    let local: Arc<dyn ConfigurationStorage> =
        Arc::new(LocalConfigurationStorage::new(Arc::clone(&vault)));
    let mut bootstrap = BootstrapConfig::new(&roots());
    bootstrap
        .set("cluster.partitions", json!(4))
        .expect("valid");
    let manager = ConfigurationManager::new(roots(), vec![local], Some(bootstrap))
        .with_name("node-configuration");
    assert_eq!(manager.name(), "node-configuration");
    bounded(manager.start(&ctx())).await.expect("start");
    assert_eq!(manager.root::<TestCluster>().expect("root").partitions, 4);
    let err = bounded(manager.change("cluster.partitions", json!(5)))
        .await
        .expect_err("no storage");
    assert!(matches!(err, Error::NoStorage { .. }), "{err}");
    assert!(
        vault
            .prefix(b"config/local/value/cluster")
            .await
            .expect("prefix")
            .is_empty(),
        "cluster values never land in the vault"
    );
    bounded(manager.stop()).await.expect("stop");
}
