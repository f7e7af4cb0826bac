//! [`LifecycleManager`]: starts components in order, stops them in reverse.
use std::{future::Future, sync::Arc, time::Duration, time::Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    component::{Component, StartContext},
    error::{StartError, StopFailure, StopFailureKind, StopReport},
    guard::StopGuard,
    state::{NodeState, RunLevel},
    supervise::{Fault, FaultReporter},
};

/// Settings of the component runtime.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// How long one component's `before_stop` or `stop` may take before it is reported as
    /// overrunning and the next component is stopped.
    pub stop_timeout: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// How a node's run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// The runtime fault that stopped the node, if a fault (not a shutdown signal) did.
    pub fault: Option<Fault>,
    /// What happened while stopping.
    pub report: StopReport,
}

impl RunOutcome {
    /// The process exit code: 0 after a requested shutdown, 1 after a fault.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.fault.is_some())
    }
}

struct StartedComponent {
    index: usize,
    level: RunLevel,
    component: Arc<dyn Component>,
}

struct Registered {
    level: RunLevel,
    component: Arc<dyn Component>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Starting,
    Started,
    Stopping,
    Stopped,
}

/// Runs the node's components: start in registration order, stop in reverse.
pub struct LifecycleManager {
    config: LifecycleConfig,
    registered: Mutex<Vec<Registered>>,
    /// Components whose `start` was called (and so need `stop`), in start order. Held by
    /// `start` for its whole duration, so `stop` waits for an interrupted start to unwind.
    started: tokio::sync::Mutex<Vec<StartedComponent>>,
    phase: Mutex<Phase>,
    state: watch::Sender<NodeState>,
    stopping: CancellationToken,
    guard: StopGuard,
    faults: FaultReporter,
    fault_rx: Mutex<Option<mpsc::UnboundedReceiver<Fault>>>,
    last_report: Mutex<Option<StopReport>>,
}

impl LifecycleManager {
    /// A manager with nothing registered.
    pub fn new(config: LifecycleConfig) -> Self {
        let (faults, fault_rx) = FaultReporter::channel();
        let (state, _) = watch::channel(NodeState::Starting);
        Self {
            config,
            registered: Mutex::new(Vec::new()),
            started: tokio::sync::Mutex::new(Vec::new()),
            phase: Mutex::new(Phase::Idle),
            state,
            stopping: CancellationToken::new(),
            guard: StopGuard::for_node(),
            faults,
            fault_rx: Mutex::new(Some(fault_rx)),
            last_report: Mutex::new(None),
        }
    }

    /// Register a component at its run level. Components start in registration order, which
    /// must be the startup graph's order.
    pub fn register(
        &self,
        level: RunLevel,
        component: Arc<dyn Component>,
    ) -> Result<(), StartError> {
        if *self.phase.lock() != Phase::Idle {
            return Err(StartError::InvalidState("started"));
        }
        self.registered.lock().push(Registered { level, component });
        Ok(())
    }

    /// The names of registered components at `level`, in start order.
    pub fn components_at(&self, level: RunLevel) -> Vec<String> {
        self.registered
            .lock()
            .iter()
            .filter(|r| r.level == level)
            .map(|r| r.component.name().to_owned())
            .collect()
    }

    /// The current node state.
    pub fn state(&self) -> NodeState {
        *self.state.borrow()
    }

    /// A receiver that sees every node state change.
    pub fn subscribe(&self) -> watch::Receiver<NodeState> {
        self.state.subscribe()
    }

    /// Publish a state reached by a component (for example `ZOMBIE` until cluster init).
    /// Ignored once the node is stopping.
    pub fn set_state(&self, state: NodeState) {
        self.state.send_if_modified(|current| {
            if matches!(*current, NodeState::Stopping | NodeState::Stopped) || *current == state {
                return false;
            }
            *current = state;
            true
        });
        record_state(self.state());
    }

    /// The node-wide busy lock: user operations enter it; stop drains it first.
    pub fn guard(&self) -> &StopGuard {
        &self.guard
    }

    /// Where components report runtime faults.
    pub fn faults(&self) -> &FaultReporter {
        &self.faults
    }

    /// Start every registered component in order and publish `STARTED`.
    ///
    /// On failure the components already started (and the failed one, which may have spawned
    /// tasks before failing) are stopped in reverse order and the error names the failed
    /// component. A concurrent [`stop`](Self::stop) interrupts the start.
    pub async fn start(&self) -> Result<(), StartError> {
        self.start_up_to(RunLevel::Ready, NodeState::Started).await
    }

    /// Like [`start`](Self::start) but publishes `reached` (for example `ZOMBIE` for a node
    /// that waits for cluster init) once every component has started.
    pub async fn start_as(&self, reached: NodeState) -> Result<(), StartError> {
        self.start_up_to(RunLevel::Ready, reached).await
    }

    /// Start, in registration order, every component registered at `level` or below that is
    /// not running yet, then publish `reached`. Called again with a higher level it starts the
    /// components of the levels in between (a zombie node moving on after cluster init).
    pub async fn start_up_to(&self, level: RunLevel, reached: NodeState) -> Result<(), StartError> {
        {
            let mut phase = self.phase.lock();
            match *phase {
                Phase::Idle | Phase::Started => *phase = Phase::Starting,
                Phase::Starting => return Err(StartError::InvalidState("starting")),
                Phase::Stopping | Phase::Stopped => {
                    return Err(StartError::InvalidState("stopped"))
                }
            }
        }
        if self.state() == NodeState::Starting {
            record_state(NodeState::Starting);
        }
        let ctx = StartContext {
            faults: self.faults.clone(),
        };
        let mut started = self.started.lock().await;
        let pending: Vec<(usize, Arc<dyn Component>)> = self
            .registered
            .lock()
            .iter()
            .enumerate()
            .filter(|(i, r)| r.level <= level && !started.iter().any(|s| s.index == *i))
            .map(|(i, r)| (i, Arc::clone(&r.component)))
            .collect();
        for (index, component) in pending {
            if self.stopping.is_cancelled() {
                return Err(StartError::Interrupted);
            }
            let name = component.name().to_owned();
            // Pushed before start: a half-started component needs its stop too.
            started.push(StartedComponent {
                index,
                level: self.level_of(index),
                component: Arc::clone(&component),
            });
            let begin = Instant::now();
            let span = tracing::info_span!("start", component = %name);
            let result = tokio::select! {
                biased;
                () = self.stopping.cancelled() => {
                    tracing::info!(component = %name, "start interrupted by stop");
                    return Err(StartError::Interrupted);
                }
                r = component.start(&ctx).instrument(span) => r,
            };
            let elapsed = begin.elapsed();
            metrics::gauge!("ignite_component_start_seconds", "component" => name.clone())
                .set(elapsed.as_secs_f64());
            match result {
                Ok(()) => {
                    tracing::info!(component = %name, elapsed_ms = elapsed.as_secs_f64() * 1e3, "component started")
                }
                Err(cause) => {
                    tracing::error!(component = %name, error = %cause, "component failed to start");
                    *self.phase.lock() = Phase::Stopping;
                    self.stopping.cancel();
                    self.publish(NodeState::Stopping);
                    let report = self.stop_components(&mut started, None).await;
                    *self.phase.lock() = Phase::Stopped;
                    self.publish(NodeState::Stopped);
                    return Err(StartError::ComponentFailed {
                        component: name,
                        cause,
                        stop_failures: report.failures,
                    });
                }
            }
        }
        drop(started);
        {
            let mut phase = self.phase.lock();
            if *phase != Phase::Starting {
                return Err(StartError::Interrupted);
            }
            *phase = Phase::Started;
        }
        self.set_state(reached);
        Ok(())
    }

    /// Move the node down to `level`: stop, in reverse order, the running components
    /// registered above it (for example tables for maintenance) and publish `reached`. They
    /// start again with [`start_up_to`](Self::start_up_to).
    pub async fn stop_above(
        &self,
        level: RunLevel,
        reached: NodeState,
    ) -> Result<StopReport, StartError> {
        {
            let mut phase = self.phase.lock();
            match *phase {
                Phase::Idle | Phase::Started => *phase = Phase::Starting,
                Phase::Starting => return Err(StartError::InvalidState("starting")),
                Phase::Stopping | Phase::Stopped => {
                    return Err(StartError::InvalidState("stopped"))
                }
            }
        }
        let mut started = self.started.lock().await;
        let report = self.stop_components(&mut started, Some(level)).await;
        drop(started);
        {
            let mut phase = self.phase.lock();
            if *phase == Phase::Starting {
                *phase = Phase::Started;
            }
        }
        self.set_state(reached);
        Ok(report)
    }

    /// The highest run level all of whose components run (`None` before the first start).
    pub fn run_level(&self) -> Option<RunLevel> {
        let started = self.started.try_lock().ok()?;
        let registered = self.registered.lock();
        [RunLevel::Ready, RunLevel::Metastorage, RunLevel::Zombie]
            .into_iter()
            .find(|level| {
                registered
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.level <= *level)
                    .all(|(i, _)| started.iter().any(|s| s.index == i))
                    && !started.is_empty()
            })
    }

    fn level_of(&self, index: usize) -> RunLevel {
        self.registered.lock()[index].level
    }

    /// Stop every started component in reverse order, each bounded by the stop timeout.
    /// Idempotent: later calls wait for the first to finish and return its report.
    pub async fn stop(&self) -> StopReport {
        let first = {
            let mut phase = self.phase.lock();
            match *phase {
                Phase::Stopping | Phase::Stopped => false,
                _ => {
                    *phase = Phase::Stopping;
                    true
                }
            }
        };
        self.stopping.cancel();
        if !first {
            // Wait for the first stop (or a failed start's unwinding) to finish.
            let _started = self.started.lock().await;
            return self.last_report.lock().clone().unwrap_or_default();
        }
        self.publish(NodeState::Stopping);
        tracing::info!("node stopping");
        if tokio::time::timeout(self.config.stop_timeout, self.guard.block())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.config.stop_timeout, "operations still running after stop timeout");
        }
        let mut started = self.started.lock().await;
        let report = self.stop_components(&mut started, None).await;
        *self.last_report.lock() = Some(report.clone());
        *self.phase.lock() = Phase::Stopped;
        self.publish(NodeState::Stopped);
        tracing::info!(clean = report.is_clean(), "node stopped");
        report
    }

    /// Wait for `shutdown` or a runtime fault, whichever comes first, then stop.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> RunOutcome {
        let rx = self.fault_rx.lock().take();
        let fault = match rx {
            Some(mut rx) => tokio::select! {
                () = shutdown => None,
                f = rx.recv() => f,
            },
            None => {
                shutdown.await;
                None
            }
        };
        if let Some(f) = &fault {
            tracing::error!(fault = %f, "stopping node after a runtime fault");
        }
        let report = self.stop().await;
        RunOutcome { fault, report }
    }

    /// Stop the started components above `keep` (all when `None`) in reverse start order.
    async fn stop_components(
        &self,
        started: &mut Vec<StartedComponent>,
        keep: Option<RunLevel>,
    ) -> StopReport {
        let timeout = self.config.stop_timeout;
        let mut report = StopReport::default();
        let mut victims: Vec<StartedComponent> = Vec::new();
        let mut kept: Vec<StartedComponent> = Vec::new();
        for s in started.drain(..) {
            if keep.is_none_or(|k| s.level > k) {
                victims.push(s);
            } else {
                kept.push(s);
            }
        }
        *started = kept;
        for s in victims.iter().rev() {
            let name = s.component.name().to_owned();
            if tokio::time::timeout(timeout, s.component.before_stop())
                .await
                .is_err()
            {
                tracing::warn!(component = %name, ?timeout, "before_stop overran its timeout");
                report.failures.push(StopFailure {
                    component: name,
                    kind: StopFailureKind::TimedOut(timeout),
                });
            }
        }
        for s in victims.into_iter().rev() {
            let component = s.component;
            let name = component.name().to_owned();
            let begin = Instant::now();
            let span = tracing::info_span!("stop", component = %name);
            let kind = match tokio::time::timeout(timeout, component.stop().instrument(span)).await
            {
                Ok(Ok(())) => None,
                Ok(Err(e)) => {
                    tracing::error!(component = %name, error = %e, "component failed to stop");
                    Some(StopFailureKind::Error(e.to_string()))
                }
                Err(_) => {
                    tracing::warn!(component = %name, ?timeout, "component overran its stop timeout");
                    Some(StopFailureKind::TimedOut(timeout))
                }
            };
            tracing::debug!(component = %name, elapsed_ms = begin.elapsed().as_secs_f64() * 1e3, "component stopped");
            report.stopped.push(name.clone());
            if let Some(kind) = kind {
                report.failures.push(StopFailure {
                    component: name,
                    kind,
                });
            }
        }
        report
    }

    fn publish(&self, state: NodeState) {
        self.state.send_replace(state);
        record_state(state);
    }
}

fn record_state(current: NodeState) {
    for s in NodeState::ALL {
        metrics::gauge!("ignite_node_state", "state" => s.as_str())
            .set(f64::from(u8::from(s == current)));
    }
}
