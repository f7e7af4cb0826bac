//! Compaction through the manager: by API (reads below fail with a clear error) and by the
//! configured retention window.
use std::time::Duration;

use anyhow::Result;
use metastorage::Error;

use crate::harness::{Options, TestCluster, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compact_by_api_makes_old_reads_fail_on_every_node() -> Result<()> {
    let cluster = TestCluster::start(3, false, Options::default()).await?;
    cluster.init_and_start("n1").await?;
    let ms = &cluster.node("n2").ms;
    let r1 = ms.put("k", "1").await?;
    let r2 = ms.put("k", "2").await?;
    let r3 = ms.put("k", "3").await?;
    let ahead = ms.compact(r3 + 10).await.unwrap_err();
    assert!(matches!(ahead, Error::RevisionAhead { .. }), "{ahead}");
    ms.compact(r2).await?;
    for node in &cluster.nodes {
        node.ms.linearizable_revision().await?;
        let err = node.ms.get_at(b"k", r1).unwrap_err();
        assert!(matches!(err, Error::Compacted { .. }), "{err}");
        assert!(err.to_string().contains("is compacted"), "{err}");
        assert_eq!(
            node.ms.get_at(b"k", r2)?.and_then(|e| e.value),
            Some(b"2".to_vec())
        );
        assert_eq!(
            node.ms.get(b"k").await?.map(|e| e.revision),
            Some(r3),
            "latest kept"
        );
    }
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_compacts_behind_the_watches() -> Result<()> {
    let cluster = TestCluster::start(
        1,
        false,
        Options {
            retention: 3,
            ..Options::default()
        },
    )
    .await?;
    cluster.init_and_start("n1").await?;
    let ms = &cluster.node("n1").ms;
    let mut last = 0;
    for i in 0..10 {
        last = ms.put(format!("k{i}"), "v").await?;
    }
    assert_eq!(
        ms.compacted_revision(),
        0,
        "nothing compacted before watches delivered"
    );
    ms.deploy_watches()?;
    ms.wait_watches(last, WAIT).await?;
    let target = last - 3;
    tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while ms.compacted_revision() < target {
            tick.tick().await;
        }
    })
    .await?;
    assert_eq!(
        ms.compacted_revision(),
        target,
        "keeps the retention window"
    );
    assert!(ms.get_at(b"k0", target - 1).is_err());
    assert!(ms.get_at(b"k9", target).is_ok());
    cluster.stop().await
}
