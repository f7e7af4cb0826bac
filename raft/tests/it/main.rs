//! Integration tests of the raft crate: storage conformance and groups over real networks.
mod storage_suite;
