//! Partition replica assignments: which baseline nodes hold each partition of each table.
//!
//! API boundary: [`rendezvous::assign`] (the pure function).
pub mod rendezvous;
