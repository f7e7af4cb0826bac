//! The baseline follows the logical topology once it has been quiet, on every node alike.
use anyhow::Result;

use crate::harness::{set, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn baseline_follows_the_logical_topology() -> Result<()> {
    let mut cluster = TestCluster::start(3, 200).await?;
    let all = set(&["n1", "n2", "n3"]);
    cluster.wait_logical(&all).await?;

    let mut first = Vec::new();
    for node in &cluster.nodes {
        first.push(node.wait_baseline(|b| b.nodes == all).await?);
    }
    assert!(first[0].revision > 0);
    assert!(
        first.iter().all(|b| b == &first[0]),
        "every node holds the same baseline at the same revision: {first:?}"
    );
    assert_eq!(cluster.nodes[1].baseline.current().await?, first[0]);

    // a node leaves: after the quiet period the baseline drops it
    cluster.stop_node("n3").await?;
    let rest = set(&["n1", "n2"]);
    let mut second = Vec::new();
    for node in &cluster.nodes {
        second.push(node.wait_baseline(|b| b.nodes == rest).await?);
    }
    assert_eq!(second[0], second[1]);
    assert!(second[0].revision > first[0].revision);
    cluster.stop().await
}
