//! Integration tests of the metastorage crate: the conformance suite on both storages, sled
//! durability, the state machine (idempotency, snapshots, determinism), watches (order,
//! atomicity, replay across a restart), property tests against a reference model and on
//! every decoder, and in-process clusters (init, replication, learners, watches across
//! nodes and restarts, compaction, distributed configuration).
mod cluster_watch;
mod compaction;
mod conformance;
mod decoder;
mod distributed_config;
mod etcd;
mod harness;
mod init;
mod learner;
mod model;
mod state_machine;
mod strategies;
mod support;
mod watch;
