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
    /// Also build a snapshot once the log entries a group holds in memory pass this many
    /// bytes (the write-ahead log storage keeps a group's live entries in memory; the entry
    /// count above does not bound their size).
    pub snapshot_log_bytes: u64,
    /// Most entries in one append-entries request.
    pub max_payload_entries: u64,
    /// How long sending one snapshot chunk may take.
    pub install_snapshot_timeout_ms: u64,
    /// Deadline of a client write, including forwarding to the leader.
    pub write_timeout_ms: u64,
    /// Lower bound of the election timeout of data groups (table partitions, started with
    /// [`crate::RaftManager::start_data_group`]). A node runs hundreds of them, so they
    /// heartbeat less often than the system groups (MetaStorage) timed by the fields above.
    pub data_election_timeout_min_ms: u64,
    /// Upper bound of the election timeout of data groups.
    pub data_election_timeout_max_ms: u64,
    /// How often the leader of a data group sends heartbeats. Each is a message per
    /// follower, and idle nodes spend most of their CPU on them; a follower that saw a
    /// leader waits its lease (`data_election_timeout_max_ms`) plus an election timeout
    /// before it stands, so a second between heartbeats leaves over four of slack.
    pub data_heartbeat_interval_ms: u64,
}

/// Which timing a group runs with: system groups (MetaStorage) fail over fast, data groups
/// (one per partition replica, hundreds per node) keep idle traffic low.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupClass {
    /// `election_timeout_*_ms` and `heartbeat_interval_ms`.
    System,
    /// `data_election_timeout_*_ms` and `data_heartbeat_interval_ms`.
    Data,
}

impl Default for RaftConfiguration {
    fn default() -> Self {
        Self {
            // openraft 0.9 also keeps a leader lease of `election_timeout_max_ms`: a follower
            // that saw a leader calls an election after lease + a random timeout in
            // [min, max], so a silent leader is replaced after 600-800 ms (a leader whose
            // process is gone is replaced at once: see `failover.rs`)
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            heartbeat_interval_ms: 50,
            snapshot_logs_since_last: 5_000,
            max_in_snapshot_log_to_keep: 1_000,
            snapshot_log_bytes: 64 << 20,
            max_payload_entries: 300,
            install_snapshot_timeout_ms: 5_000,
            write_timeout_ms: 10_000,
            data_election_timeout_min_ms: 1_500,
            data_election_timeout_max_ms: 3_000,
            data_heartbeat_interval_ms: 1_000,
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
            ("snapshot_log_bytes", self.snapshot_log_bytes),
            ("max_payload_entries", self.max_payload_entries),
            (
                "install_snapshot_timeout_ms",
                self.install_snapshot_timeout_ms,
            ),
            ("write_timeout_ms", self.write_timeout_ms),
            (
                "data_election_timeout_min_ms",
                self.data_election_timeout_min_ms,
            ),
            (
                "data_heartbeat_interval_ms",
                self.data_heartbeat_interval_ms,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        for class in [GroupClass::System, GroupClass::Data] {
            let (min, max, heartbeat) = self.timing(class);
            let prefix = match class {
                GroupClass::System => "",
                GroupClass::Data => "data_",
            };
            if max <= min {
                return Err((
                    format!("{prefix}election_timeout_max_ms"),
                    format!("must be greater than {prefix}election_timeout_min_ms"),
                ));
            }
            if heartbeat >= min {
                return Err((
                    format!("{prefix}heartbeat_interval_ms"),
                    format!("must be less than {prefix}election_timeout_min_ms"),
                ));
            }
        }
        Ok(())
    }

    /// (election timeout min, max, heartbeat interval) of `class`, in milliseconds.
    pub fn timing(&self, class: GroupClass) -> (u64, u64, u64) {
        match class {
            GroupClass::System => (
                self.election_timeout_min_ms,
                self.election_timeout_max_ms,
                self.heartbeat_interval_ms,
            ),
            GroupClass::Data => (
                self.data_election_timeout_min_ms,
                self.data_election_timeout_max_ms,
                self.data_heartbeat_interval_ms,
            ),
        }
    }

    /// The write deadline.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// openraft's configuration for group `group`.
    pub(crate) fn to_openraft(&self, group: &str, class: GroupClass) -> Result<openraft::Config> {
        self.check()
            .map_err(|(key, reason)| Error::Config(format!("key raft.{key}: {reason}")))?;
        let (election_timeout_min, election_timeout_max, heartbeat_interval) = self.timing(class);
        let config = openraft::Config {
            cluster_name: group.to_owned(),
            election_timeout_min,
            election_timeout_max,
            heartbeat_interval,
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
        let raft = config.to_openraft("g", GroupClass::System).unwrap();
        assert_eq!(raft.heartbeat_interval, 50);
        assert!(raft.election_timeout_min >= 4 * raft.heartbeat_interval);
        assert_eq!(raft.cluster_name, "g");
        let data = config.to_openraft("p", GroupClass::Data).unwrap();
        assert_eq!(data.heartbeat_interval, 1_000);
        // a follower stands after the lease (the max timeout) plus at least the min
        assert!(
            data.election_timeout_max + data.election_timeout_min >= 4 * data.heartbeat_interval
        );
        assert_eq!(
            (data.election_timeout_min, data.election_timeout_max),
            (1_500, 3_000)
        );
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
                json!({"data_heartbeat_interval_ms": 2000}),
                "key raft.data_heartbeat_interval_ms: must be less than data_election_timeout_min_ms",
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
