//! [`PartitionClient`]: a partition's operations from any node. It uses the local replica
//! when this node holds one, and otherwise sends the request to a replica node through the
//! [`crate::PartitionService`], rotating through the replicas on retryable failures until
//! the deadline. Writes keep their command id across retries, so a retry applies once.
use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    command::{CommandId, PartitionCommand, PartitionOp, PartitionResponse},
    error::{Error, Result},
    partition::{back_off, BACKOFF_MIN},
    service::{
        PartitionMessage, PartitionReply, ReadOp, ReadRequest, ReadResult, Rejection,
        ServiceShared, WriteRequest,
    },
};

/// The row operations shared by [`crate::Partition`] and [`PartitionClient`], written over
/// their `execute_op` and `read`.
macro_rules! row_ops {
    ($ty:ty) => {
        impl $ty {
            /// Sets row `key` to `value`.
            pub async fn upsert(&self, key: Vec<u8>, value: Vec<u8>) -> $crate::Result<()> {
                self.upsert_all(vec![(key, value)]).await
            }

            /// Sets every row in one command (atomically).
            pub async fn upsert_all(&self, rows: Vec<(Vec<u8>, Vec<u8>)>) -> $crate::Result<()> {
                match self
                    .execute_op($crate::PartitionOp::Upsert { rows })
                    .await?
                {
                    $crate::PartitionResponse::Done => Ok(()),
                    other => Err(self.unexpected(&other)),
                }
            }

            /// Deletes row `key`; true when it existed.
            pub async fn delete(&self, key: Vec<u8>) -> $crate::Result<bool> {
                let existed = self.delete_all(vec![key]).await?;
                Ok(existed.first().copied().unwrap_or(false))
            }

            /// Deletes every key in one command; for each, whether it existed.
            pub async fn delete_all(&self, keys: Vec<Vec<u8>>) -> $crate::Result<Vec<bool>> {
                match self
                    .execute_op($crate::PartitionOp::Delete { keys })
                    .await?
                {
                    $crate::PartitionResponse::Deleted(existed) => Ok(existed),
                    other => Err(self.unexpected(&other)),
                }
            }

            /// Deletes row `key` and returns the value it had.
            pub async fn get_and_delete(&self, key: Vec<u8>) -> $crate::Result<Option<Vec<u8>>> {
                match self
                    .execute_op($crate::PartitionOp::GetAndDelete { key })
                    .await?
                {
                    $crate::PartitionResponse::Previous(previous) => Ok(previous),
                    other => Err(self.unexpected(&other)),
                }
            }

            /// Sets row `key` and returns the value it replaced.
            pub async fn get_and_upsert(
                &self,
                key: Vec<u8>,
                value: Vec<u8>,
            ) -> $crate::Result<Option<Vec<u8>>> {
                match self
                    .execute_op($crate::PartitionOp::GetAndUpsert { key, value })
                    .await?
                {
                    $crate::PartitionResponse::Previous(previous) => Ok(previous),
                    other => Err(self.unexpected(&other)),
                }
            }

            /// Sets row `key` only if it is absent; true when it was written.
            pub async fn insert(&self, key: Vec<u8>, value: Vec<u8>) -> $crate::Result<bool> {
                match self
                    .execute_op($crate::PartitionOp::Insert { key, value })
                    .await?
                {
                    $crate::PartitionResponse::Inserted(written) => Ok(written),
                    other => Err(self.unexpected(&other)),
                }
            }

            /// The value of row `key` (linearizable).
            pub async fn get(&self, key: Vec<u8>) -> $crate::Result<Option<Vec<u8>>> {
                let mut values = self.get_all(vec![key]).await?;
                Ok(values.pop().flatten())
            }

            /// The values of `keys`, in order (linearizable).
            pub async fn get_all(
                &self,
                keys: Vec<Vec<u8>>,
            ) -> $crate::Result<Vec<Option<Vec<u8>>>> {
                let expected = keys.len();
                match self.read($crate::ReadOp::Get { keys }).await? {
                    $crate::ReadResult::Values(values) if values.len() == expected => Ok(values),
                    _ => Err($crate::Error::decode(
                        "read result",
                        "a get was answered with something else",
                    )),
                }
            }

            /// Up to `limit` rows in key order from `from` (linearizable).
            pub async fn scan(
                &self,
                from: std::ops::Bound<Vec<u8>>,
                limit: u32,
            ) -> $crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
                match self.read($crate::ReadOp::Scan { from, limit }).await? {
                    $crate::ReadResult::Rows(rows) => Ok(rows),
                    $crate::ReadResult::Values(_) => Err($crate::Error::decode(
                        "read result",
                        "a scan was answered with something else",
                    )),
                }
            }

            fn unexpected(&self, response: &$crate::PartitionResponse) -> $crate::Error {
                $crate::Error::decode(
                    "partition response",
                    format!(
                        "partition {}/{} answered {response:?} to another operation",
                        self.table_id(),
                        self.partition()
                    ),
                )
            }
        }
    };
}
pub(crate) use row_ops;

/// A partition's operations from this node, wherever its replicas are. Cheap to clone.
#[derive(Clone)]
pub struct PartitionClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    table_id: String,
    partition: u32,
    replicas: Vec<String>,
    service: Arc<ServiceShared>,
    timeout: Duration,
    client: Uuid,
    seq: AtomicU64,
    /// The replica index that answered last: tried first next time.
    preferred: AtomicUsize,
}

impl std::fmt::Debug for PartitionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionClient")
            .field("table_id", &self.inner.table_id)
            .field("partition", &self.inner.partition)
            .field("replicas", &self.inner.replicas)
            .finish()
    }
}

/// What one attempt at one replica gave.
enum Attempt<T> {
    Done(T),
    Retry(Error),
}

impl PartitionClient {
    pub(crate) fn new(
        service: Arc<ServiceShared>,
        table_id: &str,
        partition: u32,
        replicas: Vec<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                table_id: table_id.to_owned(),
                partition,
                replicas,
                service,
                timeout,
                client: Uuid::new_v4(),
                seq: AtomicU64::new(0),
                preferred: AtomicUsize::new(0),
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

    /// The replica nodes requests are sent to.
    pub fn replicas(&self) -> &[String] {
        &self.inner.replicas
    }

    /// A fresh command id of this client.
    pub fn next_command_id(&self) -> CommandId {
        CommandId::new(
            self.inner.client,
            self.inner.seq.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// Runs `op` with a fresh command id.
    pub async fn execute_op(&self, op: PartitionOp) -> Result<PartitionResponse> {
        self.execute(PartitionCommand::new(self.next_command_id(), op))
            .await
    }

    /// Runs `command` at the local replica or a remote one, retrying with the same id.
    pub async fn execute(&self, command: PartitionCommand) -> Result<PartitionResponse> {
        let table_id = self.inner.table_id.clone();
        let partition = self.inner.partition;
        self.route("write", |service, node, remaining| {
            let command = command.clone();
            let table_id = table_id.clone();
            async move {
                if let Some(local) = service.local(&table_id, partition, &node) {
                    let deadline = Instant::now() + remaining;
                    return local.execute_until(command, deadline).await;
                }
                let request = PartitionMessage::Write(WriteRequest {
                    table_id,
                    partition,
                    command,
                    timeout_ms: budget_ms(remaining),
                });
                match service.invoke(&node, request, remaining).await? {
                    PartitionReply::Write(reply) => reply.map_err(|r| r.into_error(&node)),
                    PartitionReply::Read(_) => Err(Error::Remote {
                        node,
                        reason: "a write was answered as a read".into(),
                    }),
                }
            }
        })
        .await
    }

    /// Runs a read linearizably at the local replica or a remote one.
    pub async fn read(&self, op: ReadOp) -> Result<ReadResult> {
        let table_id = self.inner.table_id.clone();
        let partition = self.inner.partition;
        self.route("read", |service, node, remaining| {
            let op = op.clone();
            let table_id = table_id.clone();
            async move {
                if let Some(local) = service.local(&table_id, partition, &node) {
                    let deadline = Instant::now() + remaining;
                    return local.read_until(op, deadline).await;
                }
                let request = PartitionMessage::Read(ReadRequest {
                    table_id,
                    partition,
                    op,
                    timeout_ms: budget_ms(remaining),
                });
                match service.invoke(&node, request, remaining).await? {
                    PartitionReply::Read(reply) => reply.map_err(|r| r.into_error(&node)),
                    PartitionReply::Write(_) => Err(Error::Remote {
                        node,
                        reason: "a read was answered as a write".into(),
                    }),
                }
            }
        })
        .await
    }

    /// Tries `attempt` at the local replica (if any) or the replicas in turn, starting at
    /// the one that answered last, until one succeeds or fails for good, or the deadline.
    async fn route<T, F, Fut>(&self, what: &'static str, attempt: F) -> Result<T>
    where
        F: Fn(Arc<ServiceShared>, String, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.timeout;
        let mut backoff = BACKOFF_MIN;
        let mut last = Error::InvalidState(format!(
            "partition {}/{} has no replicas",
            inner.table_id, inner.partition
        ));
        // a replica on this node is always the first choice
        let local = inner.service.local_name();
        let mut order: Vec<usize> = (0..inner.replicas.len()).collect();
        if let Some(pos) = inner
            .replicas
            .iter()
            .position(|r| Some(r) == local.as_ref())
        {
            order.retain(|&i| i != pos);
            order.insert(0, pos);
        }
        if order.is_empty() {
            return Err(last);
        }
        loop {
            let start = inner.preferred.load(Ordering::Relaxed) % order.len();
            for step in 0..order.len() {
                let slot = (start + step) % order.len();
                let node = inner.replicas[order[slot]].clone();
                inner.service.check_running()?;
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(self.timeout(what, &last));
                }
                let outcome =
                    match attempt(Arc::clone(&inner.service), node.clone(), remaining).await {
                        Ok(value) => Attempt::Done(value),
                        Err(e) if e.is_retryable() => Attempt::Retry(e),
                        Err(e) => return Err(e),
                    };
                match outcome {
                    Attempt::Done(value) => {
                        inner.preferred.store(slot, Ordering::Relaxed);
                        return Ok(value);
                    }
                    Attempt::Retry(e) => {
                        tracing::debug!(
                            table_id = %inner.table_id,
                            partition = inner.partition,
                            node = %node,
                            error = %e,
                            "partition request failed at a replica; trying the next"
                        );
                        last = e;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(what, &last));
            }
            back_off(&mut backoff, deadline).await;
        }
    }

    fn timeout(&self, what: &'static str, last: &Error) -> Error {
        Error::Timeout {
            table_id: self.inner.table_id.clone(),
            partition: self.inner.partition,
            what,
            last_error: last.to_string(),
        }
    }
}

/// The server's share of a caller's remaining time: enough margin to send the answer back.
fn budget_ms(remaining: Duration) -> u64 {
    let ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
    ms.saturating_mul(9) / 10
}

impl Rejection {
    fn into_error(self, node: &str) -> Error {
        match self {
            Rejection::NoPartition {
                table_id,
                partition,
            } => Error::PartitionNotFound {
                table_id,
                partition,
                node: node.to_owned(),
            },
            Rejection::Retry(reason) => Error::Unreachable {
                node: node.to_owned(),
                reason,
            },
            Rejection::Invalid {
                table_id,
                partition,
                reason,
            } => Error::InvalidCommand {
                table_id,
                partition,
                reason,
            },
            Rejection::Failed(reason) => Error::Remote {
                node: node.to_owned(),
                reason,
            },
        }
    }
}

row_ops!(PartitionClient);
