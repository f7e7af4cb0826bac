//! The baseline: the set of nodes that hold table data.
//!
//! API boundary: [`BaselineManager`] (the `baseline` component), [`Baseline`] (the set and
//! the MetaStorage revision that wrote it), [`BaselineConfiguration`] (the cluster-wide
//! `baseline` root: the quiet period before the baseline follows the topology) and the
//! stored format ([`BASELINE_KEY`], [`Baseline::decode`]) for components that watch the key.
//!
//! Invariants:
//! - the baseline lives in MetaStorage under [`BASELINE_KEY`]; every node reads the same one
//!   and learns changes through a MetaStorage watch on that key;
//! - only the MetaStorage leader adjusts it automatically, and every write is conditional on
//!   the revision it was computed from, so two writers never clobber each other;
//! - a baseline is never empty and a manual one only names nodes of the logical topology
//!   (MetaStorage group members that are in the physical topology).
mod baseline;
mod config;
mod error;
mod manager;

pub use crate::{
    baseline::{Baseline, BASELINE_KEY},
    config::BaselineConfiguration,
    error::{Error, Result},
    manager::BaselineManager,
};
