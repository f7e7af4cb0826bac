//! The `network` configuration root (local to each node).
use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

/// Default listen address (TCP for messaging, UDP for SWIM, same port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3344";

/// Local configuration of the network component, under the key `network`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfiguration {
    /// `host:port` to listen on (TCP and UDP); port 0 lets the OS pick one.
    pub listen: String,
    /// `host:port` of other nodes to join through.
    pub seeds: Vec<String>,
    /// Largest frame accepted or sent, in bytes.
    pub max_frame_bytes: u64,
    /// How long a TCP connect may take.
    pub connect_timeout_ms: u64,
    /// How long a peer may take to complete the handshake after connecting.
    pub handshake_timeout_ms: u64,
    /// An outgoing connection with no traffic for this long is closed (reopened on demand).
    pub idle_timeout_ms: u64,
    /// A crashed node is declared gone within this bound.
    pub failure_detection_ms: u64,
    /// How often membership updates are gossiped.
    pub gossip_interval_ms: u64,
    /// How often a node with no members (re)announces itself to the seeds.
    pub announce_interval_ms: u64,
}

impl Default for NetworkConfiguration {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            seeds: Vec::new(),
            max_frame_bytes: 16 * 1024 * 1024,
            connect_timeout_ms: 3_000,
            handshake_timeout_ms: 3_000,
            idle_timeout_ms: 600_000,
            failure_detection_ms: 3_000,
            gossip_interval_ms: 200,
            announce_interval_ms: 1_000,
        }
    }
}

impl NetworkConfiguration {
    /// Check every value: `Err((key relative to the root, reason))`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: String| Err((key.to_owned(), reason));
        if let Err(e) = self.listen.parse::<SocketAddr>() {
            return bad(
                "listen",
                format!("{:?} is not an ip:port address: {e}", self.listen),
            );
        }
        for seed in &self.seeds {
            let ok = seed
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return bad("seeds", format!("{seed:?} is not a host:port address"));
            }
        }
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("gossip_interval_ms", self.gossip_interval_ms),
            ("announce_interval_ms", self.announce_interval_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return bad(key, "must be greater than 0".to_owned());
            }
        }
        if self.max_frame_bytes > u64::from(u32::MAX) {
            return bad("max_frame_bytes", "must fit in 32 bits".to_owned());
        }
        if self.failure_detection_ms < 300 {
            return bad("failure_detection_ms", "must be at least 300".to_owned());
        }
        Ok(())
    }

    pub(crate) fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|e| format!("network.listen: {e}"))
    }

    pub(crate) fn max_frame(&self) -> usize {
        usize::try_from(self.max_frame_bytes).unwrap_or(usize::MAX)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = NetworkConfiguration::default();
        assert!(c.check().is_ok());
        assert_eq!(c.max_frame_bytes, 16 * 1024 * 1024);
        assert_eq!(c.failure_detection_ms, 3_000);
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: Vec<(NetworkConfiguration, &str)> = vec![
            (
                NetworkConfiguration {
                    listen: "nope".into(),
                    ..Default::default()
                },
                "listen",
            ),
            (
                NetworkConfiguration {
                    seeds: vec!["host".into()],
                    ..Default::default()
                },
                "seeds",
            ),
            (
                NetworkConfiguration {
                    max_frame_bytes: 0,
                    ..Default::default()
                },
                "max_frame_bytes",
            ),
            (
                NetworkConfiguration {
                    failure_detection_ms: 10,
                    ..Default::default()
                },
                "failure_detection_ms",
            ),
        ];
        for (config, key) in cases {
            let (got, reason) = config.check().unwrap_err();
            assert_eq!(got, key, "{reason}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            serde_json::from_str::<NetworkConfiguration>(r#"{"listen":"127.0.0.1:0","bogus":1}"#)
                .unwrap_err();
        assert!(err.to_string().contains("bogus"));
    }
}
