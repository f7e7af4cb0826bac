//! Integration tests of the table crate: storage conformance and model tests, and partitions
//! replicated across in-process nodes over real network and raft managers.
mod cluster;
mod partitions;
mod storage_suite;
