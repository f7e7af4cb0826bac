//! The physical topology: who is in the cluster right now, and events when that changes.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

/// A member of the physical topology: one launch of one node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterNode {
    /// The node's name (unique in a cluster).
    pub name: String,
    /// The node's stable id (kept in its vault).
    pub id: Uuid,
    /// A new id for every start of the node.
    pub launch_id: Uuid,
    /// Where it listens (TCP messaging and UDP membership).
    pub address: SocketAddr,
    /// Free-form attributes (for example `rest` => the REST address).
    pub metadata: BTreeMap<String, String>,
}

/// A change of the physical topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologyEvent {
    /// A node (launch) joined.
    Appeared(ClusterNode),
    /// A node (launch) left, crashed or was replaced by a newer launch.
    Disappeared(ClusterNode),
}

pub(crate) struct TopologyState {
    local: RwLock<Option<ClusterNode>>,
    /// Remote members by node id.
    members: RwLock<HashMap<Uuid, ClusterNode>>,
    events: broadcast::Sender<TopologyEvent>,
}

/// Read access to the physical topology. Cheap to clone.
#[derive(Clone)]
pub struct TopologyService {
    pub(crate) state: Arc<TopologyState>,
}

impl TopologyService {
    pub(crate) fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            state: Arc::new(TopologyState {
                local: RwLock::new(None),
                members: RwLock::new(HashMap::new()),
                events,
            }),
        }
    }

    /// This node as others see it.
    ///
    /// # Panics
    /// Before the network component started (the local launch is not known yet).
    pub fn local_member(&self) -> ClusterNode {
        self.try_local_member()
            .expect("topology used before the network component started")
    }

    /// This node, or `None` before start.
    pub fn try_local_member(&self) -> Option<ClusterNode> {
        self.state.local.read().clone()
    }

    /// Every member, this node included, sorted by name.
    pub fn members(&self) -> Vec<ClusterNode> {
        let mut all: Vec<ClusterNode> = self.state.members.read().values().cloned().collect();
        if let Some(local) = self.try_local_member() {
            all.push(local);
        }
        all.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        all
    }

    /// A member by name (this node included).
    pub fn member_by_name(&self, name: &str) -> Option<ClusterNode> {
        if let Some(local) = self.try_local_member().filter(|l| l.name == name) {
            return Some(local);
        }
        self.state
            .members
            .read()
            .values()
            .find(|m| m.name == name)
            .cloned()
    }

    /// A member by node id (this node included).
    pub fn member_by_id(&self, id: Uuid) -> Option<ClusterNode> {
        if let Some(local) = self.try_local_member().filter(|l| l.id == id) {
            return Some(local);
        }
        self.state.members.read().get(&id).cloned()
    }

    /// True if this exact launch is a current member.
    pub fn contains(&self, node: &ClusterNode) -> bool {
        self.member_by_id(node.id)
            .is_some_and(|m| m.launch_id == node.launch_id)
    }

    /// Events from now on. A receiver that lags gets `RecvError::Lagged` and should re-read
    /// [`members`](Self::members).
    pub fn subscribe(&self) -> broadcast::Receiver<TopologyEvent> {
        self.state.events.subscribe()
    }

    pub(crate) fn set_local(&self, node: Option<ClusterNode>) {
        *self.state.local.write() = node;
    }

    /// Replace the remote members with `current` and publish the differences: every
    /// disappearance before any appearance.
    pub(crate) fn update(&self, current: Vec<ClusterNode>) -> Vec<TopologyEvent> {
        let mut events = Vec::new();
        {
            let mut members = self.state.members.write();
            let next: HashMap<Uuid, ClusterNode> = current.into_iter().map(|m| (m.id, m)).collect();
            for (id, old) in members.iter() {
                if next.get(id).is_none_or(|n| n.launch_id != old.launch_id) {
                    events.push(TopologyEvent::Disappeared(old.clone()));
                }
            }
            for (id, new) in &next {
                if members.get(id).is_none_or(|o| o.launch_id != new.launch_id) {
                    events.push(TopologyEvent::Appeared(new.clone()));
                }
            }
            *members = next;
            metrics::gauge!("ignite_network_members").set((members.len() + 1) as f64);
        }
        for event in &events {
            match event {
                TopologyEvent::Appeared(n) => {
                    tracing::info!(node = %n.name, node_id = %n.id, launch_id = %n.launch_id, address = %n.address, "node appeared")
                }
                TopologyEvent::Disappeared(n) => {
                    tracing::info!(node = %n.name, node_id = %n.id, launch_id = %n.launch_id, "node disappeared")
                }
            }
            // No receiver is fine.
            let _ = self.state.events.send(event.clone());
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, id: u128, launch: u128) -> ClusterNode {
        ClusterNode {
            name: name.into(),
            id: Uuid::from_u128(id),
            launch_id: Uuid::from_u128(launch),
            address: "127.0.0.1:1".parse().unwrap(),
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn update_publishes_differences_and_a_new_launch_replaces_the_old() {
        let topo = TopologyService::new();
        topo.set_local(Some(node("a", 1, 10)));
        let mut rx = topo.subscribe();
        let ev = topo.update(vec![node("b", 2, 20), node("c", 3, 30)]);
        assert_eq!(ev.len(), 2);
        let names: Vec<_> = topo.members().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["a", "b", "c"]);

        let ev = topo.update(vec![node("b", 2, 21), node("c", 3, 30)]);
        assert_eq!(
            ev,
            vec![
                TopologyEvent::Disappeared(node("b", 2, 20)),
                TopologyEvent::Appeared(node("b", 2, 21))
            ]
        );
        assert!(topo.contains(&node("b", 2, 21)));
        assert!(!topo.contains(&node("b", 2, 20)));
        let first: Vec<_> = (0..2).map(|_| rx.try_recv().unwrap()).collect();
        assert!(first.contains(&TopologyEvent::Appeared(node("b", 2, 20))));
        assert!(first.contains(&TopologyEvent::Appeared(node("c", 3, 30))));
        assert_eq!(
            rx.try_recv().unwrap(),
            TopologyEvent::Disappeared(node("b", 2, 20))
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            TopologyEvent::Appeared(node("b", 2, 21))
        );
    }
}
