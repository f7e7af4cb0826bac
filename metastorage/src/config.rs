//! The `metastorage` configuration root (local to each node): compaction retention and the
//! deadlines of the manager's operations.
use std::time::Duration;

use configuration::{ConfigRoot, ConfigurationType};
use serde::{Deserialize, Serialize};

/// Local configuration of the MetaStorage component, under the key `metastorage`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetaStorageConfiguration {
    /// Revisions of history the leader keeps: it compacts below `revision - retention`
    /// (never past what this node's watches delivered). 0 turns automatic compaction off.
    pub compaction_retention_revisions: u64,
    /// How often the leader checks whether to compact.
    pub compaction_interval_ms: u64,
    /// Deadline of one client operation, retries included.
    pub operation_timeout_ms: u64,
    /// Deadline of `start`: find a leader and catch up with it.
    pub recovery_timeout_ms: u64,
    /// Deadline of delivering the cluster state to one node during init.
    pub init_timeout_ms: u64,
    /// How often the leader looks for topology members that are not in the group yet.
    pub learner_check_interval_ms: u64,
    /// Where the etcd v3 gRPC endpoint listens (`host:port`, port 0 picks one); `None`
    /// (the default) serves no endpoint.
    pub etcd_listen: Option<String>,
}

impl Default for MetaStorageConfiguration {
    fn default() -> Self {
        Self {
            compaction_retention_revisions: 0,
            compaction_interval_ms: 10_000,
            operation_timeout_ms: 30_000,
            recovery_timeout_ms: 60_000,
            init_timeout_ms: 10_000,
            learner_check_interval_ms: 2_000,
            etcd_listen: None,
        }
    }
}

impl MetaStorageConfiguration {
    /// Checks every value: `Err((key relative to the root, reason))`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let positive = [
            ("compaction_interval_ms", self.compaction_interval_ms),
            ("operation_timeout_ms", self.operation_timeout_ms),
            ("recovery_timeout_ms", self.recovery_timeout_ms),
            ("init_timeout_ms", self.init_timeout_ms),
            ("learner_check_interval_ms", self.learner_check_interval_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        if let Some(listen) = &self.etcd_listen {
            if let Err(e) = listen.parse::<std::net::SocketAddr>() {
                return Err((
                    "etcd_listen".into(),
                    format!("{listen} is not a socket address like 127.0.0.1:2379: {e}"),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn operation_timeout(&self) -> Duration {
        Duration::from_millis(self.operation_timeout_ms)
    }

    pub(crate) fn recovery_timeout(&self) -> Duration {
        Duration::from_millis(self.recovery_timeout_ms)
    }

    pub(crate) fn init_timeout(&self) -> Duration {
        Duration::from_millis(self.init_timeout_ms)
    }
}

impl ConfigRoot for MetaStorageConfiguration {
    const KEY: &'static str = "metastorage";
    const TYPE: ConfigurationType = ConfigurationType::Local;

    fn validate(&self) -> Result<(), (String, String)> {
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use configuration::RootKey;
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_values_name_the_key() {
        assert_eq!(MetaStorageConfiguration::default().check(), Ok(()));
        let key = RootKey::of::<MetaStorageConfiguration>();
        let err = key
            .validate(json!({"operation_timeout_ms": 0}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "key metastorage.operation_timeout_ms: must be greater than 0"
        );
        let full = key
            .validate(json!({"compaction_retention_revisions": 5}))
            .unwrap();
        assert_eq!(full["compaction_retention_revisions"], json!(5));
        assert_eq!(full["compaction_interval_ms"], json!(10_000));
        assert_eq!(full["etcd_listen"], json!(null));
    }

    #[test]
    fn etcd_listen_must_be_a_socket_address() {
        let key = RootKey::of::<MetaStorageConfiguration>();
        let ok = key.validate(json!({"etcd_listen": "127.0.0.1:0"})).unwrap();
        assert_eq!(ok["etcd_listen"], json!("127.0.0.1:0"));
        let err = key
            .validate(json!({"etcd_listen": "localhost"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("key metastorage.etcd_listen: localhost is not a socket address"),
            "{err}"
        );
    }
}
