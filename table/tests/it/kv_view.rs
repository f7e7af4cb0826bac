//! The key-value view and the batch operations of both views on a 3-node cluster: round
//! trips through different nodes, schema errors with nothing written, and `*_all` results
//! in input order across partitions.
use std::{collections::BTreeSet, time::Duration};

use anyhow::{anyhow, Context, Result};
use schema::{encode_key, Column, ColumnType, TableSchema, Value};
use serde_json::{json, Value as Json};
use table::{partition_of, Error, Table};

use crate::harness::{set, TestCluster, WAIT};

const PARTITIONS: u32 = 8;

/// A 3-node cluster with its baseline set and `schema` created with 8 partitions x 2
/// replicas, known on every node.
async fn cluster_with(schemas: Vec<TableSchema>) -> Result<TestCluster> {
    let cluster = TestCluster::start(3, 0).await?;
    let all = set(&["n1", "n2", "n3"]);
    cluster.wait_logical(&all).await?;
    let n1 = &cluster.nodes[0];
    let b = n1.baseline.set(all).await?;
    for node in &cluster.nodes {
        node.wait_baseline(|x| x.revision >= b.revision).await?;
    }
    for schema in schemas {
        n1.tables.create_table(schema, PARTITIONS, 2).await?;
    }
    let revision = n1.ms.revision();
    for node in &cluster.nodes {
        node.ms.wait_watches(revision, WAIT).await?;
    }
    Ok(cluster)
}

fn table(cluster: &TestCluster, node: usize, name: &str) -> Result<Table> {
    let node = &cluster.nodes[node];
    node.tables
        .table(name)
        .ok_or_else(|| anyhow!("table {name} on {}", node.name))
}

/// accounts(region string, id int64 | name string, balance int64 default 0, note string?)
fn accounts() -> Result<TableSchema> {
    Ok(TableSchema::new(
        "accounts",
        vec![
            Column::new("region", ColumnType::String),
            Column::new("id", ColumnType::Int64),
        ],
        vec![
            Column::new("name", ColumnType::String),
            Column::new("balance", ColumnType::Int64).with_default(Value::Int64(0)),
            Column::new("note", ColumnType::String).nullable(),
        ],
    )?)
}

/// counters(id int64 | hits int64)
fn counters() -> Result<TableSchema> {
    Ok(TableSchema::new(
        "counters",
        vec![Column::new("id", ColumnType::Int64)],
        vec![Column::new("hits", ColumnType::Int64)],
    )?)
}

/// The schema error inside `result`, or a failure naming what was expected.
fn schema_error<T: std::fmt::Debug>(result: table::Result<T>) -> Result<schema::Error> {
    match result {
        Err(Error::Schema(e)) => Ok(e),
        other => Err(anyhow!("expected a schema error, got {other:?}")),
    }
}

/// The partitions the `counters` keys `ids` fall in.
fn partitions_of(ids: impl Iterator<Item = i64>) -> Result<BTreeSet<u32>> {
    let schema = counters()?;
    ids.map(|id| {
        let key = encode_key(&schema, &[Value::Int64(id)])?;
        Ok(partition_of(&key, PARTITIONS))
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_value_view_round_trips_refuses_bad_input_and_keeps_batch_order() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = cluster_with(vec![accounts()?, counters()?]).await?;
        let writer = table(&cluster, 0, "accounts")?.kv_view();
        let reader = table(&cluster, 2, "accounts")?.kv_view();

        // round trip through two nodes; the record view sees the same row
        let ada = json!({"region": "eu", "id": 1});
        writer
            .put(&ada, &json!({"name": "Ada", "balance": 10}))
            .await?;
        assert_eq!(
            reader.get(&ada).await?,
            Some(json!({"name": "Ada", "balance": 10, "note": null}))
        );
        assert_eq!(
            table(&cluster, 1, "accounts")?.get(&ada).await?,
            Some(json!({"region": "eu", "id": 1, "name": "Ada", "balance": 10, "note": null}))
        );
        assert!(reader.contains(&ada).await?);
        let absent = json!({"region": "us", "id": 1});
        assert_eq!(reader.get(&absent).await?, None);
        assert!(!reader.contains(&absent).await?);

        // defaults apply to missing value columns; put replaces the whole value
        writer.put(&ada, &json!({"name": "Ada L."})).await?;
        assert_eq!(
            reader.get(&ada).await?,
            Some(json!({"name": "Ada L.", "balance": 0, "note": null}))
        );

        // conditional and returning operations
        assert!(!writer.put_if_absent(&ada, &json!({"name": "other"})).await?);
        assert_eq!(reader.get(&ada).await?.map(|v| v["name"].clone()), Some(json!("Ada L.")));
        let bob = json!({"region": "us", "id": 2});
        assert!(writer.put_if_absent(&bob, &json!({"name": "Bob"})).await?);
        assert_eq!(
            writer
                .get_and_put(&bob, &json!({"name": "Bob", "balance": 5}))
                .await?,
            Some(json!({"name": "Bob", "balance": 0, "note": null}))
        );
        assert_eq!(
            writer.get_and_put(&absent, &json!({"name": "Cy"})).await?,
            None
        );
        assert_eq!(
            reader.get_and_remove(&absent).await?,
            Some(json!({"name": "Cy", "balance": 0, "note": null}))
        );
        assert_eq!(reader.get_and_remove(&absent).await?, None);
        assert!(reader.remove(&bob).await?);
        assert!(!reader.remove(&bob).await?);
        assert_eq!(writer.get(&bob).await?, None);

        // bad input: the error names the column; nothing is written
        let fresh = json!({"region": "eu", "id": 99});
        let e = schema_error(writer.put(&fresh, &json!({"name": "x", "colour": "red"})).await)?;
        assert!(
            matches!(&e, schema::Error::UnknownColumn { column, .. } if column == "colour"),
            "{e}"
        );
        assert!(e.to_string().contains("colour"), "{e}");
        let e = schema_error(writer.put(&fresh, &json!({"name": "x", "balance": "lots"})).await)?;
        assert!(
            matches!(&e, schema::Error::InvalidValue { column, .. } if column == "balance"),
            "{e}"
        );
        let e = schema_error(
            writer
                .put(&json!({"region": "eu", "id": "one"}), &json!({"name": "x"}))
                .await,
        )?;
        assert!(
            matches!(&e, schema::Error::InvalidValue { column, .. } if column == "id"),
            "{e}"
        );
        let e = schema_error(writer.put(&json!({"id": 99}), &json!({"name": "x"})).await)?;
        assert!(
            matches!(&e, schema::Error::MissingColumn { column, .. } if column == "region"),
            "{e}"
        );
        let e = schema_error(reader.get(&json!({"id": 99})).await)?;
        assert!(
            matches!(&e, schema::Error::MissingColumn { column, .. } if column == "region"),
            "{e}"
        );
        let e = schema_error(writer.put(&fresh, &json!({"name": "x", "id": 7})).await)?;
        assert!(
            matches!(&e, schema::Error::InvalidValue { column, .. } if column == "id"),
            "a key column in the value: {e}"
        );
        let e = schema_error(
            writer
                .put(&json!({"region": "eu", "id": 99, "name": "x"}), &json!({}))
                .await,
        )?;
        assert!(
            matches!(&e, schema::Error::UnknownColumn { column, value_column: true, .. } if column == "name"),
            "a value column in the key: {e}"
        );
        let e = schema_error(writer.put(&fresh, &json!(["x"])).await)?;
        assert!(
            matches!(&e, schema::Error::NotAnObject { what: "value", .. }),
            "{e}"
        );
        let e = schema_error(writer.put(&fresh, &json!({"balance": 1})).await)?;
        assert!(
            matches!(&e, schema::Error::MissingColumn { column, .. } if column == "name"),
            "{e}"
        );
        assert_eq!(reader.get(&fresh).await?, None, "no failed put wrote");

        // batches across partitions: results in input order, a bad pair writes nothing
        let counters_kv = table(&cluster, 1, "counters")?.kv_view();
        let ids: Vec<i64> = (0..200).collect();
        assert!(
            partitions_of(ids.iter().copied())?.len() > 4,
            "the keys spread over the partitions"
        );
        let mut pairs: Vec<(Json, Json)> = ids
            .iter()
            .map(|&i| (json!(i), json!({"hits": i * 10})))
            .collect();
        pairs.push((json!(300), json!({"hits": "many"})));
        let e = schema_error(counters_kv.put_all(&pairs).await)?;
        assert!(
            matches!(&e, schema::Error::InvalidValue { column, .. } if column == "hits"),
            "{e}"
        );
        let some: Vec<Json> = ids.iter().step_by(25).map(|&i| json!(i)).collect();
        assert!(
            counters_kv.get_all(&some).await?.iter().all(Option::is_none),
            "a batch with a bad pair writes nothing"
        );
        pairs.pop();
        counters_kv.put_all(&pairs).await?;

        // reversed, with absent keys and a duplicate in between, read on another node
        let mut keys: Vec<Json> = Vec::new();
        let mut want: Vec<Option<Json>> = Vec::new();
        for &i in ids.iter().rev() {
            keys.push(json!({"id": i}));
            want.push(Some(json!({"hits": i * 10})));
            if i % 50 == 0 {
                keys.push(json!(1_000 + i));
                want.push(None);
                keys.push(json!(i));
                want.push(Some(json!({"hits": i * 10})));
            }
        }
        let other = table(&cluster, 2, "counters")?;
        assert_eq!(other.kv_view().get_all(&keys).await?, want);
        let rows = other.get_all(&keys).await?;
        assert_eq!(rows.len(), keys.len());
        for (row, want) in rows.iter().zip(&want) {
            match (row, want) {
                (Some(row), Some(value)) => assert_eq!(row["hits"], value["hits"]),
                (None, None) => {}
                (row, want) => return Err(anyhow!("record view got {row:?}, want {want:?}")),
            }
        }

        // the record view's batch keeps the same order and the later duplicate wins
        let records = table(&cluster, 0, "counters")?;
        let mut rows: Vec<Json> = (500..600).map(|i| json!({"id": i, "hits": 1})).collect();
        rows.push(json!({"id": 550, "hits": 2}));
        records.upsert_all(&rows).await?;
        let keys: Vec<Json> = (500..600).rev().map(|i| json!(i)).collect();
        let got = other.get_all(&keys).await?;
        for (i, row) in (500..600).rev().zip(&got) {
            let hits = if i == 550 { 2 } else { 1 };
            assert_eq!(row.as_ref(), Some(&json!({"id": i, "hits": hits})), "id {i}");
        }
        let bad = vec![json!({"id": 700, "hits": 1}), json!({"id": 701, "hitz": 1})];
        assert!(matches!(
            records.upsert_all(&bad).await,
            Err(Error::Schema(schema::Error::UnknownColumn { .. }))
        ));
        assert_eq!(records.get(&json!(700)).await?, None, "nothing half-applied");

        // remove_all answers per key, in order
        let removed = counters_kv
            .remove_all(&[json!(10), json!(5_000), json!(20), json!(10)])
            .await?;
        assert_eq!(removed, vec![true, false, true, false]);
        assert_eq!(counters_kv.get(&json!(10)).await?, None);

        cluster.stop().await
    })
    .await
    .context("test bound")?
}
