//! [`Baseline`] and its stored form: a version byte, then postcard.
use std::collections::BTreeSet;

use metastorage::Entry;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The MetaStorage key of the baseline.
pub const BASELINE_KEY: &[u8] = b"baseline";

/// The format version byte in front of the stored baseline.
const FORMAT: u8 = 1;

/// What is stored (the revision is the entry's).
#[derive(Serialize, Deserialize)]
struct Stored {
    nodes: BTreeSet<String>,
}

/// The nodes that hold data, and the MetaStorage revision that wrote them (0: none yet).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    /// Node names.
    pub nodes: BTreeSet<String>,
    /// The revision of the write; 0 while no baseline was ever set.
    pub revision: u64,
}

impl Baseline {
    /// The stored bytes of `nodes`.
    pub fn encode(nodes: &BTreeSet<String>) -> Result<Vec<u8>> {
        let mut out = vec![FORMAT];
        let body = postcard::to_stdvec(&Stored {
            nodes: nodes.clone(),
        })
        .map_err(|e| Error::Encode(e.to_string()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The baseline held by a MetaStorage entry of [`BASELINE_KEY`] (empty for a tombstone).
    pub fn decode(entry: &Entry) -> Result<Self> {
        let Some(bytes) = entry.live_value() else {
            return Ok(Self {
                nodes: BTreeSet::new(),
                revision: entry.revision,
            });
        };
        let decode_err = |reason: String| Error::Decode {
            key: String::from_utf8_lossy(&entry.key).into_owned(),
            reason,
        };
        let (version, body) = bytes
            .split_first()
            .ok_or_else(|| decode_err("empty value".into()))?;
        if *version != FORMAT {
            return Err(decode_err(format!("unknown format version {version}")));
        }
        let stored: Stored = postcard::from_bytes(body).map_err(|e| decode_err(e.to_string()))?;
        Ok(Self {
            nodes: stored.nodes,
            revision: entry.revision,
        })
    }

    /// The baseline of an optional entry (`None`: never set).
    pub fn from_entry(entry: Option<&Entry>) -> Result<Self> {
        entry.map_or_else(|| Ok(Self::default()), Self::decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_bytes_name_the_key() {
        let nodes: BTreeSet<String> = ["n1", "n2"].iter().map(|s| (*s).to_owned()).collect();
        let bytes = Baseline::encode(&nodes).unwrap();
        let entry = Entry::live(BASELINE_KEY.to_vec(), bytes.clone(), 7, 1);
        assert_eq!(
            Baseline::decode(&entry).unwrap(),
            Baseline { nodes, revision: 7 }
        );
        for bad in [vec![], vec![9], vec![1, 0xff, 0xff]] {
            let entry = Entry::live(BASELINE_KEY.to_vec(), bad, 7, 1);
            let err = Baseline::decode(&entry).unwrap_err().to_string();
            assert!(err.contains("key baseline"), "{err}");
        }
        assert_eq!(Baseline::from_entry(None).unwrap(), Baseline::default());
        let gone = Entry::tombstone(BASELINE_KEY.to_vec(), 9, 2);
        assert!(Baseline::decode(&gone).unwrap().nodes.is_empty());
    }
}
