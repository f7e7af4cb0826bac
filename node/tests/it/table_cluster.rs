//! Tables on three in-process nodes with data on disk, through `IgniteImpl::tables()`: every
//! partition gets a leader, 10,000 rows written through one node are read through the others,
//! a node stops and the rows stay readable and writable, it restarts on its data directory and
//! catches up, an alter keeps old rows readable, a drop frees the replicas on every node.
use std::{collections::BTreeSet, time::Duration};

use lifecycle::NodeState;
use node::{IgniteImpl, InitRequest, NodeOptions};
use schema::{AlterOp, Column, ColumnType, TableSchema};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);
const ROWS: i64 = 10_000;
const PARTITIONS: u32 = 8;

fn options(name: &str, dir: &std::path::Path, seeds: Vec<String>) -> NodeOptions {
    let mut options = NodeOptions::standalone(name, dir)
        .with("network.seeds", seeds)
        .with("network.failure_detection_ms", 1_000)
        .with("raft.election_timeout_min_ms", 500)
        .with("raft.election_timeout_max_ms", 1_000)
        .with("raft.heartbeat_interval_ms", 100)
        .with("raft.data_election_timeout_min_ms", 500)
        .with("raft.data_election_timeout_max_ms", 1_000)
        .with("raft.data_heartbeat_interval_ms", 100);
    options.standalone = false;
    options
}

/// Polls `check` until it returns `Some`, failing with `what` after the deadline.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn row(i: i64) -> Value {
    json!({"id": i, "name": format!("person {i}")})
}

async fn local_replicas(node: &IgniteImpl) -> usize {
    node.tables().local_partitions().await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_survive_a_stopped_node_and_a_restart_on_disk() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = IgniteImpl::start(options("a", dirs[0].path(), vec![]))
        .await
        .unwrap();
    let seed = a.info().network_address.unwrap().to_string();
    let b = IgniteImpl::start(options("b", dirs[1].path(), vec![seed.clone()]))
        .await
        .unwrap();
    let c = IgniteImpl::start(options("c", dirs[2].path(), vec![seed.clone()]))
        .await
        .unwrap();
    for n in [&a, &b, &c] {
        eventually("three members", || async {
            (n.topology().members().len() == 3).then_some(())
        })
        .await;
    }
    a.init_cluster(InitRequest {
        name: "tables".into(),
        metastorage: vec![],
    })
    .await
    .unwrap();
    let all: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    for n in [&a, &b, &c] {
        let state = n
            .wait_for_state(DEADLINE, |s| s == NodeState::Started)
            .await;
        assert_eq!(state, Some(NodeState::Started), "{}", n.name());
    }
    a.set_baseline(all.clone()).await.unwrap();
    for n in [&a, &b, &c] {
        eventually("baseline on every node", || async {
            (n.baseline().nodes == all).then_some(())
        })
        .await;
    }

    let schema = TableSchema::new(
        "people",
        vec![Column::new("id", ColumnType::Int64)],
        vec![Column::new("name", ColumnType::String)],
    )
    .unwrap();
    let info = b
        .tables()
        .create_table(schema, PARTITIONS, 3)
        .await
        .unwrap();
    assert_eq!((info.partitions, info.replicas), (PARTITIONS, 3));
    // 8 partitions x 3 replicas over 3 nodes: every node runs all 8, each group has a leader
    for n in [&a, &b, &c] {
        eventually("8 local replicas", || async {
            (local_replicas(n).await == PARTITIONS as usize).then_some(())
        })
        .await;
        eventually("the table on every node", || async {
            n.tables().table("people")
        })
        .await;
    }

    let writer = a.tables().table("people").unwrap();
    let rows: Vec<Value> = (0..ROWS).map(row).collect();
    for chunk in rows.chunks(1_000) {
        writer.upsert_all(chunk).await.unwrap();
    }
    for reader in [&b, &c] {
        let table = reader.tables().table("people").unwrap();
        let keys: Vec<Value> = (0..ROWS).step_by(7).map(|i| json!({"id": i})).collect();
        let got = table.get_all(&keys).await.unwrap();
        for (key, got) in keys.iter().zip(got) {
            let i = key["id"].as_i64().unwrap();
            assert_eq!(got, Some(row(i)), "row {i} through {}", reader.name());
        }
    }
    let scanned = c
        .tables()
        .table("people")
        .unwrap()
        .scan(None, ROWS as u32 + 10)
        .await
        .unwrap();
    assert_eq!(
        scanned, rows,
        "a merged scan returns every row in key order"
    );

    // c stops: a majority of every partition remains, rows stay readable and writable
    c.stop().await;
    let survivor = b.tables().table("people").unwrap();
    let keys: Vec<Value> = (0..ROWS).step_by(13).map(|i| json!({"id": i})).collect();
    let got = survivor.get_all(&keys).await.unwrap();
    assert!(
        got.iter().all(Option::is_some),
        "every row readable without c"
    );
    let late: Vec<Value> = (ROWS..ROWS + 200).map(row).collect();
    survivor.upsert_all(&late).await.unwrap();
    assert!(survivor.delete(&json!({"id": 0})).await.unwrap());

    // c restarts on its data directory, catches up and serves what it missed
    let c = IgniteImpl::start(options("c", dirs[2].path(), vec![seed]))
        .await
        .unwrap();
    let state = c
        .wait_for_state(DEADLINE, |s| s == NodeState::Started)
        .await;
    assert_eq!(state, Some(NodeState::Started));
    eventually("c runs its 8 replicas again", || async {
        (local_replicas(&c).await == PARTITIONS as usize).then_some(())
    })
    .await;
    let table = c.tables().table("people").unwrap();
    assert_eq!(
        table.get(&json!({"id": ROWS + 199})).await.unwrap(),
        Some(row(ROWS + 199))
    );
    assert_eq!(table.get(&json!({"id": 0})).await.unwrap(), None);
    assert_eq!(
        table.scan(None, ROWS as u32 + 500).await.unwrap().len(),
        (ROWS + 200 - 1) as usize
    );

    // alter: old rows read through the new schema
    a.schemas()
        .alter(
            "people",
            AlterOp::AddColumn(Column::new("age", ColumnType::Int32).nullable()),
        )
        .await
        .unwrap();
    eventually("c sees schema version 2", || async {
        c.schemas().latest("people").ok().filter(|s| s.version == 2)
    })
    .await;
    assert_eq!(
        table.get(&json!({"id": 5})).await.unwrap(),
        Some(json!({"id": 5, "name": "person 5", "age": null}))
    );
    table
        .upsert(&json!({"id": 5, "name": "person 5", "age": 41}))
        .await
        .unwrap();
    assert_eq!(
        writer.get(&json!({"id": 5})).await.unwrap(),
        Some(json!({"id": 5, "name": "person 5", "age": 41}))
    );

    // drop frees the replicas on every node
    b.tables().drop_table("people").await.unwrap();
    for n in [&a, &b, &c] {
        eventually("no replica left", || async {
            (local_replicas(n).await == 0 && n.tables().table("people").is_none()).then_some(())
        })
        .await;
    }
    for n in [&c, &b, &a] {
        n.stop().await;
    }
}
