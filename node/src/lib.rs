//! The node: wires every manager by constructor injection and returns the `IgniteImpl` facade;
//! also the REST edge and the `ignite` CLI.
//!
//! API boundary: [`IgniteImpl`], [`NodeOptions`], the configuration roots owned by the node
//! ([`NodeConfiguration`], [`RestConfiguration`]), [`cli`] for the binary.
//!
//! Invariant: no business logic lives here. Managers are built in startup-graph order, each
//! given its dependencies; REST handlers and CLI commands only call `IgniteImpl`.
pub mod cli;
mod config;
mod error;
mod ignite;
mod rest;
pub mod telemetry;

pub use crate::{
    config::{ClusterConfiguration, NodeConfiguration, RestConfiguration},
    error::{Error, Result},
    ignite::{IgniteImpl, NodeInfo, NodeOptions},
};
pub use metastorage::{ClusterState, InitRequest};
