//! A baseline set by hand: validated against the logical topology, stored once, seen by
//! every node; with `auto_adjust_ms = 0` nothing else writes it.
use anyhow::Result;
use baseline::{Baseline, Error};

use crate::harness::{set, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_set_is_validated_and_reaches_every_node() -> Result<()> {
    let cluster = TestCluster::start(3, 0).await?;
    cluster.wait_logical(&set(&["n1", "n2", "n3"])).await?;
    let n2 = &cluster.nodes[1].baseline;
    for node in &cluster.nodes {
        assert_eq!(
            node.baseline.configuration()?.quiet_period(),
            None,
            "node {} reads the cluster-wide setting",
            node.name
        );
    }
    assert_eq!(
        n2.current().await?,
        Baseline::default(),
        "manual only: no baseline until someone sets one"
    );

    let err = n2.set(set(&["n1", "n7", "n9"])).await.unwrap_err();
    assert!(matches!(err, Error::NotInLogicalTopology(ref n) if n == &["n7", "n9"]));
    assert_eq!(
        err.to_string(),
        "nodes n7, n9 are not in the logical topology"
    );
    assert!(matches!(n2.set(set(&[])).await, Err(Error::Empty)));
    assert_eq!(
        n2.current().await?.revision,
        0,
        "a refused set writes nothing"
    );

    let stored = n2.set(set(&["n1", "n3"])).await?;
    assert_eq!(stored.nodes, set(&["n1", "n3"]));
    assert!(stored.revision > 0);
    for node in &cluster.nodes {
        let seen = node
            .wait_baseline(|b| b.revision >= stored.revision)
            .await?;
        assert_eq!(seen, stored, "node {}", node.name);
    }
    // setting the same nodes again is a no-op
    assert_eq!(
        cluster.nodes[0].baseline.set(set(&["n1", "n3"])).await?,
        stored
    );
    cluster.stop().await
}
