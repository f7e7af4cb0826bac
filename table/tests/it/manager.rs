//! `TableManager` in a 3-node cluster: a table created on one node, written through
//! another and read through the third, then dropped everywhere.
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use schema::{Column, ColumnType, TableSchema};
use serde_json::json;
use table::Error;

use lifecycle::Component;

use crate::harness::{ctx, set, TestCluster, TestNode, WAIT};

/// Waits until `node` runs exactly `want` partition replicas.
async fn wait_local(node: &TestNode, want: impl Fn(usize) -> bool) -> Result<usize> {
    tokio::time::timeout(WAIT, async {
        loop {
            let n = node.tables.local_partitions().await.len();
            if want(n) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| format!("local partitions on {}", node.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_write_read_scan_and_drop_across_three_nodes() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = TestCluster::start(3, 0).await?;
        let all = set(&["n1", "n2", "n3"]);
        cluster.wait_logical(&all).await?;
        let (n1, n2, n3) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
        let schema = TableSchema::new(
            "people",
            vec![Column::new("id", ColumnType::Int64)],
            vec![Column::new("name", ColumnType::String)],
        )?;
        // no baseline yet: refused, and nothing is left behind (the same create works later)
        assert!(matches!(
            n1.tables.create_table(schema.clone(), 4, 2).await,
            Err(Error::Affinity(affinity::Error::EmptyBaseline { .. }))
        ));
        let b = n1.baseline.set(all.clone()).await?;
        for node in &cluster.nodes {
            node.wait_baseline(|x| x.revision >= b.revision).await?;
        }

        assert!(matches!(
            n1.tables.create_table(schema.clone(), 0, 2).await,
            Err(Error::InvalidTable { .. })
        ));
        let info = n1.tables.create_table(schema.clone(), 4, 2).await?;
        assert_eq!(
            (info.name.as_str(), info.partitions, info.replicas),
            ("people", 4, 2)
        );
        assert!(matches!(
            n2.tables.create_table(schema.clone(), 8, 1).await,
            Err(Error::TableExists { .. })
        ));
        let revision = n1.ms.revision();
        for node in &cluster.nodes {
            node.ms.wait_watches(revision, WAIT).await?;
            assert_eq!(
                node.tables.tables(),
                vec![info.clone()],
                "node {}",
                node.name
            );
        }
        // 4 partitions x 2 replicas over 3 nodes
        let mut counts = Vec::new();
        for node in &cluster.nodes {
            counts.push(wait_local(node, |n| n >= 2).await?);
        }
        assert_eq!(counts.iter().sum::<usize>(), 8);

        let writer = n2
            .tables
            .table("people")
            .ok_or_else(|| anyhow!("people on n2"))?;
        let rows: Vec<_> = (0..100)
            .map(|i| json!({"id": i, "name": format!("person {i}")}))
            .collect();
        writer.upsert_all(&rows[..90]).await?;
        for row in &rows[90..] {
            writer.upsert(row).await?;
        }

        let reader = n3
            .tables
            .table("people")
            .ok_or_else(|| anyhow!("people on n3"))?;
        for i in [0, 17, 89, 90, 99] {
            assert_eq!(
                reader.get(&json!({"id": i})).await?,
                Some(json!({"id": i, "name": format!("person {i}")}))
            );
        }
        assert_eq!(reader.get(&json!({"id": 1000})).await?, None);
        let keys: Vec<_> = (95..105).map(|i| json!({"id": i})).collect();
        let got = reader.get_all(&keys).await?;
        assert_eq!(got.iter().filter(|r| r.is_some()).count(), 5);
        assert_eq!(got[0], Some(rows[95].clone()));

        let scanned = reader.scan(None, 1_000).await?;
        assert_eq!(scanned, rows, "merged scan returns every row in key order");
        assert_eq!(reader.scan(None, 10).await?, rows[..10].to_vec());
        let mut per_partition = 0;
        for p in 0..4 {
            per_partition += reader.scan(Some(p), 1_000).await?.len();
        }
        assert_eq!(per_partition, 100);

        assert!(reader.delete(&json!({"id": 5})).await?);
        assert!(!reader.delete(&json!({"id": 5})).await?);
        assert_eq!(writer.get(&json!({"id": 5})).await?, None);
        assert!(writer
            .upsert(&json!({"id": "x", "name": "bad"}))
            .await
            .is_err());

        // a stop (run level down) stops the replicas; a start brings them back with the rows
        n3.tables.stop().await.map_err(|e| anyhow!("{e}"))?;
        assert!(n3.tables.local_partitions().await.is_empty());
        assert!(n3.service.registered().is_empty());
        assert!(matches!(
            n3.tables
                .create_table(
                    TableSchema::new("other", vec![Column::new("id", ColumnType::Int64)], vec![])?,
                    1,
                    1
                )
                .await,
            Err(Error::NotStarted)
        ));
        n3.tables.start(&ctx()).await.map_err(|e| anyhow!("{e}"))?;
        assert_eq!(wait_local(n3, |n| n == counts[2]).await?, counts[2]);
        assert_eq!(reader.scan(None, 1_000).await?.len(), 99);

        n3.tables.drop_table("people").await?;
        assert!(matches!(
            n1.tables.drop_table("people").await,
            Err(Error::TableNotFound { .. })
        ));
        let revision = n3.ms.revision();
        for node in &cluster.nodes {
            node.ms.wait_watches(revision, WAIT).await?;
            wait_local(node, |n| n == 0).await?;
            assert!(node.tables.tables().is_empty(), "node {}", node.name);
            assert!(node.tables.table("people").is_none());
            assert!(node.service.registered().is_empty());
        }
        assert!(
            reader.get(&json!({"id": 1})).await.is_err(),
            "a dropped table refuses reads"
        );

        // the name is free again: a new table with a new id, empty
        let again = n2.tables.create_table(schema, 2, 3).await?;
        assert_ne!(again.id, info.id);
        let revision = n2.ms.revision();
        n1.ms.wait_watches(revision, WAIT).await?;
        let people = n1
            .tables
            .table("people")
            .ok_or_else(|| anyhow!("people on n1"))?;
        assert!(people.scan(None, 10).await?.is_empty());
        people.upsert(&json!({"id": 1, "name": "again"})).await?;
        assert_eq!(
            people.get(&json!({"id": 1})).await?,
            Some(json!({"id": 1, "name": "again"}))
        );
        cluster.stop().await
    })
    .await
    .context("test bound")?
}
