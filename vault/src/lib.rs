//! Node-local durable key-value store; the first component a node starts.
//!
//! API boundary: [`VaultManager`] (the component, async, guarded by a stop guard) and the
//! [`VaultStorage`] trait (sync storage swap point) with two implementations,
//! [`SledVaultStorage`] (on disk) and [`MemoryVaultStorage`] (tests, embedding). The
//! [`testing`] module holds the conformance suite every implementation passes. [`redo`]
//! writes several sled trees all or nothing without sled's process-wide transaction lock
//! (the write-behind stores above use it).
//!
//! Invariants:
//! - the vault knows nothing of the network, Raft or MetaStorage;
//! - a write returns only once it is durable, and a batch is applied atomically;
//! - one data directory is served by at most one vault at a time (an exclusive lock file);
//! - local subscribers see every successful write that matches them, in write order.
mod error;
mod manager;
pub mod redo;
mod storage;
pub mod testing;

pub use crate::{
    error::{Error, Result},
    manager::VaultManager,
    storage::{MemoryVaultStorage, SledVaultStorage, VaultEntry, VaultStorage},
};
