//! The wire format: length-delimited frames carrying postcard-encoded handshakes and envelopes.
//!
//! A connection starts with one [`Handshake`] frame from the dialer and one [`HandshakeReply`]
//! frame from the acceptor; every later frame is an [`Envelope`]. Decoders never panic on
//! arbitrary input: they return an error and the connection is dropped.
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};
use uuid::Uuid;

use crate::error::{Error, Result};

/// The messaging protocol version; a peer with another version is refused.
pub const PROTOCOL_VERSION: u16 = 1;

/// What an envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// Fire and forget.
    OneWay,
    /// A request: the peer answers with a `Response` or `Failure` of the same correlation id.
    Request,
    /// A successful reply; the payload is the encoded reply.
    Response,
    /// A failed reply; the payload is a UTF-8 reason.
    Failure,
}

/// One message on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Envelope<P> {
    pub(crate) version: u16,
    pub(crate) group: u16,
    pub(crate) correlation: u64,
    pub(crate) kind: Kind,
    pub(crate) payload: P,
}

/// The first frame a dialer sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Handshake {
    pub(crate) version: u16,
    pub(crate) name: String,
    pub(crate) node_id: Uuid,
    pub(crate) launch_id: Uuid,
    /// Where the sender listens.
    pub(crate) address: std::net::SocketAddr,
    pub(crate) cluster_id: Option<Uuid>,
    /// The launch the dialer expects to reach (`None`: whoever answers, e.g. a seed).
    pub(crate) expected_launch: Option<Uuid>,
}

/// The acceptor's answer to a [`Handshake`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum HandshakeReply {
    Accepted(Handshake),
    Rejected(String),
}

/// The frame codec with the configured size limit.
pub(crate) fn frame_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}

/// Encode an envelope around an already encoded payload.
pub(crate) fn encode_envelope(
    group: u16,
    correlation: u64,
    kind: Kind,
    payload: &[u8],
) -> Result<Bytes> {
    let env = Envelope {
        version: PROTOCOL_VERSION,
        group,
        correlation,
        kind,
        payload,
    };
    postcard::to_stdvec(&env)
        .map(Bytes::from)
        .map_err(|e| Error::Codec {
            group,
            reason: e.to_string(),
        })
}

/// Decode an envelope; the payload borrows from `frame`. Unknown versions are refused here.
pub(crate) fn decode_envelope(frame: &[u8]) -> Result<Envelope<&[u8]>> {
    let (env, rest): (Envelope<&[u8]>, &[u8]) =
        postcard::take_from_bytes(frame).map_err(|e| Error::Malformed(format!("envelope: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::Malformed(format!(
            "envelope: {} trailing bytes",
            rest.len()
        )));
    }
    if env.version != PROTOCOL_VERSION {
        return Err(Error::Malformed(format!(
            "envelope: unknown protocol version {} (expected {PROTOCOL_VERSION})",
            env.version
        )));
    }
    Ok(env)
}

/// Encode a value that is a whole frame (handshake, reply).
pub(crate) fn encode_frame<T: Serialize>(value: &T) -> Result<Bytes> {
    postcard::to_stdvec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Malformed(format!("encode: {e}")))
}

/// Decode a value that is a whole frame.
pub(crate) fn decode_frame<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Result<T> {
    postcard::from_bytes(frame).map_err(|e| Error::Malformed(format!("decode: {e}")))
}

/// Feed arbitrary bytes to the frame decoder and decode every complete frame as an envelope.
/// Returns the number of envelopes decoded. Used by the fuzz target and property tests; it
/// must never panic.
pub fn decode_stream(bytes: &[u8], max_frame: usize) -> Result<usize> {
    let mut codec = frame_codec(max_frame);
    let mut buf = BytesMut::from(bytes);
    let mut count = 0;
    while let Some(frame) = codec
        .decode(&mut buf)
        .map_err(|e| Error::Malformed(format!("frame: {e}")))?
    {
        decode_envelope(&frame)?;
        count += 1;
    }
    Ok(count)
}

/// Decode one frame's bytes as a handshake. Used by fuzzing; never panics.
pub fn decode_handshake_bytes(bytes: &[u8]) -> Result<()> {
    decode_frame::<Handshake>(bytes).map(|_| ())
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use proptest::prelude::*;
    use tokio_util::codec::Encoder;

    use super::*;

    fn framed(frames: &[Bytes]) -> Vec<u8> {
        let mut codec = frame_codec(1024);
        let mut out = BytesMut::new();
        for f in frames {
            codec.encode(f.clone(), &mut out).unwrap();
        }
        out.to_vec()
    }

    #[test]
    fn envelope_round_trips() {
        let bytes = encode_envelope(7, 42, Kind::Request, b"hello").unwrap();
        let env = decode_envelope(&bytes).unwrap();
        assert_eq!(env.group, 7);
        assert_eq!(env.correlation, 42);
        assert_eq!(env.kind, Kind::Request);
        assert_eq!(env.payload, b"hello");
    }

    #[test]
    fn unknown_version_is_refused() {
        let env = Envelope {
            version: PROTOCOL_VERSION + 1,
            group: 1,
            correlation: 1,
            kind: Kind::OneWay,
            payload: &b""[..],
        };
        let bytes = postcard::to_stdvec(&env).unwrap();
        let err = decode_envelope(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("unknown protocol version"),
            "{err}"
        );
    }

    #[test]
    fn stream_of_frames_decodes_and_oversize_is_refused() {
        let a = encode_envelope(1, 1, Kind::OneWay, b"a").unwrap();
        let b = encode_envelope(2, 2, Kind::OneWay, b"b").unwrap();
        assert_eq!(decode_stream(&framed(&[a, b]), 1024).unwrap(), 2);

        let mut big = BytesMut::new();
        big.put_u32(2048);
        big.extend_from_slice(&[0; 16]);
        let err = decode_stream(&big, 1024).unwrap_err();
        assert!(err.to_string().contains("frame"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_stream(&bytes, 256);
            let _ = decode_envelope(&bytes);
            let _ = decode_handshake_bytes(&bytes);
            let _ = decode_frame::<HandshakeReply>(&bytes);
        }

        #[test]
        fn arbitrary_payloads_inside_valid_frames_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let framed = framed(&[Bytes::from(payload.clone())]);
            let res = decode_stream(&framed, 1024);
            // either exactly one valid envelope or a clean error, never a panic
            if let Ok(n) = res {
                prop_assert_eq!(n, 1);
            }
            let valid = encode_envelope(3, 9, Kind::OneWay, &payload).unwrap();
            prop_assert_eq!(decode_stream(&framed_one(valid), 1024).unwrap(), 1);
        }
    }

    fn framed_one(b: Bytes) -> Vec<u8> {
        framed(&[b])
    }
}
