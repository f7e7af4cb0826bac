//! MetaStorage core: a revisioned (MVCC) key-value store with watches, and the
//! deterministic state machine the Raft group of the MetaStorage applies.
//!
//! API boundary: the [`KeyValueStorage`] trait (swap point) with [`SledKeyValueStorage`]
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
//!   resume at the recovery revision + 1.
mod command;
mod entry;
mod error;
mod state_machine;
mod storage;
pub mod testing;
mod watch;

pub use crate::{
    command::{
        Check, CommandId, CommandOp, CommandResponse, CompareOp, Condition, KeyTest, MetaCommand,
        Operation, Outcome, MAX_CONDITION_DEPTH,
    },
    entry::{Entry, LogPosition},
    error::{Error, Result},
    state_machine::{MetaStateMachine, StateMachineSnapshot},
    storage::{
        ApplyContext, CommandRecord, KeyValueStorage, MemoryKeyValueStorage, SledKeyValueStorage,
        StorageSnapshot, DEFAULT_COMMAND_WINDOW,
    },
    watch::{
        DeliveryStatus, EntryEvent, KeyMatcher, WatchEvent, WatchId, WatchListener, WatchProcessor,
    },
};
