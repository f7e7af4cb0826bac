//! Watches across a cluster: every node sees every revision in order, and a restarted node
//! replays exactly the revisions its watches missed.
use anyhow::Result;

use crate::harness::{events_until, watch_all, Options, TestCluster, TestNode};

fn revisions(events: &[metastorage::WatchEvent]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_on_every_node_see_every_revision_in_order() -> Result<()> {
    let cluster = TestCluster::start(3, false, Options::default()).await?;
    cluster.init_and_start("n2").await?;
    let mut receivers = Vec::new();
    for node in &cluster.nodes {
        receivers.push(watch_all(node)?);
        node.ms.deploy_watches()?;
        assert!(node.ms.deploy_watches().is_err(), "deploy twice");
        assert!(
            watch_all(node).is_err(),
            "registering after deploy is refused"
        );
    }
    let start = cluster.node("n1").ms.recovery_revision();
    let mut last = 0;
    for i in 0..12 {
        let writer = &cluster.nodes[i % 3];
        last = writer
            .ms
            .put_all(vec![
                (format!("a/{i}").into_bytes(), vec![1]),
                (format!("b/{i}").into_bytes(), vec![2]),
            ])
            .await?;
    }
    for (node, rx) in cluster.nodes.iter().zip(receivers.iter_mut()) {
        let events = events_until(rx, last).await?;
        let expected: Vec<u64> = (start + 1..=last).collect();
        assert_eq!(revisions(&events), expected, "{}", node.name);
        for e in &events {
            assert_eq!(e.entries.len(), 2, "both keys of a revision in one event");
        }
    }
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_node_replays_exactly_the_missed_revisions() -> Result<()> {
    let mut cluster = TestCluster::start(3, true, Options::default()).await?;
    cluster.init_and_start("n1").await?;
    let mut rx = watch_all(cluster.node("n3"))?;
    for node in &cluster.nodes {
        node.ms.deploy_watches()?;
    }
    let mut last = 0;
    for i in 0..5 {
        last = cluster.node("n1").ms.put(format!("k{i}"), "v").await?;
    }
    let first_life = events_until(&mut rx, last).await?;
    assert_eq!(revisions(&first_life), (1..=last).collect::<Vec<_>>());
    cluster
        .node("n3")
        .ms
        .wait_watches(last, crate::harness::WAIT)
        .await?;

    cluster.stop_node("n3").await?;
    let before_restart = last;
    for i in 5..10 {
        last = cluster.node("n2").ms.put(format!("k{i}"), "w").await?;
    }

    let dir = cluster.data_dir("n3");
    let node = TestNode::start("n3", cluster.seeds(), dir.as_deref(), &cluster.options).await?;
    node.start_ms().await?;
    assert_eq!(
        node.ms.recovery_revision(),
        before_restart,
        "resumes after the last delivered revision"
    );
    assert!(
        node.ms.revision() >= last,
        "caught up before start returned"
    );
    let mut rx = watch_all(&node)?;
    node.ms.deploy_watches()?;
    let second_life = events_until(&mut rx, last).await?;
    assert_eq!(
        revisions(&second_life),
        (before_restart + 1..=last).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    cluster.nodes.push(node);
    let more = cluster.node("n1").ms.put("after", "restart").await?;
    let live = events_until(&mut rx, more).await?;
    assert_eq!(revisions(&live), vec![more]);
    cluster.stop().await
}

/// The delivered revision is recorded in the vault while the node runs, not only at stop:
/// after a crash a restart delivers again at most what was delivered since the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_delivered_revision_is_recorded_while_the_node_runs() -> Result<()> {
    use std::time::Duration;
    use tokio::time::Instant;

    let cluster = TestCluster::start(1, false, Options::default()).await?;
    cluster.init_and_start("n1").await?;
    let node = cluster.node("n1");
    let mut rx = watch_all(node)?;
    node.ms.deploy_watches()?;
    let mut last = 0;
    for i in 0..3 {
        last = node.ms.put(format!("k{i}"), "v").await?;
    }
    events_until(&mut rx, last).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let recorded = node
            .vault
            .get(metastorage::WATCH_REVISION_KEY)
            .await?
            .map(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).map(u64::from_be_bytes))
            .transpose()?;
        if recorded == Some(last) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recorded {recorded:?}, delivered {last}, node still running"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.stop().await
}

/// A node that comes back after the leader purged the log it missed catches up from a
/// snapshot, whose bytes the leader builds only then (its snapshots are cuts of the durable
/// sled storage until a follower needs one); its watches then go on from the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_a_purged_log_catches_up_from_a_snapshot() -> Result<()> {
    use serde_json::json;

    let options = Options {
        settings: vec![
            ("raft.snapshot_logs_since_last".to_owned(), json!(10)),
            ("raft.max_in_snapshot_log_to_keep".to_owned(), json!(0)),
        ],
        ..Options::default()
    };
    let mut cluster = TestCluster::start(3, true, options).await?;
    cluster.init_and_start("n1").await?;
    for node in &cluster.nodes {
        node.ms.deploy_watches()?;
    }
    let mut last = cluster.node("n1").ms.put("before", "stop").await?;
    cluster
        .node("n3")
        .ms
        .wait_watches(last, crate::harness::WAIT)
        .await?;
    let n3_applied = cluster
        .node("n3")
        .ms
        .group()
        .and_then(|g| g.metrics().last_applied)
        .map_or(0, |p| p.index);
    cluster.stop_node("n3").await?;

    let leader = cluster
        .nodes
        .iter()
        .find(|n| n.ms.group().is_some_and(|g| g.is_leader()))
        .map(|n| n.name.clone())
        .expect("a leader among n1 and n2");
    for i in 0..30 {
        last = cluster
            .node(&leader)
            .ms
            .put(format!("k{i}"), format!("v{i}"))
            .await?;
    }
    let group = cluster
        .node(&leader)
        .ms
        .group()
        .expect("the leader's group");
    group.trigger_snapshot().await?;
    group
        .wait_for(crate::harness::WAIT, "the log purged past n3", |m| {
            m.purged.is_some_and(|p| p.index > n3_applied + 1)
        })
        .await?;

    let dir = cluster.data_dir("n3");
    let node = TestNode::start("n3", cluster.seeds(), dir.as_deref(), &cluster.options).await?;
    node.start_ms().await?;
    assert!(
        node.ms.revision() >= last,
        "caught up before start returned"
    );
    for i in 0..30 {
        let entry = node.ms.get(format!("k{i}").as_bytes()).await?;
        assert_eq!(
            entry.and_then(|e| e.value),
            Some(format!("v{i}").into_bytes()),
            "k{i}"
        );
    }
    let m = node.ms.group().expect("n3's group").metrics();
    assert!(
        m.snapshot.is_some_and(|s| s.index > n3_applied),
        "caught up through a snapshot: {m:?}"
    );
    let mut rx = watch_all(&node)?;
    node.ms.deploy_watches()?;
    cluster.nodes.push(node);
    let more = cluster.node(&leader).ms.put("after", "restart").await?;
    let live = events_until(&mut rx, more).await?;
    assert_eq!(revisions(&live).last(), Some(&more));
    cluster.stop().await
}
