//! [`DistributedConfigurationStorage`]: cluster-wide configuration roots kept in MetaStorage.
//!
//! Values live under [`CONFIG_PREFIX`]`value/<dotted key>` as JSON bytes; the version is the
//! MetaStorage revision of the last change, the revision of [`CONFIG_VERSION_KEY`] (which
//! every change rewrites). A change is one `invoke` conditioned on that revision, so two
//! nodes changing configuration at once are compare-and-set. A prefix watch turns every
//! change, made on any node, into a snapshot for the configuration manager of every node.
use std::{
    collections::BTreeMap,
    sync::{Arc, Weak},
};

use async_trait::async_trait;
use configuration::{ConfigurationStorage, ConfigurationType, StorageSnapshot};
use lifecycle::BoxError;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    command::{CompareOp, Condition, Operation},
    error::Error,
    manager::MetaStorageManager,
    watch::{KeyMatcher, WatchEvent, WatchId},
};

/// Every key of the distributed configuration starts with this prefix.
pub const CONFIG_PREFIX: &[u8] = b"config/dist/";
/// Values: `config/dist/value/<dotted key>` -> JSON.
const VALUE_PREFIX: &[u8] = b"config/dist/value/";
/// Rewritten by every change: its revision is the storage version.
pub const CONFIG_VERSION_KEY: &[u8] = b"config/dist/version";

type Subscribers = Arc<Mutex<Vec<mpsc::UnboundedSender<StorageSnapshot>>>>;

/// The [`ConfigurationType::Distributed`] storage over a [`MetaStorageManager`].
pub struct DistributedConfigurationStorage {
    ms: Arc<MetaStorageManager>,
    subscribers: Subscribers,
    watch: std::result::Result<WatchId, String>,
}

fn storage_error(e: impl std::fmt::Display) -> configuration::Error {
    configuration::Error::Storage {
        storage_type: ConfigurationType::Distributed,
        reason: e.to_string(),
    }
}

fn value_key(key: &str) -> Vec<u8> {
    let mut out = VALUE_PREFIX.to_vec();
    out.extend_from_slice(key.as_bytes());
    out
}

/// The stored configuration as of `revision`, from this node's copy.
fn snapshot_at(ms: &MetaStorageManager, revision: u64) -> configuration::Result<StorageSnapshot> {
    let mut values = BTreeMap::new();
    for entry in ms
        .prefix_at(VALUE_PREFIX, revision)
        .map_err(storage_error)?
    {
        let Some(raw) = entry.live_value() else {
            continue;
        };
        let key = entry
            .key
            .strip_prefix(VALUE_PREFIX)
            .and_then(|k| std::str::from_utf8(k).ok())
            .ok_or_else(|| configuration::Error::Corrupt {
                key: String::from_utf8_lossy(&entry.key).into_owned(),
                reason: "key is not utf-8".into(),
            })?
            .to_owned();
        let value = serde_json::from_slice(raw).map_err(|e| configuration::Error::Corrupt {
            key: key.clone(),
            reason: format!("value is not json: {e}"),
        })?;
        values.insert(key, value);
    }
    let version = ms
        .get_at(CONFIG_VERSION_KEY, revision)
        .map_err(storage_error)?
        .map_or(0, |e| e.revision);
    Ok(StorageSnapshot { values, version })
}

impl DistributedConfigurationStorage {
    /// A storage over `ms`. Registers its prefix watch with `ms` (no I/O), so it must be
    /// built before the node deploys watches; built later, it still reads and writes but
    /// does not hear changes made elsewhere.
    pub fn new(ms: Arc<MetaStorageManager>) -> Self {
        let subscribers: Subscribers = Arc::new(Mutex::new(Vec::new()));
        let weak: Weak<MetaStorageManager> = Arc::downgrade(&ms);
        let subs = Arc::clone(&subscribers);
        let watch = ms
            .register_watch(
                KeyMatcher::Prefix(CONFIG_PREFIX.to_vec()),
                move |event: WatchEvent| {
                    let weak = weak.clone();
                    let subs = Arc::clone(&subs);
                    async move {
                        let Some(ms) = weak.upgrade() else {
                            return Ok(());
                        };
                        let snapshot = snapshot_at(&ms, event.revision)
                            .map_err(|e| BoxError::from(e.to_string()))?;
                        tracing::debug!(
                            revision = event.revision,
                            version = snapshot.version,
                            "distributed configuration changed"
                        );
                        subs.lock().retain(|tx| tx.send(snapshot.clone()).is_ok());
                        Ok::<(), BoxError>(())
                    }
                },
            )
            .map_err(|e| e.to_string());
        if let Err(e) = &watch {
            tracing::warn!(error = %e, "distributed configuration will not hear changes made elsewhere");
        }
        Self {
            ms,
            subscribers,
            watch,
        }
    }

    /// The MetaStorage watch that feeds [`subscribe`](ConfigurationStorage::subscribe), or
    /// why it could not be registered.
    pub fn watch_id(&self) -> std::result::Result<WatchId, String> {
        self.watch.clone()
    }
}

impl Drop for DistributedConfigurationStorage {
    fn drop(&mut self) {
        if let Ok(id) = self.watch {
            self.ms.unregister_watch(id);
        }
    }
}

#[async_trait]
impl ConfigurationStorage for DistributedConfigurationStorage {
    fn storage_type(&self) -> ConfigurationType {
        ConfigurationType::Distributed
    }

    async fn read_all(&self) -> configuration::Result<StorageSnapshot> {
        let revision = self
            .ms
            .linearizable_revision()
            .await
            .map_err(storage_error)?;
        snapshot_at(&self.ms, revision)
    }

    /// An empty change set writes no value and succeeds whatever the version (applying
    /// nothing commutes with every other change); it marks the storage bootstrapped.
    async fn write(
        &self,
        changes: BTreeMap<String, Option<Value>>,
        expected_version: u64,
    ) -> configuration::Result<bool> {
        let version_op = Operation::put(CONFIG_VERSION_KEY, Vec::new());
        if changes.is_empty() {
            self.ms
                .invoke(
                    Condition::revision(CONFIG_VERSION_KEY, CompareOp::Eq, 0),
                    vec![version_op],
                    vec![],
                )
                .await
                .map_err(storage_error)?;
            return Ok(true);
        }
        let mut ops = Vec::with_capacity(changes.len() + 1);
        for (key, value) in changes {
            ops.push(match value {
                Some(v) => {
                    let bytes =
                        serde_json::to_vec(&v).map_err(|e| configuration::Error::InvalidValue {
                            origin: None,
                            key: key.clone(),
                            reason: e.to_string(),
                        })?;
                    Operation::put(value_key(&key), bytes)
                }
                None => Operation::remove(value_key(&key)),
            });
        }
        ops.push(version_op);
        let written = self
            .ms
            .invoke(
                Condition::revision(CONFIG_VERSION_KEY, CompareOp::Eq, expected_version),
                ops,
                vec![],
            )
            .await
            .map_err(storage_error)?;
        tracing::debug!(expected_version, written, "distributed configuration write");
        Ok(written)
    }

    fn subscribe(&self) -> mpsc::UnboundedReceiver<StorageSnapshot> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.lock().push(tx);
        rx
    }

    async fn bootstrapped(&self) -> configuration::Result<bool> {
        let entry = self
            .ms
            .get(CONFIG_VERSION_KEY)
            .await
            .map_err(storage_error)?;
        Ok(entry.is_some_and(|e| !e.tombstone))
    }
}

impl From<Error> for configuration::Error {
    fn from(e: Error) -> Self {
        storage_error(e)
    }
}
