//! Configuration roots owned by the node itself: `[node]` and `[rest]`.
use std::path::PathBuf;

use configuration::{ConfigRoot, ConfigurationType};
use serde::{Deserialize, Serialize};

/// `[node]`: identity and process-level settings.
///
/// `data_dir` locates the vault, so it is always taken from the bootstrap sources (file,
/// environment, `--data-dir`); `name` is kept in the vault at first start and wins afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfiguration {
    /// The node's name, unique in the cluster.
    pub name: String,
    /// Where the node keeps its data (the vault and, later, Raft logs and partitions).
    pub data_dir: PathBuf,
    /// How long each component may take to stop before it is reported and skipped.
    pub stop_timeout_ms: u64,
}

impl Default for NodeConfiguration {
    fn default() -> Self {
        Self {
            name: "ignite-node".into(),
            data_dir: PathBuf::from("ignite-data"),
            stop_timeout_ms: 10_000,
        }
    }
}

impl ConfigRoot for NodeConfiguration {
    const KEY: &'static str = "node";
    const TYPE: ConfigurationType = ConfigurationType::Local;

    fn validate(&self) -> Result<(), (String, String)> {
        if self.name.is_empty() {
            return Err(("name".into(), "must not be empty".into()));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err((
                "name".into(),
                "may only contain ASCII letters, digits, '-', '_' and '.'".into(),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(("data_dir".into(), "must not be empty".into()));
        }
        if !(10..=600_000).contains(&self.stop_timeout_ms) {
            return Err((
                "stop_timeout_ms".into(),
                "must be between 10 and 600000".into(),
            ));
        }
        Ok(())
    }
}

/// `[rest]`: the management REST API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestConfiguration {
    /// Address the REST API binds (`host:port`; port 0 picks a free port).
    pub listen: String,
}

impl Default for RestConfiguration {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:10300".into(),
        }
    }
}

impl ConfigRoot for RestConfiguration {
    const KEY: &'static str = "rest";
    const TYPE: ConfigurationType = ConfigurationType::Local;

    fn validate(&self) -> Result<(), (String, String)> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map(|_| ())
            .map_err(|e| ("listen".into(), format!("not a socket address ({e})")))
    }
}

/// `[cluster]`: cluster-wide settings, stored in MetaStorage and the same on every node
/// (`ignite cluster config show|update`): the defaults a `table create` without
/// `--partitions`/`--replicas` gets. (The baseline's own root is `[baseline]`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfiguration {
    /// Partitions of a new table when the request names none.
    pub default_partitions: u32,
    /// Replicas of each partition when the request names none.
    pub default_replicas: u32,
}

impl Default for ClusterConfiguration {
    fn default() -> Self {
        Self {
            default_partitions: 25,
            default_replicas: 1,
        }
    }
}

impl ConfigRoot for ClusterConfiguration {
    const KEY: &'static str = "cluster";
    const TYPE: ConfigurationType = ConfigurationType::Distributed;

    fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=65_536).contains(&self.default_partitions) {
            return Err((
                "default_partitions".into(),
                "must be between 1 and 65536".into(),
            ));
        }
        if !(1..=16).contains(&self.default_replicas) {
            return Err(("default_replicas".into(), "must be between 1 and 16".into()));
        }
        Ok(())
    }
}
