//! Nodes beyond the voters: default voters with four nodes, and a node that appears after
//! init receives the cluster state, becomes a learner and catches up.
use anyhow::Result;
use metastorage::InitRequest;
use raft::Role;

use crate::harness::{events_until, watch_all, Options, TestCluster, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_voters_are_three_and_the_fourth_is_a_learner() -> Result<()> {
    let cluster = TestCluster::start(4, false, Options::default()).await?;
    assert_eq!(
        cluster.node("n2").ms.fetch_cluster_state().await?,
        None,
        "nobody holds a state before init"
    );
    let state = cluster
        .node("n4")
        .ms
        .init_cluster(InitRequest {
            name: "four".into(),
            metastorage: vec![],
        })
        .await?;
    assert_eq!(state.metastorage_voters, vec!["n1", "n2", "n3"]);
    cluster.start_all_ms().await?;
    let rev = cluster.node("n4").ms.put("from", "learner").await?;
    let group = cluster.node("n4").ms.group().expect("group");
    assert_eq!(group.metrics().role, Role::Learner);
    assert_eq!(
        cluster
            .node("n1")
            .ms
            .get(b"from")
            .await?
            .map(|e| e.revision),
        Some(rev)
    );
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_started_later_becomes_a_learner_and_catches_up() -> Result<()> {
    let mut cluster = TestCluster::start(3, false, Options::default()).await?;
    let state = cluster.init_and_start("n1").await?;
    let mut last = 0;
    for i in 0..20 {
        last = cluster.node("n2").ms.put(format!("k{i:02}"), "v").await?;
    }
    cluster.add_node("n4").await?;
    let n4 = cluster.node("n4");
    assert_eq!(
        n4.wait_cluster_state().await?,
        state,
        "pushed by the others"
    );
    assert_eq!(n4.ms.fetch_cluster_state().await?, Some(state.clone()));
    n4.start_ms().await?;
    assert!(n4.ms.revision() >= last, "caught up during start");
    let mut rx = watch_all(n4)?;
    n4.ms.deploy_watches()?;
    let group = n4.ms.group().expect("group");
    group
        .wait_for(WAIT, "n4 is a learner", |m| m.role == Role::Learner)
        .await?;
    assert_eq!(n4.ms.prefix(b"k").await?.len(), 20);
    let next = cluster.node("n3").ms.put("new", "x").await?;
    let events = events_until(&mut rx, next).await?;
    assert_eq!(events.last().map(|e| e.revision), Some(next));
    assert_eq!(
        n4.ms.get_at(b"new", next)?.and_then(|e| e.value),
        Some(b"x".to_vec()),
        "a learner reads locally"
    );
    let leader = cluster.node("n1").ms.group().expect("group");
    assert!(leader.metrics().learners.contains(&"n4".to_owned()) || !leader.is_leader());
    cluster.stop().await
}
