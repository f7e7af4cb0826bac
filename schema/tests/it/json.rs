//! The JSON edge: rows and keys from JSON with table-driven error cases, and the JSON round
//! trip of random rows through text.
use proptest::prelude::*;
use schema::{key_from_json, Column, ColumnType, Row, TableSchema, Value};
use serde_json::json;

use crate::strategies::{row_of, table_schema};

fn people() -> TableSchema {
    TableSchema::new(
        "people",
        vec![Column::new("id", ColumnType::Int64)],
        vec![
            Column::new("name", ColumnType::String),
            Column::new("age", ColumnType::Int32).nullable(),
            Column::new("score", ColumnType::Float64).with_default(Value::Float64(0.5)),
            Column::new("avatar", ColumnType::Bytes).nullable(),
            Column::new("born", ColumnType::Timestamp).nullable(),
            Column::new("active", ColumnType::Boolean).with_default(Value::Boolean(true)),
        ],
    )
    .unwrap()
}

#[test]
fn row_errors_name_the_column_and_the_reason() {
    let s = people();
    let cases = [
        (json!([1]), "expected a JSON object for a row of table people, got array"),
        (json!("x"), "expected a JSON object for a row of table people, got string"),
        (
            json!({"id": 1, "name": "a", "nope": 1}),
            "unknown column nope in table people",
        ),
        (json!({"name": "a"}), "missing column id: key columns are required"),
        (json!({"id": 1}), "missing column name: not nullable and no default"),
        (
            json!({"id": "1", "name": "a"}),
            "invalid value for column id: expected int64, got string",
        ),
        (
            json!({"id": 1.5, "name": "a"}),
            "invalid value for column id: expected int64, got number",
        ),
        (json!({"id": null, "name": "a"}), "column id is not nullable"),
        (json!({"id": 1, "name": null}), "column name is not nullable"),
        (
            json!({"id": 1, "name": "a", "age": 3_000_000_000i64}),
            "invalid value for column age: 3000000000 is out of range for int32",
        ),
        (
            json!({"id": 1, "name": "a", "score": "fast"}),
            "invalid value for column score: expected float64, got string \"fast\"",
        ),
        (
            json!({"id": 1, "name": "a", "active": 1}),
            "invalid value for column active: expected boolean, got number",
        ),
        (
            json!({"id": 1, "name": "a", "avatar": "!!"}),
            "invalid value for column avatar: invalid base64",
        ),
        (
            json!({"id": 1, "name": "a", "avatar": [1, 2]}),
            "invalid value for column avatar: expected bytes as a base64 string, got array",
        ),
        (
            json!({"id": 1, "name": "a", "born": "yesterday"}),
            "invalid value for column born: invalid RFC 3339 timestamp \"yesterday\"",
        ),
        (
            json!({"id": 1, "name": "a", "born": true}),
            "invalid value for column born: expected timestamp as an RFC 3339 string or integer microseconds, got boolean",
        ),
    ];
    for (input, expected) in cases {
        let err = Row::from_json(&s, &input)
            .expect_err(&input.to_string())
            .to_string();
        assert!(
            err.contains(expected),
            "{input}: {err:?} should contain {expected:?}"
        );
    }
}

#[test]
fn missing_value_columns_get_defaults_or_null() {
    let s = people();
    let row = Row::from_json(
        &s,
        &json!({"id": 7, "name": "ann", "born": "2024-01-02T03:04:05.5+01:00", "avatar": "AAH/"}),
    )
    .unwrap();
    assert_eq!(row.version(), 1);
    assert_eq!(row.get(&s, "score"), Some(&Value::Float64(0.5)));
    assert_eq!(row.get(&s, "active"), Some(&Value::Boolean(true)));
    assert_eq!(row.get(&s, "age"), None);
    assert_eq!(row.get(&s, "avatar"), Some(&Value::Bytes(vec![0, 1, 0xff])));
    assert_eq!(
        row.to_json(&s),
        json!({
            "id": 7, "name": "ann", "age": null, "score": 0.5, "avatar": "AAH/",
            "born": "2024-01-02T02:04:05.500000Z", "active": true
        })
    );
    let by_micros = Row::from_json(&s, &json!({"id": 7, "name": "ann", "born": 0})).unwrap();
    assert_eq!(by_micros.get(&s, "born"), Some(&Value::Timestamp(0)));
}

#[test]
fn keys_from_json() {
    let s = people();
    assert_eq!(
        key_from_json(&s, &json!({"id": 5})).unwrap(),
        vec![Value::Int64(5)]
    );
    assert_eq!(
        key_from_json(&s, &json!(5)).unwrap(),
        vec![Value::Int64(5)],
        "a bare value for a one-column key"
    );
    let cases = [
        (
            json!({"id": 1, "name": "x"}),
            "unknown column name in table people key: it is a value column",
        ),
        (
            json!({"id": 1, "zzz": "x"}),
            "unknown column zzz in table people",
        ),
        (json!({}), "missing column id: key columns are required"),
        (json!({"id": null}), "column id is not nullable"),
        (json!(null), "column id is not nullable"),
        (
            json!("5"),
            "invalid value for column id: expected int64, got string",
        ),
        (
            json!([5]),
            "expected a JSON object for a key of table people, got array",
        ),
    ];
    for (input, expected) in cases {
        let err = key_from_json(&s, &input)
            .expect_err(&input.to_string())
            .to_string();
        assert!(
            err.contains(expected),
            "{input}: {err:?} should contain {expected:?}"
        );
    }

    let composite = TableSchema::new(
        "c",
        vec![
            Column::new("a", ColumnType::String),
            Column::new("b", ColumnType::Int32),
        ],
        vec![],
    )
    .unwrap();
    assert_eq!(
        key_from_json(&composite, &json!({"b": 2, "a": "x"})).unwrap(),
        vec![Value::String("x".into()), Value::Int32(2)],
        "key order comes from the schema, not the object"
    );
    let err = key_from_json(&composite, &json!(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("got number"), "{err}");
}

fn schema_and_row() -> impl Strategy<Value = (TableSchema, Row)> {
    table_schema().prop_flat_map(|s| {
        let row = row_of(&s, true);
        (Just(s), row)
    })
}

proptest! {
    #[test]
    fn rows_round_trip_through_json_text((schema, row) in schema_and_row()) {
        let text = row.to_json(&schema).to_string();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(Row::from_json(&schema, &parsed).unwrap(), row);
    }
}
