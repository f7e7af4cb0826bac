//! Component runtime: the contract every manager implements and the manager that runs them.
//!
//! API boundary: [`Component`], [`LifecycleManager`], [`StopGuard`], [`NodeState`],
//! [`RunLevel`], [`ComponentRuntime`] (restartable guard, token and tasks) and the fault channel ([`FaultReporter`], [`spawn_supervised`]).
//!
//! Invariants:
//! - components start in registration order (the startup graph) and stop in reverse order;
//! - a failed start stops everything that started, in reverse, and reports one error;
//! - stop is idempotent and every component's stop is bounded by a timeout;
//! - a task that dies at run time is reported, never silent: the node stops on it.
mod component;
mod error;
mod guard;
mod manager;
mod runtime;
mod state;
mod supervise;

pub use crate::{
    component::{BoxError, Component, StartContext},
    error::{StartError, StopFailure, StopFailureKind, StopReport, Stopping},
    guard::{StopGuard, StopTicket},
    manager::{LifecycleConfig, LifecycleManager, RunOutcome},
    runtime::{ComponentRuntime, Run},
    state::{NodeState, RunLevel},
    supervise::{spawn_supervised, Fault, FaultReporter},
};
