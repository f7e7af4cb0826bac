//! Replicated table partitions: the layer the table manager runs, one Raft group per
//! partition.
//!
//! API boundary: [`PartitionStorage`] / [`PartitionStorageProvider`] (the storage swap point:
//! [`SledPartitionProvider`] on disk, [`MemoryPartitionProvider`] for tests, [`testing`]
//! holds the conformance suite); [`PartitionCommand`] and [`PartitionStateMachine`] (what
//! the log carries and how it is applied); [`Partition`] (a local replica's handle) and
//! [`PartitionService`] (serves remote requests and routes a node's requests to replicas);
//! [`TableManager`] (the `table` component: table definitions in MetaStorage under
//! `tables/<name>`, local replicas of the assigned partitions), [`Table`] (the record
//! view, JSON rows) and [`KeyValueView`] (the same rows as JSON key and value objects).
//!
//! Invariants:
//! - rows, the command-id window and the applied log position change in one atomic batch;
//! - a command id is applied at most once while it is in the window, so client retries
//!   after a timeout are safe;
//! - reads through [`Partition`] and [`PartitionClient`] are linearizable (read index, then
//!   a local read);
//! - the partition layer knows keys and values only as bytes: row encoding is `schema`'s;
//! - a partition's Raft group is the truth of who holds its rows: `assignments/<table>` is
//!   the pending target, [`STABLE_PREFIX`] records what the group runs; routing uses both.
//!
//! Rebalance (pending vs stable, as Ignite 3): when a partition's pending assignment differs
//! from its group, the partition leader adds each new node as a learner (that node starts an
//! empty replica that joins, never initializes), waits until it is within
//! [`MAX_CATCH_UP_LAG`] entries, changes the voters to the target (joint consensus), records
//! the stable assignment, and removes stray learners. A node in neither assignment destroys
//! its replica only once its own group view no longer counts it as a voter. Retried every
//! tick and on leader change, one change at a time per partition, every step bounded.
//!
//! Recovery: the manager keeps its applied MetaStorage revision in the vault
//! ([`APPLIED_REVISION_KEY`]); when it lags behind the node's recovery revision, start does
//! the full update: the catalog from MetaStorage at that revision, and partition storages on
//! disk that are no longer assigned here are destroyed.
mod client;
mod command;
mod error;
mod kv_view;
mod manager;
mod partition;
mod rebalance;
mod recovery;
mod service;
mod state_machine;
mod storage;
pub mod testing;
mod view;
mod window;

pub use crate::{
    client::PartitionClient,
    command::{CommandId, PartitionCommand, PartitionOp, PartitionResponse},
    error::{Error, Result},
    kv_view::KeyValueView,
    manager::{table_key, TableInfo, TableManager, TABLES_PREFIX},
    partition::{partition_group_id, Partition},
    rebalance::{stable_key, StableAssignment, MAX_CATCH_UP_LAG, STABLE_PREFIX},
    recovery::APPLIED_REVISION_KEY,
    service::{
        PartitionService, ReadOp, ReadRequest, ReadResult, WriteRequest, PARTITION_MESSAGE_GROUP,
    },
    state_machine::{PartitionStateMachine, DEFAULT_COMMAND_WINDOW},
    storage::{
        Change, MemoryPartitionProvider, MemoryPartitionStorage, PartitionSnapshot,
        PartitionStorage, PartitionStorageProvider, PersistJob, SledPartitionProvider,
        SledPartitionStorage, WriteBatch,
    },
    view::{partition_of, Table},
};
