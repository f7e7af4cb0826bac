//! [`AffinityManager`]: the `affinity` component.
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use baseline::{BaselineManager, BASELINE_KEY};
use lifecycle::{spawn_supervised, BoxError, Component, ComponentRuntime, StartContext, StopGuard};
use metastorage::{CompareOp, Condition, KeyMatcher, MetaStorageManager, Operation, WatchEvent};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    assignments::{assignments_key, Assignments, ASSIGNMENTS_PREFIX},
    error::{Error, Result},
    rendezvous,
};

const NAME: &str = "affinity";
/// How often the leader checks for assignments older than the baseline even without a
/// baseline event (it may have just become leader, or a write may have failed).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// Conditional batch writes one reconcile pass tries before waiting for the next.
const RECONCILE_ATTEMPTS: usize = 4;

/// The affinity component.
///
/// `new` registers a MetaStorage watch on the baseline key (so it must run before the node
/// deploys watches) and does no I/O. `start` spawns the reconcile loop: on every baseline
/// change (and every second), the MetaStorage leader recomputes the assignments of every
/// table computed from an older baseline and stores them all in one write, conditional on
/// the baseline and each table's assignments being unchanged since it read them.
pub struct AffinityManager {
    ms: Arc<MetaStorageManager>,
    baseline: Arc<BaselineManager>,
    wake: Arc<Notify>,
    registration: std::result::Result<(), String>,
    lifecycle: tokio::sync::Mutex<()>,
    running: AtomicBool,
    runtime: ComponentRuntime,
}

impl AffinityManager {
    /// Registers the baseline watch with `ms` (before watches are deployed).
    pub fn new(ms: Arc<MetaStorageManager>, baseline: Arc<BaselineManager>) -> Self {
        let wake = Arc::new(Notify::new());
        let notify = Arc::clone(&wake);
        let registration = ms
            .register_watch(
                KeyMatcher::Exact(BASELINE_KEY.to_vec()),
                move |event: WatchEvent| {
                    tracing::debug!(
                        revision = event.revision,
                        "baseline changed, reconciling assignments"
                    );
                    notify.notify_one();
                    std::future::ready(Ok::<(), BoxError>(()))
                },
            )
            .map(drop)
            .map_err(|e| e.to_string());
        Self {
            ms,
            baseline,
            wake,
            registration,
            lifecycle: tokio::sync::Mutex::new(()),
            running: AtomicBool::new(false),
            runtime: ComponentRuntime::new(NAME),
        }
    }

    fn enter(&self) -> Result<lifecycle::StopTicket> {
        let ticket = self.runtime.enter()?;
        if !self.running.load(Ordering::SeqCst) {
            return Err(Error::NotStarted);
        }
        Ok(ticket)
    }

    /// The latest assignments of `table`, read linearizably; `None` if it has none.
    pub async fn assignments(&self, table: &str) -> Result<Option<Assignments>> {
        let _ticket = self.enter()?;
        match self.ms.get(&assignments_key(table)).await? {
            Some(entry) => Assignments::decode(&entry),
            None => Ok(None),
        }
    }

    /// The assignments of `table` at MetaStorage `revision`, from the local copy (for
    /// recovery at the node's recovery revision).
    pub fn assignments_at(&self, table: &str, revision: u64) -> Result<Option<Assignments>> {
        let _ticket = self.enter()?;
        match self.ms.get_at(&assignments_key(table), revision)? {
            Some(entry) => Assignments::decode(&entry),
            None => Ok(None),
        }
    }

    /// Every table's latest assignments, read linearizably, by table name.
    pub async fn all_assignments(&self) -> Result<BTreeMap<String, Assignments>> {
        let _ticket = self.enter()?;
        decode_all(&self.ms.prefix(ASSIGNMENTS_PREFIX).await?)
    }

    /// Computes `table`'s assignments over the current baseline and stores them unless the
    /// table has some already (one conditional write). Returns the stored ones: these, or
    /// the ones found.
    pub async fn calculate_and_store(
        &self,
        table: &str,
        partitions: u32,
        replicas: u32,
    ) -> Result<Assignments> {
        let _ticket = self.enter()?;
        let invalid = |reason: &str| Error::Invalid {
            table: table.to_owned(),
            reason: reason.to_owned(),
        };
        if partitions == 0 {
            return Err(invalid("partitions must be at least 1"));
        }
        if replicas == 0 {
            return Err(invalid("replicas must be at least 1"));
        }
        let baseline = self.baseline.current().await?;
        if baseline.nodes.is_empty() {
            return Err(Error::EmptyBaseline {
                table: table.to_owned(),
            });
        }
        let fresh = Assignments {
            table: table.to_owned(),
            revision: 0,
            replicas,
            baseline_revision: baseline.revision,
            partitions: rendezvous::assign(table, partitions, replicas, &baseline.nodes),
        };
        let key = assignments_key(table);
        let written = self
            .ms
            .invoke(
                Condition::not_exists(key.clone()),
                vec![Operation::put(key.clone(), fresh.encode()?)],
                Vec::new(),
            )
            .await?;
        let stored = self
            .ms
            .get(&key)
            .await?
            .map(|e| Assignments::decode(&e))
            .transpose()?
            .flatten()
            .ok_or_else(|| {
                Error::MetaStorage(metastorage::Error::Rejected(format!(
                    "assignments of table {table} vanished right after the write"
                )))
            })?;
        if written {
            tracing::info!(
                table,
                partitions,
                replicas,
                revision = stored.revision,
                baseline_revision = baseline.revision,
                "assignments stored"
            );
        }
        Ok(stored)
    }

    /// Removes `table`'s assignments (at drop); true if it had some.
    pub async fn remove(&self, table: &str) -> Result<bool> {
        let _ticket = self.enter()?;
        let key = assignments_key(table);
        Ok(self
            .ms
            .invoke(
                Condition::exists(key.clone()),
                vec![Operation::remove(key)],
                Vec::new(),
            )
            .await?)
    }

    async fn start_inner(&self, ctx: &StartContext) -> Result<()> {
        let _serial = self.lifecycle.lock().await;
        if self.running.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Err(reason) = &self.registration {
            return Err(Error::MetaStorage(metastorage::Error::Rejected(format!(
                "registering the affinity baseline watch: {reason}"
            ))));
        }
        let lifecycle::Run { guard, cancel } = self.runtime.begin();
        let reconcile = Reconcile {
            ms: Arc::clone(&self.ms),
            baseline: Arc::clone(&self.baseline),
            wake: Arc::clone(&self.wake),
            guard,
        };
        spawn_supervised(
            self.runtime.tasks(),
            &ctx.faults,
            NAME,
            "reconcile",
            async move { reconcile.run(cancel).await.map_err(BoxError::from) },
        );
        self.running.store(true, Ordering::SeqCst);
        tracing::debug!("affinity started");
        Ok(())
    }

    async fn stop_inner(&self) {
        self.runtime.block().await;
        let _serial = self.lifecycle.lock().await;
        self.running.store(false, Ordering::SeqCst);
        self.runtime.shutdown().await;
        tracing::debug!("affinity stopped");
    }
}

fn decode_all(entries: &[metastorage::Entry]) -> Result<BTreeMap<String, Assignments>> {
    let mut out = BTreeMap::new();
    for entry in entries {
        if let Some(a) = Assignments::decode(entry)? {
            out.insert(a.table.clone(), a);
        }
    }
    Ok(out)
}

/// The reconcile loop of one start.
struct Reconcile {
    ms: Arc<MetaStorageManager>,
    baseline: Arc<BaselineManager>,
    wake: Arc<Notify>,
    guard: StopGuard,
}

impl Reconcile {
    async fn run(self, cancel: CancellationToken) -> Result<()> {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = self.wake.notified() => {}
                () = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            }
            if !self.ms.group().is_some_and(|g| g.is_leader()) {
                continue;
            }
            let Ok(_ticket) = self.guard.enter() else {
                return Ok(());
            };
            // a stop ends a pass that waits on MetaStorage (a node without a quorum waits up to
            // the write timeout); its compare-and-set writes leave nothing half done
            let Ok(outcome) = self.guard.wrap(self.pass()).await else {
                return Ok(());
            };
            match outcome {
                Ok(_) => {}
                Err(e) if e.is_retryable() => {
                    tracing::debug!(error = %e, "assignment reconcile deferred")
                }
                Err(e @ Error::Decode { .. }) => return Err(e),
                Err(e) => tracing::warn!(error = %e, "assignment reconcile failed, retrying"),
            }
        }
    }

    /// Recomputes every table whose assignments come from an older baseline; returns how
    /// many were rewritten.
    async fn pass(&self) -> Result<usize> {
        for _ in 0..RECONCILE_ATTEMPTS {
            let baseline = self.baseline.current().await?;
            if baseline.nodes.is_empty() {
                return Ok(0);
            }
            let entries = self.ms.prefix(ASSIGNMENTS_PREFIX).await?;
            let mut checks = vec![Condition::revision(
                BASELINE_KEY,
                CompareOp::Eq,
                baseline.revision,
            )];
            let mut ops = Vec::new();
            let mut changed = 0usize;
            for old in decode_all(&entries)?.into_values() {
                if old.baseline_revision >= baseline.revision {
                    continue;
                }
                let partitions =
                    u32::try_from(old.partitions.len()).map_err(|_| Error::Invalid {
                        table: old.table.clone(),
                        reason: "more than u32::MAX partitions".into(),
                    })?;
                let new = Assignments {
                    partitions: rendezvous::assign(
                        &old.table,
                        partitions,
                        old.replicas,
                        &baseline.nodes,
                    ),
                    baseline_revision: baseline.revision,
                    ..old.clone()
                };
                if new.partitions != old.partitions {
                    changed += 1;
                }
                let key = assignments_key(&old.table);
                checks.push(Condition::revision(
                    key.clone(),
                    CompareOp::Eq,
                    old.revision,
                ));
                ops.push(Operation::put(key, new.encode()?));
            }
            if ops.is_empty() {
                return Ok(0);
            }
            let tables = ops.len();
            if self
                .ms
                .invoke(Condition::All(checks), ops, Vec::new())
                .await?
            {
                tracing::info!(tables, changed, baseline_revision = baseline.revision, nodes = ?baseline.nodes, "assignments recomputed for the baseline");
                return Ok(tables);
            }
            tracing::debug!("baseline or assignments changed while recomputing, again");
        }
        Ok(0)
    }
}

#[async_trait]
impl Component for AffinityManager {
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
