//! In-process clusters: schemas written on one node are seen on every node through the
//! watch, concurrent alters never clobber each other, and a restarted node rebuilds its
//! cache from MetaStorage.
use std::sync::Arc;

use anyhow::Result;
use futures::future::join_all;
use lifecycle::Component;
use schema::{
    encode_row, AlterOp, Column, ColumnType, Error, Row, SchemaManager, TableSchema, Value,
};

use crate::harness::{ctx, TestCluster, WAIT};

fn people() -> TableSchema {
    TableSchema::new(
        "people",
        vec![Column::new("id", ColumnType::Int64)],
        vec![Column::new("name", ColumnType::String)],
    )
    .expect("valid schema")
}

fn add(name: &str) -> AlterOp {
    AlterOp::AddColumn(Column::new(name, ColumnType::Int32).nullable())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_changes_on_one_node_are_seen_on_every_node() -> Result<()> {
    let cluster = TestCluster::start(3).await?;
    let (n1, n2, n3) = (cluster.node("n1"), cluster.node("n2"), cluster.node("n3"));

    let created = n1.schema.create(people()).await?;
    assert_eq!(created.version, 1);
    assert_eq!(
        *n1.schema.latest("people")?,
        *created,
        "a node sees its own write at once"
    );
    for node in [n2, n3] {
        let seen = node.schema.wait_for("people", 1, WAIT).await?;
        assert_eq!(*seen, *created, "{} sees the new table", node.name);
    }
    assert!(matches!(
        n2.schema.create(people()).await,
        Err(Error::TableExists { table }) if table == "people"
    ));

    // A row written with version 1 on n1 is read through version 2 on n3.
    let v1_row = Row::new(
        &created,
        vec![Some(Value::Int64(1)), Some(Value::String("ann".into()))],
    )?;
    let stored = encode_row(&created, &v1_row)?;
    let v2 = n2
        .schema
        .alter(
            "people",
            AlterOp::AddColumn(
                Column::new("age", ColumnType::Int32).with_default(Value::Int32(30)),
            ),
        )
        .await?;
    assert_eq!(v2.version, 2);
    for node in [n1, n3] {
        assert_eq!(*node.schema.wait_for("people", 2, WAIT).await?, *v2);
    }
    let read = n3.schema.read_row("people", &stored)?;
    assert_eq!(
        read.to_json(&v2),
        serde_json::json!({"id": 1, "name": "ann", "age": 30})
    );
    assert_eq!(
        n3.schema.schema("people", 1)?.version,
        1,
        "old versions stay readable"
    );
    assert!(matches!(
        n3.schema.schema("people", 9),
        Err(Error::VersionNotFound { version: 9, .. })
    ));

    n3.schema.drop_table("people").await?;
    for node in [n1, n2, n3] {
        node.schema.wait_dropped("people", WAIT).await?;
        assert!(matches!(
            node.schema.latest("people"),
            Err(Error::TableNotFound { .. })
        ));
        assert!(node.schema.tables()?.is_empty());
    }
    assert!(matches!(
        n1.schema.drop_table("people").await,
        Err(Error::TableNotFound { .. })
    ));
    let again = n2.schema.create(people()).await?;
    assert_eq!(again.version, 1, "a dropped table can be created again");
    assert_eq!(
        n1.schema.wait_for("people", 1, WAIT).await?.column_count(),
        2
    );
    assert!(matches!(
        n1.schema.schema("people", 2),
        Err(Error::VersionNotFound { .. })
    ));
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_alters_never_clobber() -> Result<()> {
    let cluster = TestCluster::start(3).await?;
    let managers: Vec<Arc<SchemaManager>> = cluster
        .nodes
        .iter()
        .map(|n| Arc::clone(&n.schema))
        .collect();
    managers[0].create(people()).await?;

    // Two changes based on the same version: exactly one wins, the other is told.
    let racing = [add("a"), add("b")];
    let results = join_all(
        racing
            .iter()
            .zip(&managers)
            .map(|(op, m)| m.alter_at("people", 1, op)),
    )
    .await;
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    let lost: Vec<_> = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(Error::Conflict {
                    expected: 1,
                    found: 2,
                    ..
                })
            )
        })
        .collect();
    assert_eq!((won.len(), lost.len()), (1, 1), "{results:?}");

    // `alter` retries: three different columns from three nodes all land, one version each.
    let results = join_all(
        ["x", "y", "z"]
            .iter()
            .zip(&managers)
            .map(|(name, m)| m.alter("people", add(name))),
    )
    .await;
    let mut versions = Vec::new();
    for r in results {
        versions.push(r?.version);
    }
    versions.sort_unstable();
    assert_eq!(versions, [3, 4, 5]);
    for m in &managers {
        let latest = m.wait_for("people", 5, WAIT).await?;
        for column in ["x", "y", "z"] {
            assert!(latest.column(column).is_some(), "column {column} kept");
        }
    }

    // The same column from every node: one adds it, the others are refused by name.
    let results = join_all(managers.iter().map(|m| m.alter("people", add("same")))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(r.to_string().contains("column same already exists"), "{r}");
    }

    // Concurrent creates of one table: exactly one.
    let creates = join_all(managers.iter().map(|m| {
        let mut s = people();
        s.table = "fresh".into();
        m.create(s)
    }))
    .await;
    assert_eq!(
        creates.iter().filter(|r| r.is_ok()).count(),
        1,
        "{creates:?}"
    );

    // Refusals name the column and leave the schema as it was.
    let refused = [
        (
            AlterOp::DropColumn("id".into()),
            "column id is a key column",
        ),
        (
            AlterOp::DropColumn("ghost".into()),
            "column ghost does not exist",
        ),
        (
            AlterOp::AddColumn(Column::new("strict", ColumnType::Int32)),
            "column strict is not nullable and has no default",
        ),
    ];
    let before = managers[1].latest("people")?;
    for (op, expected) in refused {
        let err = managers[1]
            .alter("people", op)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
    }
    assert_eq!(managers[1].latest("people")?.version, before.version);
    assert!(matches!(
        managers[2].alter("nobody", add("q")).await,
        Err(Error::TableNotFound { .. })
    ));
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_node_rebuilds_and_catches_up() -> Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    cluster.node("n1").schema.create(people()).await?;
    cluster.node("n1").schema.alter("people", add("a")).await?;
    cluster
        .node("n3")
        .schema
        .wait_for("people", 2, WAIT)
        .await?;

    // A manager built after watches were deployed cannot follow changes: start refuses.
    let late = SchemaManager::new(Arc::clone(&cluster.node("n1").ms));
    let err = late.start(&ctx()).await.unwrap_err().to_string();
    assert!(err.contains("schema watch is not registered"), "{err}");
    assert!(matches!(late.latest("people"), Err(Error::NotStarted)));
    drop(late);

    cluster.restart("n3").await?;
    let n3 = cluster.node("n3");
    assert_eq!(
        n3.schema.latest("people")?.version,
        2,
        "rebuilt from MetaStorage at the recovery revision"
    );
    cluster.node("n2").schema.alter("people", add("b")).await?;
    let v3 = cluster
        .node("n3")
        .schema
        .wait_for("people", 3, WAIT)
        .await?;
    assert!(v3.column("b").is_some());

    // Stop and start the component alone: the cache is rebuilt, reads are refused meanwhile.
    let n2 = cluster.node("n2");
    n2.schema.stop().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    n2.schema.stop().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(matches!(
        n2.schema.latest("people"),
        Err(Error::Stopping(_))
    ));
    n2.schema
        .start(&ctx())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(n2.schema.latest("people")?.version, 3);
    cluster.stop().await
}
