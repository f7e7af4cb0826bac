//! Node states and run levels (DESIGN sections 4 and 5).
use std::fmt;

use serde::{Deserialize, Serialize};

/// The externally visible state of a node, published on a watch channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Components are starting.
    Starting,
    /// Local components are up; the node waits for `cluster init`.
    Zombie,
    /// MetaStorage joined; the node catches up with the cluster.
    Recovering,
    /// Every component is up; user operations are served.
    Started,
    /// Stop has begun; new work is refused.
    Stopping,
    /// Every component has stopped.
    Stopped,
}

impl NodeState {
    /// Every state, in lifecycle order.
    pub const ALL: [NodeState; 6] = [
        NodeState::Starting,
        NodeState::Zombie,
        NodeState::Recovering,
        NodeState::Started,
        NodeState::Stopping,
        NodeState::Stopped,
    ];

    /// The name used on the wire and in metrics (`STARTED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Starting => "STARTING",
            NodeState::Zombie => "ZOMBIE",
            NodeState::Recovering => "RECOVERING",
            NodeState::Started => "STARTED",
            NodeState::Stopping => "STOPPING",
            NodeState::Stopped => "STOPPED",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Run levels order the components (DESIGN section 5). A component is registered with the
/// level it belongs to; moving a node to a level runs every component at or below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunLevel {
    /// Components up to `raft`: the node is in the physical topology and accepts init.
    Zombie,
    /// MetaStorage is up.
    Metastorage,
    /// Every component, tables included.
    Ready,
}

impl RunLevel {
    /// The name used in the CLI and REST (`zombie`, `metastorage`, `ready`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunLevel::Zombie => "zombie",
            RunLevel::Metastorage => "metastorage",
            RunLevel::Ready => "ready",
        }
    }
}

impl fmt::Display for RunLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
