//! Proptest strategies: random schemas and rows of them, values from small alphabets so
//! keys share prefixes and collide.
use proptest::prelude::*;
use schema::{Column, ColumnType, Row, TableSchema, Value};

pub(crate) fn column_type() -> impl Strategy<Value = ColumnType> {
    prop::sample::select(ColumnType::ALL.to_vec())
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
        ]),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(
            prop::sample::select(vec!['\0', 'a', 'b', '\u{7f}', 'é', '😀']),
            0..5
        )
        .prop_map(|chars| chars.into_iter().collect()),
        any::<String>(),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(vec![0u8, 1, 2, 0x7f, 0xff]), 0..5),
        prop::collection::vec(any::<u8>(), 0..16),
    ]
}

/// A value of type `ty`; `json_safe` leaves out NaN payloads other than the canonical one.
pub(crate) fn value_of(ty: ColumnType, json_safe: bool) -> BoxedStrategy<Value> {
    match ty {
        ColumnType::Int32 => prop_oneof![any::<i32>(), -2i32..2]
            .prop_map(Value::Int32)
            .boxed(),
        ColumnType::Int64 => prop_oneof![any::<i64>(), -2i64..2]
            .prop_map(Value::Int64)
            .boxed(),
        ColumnType::Float64 if json_safe => float()
            .prop_map(|f| Value::Float64(if f.is_nan() { f64::NAN } else { f }))
            .boxed(),
        ColumnType::Float64 => float().prop_map(Value::Float64).boxed(),
        ColumnType::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
        ColumnType::String => text().prop_map(Value::String).boxed(),
        ColumnType::Bytes => bytes().prop_map(Value::Bytes).boxed(),
        ColumnType::Timestamp => prop_oneof![any::<i64>(), -2_000_000i64..2_000_000]
            .prop_map(Value::Timestamp)
            .boxed(),
    }
}

fn value_column(i: usize) -> impl Strategy<Value = Column> {
    (column_type(), any::<bool>(), any::<bool>()).prop_flat_map(
        move |(ty, nullable, has_default)| {
            let default = if has_default {
                value_of(ty, true)
                    .prop_map(|v| match v {
                        // Defaults are finite (they live in JSON records).
                        Value::Float64(f) if !f.is_finite() => Some(Value::Float64(0.5)),
                        v => Some(v),
                    })
                    .boxed()
            } else {
                Just(None).boxed()
            };
            default.prop_map(move |default| Column {
                name: format!("v{i}"),
                ty,
                nullable,
                default,
            })
        },
    )
}

/// A valid schema with 1 to 3 key columns and 0 to 6 value columns.
pub(crate) fn table_schema() -> impl Strategy<Value = TableSchema> {
    let keys = prop::collection::vec(column_type(), 1..4);
    let values = (0usize..7).prop_flat_map(|n| (0..n).map(value_column).collect::<Vec<_>>());
    (keys, values, 1u32..1000).prop_map(|(keys, value_columns, version)| TableSchema {
        table: "t".into(),
        version,
        key_columns: keys
            .into_iter()
            .enumerate()
            .map(|(i, ty)| Column::new(format!("k{i}"), ty))
            .collect(),
        value_columns,
    })
}

/// A row of `schema`.
pub(crate) fn row_of(schema: &TableSchema, json_safe: bool) -> BoxedStrategy<Row> {
    let columns: Vec<BoxedStrategy<Option<Value>>> = schema
        .columns()
        .map(|c| {
            let value = value_of(c.ty, json_safe);
            if c.nullable {
                prop_oneof![1 => Just(None), 3 => value.prop_map(Some)].boxed()
            } else {
                value.prop_map(Some).boxed()
            }
        })
        .collect();
    let schema = schema.clone();
    columns
        .prop_map(move |values| Row::new(&schema, values).expect("generated rows are valid"))
        .boxed()
}

/// A key of `schema`.
pub(crate) fn key_of(schema: &TableSchema) -> BoxedStrategy<Vec<Value>> {
    schema
        .key_columns
        .iter()
        .map(|c| value_of(c.ty, false))
        .collect::<Vec<_>>()
        .boxed()
}
