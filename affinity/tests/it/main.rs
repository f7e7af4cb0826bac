//! Integration tests of the affinity crate: property tests of the rendezvous assignment and
//! in-process clusters where assignments follow the baseline.
mod harness;
mod manager;
mod rendezvous;
