//! Raft groups across three in-process nodes over real network managers.
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use raft::{testing::MemoryStateMachine, Error, GroupMembers, RaftConfiguration, Role};

use crate::cluster::{fast_config, name, Cluster, Storage, WAIT};

const BOUND: Duration = Duration::from_secs(120);

fn voters(n: usize) -> GroupMembers {
    GroupMembers::voters((1..=n).map(name))
}

async fn bounded<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::time::timeout(BOUND, f).await.context("test bound")?
}

/// Waits until `node` applied every put of `expected`.
async fn wait_for_values(
    cluster: &Cluster,
    node: &str,
    group: &str,
    expected: &[(String, String)],
) -> Result<()> {
    let n = cluster.node(node)?;
    let sm = n.sm(group)?;
    let g = n.group(group)?;
    let sm2 = sm.clone();
    let want = expected.to_vec();
    g.wait_for(WAIT, "values applied", move |_| {
        want.iter()
            .all(|(k, v)| sm2.get(k).as_deref() == Some(v.as_str()))
    })
    .await
    .with_context(|| format!("{node} applies every value"))?;
    Ok(())
}

/// Waits until every running node applied every put of `expected`.
async fn wait_for_values_everywhere(
    cluster: &Cluster,
    group: &str,
    expected: &[(String, String)],
) -> Result<()> {
    for node in &cluster.nodes {
        wait_for_values(cluster, &node.name, group, expected).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_followers_forward_writes() -> Result<()> {
    bounded(async {
        let mut cluster = Cluster::start(3, fast_config(), Storage::Memory).await?;
        cluster.start_group("g", &voters(3)).await?;
        let leader = cluster.leader("g").await?;
        let follower = cluster
            .nodes
            .iter()
            .find(|n| n.name != leader)
            .context("a follower")?;
        let group = follower.group("g")?;
        assert_eq!(group.metrics().role, Role::Follower);

        let reply = group.write(MemoryStateMachine::put("k", "v1")).await?;
        assert_eq!(MemoryStateMachine::decode_reply(&reply), None);
        let reply = group.write(MemoryStateMachine::put("k", "v2")).await?;
        assert_eq!(
            MemoryStateMachine::decode_reply(&reply).as_deref(),
            Some("v1"),
            "the reply is the state machine's, from the leader"
        );

        // a linearizable read on the follower sees the acknowledged write locally
        group.linearizable_read().await?;
        assert_eq!(follower.sm("g")?.get("k").as_deref(), Some("v2"));

        let expected = vec![("k".to_owned(), "v2".to_owned())];
        for node in ["n1", "n2", "n3"] {
            wait_for_values(&cluster, node, "g", &expected).await?;
        }
        let metrics = cluster.node(&leader)?.group("g")?.metrics();
        assert_eq!(metrics.role, Role::Leader);
        assert_eq!(metrics.voters.len(), 3);
        assert_eq!(
            metrics.replication_lag.len(),
            3,
            "lag per replica: {metrics:?}"
        );
        assert!(metrics.last_log_index >= Some(3), "{metrics:?}");

        // a second group shares the connections and elects independently
        cluster.start_group("h", &voters(3)).await?;
        cluster.leader("h").await?;
        let reply = cluster
            .node("n1")?
            .group("h")?
            .write(MemoryStateMachine::put("x", "1"))
            .await?;
        assert_eq!(MemoryStateMachine::decode_reply(&reply), None);
        assert_eq!(
            cluster.node("n1")?.sm("g")?.get("x"),
            None,
            "groups are separate"
        );
        assert_eq!(
            cluster.node("n1")?.raft.groups(),
            vec!["g".to_owned(), "h".to_owned()]
        );

        cluster.node("n1")?.raft.stop_group("h").await?;
        assert!(cluster.node("n1")?.raft.group("h").is_none());
        assert!(matches!(
            cluster.node("n1")?.raft.stop_group("h").await,
            Err(Error::GroupNotFound(_))
        ));
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stop_elects_a_new_leader_without_losing_acknowledged_writes() -> Result<()> {
    bounded(async {
        let mut cluster = Cluster::start(3, fast_config(), Storage::Memory).await?;
        cluster.start_group("g", &voters(3)).await?;
        let old = cluster.leader("g").await?;
        let mut acked = Vec::new();
        for i in 0..20 {
            let (k, v) = (format!("k{i}"), format!("v{i}"));
            let writer = cluster.node(&name(1 + i % 3))?.group("g")?;
            writer.write(MemoryStateMachine::put(&k, &v)).await?;
            acked.push((k, v));
        }
        cluster.stop_node(&old).await?;

        let survivor = cluster.nodes.first().context("a survivor")?.group("g")?;
        let old2 = old.clone();
        let m = survivor
            .wait_for(WAIT, "a new leader", move |m| {
                m.leader.is_some() && m.leader.as_deref() != Some(old2.as_str())
            })
            .await?;
        let new = m.leader.context("new leader")?;
        ensure!(new != old);

        // every acknowledged write is on the new leader and the survivors
        wait_for_values_everywhere(&cluster, "g", &acked).await?;
        // and the group keeps accepting writes (2 of 3 voters)
        survivor
            .write(MemoryStateMachine::put("after", "failover"))
            .await?;
        acked.push(("after".into(), "failover".into()));
        wait_for_values_everywhere(&cluster, "g", &acked).await?;
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_on_a_follower_are_forwarded_and_each_answered() -> Result<()> {
    bounded(async {
        let mut cluster = Cluster::start(3, fast_config(), Storage::Memory).await?;
        cluster.start_group("g", &voters(3)).await?;
        let leader = cluster.leader("g").await?;
        let follower = cluster
            .nodes
            .iter()
            .find(|n| n.name != leader)
            .context("a follower")?;
        let group = follower.group("g")?;
        // 200 writes at once: they go to the leader in batches, each keeps its own reply
        let writes = (0..200).map(|i| {
            let group = group.clone();
            async move {
                let first = group
                    .write(MemoryStateMachine::put(&format!("k{i}"), &format!("a{i}")))
                    .await?;
                let second = group
                    .write(MemoryStateMachine::put(&format!("k{i}"), &format!("b{i}")))
                    .await?;
                Ok::<_, Error>((
                    i,
                    MemoryStateMachine::decode_reply(&first),
                    MemoryStateMachine::decode_reply(&second),
                ))
            }
        });
        let replies = futures::future::join_all(writes).await;
        for reply in replies {
            let (i, first, second) = reply?;
            assert_eq!(first, None, "a new key had no value");
            assert_eq!(
                second,
                Some(format!("a{i}")),
                "each reply is its own write's"
            );
        }
        let acked: Vec<(String, String)> = (0..200)
            .map(|i| (format!("k{i}"), format!("b{i}")))
            .collect();
        for node in [leader.clone(), follower.name.clone()] {
            wait_for_values(&cluster, &node, "g", &acked).await?;
        }
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_learner_catches_up_through_a_snapshot() -> Result<()> {
    bounded(async {
        let config = RaftConfiguration {
            snapshot_logs_since_last: 10,
            max_in_snapshot_log_to_keep: 0,
            ..fast_config()
        };
        let mut cluster = Cluster::start(3, config, Storage::Memory).await?;
        cluster.start_group("g", &voters(3)).await?;
        let leader_name = cluster.leader("g").await?;
        let leader = cluster.node(&leader_name)?.group("g")?;
        let mut acked = Vec::new();
        for i in 0..40 {
            let (k, v) = (format!("k{i}"), format!("v{i}"));
            leader.write(MemoryStateMachine::put(&k, &v)).await?;
            acked.push((k, v));
        }
        leader.trigger_snapshot().await?;
        leader
            .wait_for(WAIT, "logs purged behind a snapshot", |m| {
                m.purged.is_some_and(|p| p.index >= 10)
            })
            .await?;

        cluster.add_node("n4").await?;
        // n4 is in no list: it waits to be added
        cluster
            .node_mut("n4")?
            .start_group("g", &GroupMembers::default())
            .await?;
        leader.add_learner("n4").await?;
        wait_for_values(&cluster, "n4", "g", &acked).await?;
        let n4 = cluster.node("n4")?;
        assert!(
            n4.sm("g")?.commands_applied() < 40,
            "n4 got most of its state from a snapshot, not by replaying 40 commands"
        );
        let m = n4.group("g")?.metrics();
        assert_eq!(m.role, Role::Learner);
        assert!(m.snapshot.is_some(), "{m:?}");
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_are_added_promoted_and_removed() -> Result<()> {
    bounded(async {
        let mut cluster = Cluster::start(4, fast_config(), Storage::Memory).await?;
        // n4 starts as an initial learner: the first leader adds it
        let members = GroupMembers {
            voters: vec![name(1), name(2), name(3)],
            learners: vec![name(4)],
        };
        cluster.start_group("g", &members).await?;
        let leader_name = cluster.leader("g").await?;
        let leader = cluster.node(&leader_name)?.group("g")?;
        let m = leader
            .wait_for(WAIT, "initial learner added", |m| {
                m.learners == vec![name(4)]
            })
            .await?;
        assert_eq!(m.voters.len(), 3);
        leader.write(MemoryStateMachine::put("a", "1")).await?;
        wait_for_values(&cluster, "n4", "g", &[("a".into(), "1".into())]).await?;
        assert_eq!(
            cluster.node("n4")?.group("g")?.metrics().role,
            Role::Learner
        );
        // the cheap view agrees with the full metrics
        let n4_group = cluster.node("n4")?.group("g")?;
        assert_eq!(n4_group.role_and_membership("n4"), (Role::Learner, true));
        assert_eq!(n4_group.role_and_membership("n9"), (Role::Learner, false));
        assert_eq!(
            leader.role_and_membership(&leader_name),
            (Role::Leader, true)
        );
        assert!(leader.is_leader() && !n4_group.is_leader());
        assert_eq!(n4_group.leader(), Some(leader_name.clone()));

        // membership changes are made on the leader
        let follower = cluster
            .nodes
            .iter()
            .find(|n| n.name != leader_name)
            .context("a follower")?;
        assert!(matches!(
            follower.group("g")?.remove_learner("n4").await,
            Err(Error::NotLeader {
                leader: Some(_),
                ..
            })
        ));
        assert!(matches!(
            leader.remove_learner(&leader_name).await,
            Err(Error::Rejected { .. })
        ));

        // promote n4
        let four: Vec<String> = (1..=4).map(name).collect();
        leader.change_membership(&four).await?;
        let n4 = cluster.node("n4")?.group("g")?;
        n4.wait_for(WAIT, "n4 is a voter", |m| {
            m.voters.len() == 4 && m.learners.is_empty() && m.role == Role::Follower
        })
        .await?;

        // demote: n4 leaves the voters and the group
        let three: Vec<String> = (1..=3).map(name).collect();
        let leader_name = cluster.leader("g").await?;
        let leader = cluster.node(&leader_name)?.group("g")?;
        leader.change_membership(&three).await?;
        let m = leader.metrics();
        assert_eq!(m.voters.len(), 3);
        assert!(!m.voters.contains(&name(4)) && !m.learners.contains(&name(4)));
        assert_eq!(leader.role_and_membership("n4"), (Role::Leader, false));

        // add it back as a learner, then remove the learner
        leader.add_learner("n4").await?;
        assert_eq!(leader.metrics().learners, vec![name(4)]);
        leader.remove_learner("n4").await?;
        assert!(leader.metrics().learners.is_empty());
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_recovers_its_log_and_vote_from_the_write_ahead_log() -> Result<()> {
    let dir = tempfile::tempdir()?;
    restart_recovers_log_and_vote(Storage::Wal(dir.path().to_path_buf())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_recovers_its_log_and_vote_from_sled() -> Result<()> {
    let dir = tempfile::tempdir()?;
    restart_recovers_log_and_vote(Storage::Sled(dir.path().to_path_buf())).await
}

async fn restart_recovers_log_and_vote(storage: Storage) -> Result<()> {
    bounded(async {
        let mut cluster = Cluster::start(3, fast_config(), storage).await?;
        cluster.start_group("g", &voters(3)).await?;
        let leader = cluster.leader("g").await?;
        let writer = cluster.node(&leader)?.group("g")?;
        let mut acked = Vec::new();
        for i in 0..10 {
            let (k, v) = (format!("k{i}"), format!("v{i}"));
            writer.write(MemoryStateMachine::put(&k, &v)).await?;
            acked.push((k, v));
        }
        let victim = cluster
            .nodes
            .iter()
            .find(|n| n.name != leader)
            .context("a follower")?
            .name
            .clone();
        wait_for_values(&cluster, &victim, "g", &acked).await?;
        let before = cluster.node(&victim)?.group("g")?.metrics();
        cluster.stop_node(&victim).await?;

        cluster.add_node(&victim).await?;
        let node = cluster.node_mut(&victim)?;
        // the members are ignored: the group is recovered from storage
        let group = node.start_group("g", &voters(3)).await?;
        let after = group.metrics();
        assert!(
            after.term >= before.term,
            "vote recovered: {before:?} -> {after:?}"
        );
        assert!(
            after.last_log_index >= before.last_log_index,
            "log recovered: {before:?} -> {after:?}"
        );
        assert_eq!(after.voters.len(), 3, "membership recovered: {after:?}");
        // the fresh state machine is rebuilt from the log
        wait_for_values(&cluster, &victim, "g", &acked).await?;
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_refused_twice_and_after_stop() -> Result<()> {
    bounded(async {
        let mut cluster = Cluster::start(1, fast_config(), Storage::Memory).await?;
        let node = cluster.node_mut("n1")?;
        let group = node.start_group("solo", &voters(1)).await?;
        assert_eq!(group.wait_for_leader(WAIT).await?, "n1");
        assert!(matches!(
            node.start_group("solo", &voters(1)).await,
            Err(e) if matches!(e.downcast_ref::<Error>(), Some(Error::GroupExists(_)))
        ));
        group.write(MemoryStateMachine::put("a", "1")).await?;
        group.linearizable_read().await?;
        assert_eq!(node.sm("solo")?.get("a").as_deref(), Some("1"));

        let raft = std::sync::Arc::clone(&node.raft);
        cluster.stop().await?;
        let err = group
            .write(MemoryStateMachine::put("b", "2"))
            .await
            .err()
            .context("a write after stop fails")?;
        assert!(matches!(err, Error::Stopping(_)), "{err}");
        assert!(err.is_retryable());
        let err = raft
            .start_group(
                "late",
                std::sync::Arc::new(MemoryStateMachine::new()),
                voters(1),
            )
            .await
            .err()
            .context("a group after stop is refused")?;
        assert!(matches!(err, Error::Stopping(_)), "{err}");
        assert!(raft.groups().is_empty(), "stop shut every group down");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_group_starts_again_empty() -> Result<()> {
    let dir = tempfile::tempdir()?;
    destroyed_group_starts_empty(Storage::Wal(dir.path().to_path_buf())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_sled_group_starts_again_empty() -> Result<()> {
    let dir = tempfile::tempdir()?;
    destroyed_group_starts_empty(Storage::Sled(dir.path().to_path_buf())).await
}

async fn destroyed_group_starts_empty(storage: Storage) -> Result<()> {
    bounded(async {
        let mut cluster = Cluster::start(1, fast_config(), storage).await?;
        let node = cluster.node_mut("n1")?;
        let group = node.start_group("gone", &voters(1)).await?;
        group.wait_for_leader(WAIT).await?;
        for i in 0..10 {
            group
                .write(MemoryStateMachine::put(&format!("k{i}"), "v"))
                .await?;
        }
        let before = group.metrics().last_log_index.context("a log")?;
        assert!(before >= 10, "ten writes are in the log: {before}");
        // a group that is kept keeps its log across a stop; a destroyed one does not
        node.raft.destroy_group("gone").await?;
        assert!(node.raft.group("gone").is_none(), "destroy stops the group");
        node.raft.destroy_group("gone").await?;

        let group = node.start_group("gone", &voters(1)).await?;
        group.wait_for_leader(WAIT).await?;
        let after = group.metrics();
        assert!(
            after.last_log_index.unwrap_or(0) < before,
            "the log starts over: {before} -> {after:?}"
        );
        assert_eq!(node.sm("gone")?.get("k0"), None, "nothing is replayed");
        group.write(MemoryStateMachine::put("fresh", "1")).await?;
        assert_eq!(node.sm("gone")?.get("fresh").as_deref(), Some("1"));
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_are_announced_and_log_progress_is_not() -> Result<()> {
    bounded(async {
        let mut cluster = Cluster::start(1, fast_config(), Storage::Memory).await?;
        let node = cluster.node_mut("n1")?;
        let mut changes = node.raft.role_changes();
        let before = *changes.borrow_and_update();
        let group = node.start_group("announced", &voters(1)).await?;
        group.wait_for_leader(WAIT).await?;
        tokio::time::timeout(WAIT, changes.changed()).await??;
        let settled = *changes.borrow_and_update();
        assert!(settled > before, "the start was announced");
        let writes = 200u64;
        for i in 0..writes {
            group
                .write(MemoryStateMachine::put(&format!("k{i}"), "v"))
                .await?;
        }
        // at most the announcements of the election still on their way; not one per write
        let during = changes.borrow_and_update().wrapping_sub(settled);
        assert!(during <= 2, "{during} announcements during {writes} writes");
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_over_its_memory_budget_is_snapshotted_and_purged() -> Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let config = RaftConfiguration {
            // the entry count alone would never snapshot here
            snapshot_logs_since_last: 1_000_000,
            max_in_snapshot_log_to_keep: 5,
            snapshot_log_bytes: 64 << 10,
            ..fast_config()
        };
        let mut cluster = Cluster::start(1, config, Storage::Wal(dir.path().to_path_buf())).await?;
        let node = cluster.node_mut("n1")?;
        let group = node.start_group("big", &voters(1)).await?;
        group.wait_for_leader(WAIT).await?;
        let value = "x".repeat(4096);
        for i in 0..64 {
            group
                .write(MemoryStateMachine::put(&format!("k{i}"), &value))
                .await?;
        }
        // 256 KiB of entries against a 64 KiB budget: snapshotted and purged until what
        // stays in memory fits (an earlier snapshot, taken when the budget was first passed
        // while writes went on, may come first)
        let m = group
            .wait_for(WAIT, "a snapshot of most of the log and a purge", |m| {
                m.snapshot.is_some_and(|p| p.index >= 32) && m.purged.is_some_and(|p| p.index > 0)
            })
            .await?;
        assert!(m.purged.map_or(0, |p| p.index) <= m.snapshot.map_or(0, |p| p.index));
        assert_eq!(node.sm("big")?.get("k63").as_deref(), Some(value.as_str()));
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_elect_at_once_when_the_leaders_process_is_gone() -> Result<()> {
    bounded(async {
        // election timers alone would take at least the lease plus a timeout: 40 s
        let slow = RaftConfiguration {
            election_timeout_min_ms: 20_000,
            election_timeout_max_ms: 30_000,
            heartbeat_interval_ms: 100,
            ..RaftConfiguration::default()
        };
        let mut cluster = Cluster::start(3, slow, Storage::Memory).await?;
        cluster.start_group("g", &voters(3)).await?;
        let old = cluster.leader("g").await?;
        let leader = cluster.node(&old)?.group("g")?;
        leader.write(MemoryStateMachine::put("before", "1")).await?;
        let acked = vec![("before".to_owned(), "1".to_owned())];
        wait_for_values_everywhere(&cluster, "g", &acked).await?;
        cluster.stop_node(&old).await?;
        let stopped = std::time::Instant::now();
        let survivor = cluster.nodes.first().context("a survivor")?.group("g")?;
        let old2 = old.clone();
        let m = survivor
            .wait_for(
                Duration::from_secs(10),
                "a new leader long before any election timeout",
                move |m| m.leader.is_some() && m.leader.as_deref() != Some(old2.as_str()),
            )
            .await?;
        ensure!(
            stopped.elapsed() < Duration::from_secs(15),
            "new leader {:?} after {:?}",
            m.leader,
            stopped.elapsed()
        );
        survivor
            .write(MemoryStateMachine::put("after", "2"))
            .await?;
        let acked = vec![
            ("before".to_owned(), "1".to_owned()),
            ("after".to_owned(), "2".to_owned()),
        ];
        wait_for_values_everywhere(&cluster, "g", &acked).await?;
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_forms_without_its_initiator() -> Result<()> {
    bounded(async {
        let mut cluster = Cluster::start(3, fast_config(), Storage::Memory).await?;
        // one voter initializes new groups; here it never runs this one, so the other two
        // initialize it themselves after an election timeout
        let members = voters(3);
        let absent = raft::initiator("g", &members.voters)
            .context("an initiator")?
            .to_owned();
        let present: Vec<String> = members
            .voters
            .iter()
            .filter(|v| **v != absent)
            .cloned()
            .collect();
        for node in &present {
            cluster.node_mut(node)?.start_group("g", &members).await?;
        }
        let first = cluster.node(&present[0])?.group("g")?;
        let absent2 = absent.clone();
        let m = first
            .wait_for(WAIT, "a leader among the other two", move |m| {
                m.leader.as_deref().is_some_and(|l| l != absent2)
            })
            .await?;
        assert_eq!(m.voters.len(), 3, "{m:?}");
        first.write(MemoryStateMachine::put("k", "v")).await?;
        let written = vec![("k".to_owned(), "v".to_owned())];
        for node in &present {
            wait_for_values(&cluster, node, "g", &written).await?;
        }
        // the initiator starts late and catches up as a follower
        cluster
            .node_mut(&absent)?
            .start_group("g", &members)
            .await?;
        wait_for_values(&cluster, &absent, "g", &written).await?;
        cluster.stop().await
    })
    .await
}
