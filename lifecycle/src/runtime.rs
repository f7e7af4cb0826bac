//! [`ComponentRuntime`]: the run-time resources of a component that can be started again after
//! a stop (run levels stop and restart the layers above a level): its stop guard, the token
//! its tasks watch and the tracker that owns them.
//!
//! A stopped guard refuses entries forever and a cancelled token stays cancelled, so each
//! start needs fresh ones; `begin` hands them out and `shutdown` ends the run. Components keep
//! one `ComponentRuntime` for their whole life instead of rebuilding the three by hand.
use parking_lot::Mutex;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    error::Stopping,
    guard::{StopGuard, StopTicket},
};

/// What one run of a component hands to its tasks.
#[derive(Debug, Clone)]
pub struct Run {
    /// The guard operations of this run enter.
    pub guard: StopGuard,
    /// Cancelled when this run shuts down.
    pub cancel: CancellationToken,
}

/// A component's restartable run-time resources. Cheap to share by reference.
#[derive(Debug)]
pub struct ComponentRuntime {
    name: String,
    guard: Mutex<StopGuard>,
    cancel: Mutex<CancellationToken>,
    tasks: TaskTracker,
}

impl ComponentRuntime {
    /// Resources of the component `name` (refusals say "component `name` is stopping").
    /// Does no I/O and spawns nothing.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            guard: Mutex::new(StopGuard::for_component(name.clone())),
            cancel: Mutex::new(CancellationToken::new()),
            tasks: TaskTracker::new(),
            name,
        }
    }

    /// Starts a run: replaces a blocked guard and a cancelled token with fresh ones (the first
    /// run keeps the ones from `new`) and reopens the task tracker.
    pub fn begin(&self) -> Run {
        let guard = {
            let mut guard = self.guard.lock();
            if guard.is_blocked() {
                *guard = StopGuard::for_component(self.name.clone());
            }
            guard.clone()
        };
        let cancel = {
            let mut cancel = self.cancel.lock();
            if cancel.is_cancelled() {
                *cancel = CancellationToken::new();
            }
            cancel.clone()
        };
        self.tasks.reopen();
        Run { guard, cancel }
    }

    /// The current run's guard.
    pub fn guard(&self) -> StopGuard {
        self.guard.lock().clone()
    }

    /// Enters the current run's guard.
    pub fn enter(&self) -> Result<StopTicket, Stopping> {
        self.guard.lock().enter()
    }

    /// The current run's cancellation token.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.lock().clone()
    }

    /// The tracker the component spawns its tasks on.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Refuses new operations and waits for the ones inside the guard to finish. Idempotent.
    pub async fn block(&self) {
        let guard = self.guard();
        guard.block().await;
    }

    /// Cancels the run's token, closes the tracker and waits for every task. Idempotent.
    pub async fn shutdown(&self) {
        self.cancel.lock().cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_stopped_runtime_starts_again_with_fresh_guard_and_token() {
        let runtime = ComponentRuntime::new("baseline");
        let first = runtime.begin();
        let worker = first.cancel.clone();
        runtime
            .tasks()
            .spawn(async move { worker.cancelled().await });
        let ticket = runtime
            .enter()
            .expect("a running component admits operations");
        drop(ticket);

        runtime.block().await;
        assert_eq!(
            runtime.enter().unwrap_err(),
            Stopping::ComponentStopping("baseline".into())
        );
        tokio::time::timeout(Duration::from_secs(5), runtime.shutdown())
            .await
            .expect("shutdown waits only for tasks that watch the token");
        assert!(first.cancel.is_cancelled());
        assert!(runtime.tasks().is_empty());

        let second = runtime.begin();
        assert!(!second.cancel.is_cancelled(), "a new run gets a live token");
        assert!(!second.guard.is_blocked(), "a new run gets an open guard");
        assert!(runtime.enter().is_ok());
        assert!(
            first.guard.is_blocked(),
            "the old run's guard stays blocked for whoever still holds it"
        );
        let task = runtime.tasks().spawn(async { 7 });
        assert_eq!(task.await.unwrap(), 7, "the reopened tracker runs tasks");
        runtime.shutdown().await;
        runtime.shutdown().await;
    }

    #[tokio::test]
    async fn begin_while_running_keeps_the_same_run() {
        let runtime = ComponentRuntime::new("affinity");
        let a = runtime.begin();
        let b = runtime.begin();
        a.cancel.cancel();
        assert!(b.cancel.is_cancelled(), "both handles are the same token");
        runtime.block().await;
        assert!(b.guard.is_blocked());
    }
}
