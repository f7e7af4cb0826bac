//! Integration tests of the table crate: storage conformance and model tests, partitions
//! replicated across in-process nodes over real network and raft managers, and the table
//! manager over a full in-process cluster.
mod cluster;
mod harness;
mod kv_view;
mod manager;
mod partitions;
mod rebalance;
mod recovery;
mod storage_suite;
