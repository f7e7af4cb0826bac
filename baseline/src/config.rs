//! The `baseline` configuration root (cluster-wide, in MetaStorage).
use std::time::Duration;

use configuration::{ConfigRoot, ConfigurationType};
use serde::{Deserialize, Serialize};

/// Cluster configuration of the baseline, under the key `baseline`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineConfiguration {
    /// Quiet period: the leader sets the baseline to the logical topology once the logical
    /// topology has not changed for this long. 0 turns automatic adjustment off (manual only).
    pub auto_adjust_ms: u64,
}

impl Default for BaselineConfiguration {
    fn default() -> Self {
        Self {
            auto_adjust_ms: 5_000,
        }
    }
}

impl BaselineConfiguration {
    /// The quiet period, `None` when adjustment is manual only.
    pub fn quiet_period(&self) -> Option<Duration> {
        (self.auto_adjust_ms > 0).then(|| Duration::from_millis(self.auto_adjust_ms))
    }
}

impl ConfigRoot for BaselineConfiguration {
    const KEY: &'static str = "baseline";
    const TYPE: ConfigurationType = ConfigurationType::Distributed;
}

#[cfg(test)]
mod tests {
    use configuration::RootKey;

    use super::*;

    #[test]
    fn zero_means_manual_and_unknown_keys_are_refused() {
        assert_eq!(
            BaselineConfiguration::default().quiet_period(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            BaselineConfiguration { auto_adjust_ms: 0 }.quiet_period(),
            None
        );
        let key = RootKey::of::<BaselineConfiguration>();
        assert!(key.validate(serde_json::json!({"auto_adjust": 1})).is_err());
        let full = key.validate(serde_json::json!({})).unwrap();
        assert_eq!(full["auto_adjust_ms"], serde_json::json!(5_000));
    }
}
