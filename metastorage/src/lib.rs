//! MetaStorage: a Raft-replicated, revisioned (MVCC) key-value store with watches, cluster
//! init, and the cluster-wide configuration storage on top of it.
//!
//! API boundary: [`MetaStorageManager`] (the component: cluster init while the node is a
//! zombie, then the replicated store: client API, watches, recovery, learners, compaction),
//! [`ClusterState`] / [`InitRequest`], [`MetaStorageConfiguration`] (the `metastorage`
//! root) and [`DistributedConfigurationStorage`] (cluster configuration roots in MetaStorage).
//! With `metastorage.etcd_listen` set the manager also serves etcd's v3 gRPC API (KV,
//! Watch, Status, MemberList) for etcd clients: see
//! [`MetaStorageManager::etcd_address`] and the `etcd` module doc for the deviations.
//!
//! The core underneath: the [`KeyValueStorage`] trait (swap point) with [`SledKeyValueStorage`]
//! (on disk) and [`MemoryKeyValueStorage`] (tests, embedding); commands ([`MetaCommand`],
//! [`CommandOp`], [`Condition`]) and responses as postcard bytes; [`MetaStateMachine`]
//! (`last_applied`, `apply`, `advance`, `snapshot`, `restore`); the [`WatchProcessor`].
//! The [`testing`] module holds the conformance suite every storage passes.
//!
//! Invariants (DESIGN section 6):
//! - one global revision; every write command that changes something adds exactly one
//!   revision holding all its changes, atomically with its log position and command id;
//! - a command id is applied at most once within the window: a retry gets the first
//!   response and does not bump the revision;
//! - reads below the compacted revision fail with [`Error::Compacted`]; compaction keeps
//!   the latest live version of every key;
//! - watches see each revision once, in revision order, all its matching entries in one
//!   event, and revision N+1 only after every listener finished N; after a restart they
//!   resume at the recovery revision + 1 (the last revision delivered before the stop);
//! - the cluster state is written to a node's vault once and never changes; a node with a
//!   cluster state joins the group by itself at start (voter or learner), and the leader
//!   adds every other topology member as a learner.
mod cluster;
mod command;
mod config;
mod distributed;
mod entry;
mod error;
mod etcd;
mod manager;
mod replicated;
mod state_machine;
mod storage;
pub mod testing;
mod watch;

pub use crate::{
    cluster::{ClusterState, InitRequest, CLUSTER_STATE_KEY, DEFAULT_VOTERS},
    command::{
        Check, CommandId, CommandOp, CommandResponse, CompareOp, Condition, KeyTest, MetaCommand,
        Operation, Outcome, MAX_CONDITION_DEPTH,
    },
    config::MetaStorageConfiguration,
    distributed::{DistributedConfigurationStorage, CONFIG_PREFIX, CONFIG_VERSION_KEY},
    entry::{Entry, LogPosition},
    error::{Error, Result},
    manager::{MetaStorageManager, METASTORAGE_GROUP, WATCH_REVISION_KEY},
    state_machine::{MetaStateMachine, StateMachineSnapshot},
    storage::{
        ApplyContext, CommandRecord, KeyValueStorage, MemoryKeyValueStorage, PersistJob,
        SledKeyValueStorage, SnapshotJob, StorageSnapshot, DEFAULT_COMMAND_WINDOW,
    },
    watch::{
        DeliveryStatus, EntryEvent, KeyMatcher, WatchEvent, WatchId, WatchListener, WatchProcessor,
    },
};
