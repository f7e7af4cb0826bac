//! Fast failover: a follower that loses its connection with its group's leader, and finds
//! nothing listening on the leader's port any more, campaigns at once instead of waiting out
//! the leader lease and an election timeout.
//!
//! openraft 0.9 makes a follower that saw a leader wait the leader lease
//! (`election_timeout_max`) plus a random election timeout before it campaigns, and voters
//! refuse other candidates while their own lease on the leader holds. Both are right for a
//! leader that is merely slow or partitioned away: they keep a healthy leader from being
//! deposed. When the leader's process is gone (its port refuses connections while its host
//! answers: a crash, a `kill -9`, a stop), waiting is pure unavailability. Then every
//! follower that notices campaigns; a follower that has already voted for another survivor
//! stops, and candidates that split a term retry after a short random pause (a candidate's
//! own vote is not committed, so it grants a later term at once).
//!
//! Safety does not depend on any of this: elections are still Raft elections (a majority, an
//! up-to-date log). A wrong hint costs at most one extra election.
use std::{collections::HashSet, sync::Arc, time::Duration};

use network::{ClusterNode, MessagingService, Reachability};
use openraft::ServerState;
use parking_lot::Mutex;
use rand::Rng;
use tokio::{sync::broadcast, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{group::RaftGroup, types::node_id};

/// How long the probe of a lost leader's port may take: a refusal on a live host is
/// immediate, anything slower is not a refusal.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// Probes of a lost leader that still listens (a connection that broke for another reason
/// than a stop: a stopping node closes its listener before its connections).
const PROBES: u32 = 5;
const PROBE_PAUSE: Duration = Duration::from_millis(20);

/// The groups running on this node, when asked.
pub(crate) type Groups = Arc<dyn Fn() -> Vec<RaftGroup> + Send + Sync>;

/// Follow `losses` until `cancel`: on the loss of a node that leads groups this node votes
/// in, probe it and, if its port refuses, campaign in each of those groups.
pub(crate) async fn run(
    mut losses: broadcast::Receiver<ClusterNode>,
    messaging: MessagingService,
    groups: Groups,
    tracker: TaskTracker,
    cancel: CancellationToken,
) -> Result<(), lifecycle::BoxError> {
    let campaigning: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        let lost = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = losses.recv() => r,
        };
        let lost = match lost {
            Ok(node) => node,
            // missed hints only cost the timers' wait
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        let lost_id = node_id(&lost.name);
        let orphans: Vec<RaftGroup> = groups()
            .into_iter()
            .filter(|g| follows(g, lost_id))
            .collect();
        if orphans.is_empty() {
            continue;
        }
        let (messaging, campaigning, cancel2, tracker2) = (
            messaging.clone(),
            Arc::clone(&campaigning),
            cancel.clone(),
            tracker.clone(),
        );
        tracker.spawn(async move {
            let gone = tokio::select! {
                () = cancel2.cancelled() => return,
                gone = is_gone(&messaging, &lost) => gone,
            };
            if !gone {
                tracing::debug!(peer = %lost.name, "lost the connection with a leader that may still run; election timers decide");
                return;
            }
            tracing::info!(peer = %lost.name, groups = orphans.len(), "leader's port refuses connections; campaigning at once");
            for group in orphans {
                if !campaigning.lock().insert(group.id().to_owned()) {
                    continue;
                }
                let (campaigning, cancel) = (Arc::clone(&campaigning), cancel2.clone());
                tracker2.spawn(async move {
                    campaign(&group, Some(lost_id), &cancel).await;
                    campaigning.lock().remove(group.id());
                });
            }
        });
    }
}

/// Whether `node`'s port refuses connections (its process is gone), probing a few times.
async fn is_gone(messaging: &MessagingService, node: &ClusterNode) -> bool {
    for _ in 0..PROBES {
        match messaging.probe(node, PROBE_TIMEOUT).await {
            Reachability::Refused => return true,
            Reachability::Unknown => return false,
            Reachability::Listening => tokio::time::sleep(PROBE_PAUSE).await,
        }
    }
    false
}

/// Whether this node is a voter of `group` that follows the leader `leader`.
fn follows(group: &RaftGroup, leader: u64) -> bool {
    let me = node_id(group.node());
    let rx = group.inner.raft.metrics();
    let m = rx.borrow();
    m.state != ServerState::Leader
        && m.current_leader == Some(leader)
        && m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == me)
}

/// Call elections in `group` until it has a leader other than `lost`, this node has voted
/// for another candidate, or a few election timeouts have passed (then the timers go on).
/// Pauses start at 1/8-1/4 of the minimum election timeout and double up to 1/2-1 of it.
/// With a lost leader the first election is called at once; without one (a group this node
/// just initialized, whose first election is under way) after a pause: the other voters may
/// not run the group yet, and the election timeout is far longer than their start.
pub(crate) async fn campaign(group: &RaftGroup, lost: Option<u64>, cancel: &CancellationToken) {
    let me = node_id(group.node());
    let (min_ms, max_ms, _) = group.inner.config.timing(group.inner.class);
    let deadline = Instant::now() + Duration::from_millis(3 * max_ms);
    let mut elections = 0u32;
    let mut stand = lost.is_some();
    let mut backoff = 0u32;
    while Instant::now() < deadline && !cancel.is_cancelled() {
        let settled = {
            let rx = group.inner.raft.metrics();
            let m = rx.borrow();
            let voted_for = m.vote.leader_id().voted_for();
            m.state == ServerState::Leader
                || m.current_leader.is_some_and(|l| Some(l) != lost)
                || voted_for.is_some_and(|v| v != me && Some(v) != lost)
        };
        if settled {
            break;
        }
        if stand {
            if group.inner.raft.trigger().elect().await.is_err() {
                // the group is shutting down
                break;
            }
            elections += 1;
            metrics::counter!("ignite_raft_fast_elections_total", "group" => group.id().to_owned())
                .increment(1);
        }
        stand = true;
        // candidates that split a term try again after a random pause, far shorter than the
        // election timeout at first and doubling up to it, so that vote round trips slower
        // than the pause (a loaded node) are not cut short by the next election forever
        let low = (min_ms / 8).max(1) << backoff;
        let pause = rand::rng().random_range(low.min(min_ms)..=(low * 2).min(min_ms).max(2));
        backoff = (backoff + 1).min(2);
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(pause)) => {}
        }
    }
    tracing::debug!(group_id = group.id(), elections, leader = ?group.leader(), "election campaign over");
}
