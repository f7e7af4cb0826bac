//! [`TableManager`]: the `table` component. Table definitions live in MetaStorage under
//! `tables/<name>`; every node follows them, the pending assignments (`assignments/<table>`)
//! and the stable ones (`assignments.stable/<table_id>/<partition>`) through watches, runs
//! the partition replicas assigned to it and, where it leads a partition, moves the group to
//! its pending assignment (see [`crate::rebalance`]).
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use affinity::{AffinityManager, Assignments, ASSIGNMENTS_PREFIX};
use async_trait::async_trait;
use lifecycle::{spawn_supervised, BoxError, Component, StartContext};
use metastorage::{
    CompareOp, Condition, Entry, KeyMatcher, MetaStorageManager, Operation, WatchEvent,
};
use network::NetworkManager;
use parking_lot::{Mutex, RwLock};
use raft::{GroupMembers, RaftManager};
use schema::{SchemaManager, TableSchema};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use vault::VaultManager;

use crate::{
    error::{Error, Result},
    partition::Partition,
    rebalance::{stable_key, Plan, Rebalancer, StableAssignment, STABLE_PREFIX},
    recovery,
    service::PartitionService,
    storage::PartitionStorageProvider,
    view::Table,
};

const NAME: &str = "table";
/// The pause before retrying replicas that failed to start.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// The MetaStorage prefix of table definitions: `tables/<name>`.
pub const TABLES_PREFIX: &[u8] = b"tables/";

/// The format version byte in front of a stored table definition.
const FORMAT: u8 = 1;

/// The MetaStorage key of `table`'s definition.
pub fn table_key(table: &str) -> Vec<u8> {
    let mut key = TABLES_PREFIX.to_vec();
    key.extend_from_slice(table.as_bytes());
    key
}

/// A table as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// The table's name.
    pub name: String,
    /// The table's id (names its partitions' Raft groups and storages).
    pub id: String,
    /// The number of partitions.
    pub partitions: u32,
    /// Replicas asked for per partition.
    pub replicas: u32,
}

#[derive(Serialize, Deserialize)]
struct StoredTable {
    id: String,
    partitions: u32,
    replicas: u32,
}

impl TableInfo {
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let body = Error::postcard(
            "table definition",
            &StoredTable {
                id: self.id.clone(),
                partitions: self.partitions,
                replicas: self.replicas,
            },
        )?;
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(FORMAT);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The definition in a live entry under [`TABLES_PREFIX`]; `None` for a tombstone.
    pub(crate) fn decode(entry: &Entry) -> Result<Option<Self>> {
        let name = entry
            .key
            .strip_prefix(TABLES_PREFIX)
            .ok_or_else(|| Error::decode("table definition", "not a tables/ key"))?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| Error::decode("table definition", "table name is not utf-8"))?;
        let Some(bytes) = entry.live_value() else {
            return Ok(None);
        };
        let (version, body) = bytes
            .split_first()
            .ok_or_else(|| Error::decode("table definition", format!("empty value of {name}")))?;
        if *version != FORMAT {
            return Err(Error::decode(
                "table definition",
                format!("unknown format {version} of table {name}"),
            ));
        }
        let stored: StoredTable = postcard::from_bytes(body)
            .map_err(|e| Error::decode("table definition", format!("table {name}: {e}")))?;
        Ok(Some(Self {
            name,
            id: stored.id,
            partitions: stored.partitions,
            replicas: stored.replicas,
        }))
    }
}

/// What this node knows of the cluster's tables, each value with the revision it came from.
#[derive(Default)]
pub(crate) struct Catalog {
    tables: BTreeMap<String, (u64, Option<TableInfo>)>,
    /// Pending assignments (the target), by table name.
    assignments: BTreeMap<String, (u64, Option<Assignments>)>,
    /// Stable assignments (what each group runs), by (table id, partition).
    stable: BTreeMap<(String, u32), (u64, Option<StableAssignment>)>,
}

/// A partition replica this node should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// The stable voters when this node is one of them (a replica that may initialize the
    /// group); `None` for a node that only joins (pending, not stable).
    pub(crate) voters: Option<Vec<String>>,
}

impl Catalog {
    fn apply(&mut self, entry: &Entry) -> Result<()> {
        if entry.key.starts_with(TABLES_PREFIX) {
            let def = TableInfo::decode(entry)?;
            let name = String::from_utf8_lossy(&entry.key[TABLES_PREFIX.len()..]).into_owned();
            let slot = self.tables.entry(name).or_insert((0, None));
            if entry.revision >= slot.0 {
                *slot = (entry.revision, def);
            }
        } else if entry.key.starts_with(ASSIGNMENTS_PREFIX) {
            let assignments = Assignments::decode(entry)?;
            let name = String::from_utf8_lossy(&entry.key[ASSIGNMENTS_PREFIX.len()..]).into_owned();
            let slot = self.assignments.entry(name).or_insert((0, None));
            if entry.revision >= slot.0 {
                *slot = (entry.revision, assignments);
            }
        } else if entry.key.starts_with(STABLE_PREFIX) {
            let (key, stable) = StableAssignment::decode(entry)?;
            let slot = self.stable.entry(key).or_insert((0, None));
            if entry.revision >= slot.0 {
                *slot = (entry.revision, stable);
            }
        }
        Ok(())
    }

    pub(crate) fn table(&self, name: &str) -> Option<&TableInfo> {
        self.tables.get(name).and_then(|(_, t)| t.as_ref())
    }

    fn table_by_id(&self, table_id: &str) -> Option<&TableInfo> {
        self.tables
            .values()
            .filter_map(|(_, t)| t.as_ref())
            .find(|t| t.id == table_id)
    }

    fn pending(&self, name: &str, partition: u32) -> Option<&Vec<String>> {
        self.assignments
            .get(name)
            .and_then(|(_, a)| a.as_ref())
            .and_then(|a| a.partitions.get(partition as usize))
    }

    pub(crate) fn stable_record(
        &self,
        table_id: &str,
        partition: u32,
    ) -> Option<&StableAssignment> {
        self.stable
            .get(&(table_id.to_owned(), partition))
            .and_then(|(_, s)| s.as_ref())
    }

    /// The voters the group runs: the stable record, else (a table from before stable
    /// records) the pending assignment.
    fn stable_voters(&self, info: &TableInfo, partition: u32) -> Option<Vec<String>> {
        self.stable_record(&info.id, partition)
            .map(|s| s.voters.clone())
            .or_else(|| self.pending(&info.name, partition).cloned())
    }

    /// The nodes to route to: the stable voters (they hold the data and the leader), then
    /// the pending nodes not among them (a leader may be there during a move).
    pub(crate) fn replicas(&self, name: &str, partition: u32) -> Option<Vec<String>> {
        let info = self.table(name)?;
        let mut out = self.stable_voters(info, partition).unwrap_or_default();
        for node in self.pending(name, partition).into_iter().flatten() {
            if !out.contains(node) {
                out.push(node.clone());
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Per partition of `name`, the voters its group runs.
    fn stable_assignments(&self, name: &str) -> Option<Vec<Vec<String>>> {
        let info = self.table(name)?;
        Some(
            (0..info.partitions)
                .map(|p| self.stable_voters(info, p).unwrap_or_default())
                .collect(),
        )
    }

    /// What a leader of `table_id`/`partition` works toward: the pending target, with the
    /// table's name, the revision of its definition and the stable record.
    pub(crate) fn plan_of(&self, table_id: &str, partition: u32) -> Option<Plan> {
        let (name, (table_revision, _)) = self
            .tables
            .iter()
            .find(|(_, (_, t))| t.as_ref().is_some_and(|t| t.id == table_id))?;
        let target = self.pending(name, partition)?.clone();
        Some(Plan {
            table: name.clone(),
            table_revision: *table_revision,
            target,
            stable: self.stable_record(table_id, partition).cloned(),
        })
    }

    /// Every (table id, partition) that `node` should run: it is in the stable voters or in
    /// the pending assignment.
    fn desired(&self, node: &str) -> HashMap<(String, u32), Wanted> {
        let mut out = HashMap::new();
        for (_, def) in self.tables.values() {
            let Some(def) = def else { continue };
            for p in 0..def.partitions {
                let stable = self.stable_voters(def, p).unwrap_or_default();
                let pending = self.pending(&def.name, p);
                let in_stable = stable.iter().any(|n| n == node);
                let in_pending = pending.is_some_and(|ns| ns.iter().any(|n| n == node));
                if in_stable || in_pending {
                    out.insert(
                        (def.id.clone(), p),
                        Wanted {
                            voters: in_stable.then_some(stable),
                        },
                    );
                }
            }
        }
        out
    }
}

pub(crate) struct Shared {
    pub(crate) schema: Arc<SchemaManager>,
    pub(crate) service: Arc<PartitionService>,
    pub(crate) catalog: RwLock<Catalog>,
}

/// The table component.
///
/// `new` registers MetaStorage watches on `tables/`, `assignments/` and
/// `assignments.stable/` (so it must run before the node deploys watches) and does no I/O.
/// `start` rebuilds the catalog at the node's recovery revision; when the applied revision
/// kept in the vault lags behind it, it also destroys the partition storages on disk that are
/// no longer assigned here (the design's full update). Then it starts the local partition
/// replicas and spawns the task that follows watch events and the rebalance task.
pub struct TableManager {
    ms: Arc<MetaStorageManager>,
    vault: Arc<VaultManager>,
    affinity: Arc<AffinityManager>,
    raft: Arc<RaftManager>,
    network: Arc<NetworkManager>,
    provider: Arc<dyn PartitionStorageProvider>,
    shared: Arc<Shared>,
    registration: std::result::Result<(), String>,
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<WatchEvent>>>,
    local: Arc<tokio::sync::Mutex<HashMap<(String, u32), Partition>>>,
    /// Partitions with a membership change under way (one at a time per partition).
    in_flight: Arc<Mutex<HashSet<(String, u32)>>>,
    /// The last MetaStorage revision the catalog applied (survives a stop, so a restart at
    /// a run level rebuilds from where it left off rather than from the recovery revision).
    applied: Arc<AtomicU64>,
    running: AtomicBool,
    lifecycle: tokio::sync::Mutex<()>,
    cancel: Mutex<CancellationToken>,
    tasks: TaskTracker,
}

impl TableManager {
    /// Stores the dependencies and registers the `tables/`, `assignments/` and
    /// `assignments.stable/` watches. The vault keeps the applied revision across restarts.
    #[allow(clippy::too_many_arguments)] // one per component dependency, as the graph says
    pub fn new(
        ms: Arc<MetaStorageManager>,
        affinity: Arc<AffinityManager>,
        schema: Arc<SchemaManager>,
        raft: Arc<RaftManager>,
        network: Arc<NetworkManager>,
        partition_service: Arc<PartitionService>,
        provider: Arc<dyn PartitionStorageProvider>,
        vault: Arc<VaultManager>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            schema,
            service: partition_service,
            catalog: RwLock::new(Catalog::default()),
        });
        let mut registration = Ok(());
        for prefix in [TABLES_PREFIX, ASSIGNMENTS_PREFIX, STABLE_PREFIX] {
            let tx = tx.clone();
            let sink = Arc::clone(&shared);
            let registered = ms.register_watch(
                KeyMatcher::Prefix(prefix.to_vec()),
                move |event: WatchEvent| {
                    // the catalog follows the event before the watch reports it delivered (a
                    // reader that waited for the revision sees the table); starting and
                    // destroying replicas is the worker's, in the background
                    let applied = {
                        let mut catalog = sink.catalog.write();
                        event
                            .entries
                            .iter()
                            .try_for_each(|change| catalog.apply(&change.new))
                    };
                    // the receiver lives as long as the manager
                    let _ = tx.send(event);
                    std::future::ready(applied.map_err(|e| Box::new(e) as BoxError))
                },
            );
            if let Err(e) = registered {
                registration = Err(e.to_string());
            }
        }
        Self {
            ms,
            vault,
            affinity,
            raft,
            network,
            provider,
            shared,
            registration,
            events: Arc::new(tokio::sync::Mutex::new(rx)),
            local: Arc::new(tokio::sync::Mutex::new(HashMap::new())),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            applied: Arc::new(AtomicU64::new(0)),
            running: AtomicBool::new(false),
            lifecycle: tokio::sync::Mutex::new(()),
            cancel: Mutex::new(CancellationToken::new()),
            tasks: TaskTracker::new(),
        }
    }

    fn check_running(&self) -> Result<()> {
        if self.running.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::NotStarted)
        }
    }

    /// Creates table `schema.table` with `partitions` partitions of `replicas` replicas:
    /// the schema, then the assignments, then the definition (written only if absent).
    pub async fn create_table(
        &self,
        schema: TableSchema,
        partitions: u32,
        replicas: u32,
    ) -> Result<TableInfo> {
        self.check_running()?;
        let name = schema.table.clone();
        for (what, n) in [("partitions", partitions), ("replicas", replicas)] {
            if n == 0 {
                return Err(Error::InvalidTable {
                    table: name,
                    reason: format!("{what} must be at least 1"),
                });
            }
        }
        let key = table_key(&name);
        if self.ms.get(&key).await?.is_some_and(|e| !e.tombstone) {
            return Err(Error::TableExists { table: name });
        }
        match self.shared.schema.create(schema).await {
            Ok(_) => {}
            Err(schema::Error::TableExists { .. }) => {
                return Err(Error::TableExists { table: name })
            }
            Err(e) => return Err(e.into()),
        }
        let assignments = match self
            .affinity
            .calculate_and_store(&name, partitions, replicas)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                // nothing half-applied: the schema goes again
                if let Err(undo) = self.shared.schema.drop_table(&name).await {
                    tracing::warn!(table = %name, error = %undo, "undoing the schema of a failed create");
                }
                return Err(e.into());
            }
        };
        let info = TableInfo {
            name: name.clone(),
            id: format!("t{}", uuid::Uuid::new_v4().simple()),
            partitions,
            replicas,
        };
        // the groups start with these voters: they are the table's first stable assignments
        let mut ops = vec![Operation::put(key.clone(), info.encode()?)];
        let mut keys = vec![key.clone(), affinity::assignments_key(&name)];
        for (p, voters) in assignments.partitions.iter().enumerate() {
            let p = u32::try_from(p).map_err(|_| Error::InvalidTable {
                table: name.clone(),
                reason: "more than u32::MAX partitions".into(),
            })?;
            let stable = StableAssignment {
                index: 0,
                voters: voters.clone(),
            };
            ops.push(Operation::put(stable_key(&info.id, p), stable.encode()?));
            keys.push(stable_key(&info.id, p));
        }
        let written = self
            .ms
            .invoke(Condition::not_exists(key.clone()), ops, Vec::new())
            .await?;
        if !written {
            return Err(Error::TableExists { table: name });
        }
        // the node sees its own table at once, whatever the watch's progress
        let entries = self.ms.get_all(&keys).await?;
        {
            let mut catalog = self.shared.catalog.write();
            for entry in entries.into_iter().flatten() {
                catalog.apply(&entry)?;
            }
        }
        tracing::info!(
            table = %name,
            table_id = %info.id,
            partitions,
            replicas,
            assignments_revision = assignments.revision,
            "table created"
        );
        Ok(info)
    }

    /// Drops `table`: its definition, assignments and schema; every node destroys its
    /// replicas when the watch delivers the removal.
    pub async fn drop_table(&self, table: &str) -> Result<()> {
        self.check_running()?;
        let key = table_key(table);
        let not_found = || Error::TableNotFound {
            table: table.to_owned(),
        };
        let entry = self.ms.get(&key).await?.ok_or_else(not_found)?;
        let info = TableInfo::decode(&entry)?.ok_or_else(not_found)?;
        // the definition and the stable assignments go together
        let mut ops = vec![Operation::remove(key.clone())];
        ops.extend((0..info.partitions).map(|p| Operation::remove(stable_key(&info.id, p))));
        let removed = self
            .ms
            .invoke(
                Condition::revision(key.clone(), CompareOp::Eq, entry.revision),
                ops,
                Vec::new(),
            )
            .await?;
        if !removed {
            return Err(not_found());
        }
        self.affinity.remove(table).await?;
        match self.shared.schema.drop_table(table).await {
            Ok(()) | Err(schema::Error::TableNotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(entry) = self.ms.get(&key).await? {
            self.shared.catalog.write().apply(&entry)?;
        }
        tracing::info!(table, "table dropped");
        Ok(())
    }

    /// Every table this node knows, by name.
    pub fn tables(&self) -> Vec<TableInfo> {
        self.shared
            .catalog
            .read()
            .tables
            .values()
            .filter_map(|(_, t)| t.clone())
            .collect()
    }

    /// The record view of `name`, if this node knows the table.
    pub fn table(&self, name: &str) -> Option<Table> {
        let info = self.shared.catalog.read().table(name).cloned()?;
        Some(Table::new(Arc::clone(&self.shared), info))
    }

    /// Per partition of `table`, the voters its Raft group runs (the stable assignments; a
    /// move to the pending ones in `affinity` is under way while they differ).
    pub fn stable_assignments(&self, table: &str) -> Option<Vec<Vec<String>>> {
        self.shared.catalog.read().stable_assignments(table)
    }

    /// The (table id, partition) replicas this node runs, sorted.
    pub async fn local_partitions(&self) -> Vec<(String, u32)> {
        let mut out: Vec<_> = self.local.lock().await.keys().cloned().collect();
        out.sort();
        out
    }

    async fn start_inner(&self, ctx: &StartContext) -> Result<()> {
        let _serial = self.lifecycle.lock().await;
        if self.running.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Err(reason) = &self.registration {
            return Err(Error::InvalidState(format!(
                "registering the table watches: {reason}"
            )));
        }
        let node = self
            .network
            .topology()
            .try_local_member()
            .map(|m| m.name)
            .ok_or_else(|| Error::InvalidState("started before the network".into()))?;
        // the partition database (<data_dir>/partitions) is this component's: open it here,
        // close it on stop (idempotent both ways)
        let provider = Arc::clone(&self.provider);
        tokio::task::spawn_blocking(move || provider.open())
            .await
            .map_err(|e| Error::InvalidState(format!("opening the partition database: {e}")))??;
        let recovery_revision = self.ms.recovery_revision();
        let stored = recovery::load_applied(&self.vault).await?;
        let revision = recovery_revision.max(self.applied.load(Ordering::SeqCst));
        {
            let mut catalog = Catalog::default();
            for prefix in [TABLES_PREFIX, ASSIGNMENTS_PREFIX, STABLE_PREFIX] {
                for entry in self.ms.prefix_at(prefix, revision)? {
                    catalog.apply(&entry)?;
                }
            }
            *self.shared.catalog.write() = catalog;
        }
        // full update: the node missed events while it was down (or never recorded any), so
        // storages of dropped tables and of partitions moved away are still on disk
        if stored.is_none_or(|s| s < recovery_revision) {
            let keep: HashSet<(String, u32)> = self
                .shared
                .catalog
                .read()
                .desired(&node)
                .into_keys()
                .collect();
            let destroyed = recovery::destroy_stale(&self.provider, &keep).await?;
            for (table_id, p) in &destroyed {
                // their Raft logs go too: a replica assigned here again starts empty
                self.raft
                    .destroy_group(&crate::partition::partition_group_id(table_id, *p))
                    .await?;
            }
            tracing::info!(
                stored_revision = stored,
                recovery_revision,
                destroyed = destroyed.len(),
                "table manager full update"
            );
        }
        let worker = Arc::new(Worker {
            shared: Arc::clone(&self.shared),
            raft: Arc::clone(&self.raft),
            provider: Arc::clone(&self.provider),
            vault: Arc::clone(&self.vault),
            local: Arc::clone(&self.local),
            node: node.clone(),
        });
        self.applied.store(revision, Ordering::SeqCst);
        let mut settled = worker.reconcile().await;
        if settled {
            worker.record_applied(revision).await;
        }
        let applied = Arc::clone(&self.applied);
        let cancel = CancellationToken::new();
        *self.cancel.lock() = cancel.clone();
        self.tasks.reopen();
        let wake = Arc::new(Notify::new());
        let rebalancer = Arc::new(Rebalancer {
            shared: Arc::clone(&self.shared),
            ms: Arc::clone(&self.ms),
            local: Arc::clone(&self.local),
            node,
            in_flight: Arc::clone(&self.in_flight),
            wake: Arc::clone(&wake),
            role_changes: self.raft.role_changes(),
        });
        spawn_supervised(
            &self.tasks,
            &ctx.faults,
            NAME,
            "rebalance",
            rebalancer.run(self.tasks.clone(), cancel.clone()),
        );
        let events = Arc::clone(&self.events);
        spawn_supervised(&self.tasks, &ctx.faults, NAME, "watch", async move {
            let mut events = events.lock().await;
            loop {
                let event = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    event = events.recv() => event,
                    // a replica that failed to start or waits to be destroyed is retried
                    () = tokio::time::sleep(RETRY_PAUSE), if !settled => {
                        settled = worker.reconcile().await;
                        if settled {
                            worker.record_applied(applied.load(Ordering::SeqCst)).await;
                        }
                        continue;
                    }
                };
                let Some(event) = event else { return Ok(()) };
                // each watch (tables/, assignments/, assignments.stable/) delivers its share of
                // a revision as an event of its own: only older revisions are replays (and
                // applying one again changes nothing)
                if event.revision < applied.load(Ordering::SeqCst) {
                    continue;
                }
                {
                    let mut catalog = worker.shared.catalog.write();
                    for change in &event.entries {
                        catalog
                            .apply(&change.new)
                            .map_err(|e| Box::new(e) as BoxError)?;
                    }
                }
                applied.store(event.revision, Ordering::SeqCst);
                wake.notify_one();
                // a reconcile runs to its end: a replica half-started would leak its group
                settled = worker.reconcile().await;
                if settled {
                    worker.record_applied(event.revision).await;
                }
            }
        });
        self.running.store(true, Ordering::SeqCst);
        tracing::info!(recovery_revision = revision, "table manager started");
        Ok(())
    }

    async fn stop_inner(&self) -> Result<()> {
        let _serial = self.lifecycle.lock().await;
        self.running.store(false, Ordering::SeqCst);
        self.cancel.lock().cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.in_flight.lock().clear();
        let local: Vec<Partition> = self.local.lock().await.drain().map(|(_, p)| p).collect();
        for partition in local {
            self.shared
                .service
                .unregister(partition.table_id(), partition.partition());
            match partition.stop(&self.raft).await {
                Ok(()) | Err(Error::Raft(raft::Error::GroupNotFound(_))) => {}
                Err(e) => tracing::warn!(error = %e, "stopping a partition replica"),
            }
        }
        let provider = Arc::clone(&self.provider);
        tokio::task::spawn_blocking(move || provider.close())
            .await
            .map_err(|e| Error::InvalidState(format!("closing the partition database: {e}")))??;
        tracing::info!("table manager stopped");
        Ok(())
    }
}

/// Starts and destroys local replicas to match the catalog.
struct Worker {
    shared: Arc<Shared>,
    raft: Arc<RaftManager>,
    provider: Arc<dyn PartitionStorageProvider>,
    vault: Arc<VaultManager>,
    local: Arc<tokio::sync::Mutex<HashMap<(String, u32), Partition>>>,
    node: String,
}

impl Worker {
    /// Records `revision` as completely applied (the catalog and the replicas match it).
    async fn record_applied(&self, revision: u64) {
        if let Err(e) = recovery::store_applied(&self.vault, revision).await {
            tracing::warn!(revision, error = %e, "recording the table applied revision");
        }
    }

    /// Whether the replica `partition`, assigned here no more, may be destroyed: its table
    /// is gone, or its own group view no longer counts this node as a voter, or that view
    /// lags behind the stable record (a committed configuration without this node).
    fn may_destroy(&self, partition: &Partition) -> bool {
        let catalog = self.shared.catalog.read();
        let (table_id, p) = (partition.table_id(), partition.partition());
        if catalog.table_by_id(table_id).is_none() {
            return true;
        }
        let m = partition.group().metrics();
        let stable_index = catalog.stable_record(table_id, p).map_or(0, |s| s.index);
        !m.voters.contains(&self.node) || m.last_log_index.unwrap_or(0) < stable_index
    }

    /// Destroys replicas no longer assigned here and starts the missing ones; false if
    /// something failed or waits (to be retried).
    async fn reconcile(&self) -> bool {
        let mut settled = true;
        let desired = self.shared.catalog.read().desired(&self.node);
        let mut local = self.local.lock().await;
        let gone: Vec<(String, u32)> = local
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let Some(partition) = local.get(&key) else {
                continue;
            };
            if !self.may_destroy(partition) {
                settled = false;
                tracing::debug!(table_id = %key.0, partition = key.1, "replica still a voter in its own view, destroy deferred");
                continue;
            }
            if let Some(partition) = local.remove(&key) {
                self.shared.service.unregister(&key.0, key.1);
                if let Err(e) = partition.destroy(&self.raft).await {
                    settled = false;
                    tracing::warn!(table_id = %key.0, partition = key.1, error = %e, "destroying a partition replica");
                }
            }
        }
        let have: HashSet<(String, u32)> = local.keys().cloned().collect();
        let mut missing: Vec<_> = desired
            .into_iter()
            .filter(|(k, _)| !have.contains(k))
            .collect();
        missing.sort_by(|a, b| a.0.cmp(&b.0));
        for ((table_id, p), wanted) in missing {
            match self.start_replica(&table_id, p, wanted).await {
                Ok(partition) => {
                    local.insert((table_id, p), partition);
                }
                Err(e) => {
                    settled = false;
                    tracing::warn!(table_id = %table_id, partition = p, error = %e, "starting a partition replica");
                }
            }
        }
        settled
    }

    async fn start_replica(&self, table_id: &str, p: u32, wanted: Wanted) -> Result<Partition> {
        let provider = Arc::clone(&self.provider);
        let id = table_id.to_owned();
        let storage = tokio::task::spawn_blocking(move || provider.partition(&id, p))
            .await
            .map_err(|e| Error::storage("partition", e))??;
        // a stable voter may initialize a fresh group; a newcomer starts empty and waits for
        // the leader to add it
        let members = wanted.voters.map(GroupMembers::voters).unwrap_or_default();
        let partition = Partition::start(&self.raft, table_id, p, storage, members).await?;
        // served once its own view counts it as a member (a newcomer: when the rebalance
        // tick sees it added)
        let m = partition.group().metrics();
        if m.voters.contains(&self.node) || m.learners.contains(&self.node) {
            self.shared.service.register(partition.clone())?;
        }
        Ok(partition)
    }
}

#[async_trait]
impl Component for TableManager {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, ctx: &StartContext) -> std::result::Result<(), BoxError> {
        Ok(self.start_inner(ctx).await?)
    }

    async fn stop(&self) -> std::result::Result<(), BoxError> {
        Ok(self.stop_inner().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_definitions_round_trip_and_tombstones_decode_to_none() {
        let info = TableInfo {
            name: "people".into(),
            id: "tabc".into(),
            partitions: 4,
            replicas: 2,
        };
        let entry = Entry::live(table_key("people"), info.encode().expect("encode"), 7, 1);
        assert_eq!(TableInfo::decode(&entry).expect("decode"), Some(info));
        let gone = Entry::tombstone(table_key("people"), 8, 2);
        assert_eq!(TableInfo::decode(&gone).expect("decode"), None);
        let bad = Entry::live(table_key("people"), vec![9, 1], 9, 3);
        assert!(TableInfo::decode(&bad).is_err());
    }

    #[test]
    fn catalog_keeps_the_newest_revision() {
        let mut catalog = Catalog::default();
        let info = |partitions| TableInfo {
            name: "t".into(),
            id: "tid".into(),
            partitions,
            replicas: 1,
        };
        let newer = Entry::live(table_key("t"), info(8).encode().expect("encode"), 10, 2);
        let older = Entry::live(table_key("t"), info(4).encode().expect("encode"), 5, 1);
        catalog.apply(&newer).expect("apply");
        catalog.apply(&older).expect("apply");
        assert_eq!(catalog.table("t").map(|t| t.partitions), Some(8));
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A catalog with table `t` (id `tid`, 2 partitions): pending assignments `pending`,
    /// stable records `stable` (partition, voters).
    fn catalog_with(pending: &[&[&str]], stable: &[(u32, &[&str])]) -> Catalog {
        let mut catalog = Catalog::default();
        let info = TableInfo {
            name: "t".into(),
            id: "tid".into(),
            partitions: 2,
            replicas: 2,
        };
        let def = Entry::live(table_key("t"), info.encode().expect("encode"), 1, 1);
        catalog.apply(&def).expect("apply");
        let assignments = Assignments {
            table: "t".into(),
            revision: 2,
            replicas: 2,
            baseline_revision: 1,
            partitions: pending.iter().map(|p| names(p)).collect(),
        };
        let entry = Entry::live(
            affinity::assignments_key("t"),
            assignments.encode().expect("encode"),
            2,
            1,
        );
        catalog.apply(&entry).expect("apply");
        for (p, voters) in stable {
            let record = StableAssignment {
                index: 5,
                voters: names(voters),
            };
            let entry = Entry::live(
                stable_key("tid", *p),
                record.encode().expect("encode"),
                3,
                1,
            );
            catalog.apply(&entry).expect("apply");
        }
        catalog
    }

    #[test]
    fn nodes_run_stable_and_pending_replicas_and_only_stable_voters_initialize() {
        // partition 0 moves from {n1, n3} to {n1, n4}; partition 1 has no stable record
        let catalog = catalog_with(&[&["n1", "n4"], &["n2", "n3"]], &[(0, &["n1", "n3"])]);
        let n1 = catalog.desired("n1");
        assert_eq!(n1.len(), 1);
        assert_eq!(
            n1[&("tid".to_owned(), 0)].voters,
            Some(names(&["n1", "n3"]))
        );
        // the leaving node keeps its replica until the stable record drops it
        let n3 = catalog.desired("n3");
        assert_eq!(n3.len(), 2);
        // the newcomer joins empty: it never initializes the group
        let n4 = catalog.desired("n4");
        assert_eq!(n4[&("tid".to_owned(), 0)].voters, None);
        assert_eq!(n4.len(), 1);
        // without a stable record the pending assignment is what runs
        assert_eq!(
            catalog.desired("n2")[&("tid".to_owned(), 1)].voters,
            Some(names(&["n2", "n3"]))
        );
        // routing tries the stable voters first, then the newcomers
        assert_eq!(catalog.replicas("t", 0), Some(names(&["n1", "n3", "n4"])));
        assert_eq!(
            catalog.stable_assignments("t"),
            Some(vec![names(&["n1", "n3"]), names(&["n2", "n3"])])
        );
        let plan = catalog.plan_of("tid", 0).expect("plan");
        assert_eq!(
            (plan.table.as_str(), plan.table_revision, plan.target),
            ("t", 1, names(&["n1", "n4"]))
        );
        assert_eq!(plan.stable.map(|s| s.index), Some(5));
        assert!(catalog.plan_of("other", 0).is_none());
    }

    #[test]
    fn a_committed_move_releases_the_node_that_left() {
        let catalog = catalog_with(&[&["n1", "n4"], &["n2", "n3"]], &[(0, &["n1", "n4"])]);
        assert!(!catalog.desired("n3").contains_key(&("tid".to_owned(), 0)));
        assert_eq!(
            catalog.desired("n4")[&("tid".to_owned(), 0)].voters,
            Some(names(&["n1", "n4"]))
        );
        assert_eq!(catalog.replicas("t", 0), Some(names(&["n1", "n4"])));
    }
}
