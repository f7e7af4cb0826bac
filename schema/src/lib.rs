//! Table schemas: typed key and value columns, versioned in MetaStorage, and the binary
//! encodings rows and keys are stored with.
//!
//! API boundary: the types ([`TableSchema`], [`Column`], [`ColumnType`], [`Value`],
//! [`AlterOp`], [`Row`]), the encodings ([`encode_row`]/[`decode_row`]/[`row_version`],
//! [`encode_key`]/[`decode_key`]), the JSON edge ([`Row::from_json`], [`Row::to_json`],
//! [`key_from_json`]), [`upgrade`] between versions, and the [`SchemaManager`] component.
//!
//! Invariants:
//! - a stored row starts with the schema version it was written with; it is read through
//!   the current version by [`upgrade`] (dropped columns disappear, added ones get their
//!   default or null), one version at a time;
//! - key columns never change across versions, so a key's encoding never depends on the
//!   version, and comparing encoded keys byte by byte compares the keys;
//! - decoders never panic on any input; every error names the column or byte offset;
//! - versions of a table are consecutive from 1; a new version is written only if the
//!   version it was derived from is still the latest (conditional `invoke`).
mod codec;
mod error;
mod json;
mod manager;
mod row;
mod types;

pub use crate::{
    codec::{decode_key, decode_row, encode_key, encode_row, row_version},
    error::{Error, Result},
    manager::{schema_key, SchemaManager, SCHEMA_PREFIX},
    row::{key_from_json, upgrade, Row},
    types::{AlterOp, Column, ColumnType, TableSchema, Value, MAX_NAME_LEN},
};
