//! Cluster membership, the physical topology and typed messaging between nodes.
//!
//! API boundary: [`NetworkManager`] (the `network` component) hands out a
//! [`TopologyService`] (members and `appeared`/`disappeared` events) and a
//! [`MessagingService`] (`send`, `invoke`, handlers per [`Message`] group).
//!
//! Transport: messages travel over TCP, one outgoing multiplexed connection per peer launch
//! (length-delimited frames, postcard envelopes with protocol version, message group and
//! correlation id); membership is SWIM (`foca`) over UDP on the same port (see `membership`
//! for why). Both share one address per node.
//!
//! Invariants:
//! - a member is one launch of a node: a restarted node is a new member with a new launch id,
//!   and a connection opened for one launch never reaches another (the handshake checks it);
//! - bad input (garbage, oversize frames, unknown groups or versions, silent peers) drops
//!   that one connection, never the node;
//! - after stop begins, `send` and `invoke` fail with `Stopping` and pending invokes fail.
pub mod bytes_serde;
mod config;
mod error;
mod manager;
mod membership;
mod messaging;
mod topology;
mod wire;

pub use crate::{
    config::{NetworkConfiguration, DEFAULT_LISTEN},
    error::{Error, Result},
    manager::{NetworkManager, LAUNCH_SEQ_KEY, NODE_ID_KEY},
    messaging::{Message, MessagingService, Reachability},
    topology::{ClusterNode, TopologyEvent, TopologyService},
    wire::{decode_handshake_bytes, decode_stream, PROTOCOL_VERSION},
};

impl configuration::ConfigRoot for NetworkConfiguration {
    const KEY: &'static str = "network";
    const TYPE: configuration::ConfigurationType = configuration::ConfigurationType::Local;

    fn validate(&self) -> std::result::Result<(), (String, String)> {
        self.check()
    }
}
