//! The fault channel: tasks that die at run time are reported, and the node stops on them.
use std::{future::Future, panic::AssertUnwindSafe};

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::component::BoxError;

/// A runtime fault: a component's task failed or panicked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("component {component} task {task} failed: {reason}")]
pub struct Fault {
    /// The component that owns the task.
    pub component: String,
    /// The task's name.
    pub task: String,
    /// The error or panic message.
    pub reason: String,
}

/// Reports runtime faults to the [`crate::LifecycleManager`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FaultReporter {
    tx: mpsc::UnboundedSender<Fault>,
}

impl FaultReporter {
    pub(crate) fn channel() -> (Self, mpsc::UnboundedReceiver<Fault>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    /// A reporter whose faults go nowhere but the log: for using a component on its own.
    pub fn detached() -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Fault>();
        std::thread::spawn(move || {
            while let Some(fault) = rx.blocking_recv() {
                tracing::error!(%fault, "runtime fault with no lifecycle manager to stop");
            }
        });
        Self { tx }
    }

    /// Report a fault.
    pub fn report(&self, fault: Fault) {
        tracing::error!(component = %fault.component, task = %fault.task, reason = %fault.reason, "component task failed");
        // A closed receiver means the node is already stopping; nothing more to do.
        let _ = self.tx.send(fault);
    }
}

/// Spawn a component task on its tracker; if it returns an error or panics, report it.
pub fn spawn_supervised<F>(
    tracker: &TaskTracker,
    faults: &FaultReporter,
    component: &str,
    task: &str,
    fut: F,
) where
    F: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let faults = faults.clone();
    let component = component.to_owned();
    let task = task.to_owned();
    tracker.spawn(async move {
        let reason = match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => panic_message(&panic),
        };
        faults.report(Fault {
            component,
            task,
            reason,
        });
    });
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}
