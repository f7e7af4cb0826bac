//! Integration tests of the raft crate: storage conformance and groups over real networks.
mod cluster;
mod groups;
mod storage_suite;
mod wal;
