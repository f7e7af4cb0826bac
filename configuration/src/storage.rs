//! Where configuration lives: the storage trait and the local storage over the vault.
use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;
use vault::{VaultEntry, VaultManager};

use crate::{
    error::{Error, Result},
    root::ConfigurationType,
};

/// The contents of a storage: flat dotted keys (`network.seeds`) to JSON values, and a
/// version for compare-and-set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StorageSnapshot {
    /// Every stored value, by dotted key. Only values somebody set: defaults are not stored.
    pub values: BTreeMap<String, Value>,
    /// Moves forward with every write (never backwards).
    pub version: u64,
}

/// A place configuration roots of one [`ConfigurationType`] are stored.
#[async_trait]
pub trait ConfigurationStorage: Send + Sync + 'static {
    /// The type of the roots this storage holds.
    fn storage_type(&self) -> ConfigurationType;

    /// Every stored value and the current version.
    async fn read_all(&self) -> Result<StorageSnapshot>;

    /// Atomically applies `changes` (`None` = remove) if the stored version is still
    /// `expected_version`. `Ok(false)` when it moved (the manager re-reads and retries);
    /// durable when it returns `Ok(true)`. The manager re-reads after a successful write.
    async fn write(
        &self,
        changes: BTreeMap<String, Option<Value>>,
        expected_version: u64,
    ) -> Result<bool>;

    /// Changes made elsewhere (other nodes for the distributed storage), as full snapshots,
    /// for the manager to apply and notify. A storage nobody else writes returns a receiver
    /// that never yields.
    fn subscribe(&self) -> mpsc::UnboundedReceiver<StorageSnapshot>;

    /// True once anything was ever written.
    async fn bootstrapped(&self) -> Result<bool>;
}

/// Vault keys of stored values: `config/local/value/<dotted key>`.
const VALUE_PREFIX: &[u8] = b"config/local/value/";
/// Vault key of the version (8 bytes, big endian).
const VERSION_KEY: &[u8] = b"config/local/version";

/// The storage of [`ConfigurationType::Local`] roots, in the vault.
///
/// The vault is node-local and this storage is its only writer for these keys, so a mutex
/// makes read-version-then-write a compare-and-set. The first write carries the vault's
/// bootstrap marker in the same atomic batch.
pub struct LocalConfigurationStorage {
    vault: Arc<VaultManager>,
    lock: tokio::sync::Mutex<()>,
    /// Kept so the receivers handed out never close: nothing else writes local configuration.
    subscribers: parking_lot::Mutex<Vec<mpsc::UnboundedSender<StorageSnapshot>>>,
}

impl LocalConfigurationStorage {
    /// A storage over `vault`; no I/O until used (the vault must be started by then).
    pub fn new(vault: Arc<VaultManager>) -> Self {
        Self {
            vault,
            lock: tokio::sync::Mutex::new(()),
            subscribers: parking_lot::Mutex::new(Vec::new()),
        }
    }

    async fn version(&self) -> Result<u64> {
        match self.vault.get(VERSION_KEY).await? {
            None => Ok(0),
            Some(bytes) => {
                let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| Error::Corrupt {
                    key: String::from_utf8_lossy(VERSION_KEY).into_owned(),
                    reason: format!("expected 8 bytes, found {}", bytes.len()),
                })?;
                Ok(u64::from_be_bytes(arr))
            }
        }
    }
}

fn value_key(key: &str) -> Vec<u8> {
    let mut out = VALUE_PREFIX.to_vec();
    out.extend_from_slice(key.as_bytes());
    out
}

#[async_trait]
impl ConfigurationStorage for LocalConfigurationStorage {
    fn storage_type(&self) -> ConfigurationType {
        ConfigurationType::Local
    }

    async fn read_all(&self) -> Result<StorageSnapshot> {
        let _lock = self.lock.lock().await;
        let version = self.version().await?;
        let mut values = BTreeMap::new();
        for (raw_key, raw_value) in self.vault.prefix(VALUE_PREFIX).await? {
            let key = raw_key
                .strip_prefix(VALUE_PREFIX)
                .and_then(|k| std::str::from_utf8(k).ok())
                .ok_or_else(|| Error::Corrupt {
                    key: String::from_utf8_lossy(&raw_key).into_owned(),
                    reason: "key is not utf-8".to_owned(),
                })?
                .to_owned();
            let value = serde_json::from_slice(&raw_value).map_err(|e| Error::Corrupt {
                key: key.clone(),
                reason: format!("value is not json: {e}"),
            })?;
            values.insert(key, value);
        }
        Ok(StorageSnapshot { values, version })
    }

    async fn write(
        &self,
        changes: BTreeMap<String, Option<Value>>,
        expected_version: u64,
    ) -> Result<bool> {
        let _lock = self.lock.lock().await;
        let version = self.version().await?;
        if version != expected_version {
            return Ok(false);
        }
        let mut entries = Vec::with_capacity(changes.len() + 2);
        for (key, value) in changes {
            let value = match value {
                Some(v) => {
                    Some(serde_json::to_vec(&v).map_err(|e| Error::invalid(&key, e.to_string()))?)
                }
                None => None,
            };
            entries.push(VaultEntry {
                key: value_key(&key),
                value,
            });
        }
        entries.push(VaultEntry {
            key: VERSION_KEY.to_vec(),
            value: Some((version + 1).to_be_bytes().to_vec()),
        });
        entries.push(VaultEntry {
            key: VaultManager::BOOTSTRAP_MARKER.to_vec(),
            value: Some(b"local-configuration".to_vec()),
        });
        self.vault.put_all(entries).await?;
        tracing::debug!(version = version + 1, "local configuration written");
        Ok(true)
    }

    fn subscribe(&self) -> mpsc::UnboundedReceiver<StorageSnapshot> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.lock().push(tx);
        rx
    }

    async fn bootstrapped(&self) -> Result<bool> {
        Ok(self.vault.bootstrapped().await?)
    }
}
