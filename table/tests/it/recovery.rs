//! Table manager recovery on persistent nodes: a node down while a table is dropped comes
//! back without the dropped table's storages and serves the remaining table with the rows
//! written while it was away; a storage left behind by a crash (applied revision not
//! recorded) goes in the start's full update; replicas whose partitions moved away while the
//! node was down go once the node sees the committed move.
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use schema::{Column, ColumnType, TableSchema};
use serde_json::{json, Value};
use table::{WriteBatch, APPLIED_REVISION_KEY};

use crate::harness::{set, TestCluster, TestNode, WAIT};

fn row(i: u64) -> Value {
    json!({"id": i, "v": format!("value {i}")})
}

fn schema(name: &str) -> Result<TableSchema> {
    Ok(TableSchema::new(
        name,
        vec![Column::new("id", ColumnType::Int64)],
        vec![Column::new("v", ColumnType::String)],
    )?)
}

/// The partitions of table id `id` in `node`'s partition storage.
fn stored(node: &TestNode, id: &str) -> Result<Vec<u32>> {
    Ok(node
        .provider
        .partitions()?
        .into_iter()
        .filter(|(t, _)| t == id)
        .map(|(_, p)| p)
        .collect())
}

/// Rows in `node`'s local storages of table id `id`.
fn local_rows(node: &TestNode, id: &str, partitions: u32) -> Result<u64> {
    let mut n = 0;
    for p in 0..partitions {
        n += node.provider.partition(id, p)?.len()?;
    }
    Ok(n)
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> Result<bool>) -> Result<()> {
    tokio::time::timeout(WAIT, async {
        loop {
            if ok()? {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .with_context(|| format!("waiting until {what}"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_node_drops_stale_storages_and_serves_the_rest() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(240), async {
        let mut cluster = TestCluster::start_persistent(3, 0).await?;
        let all = set(&["n1", "n2", "n3"]);
        cluster.wait_logical(&all).await?;
        let n1 = cluster.node("n1")?;
        let b = n1.baseline.set(all).await?;
        for node in &cluster.nodes {
            node.wait_baseline(|x| x.revision >= b.revision).await?;
        }
        let keep = n1.tables.create_table(schema("keep")?, 4, 3).await?;
        let gone = n1.tables.create_table(schema("gone")?, 4, 3).await?;
        let revision = n1.ms.revision();
        for node in &cluster.nodes {
            node.ms.wait_watches(revision, WAIT).await?;
        }
        let rows: Vec<Value> = (0..100).map(row).collect();
        let keep_view = n1.tables.table("keep").ok_or_else(|| anyhow!("keep"))?;
        keep_view.upsert_all(&rows[..50]).await?;
        n1.tables
            .table("gone")
            .ok_or_else(|| anyhow!("gone"))?
            .upsert_all(&rows)
            .await?;
        let n3 = cluster.node("n3")?;
        wait_for("n3 holds both tables", || {
            Ok(stored(n3, &keep.id)?.len() == 4 && local_rows(n3, &gone.id, 4)? == 100)
        })
        .await?;

        // n3 goes down; meanwhile the table is dropped and the other one takes rows
        cluster.stop_node("n3").await?;
        let n1 = cluster.node("n1")?;
        n1.tables.drop_table("gone").await?;
        keep_view.upsert_all(&rows[50..]).await?;

        cluster.restart_node("n3").await?;
        let n3 = cluster.node("n3")?;
        wait_for("n3 destroyed the dropped table's storages", || {
            Ok(stored(n3, &gone.id)?.is_empty())
        })
        .await?;
        wait_for(
            "n3 caught up with the rows written while it was down",
            || Ok(local_rows(n3, &keep.id, 4)? == 100),
        )
        .await?;
        assert_eq!(stored(n3, &keep.id)?, vec![0, 1, 2, 3]);
        assert!(n3.tables.table("gone").is_none());
        let mut served = n3.service.registered();
        served.retain(|(t, _)| t == &keep.id);
        assert_eq!(served.len(), 4, "n3 serves every partition of keep");
        let on_n3 = n3
            .tables
            .table("keep")
            .ok_or_else(|| anyhow!("keep on n3"))?;
        let keys: Vec<Value> = (0..100).map(|i| json!({"id": i})).collect();
        assert_eq!(
            on_n3.get_all(&keys).await?,
            rows.iter().cloned().map(Some).collect::<Vec<_>>()
        );

        // a crash after the drop was seen but before its storage was destroyed: the storage
        // is still on disk and the applied revision was not recorded
        let leftover = n3.provider.partition(&gone.id, 2)?;
        let mut batch = WriteBatch::new();
        batch.upsert(b"k".to_vec(), b"v".to_vec());
        leftover.apply(batch)?;
        drop(leftover);
        assert_eq!(stored(n3, &gone.id)?, vec![2]);
        n3.vault
            .put(APPLIED_REVISION_KEY, 1u64.to_be_bytes().to_vec())
            .await?;
        cluster.stop_node("n3").await?;
        cluster.restart_node("n3").await?;
        let n3 = cluster.node("n3")?;
        // the full update runs inside start: gone before any watch event
        assert!(
            stored(n3, &gone.id)?.is_empty(),
            "the full update destroys the leftover storage"
        );
        assert_eq!(stored(n3, &keep.id)?, vec![0, 1, 2, 3]);
        let on_n3 = n3
            .tables
            .table("keep")
            .ok_or_else(|| anyhow!("keep on n3"))?;
        on_n3.upsert(&row(500)).await?;
        assert_eq!(on_n3.get(&json!({"id": 500})).await?, Some(row(500)));
        cluster.stop().await
    })
    .await
    .context("test bound")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_moved_away_while_a_node_was_down_are_destroyed_at_its_restart() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(240), async {
        let mut cluster = TestCluster::start_persistent(4, 0).await?;
        cluster
            .wait_logical(&set(&["n1", "n2", "n3", "n4"]))
            .await?;
        let n1 = cluster.node("n1")?;
        let b = n1.baseline.set(set(&["n1", "n2", "n3"])).await?;
        for node in &cluster.nodes {
            node.wait_baseline(|x| x.revision >= b.revision).await?;
        }
        let info = n1.tables.create_table(schema("moved")?, 4, 3).await?;
        let view = n1.tables.table("moved").ok_or_else(|| anyhow!("moved"))?;
        let rows: Vec<Value> = (0..60).map(row).collect();
        view.upsert_all(&rows).await?;
        let n3 = cluster.node("n3")?;
        wait_for("n3 holds every partition", || {
            Ok(local_rows(n3, &info.id, 4)? == 60)
        })
        .await?;

        // n3 goes down, the baseline swaps it for n4: every group moves while it is away
        cluster.stop_node("n3").await?;
        let n1 = cluster.node("n1")?;
        n1.baseline.set(set(&["n1", "n2", "n4"])).await?;
        let want = vec![set(&["n1", "n2", "n4"]); 4];
        wait_for("every group runs on n1, n2 and n4", || {
            Ok(n1.tables.stable_assignments("moved").is_some_and(|s| {
                s.iter()
                    .map(|v| {
                        v.iter()
                            .cloned()
                            .collect::<std::collections::BTreeSet<String>>()
                    })
                    .collect::<Vec<_>>()
                    == want
            }))
        })
        .await?;
        let n4 = cluster.node("n4")?;
        wait_for("n4 caught up", || Ok(local_rows(n4, &info.id, 4)? == 60)).await?;

        // back up: its old replicas are out of the committed groups, so they go
        cluster.restart_node("n3").await?;
        let n3 = cluster.node("n3")?;
        tokio::time::timeout(WAIT, async {
            while !n3.tables.local_partitions().await.is_empty()
                || !stored(n3, &info.id)?.is_empty()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .context("n3 destroys the replicas that moved away")??;
        // and still serves the table, through the nodes that hold it
        let on_n3 = n3
            .tables
            .table("moved")
            .ok_or_else(|| anyhow!("moved on n3"))?;
        let keys: Vec<Value> = (0..60).map(|i| json!({"id": i})).collect();
        assert_eq!(
            on_n3.get_all(&keys).await?,
            rows.iter().cloned().map(Some).collect::<Vec<_>>()
        );
        on_n3.upsert(&row(700)).await?;
        assert_eq!(
            cluster
                .node("n4")?
                .tables
                .table("moved")
                .ok_or_else(|| anyhow!("moved on n4"))?
                .get(&json!({"id": 700}))
                .await?,
            Some(row(700))
        );
        cluster.stop().await
    })
    .await
    .context("test bound")?
}
