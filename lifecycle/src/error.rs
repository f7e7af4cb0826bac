//! Errors of the component runtime.
use std::{fmt, time::Duration};

use crate::component::BoxError;

/// Work was refused or abandoned because a stop has begun. "Retry elsewhere", never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stopping {
    /// The whole node is stopping.
    #[error("node is stopping")]
    NodeStopping,
    /// One component is stopping (for example on a run-level change).
    #[error("component {0} is stopping")]
    ComponentStopping(String),
}

/// Why one component's stop did not complete cleanly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopFailureKind {
    /// `stop()` returned an error.
    Error(String),
    /// `stop()` did not finish within the per-component timeout.
    TimedOut(Duration),
}

/// One component whose stop failed or overran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopFailure {
    /// The component's name.
    pub component: String,
    /// What went wrong.
    pub kind: StopFailureKind,
}

impl fmt::Display for StopFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StopFailureKind::Error(e) => {
                write!(f, "component {} failed to stop: {e}", self.component)
            }
            StopFailureKind::TimedOut(d) => {
                write!(f, "component {} did not stop within {d:?}", self.component)
            }
        }
    }
}

/// The result of a stop: which components failed or overran. Every component was asked to
/// stop regardless.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Components stopped, in the order their stop was called.
    pub stopped: Vec<String>,
    /// Failures, in the order they happened.
    pub failures: Vec<StopFailure>,
}

impl StopReport {
    /// True when every component stopped cleanly in time.
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A start that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A component failed to start; the ones started before it were stopped in reverse order.
    #[error("component {component} failed to start: {cause}{}", fmt_stop_failures(.stop_failures))]
    ComponentFailed {
        /// The component that failed.
        component: String,
        /// Its error (part of this error's message, so not repeated as its `source`).
        cause: BoxError,
        /// Failures while stopping the components already started.
        stop_failures: Vec<StopFailure>,
    },
    /// A stop was requested while the node was starting.
    #[error("start interrupted: node is stopping")]
    Interrupted,
    /// `start` was called twice or after stop.
    #[error("lifecycle manager already {0}")]
    InvalidState(&'static str),
}

fn fmt_stop_failures(failures: &[StopFailure]) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
    format!(" (while stopping: {})", list.join("; "))
}
