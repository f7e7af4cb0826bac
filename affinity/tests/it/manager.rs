//! `AffinityManager` in a 3-node cluster: assignments stored once, identical on every node,
//! and recomputed (every table in one write) when the baseline changes.
use affinity::{rendezvous::assign, Error};
use anyhow::Result;

use crate::harness::{set, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assignments_follow_the_baseline_on_every_node() -> Result<()> {
    let cluster = TestCluster::start(3, 0).await?;
    let all = set(&["n1", "n2", "n3"]);
    cluster.wait_logical(&all).await?;
    let (n1, n2, n3) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);

    assert!(matches!(
        n2.affinity.calculate_and_store("people", 8, 2).await,
        Err(Error::EmptyBaseline { .. })
    ));
    let b1 = n1.baseline.set(all.clone()).await?;
    for node in &cluster.nodes {
        assert_eq!(node.wait_baseline(|b| b.revision >= b1.revision).await?, b1);
    }

    let people = n2.affinity.calculate_and_store("people", 8, 2).await?;
    assert_eq!(people.partitions, assign("people", 8, 2, &all));
    assert_eq!(people.baseline_revision, b1.revision);
    assert!(people.revision > b1.revision);
    let again = n3.affinity.calculate_and_store("people", 16, 3).await?;
    assert_eq!(again, people, "only the first create writes");
    let orders = n3.affinity.calculate_and_store("orders", 4, 1).await?;
    assert!(matches!(
        n1.affinity.calculate_and_store("bad", 0, 1).await,
        Err(Error::Invalid { .. })
    ));
    for node in &cluster.nodes {
        let seen = node
            .wait_assignments("people", |a| a.revision == people.revision)
            .await?;
        assert_eq!(seen, people, "node {}", node.name);
        assert_eq!(
            node.affinity.assignments("people").await?,
            Some(people.clone())
        );
    }

    // the baseline shrinks: every table is recomputed, in one revision, the same everywhere
    let two = set(&["n1", "n2"]);
    let b2 = n3.baseline.set(two.clone()).await?;
    let mut seen = Vec::new();
    for node in &cluster.nodes {
        seen.push(
            node.wait_assignments("people", |a| a.baseline_revision == b2.revision)
                .await?,
        );
    }
    assert!(seen.iter().all(|a| a == &seen[0]), "{seen:?}");
    assert_eq!(seen[0].partitions, assign("people", 8, 2, &two));
    assert_eq!(seen[0].replicas, 2);
    let all_now = n1.affinity.all_assignments().await?;
    assert_eq!(all_now.len(), 2);
    assert_eq!(all_now["orders"].partitions, assign("orders", 4, 1, &two));
    assert_eq!(
        all_now["orders"].revision, seen[0].revision,
        "one write for every table"
    );
    assert_ne!(all_now["orders"], orders);
    assert_eq!(
        n2.affinity.assignments_at("people", people.revision)?,
        Some(people),
        "history stays readable at a revision"
    );

    assert!(n1.affinity.remove("orders").await?);
    assert!(!n1.affinity.remove("orders").await?);
    assert_eq!(n2.affinity.assignments("orders").await?, None);
    cluster.stop().await
}
