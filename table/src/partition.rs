//! [`Partition`]: the handle of a partition replica on this node, over its Raft group and
//! its local state machine.
use std::{
    ops::Bound,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use raft::{GroupMembers, RaftGroup, RaftManager};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    command::{CommandId, PartitionCommand, PartitionOp, PartitionResponse},
    error::{Error, Result},
    service::{ReadOp, ReadResult},
    state_machine::PartitionStateMachine,
    storage::PartitionStorage,
};

/// The default deadline of one operation, retries included.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// The first and the largest pause between retries of a retryable failure.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(20);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The Raft group id of a partition: `<table_id>_part_<partition>` (Ignite's naming).
pub fn partition_group_id(table_id: &str, partition: u32) -> String {
    format!("{table_id}_part_{partition}")
}

struct Inner {
    table_id: String,
    partition: u32,
    group: RaftGroup,
    storage: Arc<dyn PartitionStorage>,
    client: Uuid,
    seq: AtomicU64,
    timeout: Duration,
}

/// A partition replica on this node. Cheap to clone; clones share one command-id sequence.
///
/// Writes go through the Raft group (forwarded to the leader by `raft`) and are retried
/// with the same [`CommandId`] on retryable failures until the deadline, so a retry never
/// applies twice. Reads are linearizable: a read index, then a read of the local storage.
#[derive(Clone)]
pub struct Partition {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("table_id", &self.inner.table_id)
            .field("partition", &self.inner.partition)
            .field("node", &self.inner.group.node())
            .finish()
    }
}

/// The current backoff bounded by `deadline`; the backoff doubles for the next time.
fn next_wait(backoff: &mut Duration, deadline: Instant) -> Duration {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(*backoff);
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    wait
}

/// Sleeps for the current backoff (bounded by `deadline`) and doubles it.
pub(crate) async fn back_off(backoff: &mut Duration, deadline: Instant) {
    tokio::time::sleep(next_wait(backoff, deadline)).await;
}

/// Like [`back_off`], but a new leader of `group` ends the wait at once: after a failover the
/// retry goes out as soon as the election is over, not at the next step of the backoff.
async fn back_off_for_leader(group: &RaftGroup, backoff: &mut Duration, deadline: Instant) {
    let wait = next_wait(backoff, deadline);
    let before = group.leader();
    // a timeout (no new leader within the wait) is the plain backoff
    let _ = group
        .wait_for(wait, "a new partition leader", move |m| {
            m.leader.is_some() && m.leader != before
        })
        .await;
}

impl Partition {
    /// A handle over a running `group` whose state machine applies to `storage`.
    pub fn new(
        table_id: &str,
        partition: u32,
        group: RaftGroup,
        storage: Arc<dyn PartitionStorage>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                table_id: table_id.to_owned(),
                partition,
                group,
                storage,
                client: Uuid::new_v4(),
                seq: AtomicU64::new(0),
                timeout: DEFAULT_TIMEOUT,
            }),
        }
    }

    /// Starts the partition's Raft group on `raft` with a [`PartitionStateMachine`] over
    /// `storage` and returns its handle. `members` is the initial membership (ignored by a
    /// replica that recovers its group from its log).
    pub async fn start(
        raft: &RaftManager,
        table_id: &str,
        partition: u32,
        storage: Arc<dyn PartitionStorage>,
        members: GroupMembers,
    ) -> Result<Self> {
        let sm = Arc::new(PartitionStateMachine::new(
            table_id,
            partition,
            Arc::clone(&storage),
        ));
        let group = raft
            .start_data_group(&partition_group_id(table_id, partition), sm, members)
            .await?;
        tracing::info!(table_id, partition, node = %group.node(), "partition replica started");
        Ok(Self::new(table_id, partition, group, storage))
    }

    /// The same handle with a different operation deadline (retries included).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                table_id: inner.table_id.clone(),
                partition: inner.partition,
                group: inner.group.clone(),
                storage: Arc::clone(&inner.storage),
                client: Uuid::new_v4(),
                seq: AtomicU64::new(0),
                timeout,
            }),
        }
    }

    /// The table id.
    pub fn table_id(&self) -> &str {
        &self.inner.table_id
    }

    /// The partition number.
    pub fn partition(&self) -> u32 {
        self.inner.partition
    }

    /// The partition's Raft group on this node.
    pub fn group(&self) -> &RaftGroup {
        &self.inner.group
    }

    /// The local storage (reads of it alone are not linearizable).
    pub fn storage(&self) -> &Arc<dyn PartitionStorage> {
        &self.inner.storage
    }

    /// The operation deadline.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// A fresh command id of this handle's client.
    pub fn next_command_id(&self) -> CommandId {
        CommandId::new(
            self.inner.client,
            self.inner.seq.fetch_add(1, Ordering::Relaxed),
        )
    }

    fn timeout_error(&self, what: &'static str, last: impl std::fmt::Display) -> Error {
        Error::Timeout {
            table_id: self.inner.table_id.clone(),
            partition: self.inner.partition,
            what,
            last_error: last.to_string(),
        }
    }

    /// Replicates `command` and returns the state machine's response, retrying retryable
    /// failures with the same command id until the handle's deadline.
    pub async fn execute(&self, command: PartitionCommand) -> Result<PartitionResponse> {
        self.execute_until(command, Instant::now() + self.inner.timeout)
            .await
    }

    pub(crate) async fn execute_until(
        &self,
        command: PartitionCommand,
        deadline: Instant,
    ) -> Result<PartitionResponse> {
        let bytes = command.encode()?;
        let mut backoff = BACKOFF_MIN;
        loop {
            // the deadline bounds raft's own write timeout too; an abandoned write may still
            // apply, which a retry with the same command id absorbs
            let write = tokio::time::timeout_at(deadline, self.inner.group.write(bytes.clone()));
            let error = match write.await {
                Err(_elapsed) => {
                    return Err(
                        self.timeout_error("write", "no answer from raft before the deadline")
                    )
                }
                Ok(Ok(reply)) => {
                    return match PartitionResponse::decode(&reply)? {
                        PartitionResponse::Invalid { reason } => Err(Error::InvalidCommand {
                            table_id: self.inner.table_id.clone(),
                            partition: self.inner.partition,
                            reason,
                        }),
                        response => Ok(response),
                    }
                }
                Ok(Err(e)) => Error::from(e),
            };
            if !retry_locally(&error) {
                return Err(error);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error("write", error));
            }
            tracing::debug!(
                table_id = %self.inner.table_id,
                partition = self.inner.partition,
                error = %error,
                "retrying partition write"
            );
            back_off_for_leader(&self.inner.group, &mut backoff, deadline).await;
        }
    }

    /// Waits until the local state machine reflects every write acknowledged before the call.
    async fn read_barrier(&self, deadline: Instant) -> Result<()> {
        let mut backoff = BACKOFF_MIN;
        loop {
            let barrier = tokio::time::timeout_at(deadline, self.inner.group.linearizable_read());
            let error = match barrier.await {
                Err(_elapsed) => {
                    return Err(self.timeout_error("read", "no read index before the deadline"))
                }
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => Error::from(e),
            };
            // a read index has no effect: one the leader refused (it could not confirm its
            // leadership in time, as in a joint configuration with a slow new voter) is
            // asked again
            let refused = matches!(error, Error::Raft(raft::Error::Rejected { .. }));
            if !retry_locally(&error) && !refused {
                return Err(error);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error("read", error));
            }
            back_off_for_leader(&self.inner.group, &mut backoff, deadline).await;
        }
    }

    /// Runs a read linearizably: the read barrier, then the local storage.
    pub async fn read(&self, op: ReadOp) -> Result<ReadResult> {
        self.read_until(op, Instant::now() + self.inner.timeout)
            .await
    }

    pub(crate) async fn read_until(&self, op: ReadOp, deadline: Instant) -> Result<ReadResult> {
        self.read_barrier(deadline).await?;
        let storage = &self.inner.storage;
        match op {
            ReadOp::Get { keys } => Ok(ReadResult::Values(storage.get_many(&keys)?)),
            ReadOp::Scan { from, limit } => {
                let from = match &from {
                    Bound::Included(k) => Bound::Included(k.as_slice()),
                    Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
                    Bound::Unbounded => Bound::Unbounded,
                };
                Ok(ReadResult::Rows(storage.scan(from, limit as usize)?))
            }
        }
    }

    /// Stops this replica's Raft group on `raft`; its storage and log stay for a restart.
    pub async fn stop(&self, raft: &RaftManager) -> Result<()> {
        raft.stop_group(self.inner.group.id()).await?;
        tracing::info!(
            table_id = %self.inner.table_id,
            partition = self.inner.partition,
            "partition replica stopped"
        );
        Ok(())
    }

    /// Stops this replica's Raft group and destroys its partition storage (the table was
    /// dropped or the replica moved away), the group's Raft log and vote included.
    pub async fn destroy(self, raft: &RaftManager) -> Result<()> {
        // the group's log goes with its rows: a replica that comes back later must start
        // empty, not with a log its (empty) storage no longer matches
        raft.destroy_group(self.inner.group.id()).await?;
        let storage = Arc::clone(&self.inner.storage);
        tokio::task::spawn_blocking(move || storage.destroy())
            .await
            .map_err(|e| Error::storage("partition", e))??;
        tracing::info!(
            table_id = %self.inner.table_id,
            partition = self.inner.partition,
            "partition replica destroyed"
        );
        Ok(())
    }

    /// Runs `op` with a fresh command id.
    pub async fn execute_op(&self, op: PartitionOp) -> Result<PartitionResponse> {
        self.execute(PartitionCommand::new(self.next_command_id(), op))
            .await
    }
}

/// Whether a local replica should retry: a stopping group or node will not recover.
fn retry_locally(error: &Error) -> bool {
    error.is_retryable()
        && !matches!(
            error,
            Error::Stopping(_)
                | Error::Raft(raft::Error::Stopping(_) | raft::Error::GroupNotFound(_))
        )
}

crate::client::row_ops!(Partition);
