//! [`BaselineManager`]: the `baseline` component.
use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use configuration::ConfigurationManager;
use lifecycle::{spawn_supervised, BoxError, Component, ComponentRuntime, StartContext, StopGuard};
use metastorage::{CompareOp, Condition, KeyMatcher, MetaStorageManager, Operation, WatchEvent};
use network::NetworkManager;
use tokio::sync::{broadcast::error::RecvError, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    baseline::{Baseline, BASELINE_KEY},
    config::BaselineConfiguration,
    error::{Error, Result},
};

const NAME: &str = "baseline";
/// Conditional writes a manual `set` tries before giving up.
const SET_ATTEMPTS: usize = 8;
/// The slowest the adjust loop re-reads the logical topology (learners joining the
/// MetaStorage group raise no topology event).
const MAX_POLL: Duration = Duration::from_millis(500);
const MIN_POLL: Duration = Duration::from_millis(20);

/// The baseline component.
///
/// `new` registers a MetaStorage watch on [`BASELINE_KEY`] (so it must run before the node
/// deploys watches) and does no I/O. `start` reads the baseline at the node's recovery
/// revision and spawns the auto-adjust loop; from then on the local view
/// ([`baseline`](Self::baseline), [`subscribe`](Self::subscribe)) follows the watch.
///
/// Auto-adjust: every node tracks the logical topology (MetaStorage group voters and
/// learners that are in the physical topology). After it changes (or at start, while no
/// baseline was ever set) and then stays unchanged for `baseline.auto_adjust_ms`, the
/// MetaStorage leader writes it as the new baseline, conditional on the revision of the
/// baseline it replaces. A manual [`set`](Self::set) stays until the logical topology next
/// changes.
pub struct BaselineManager {
    ms: Arc<MetaStorageManager>,
    network: Arc<NetworkManager>,
    config: Arc<ConfigurationManager>,
    current: Arc<watch::Sender<Baseline>>,
    registration: std::result::Result<(), String>,
    lifecycle: tokio::sync::Mutex<()>,
    running: AtomicBool,
    runtime: ComponentRuntime,
}

impl BaselineManager {
    /// `config` is the cluster configuration manager holding the [`BaselineConfiguration`]
    /// root. Registers the baseline watch with `ms` (before watches are deployed).
    pub fn new(
        ms: Arc<MetaStorageManager>,
        network: Arc<NetworkManager>,
        config: Arc<ConfigurationManager>,
    ) -> Self {
        let current = Arc::new(watch::channel(Baseline::default()).0);
        let sink = Arc::clone(&current);
        let registration = ms
            .register_watch(
                KeyMatcher::Exact(BASELINE_KEY.to_vec()),
                move |event: WatchEvent| {
                    let result = on_baseline_event(&sink, &event);
                    async move { result.map_err(BoxError::from) }
                },
            )
            .map(drop)
            .map_err(|e| e.to_string());
        Self {
            ms,
            network,
            config,
            current,
            registration,
            lifecycle: tokio::sync::Mutex::new(()),
            running: AtomicBool::new(false),
            runtime: ComponentRuntime::new(NAME),
        }
    }

    /// The current `baseline` configuration.
    pub fn configuration(&self) -> Result<BaselineConfiguration> {
        self.config
            .root::<BaselineConfiguration>()
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// The baseline as this node knows it (recovered at start, then followed through the
    /// watch). Revision 0 and no nodes while none was ever set.
    pub fn baseline(&self) -> Baseline {
        self.current.borrow().clone()
    }

    /// Every baseline this node learns, newest first seen.
    pub fn subscribe(&self) -> watch::Receiver<Baseline> {
        self.current.subscribe()
    }

    /// The latest baseline, read linearizably from MetaStorage.
    pub async fn current(&self) -> Result<Baseline> {
        let _ticket = self.enter()?;
        let entry = self.ms.get(BASELINE_KEY).await?;
        let baseline = Baseline::from_entry(entry.as_ref())?;
        publish(&self.current, &baseline);
        Ok(baseline)
    }

    /// The logical topology: MetaStorage group members (voters and learners) that are in
    /// the physical topology. Empty before MetaStorage started.
    pub fn logical_topology(&self) -> BTreeSet<String> {
        logical_topology(&self.ms, &self.network)
    }

    /// Sets the baseline by hand. Every name must be in the logical topology (the error
    /// names those that are not); returns the stored baseline.
    pub async fn set(&self, nodes: BTreeSet<String>) -> Result<Baseline> {
        let _ticket = self.enter()?;
        if nodes.is_empty() {
            return Err(Error::Empty);
        }
        let logical = self.logical_topology();
        let missing: Vec<String> = nodes.difference(&logical).cloned().collect();
        if !missing.is_empty() {
            return Err(Error::NotInLogicalTopology(missing));
        }
        for _ in 0..SET_ATTEMPTS {
            if let Some(stored) = write_if_different(&self.ms, &self.current, &nodes).await? {
                tracing::info!(nodes = ?stored.nodes, revision = stored.revision, "baseline set by hand");
                return Ok(stored);
            }
            let now = self.current().await?;
            if now.nodes == nodes {
                return Ok(now);
            }
        }
        Err(Error::Contended {
            attempts: SET_ATTEMPTS,
        })
    }

    fn enter(&self) -> Result<lifecycle::StopTicket> {
        let ticket = self.runtime.enter()?;
        if !self.running.load(Ordering::SeqCst) {
            return Err(Error::NotStarted);
        }
        Ok(ticket)
    }

    async fn start_inner(&self, ctx: &StartContext) -> Result<()> {
        let _serial = self.lifecycle.lock().await;
        if self.running.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Err(reason) = &self.registration {
            return Err(Error::Config(format!(
                "registering the baseline watch: {reason}"
            )));
        }
        self.configuration()?;
        let lifecycle::Run { guard, cancel } = self.runtime.begin();
        let revision = self.ms.recovery_revision();
        let recovered = Baseline::from_entry(self.ms.get_at(BASELINE_KEY, revision)?.as_ref())?;
        publish(&self.current, &recovered);
        tracing::info!(recovery_revision = revision, nodes = ?recovered.nodes, baseline_revision = recovered.revision, "baseline recovered");
        let adjust = AutoAdjust {
            ms: Arc::clone(&self.ms),
            network: Arc::clone(&self.network),
            config: Arc::clone(&self.config),
            current: Arc::clone(&self.current),
            guard,
        };
        spawn_supervised(
            self.runtime.tasks(),
            &ctx.faults,
            NAME,
            "auto adjust",
            async move { adjust.run(cancel).await.map_err(BoxError::from) },
        );
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn stop_inner(&self) {
        self.runtime.block().await;
        let _serial = self.lifecycle.lock().await;
        self.running.store(false, Ordering::SeqCst);
        self.runtime.shutdown().await;
        tracing::debug!("baseline stopped");
    }
}

/// Publishes `baseline` unless the local view already holds a newer one.
fn publish(current: &watch::Sender<Baseline>, baseline: &Baseline) {
    current.send_if_modified(|held| {
        let newer = baseline.revision > held.revision;
        if newer {
            held.clone_from(baseline);
        }
        newer
    });
}

fn on_baseline_event(current: &watch::Sender<Baseline>, event: &WatchEvent) -> Result<()> {
    for change in &event.entries {
        if change.new.key == BASELINE_KEY {
            let baseline = Baseline::decode(&change.new)?;
            tracing::debug!(nodes = ?baseline.nodes, revision = baseline.revision, "baseline changed");
            publish(current, &baseline);
        }
    }
    Ok(())
}

fn logical_topology(ms: &MetaStorageManager, network: &NetworkManager) -> BTreeSet<String> {
    let Some(group) = ms.group() else {
        return BTreeSet::new();
    };
    let metrics = group.metrics();
    let present: BTreeSet<String> = network
        .topology()
        .members()
        .into_iter()
        .map(|m| m.name)
        .collect();
    metrics
        .voters
        .into_iter()
        .chain(metrics.learners)
        .filter(|n| present.contains(n))
        .collect()
}

/// Writes `nodes` as the baseline unless it holds them already, conditional on the
/// revision of the one it replaces. `Some(stored)` when written (or already equal), `None`
/// when another writer got there first.
async fn write_if_different(
    ms: &MetaStorageManager,
    current: &watch::Sender<Baseline>,
    nodes: &BTreeSet<String>,
) -> Result<Option<Baseline>> {
    let held = Baseline::from_entry(ms.get(BASELINE_KEY).await?.as_ref())?;
    publish(current, &held);
    if &held.nodes == nodes {
        return Ok(Some(held));
    }
    let value = Baseline::encode(nodes)?;
    let written = ms
        .invoke(
            Condition::revision(BASELINE_KEY, CompareOp::Eq, held.revision),
            vec![Operation::put(BASELINE_KEY, value)],
            Vec::new(),
        )
        .await?;
    if !written {
        return Ok(None);
    }
    let stored = Baseline::from_entry(ms.get(BASELINE_KEY).await?.as_ref())?;
    publish(current, &stored);
    Ok(Some(stored))
}

/// The auto-adjust loop of one start.
struct AutoAdjust {
    ms: Arc<MetaStorageManager>,
    network: Arc<NetworkManager>,
    config: Arc<ConfigurationManager>,
    current: Arc<watch::Sender<Baseline>>,
    guard: StopGuard,
}

impl AutoAdjust {
    async fn run(self, cancel: CancellationToken) -> Result<()> {
        let mut events = self.network.topology().subscribe();
        let mut observed = logical_topology(&self.ms, &self.network);
        let mut changed_at = Instant::now();
        // At start only a cluster that never had a baseline needs one; otherwise wait for
        // a change, so a manual baseline is not undone by a restart.
        let mut pending = self.current.borrow().revision == 0;
        let mut config = BaselineConfiguration::default();
        loop {
            match self.config.root::<BaselineConfiguration>() {
                Ok(c) => config = c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the baseline configuration, keeping the last one")
                }
            }
            let poll = config
                .quiet_period()
                .map_or(MAX_POLL, |q| (q / 4).clamp(MIN_POLL, MAX_POLL));
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                event = events.recv() => {
                    if let Err(RecvError::Closed) = event {
                        // the network stopped: nothing more will change until restart
                        cancel.cancelled().await;
                        return Ok(());
                    }
                }
                () = tokio::time::sleep(poll) => {}
            }
            let now = logical_topology(&self.ms, &self.network);
            if now != observed {
                tracing::debug!(logical_topology = ?now, "logical topology changed");
                observed = now;
                changed_at = Instant::now();
                pending = true;
                continue;
            }
            if self.current.borrow().nodes == observed {
                pending = false;
            }
            let Some(quiet) = config.quiet_period() else {
                continue;
            };
            if !pending || observed.is_empty() || changed_at.elapsed() < quiet {
                continue;
            }
            if !self.ms.group().is_some_and(|g| g.is_leader()) {
                continue;
            }
            let Ok(_ticket) = self.guard.enter() else {
                return Ok(());
            };
            // a stop ends a write that waits on MetaStorage (a node without a quorum waits up
            // to the write timeout); the write is a compare-and-set, whole or not at all
            let Ok(outcome) = self
                .guard
                .wrap(write_if_different(&self.ms, &self.current, &observed))
                .await
            else {
                return Ok(());
            };
            match outcome {
                Ok(Some(stored)) => {
                    tracing::info!(nodes = ?stored.nodes, revision = stored.revision, "baseline adjusted to the logical topology");
                    pending = false;
                }
                Ok(None) => tracing::debug!("baseline changed concurrently, adjusting again"),
                Err(e) if e.is_retryable() => {
                    tracing::debug!(error = %e, "baseline adjustment deferred")
                }
                Err(e @ (Error::Decode { .. } | Error::Encode(_))) => return Err(e),
                Err(e) => tracing::warn!(error = %e, "baseline adjustment failed, retrying"),
            }
        }
    }
}

#[async_trait]
impl Component for BaselineManager {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, ctx: &StartContext) -> std::result::Result<(), BoxError> {
        self.start_inner(ctx).await.map_err(Into::into)
    }

    async fn stop(&self) -> std::result::Result<(), BoxError> {
        self.stop_inner().await;
        Ok(())
    }
}
