//! Encoding properties: rows and keys round-trip, key byte order is key order, and the
//! decoders return errors (never panic) on arbitrary and corrupted input.
use proptest::prelude::*;
use schema::{
    decode_key, decode_row, encode_key, encode_row, row_version, Column, ColumnType, Error, Row,
    TableSchema, Value,
};

use crate::strategies::{key_of, row_of, table_schema};

fn schema_and_row() -> impl Strategy<Value = (TableSchema, Row)> {
    table_schema().prop_flat_map(|s| {
        let row = row_of(&s, false);
        (Just(s), row)
    })
}

fn schema_and_keys() -> impl Strategy<Value = (TableSchema, Vec<Value>, Vec<Value>)> {
    table_schema().prop_flat_map(|s| {
        let (a, b) = (key_of(&s), key_of(&s));
        (Just(s), a, b)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rows_round_trip((schema, row) in schema_and_row()) {
        let bytes = encode_row(&schema, &row).unwrap();
        prop_assert_eq!(row_version(&bytes).unwrap(), schema.version);
        prop_assert_eq!(decode_row(&schema, &bytes).unwrap(), row);
    }

    #[test]
    fn keys_round_trip_and_sort_like_the_key((schema, a, b) in schema_and_keys()) {
        let ea = encode_key(&schema, &a).unwrap();
        let eb = encode_key(&schema, &b).unwrap();
        prop_assert_eq!(decode_key(&schema, &ea).unwrap(), a.clone());
        prop_assert_eq!(decode_key(&schema, &eb).unwrap(), b.clone());
        prop_assert_eq!(a.cmp(&b), ea.cmp(&eb), "key order must be byte order");
    }

    #[test]
    fn row_key_matches_encoded_key((schema, row) in schema_and_row()) {
        let key = row.key(&schema);
        prop_assert_eq!(key.len(), schema.key_columns.len());
        let bytes = encode_key(&schema, &key).unwrap();
        prop_assert_eq!(decode_key(&schema, &bytes).unwrap(), key);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(
        schema in table_schema(),
        bytes in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let _ = row_version(&bytes);
        if let Ok(row) = decode_row(&schema, &bytes) {
            prop_assert!(row.check(&schema).is_ok(), "a decoded row is a valid row");
        }
        if let Ok(key) = decode_key(&schema, &bytes) {
            prop_assert!(encode_key(&schema, &key).is_ok());
        }
    }

    #[test]
    fn decoders_never_panic_on_corrupted_encodings(
        (schema, row) in schema_and_row(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = encode_row(&schema, &row).unwrap();
        let mut flipped = bytes.clone();
        let i = at.index(flipped.len());
        flipped[i] = byte;
        if let Ok(decoded) = decode_row(&schema, &flipped) {
            prop_assert!(decoded.check(&schema).is_ok());
        }
        let truncated = &bytes[..cut.index(bytes.len())];
        prop_assert!(decode_row(&schema, truncated).is_err(), "a truncated row never decodes");

        let key = encode_key(&schema, &row.key(&schema)).unwrap();
        let mut flipped = key.clone();
        let i = at.index(flipped.len());
        flipped[i] = byte;
        let _ = decode_key(&schema, &flipped);
        let truncated = &key[..cut.index(key.len())];
        prop_assert!(decode_key(&schema, truncated).is_err(), "a truncated key never decodes");
    }
}

fn people() -> TableSchema {
    TableSchema::new(
        "people",
        vec![Column::new("id", ColumnType::Int64)],
        vec![
            Column::new("name", ColumnType::String),
            Column::new("age", ColumnType::Int32).nullable(),
        ],
    )
    .unwrap()
}

#[test]
fn rows_are_compact() {
    let s = people();
    let row = Row::new(
        &s,
        vec![
            Some(Value::Int64(7)),
            Some(Value::String("ann".into())),
            None,
        ],
    )
    .unwrap();
    let bytes = encode_row(&s, &row).unwrap();
    // version (1) + bitmap (1) + int64 (8) + len (1) + "ann" (3)
    assert_eq!(
        bytes,
        [1, 0b100, 7, 0, 0, 0, 0, 0, 0, 0, 3, b'a', b'n', b'n']
    );
}

#[test]
fn decode_errors_say_what_and_where() {
    let s = people();
    let cases: [(&[u8], &str); 6] = [
        (
            &[],
            "cannot decode row: schema version needs 1 bytes, 0 left at byte 0",
        ),
        (
            &[1],
            "cannot decode row: null bitmap needs 1 bytes, 0 left at byte 1",
        ),
        (
            &[1, 0b1000, 0],
            "null bitmap has bits set beyond the last column",
        ),
        (&[1, 0b001], "column id is null but not nullable"),
        (
            &[1, 0b100, 7, 0, 0, 0, 0, 0, 0, 0, 2, 0xff, 0xfe],
            "column name: invalid utf-8",
        ),
        (
            &[1, 0b100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            "1 trailing bytes at byte 11",
        ),
    ];
    for (bytes, expected) in cases {
        let err = decode_row(&s, bytes).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
    }
    assert!(matches!(
        decode_row(&s, &[2, 0]),
        Err(Error::VersionMismatch {
            row_version: 2,
            expected: 1,
            ..
        })
    ));
    let huge_length = [
        1, 0b100, 7, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f,
    ];
    let err = decode_row(&s, &huge_length).unwrap_err().to_string();
    assert!(err.contains("needs 4294967295 bytes"), "{err}");
}

#[test]
fn encoding_refuses_rows_of_another_schema() {
    let s = people();
    let row = Row::new(
        &s,
        vec![Some(Value::Int64(1)), Some(Value::String("a".into())), None],
    )
    .unwrap();
    let other = TableSchema {
        version: 2,
        ..s.clone()
    };
    assert!(matches!(
        encode_row(&other, &row),
        Err(Error::VersionMismatch { .. })
    ));
    let err = encode_key(&s, &[Value::String("1".into())])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invalid value for column id: expected int64, got string"
    );
    assert!(Row::new(&s, vec![None, Some(Value::String("a".into())), None]).is_err());
}

#[test]
fn composite_keys_sort_column_by_column() {
    let s = TableSchema::new(
        "events",
        vec![
            Column::new("tenant", ColumnType::String),
            Column::new("at", ColumnType::Timestamp),
            Column::new("score", ColumnType::Float64),
        ],
        vec![],
    )
    .unwrap();
    let keys = [
        ("", -5, f64::NEG_INFINITY),
        ("", -5, -0.0),
        ("", -5, 0.0),
        ("", 3, -1.5),
        ("a", i64::MIN, 2.0),
        ("a", i64::MAX, 1.0),
        ("a\0", 0, 0.0),
        ("ab", 0, f64::NAN),
        ("b", 0, 0.0),
    ];
    let encoded: Vec<Vec<u8>> = keys
        .iter()
        .map(|(t, at, score)| {
            encode_key(
                &s,
                &[
                    Value::String((*t).into()),
                    Value::Timestamp(*at),
                    Value::Float64(*score),
                ],
            )
            .unwrap()
        })
        .collect();
    for pair in encoded.windows(2) {
        assert!(pair[0] < pair[1], "{:?} < {:?}", pair[0], pair[1]);
    }
}
