//! A partition replicated by a Raft group on three in-process nodes: writes and
//! linearizable reads from every node, leader loss, a node without a replica, sled
//! recovery and idempotent retries.
use std::ops::Bound;

use anyhow::{ensure, Context, Result};
use table::{CommandId, PartitionCommand, PartitionOp, PartitionResponse};

use crate::cluster::{bounded, fast_config, name, voters, Cluster, Storage, WAIT};

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:04}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_from_every_node_are_read_linearizably_everywhere() -> Result<()> {
    bounded(async {
        let cluster = Cluster::start(3, Storage::Memory).await?;
        let members = voters(3);
        cluster.start_partition(0, &members).await?;
        cluster.leader(0, &members).await?;

        let mut i = 0;
        for writer in &cluster.nodes {
            for _ in 0..5 {
                writer.replica(0)?.upsert(key(i), value(i)).await?;
                // read right after the acknowledgement, on every node
                for reader in &cluster.nodes {
                    let got = reader.replica(0)?.get(key(i)).await?;
                    ensure!(
                        got == Some(value(i)),
                        "{} reads key {i} written by {}: {got:?}",
                        reader.name,
                        writer.name
                    );
                }
                i += 1;
            }
        }

        let n2 = cluster.node("n2")?.replica(0)?;
        let all = n2.scan(Bound::Unbounded, 100).await?;
        let want: Vec<(Vec<u8>, Vec<u8>)> = (0..15).map(|i| (key(i), value(i))).collect();
        assert_eq!(all, want, "scan returns every row in key order");
        let page = n2.scan(Bound::Excluded(key(3)), 4).await?;
        assert_eq!(
            page.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            (4..8).map(key).collect::<Vec<_>>(),
            "scan from a key honours the limit"
        );

        let n3 = cluster.node("n3")?.replica(0)?;
        assert!(n3.delete(key(0)).await?, "delete of an existing key");
        assert!(!n3.delete(key(0)).await?, "second delete finds nothing");
        let n1 = cluster.node("n1")?.replica(0)?;
        assert_eq!(n1.get(key(0)).await?, None, "deleted everywhere");
        assert_eq!(
            n1.get_all(vec![key(2), key(0), key(1)]).await?,
            vec![Some(value(2)), None, Some(value(1))],
            "get_all answers in order"
        );
        assert!(n1.insert(b"fresh".to_vec(), b"1".to_vec()).await?);
        assert!(
            !n1.insert(b"fresh".to_vec(), b"2".to_vec()).await?,
            "insert keeps"
        );
        assert_eq!(
            n2.get_and_delete(b"fresh".to_vec()).await?,
            Some(b"1".to_vec())
        );
        drop((n1, n2, n3));
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_after_the_leader_node_stops_without_losing_rows() -> Result<()> {
    bounded(async {
        let mut cluster = Cluster::start(3, Storage::Memory).await?;
        let members = voters(3);
        cluster.start_partition(0, &members).await?;
        let leader = cluster.leader(0, &members).await?;

        let mut acked = Vec::new();
        for i in 0..20 {
            let node = &cluster.nodes[i % 3];
            node.client(0, &members).upsert(key(i), value(i)).await?;
            acked.push(i);
        }
        cluster.stop_node(&leader).await?;

        // the survivors elect a new leader; writes through them succeed after the election
        for i in 20..40 {
            let node = &cluster.nodes[i % 2];
            node.client(0, &members)
                .upsert(key(i), value(i))
                .await
                .with_context(|| format!("write {i} after the leader stopped"))?;
            acked.push(i);
        }
        let new_leader = cluster
            .leader(0, &members_without(&members, &leader))
            .await?;
        ensure!(new_leader != leader, "a new leader was elected");
        for node in &cluster.nodes {
            let replica = node.replica(0)?;
            let rows = replica.scan(Bound::Unbounded, 1_000).await?;
            assert_eq!(
                rows.len(),
                acked.len(),
                "{} holds every acknowledged row",
                node.name
            );
            for &i in &acked {
                assert_eq!(
                    replica.get(key(i)).await?,
                    Some(value(i)),
                    "row {i} on {}",
                    node.name
                );
            }
        }
        cluster.stop().await
    })
    .await
}

fn members_without(members: &raft::GroupMembers, gone: &str) -> raft::GroupMembers {
    raft::GroupMembers::voters(members.voters.iter().filter(|v| *v != gone).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_replica_reads_and_writes_through_the_service() -> Result<()> {
    bounded(async {
        let cluster = Cluster::start(4, Storage::Memory).await?;
        let members = voters(3);
        cluster.start_partition(0, &members).await?;
        cluster.leader(0, &members).await?;
        let n4 = cluster.node(&name(4))?;
        ensure!(n4.service.local("t1", 0).is_none(), "n4 holds no replica");
        let client = n4.client(0, &members);

        client
            .upsert_all((0..10).map(|i| (key(i), value(i))).collect())
            .await?;
        for i in 0..10 {
            assert_eq!(
                client.get(key(i)).await?,
                Some(value(i)),
                "n4 reads row {i}"
            );
        }
        // the rows are on the replicas, read linearizably there too
        assert_eq!(
            cluster.node("n1")?.replica(0)?.get(key(9)).await?,
            Some(value(9))
        );
        let rows = client.scan(Bound::Included(key(5)), 3).await?;
        assert_eq!(
            rows,
            (5..8).map(|i| (key(i), value(i))).collect::<Vec<_>>(),
            "remote scan from a key with a limit"
        );
        assert_eq!(
            client.delete_all(vec![key(0), key(100)]).await?,
            vec![true, false]
        );
        assert_eq!(client.get(key(0)).await?, None);
        assert_eq!(
            client.get_and_upsert(key(1), b"new".to_vec()).await?,
            Some(value(1))
        );
        assert_eq!(
            cluster.node("n2")?.replica(0)?.get(key(1)).await?,
            Some(b"new".to_vec())
        );

        // the replicas listed first may be gone: the client moves on to the others
        let stale = raft::GroupMembers::voters(["gone", "n2", "n3"]);
        let client = n4.client(0, &stale);
        assert_eq!(client.get(key(2)).await?, Some(value(2)));
        // after the service stops, its clients refuse at once
        lifecycle::Component::stop(n4.service.as_ref())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let refused = client.get(key(2)).await;
        assert!(
            matches!(refused, Err(table::Error::Stopping(_))),
            "stopped service: {refused:?}"
        );
        drop(client);
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sled_replica_recovers_its_rows() -> Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let mut cluster = Cluster::start(3, Storage::Sled(dir.path().to_path_buf())).await?;
        let members = voters(3);
        cluster.start_partition(0, &members).await?;
        let leader = cluster.leader(0, &members).await?;
        let victim = cluster
            .nodes
            .iter()
            .find(|n| n.name != leader)
            .context("a follower")?
            .name
            .clone();

        let writer = cluster.node(&leader)?.replica(0)?;
        writer
            .upsert_all((0..20).map(|i| (key(i), value(i))).collect())
            .await?;
        drop(writer);
        // the victim applied every row before it stops
        let replica = cluster.node(&victim)?.replica(0)?;
        assert_eq!(replica.get(key(19)).await?, Some(value(19)));
        drop(replica);
        cluster.stop_node(&victim).await?;

        cluster.add_node(&victim).await?;
        let node = cluster.node(&victim)?;
        // the rows are in the partition's sled tree before the group even starts
        let storage = node.partitions.partition("t1", 0)?;
        assert_eq!(storage.len()?, 20, "rows recovered from sled");
        let applied = storage.last_applied()?.context("an applied position")?;
        ensure!(applied.index > 0, "applied position recovered");
        drop(storage);

        let replica = node.start_partition(0, &members).await?;
        for i in 0..20 {
            assert_eq!(replica.get(key(i)).await?, Some(value(i)), "row {i}");
        }
        // and it serves writes again
        replica.upsert(key(20), value(20)).await?;
        assert_eq!(
            cluster.node(&leader)?.replica(0)?.get(key(20)).await?,
            Some(value(20))
        );
        drop(replica);
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_command_id_applies_once() -> Result<()> {
    bounded(async {
        let cluster = Cluster::start(4, Storage::Memory).await?;
        let members = voters(3);
        cluster.start_partition(0, &members).await?;
        cluster.leader(0, &members).await?;

        let id = CommandId::new(uuid::Uuid::from_u128(77), 1);
        let command = PartitionCommand::new(
            id,
            PartitionOp::GetAndUpsert {
                key: b"k".to_vec(),
                value: b"first".to_vec(),
            },
        );
        let n1 = cluster.node("n1")?.replica(0)?;
        assert_eq!(
            n1.execute(command.clone()).await?,
            PartitionResponse::Previous(None)
        );
        n1.upsert(b"k".to_vec(), b"second".to_vec()).await?;

        // a retry of the same id, through another replica and through a node without one,
        // answers the first response and changes nothing
        let n2 = cluster.node("n2")?.replica(0)?;
        assert_eq!(
            n2.execute(command.clone()).await?,
            PartitionResponse::Previous(None)
        );
        let client = cluster.node("n4")?.client(0, &members);
        assert_eq!(
            client.execute(command.clone()).await?,
            PartitionResponse::Previous(None)
        );
        assert_eq!(n2.get(b"k".to_vec()).await?, Some(b"second".to_vec()));
        for node in &cluster.nodes[..3] {
            let replica = node.replica(0)?;
            replica.get(b"k".to_vec()).await?;
            assert_eq!(
                replica.storage().get(b"k")?,
                Some(b"second".to_vec()),
                "{} applied the command once",
                node.name
            );
        }
        // a fresh id with the same op does apply
        let again = PartitionCommand::new(CommandId::new(id.client, 2), command.op.clone());
        assert_eq!(
            client.execute(again).await?,
            PartitionResponse::Previous(Some(b"second".to_vec()))
        );
        drop((n2, client));

        // destroying n1's replica removes its group and its rows; the others keep serving
        let n1_node = cluster.node("n1")?;
        n1_node.service.unregister("t1", 0).context("registered")?;
        n1.destroy(&n1_node.raft).await?;
        ensure!(
            n1_node.raft.group("t1_part_0").is_none(),
            "group stopped on n1"
        );
        ensure!(
            n1_node.partitions.partitions()?.is_empty(),
            "storage destroyed on n1"
        );
        // the fresh id above wrote `first` again
        let client = n1_node.client(0, &members);
        assert_eq!(client.get(b"k".to_vec()).await?, Some(b"first".to_vec()));
        drop(client);
        cluster.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_catches_up_through_a_snapshot_with_the_command_window() -> Result<()> {
    catches_up_through_a_snapshot(Storage::Memory).await
}

/// On sled the partition persists itself: the leader's snapshots are cuts and the rows are
/// exported only when the new replica asks for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sled_replica_catches_up_through_a_snapshot_built_when_it_asks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    catches_up_through_a_snapshot(Storage::Sled(dir.path().to_path_buf())).await
}

async fn catches_up_through_a_snapshot(storage: Storage) -> Result<()> {
    bounded(async {
        let config = raft::RaftConfiguration {
            snapshot_logs_since_last: 10,
            max_in_snapshot_log_to_keep: 0,
            ..fast_config()
        };
        let cluster = Cluster::start_with(4, storage, config).await?;
        let members = voters(3);
        cluster.start_partition(0, &members).await?;
        let leader_name = cluster.leader(0, &members).await?;
        let leader = cluster.node(&leader_name)?.replica(0)?;
        let id = CommandId::new(uuid::Uuid::from_u128(9), 0);
        let first = PartitionCommand::new(
            id,
            PartitionOp::Insert {
                key: key(0),
                value: value(0),
            },
        );
        assert_eq!(
            leader.execute(first.clone()).await?,
            PartitionResponse::Inserted(true)
        );
        for i in 1..40 {
            leader.upsert(key(i), value(i)).await?;
        }
        leader.group().trigger_snapshot().await?;
        leader
            .group()
            .wait_for(WAIT, "a snapshot and a purged log", |m| {
                m.purged.is_some_and(|p| p.index >= 30)
            })
            .await?;

        // n4 is not a member yet: it waits, then joins as a learner from the snapshot
        let n4 = cluster.node("n4")?;
        let learner = n4.start_partition(0, &members).await?;
        leader.group().add_learner("n4").await?;
        let metrics = learner
            .group()
            .wait_for(WAIT, "a snapshot installed", |m| m.snapshot.is_some())
            .await?;
        ensure!(
            metrics.snapshot.is_some(),
            "the learner installed a snapshot"
        );
        for i in 0..40 {
            assert_eq!(learner.get(key(i)).await?, Some(value(i)), "row {i} on n4");
        }
        // the command window travelled in the snapshot: the retry answers the first response
        let window =
            table::PartitionStateMachine::new("t1", 0, std::sync::Arc::clone(learner.storage()));
        assert_eq!(
            window.remembered(id)?,
            Some(PartitionResponse::Inserted(true))
        );
        assert_eq!(
            learner.execute(first).await?,
            PartitionResponse::Inserted(true)
        );
        drop((leader, learner, window));
        cluster.stop().await
    })
    .await
}
