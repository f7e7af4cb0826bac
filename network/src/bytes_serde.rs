//! Serde helpers for lists of byte strings in messages and log entries.
//!
//! serde sees a `Vec<u8>` as a sequence of `u8`, so postcard decodes it one byte and one
//! visitor call at a time; as a byte string (`serialize_bytes`) it is one length and one
//! copy. In postcard both forms are the same bytes (a varint length, then the bytes), so
//! switching a field to these helpers changes no stored log and no message on the wire
//! (tested below). For a single `Vec<u8>` field use `#[serde(with = "serde_bytes")]`; these
//! cover the list shapes `serde_bytes` does not: `list` for `Vec<Vec<u8>>` and `pairs` for
//! `Vec<(Vec<u8>, Vec<u8>)>`.

/// A list of (key, value) byte strings.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// `#[serde(with = "network::bytes_serde::list")]` on a `Vec<Vec<u8>>`.
pub mod list {
    use serde::{ser::SerializeSeq, Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(items: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(items.len()))?;
        for item in items {
            seq.serialize_element(Bytes::new(item))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let items: Vec<ByteBuf> = Vec::deserialize(d)?;
        Ok(items.into_iter().map(ByteBuf::into_vec).collect())
    }
}

/// `#[serde(with = "network::bytes_serde::pairs")]` on a `Vec<(Vec<u8>, Vec<u8>)>`.
pub mod pairs {
    use serde::{ser::SerializeSeq, Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    use super::Pairs;

    pub fn serialize<S: Serializer>(items: &Pairs, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(items.len()))?;
        for (a, b) in items {
            seq.serialize_element(&(Bytes::new(a), Bytes::new(b)))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pairs, D::Error> {
        let items: Vec<(ByteBuf, ByteBuf)> = Vec::deserialize(d)?;
        Ok(items
            .into_iter()
            .map(|(a, b)| (a.into_vec(), b.into_vec()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        one: Vec<u8>,
        list: Vec<Vec<u8>>,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBytes {
        #[serde(with = "serde_bytes")]
        one: Vec<u8>,
        #[serde(with = "super::list")]
        list: Vec<Vec<u8>>,
        #[serde(with = "super::pairs")]
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..300)
    }

    proptest! {
        /// Stored logs and peers of an earlier build keep working: same postcard bytes both
        /// ways, and each decodes the other's.
        #[test]
        fn byte_strings_encode_exactly_as_byte_sequences(
            one in bytes(),
            list in proptest::collection::vec(bytes(), 0..5),
            pairs in proptest::collection::vec((bytes(), bytes()), 0..5),
        ) {
            let plain = Plain { one: one.clone(), list: list.clone(), pairs: pairs.clone() };
            let fast = AsBytes { one, list, pairs };
            let a = postcard::to_stdvec(&plain).unwrap();
            let b = postcard::to_stdvec(&fast).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(postcard::from_bytes::<AsBytes>(&a).unwrap(), fast);
            prop_assert_eq!(postcard::from_bytes::<Plain>(&b).unwrap(), plain);
        }

        /// Cut or arbitrary input is an error, never a panic or a huge allocation.
        #[test]
        fn arbitrary_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = postcard::from_bytes::<AsBytes>(&input);
        }
    }

    #[test]
    fn a_cut_list_is_an_error() {
        let value = AsBytes {
            one: vec![1, 2, 3],
            list: vec![vec![4; 10], vec![5; 10]],
            pairs: vec![(vec![6], vec![7; 20])],
        };
        let encoded = postcard::to_stdvec(&value).unwrap();
        for cut in 0..encoded.len() {
            assert!(
                postcard::from_bytes::<AsBytes>(&encoded[..cut]).is_err(),
                "a cut at {cut} of {} decoded",
                encoded.len()
            );
        }
    }
}
