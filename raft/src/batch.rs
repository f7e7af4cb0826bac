//! Group commit of client writes on the leader.
//!
//! openraft 0.9 appends each `client_write` as its own log entry, so one entry per write
//! costs one append and one fsync per write on every replica. For a group whose state
//! machine allows it ([`StateMachine::batching`](crate::StateMachine::batching)), the writes
//! queued while earlier ones are in flight go into one [`Command::Batch`] entry instead: one
//! append and one fsync for all of them, the same durability per write.
use std::sync::Arc;

use futures::{stream::FuturesUnordered, StreamExt};
use lifecycle::BoxError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    error::{Error, Result},
    group::write_error,
    types::{Command, Raft},
};

/// Most commands in one entry.
const MAX_BATCH_COMMANDS: usize = 256;
/// Most command bytes in one entry (a first command alone may be larger): with
/// `max_payload_entries` entries per append request, requests stay well under the network's
/// frame limit.
const MAX_BATCH_BYTES: usize = 32 * 1024;
/// Entries submitted and not yet applied: the next batch forms while this one is appended,
/// replicated and applied. One: while openraft's core waited for the leader's fsync of each
/// entry, more only split the writes over more fsyncs (1-node puts at 64 in flight 28k/s
/// with 4, 48k/s with 1; table upserts 5.8-6.3k/s with 4, 7.5-7.9k/s with 1); since the
/// leader's appends are flushed in parallel with replication, 2 and 4 measured the same as 1.
const MAX_BATCHES_IN_FLIGHT: usize = 1;

/// A write waiting for its batch.
pub(crate) struct Pending {
    pub(crate) command: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Result<Vec<u8>>>,
}

/// A request that waits in a queue to go out in a batch.
pub(crate) trait Queued {
    /// Its size against [`MAX_BATCH_BYTES`].
    fn bytes(&self) -> usize;
    /// Whether it may share a batch that `first` starts (default: always).
    fn joins(&self, first: &Self) -> bool {
        let _ = first;
        true
    }
}

impl Queued for Pending {
    fn bytes(&self) -> usize {
        self.command.len()
    }
}

/// A group's write histograms, registered once.
#[derive(Clone)]
struct Histograms {
    /// Commands per entry.
    batch: metrics::Histogram,
    /// From submitting an entry to its replies.
    seconds: metrics::Histogram,
}

/// Forms batches from `rx` and writes them through `raft` until `cancel` (the group stops)
/// or every sender is gone. Dropped writes see their reply channel closed.
pub(crate) async fn run(
    group: Arc<str>,
    raft: Raft,
    rx: mpsc::UnboundedReceiver<Pending>,
    cancel: CancellationToken,
) -> std::result::Result<(), BoxError> {
    let histograms = Histograms {
        batch: metrics::histogram!("ignite_raft_write_batch", "group" => group.to_string()),
        seconds: metrics::histogram!("ignite_raft_write_seconds", "group" => group.to_string()),
    };
    drive(rx, cancel, MAX_BATCHES_IN_FLIGHT, |batch| {
        submit(Arc::clone(&group), raft.clone(), batch, histograms.clone())
    })
    .await;
    Ok(())
}

/// Takes what `rx` queues in batches (whatever is queued when a batch forms, within the
/// limits) and hands each to `submit`, at most `max_in_flight` at a time, until `cancel` or
/// every sender is gone (then it finishes what was submitted).
pub(crate) async fn drive<T, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<T>,
    cancel: CancellationToken,
    max_in_flight: usize,
    mut submit: F,
) where
    T: Queued,
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut in_flight = FuturesUnordered::new();
    // the request that did not fit in the previous batch: the first of the next one
    let mut carry: Option<T> = None;
    loop {
        if in_flight.len() < max_in_flight {
            if let Some(first) = carry.take() {
                let batch = collect(first, &mut rx, &mut carry);
                in_flight.push(submit(batch));
                continue;
            }
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = rx.recv(), if in_flight.len() < max_in_flight => {
                let Some(first) = first else { break };
                let batch = collect(first, &mut rx, &mut carry);
                in_flight.push(submit(batch));
            }
        }
    }
    // every sender is gone: finish what was submitted
    tokio::select! {
        () = cancel.cancelled() => {}
        () = async { while in_flight.next().await.is_some() {} } => {}
    }
}

/// `first` plus whatever is queued now, within the batch limits.
fn collect<T: Queued>(
    first: T,
    rx: &mut mpsc::UnboundedReceiver<T>,
    carry: &mut Option<T>,
) -> Vec<T> {
    let mut bytes = first.bytes();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH_COMMANDS {
        let Ok(next) = rx.try_recv() else { break };
        if bytes + next.bytes() > MAX_BATCH_BYTES || !next.joins(&batch[0]) {
            *carry = Some(next);
            break;
        }
        bytes += next.bytes();
        batch.push(next);
    }
    batch
}

/// Writes one entry holding `batch` and hands each write its reply.
async fn submit(group: Arc<str>, raft: Raft, batch: Vec<Pending>, histograms: Histograms) {
    let (mut commands, replies): (Vec<Vec<u8>>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    histograms.batch.record(commands.len() as f64);
    let payload = match commands.len() {
        1 => Command::One(commands.pop().unwrap_or_default()),
        _ => Command::Batch(commands),
    };
    let started = std::time::Instant::now();
    let written = raft.client_write(payload).await;
    histograms.seconds.record(started.elapsed().as_secs_f64());
    match written {
        Ok(response) if response.data.0.len() == replies.len() => {
            for (reply, data) in replies.into_iter().zip(response.data.0) {
                let _ = reply.send(Ok(data));
            }
        }
        Ok(response) => {
            let reason = format!(
                "{} replies to a batch of {} commands",
                response.data.0.len(),
                replies.len()
            );
            for reply in replies {
                let _ = reply.send(Err(Error::Fatal {
                    group: group.to_string(),
                    reason: reason.clone(),
                }));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(write_error(&group, e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Replies = Vec<oneshot::Receiver<Result<Vec<u8>>>>;

    fn queue(sizes: &[usize]) -> (mpsc::UnboundedReceiver<Pending>, Replies) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut replies = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let (reply, wait) = oneshot::channel();
            let mut command = vec![0; *size];
            if let Some(b) = command.first_mut() {
                *b = i as u8;
            }
            tx.send(Pending { command, reply }).unwrap();
            replies.push(wait);
        }
        (rx, replies)
    }

    fn firsts(batch: &[Pending]) -> Vec<u8> {
        batch.iter().map(|p| p.command[0]).collect()
    }

    #[test]
    fn a_batch_takes_what_is_queued_up_to_the_command_limit() {
        let (mut rx, _replies) = queue(&vec![10; MAX_BATCH_COMMANDS + 5]);
        let mut carry = None;
        let first = rx.try_recv().unwrap();
        let batch = collect(first, &mut rx, &mut carry);
        assert_eq!(batch.len(), MAX_BATCH_COMMANDS);
        assert_eq!(firsts(&batch[..3]), vec![0, 1, 2], "in arrival order");
        assert!(carry.is_none());
        let first = rx.try_recv().unwrap();
        assert_eq!(collect(first, &mut rx, &mut carry).len(), 5);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_batch_stops_at_the_byte_limit_and_carries_the_next_write_over() {
        let half = MAX_BATCH_BYTES / 2;
        let (mut rx, _replies) = queue(&[half, half, 1, MAX_BATCH_BYTES * 2, 1]);
        let mut carry = None;
        let first = rx.try_recv().unwrap();
        let batch = collect(first, &mut rx, &mut carry);
        assert_eq!(firsts(&batch), vec![0, 1]);
        let next = carry.take().expect("the write that did not fit");
        assert_eq!(next.command[0], 2);
        // the carried write starts the next batch; an oversized write travels alone
        let batch = collect(next, &mut rx, &mut carry);
        assert_eq!(firsts(&batch), vec![2]);
        let big = carry.take().expect("the oversized write");
        let batch = collect(big, &mut rx, &mut carry);
        assert_eq!(firsts(&batch), vec![3]);
        assert_eq!(carry.take().map(|p| p.command[0]), Some(4));
    }
}
