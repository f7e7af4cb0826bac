//! [`TableManager`]: the `table` component. Table definitions live in MetaStorage under
//! `tables/<name>`; every node follows them (and the assignments) through watches and runs
//! the partition replicas assigned to it.
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
use metastorage::{Condition, Entry, KeyMatcher, MetaStorageManager, Operation, WatchEvent};
use network::NetworkManager;
use parking_lot::{Mutex, RwLock};
use raft::{GroupMembers, RaftManager};
use schema::{SchemaManager, TableSchema};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    error::{Error, Result},
    partition::Partition,
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
        let body = postcard::to_stdvec(&StoredTable {
            id: self.id.clone(),
            partitions: self.partitions,
            replicas: self.replicas,
        })
        .map_err(|e| Error::Encode {
            what: "table definition",
            reason: e.to_string(),
        })?;
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
    assignments: BTreeMap<String, (u64, Option<Assignments>)>,
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
        }
        Ok(())
    }

    pub(crate) fn table(&self, name: &str) -> Option<&TableInfo> {
        self.tables.get(name).and_then(|(_, t)| t.as_ref())
    }

    pub(crate) fn replicas(&self, name: &str, partition: u32) -> Option<Vec<String>> {
        self.assignments
            .get(name)
            .and_then(|(_, a)| a.as_ref())
            .and_then(|a| a.partitions.get(partition as usize).cloned())
    }

    /// Every (table id, partition) -> voters that `node` should run.
    fn desired(&self, node: &str) -> HashMap<(String, u32), Vec<String>> {
        let mut out = HashMap::new();
        for (name, (_, def)) in &self.tables {
            let Some(def) = def else { continue };
            let Some((_, Some(assignments))) = self.assignments.get(name) else {
                continue;
            };
            for (p, nodes) in assignments.partitions.iter().enumerate() {
                if nodes.iter().any(|n| n == node) {
                    if let Ok(p) = u32::try_from(p) {
                        out.insert((def.id.clone(), p), nodes.clone());
                    }
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
/// `new` registers MetaStorage watches on `tables/` and `assignments/` (so it must run
/// before the node deploys watches) and does no I/O. `start` rebuilds the catalog at the
/// node's recovery revision, starts the local partition replicas and spawns the task that
/// follows watch events. Rebalancing on a baseline change is not done yet: a replica starts
/// with the voters of its first assignments.
pub struct TableManager {
    ms: Arc<MetaStorageManager>,
    affinity: Arc<AffinityManager>,
    raft: Arc<RaftManager>,
    network: Arc<NetworkManager>,
    provider: Arc<dyn PartitionStorageProvider>,
    shared: Arc<Shared>,
    registration: std::result::Result<(), String>,
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<WatchEvent>>>,
    local: Arc<tokio::sync::Mutex<HashMap<(String, u32), Partition>>>,
    /// The last MetaStorage revision the catalog applied (survives a stop, so a restart at
    /// a run level rebuilds from where it left off rather than from the recovery revision).
    applied: Arc<AtomicU64>,
    running: AtomicBool,
    lifecycle: tokio::sync::Mutex<()>,
    cancel: Mutex<CancellationToken>,
    tasks: TaskTracker,
}

impl TableManager {
    /// Stores the dependencies and registers the `tables/` and `assignments/` watches.
    pub fn new(
        ms: Arc<MetaStorageManager>,
        affinity: Arc<AffinityManager>,
        schema: Arc<SchemaManager>,
        raft: Arc<RaftManager>,
        network: Arc<NetworkManager>,
        partition_service: Arc<PartitionService>,
        provider: Arc<dyn PartitionStorageProvider>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut registration = Ok(());
        for prefix in [TABLES_PREFIX, ASSIGNMENTS_PREFIX] {
            let tx = tx.clone();
            let registered = ms.register_watch(
                KeyMatcher::Prefix(prefix.to_vec()),
                move |event: WatchEvent| {
                    // the receiver lives as long as the manager
                    let _ = tx.send(event);
                    std::future::ready(Ok::<(), BoxError>(()))
                },
            );
            if let Err(e) = registered {
                registration = Err(e.to_string());
            }
        }
        Self {
            ms,
            affinity,
            raft,
            network,
            provider,
            shared: Arc::new(Shared {
                schema,
                service: partition_service,
                catalog: RwLock::new(Catalog::default()),
            }),
            registration,
            events: Arc::new(tokio::sync::Mutex::new(rx)),
            local: Arc::new(tokio::sync::Mutex::new(HashMap::new())),
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
        let written = self
            .ms
            .invoke(
                Condition::not_exists(key.clone()),
                vec![Operation::put(key.clone(), info.encode()?)],
                Vec::new(),
            )
            .await?;
        if !written {
            return Err(Error::TableExists { table: name });
        }
        // the node sees its own table at once, whatever the watch's progress
        let entries = self
            .ms
            .get_all(&[key, affinity::assignments_key(&name)])
            .await?;
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
        let removed = self
            .ms
            .invoke(
                Condition::exists(key.clone()),
                vec![Operation::remove(key.clone())],
                Vec::new(),
            )
            .await?;
        if !removed {
            return Err(Error::TableNotFound {
                table: table.to_owned(),
            });
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
        // the partition database (<data_dir>/partitions) is this component's: open it here,
        // close it on stop (idempotent both ways)
        let provider = Arc::clone(&self.provider);
        tokio::task::spawn_blocking(move || provider.open())
            .await
            .map_err(|e| Error::InvalidState(format!("opening the partition database: {e}")))??;
        let revision = self
            .ms
            .recovery_revision()
            .max(self.applied.load(Ordering::SeqCst));
        {
            let mut catalog = Catalog::default();
            for prefix in [TABLES_PREFIX, ASSIGNMENTS_PREFIX] {
                for entry in self.ms.prefix_at(prefix, revision)? {
                    catalog.apply(&entry)?;
                }
            }
            *self.shared.catalog.write() = catalog;
        }
        let worker = Worker {
            shared: Arc::clone(&self.shared),
            raft: Arc::clone(&self.raft),
            network: Arc::clone(&self.network),
            provider: Arc::clone(&self.provider),
            local: Arc::clone(&self.local),
        };
        self.applied.store(revision, Ordering::SeqCst);
        let mut settled = worker.reconcile().await;
        let applied = Arc::clone(&self.applied);
        let cancel = CancellationToken::new();
        *self.cancel.lock() = cancel.clone();
        self.tasks.reopen();
        let events = Arc::clone(&self.events);
        spawn_supervised(&self.tasks, &ctx.faults, NAME, "watch", async move {
            let mut events = events.lock().await;
            loop {
                let event = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    event = events.recv() => event,
                    // a replica that failed to start is retried after a pause
                    () = tokio::time::sleep(RETRY_PAUSE), if !settled => {
                        settled = worker.reconcile().await;
                        continue;
                    }
                };
                let Some(event) = event else { return Ok(()) };
                if event.revision <= applied.load(Ordering::SeqCst) {
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
                // a reconcile runs to its end: a replica half-started would leak its group
                settled = worker.reconcile().await;
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
    network: Arc<NetworkManager>,
    provider: Arc<dyn PartitionStorageProvider>,
    local: Arc<tokio::sync::Mutex<HashMap<(String, u32), Partition>>>,
}

impl Worker {
    /// Destroys replicas no longer assigned here and starts the missing ones; false if
    /// something failed (to be retried).
    async fn reconcile(&self) -> bool {
        let Some(node) = self.network.topology().try_local_member().map(|m| m.name) else {
            tracing::warn!("no local node name yet, partitions not reconciled");
            return false;
        };
        let mut settled = true;
        let desired = self.shared.catalog.read().desired(&node);
        let mut local = self.local.lock().await;
        let gone: Vec<(String, u32)> = local
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
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
        missing.sort();
        for ((table_id, p), voters) in missing {
            match self.start_replica(&table_id, p, voters).await {
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

    async fn start_replica(
        &self,
        table_id: &str,
        p: u32,
        voters: Vec<String>,
    ) -> Result<Partition> {
        let provider = Arc::clone(&self.provider);
        let id = table_id.to_owned();
        let storage = tokio::task::spawn_blocking(move || provider.partition(&id, p))
            .await
            .map_err(|e| Error::storage("partition", e))??;
        let partition = Partition::start(
            &self.raft,
            table_id,
            p,
            storage,
            GroupMembers::voters(voters),
        )
        .await?;
        self.shared.service.register(partition.clone())?;
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
}
