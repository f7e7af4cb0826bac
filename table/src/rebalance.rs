//! Rebalance: moving a partition's replicas to new assignments through Raft membership
//! changes, and the stable assignments that record what each group actually runs.
//!
//! `assignments/<table>` (written by `affinity`) is the *pending* target of each partition;
//! `assignments.stable/<table_id>/<partition>` is the *stable* membership: the voters of the
//! group's last committed configuration, with the log index it was read at. The partition
//! leader drives every change:
//! 1. each target node not yet in the group is added as a learner (its node starts an empty
//!    replica that joins, it never initializes the group);
//! 2. the leader waits until the learners are within [`MAX_CATCH_UP_LAG`] entries;
//! 3. it changes the voters to the target (joint consensus inside openraft), then removes
//!    learners that are not in the target;
//! 4. it records the new voters as stable, conditional on a newer log index;
//! 5. a node in neither stable nor pending destroys its replica, only once its own group
//!    view no longer counts it as a voter (or lags behind the stable record).
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use metastorage::{CompareOp, Condition, Entry, MetaStorageManager, Operation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    error::{Error, Result},
    manager::{table_key, Shared},
    partition::Partition,
};

/// The MetaStorage prefix of stable assignments: `assignments.stable/<table_id>/<partition>`.
pub const STABLE_PREFIX: &[u8] = b"assignments.stable/";

/// The format version byte in front of a stored stable assignment.
const FORMAT: u8 = 1;

/// How far (in log entries) a learner may lag behind the leader to be promoted.
pub const MAX_CATCH_UP_LAG: u64 = 64;

/// How long one attempt waits for learners to catch up before giving up until the next tick.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(30);

/// How often every leader checks its partitions against their assignments besides the
/// wake-ups on catalog changes and on role or membership changes of local groups: the retry
/// of a failed step.
pub(crate) const TICK: Duration = Duration::from_secs(2);

/// The MetaStorage key of the stable assignment of `table_id`/`partition`.
pub fn stable_key(table_id: &str, partition: u32) -> Vec<u8> {
    let mut key = STABLE_PREFIX.to_vec();
    key.extend_from_slice(format!("{table_id}/{partition}").as_bytes());
    key
}

/// What a partition's Raft group runs: its voters, as of a log index of the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableAssignment {
    /// The group's log index the voters were read at (0 for the table's creation); a record
    /// only replaces one with a lower index.
    pub index: u64,
    /// The voters, in assignment order.
    pub voters: Vec<String>,
}

impl StableAssignment {
    /// The bytes ordered like the index: `FORMAT`, the index big-endian, then postcard.
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let body = Error::postcard("stable assignment", &self.voters)?;
        let mut out = Self::prefix(self.index);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The stored bytes of every record with index `index` start with these (and compare
    /// greater than them), those of lower indexes compare less.
    fn prefix(index: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        out.push(FORMAT);
        out.extend_from_slice(&index.to_be_bytes());
        out
    }

    /// The (table id, partition) and record of an entry under [`STABLE_PREFIX`]; `None` as
    /// the record of a tombstone.
    pub(crate) fn decode(entry: &Entry) -> Result<((String, u32), Option<Self>)> {
        const WHAT: &str = "stable assignment";
        let rest = entry
            .key
            .strip_prefix(STABLE_PREFIX)
            .ok_or_else(|| Error::decode(WHAT, "not an assignments.stable/ key"))?;
        let rest =
            std::str::from_utf8(rest).map_err(|_| Error::decode(WHAT, "key is not utf-8"))?;
        let (table_id, partition) = rest
            .rsplit_once('/')
            .and_then(|(t, p)| Some((t.to_owned(), p.parse::<u32>().ok()?)))
            .ok_or_else(|| Error::decode(WHAT, format!("malformed key {rest}")))?;
        let Some(bytes) = entry.live_value() else {
            return Ok(((table_id, partition), None));
        };
        if bytes.len() < 9 || bytes[0] != FORMAT {
            return Err(Error::decode(
                WHAT,
                format!("unknown format of {table_id}/{partition}"),
            ));
        }
        let mut index = [0u8; 8];
        index.copy_from_slice(&bytes[1..9]);
        let voters: Vec<String> = postcard::from_bytes(&bytes[9..])
            .map_err(|e| Error::decode(WHAT, format!("{table_id}/{partition}: {e}")))?;
        Ok((
            (table_id, partition),
            Some(Self {
                index: u64::from_be_bytes(index),
                voters,
            }),
        ))
    }
}

/// Records `stable` for partition `partition` of `plan`'s table unless a record with the
/// same or a newer index is there or the table is gone (or is another table of the same
/// name now); true if written.
pub(crate) async fn store_stable(
    ms: &MetaStorageManager,
    plan: &Plan,
    table_id: &str,
    partition: u32,
    stable: &StableAssignment,
) -> Result<bool> {
    let key = stable_key(table_id, partition);
    let newer = Condition::not_exists(key.clone()).or(Condition::value(
        key.clone(),
        CompareOp::Lt,
        StableAssignment::prefix(stable.index),
    ));
    let same_table =
        Condition::revision(table_key(&plan.table), CompareOp::Eq, plan.table_revision);
    Ok(ms
        .invoke(
            same_table.and(newer),
            vec![Operation::put(key, stable.encode()?)],
            Vec::new(),
        )
        .await?)
}

/// What a leader works toward for one partition.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The table's name.
    pub(crate) table: String,
    /// The revision of the table's definition (names this incarnation of the name).
    pub(crate) table_revision: u64,
    /// The pending assignment.
    pub(crate) target: Vec<String>,
    /// The stable record, if any.
    pub(crate) stable: Option<StableAssignment>,
}

/// The leader side of rebalancing on one node: a tick compares every local replica that
/// leads its group with its pending assignment and runs at most one change per partition.
pub(crate) struct Rebalancer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) ms: Arc<MetaStorageManager>,
    pub(crate) local: Arc<tokio::sync::Mutex<HashMap<(String, u32), Partition>>>,
    pub(crate) node: String,
    pub(crate) in_flight: Arc<Mutex<HashSet<(String, u32)>>>,
    pub(crate) wake: Arc<Notify>,
    /// Role, leader and membership changes of this node's raft groups.
    pub(crate) role_changes: tokio::sync::watch::Receiver<u64>,
}

impl Rebalancer {
    /// Runs ticks until `cancel`; the changes run as tasks on `tasks`.
    pub(crate) async fn run(
        self: Arc<Self>,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> std::result::Result<(), lifecycle::BoxError> {
        let mut role_changes = self.role_changes.clone();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = self.wake.notified() => {}
                changed = role_changes.changed() => if changed.is_err() {
                    // the raft manager is gone: the node is stopping
                    cancel.cancelled().await;
                    return Ok(());
                },
                () = tokio::time::sleep(TICK) => {}
            }
            for (partition, plan) in self.tick().await {
                let key = (partition.table_id().to_owned(), partition.partition());
                if !self.in_flight.lock().insert(key.clone()) {
                    continue;
                }
                let this = Arc::clone(&self);
                let cancel = cancel.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        result = this.drive(&partition, &plan) => if let Err(e) = result {
                            tracing::debug!(
                                table_id = %key.0,
                                partition = key.1,
                                error = %e,
                                "partition rebalance step failed, retrying at the next tick"
                            );
                        }
                    }
                    this.in_flight.lock().remove(&key);
                });
            }
        }
    }

    /// Serves exactly the local replicas whose own group view counts this node as a member,
    /// and returns the partitions this node leads whose membership or stable record differs
    /// from their assignments.
    async fn tick(&self) -> Vec<(Partition, Plan)> {
        let local = self.local.lock().await;
        let catalog = self.shared.catalog.read();
        let mut out = Vec::new();
        for ((table_id, p), partition) in local.iter() {
            let (role, member) = partition.group().role_and_membership(&self.node);
            let served = self.shared.service.local(table_id, *p).is_some();
            if member && !served {
                if let Err(e) = self.shared.service.register(partition.clone()) {
                    tracing::debug!(table_id = %table_id, partition = p, error = %e, "registering a partition replica");
                }
            } else if !member && served {
                self.shared.service.unregister(table_id, *p);
            }
            if role != raft::Role::Leader {
                continue;
            }
            let m = partition.group().metrics();
            let Some(plan) = catalog.plan_of(table_id, *p) else {
                continue;
            };
            if plan.target.is_empty() {
                continue;
            }
            let want: BTreeSet<&String> = plan.target.iter().collect();
            let voters: BTreeSet<&String> = m.voters.iter().collect();
            let stable_ok = plan
                .stable
                .as_ref()
                .is_some_and(|s| s.voters.iter().collect::<BTreeSet<_>>() == voters);
            if want != voters || !m.learners.is_empty() || !stable_ok {
                out.push((partition.clone(), plan));
            }
        }
        out
    }

    /// One bounded attempt at bringing `partition`'s group to `plan` and recording it.
    async fn drive(&self, partition: &Partition, plan: &Plan) -> Result<()> {
        let group = partition.group();
        let (table_id, p) = (partition.table_id(), partition.partition());
        let m = group.metrics();
        if m.role != raft::Role::Leader {
            return Ok(());
        }
        let want: BTreeSet<&String> = plan.target.iter().collect();
        let changed = want != m.voters.iter().collect::<BTreeSet<_>>();
        if changed {
            tracing::info!(table_id, partition = p, from = ?m.voters, to = ?plan.target, "rebalancing partition");
            for node in &plan.target {
                if !m.voters.contains(node) && !m.learners.contains(node) {
                    group.add_learner(node).await?;
                    tracing::info!(table_id, partition = p, node = %node, "learner added");
                }
            }
            let newcomers: Vec<String> = plan
                .target
                .iter()
                .filter(|n| !m.voters.contains(n))
                .cloned()
                .collect();
            group
                .wait_for(CATCH_UP_DEADLINE, "learners catching up", |m| {
                    newcomers.iter().all(|n| {
                        m.replication_lag
                            .get(n)
                            .is_some_and(|lag| *lag <= MAX_CATCH_UP_LAG)
                    })
                })
                .await?;
            // joint consensus: returns once the final configuration is committed and applied
            // here (a leader that left steps down right after)
            group.change_membership(&plan.target).await?;
            tracing::info!(table_id, partition = p, voters = ?plan.target, "partition membership changed");
        } else {
            // nothing to change: make sure the membership seen is committed (a read index
            // commits the leader's term, and with it every earlier membership entry)
            group.linearizable_read().await?;
        }
        let m = group.metrics();
        let voters = if want == m.voters.iter().collect::<BTreeSet<_>>() {
            plan.target.clone()
        } else {
            m.voters.clone()
        };
        let stable = StableAssignment {
            index: m.last_applied.map_or(0, |l| l.index),
            voters,
        };
        let same = plan.stable.as_ref().is_some_and(|s| {
            s.voters.iter().collect::<BTreeSet<_>>() == stable.voters.iter().collect()
        });
        // recorded first: nodes that left may destroy their replicas once it is there
        if !same && store_stable(&self.ms, plan, table_id, p, &stable).await? {
            tracing::info!(table_id, partition = p, voters = ?stable.voters, index = stable.index, "stable assignment recorded");
        }
        if changed && !want.contains(&self.node) {
            // this node left the group: the learners are the next leader's
            return Ok(());
        }
        for learner in group.metrics().learners {
            if !want.contains(&learner) {
                group.remove_learner(&learner).await?;
                tracing::info!(table_id, partition = p, node = %learner, "learner removed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_records_round_trip_and_order_by_index() {
        let a = StableAssignment {
            index: 7,
            voters: vec!["n2".into(), "n1".into()],
        };
        let entry = Entry::live(stable_key("tid", 3), a.encode().expect("encode"), 9, 1);
        let (key, decoded) = StableAssignment::decode(&entry).expect("decode");
        assert_eq!(key, ("tid".to_owned(), 3));
        assert_eq!(decoded, Some(a.clone()));
        // a record with a lower index compares below the prefix of a higher one, the same
        // index does not
        let lower = StableAssignment {
            index: 6,
            ..a.clone()
        }
        .encode()
        .expect("encode");
        assert!(lower < StableAssignment::prefix(7));
        assert!(a.encode().expect("encode") > StableAssignment::prefix(7));
        let huge = StableAssignment {
            index: 256,
            voters: vec![],
        }
        .encode()
        .expect("encode");
        assert!(huge > StableAssignment::prefix(255));
        let gone = Entry::tombstone(stable_key("tid", 3), 10, 2);
        assert_eq!(
            StableAssignment::decode(&gone).expect("decode"),
            (("tid".to_owned(), 3), None)
        );
        for bad in [vec![], vec![2; 12], vec![1, 0, 0]] {
            let entry = Entry::live(stable_key("tid", 3), bad, 11, 1);
            assert!(StableAssignment::decode(&entry).is_err());
        }
        let entry = Entry::live(b"assignments.stable/nopartition".to_vec(), vec![], 1, 1);
        assert!(StableAssignment::decode(&entry).is_err());
    }
}
