//! Alter and upgrade without a cluster: rows written with old versions read through new
//! ones, and a random walk of alters against a model.
use proptest::prelude::*;
use schema::{
    decode_row, encode_row, row_version, upgrade, AlterOp, Column, ColumnType, Row, TableSchema,
    Value,
};

use crate::strategies::{column_type, row_of};

fn v1() -> TableSchema {
    TableSchema::new(
        "people",
        vec![Column::new("id", ColumnType::Int64)],
        vec![
            Column::new("name", ColumnType::String),
            Column::new("nick", ColumnType::String).nullable(),
        ],
    )
    .unwrap()
}

#[test]
fn old_rows_read_through_new_versions() {
    let v1 = v1();
    let old = Row::new(
        &v1,
        vec![
            Some(Value::Int64(1)),
            Some(Value::String("ann".into())),
            Some(Value::String("a".into())),
        ],
    )
    .unwrap();
    let stored = encode_row(&v1, &old).unwrap();

    let v2 = v1
        .apply(&AlterOp::AddColumn(
            Column::new("age", ColumnType::Int32).with_default(Value::Int32(18)),
        ))
        .unwrap();
    let v3 = v2
        .apply(&AlterOp::AddColumn(
            Column::new("email", ColumnType::String).nullable(),
        ))
        .unwrap();
    let v4 = v3.apply(&AlterOp::DropColumn("nick".into())).unwrap();

    assert_eq!(row_version(&stored).unwrap(), 1);
    let decoded = decode_row(&v1, &stored).unwrap();
    let r2 = upgrade(&decoded, &v1, &v2).unwrap();
    let r3 = upgrade(&r2, &v2, &v3).unwrap();
    let r4 = upgrade(&r3, &v3, &v4).unwrap();
    assert_eq!(r4.version(), 4);
    assert_eq!(
        r4.to_json(&v4),
        serde_json::json!({"id": 1, "name": "ann", "age": 18, "email": null}),
        "added columns get their default or null, the dropped one is gone"
    );
    // A row written with v4 round-trips under v4, and is not readable as v1.
    let fresh = encode_row(&v4, &r4).unwrap();
    assert_eq!(decode_row(&v4, &fresh).unwrap(), r4);
    assert!(decode_row(&v1, &fresh).is_err());
    assert!(upgrade(&r4, &v1, &v2).is_err(), "the row is not of v1");
}

#[test]
fn a_column_dropped_and_added_again_starts_from_its_default() {
    let v1 = TableSchema::new(
        "t",
        vec![Column::new("id", ColumnType::Int32)],
        vec![Column::new("x", ColumnType::Int32).nullable()],
    )
    .unwrap();
    let v2 = v1.apply(&AlterOp::DropColumn("x".into())).unwrap();
    let v3 = v2
        .apply(&AlterOp::AddColumn(
            Column::new("x", ColumnType::Int32).with_default(Value::Int32(7)),
        ))
        .unwrap();
    let row = Row::new(&v1, vec![Some(Value::Int32(1)), Some(Value::Int32(1))]).unwrap();
    let stepwise = upgrade(&upgrade(&row, &v1, &v2).unwrap(), &v2, &v3).unwrap();
    assert_eq!(stepwise.get(&v3, "x"), Some(&Value::Int32(7)));
}

/// An alter against the current schema: add a fresh column or drop an existing one.
fn op(schema: &TableSchema, n: usize) -> BoxedStrategy<AlterOp> {
    let add = (column_type(), any::<bool>())
        .prop_map(move |(ty, nullable)| {
            let column = Column::new(format!("c{n}"), ty);
            AlterOp::AddColumn(if nullable {
                column.nullable()
            } else {
                let default = match ty {
                    ColumnType::Int32 => Value::Int32(3),
                    ColumnType::Int64 => Value::Int64(3),
                    ColumnType::Float64 => Value::Float64(3.0),
                    ColumnType::Boolean => Value::Boolean(true),
                    ColumnType::String => Value::String("3".into()),
                    ColumnType::Bytes => Value::Bytes(vec![3]),
                    ColumnType::Timestamp => Value::Timestamp(3),
                };
                column.with_default(default)
            })
        })
        .boxed();
    let names: Vec<String> = schema
        .value_columns
        .iter()
        .map(|c| c.name.clone())
        .collect();
    if names.is_empty() {
        add
    } else {
        prop_oneof![
            add,
            prop::sample::select(names).prop_map(AlterOp::DropColumn)
        ]
        .boxed()
    }
}

fn history() -> impl Strategy<Value = (Vec<TableSchema>, Row)> {
    let start = TableSchema::new(
        "t",
        vec![Column::new("id", ColumnType::Int64)],
        vec![Column::new("c0", ColumnType::String).nullable()],
    )
    .unwrap();
    let mut strategy: BoxedStrategy<Vec<TableSchema>> = Just(vec![start]).boxed();
    for n in 1..6 {
        strategy = strategy
            .prop_flat_map(move |versions| {
                let last = versions.last().cloned().expect("at least one version");
                op(&last, n).prop_map(move |op| {
                    let mut versions = versions.clone();
                    versions.push(last.apply(&op).expect("generated alters are valid"));
                    versions
                })
            })
            .boxed();
    }
    strategy.prop_flat_map(|versions| {
        let row = row_of(&versions[0], false);
        (Just(versions), row)
    })
}

proptest! {
    #[test]
    fn upgraded_rows_keep_surviving_values_and_default_the_rest((versions, row) in history()) {
        let mut current = row.clone();
        for pair in versions.windows(2) {
            current = upgrade(&current, &pair[0], &pair[1]).unwrap();
            prop_assert!(current.check(&pair[1]).is_ok());
        }
        let first = &versions[0];
        let last = versions.last().unwrap();
        for column in last.columns() {
            // A column of the first version that every version kept keeps its value.
            let survived = versions.iter().all(|v| v.column(&column.name).is_some());
            let expected = if survived {
                row.get(first, &column.name).cloned()
            } else {
                column.default.clone()
            };
            prop_assert_eq!(current.get(last, &column.name).cloned(), expected, "{}", column.name);
        }
        let bytes = encode_row(last, &current).unwrap();
        prop_assert_eq!(decode_row(last, &bytes).unwrap(), current);
    }
}
