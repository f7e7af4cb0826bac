//! Integration tests of the metastorage core: the conformance suite on both storages, sled
//! durability, the state machine (idempotency, snapshots, determinism), watches (order,
//! atomicity, replay across a restart) and property tests against a reference model and on
//! every decoder.
mod conformance;
mod decoder;
mod model;
mod state_machine;
mod strategies;
mod support;
mod watch;
