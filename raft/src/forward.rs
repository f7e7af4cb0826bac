//! Writes a follower forwards to the leader, in batches.
//!
//! A write made on a node that is not the leader travels to the leader and its reply comes
//! back. One message per write costs each of them a request, a reply, a handler task and
//! their encoding on both nodes; under load most of that is the same for many writes. The
//! writes queued while earlier forwards are in flight go to the leader as one
//! [`RaftRequest::WriteBatch`](crate::rpc::RaftRequest::WriteBatch) instead (writes for
//! different leaders never share one), which the leader hands to its own write path one by
//! one, in order, answering each. Every write keeps its own outcome and its own deadline;
//! a write refused before it was appended (the node is no longer the leader) is retried by
//! its caller as before.
use std::{sync::Arc, time::Duration};

use network::{MessagingService, TopologyService};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{
    batch::Queued,
    error::{Error, Result},
    rpc::{self, RaftReply, RaftRequest, Rejection},
};

/// Forward requests of one group in flight at once: a request is answered when its last
/// write is, so fewer would hold writes back behind slower ones.
const MAX_FORWARDS_IN_FLIGHT: usize = 32;

/// A write waiting to be forwarded to `leader`.
pub(crate) struct Forward {
    pub(crate) command: Vec<u8>,
    pub(crate) leader: String,
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<Result<Vec<u8>>>,
}

impl Queued for Forward {
    fn bytes(&self) -> usize {
        self.command.len()
    }

    fn joins(&self, first: &Self) -> bool {
        self.leader == first.leader
    }
}

/// Where the forwarder sends.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) group: Arc<str>,
    pub(crate) messaging: MessagingService,
    pub(crate) topology: TopologyService,
}

/// The error for a write the leader `leader` of `group` refused.
pub(crate) fn rejected(group: &str, leader: &str, rejection: Rejection) -> Error {
    match rejection {
        Rejection::NotLeader { leader } => Error::NotLeader {
            group: group.to_owned(),
            leader,
        },
        Rejection::Stopping(reason) => Error::Unreachable {
            node: leader.to_owned(),
            reason,
        },
        Rejection::Failed(reason) => Error::Rejected {
            group: group.to_owned(),
            reason,
        },
    }
}

/// A copy of a failed forward's error for each write of the batch (retryable stays
/// retryable).
fn copy(group: &str, leader: &str, e: &Error) -> Error {
    match e {
        Error::Timeout { group, what } => Error::Timeout {
            group: group.clone(),
            what: what.clone(),
        },
        Error::NotLeader { group, leader } => Error::NotLeader {
            group: group.clone(),
            leader: leader.clone(),
        },
        Error::Unreachable { node, reason } => Error::Unreachable {
            node: node.clone(),
            reason: reason.clone(),
        },
        Error::Stopping(s) => Error::Unreachable {
            node: leader.to_owned(),
            reason: s.to_string(),
        },
        other => Error::Rejected {
            group: group.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Sends `batch` (one leader) as one request and hands each write its outcome.
pub(crate) async fn submit(route: Route, batch: Vec<Forward>) {
    let Some(first) = batch.first() else {
        return;
    };
    let leader = first.leader.clone();
    let group = Arc::clone(&route.group);
    let latest = batch
        .iter()
        .map(|f| f.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let timeout = latest.saturating_duration_since(Instant::now());
    let (commands, replies): (Vec<Vec<u8>>, Vec<_>) =
        batch.into_iter().map(|f| (f.command, f.reply)).unzip();
    metrics::histogram!("ignite_raft_forward_batch", "group" => group.to_string())
        .record(commands.len() as f64);
    let expected = commands.len();
    let outcome = if timeout.is_zero() {
        Err(Error::Timeout {
            group: group.to_string(),
            what: "forwarding writes to the leader".into(),
        })
    } else {
        rpc::call(
            &route.messaging,
            &route.topology,
            &group,
            &leader,
            RaftRequest::WriteBatch(commands),
            timeout.max(Duration::from_millis(1)),
        )
        .await
    };
    let results: Vec<Result<Vec<u8>>> = match outcome {
        Ok(RaftReply::WriteBatch(Ok(results))) if results.len() == expected => results
            .into_iter()
            .map(|r| r.map_err(|rejection| rejected(&group, &leader, rejection)))
            .collect(),
        Ok(RaftReply::WriteBatch(Ok(results))) => {
            let e = Error::codec(
                "forwarded write replies",
                format!("{} replies to {expected} writes", results.len()),
            );
            (0..expected)
                .map(|_| Err(copy(&group, &leader, &e)))
                .collect()
        }
        Ok(RaftReply::WriteBatch(Err(rejection))) => {
            let e = rejected(&group, &leader, rejection);
            (0..expected)
                .map(|_| Err(copy(&group, &leader, &e)))
                .collect()
        }
        Ok(RaftReply::NoGroup) => (0..expected)
            .map(|_| {
                Err(rejected(
                    &group,
                    &leader,
                    Rejection::NotLeader { leader: None },
                ))
            })
            .collect(),
        Ok(_) => {
            let e = Error::codec("forwarded write reply", "unexpected reply kind");
            (0..expected)
                .map(|_| Err(copy(&group, &leader, &e)))
                .collect()
        }
        Err(e) => (0..expected)
            .map(|_| Err(copy(&group, &leader, &e)))
            .collect(),
    };
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// The forwarding queue of one group: batches go out until `cancel` or every sender is gone.
pub(crate) async fn run(
    route: Route,
    rx: mpsc::UnboundedReceiver<Forward>,
    cancel: tokio_util::sync::CancellationToken,
) -> std::result::Result<(), lifecycle::BoxError> {
    crate::batch::drive(rx, cancel, MAX_FORWARDS_IN_FLIGHT, |batch| {
        submit(route.clone(), batch)
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(leader: &str, command: u8) -> (Forward, oneshot::Receiver<Result<Vec<u8>>>) {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + Duration::from_secs(1);
        let f = Forward {
            command: vec![command],
            leader: leader.to_owned(),
            deadline,
            reply,
        };
        (f, rx)
    }

    #[tokio::test]
    async fn writes_for_different_leaders_never_share_a_batch() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut waits = Vec::new();
        for (leader, c) in [("a", 1), ("a", 2), ("b", 3), ("a", 4)] {
            let (f, wait) = forward(leader, c);
            tx.send(f).unwrap();
            waits.push(wait);
        }
        drop(tx);
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        crate::batch::drive(
            rx,
            tokio_util::sync::CancellationToken::new(),
            1,
            move |batch: Vec<Forward>| {
                record.lock().push(
                    batch
                        .iter()
                        .map(|f| (f.leader.clone(), f.command[0]))
                        .collect::<Vec<_>>(),
                );
                async {}
            },
        )
        .await;
        let a = |c| ("a".to_owned(), c);
        assert_eq!(
            *seen.lock(),
            vec![vec![a(1), a(2)], vec![("b".to_owned(), 3)], vec![a(4)]]
        );
    }

    #[test]
    fn a_failed_forward_stays_retryable_for_every_write() {
        let e = Error::Unreachable {
            node: "n2".into(),
            reason: "connection reset".into(),
        };
        assert!(copy("g", "n2", &e).is_retryable());
        let t = Error::Timeout {
            group: "g".into(),
            what: "request".into(),
        };
        assert!(copy("g", "n2", &t).is_retryable());
        let refused = rejected("g", "n2", Rejection::Failed("state machine".into()));
        assert!(!copy("g", "n2", &refused).is_retryable());
        assert!(rejected("g", "n2", Rejection::NotLeader { leader: None }).is_retryable());
    }
}
