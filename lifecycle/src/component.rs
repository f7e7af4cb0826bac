//! The contract every manager implements (DESIGN section 3).
use async_trait::async_trait;

use crate::supervise::FaultReporter;

/// The error type components return from `start` and `stop`: each crate keeps its own typed
/// error and boxes it at this boundary.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a component receives when it starts.
#[derive(Clone)]
pub struct StartContext {
    /// Where the component reports a task that died at run time; the node stops on it.
    pub faults: FaultReporter,
}

/// A manager in the startup graph.
///
/// `new()` only stores dependencies: no I/O, no tasks. `start` does the work and spawns the
/// component's tasks (owned by the component, never detached). `stop` refuses new work,
/// fails pending futures, awaits its tasks and closes storage; it is idempotent and must
/// also clean up after a start that failed or was interrupted half-way.
#[async_trait]
pub trait Component: Send + Sync + 'static {
    /// A short stable name (`vault`, `configuration`, ...), used in logs, metrics and errors.
    fn name(&self) -> &str;

    /// Start the component.
    async fn start(&self, ctx: &StartContext) -> Result<(), BoxError>;

    /// Called on every component, in reverse order, before any `stop`: stop accepting work
    /// from outside (for example say goodbye to peers) while dependencies are still up.
    async fn before_stop(&self) {}

    /// Stop the component. Idempotent.
    async fn stop(&self) -> Result<(), BoxError>;
}
