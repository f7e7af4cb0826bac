//! Rebalance on a baseline change: four nodes, a table on a baseline of three; the baseline
//! swaps one old node for the fourth, every partition's Raft group moves to its new
//! assignments (learner, catch-up, joint change), rows stay readable and writable all along,
//! and the node that left destroys its replicas.
use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use schema::{Column, ColumnType, TableSchema};
use serde_json::{json, Value};
use table::{partition_group_id, Table};

use crate::harness::{set, TestCluster, TestNode, WAIT};

fn row(i: u64) -> Value {
    json!({"id": i, "name": format!("row {i}")})
}

fn as_set(nodes: &[String]) -> BTreeSet<String> {
    nodes.iter().cloned().collect()
}

/// Whether every node of `target[p]` runs partition `p` with exactly `target[p]` as voters
/// and no learners, and agrees that this is the stable assignment.
fn moved(cluster: &TestCluster, table: &str, id: &str, target: &[Vec<String>]) -> bool {
    for node in &cluster.nodes {
        let Some(stable) = node.tables.stable_assignments(table) else {
            return false;
        };
        let stable: Vec<BTreeSet<String>> = stable.iter().map(|s| as_set(s)).collect();
        let want: Vec<BTreeSet<String>> = target.iter().map(|s| as_set(s)).collect();
        if stable != want {
            return false;
        }
    }
    for (p, nodes) in target.iter().enumerate() {
        let want = as_set(nodes);
        for name in nodes {
            let Some(node) = cluster.nodes.iter().find(|n| &n.name == name) else {
                return false;
            };
            let Some(group) = node.raft.group(&partition_group_id(id, p as u32)) else {
                return false;
            };
            let m = group.metrics();
            if as_set(&m.voters) != want || !m.learners.is_empty() {
                return false;
            }
        }
    }
    true
}

/// Upserts rows `from..` through `writer` and reads each back through `reader` until
/// `stop`; returns how many were written. Any failure fails the test.
async fn write_while_moving(
    writer: Table,
    reader: Table,
    from: u64,
    stop: Arc<AtomicBool>,
) -> Result<u64> {
    let mut i = from;
    while !stop.load(Ordering::SeqCst) {
        writer
            .upsert(&row(i))
            .await
            .with_context(|| format!("upsert {i} during the move"))?;
        let got = reader
            .get(&json!({"id": i}))
            .await
            .with_context(|| format!("get {i} during the move"))?;
        if got != Some(row(i)) {
            bail!("row {i} read back as {got:?} during the move");
        }
        i += 1;
    }
    Ok(i - from)
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    tokio::time::timeout(WAIT * 2, async {
        while !ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .with_context(|| format!("waiting until {what}"))
}

fn view(node: &TestNode, table: &str) -> Result<Table> {
    node.tables
        .table(table)
        .ok_or_else(|| anyhow!("table {table} on {}", node.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn baseline_change_moves_partitions_through_membership_changes() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(240), async {
        let cluster = TestCluster::start(4, 0).await?;
        cluster
            .wait_logical(&set(&["n1", "n2", "n3", "n4"]))
            .await?;
        let (n1, n2, n3, n4) = (
            &cluster.nodes[0],
            &cluster.nodes[1],
            &cluster.nodes[2],
            &cluster.nodes[3],
        );
        let b = n1.baseline.set(set(&["n1", "n2", "n3"])).await?;
        for node in &cluster.nodes {
            node.wait_baseline(|x| x.revision >= b.revision).await?;
        }
        let schema = TableSchema::new(
            "moves",
            vec![Column::new("id", ColumnType::Int64)],
            vec![Column::new("name", ColumnType::String)],
        )?;
        let info = n1.tables.create_table(schema, 8, 2).await?;
        let revision = n1.ms.revision();
        for node in &cluster.nodes {
            node.ms.wait_watches(revision, WAIT).await?;
        }
        let before = n1
            .tables
            .stable_assignments("moves")
            .ok_or_else(|| anyhow!("stable assignments of moves"))?;
        assert!(
            before.iter().all(|nodes| !nodes.contains(&"n4".to_owned())),
            "n4 is not in the baseline yet: {before:?}"
        );
        let n3_held = before
            .iter()
            .filter(|nodes| nodes.contains(&"n3".to_owned()))
            .count();
        assert!(
            n3_held > 0,
            "n3 holds partitions before the move: {before:?}"
        );
        let rows: Vec<Value> = (0..200).map(row).collect();
        view(n1, "moves")?.upsert_all(&rows).await?;

        // rows keep flowing (written through n2, read back through the newcomer n4)
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_while_moving(
            view(n2, "moves")?,
            view(n4, "moves")?,
            10_000,
            Arc::clone(&stop),
        ));

        let b = n1.baseline.set(set(&["n1", "n2", "n4"])).await?;
        let target = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(a) = n1.affinity.assignments("moves").await? {
                    if a.baseline_revision >= b.revision {
                        return Ok::<_, anyhow::Error>(a.partitions);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .context("assignments for the new baseline")??;
        assert!(target.iter().all(|nodes| !nodes.contains(&"n3".to_owned())));
        assert_ne!(
            target.iter().map(|s| as_set(s)).collect::<Vec<_>>(),
            before.iter().map(|s| as_set(s)).collect::<Vec<_>>(),
            "the new baseline moves partitions"
        );
        wait_until("every group runs its new assignment", || {
            moved(&cluster, "moves", &info.id, &target)
        })
        .await?;
        // the node that left destroys its replicas once it is out of the committed groups
        tokio::time::timeout(WAIT, async {
            while !n3.tables.local_partitions().await.is_empty()
                || !n3
                    .provider
                    .partitions()
                    .map(|p| p.is_empty())
                    .unwrap_or(false)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .context("n3 destroys its replicas")?;
        assert!(n3.service.registered().is_empty());
        assert!(
            !n3.raft.groups().iter().any(|g| g.starts_with(&info.id)),
            "n3 stopped its partition groups: {:?}",
            n3.raft.groups()
        );
        let on_n4 = n4.tables.local_partitions().await;
        assert_eq!(
            on_n4.len(),
            target
                .iter()
                .filter(|nodes| nodes.contains(&"n4".to_owned()))
                .count(),
            "n4 runs exactly its assigned partitions"
        );

        stop.store(true, Ordering::SeqCst);
        let written = writer.await??;
        assert!(written > 0, "rows were written during the move");

        // every row is there, through any node, and the table takes writes after the move
        let reader = view(n4, "moves")?;
        let keys: Vec<Value> = (0..200).map(|i| json!({"id": i})).collect();
        assert_eq!(
            reader.get_all(&keys).await?,
            rows.iter().cloned().map(Some).collect::<Vec<_>>()
        );
        let during: Vec<Value> = (10_000..10_000 + written)
            .map(|i| json!({"id": i}))
            .collect();
        let got = view(n1, "moves")?.get_all(&during).await?;
        assert!(
            got.iter().all(Option::is_some),
            "rows written during the move"
        );
        assert_eq!(
            reader.scan(None, 100_000).await?.len() as u64,
            200 + written
        );
        view(n3, "moves")?.upsert(&row(50_000)).await?;
        assert_eq!(
            view(n2, "moves")?.get(&json!({"id": 50_000})).await?,
            Some(row(50_000))
        );
        cluster.stop().await
    })
    .await
    .context("test bound")?
}
