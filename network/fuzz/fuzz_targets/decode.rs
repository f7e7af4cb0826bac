//! Fuzz target: arbitrary bytes through the frame, envelope and handshake decoders.
//! Run with `cargo +nightly fuzz run decode` from `network/`. The same property runs in CI
//! as a proptest (`wire::tests`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = network::decode_stream(data, 64 * 1024);
    let _ = network::decode_handshake_bytes(data);
});
