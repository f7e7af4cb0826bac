//! The files that keep each group's latest snapshot between starts, one per group in a
//! directory beside the write-ahead log (`<data_dir>/raft-snapshots`).
//!
//! Without them, openraft rebuilds a snapshot from the state machine when a group starts
//! with a purged log (it must have one to serve lagging followers), which costs a full
//! export of the state on every start: hundreds of milliseconds for MetaStorage with
//! 100,000 keys. With them a start reads the file instead.
//!
//! A kept snapshot is an optimization, never the durable record: the file is replaced by a
//! rename without an fsync, so after a crash it may be missing, older than the last one
//! built, or torn. Reading refuses anything whose frame or checksum does not check out, and
//! the caller ([`crate::state_machine`]) uses a snapshot only when it is at or after the log's
//! purge point and at or before the state machine's applied position; otherwise it builds
//! one as before.
//!
//! Layout: `IGSNAP`, a format byte `1`, the meta length (u32 LE), the meta, the data length
//! (u64 LE), the data, and a CRC32 (LE) of everything before it. [`decode`] refuses anything
//! else with a reason and never panics (property-tested).
use std::{
    fs,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

const MAGIC: &[u8; 6] = b"IGSNAP";
const FORMAT: u8 = 1;
const SUFFIX: &str = "snap";
const TMP_SUFFIX: &str = "snap.tmp";

/// The file of `group` in `dir`: the group id in hex, so any id makes a valid file name.
pub(crate) fn path(dir: &Path, group: &str) -> PathBuf {
    let hex: String = group.bytes().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{hex}.{SUFFIX}"))
}

/// The frame around `meta` and `data`, in the order it is written: head, meta, length of
/// data, data; the checksum follows.
fn frame_parts(meta: &[u8], data: &[u8]) -> io::Result<([u8; 11], [u8; 8])> {
    let meta_len = u32::try_from(meta.len())
        .map_err(|_| io::Error::other("snapshot meta longer than 4 GiB"))?;
    let mut head = [0u8; 11];
    head[..6].copy_from_slice(MAGIC);
    head[6] = FORMAT;
    head[7..].copy_from_slice(&meta_len.to_le_bytes());
    Ok((head, (data.len() as u64).to_le_bytes()))
}

/// The whole file's bytes (tests; [`write`] streams the same bytes).
#[cfg(test)]
pub(crate) fn encode(meta: &[u8], data: &[u8]) -> io::Result<Vec<u8>> {
    let (head, data_len) = frame_parts(meta, data)?;
    let mut out = Vec::with_capacity(head.len() + meta.len() + 8 + data.len() + 4);
    for part in [&head[..], meta, &data_len[..], data] {
        out.extend_from_slice(part);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Replaces the file at `path` with `meta` and `data` (a temp file renamed over it; no
/// fsync, see the module).
pub(crate) fn write(path: &Path, meta: &[u8], data: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(TMP_SUFFIX);
    let (head, data_len) = frame_parts(meta, data)?;
    let mut file = BufWriter::new(fs::File::create(&tmp)?);
    let mut crc = crc32fast::Hasher::new();
    for part in [&head[..], meta, &data_len[..], data] {
        crc.update(part);
        file.write_all(part)?;
    }
    file.write_all(&crc.finalize().to_le_bytes())?;
    file.into_inner().map_err(io::IntoInnerError::into_error)?;
    fs::rename(&tmp, path)
}

/// Reads the file at `path`: `None` when there is none.
pub(crate) fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the file at `path` (and a temp file a crash left beside it), if there is one.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    for file in [path.to_path_buf(), path.with_extension(TMP_SUFFIX)] {
        match fs::remove_file(&file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The meta and data of a kept snapshot's bytes, or why they are not one.
pub(crate) fn decode(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let body_len = bytes
        .len()
        .checked_sub(4)
        .ok_or_else(|| format!("{} bytes are too few for a snapshot file", bytes.len()))?;
    let (body, crc) = bytes.split_at(body_len);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "cut short in the checksum")?);
    if crc32fast::hash(body) != crc {
        return Err("the checksum does not match (a torn or damaged file)".into());
    }
    let rest = body
        .strip_prefix(&MAGIC[..])
        .ok_or("it does not start with IGSNAP")?;
    let (&format, rest) = rest.split_first().ok_or("cut short before the format")?;
    if format != FORMAT {
        return Err(format!(
            "unknown format {format} (this node reads {FORMAT})"
        ));
    }
    let (meta_len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or("cut short in the meta length")?;
    let meta_len = u32::from_le_bytes(*meta_len) as usize;
    if meta_len > rest.len() {
        return Err(format!(
            "the meta claims {meta_len} bytes, {} are left",
            rest.len()
        ));
    }
    let (meta, rest) = rest.split_at(meta_len);
    let (data_len, data) = rest
        .split_first_chunk::<8>()
        .ok_or("cut short in the data length")?;
    let data_len = u64::from_le_bytes(*data_len);
    if data_len != data.len() as u64 {
        return Err(format!(
            "the data claims {data_len} bytes, {} are there",
            data.len()
        ));
    }
    Ok((meta, data))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_written_file_reads_back_and_is_replaced_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = path(dir.path(), "table/part 3");
        assert!(read(&file).expect("read").is_none(), "no file yet");
        write(&file, b"meta-1", &[7u8; 100_000]).expect("write");
        write(&file, b"meta-2", b"data-2").expect("replace");
        let bytes = read(&file).expect("read").expect("a file");
        assert_eq!(decode(&bytes), Ok((&b"meta-2"[..], &b"data-2"[..])));
        assert_eq!(bytes, encode(b"meta-2", b"data-2").expect("encode"));
        remove(&file).expect("remove");
        assert!(read(&file).expect("read").is_none(), "removed");
        remove(&file).expect("removing nothing succeeds");
    }

    #[test]
    fn group_ids_make_distinct_plain_file_names() {
        let dir = Path::new("/d");
        let a = path(dir, "../x");
        let b = path(dir, "..-x");
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(dir));
        assert!(a
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')));
    }

    #[test]
    fn damaged_files_are_refused_with_the_reason() {
        let good = encode(b"meta", b"data").expect("encode");
        assert!(decode(&good[..good.len() - 1])
            .unwrap_err()
            .contains("checksum"));
        let mut flipped = good.clone();
        flipped[12] ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("checksum"));
        let mut other_format = good[..good.len() - 4].to_vec();
        other_format[6] = 9;
        let crc = crc32fast::hash(&other_format);
        other_format.extend_from_slice(&crc.to_le_bytes());
        assert!(decode(&other_format).unwrap_err().contains("format 9"));
        assert!(decode(b"").unwrap_err().contains("too few"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn checksummed_garbage_is_refused_or_framed_never_a_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = body.clone();
            bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            if let Ok((meta, data)) = decode(&bytes) {
                prop_assert!(meta.len() + data.len() < body.len());
            }
        }

        #[test]
        fn any_meta_and_data_round_trip(
            meta in proptest::collection::vec(any::<u8>(), 0..64),
            data in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let bytes = encode(&meta, &data).expect("encode");
            prop_assert_eq!(decode(&bytes), Ok((&meta[..], &data[..])));
        }
    }
}
