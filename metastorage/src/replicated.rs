//! The glue between the Raft group and the MetaStorage state machine: [`RaftStateMachine`]
//! implements `raft::StateMachine` over [`MetaStateMachine`], and [`Client`] turns client
//! operations into commands that are written once even when retried.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use lifecycle::{BoxError, StopGuard};
use raft::RaftGroup;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    command::{CommandId, CommandOp, CommandResponse, MetaCommand, Outcome},
    entry::LogPosition,
    error::{Error, Result},
    state_machine::MetaStateMachine,
};

/// The MetaStorage state machine as the raft crate sees it.
pub(crate) struct RaftStateMachine(pub(crate) Arc<MetaStateMachine>);

fn to_ours(p: raft::LogPosition) -> LogPosition {
    LogPosition::new(p.index, p.term)
}

impl raft::StateMachine for RaftStateMachine {
    fn last_applied(&self) -> Result<Option<raft::LogPosition>, BoxError> {
        Ok(self.0.last_applied().map(|p| raft::LogPosition {
            index: p.index,
            term: p.term,
        }))
    }

    fn apply(&self, position: raft::LogPosition, command: &[u8]) -> Result<Vec<u8>, BoxError> {
        Ok(self.0.apply(to_ours(position), command)?)
    }

    fn batching(&self) -> bool {
        true
    }

    /// On the group's worker unless the storage's backlog is full or a compaction is among
    /// the commands (both write to disk before they return).
    fn apply_would_wait(&self, commands: &[Vec<u8>]) -> bool {
        // an entry's commands plus the empty write that may record its position
        self.0.storage().apply_would_wait(commands.len() + 1)
            || commands.iter().any(|c| MetaCommand::is_compaction(c))
    }

    fn apply_batch(
        &self,
        position: raft::LogPosition,
        commands: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, BoxError> {
        Ok(self.0.apply_batch(to_ours(position), commands)?)
    }

    fn advance(&self, position: raft::LogPosition) -> Result<(), BoxError> {
        Ok(self.0.advance(to_ours(position))?)
    }

    fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.0.snapshot()?.data)
    }

    /// The storage is read after the cut, while the group applies on.
    fn snapshot_job(&self) -> Result<raft::SnapshotJob, BoxError> {
        let job = self.0.snapshot_job()?;
        Ok(Box::new(move || Ok(job()?.data)))
    }

    /// A sled storage persists itself: its snapshots' bytes are built only for a follower.
    fn persist_job(&self) -> Result<Option<raft::PersistJob>, BoxError> {
        let Some(job) = self.0.persist_job()? else {
            return Ok(None);
        };
        Ok(Some(Box::new(move || Ok(job()?))))
    }

    fn restore(&self, position: raft::LogPosition, data: &[u8]) -> Result<(), BoxError> {
        Ok(self.0.restore(to_ours(position), data)?)
    }
}

/// Writes and linearizable reads through the group, with retries inside a deadline.
pub(crate) struct Client {
    group: RaftGroup,
    /// A fresh id per launch of the manager: together with `seq` it names each command.
    client: Uuid,
    seq: AtomicU64,
    timeout: Duration,
    guard: StopGuard,
}

/// Pause between retries of a retryable failure (no leader yet, leader unreachable).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

impl Client {
    pub(crate) fn new(group: RaftGroup, timeout: Duration, guard: StopGuard) -> Self {
        Self {
            group,
            client: Uuid::new_v4(),
            seq: AtomicU64::new(1),
            timeout,
            guard,
        }
    }

    pub(crate) fn group(&self) -> &RaftGroup {
        &self.group
    }

    /// Replicates `op` and returns its outcome. A retryable failure is retried with the
    /// same command id until the deadline, so the command is applied at most once.
    pub(crate) async fn write(&self, op: CommandOp) -> Result<Outcome> {
        let id = CommandId::new(self.client, self.seq.fetch_add(1, Ordering::Relaxed));
        let bytes = MetaCommand { id, op }.encode()?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let attempt = self.guard.wrap(self.group.write(bytes.clone())).await?;
            match attempt {
                Ok(reply) => {
                    return match CommandResponse::decode(&reply)? {
                        CommandResponse::Applied(outcome) => Ok(outcome),
                        CommandResponse::Invalid { reason } => Err(Error::Rejected(reason)),
                    }
                }
                Err(e) if e.is_retryable() && Instant::now() + RETRY_BACKOFF < deadline => {
                    tracing::debug!(client = %self.client, seq = id.seq, error = %e, "retrying metastorage write");
                    self.guard.wrap(tokio::time::sleep(RETRY_BACKOFF)).await?;
                }
                Err(e) if e.is_retryable() => {
                    return Err(Error::Timeout {
                        what: format!("write (last error: {e})"),
                        millis: self.timeout.as_millis() as u64,
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Returns once the local state machine reflects every write acknowledged before the
    /// call (read index), retrying retryable failures until the deadline.
    pub(crate) async fn barrier(&self) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.guard.wrap(self.group.linearizable_read()).await? {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && Instant::now() + RETRY_BACKOFF < deadline => {
                    tracing::debug!(error = %e, "retrying metastorage read index");
                    self.guard.wrap(tokio::time::sleep(RETRY_BACKOFF)).await?;
                }
                Err(e) if e.is_retryable() => {
                    return Err(Error::Timeout {
                        what: format!("linearizable read (last error: {e})"),
                        millis: self.timeout.as_millis() as u64,
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
