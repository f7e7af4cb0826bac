//! Partition replica assignments: which baseline nodes hold each partition of each table.
//!
//! API boundary: [`rendezvous::assign`] (the pure function), [`AffinityManager`] (the
//! `affinity` component: computes, stores and recomputes assignments) and the stored form
//! ([`Assignments`], [`ASSIGNMENTS_PREFIX`], [`assignments_key`]) for components that watch
//! assignments in MetaStorage.
//!
//! Invariants:
//! - assignments are a pure function of (table, partitions, replicas, baseline nodes);
//! - they live in MetaStorage under `assignments/<table>`, each recording the baseline
//!   revision it was computed from; only the MetaStorage leader recomputes them, in one
//!   conditional write on the revisions it read, so every node sees the same assignments
//!   and no writer clobbers another.
mod assignments;
mod error;
mod manager;
pub mod rendezvous;

pub use crate::{
    assignments::{assignments_key, Assignments, ASSIGNMENTS_PREFIX},
    error::{Error, Result},
    manager::AffinityManager,
};
