//! The binary encodings: compact rows and order-preserving keys.
//!
//! Row: `varint(schema version)`, a null bitmap of `ceil(columns / 8)` bytes (bit `i % 8` of
//! byte `i / 8` set: column `i` is null), then each non-null column in row order: `int32`
//! 4 bytes, `int64`/`timestamp`/`float64` 8 bytes, little endian; `boolean` one byte 0 or 1;
//! `string`/`bytes` a varint length and the bytes. Varints are unsigned LEB128.
//!
//! Key: the key columns in order, each so that byte order is value order: integers big
//! endian with the sign bit flipped, floats with the usual trick (negative: all bits
//! flipped; else the sign bit flipped; the order of [`f64::total_cmp`]), booleans one byte,
//! strings and bytes with every `0x00` written `0x00 0xFF` and a `0x00 0x01` terminator.
//! Every field is fixed-width or self-terminating, so comparing two keys byte by byte
//! compares them column by column.
//!
//! Decoders check everything (lengths against the remaining input, UTF-8, flag bytes,
//! varint overflow, trailing bytes) and return [`Error::Decode`], never panic.
use crate::{
    error::{Error, Result},
    row::Row,
    types::{ColumnType, TableSchema, Value},
};

// ----- varint -----

/// Appends `v` as unsigned LEB128.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over input bytes that reports where decoding failed.
struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Self {
            what,
            bytes,
            pos: 0,
        }
    }

    fn error(&self, reason: impl std::fmt::Display) -> Error {
        Error::Decode {
            what: self.what,
            reason: format!("{reason} at byte {}", self.pos),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.error(format_args!(
                "{field} needs {n} bytes, {} left",
                self.remaining()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn byte(&mut self, field: &str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    fn varint(&mut self, field: &str) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.byte(field)?;
            let low = u64::from(b & 0x7F);
            if i == 9 && b > 1 {
                return Err(self.error(format_args!("{field} varint overflows 64 bits")));
            }
            v |= low << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.error(format_args!("{field} varint is longer than 10 bytes")))
    }

    fn finish(&self) -> Result<()> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(self.error(format_args!("{} trailing bytes", self.remaining())))
        }
    }
}

// ----- rows -----

/// The schema version a row was written with (the first field of its encoding).
pub fn row_version(bytes: &[u8]) -> Result<u32> {
    let mut r = Reader::new("row", bytes);
    let v = r.varint("schema version")?;
    u32::try_from(v).map_err(|_| r.error(format_args!("schema version {v} exceeds u32")))
}

/// Encodes `row`, which must belong to `schema` (same version, values of the column types).
pub fn encode_row(schema: &TableSchema, row: &Row) -> Result<Vec<u8>> {
    row.check(schema)?;
    let n = schema.column_count();
    let mut out = Vec::with_capacity(16 + n * 8);
    put_varint(&mut out, u64::from(schema.version));
    let bitmap_at = out.len();
    out.resize(bitmap_at + n.div_ceil(8), 0);
    for (i, value) in row.values().iter().enumerate() {
        match value {
            None => out[bitmap_at + i / 8] |= 1 << (i % 8),
            Some(v) => encode_value(&mut out, v),
        }
    }
    Ok(out)
}

fn encode_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Int32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Int64(v) | Value::Timestamp(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Float64(v) => out.extend_from_slice(&v.to_bits().to_le_bytes()),
        Value::Boolean(v) => out.push(u8::from(*v)),
        Value::String(s) => {
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
    }
}

/// Decodes a row written with `schema` (its version must match; see [`row_version`]).
pub fn decode_row(schema: &TableSchema, bytes: &[u8]) -> Result<Row> {
    let mut r = Reader::new("row", bytes);
    let version = r.varint("schema version")?;
    if version != u64::from(schema.version) {
        return Err(Error::VersionMismatch {
            table: schema.table.clone(),
            row_version: u32::try_from(version).unwrap_or(u32::MAX),
            expected: schema.version,
        });
    }
    let n = schema.column_count();
    let bitmap = r.take(n.div_ceil(8), "null bitmap")?;
    if n % 8 != 0 && bitmap.last().is_some_and(|b| b >> (n % 8) != 0) {
        return Err(r.error("null bitmap has bits set beyond the last column"));
    }
    let mut values = Vec::with_capacity(n);
    for (i, column) in schema.columns().enumerate() {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            if !column.nullable {
                return Err(r.error(format_args!(
                    "column {} is null but not nullable",
                    column.name
                )));
            }
            values.push(None);
            continue;
        }
        let field = column.name.as_str();
        let value = match column.ty {
            ColumnType::Int32 => Value::Int32(i32::from_le_bytes(r.array(field)?)),
            ColumnType::Int64 => Value::Int64(i64::from_le_bytes(r.array(field)?)),
            ColumnType::Timestamp => Value::Timestamp(i64::from_le_bytes(r.array(field)?)),
            ColumnType::Float64 => {
                Value::Float64(f64::from_bits(u64::from_le_bytes(r.array(field)?)))
            }
            ColumnType::Boolean => match r.byte(field)? {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                b => return Err(r.error(format_args!("column {field}: boolean byte {b}"))),
            },
            ColumnType::String => {
                let bytes = length_prefixed(&mut r, field)?;
                match std::str::from_utf8(bytes) {
                    Ok(s) => Value::String(s.to_owned()),
                    Err(e) => return Err(r.error(format_args!("column {field}: {e}"))),
                }
            }
            ColumnType::Bytes => Value::Bytes(length_prefixed(&mut r, field)?.to_vec()),
        };
        values.push(Some(value));
    }
    r.finish()?;
    Ok(Row::from_parts(schema.version, values))
}

fn length_prefixed<'a>(r: &mut Reader<'a>, field: &str) -> Result<&'a [u8]> {
    let len = r.varint(field)?;
    let len = usize::try_from(len)
        .map_err(|_| r.error(format_args!("column {field}: length {len} is too large")))?;
    r.take(len, field)
}

// ----- keys -----

const SIGN64: u64 = 1 << 63;
const SIGN32: u32 = 1 << 31;

/// Encodes the key columns' values (in key order) so that byte order is key order.
pub fn encode_key(schema: &TableSchema, key: &[Value]) -> Result<Vec<u8>> {
    if key.len() != schema.key_columns.len() {
        return Err(Error::InvalidValue {
            column: schema
                .key_columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reason: format!(
                "key of table {} has {} columns, got {} values",
                schema.table,
                schema.key_columns.len(),
                key.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(key.len() * 9);
    for (column, value) in schema.key_columns.iter().zip(key) {
        if value.column_type() != column.ty {
            return Err(Error::InvalidValue {
                column: column.name.clone(),
                reason: format!("expected {}, got {}", column.ty, value.column_type()),
            });
        }
        encode_key_value(&mut out, value);
    }
    Ok(out)
}

fn encode_key_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Int32(v) => out.extend_from_slice(&((*v as u32) ^ SIGN32).to_be_bytes()),
        Value::Int64(v) | Value::Timestamp(v) => {
            out.extend_from_slice(&((*v as u64) ^ SIGN64).to_be_bytes());
        }
        Value::Float64(v) => {
            let bits = v.to_bits();
            let ordered = if bits & SIGN64 != 0 {
                !bits
            } else {
                bits ^ SIGN64
            };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        Value::Boolean(v) => out.push(u8::from(*v)),
        Value::String(s) => escape(out, s.as_bytes()),
        Value::Bytes(b) => escape(out, b),
    }
}

fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Decodes a key written by [`encode_key`] for `schema`'s key columns.
pub fn decode_key(schema: &TableSchema, bytes: &[u8]) -> Result<Vec<Value>> {
    let mut r = Reader::new("key", bytes);
    let mut key = Vec::with_capacity(schema.key_columns.len());
    for column in &schema.key_columns {
        let field = column.name.as_str();
        let value = match column.ty {
            ColumnType::Int32 => {
                Value::Int32((u32::from_be_bytes(r.array(field)?) ^ SIGN32) as i32)
            }
            ColumnType::Int64 => {
                Value::Int64((u64::from_be_bytes(r.array(field)?) ^ SIGN64) as i64)
            }
            ColumnType::Timestamp => {
                Value::Timestamp((u64::from_be_bytes(r.array(field)?) ^ SIGN64) as i64)
            }
            ColumnType::Float64 => {
                let ordered = u64::from_be_bytes(r.array(field)?);
                let bits = if ordered & SIGN64 != 0 {
                    ordered ^ SIGN64
                } else {
                    !ordered
                };
                Value::Float64(f64::from_bits(bits))
            }
            ColumnType::Boolean => match r.byte(field)? {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                b => return Err(r.error(format_args!("column {field}: boolean byte {b}"))),
            },
            ColumnType::String => {
                let raw = unescape(&mut r, field)?;
                match String::from_utf8(raw) {
                    Ok(s) => Value::String(s),
                    Err(e) => return Err(r.error(format_args!("column {field}: {e}"))),
                }
            }
            ColumnType::Bytes => Value::Bytes(unescape(&mut r, field)?),
        };
        key.push(value);
    }
    r.finish()?;
    Ok(key)
}

fn unescape(r: &mut Reader<'_>, field: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let b = r.byte(field)?;
        if b != 0 {
            out.push(b);
            continue;
        }
        match r.byte(field)? {
            0xFF => out.push(0),
            0x01 => return Ok(out),
            other => {
                return Err(r.error(format_args!(
                    "column {field}: invalid escape 0x00 0x{other:02x}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_overflow() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader::new("test", &out);
            assert_eq!(r.varint("v").unwrap(), v);
            assert!(r.finish().is_ok());
        }
        let overflow = [0xFF; 9].iter().copied().chain([0x02]).collect::<Vec<u8>>();
        assert!(Reader::new("test", &overflow).varint("v").is_err());
        assert!(Reader::new("test", &[0x80; 11]).varint("v").is_err());
        assert!(Reader::new("test", &[0x80]).varint("v").is_err());
    }

    #[test]
    fn escaped_strings_sort_shorter_prefix_first() {
        let enc = |s: &[u8]| {
            let mut out = Vec::new();
            escape(&mut out, s);
            out
        };
        assert!(enc(b"a") < enc(b"a\0"));
        assert!(enc(b"a\0") < enc(b"a\0\0"));
        assert!(enc(b"a\0") < enc(b"a\x01"));
        assert!(enc(b"") < enc(b"\0"));
        assert!(enc(b"ab") < enc(b"b"));
    }
}
