//! Cluster init over a real 3-node network: the state reaches every vault, init is
//! idempotent, and writes on any node are linearizably readable on every node.
use anyhow::Result;
use lifecycle::Component;
use metastorage::{Error, InitRequest};

use crate::harness::{Options, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn init_reaches_every_vault_and_writes_are_linearizable_everywhere() -> Result<()> {
    let cluster = TestCluster::start(3, false, Options::default()).await?;
    let n1 = cluster.node("n1");

    // before init: the KV API says what to do
    let err = n1.ms.get(b"k").await.unwrap_err();
    assert!(matches!(err, Error::NotInitialized), "{err}");
    assert!(err.to_string().contains("ignite cluster init"), "{err}");
    assert_eq!(n1.ms.cluster_state().await?, None);

    let state = n1
        .ms
        .init_cluster(InitRequest {
            name: "test".into(),
            metastorage: vec![],
        })
        .await?;
    assert_eq!(state.name, "test");
    assert_eq!(state.metastorage_voters, vec!["n1", "n2", "n3"]);
    for node in &cluster.nodes {
        // read back from each node's vault
        assert_eq!(
            node.ms.cluster_state().await?,
            Some(state.clone()),
            "{}",
            node.name
        );
    }

    cluster.start_all_ms().await?;
    for (i, writer) in cluster.nodes.iter().enumerate() {
        let key = format!("key/{i}");
        let value = format!("from {}", writer.name);
        let revision = writer.ms.put(key.clone(), value.clone()).await?;
        for reader in &cluster.nodes {
            let entry = reader.ms.get(key.as_bytes()).await?;
            let entry = entry.unwrap_or_else(|| panic!("{key} on {}", reader.name));
            assert_eq!(entry.value.as_deref(), Some(value.as_bytes()));
            assert_eq!(entry.revision, revision);
            assert!(reader.ms.revision() >= revision);
        }
    }
    let last = cluster
        .node("n3")
        .ms
        .put_all(vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
        ])
        .await?;
    let got = cluster.node("n2").ms.prefix(b"key/").await?;
    assert_eq!(got.len(), 3);
    assert_eq!(
        cluster.node("n1").ms.range(b"a", Some(b"c")).await?.len(),
        2
    );
    let removed = cluster.node("n2").ms.remove(b"a".to_vec()).await?;
    assert_eq!(removed, last + 1);
    assert!(cluster
        .node("n1")
        .ms
        .get(b"a")
        .await?
        .is_some_and(|e| e.tombstone));
    // a local read only sees what this node applied: n3 forwarded its write to the
    // leader, so it catches up (read index) before reading at that revision
    let n3 = cluster.node("n3");
    assert!(n3.ms.linearizable_revision().await? >= removed);
    assert_eq!(
        n3.ms.get_at(b"a", last)?.and_then(|e| e.value),
        Some(b"1".to_vec()),
        "local read at an older revision"
    );
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn init_twice_is_idempotent_and_refuses_other_parameters() -> Result<()> {
    let cluster = TestCluster::start(3, false, Options::default()).await?;
    let request = InitRequest {
        name: "prod".into(),
        metastorage: vec!["n2".into()],
    };
    let bad = cluster
        .node("n1")
        .ms
        .init_cluster(InitRequest {
            name: "prod".into(),
            metastorage: vec!["nx".into()],
        })
        .await
        .unwrap_err();
    assert!(
        bad.to_string()
            .contains("metastorage nodes nx are not in the physical topology"),
        "{bad}"
    );
    let first = cluster.node("n1").ms.init_cluster(request.clone()).await?;
    assert_eq!(first.metastorage_voters, vec!["n2"]);
    // the same request again, from another node: the same state
    let again = cluster.node("n3").ms.init_cluster(request.clone()).await?;
    assert_eq!(again, first);
    let other = cluster
        .node("n2")
        .ms
        .init_cluster(InitRequest {
            name: "other".into(),
            metastorage: vec!["n1".into()],
        })
        .await
        .unwrap_err();
    assert!(matches!(other, Error::AlreadyInitialized(_)), "{other}");
    let msg = other.to_string();
    assert!(
        msg.contains("its name is \"prod\", the request says \"other\""),
        "{msg}"
    );
    assert!(
        msg.contains("voters are [n2], the request says [n1]"),
        "{msg}"
    );

    // a single voter: the others are learners
    cluster.start_all_ms().await?;
    let rev = cluster.node("n1").ms.put("k", "v").await?;
    assert_eq!(
        cluster.node("n3").ms.get(b"k").await?.map(|e| e.revision),
        Some(rev)
    );
    let group = cluster.node("n1").ms.group().expect("group");
    assert_eq!(group.metrics().voters, vec!["n2"]);
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_stop_loses_no_acknowledged_write() -> Result<()> {
    let mut cluster = TestCluster::start(3, false, Options::default()).await?;
    cluster.init_and_start("n1").await?;
    let mut acked = Vec::new();
    for i in 0..5 {
        let rev = cluster.node("n2").ms.put(format!("k{i}"), "v").await?;
        acked.push((format!("k{i}"), rev));
    }
    let leader = cluster
        .node("n1")
        .ms
        .group()
        .and_then(|g| g.leader())
        .expect("a leader");
    let stopped = cluster.node(&leader);
    stopped
        .ms
        .stop()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let after = stopped.ms.get(b"k0").await.unwrap_err();
    assert!(after.is_retryable(), "a stopped manager refuses: {after}");
    cluster.stop_node(&leader).await?;
    let survivor = &cluster.nodes[0];
    let rev = survivor.ms.put("after", "failover").await?;
    for node in &cluster.nodes {
        for (key, rev) in &acked {
            assert_eq!(
                node.ms.get(key.as_bytes()).await?.map(|e| e.revision),
                Some(*rev),
                "{key} on {}",
                node.name
            );
        }
        assert!(node
            .ms
            .get(b"after")
            .await?
            .is_some_and(|e| e.revision == rev));
    }
    cluster.stop().await
}
