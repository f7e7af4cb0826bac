//! [`MetaStateMachine`]: the deterministic core the Raft state machine calls.
//!
//! Bytes in, bytes out: `apply` decodes a [`MetaCommand`], applies it once (a retried
//! command id gets its first response back) atomically with the log position, and encodes a
//! [`CommandResponse`]. Every replica that applies the same log produces the same state and
//! the same responses, invalid entries included.
use std::sync::Arc;

use tokio::sync::watch;

use crate::{
    command::{CommandResponse, MetaCommand},
    entry::LogPosition,
    error::Result,
    storage::{ApplyContext, KeyValueStorage, StorageSnapshot},
};

/// A full snapshot of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateMachineSnapshot {
    /// The last log position the snapshot includes.
    pub last_applied: Option<LogPosition>,
    /// The storage revision it holds.
    pub revision: u64,
    /// The encoded [`StorageSnapshot`].
    pub data: Vec<u8>,
}

/// The MetaStorage state machine over a [`KeyValueStorage`].
///
/// Calls are expected from one applying task; each method is still safe to call
/// concurrently (the storage serialises writers).
pub struct MetaStateMachine {
    storage: Arc<dyn KeyValueStorage>,
    revisions: watch::Sender<u64>,
}

impl std::fmt::Debug for MetaStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStateMachine")
            .field("revision", &self.storage.revision())
            .field("last_applied", &self.storage.last_applied())
            .finish()
    }
}

impl MetaStateMachine {
    /// A state machine over `storage` (which may hold state from before a restart).
    pub fn new(storage: Arc<dyn KeyValueStorage>) -> Self {
        let (revisions, _) = watch::channel(storage.revision());
        Self { storage, revisions }
    }

    /// The storage, for reads.
    pub fn storage(&self) -> &Arc<dyn KeyValueStorage> {
        &self.storage
    }

    /// The storage revision after each apply or restore (what wakes the watch processor).
    pub fn subscribe_revisions(&self) -> watch::Receiver<u64> {
        self.revisions.subscribe()
    }

    /// The last applied log position (persisted with the data).
    pub fn last_applied(&self) -> Option<LogPosition> {
        self.storage.last_applied()
    }

    /// Apply the log entry at `position` holding `command`; returns the encoded
    /// [`CommandResponse`]. An entry that does not decode changes nothing but the position
    /// and answers [`CommandResponse::Invalid`]. Errors are storage failures (fatal).
    pub fn apply(&self, position: LogPosition, command: &[u8]) -> Result<Vec<u8>> {
        let position = self.monotonic(position);
        let response = match MetaCommand::decode(command) {
            Ok(cmd) => {
                let ctx = ApplyContext {
                    id: Some(cmd.id),
                    position: Some(position),
                };
                CommandResponse::Applied(self.storage.apply(&cmd.op, &ctx)?)
            }
            Err(e) => {
                tracing::warn!(index = position.index, term = position.term, error = %e, "log entry is not a metastorage command");
                self.storage.advance(position)?;
                CommandResponse::Invalid {
                    reason: e.to_string(),
                }
            }
        };
        self.publish();
        response.encode()
    }

    /// Record that the log reached `position` with an entry that is not a command (a blank
    /// or membership entry).
    pub fn advance(&self, position: LogPosition) -> Result<()> {
        self.storage.advance(self.monotonic(position))
    }

    /// A full snapshot of the current state.
    pub fn snapshot(&self) -> Result<StateMachineSnapshot> {
        let s = self.storage.snapshot()?;
        Ok(StateMachineSnapshot {
            last_applied: s.last_applied,
            revision: s.revision,
            data: s.encode()?,
        })
    }

    /// Replace the state with snapshot `data`, which includes the log up to `position`.
    pub fn restore(&self, position: LogPosition, data: &[u8]) -> Result<()> {
        let mut snapshot = StorageSnapshot::decode(data)?;
        snapshot.last_applied = Some(position);
        let revision = snapshot.revision;
        self.storage.restore(snapshot)?;
        tracing::info!(
            index = position.index,
            term = position.term,
            revision,
            "metastorage snapshot restored"
        );
        self.publish();
        Ok(())
    }

    /// Never move the applied position backwards (a re-delivered entry is deduplicated by
    /// its command id, its position is not re-recorded).
    fn monotonic(&self, position: LogPosition) -> LogPosition {
        match self.storage.last_applied() {
            Some(last) if last > position => last,
            _ => position,
        }
    }

    fn publish(&self) {
        let revision = self.storage.revision();
        self.revisions.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
    }
}
