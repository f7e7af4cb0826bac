//! Raft groups over the node's network (the design's "Loza"), on openraft 0.9.
//!
//! API boundary: [`RaftManager`] (the component) starts and stops groups by id;
//! [`RaftGroup`] writes, reads linearizably and changes membership; [`StateMachine`] is the
//! swap point users implement; [`LogStorage`] / [`LogStorageProvider`] keep logs and votes
//! ([`WalLogProvider`] on disk: one write-ahead log file for all groups; [`SledLogProvider`]
//! for data directories written before it; [`MemoryLogProvider`] for tests); [`testing`] runs
//! openraft's own storage suite.
//!
//! Not offered: leader transfer (openraft 0.9 has no API for it; a voter's forced election is
//! refused while the leader's lease holds). Configuration changes reach groups started after
//! them.
//!
//! Invariants:
//! - openraft types never cross this crate's public API: other crates see node names,
//!   [`LogPosition`], bytes and [`Error`];
//! - a vote or a log append is reported done only after it is flushed; the fsyncs of
//!   concurrent groups share one flush (one `fdatasync` of the write-ahead log);
//! - all groups share the node's network connections (one message group, the group id in
//!   every message) and every request is served on its own task, so one group never blocks
//!   another.
// openraft's storage and network traits fix their (large) error types
#![allow(clippy::result_large_err)]
mod batch;
mod config;
mod error;
mod failover;
mod forward;
mod group;
mod log_store;
mod manager;
mod rpc;
mod snapshot_data;
mod snapshot_file;
mod state_machine;
mod storage;
pub mod testing;
mod types;
mod wal;

pub use crate::{
    config::{GroupClass, RaftConfiguration},
    error::{Error, Result},
    group::{GroupMetrics, RaftGroup, Role},
    manager::{initiator, RaftManager},
    state_machine::{PersistJob, SnapshotJob, StateMachine},
    storage::{
        FlushCallback, LogStorage, LogStorageProvider, MemoryLogProvider, MemoryLogStorage,
        MetaKey, SledLogProvider, SledLogStorage,
    },
    types::{node_id, GroupMembers, LogPosition},
    wal::{WalLogProvider, WalLogStorage, MIN_REWRITE_BYTES, PREALLOCATE_BYTES},
};
