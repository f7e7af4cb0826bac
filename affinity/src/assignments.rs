//! [`Assignments`] and their stored form: a version byte, then postcard.
use metastorage::Entry;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The MetaStorage prefix of every table's assignments: `assignments/<table>`.
pub const ASSIGNMENTS_PREFIX: &[u8] = b"assignments/";

/// The format version byte in front of stored assignments.
const FORMAT: u8 = 1;

/// The MetaStorage key of `table`'s assignments.
pub fn assignments_key(table: &str) -> Vec<u8> {
    let mut key = ASSIGNMENTS_PREFIX.to_vec();
    key.extend_from_slice(table.as_bytes());
    key
}

/// What is stored (the revision is the entry's).
#[derive(Serialize, Deserialize)]
struct Stored {
    replicas: u32,
    baseline_revision: u64,
    partitions: Vec<Vec<String>>,
}

/// One table's assignments as stored in MetaStorage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignments {
    /// The table.
    pub table: String,
    /// The MetaStorage revision that wrote them.
    pub revision: u64,
    /// Replicas asked for per partition (a partition holds fewer when the baseline is
    /// smaller).
    pub replicas: u32,
    /// The revision of the baseline they were computed from.
    pub baseline_revision: u64,
    /// Entry `p`: partition `p`'s replica nodes, highest rendezvous weight first.
    pub partitions: Vec<Vec<String>>,
}

impl Assignments {
    /// The stored bytes of these assignments (the revision and table are not stored).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = postcard::to_stdvec(&Stored {
            replicas: self.replicas,
            baseline_revision: self.baseline_revision,
            partitions: self.partitions.clone(),
        })
        .map_err(|e| Error::Encode {
            table: self.table.clone(),
            reason: e.to_string(),
        })?;
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(FORMAT);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The assignments held by a live MetaStorage entry under [`ASSIGNMENTS_PREFIX`];
    /// `None` for a tombstone (the table's assignments were removed).
    pub fn decode(entry: &Entry) -> Result<Option<Self>> {
        let key = String::from_utf8_lossy(&entry.key).into_owned();
        let decode_err = |reason: String| Error::Decode {
            key: key.clone(),
            reason,
        };
        let table = entry
            .key
            .strip_prefix(ASSIGNMENTS_PREFIX)
            .ok_or_else(|| decode_err("not an assignments key".into()))?;
        let table = String::from_utf8(table.to_vec())
            .map_err(|_| decode_err("table name is not utf-8".into()))?;
        let Some(bytes) = entry.live_value() else {
            return Ok(None);
        };
        let (version, body) = bytes
            .split_first()
            .ok_or_else(|| decode_err("empty value".into()))?;
        if *version != FORMAT {
            return Err(decode_err(format!("unknown format version {version}")));
        }
        let stored: Stored = postcard::from_bytes(body).map_err(|e| decode_err(e.to_string()))?;
        Ok(Some(Self {
            table,
            revision: entry.revision,
            replicas: stored.replicas,
            baseline_revision: stored.baseline_revision,
            partitions: stored.partitions,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_bytes_name_the_key() {
        let a = Assignments {
            table: "people".into(),
            revision: 4,
            replicas: 2,
            baseline_revision: 3,
            partitions: vec![vec!["n1".into(), "n2".into()], vec!["n2".into()]],
        };
        let entry = Entry::live(assignments_key("people"), a.encode().unwrap(), 4, 1);
        assert_eq!(Assignments::decode(&entry).unwrap(), Some(a));
        for bad in [vec![], vec![7, 0], vec![1, 0xff]] {
            let entry = Entry::live(assignments_key("people"), bad, 4, 1);
            let err = Assignments::decode(&entry).unwrap_err().to_string();
            assert!(err.contains("key assignments/people"), "{err}");
        }
        let gone = Entry::tombstone(assignments_key("people"), 5, 2);
        assert_eq!(Assignments::decode(&gone).unwrap(), None);
        let other = Entry::live(b"baseline".to_vec(), vec![1], 1, 1);
        assert!(Assignments::decode(&other).is_err());
    }
}
