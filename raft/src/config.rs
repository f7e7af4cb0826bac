//! The `raft` configuration root (local to each node): timeouts and snapshot policy that
//! every group started on the node uses.
use std::time::Duration;

use configuration::{ConfigRoot, ConfigurationType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Local configuration of the raft component, under the key `raft`. Read when a group
/// starts: a change reaches groups started after it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfiguration {
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// How often a leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the last snapshot (for slow followers).
    pub max_in_snapshot_log_to_keep: u64,
    /// Most entries in one append-entries request.
    pub max_payload_entries: u64,
    /// How long sending one snapshot chunk may take.
    pub install_snapshot_timeout_ms: u64,
    /// Deadline of a client write, including forwarding to the leader.
    pub write_timeout_ms: u64,
}

impl Default for RaftConfiguration {
    fn default() -> Self {
        Self {
            // openraft 0.9 also keeps a leader lease of `election_timeout_max_ms`: a follower
            // that saw a leader calls an election after lease + a random timeout in
            // [min, max], so a dead leader is replaced after 600-800 ms of silence
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            heartbeat_interval_ms: 50,
            snapshot_logs_since_last: 5_000,
            max_in_snapshot_log_to_keep: 1_000,
            max_payload_entries: 300,
            install_snapshot_timeout_ms: 5_000,
            write_timeout_ms: 10_000,
        }
    }
}

impl RaftConfiguration {
    /// Checks every value: `Err((key relative to the root, reason))`.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        let positive = [
            ("election_timeout_min_ms", self.election_timeout_min_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("snapshot_logs_since_last", self.snapshot_logs_since_last),
            ("max_payload_entries", self.max_payload_entries),
            (
                "install_snapshot_timeout_ms",
                self.install_snapshot_timeout_ms,
            ),
            ("write_timeout_ms", self.write_timeout_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err((
                "election_timeout_max_ms".into(),
                "must be greater than election_timeout_min_ms".into(),
            ));
        }
        if self.heartbeat_interval_ms >= self.election_timeout_min_ms {
            return Err((
                "heartbeat_interval_ms".into(),
                "must be less than election_timeout_min_ms".into(),
            ));
        }
        Ok(())
    }

    /// The write deadline.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// openraft's configuration for group `group`.
    pub(crate) fn to_openraft(&self, group: &str) -> Result<openraft::Config> {
        self.check()
            .map_err(|(key, reason)| Error::Config(format!("key raft.{key}: {reason}")))?;
        let config = openraft::Config {
            cluster_name: group.to_owned(),
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            heartbeat_interval: self.heartbeat_interval_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            // a lagging learner is still a learner, not an error
            replication_lag_threshold: self.snapshot_logs_since_last.max(1),
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| Error::Config(format!("group {group}: {e}")))
    }
}

impl ConfigRoot for RaftConfiguration {
    const KEY: &'static str = "raft";
    const TYPE: ConfigurationType = ConfigurationType::Local;

    fn validate(&self) -> std::result::Result<(), (String, String)> {
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use configuration::RootKey;
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_are_valid_and_convert() {
        let config = RaftConfiguration::default();
        assert_eq!(config.check(), Ok(()));
        let raft = config.to_openraft("g").unwrap();
        assert_eq!(raft.heartbeat_interval, 50);
        assert!(raft.election_timeout_min >= 4 * raft.heartbeat_interval);
        assert_eq!(raft.cluster_name, "g");
    }

    #[test]
    fn bad_values_name_the_key() {
        let key = RootKey::of::<RaftConfiguration>();
        let cases = [
            (
                json!({"election_timeout_min_ms": 3000, "election_timeout_max_ms": 2000}),
                "key raft.election_timeout_max_ms: must be greater than election_timeout_min_ms",
            ),
            (
                json!({"heartbeat_interval_ms": 1000}),
                "key raft.heartbeat_interval_ms: must be less than election_timeout_min_ms",
            ),
            (
                json!({"max_payload_entries": 0}),
                "key raft.max_payload_entries: must be greater than 0",
            ),
        ];
        for (value, message) in cases {
            assert_eq!(key.validate(value).unwrap_err().to_string(), message);
        }
    }
}
