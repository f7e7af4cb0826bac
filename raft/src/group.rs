//! [`RaftGroup`]: one Raft group running on this node, with openraft kept inside.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use lifecycle::{StopGuard, Stopping};
use network::{MessagingService, TopologyService};
use openraft::{
    error::{CheckIsLeaderError, ClientWriteError, Fatal, RaftError},
    BasicNode, ChangeMembers, RaftMetrics, ServerState,
};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{
    batch::Pending,
    config::{GroupClass, RaftConfiguration},
    error::{Error, Result},
    forward::{self, Forward},
    rpc::{self, RaftReply, RaftRequest, Rejection},
    types::{basic_node, node_id, Command, LogPosition, Raft},
};

/// The role of this node in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Accepts writes and replicates them.
    Leader,
    /// A voter following the leader.
    Follower,
    /// A voter asking for votes.
    Candidate,
    /// Replicates without voting.
    Learner,
    /// The group stopped on this node.
    Shutdown,
}

impl Role {
    fn from_state(state: ServerState) -> Self {
        match state {
            ServerState::Leader => Self::Leader,
            ServerState::Follower => Self::Follower,
            ServerState::Candidate => Self::Candidate,
            ServerState::Learner => Self::Learner,
            ServerState::Shutdown => Self::Shutdown,
        }
    }

    /// A number for gauges: leader 0, follower 1, candidate 2, learner 3, shutdown 4.
    pub fn code(self) -> u8 {
        match self {
            Self::Leader => 0,
            Self::Follower => 1,
            Self::Candidate => 2,
            Self::Learner => 3,
            Self::Shutdown => 4,
        }
    }
}

/// A point-in-time view of a group on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMetrics {
    /// The group id.
    pub group: String,
    /// This node's name.
    pub node: String,
    /// This node's role.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The leader's node name, when known.
    pub leader: Option<String>,
    /// Index of the last entry in the local log.
    pub last_log_index: Option<u64>,
    /// The last entry applied to the state machine.
    pub last_applied: Option<LogPosition>,
    /// The last entry covered by the current snapshot.
    pub snapshot: Option<LogPosition>,
    /// The last purged entry.
    pub purged: Option<LogPosition>,
    /// Voters of the current membership.
    pub voters: Vec<String>,
    /// Learners of the current membership.
    pub learners: Vec<String>,
    /// On the leader: entries each peer is behind the leader's last log index.
    pub replication_lag: BTreeMap<String, u64>,
}

impl GroupMetrics {
    pub(crate) fn from_raft(group: &str, node: &str, m: &RaftMetrics<u64, BasicNode>) -> Self {
        let membership = m.membership_config.membership();
        let name_of = |id: &u64| {
            membership
                .get_node(id)
                .map_or_else(|| format!("#{id}"), |n| n.addr.clone())
        };
        let last_log = m.last_log_index.unwrap_or(0);
        let replication_lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, matched)| {
                        let matched = matched.map_or(0, |l| l.index);
                        (name_of(id), last_log.saturating_sub(matched))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            group: group.to_owned(),
            node: node.to_owned(),
            role: Role::from_state(m.state),
            term: m.current_term,
            leader: m.current_leader.as_ref().map(name_of),
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.as_ref().map(LogPosition::from),
            snapshot: m.snapshot.as_ref().map(LogPosition::from),
            purged: m.purged.as_ref().map(LogPosition::from),
            voters: membership.voter_ids().map(|id| name_of(&id)).collect(),
            learners: membership.learner_ids().map(|id| name_of(&id)).collect(),
            replication_lag,
        }
    }
}

/// A group's gauges, labelled by group (and peer for the lag), registered once: publishing
/// a change is then a few stores instead of a registry lookup and label copies per gauge.
pub(crate) struct GroupGauges {
    group: String,
    role: metrics::Gauge,
    term: metrics::Gauge,
    is_leader: metrics::Gauge,
    last_log_index: metrics::Gauge,
    applied_index: metrics::Gauge,
    lag: BTreeMap<String, metrics::Gauge>,
}

impl GroupGauges {
    pub(crate) fn new(group: &str) -> Self {
        let gauge = |name: &'static str| metrics::gauge!(name, "group" => group.to_owned());
        Self {
            group: group.to_owned(),
            role: gauge("ignite_raft_role"),
            term: gauge("ignite_raft_term"),
            is_leader: gauge("ignite_raft_is_leader"),
            last_log_index: gauge("ignite_raft_last_log_index"),
            applied_index: gauge("ignite_raft_applied_index"),
            lag: BTreeMap::new(),
        }
    }

    /// Sets every gauge from `m`.
    pub(crate) fn publish(&mut self, m: &GroupMetrics) {
        self.role.set(f64::from(m.role.code()));
        self.term.set(m.term as f64);
        self.is_leader
            .set(if m.role == Role::Leader { 1.0 } else { 0.0 });
        self.last_log_index
            .set(m.last_log_index.unwrap_or(0) as f64);
        self.applied_index
            .set(m.last_applied.map_or(0, |p| p.index) as f64);
        for (peer, lag) in &m.replication_lag {
            if !self.lag.contains_key(peer) {
                let gauge = metrics::gauge!(
                    "ignite_raft_replication_lag",
                    "group" => self.group.clone(),
                    "peer" => peer.clone()
                );
                self.lag.insert(peer.clone(), gauge);
            }
            if let Some(gauge) = self.lag.get(peer) {
                gauge.set(*lag as f64);
            }
        }
    }
}

pub(crate) struct GroupInner {
    pub(crate) id: String,
    pub(crate) local: String,
    pub(crate) raft: Raft,
    pub(crate) config: RaftConfiguration,
    /// Which timeouts of `config` the group runs with.
    pub(crate) class: GroupClass,
    pub(crate) messaging: MessagingService,
    pub(crate) topology: TopologyService,
    pub(crate) guard: StopGuard,
    /// The group-commit queue, when the state machine allows batching.
    pub(crate) batcher: Option<mpsc::UnboundedSender<Pending>>,
    /// The queue of writes forwarded to the leader in batches.
    pub(crate) forwarder: mpsc::UnboundedSender<Forward>,
}

/// One Raft group on this node. Cheap to clone; every clone is the same group.
#[derive(Clone)]
pub struct RaftGroup {
    pub(crate) inner: Arc<GroupInner>,
}

impl std::fmt::Debug for RaftGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftGroup")
            .field("id", &self.inner.id)
            .field("node", &self.inner.local)
            .finish()
    }
}

fn fatal(group: &str, e: &Fatal<u64>) -> Error {
    match e {
        Fatal::Stopped => {
            Error::Stopping(Stopping::ComponentStopping(format!("raft group {group}")))
        }
        other => Error::Fatal {
            group: group.to_owned(),
            reason: other.to_string(),
        },
    }
}

pub(crate) fn write_error(
    group: &str,
    e: RaftError<u64, ClientWriteError<u64, BasicNode>>,
) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            group: group.to_owned(),
            leader: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => Error::Rejected {
            group: group.to_owned(),
            reason: c.to_string(),
        },
        RaftError::Fatal(f) => fatal(group, &f),
    }
}

fn read_error(group: &str, e: RaftError<u64, CheckIsLeaderError<u64, BasicNode>>) -> Error {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => Error::NotLeader {
            group: group.to_owned(),
            leader: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => Error::Timeout {
            group: group.to_owned(),
            what: format!("read index ({q})"),
        },
        RaftError::Fatal(f) => fatal(group, &f),
    }
}

pub(crate) fn to_rejection(e: &Error) -> Rejection {
    match e {
        Error::NotLeader { leader, .. } => Rejection::NotLeader {
            leader: leader.clone(),
        },
        Error::Stopping(s) => Rejection::Stopping(s.to_string()),
        other => Rejection::Failed(other.to_string()),
    }
}

impl RaftGroup {
    /// The group id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.local
    }

    /// Current metrics of the group on this node.
    pub fn metrics(&self) -> GroupMetrics {
        let rx = self.inner.raft.metrics();
        let m = rx.borrow();
        GroupMetrics::from_raft(&self.inner.id, &self.inner.local, &m)
    }

    /// The leader's node name, when known.
    pub fn leader(&self) -> Option<String> {
        let rx = self.inner.raft.metrics();
        let m = rx.borrow();
        let membership = m.membership_config.membership();
        m.current_leader
            .and_then(|id| membership.get_node(&id).map(|n| n.addr.clone()))
    }

    /// True when this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// This node's role, and whether node `name` is a voter or a learner of the current
    /// membership: what [`metrics`](Self::metrics) tells, without building all of it (loops
    /// over hundreds of replicas ask this several times a second).
    pub fn role_and_membership(&self, name: &str) -> (Role, bool) {
        let rx = self.inner.raft.metrics();
        let m = rx.borrow();
        let member = m
            .membership_config
            .membership()
            .get_node(&crate::types::node_id(name))
            .is_some();
        (Role::from_state(m.state), member)
    }

    fn check_running(&self) -> Result<()> {
        if self.inner.guard.is_blocked() {
            return Err(Error::Stopping(self.inner.guard.error()));
        }
        Ok(())
    }

    fn timeout(&self, what: &str) -> Error {
        Error::Timeout {
            group: self.inner.id.clone(),
            what: what.to_owned(),
        }
    }

    /// Waits until a metric satisfies `cond` or `deadline` passes.
    async fn wait_until(
        &self,
        deadline: Instant,
        what: &str,
        cond: impl Fn(&RaftMetrics<u64, BasicNode>) -> bool,
    ) -> Result<RaftMetrics<u64, BasicNode>> {
        let mut rx = self.inner.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if cond(&m) {
                    return Ok(m.clone());
                }
                if m.state == ServerState::Shutdown {
                    return Err(Error::Stopping(Stopping::ComponentStopping(format!(
                        "raft group {}",
                        self.inner.id
                    ))));
                }
            }
            let changed = self
                .inner
                .guard
                .wrap(tokio::time::timeout_at(deadline, rx.changed()))
                .await?;
            match changed {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(Error::Stopping(Stopping::ComponentStopping(format!(
                        "raft group {}",
                        self.inner.id
                    ))))
                }
                Err(_) => return Err(self.timeout(what)),
            }
        }
    }

    /// Waits up to `timeout` until the group has a leader; returns its node name.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let m = self
            .wait_until(deadline, "waiting for a leader", |m| {
                m.current_leader.is_some()
            })
            .await?;
        Ok(
            GroupMetrics::from_raft(&self.inner.id, &self.inner.local, &m)
                .leader
                .unwrap_or_default(),
        )
    }

    /// Waits up to `timeout` until this node applied the entry at `index`.
    pub async fn wait_for_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        self.wait_until(deadline, "waiting for the applied index", |m| {
            m.last_applied.as_ref().is_some_and(|l| l.index >= index)
        })
        .await
        .map(|_| ())
    }

    /// Waits up to `timeout` until `cond` holds for this node's metrics.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&GroupMetrics) -> bool,
    ) -> Result<GroupMetrics> {
        let deadline = Instant::now() + timeout;
        let (id, local) = (self.inner.id.clone(), self.inner.local.clone());
        let m = self
            .wait_until(deadline, what, |m| {
                cond(&GroupMetrics::from_raft(&id, &local, m))
            })
            .await?;
        Ok(GroupMetrics::from_raft(&id, &local, &m))
    }

    /// Waits until the leader changes (or `backoff` passes) before retrying.
    async fn wait_for_change(&self, deadline: Instant, backoff: Duration) -> Result<()> {
        let mut rx = self.inner.raft.metrics();
        rx.borrow_and_update();
        let until = deadline.min(Instant::now() + backoff);
        let _ = self
            .inner
            .guard
            .wrap(tokio::time::timeout_at(until, rx.changed()))
            .await?;
        if Instant::now() >= deadline {
            return Err(self.timeout("write"));
        }
        Ok(())
    }

    fn stopped(&self) -> Error {
        Error::Stopping(Stopping::ComponentStopping(format!(
            "raft group {}",
            self.inner.id
        )))
    }

    /// Writes on this node, which must be the leader: through the group-commit queue when
    /// the group batches, else as an entry of its own.
    pub(crate) async fn local_write(&self, command: Vec<u8>) -> Result<Vec<u8>> {
        self.check_running()?;
        if let Some(batcher) = &self.inner.batcher {
            let (reply, rx) = oneshot::channel();
            batcher
                .send(Pending { command, reply })
                .map_err(|_| self.stopped())?;
            return self
                .inner
                .guard
                .wrap(rx)
                .await?
                .map_err(|_| self.stopped())?;
        }
        let response = self
            .inner
            .guard
            .wrap(self.inner.raft.client_write(Command::One(command)))
            .await?
            .map_err(|e| write_error(&self.inner.id, e))?;
        response
            .data
            .0
            .into_iter()
            .next()
            .ok_or_else(|| Error::Fatal {
                group: self.inner.id.clone(),
                reason: "no reply to a write".into(),
            })
    }

    /// Replicates `command` and returns the state machine's reply once it is committed and
    /// applied on the leader. From a follower or learner the write is forwarded to the
    /// leader; it retries while no leader is known, within `raft.write_timeout_ms`.
    ///
    /// A [`Error::Timeout`] or [`Error::Unreachable`] leaves the outcome unknown: the command
    /// may still be applied, so commands should be idempotent.
    pub async fn write(&self, command: Vec<u8>) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.inner.config.write_timeout();
        let backoff = Duration::from_millis(self.inner.config.heartbeat_interval_ms);
        loop {
            self.check_running()?;
            let leader = self.metrics().leader;
            let Some(leader) = leader else {
                self.wait_for_change(deadline, backoff).await?;
                continue;
            };
            let result = if leader == self.inner.local {
                self.local_write(command.clone()).await
            } else {
                let (reply, rx) = oneshot::channel();
                self.inner
                    .forwarder
                    .send(Forward {
                        command: command.clone(),
                        leader,
                        deadline,
                        reply,
                    })
                    .map_err(|_| self.stopped())?;
                // a batch waits for its latest deadline; each write keeps its own
                match tokio::time::timeout_at(deadline, self.inner.guard.wrap(rx)).await {
                    Ok(reply) => reply?.map_err(|_| self.stopped())?,
                    Err(_elapsed) => Err(Error::Timeout {
                        group: self.inner.id.clone(),
                        what: "a write forwarded to the leader".into(),
                    }),
                }
            };
            match result {
                // refused before anything was appended: safe to retry at the new leader
                Err(Error::NotLeader { .. }) => self.wait_for_change(deadline, backoff).await?,
                other => return other,
            }
        }
    }

    /// The error for a request the leader `leader` refused.
    fn rejected(&self, leader: &str, rejection: Rejection) -> Error {
        forward::rejected(&self.inner.id, leader, rejection)
    }

    /// Read index on this node, which must be the leader: the log index a linearizable read
    /// must wait for.
    ///
    /// openraft gives the quorum confirmation `election_timeout_min_ms`; under load a round
    /// can miss it while this node is still the leader, so a missed round is retried
    /// (within `raft.write_timeout_ms`) instead of failing the read.
    pub(crate) async fn local_read_index(&self) -> Result<u64> {
        let deadline = Instant::now() + self.inner.config.write_timeout();
        loop {
            self.check_running()?;
            let result = self
                .inner
                .guard
                .wrap(self.inner.raft.get_read_log_id())
                .await?;
            match result {
                Ok((read, _applied)) => return Ok(read.map_or(0, |l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))
                    if Instant::now() < deadline =>
                {
                    tracing::debug!(group_id = %self.inner.id, reason = %q, "read index quorum round missed, retrying");
                    let backoff = Duration::from_millis(self.inner.config.heartbeat_interval_ms);
                    self.wait_for_change(deadline, backoff).await?;
                }
                Err(e) => return Err(read_error(&self.inner.id, e)),
            }
        }
    }

    /// Returns once this node's state machine reflects every write acknowledged before the
    /// call (read index: the leader confirms its leadership with a quorum, then this node
    /// waits until it applied up to the leader's commit index). Works on followers and
    /// learners too.
    pub async fn linearizable_read(&self) -> Result<()> {
        let deadline = Instant::now() + self.inner.config.write_timeout();
        let backoff = Duration::from_millis(self.inner.config.heartbeat_interval_ms);
        loop {
            self.check_running()?;
            let Some(leader) = self.metrics().leader else {
                self.wait_for_change(deadline, backoff).await?;
                continue;
            };
            let index = if leader == self.inner.local {
                self.local_read_index().await
            } else {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match rpc::call(
                    &self.inner.messaging,
                    &self.inner.topology,
                    &self.inner.id,
                    &leader,
                    RaftRequest::ReadIndex,
                    remaining,
                )
                .await?
                {
                    RaftReply::ReadIndex(Ok(i)) => Ok(i),
                    RaftReply::ReadIndex(Err(rejection)) => Err(self.rejected(&leader, rejection)),
                    RaftReply::NoGroup => {
                        Err(self.rejected(&leader, Rejection::NotLeader { leader: None }))
                    }
                    _ => Err(Error::codec("read index reply", "unexpected reply kind")),
                }
            };
            match index {
                Ok(index) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    return self.wait_for_applied(index, remaining).await;
                }
                Err(Error::NotLeader { .. }) => self.wait_for_change(deadline, backoff).await?,
                Err(e) => return Err(e),
            }
        }
    }

    fn not_leader_check(&self) -> Result<()> {
        self.check_running()?;
        let m = self.metrics();
        if m.role != Role::Leader {
            return Err(Error::NotLeader {
                group: self.inner.id.clone(),
                leader: m.leader,
            });
        }
        Ok(())
    }

    /// On the leader: adds `name` as a learner and returns once it has caught up (or after
    /// `raft.write_timeout_ms`, with a timeout error; the learner stays added).
    pub async fn add_learner(&self, name: &str) -> Result<()> {
        self.not_leader_check()?;
        let fut = self
            .inner
            .raft
            .add_learner(node_id(name), basic_node(name), true);
        match self
            .inner
            .guard
            .wrap(tokio::time::timeout(self.inner.config.write_timeout(), fut))
            .await?
        {
            Ok(r) => r.map(|_| ()).map_err(|e| write_error(&self.inner.id, e)),
            Err(_) => Err(self.timeout(&format!("adding learner {name}"))),
        }
    }

    /// On the leader: makes exactly `voters` the voters (joint consensus). New names are
    /// added as learners first; voters left out are removed from the group entirely.
    pub async fn change_membership(&self, voters: &[String]) -> Result<()> {
        self.not_leader_check()?;
        if voters.is_empty() {
            return Err(Error::Rejected {
                group: self.inner.id.clone(),
                reason: "a group needs at least one voter".into(),
            });
        }
        let known: BTreeSet<String> = {
            let m = self.metrics();
            m.voters.into_iter().chain(m.learners).collect()
        };
        for name in voters {
            if !known.contains(name) {
                self.add_learner(name).await?;
            }
        }
        let ids: BTreeSet<u64> = voters.iter().map(|n| node_id(n)).collect();
        let fut = self
            .inner
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(ids), false);
        self.run_change(fut, "changing membership").await
    }

    /// On the leader: removes learner `name` from the group.
    pub async fn remove_learner(&self, name: &str) -> Result<()> {
        self.not_leader_check()?;
        if self.metrics().voters.iter().any(|v| v == name) {
            return Err(Error::Rejected {
                group: self.inner.id.clone(),
                reason: format!("node {name} is a voter; change the voters to remove it"),
            });
        }
        let ids = BTreeSet::from([node_id(name)]);
        let fut = self
            .inner
            .raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false);
        self.run_change(fut, &format!("removing learner {name}"))
            .await
    }

    async fn run_change<F, T>(&self, fut: F, what: &str) -> Result<()>
    where
        F: std::future::Future<
            Output = std::result::Result<T, RaftError<u64, ClientWriteError<u64, BasicNode>>>,
        >,
    {
        match self
            .inner
            .guard
            .wrap(tokio::time::timeout(self.inner.config.write_timeout(), fut))
            .await?
        {
            Ok(r) => r.map(|_| ()).map_err(|e| write_error(&self.inner.id, e)),
            Err(_) => Err(self.timeout(what)),
        }
    }

    /// Asks this node to build a snapshot now (it also builds one by the configured policy).
    pub async fn trigger_snapshot(&self) -> Result<()> {
        self.check_running()?;
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| fatal(&self.inner.id, &e))
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    fn metrics(role: Role, last_log: u64, lag: &[(&str, u64)]) -> GroupMetrics {
        GroupMetrics {
            group: "g".into(),
            node: "n1".into(),
            role,
            term: 3,
            leader: Some("n1".into()),
            last_log_index: Some(last_log),
            last_applied: Some(LogPosition {
                index: last_log - 1,
                term: 3,
            }),
            snapshot: None,
            purged: None,
            voters: vec!["n1".into(), "n2".into()],
            learners: Vec::new(),
            replication_lag: lag.iter().map(|(p, l)| ((*p).to_owned(), *l)).collect(),
        }
    }

    /// (name, labels, value) of every gauge the recorder holds.
    fn gauge_values(recorder: &DebuggingRecorder) -> Vec<(String, Vec<String>, f64)> {
        let mut out: Vec<_> = recorder
            .snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Gauge(v) => Some((
                    key.key().name().to_owned(),
                    key.key()
                        .labels()
                        .map(|l| format!("{}={}", l.key(), l.value()))
                        .collect(),
                    v.into_inner(),
                )),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    #[test]
    fn gauges_registered_once_follow_every_publish() {
        let recorder = DebuggingRecorder::new();
        let snapshot = metrics::with_local_recorder(&recorder, || {
            let mut gauges = GroupGauges::new("g");
            gauges.publish(&metrics(Role::Leader, 10, &[("n2", 4)]));
            // a later change, and a peer that appears later, land on the same handles
            gauges.publish(&metrics(Role::Follower, 12, &[("n2", 0), ("n3", 7)]));
            gauge_values(&recorder)
        });
        let group = vec!["group=g".to_owned()];
        let value = |name: &str, labels: &[String]| {
            snapshot
                .iter()
                .find(|(n, l, _)| n == name && l == labels)
                .map(|(_, _, v)| *v)
        };
        assert_eq!(value("ignite_raft_role", &group), Some(1.0), "follower");
        assert_eq!(value("ignite_raft_is_leader", &group), Some(0.0));
        assert_eq!(value("ignite_raft_term", &group), Some(3.0));
        assert_eq!(value("ignite_raft_last_log_index", &group), Some(12.0));
        assert_eq!(value("ignite_raft_applied_index", &group), Some(11.0));
        let lag = |peer: &str| vec!["group=g".to_owned(), format!("peer={peer}")];
        assert_eq!(value("ignite_raft_replication_lag", &lag("n2")), Some(0.0));
        assert_eq!(value("ignite_raft_replication_lag", &lag("n3")), Some(7.0));
        assert_eq!(
            snapshot.len(),
            7,
            "one series per gauge and peer: {snapshot:?}"
        );
    }
}
