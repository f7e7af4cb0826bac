//! [`MetaStorageManager`]: the `metastorage` component. Cluster init while the node is a
//! zombie, then the Raft-replicated store: recovery, watches, the client API, learners and
//! compaction.
use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use configuration::ConfigurationManager;
use futures::future::join_all;
use lifecycle::{
    spawn_supervised, BoxError, Component, ComponentRuntime, FaultReporter, StartContext,
};
use network::{ClusterNode, NetworkManager, TopologyEvent};
use parking_lot::{Mutex, RwLock};
use raft::{GroupMembers, RaftGroup, RaftManager};
use tokio::{
    sync::{broadcast::error::RecvError, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vault::VaultManager;

use crate::{
    cluster::{ClusterMessage, ClusterState, InitRequest, CLUSTER_STATE_KEY},
    command::{CommandOp, Condition, Operation},
    config::MetaStorageConfiguration,
    entry::Entry,
    error::{Error, Result},
    etcd::{Attached, Endpoint},
    replicated::{Client, RaftStateMachine},
    state_machine::MetaStateMachine,
    storage::{KeyValueStorage, MemoryKeyValueStorage, SledKeyValueStorage},
    watch::{KeyMatcher, WatchEvent, WatchId, WatchListener, WatchProcessor},
};

const NAME: &str = "metastorage";
/// The Raft group id of the MetaStorage.
pub const METASTORAGE_GROUP: &str = "metastorage";
/// Vault key of the last revision this node's watches delivered (8 bytes, big endian):
/// after a restart watches resume right after it.
pub const WATCH_REVISION_KEY: &[u8] = b"metastorage.watch_revision";
/// The MetaStorage database folder inside the node's data directory.
const STORAGE_DIR: &str = "metastorage";

/// What the init handler and the manager share: the vault copy of the cluster state.
struct ClusterStateStore {
    vault: Arc<VaultManager>,
    state: watch::Sender<Option<ClusterState>>,
    lock: tokio::sync::Mutex<()>,
}

impl ClusterStateStore {
    fn publish(&self, state: &Option<ClusterState>) {
        self.state.send_if_modified(|current| {
            let changed = current != state;
            if changed {
                current.clone_from(state);
            }
            changed
        });
    }

    async fn load(&self) -> Result<Option<ClusterState>> {
        let state = match self.vault.get(CLUSTER_STATE_KEY).await? {
            Some(bytes) => Some(ClusterState::decode(&bytes)?),
            None => None,
        };
        self.publish(&state);
        Ok(state)
    }

    /// Stores `state` durably unless a state is stored already; returns the stored one.
    async fn store(&self, state: ClusterState) -> Result<ClusterState> {
        let _serial = self.lock.lock().await;
        if let Some(existing) = self.load().await? {
            return Ok(existing);
        }
        self.vault.put(CLUSTER_STATE_KEY, state.encode()?).await?;
        tracing::info!(cluster_id = %state.id, cluster_name = %state.name, voters = ?state.metastorage_voters, "cluster state stored");
        let stored = Some(state.clone());
        self.publish(&stored);
        Ok(state)
    }

    async fn handle(&self, msg: ClusterMessage) -> Result<Option<ClusterState>> {
        match msg {
            ClusterMessage::Init(state) => self.store(state).await.map(Some),
            ClusterMessage::Query => self.load().await,
        }
    }
}

/// A watch registered with the manager: deployed into the processor of each start.
struct Registered {
    id: WatchId,
    matcher: KeyMatcher,
    listener: Arc<dyn WatchListener>,
}

#[derive(Default)]
struct Watches {
    registered: Vec<Registered>,
    next_id: u64,
    /// Manager watch id -> the processor's id, while deployed.
    deployed: Option<HashMap<WatchId, WatchId>>,
}

/// Hands a shared listener to the processor.
struct Forward(Arc<dyn WatchListener>);

#[async_trait]
impl WatchListener for Forward {
    async fn on_update(&self, event: WatchEvent) -> std::result::Result<(), BoxError> {
        self.0.on_update(event).await
    }
}

/// Everything that exists while the component runs.
struct Running {
    local: String,
    state: ClusterState,
    storage: Arc<dyn KeyValueStorage>,
    sm: Arc<MetaStateMachine>,
    client: Client,
    processor: Arc<WatchProcessor>,
    recovery_revision: u64,
    faults: FaultReporter,
    config: MetaStorageConfiguration,
}

/// The MetaStorage component and cluster init.
///
/// Construction registers the cluster-init message handler (so it happens before the
/// network starts) and does no I/O. [`init_cluster`](Self::init_cluster) works while the
/// node is a zombie; `start` (once the cluster state exists) joins the Raft group, catches
/// up with the leader and records the recovery revision; `deploy_watches` starts delivery.
pub struct MetaStorageManager {
    vault: Arc<VaultManager>,
    network: Arc<NetworkManager>,
    raft: Arc<RaftManager>,
    config: Arc<ConfigurationManager>,
    cluster: Arc<ClusterStateStore>,
    init_lock: tokio::sync::Mutex<()>,
    /// Serializes start and stop.
    lifecycle: tokio::sync::Mutex<()>,
    watches: Mutex<Watches>,
    running: RwLock<Option<Arc<Running>>>,
    memory_storage: Mutex<Option<Arc<dyn KeyValueStorage>>>,
    runtime: ComponentRuntime,
    registration: std::result::Result<(), String>,
    /// The etcd v3 endpoint (served when `etcd_listen` is set).
    etcd: Endpoint,
}

impl MetaStorageManager {
    /// No I/O, no tasks; registers the cluster-init handler with `network` (which must not
    /// be started yet). Reads the `metastorage` root of `config` at start.
    pub fn new(
        vault: Arc<VaultManager>,
        network: Arc<NetworkManager>,
        raft: Arc<RaftManager>,
        config: Arc<ConfigurationManager>,
    ) -> Self {
        let cluster = Arc::new(ClusterStateStore {
            vault: Arc::clone(&vault),
            state: watch::channel(None).0,
            lock: tokio::sync::Mutex::new(()),
        });
        let handler = Arc::clone(&cluster);
        let registration = network
            .messaging()
            .register_handler::<ClusterMessage, Option<ClusterState>, _, _>(move |from, msg| {
                let handler = Arc::clone(&handler);
                async move {
                    handler.handle(msg).await.map_err(|e| {
                        tracing::warn!(from = %from.name, error = %e, "cluster message failed");
                        e.to_string()
                    })
                }
            })
            .map_err(|e| e.to_string());
        let etcd = Endpoint::new(cluster.state.subscribe());
        Self {
            vault,
            network,
            raft,
            config,
            cluster,
            init_lock: tokio::sync::Mutex::new(()),
            lifecycle: tokio::sync::Mutex::new(()),
            watches: Mutex::new(Watches::default()),
            running: RwLock::new(None),
            memory_storage: Mutex::new(None),
            runtime: ComponentRuntime::new(NAME),
            registration,
            etcd,
        }
    }

    /// The current `metastorage` configuration.
    pub fn configuration(&self) -> Result<MetaStorageConfiguration> {
        self.config
            .root::<MetaStorageConfiguration>()
            .map_err(|e| Error::Config(e.to_string()))
    }

    // ----- cluster state and init -----

    /// This node's cluster state, read from the vault (the vault must be started); `None`
    /// before init. Also published to [`subscribe_cluster_state`](Self::subscribe_cluster_state).
    pub async fn cluster_state(&self) -> Result<Option<ClusterState>> {
        self.cluster.load().await
    }

    /// The cluster state as last seen (from the vault, an init, or another node): `None`
    /// until [`cluster_state`](Self::cluster_state) read it or it arrived.
    pub fn subscribe_cluster_state(&self) -> watch::Receiver<Option<ClusterState>> {
        self.cluster.state.subscribe()
    }

    /// Initializes the cluster from this node (works while the node is a zombie).
    ///
    /// Validates the request against the physical topology, picks the voters (default: up
    /// to three member names, alphabetically), gives the cluster a random id, stores the
    /// state durably here and on every other member, and returns it. The same request
    /// again returns the same state (and delivers it again); another one fails with
    /// [`Error::AlreadyInitialized`] saying what differs.
    pub async fn init_cluster(&self, request: InitRequest) -> Result<ClusterState> {
        let config = self.configuration()?;
        let topology = self.network.topology();
        let local = topology
            .try_local_member()
            .ok_or_else(|| Error::InvalidInit("the network of this node is not started".into()))?;
        let _serial = self.init_lock.lock().await;
        let state = match self.cluster.load().await? {
            Some(existing) => {
                if let Some(why) = request.mismatch(&existing) {
                    return Err(Error::AlreadyInitialized(format!(
                        "cluster {} ({}) differs from the request: {why}",
                        existing.name, existing.id
                    )));
                }
                existing
            }
            None => {
                let names: Vec<String> = topology.members().into_iter().map(|m| m.name).collect();
                let voters = request.resolve_voters(&names)?;
                let fresh = ClusterState {
                    id: Uuid::new_v4(),
                    name: request.name.clone(),
                    metastorage_voters: voters,
                };
                let held = self.cluster.store(fresh).await?;
                if let Some(why) = request.mismatch(&held) {
                    return Err(Error::AlreadyInitialized(format!(
                        "cluster {} ({}) differs from the request: {why}",
                        held.name, held.id
                    )));
                }
                held
            }
        };
        tracing::info!(node = %local.name, cluster_id = %state.id, cluster_name = %state.name, "initializing cluster");
        let others: Vec<ClusterNode> = topology
            .members()
            .into_iter()
            .filter(|m| m.id != local.id)
            .collect();
        let messaging = self.network.messaging();
        let timeout = config.init_timeout();
        let replies = join_all(others.iter().map(|node| {
            let msg = ClusterMessage::Init(state.clone());
            let messaging = messaging.clone();
            async move {
                messaging
                    .invoke::<_, Option<ClusterState>>(node, msg, timeout)
                    .await
            }
        }))
        .await;
        let mut conflicts = Vec::new();
        let mut failures = Vec::new();
        for (node, reply) in others.iter().zip(replies) {
            match reply {
                Ok(Some(held)) if held == state => {}
                Ok(Some(held)) => conflicts.push(format!(
                    "node {} holds cluster {} ({})",
                    node.name, held.name, held.id
                )),
                Ok(None) => failures.push(format!("node {}: no state stored", node.name)),
                Err(e) => failures.push(format!("node {}: {e}", node.name)),
            }
        }
        if !conflicts.is_empty() {
            return Err(Error::AlreadyInitialized(conflicts.join("; ")));
        }
        if !failures.is_empty() {
            return Err(Error::InitIncomplete(failures.join("; ")));
        }
        tracing::info!(cluster_id = %state.id, nodes = others.len() + 1, "cluster initialized");
        Ok(state)
    }

    /// Asks every other member for the cluster state (a node that missed init and every
    /// push); stores and returns the first one found. Returns the local state if there is
    /// one already.
    pub async fn fetch_cluster_state(&self) -> Result<Option<ClusterState>> {
        if let Some(state) = self.cluster.load().await? {
            return Ok(Some(state));
        }
        let config = self.configuration()?;
        let topology = self.network.topology();
        let local = topology.try_local_member();
        let messaging = self.network.messaging();
        for member in topology.members() {
            if local.as_ref().is_some_and(|l| l.id == member.id) {
                continue;
            }
            let reply = messaging
                .invoke::<_, Option<ClusterState>>(
                    &member,
                    ClusterMessage::Query,
                    config.init_timeout(),
                )
                .await;
            match reply {
                Ok(Some(state)) => return self.cluster.store(state).await.map(Some),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(node = %member.name, error = %e, "cluster state query failed")
                }
            }
        }
        Ok(None)
    }

    // ----- running state -----

    fn running(&self) -> Result<Arc<Running>> {
        if let Some(r) = self.running.read().as_ref() {
            return Ok(Arc::clone(r));
        }
        if self.cluster.state.borrow().is_none() {
            return Err(Error::NotInitialized);
        }
        let node = self
            .network
            .topology()
            .try_local_member()
            .map(|m| m.name)
            .unwrap_or_default();
        Err(Error::NotStarted { node })
    }

    /// Holds the stop guard for one operation.
    fn enter(&self) -> Result<(lifecycle::StopTicket, Arc<Running>)> {
        let ticket = self.runtime.enter()?;
        Ok((ticket, self.running()?))
    }

    /// The revision this node recovered to at start: components read their state at it,
    /// and watches deliver from the next one. 0 before start.
    pub fn recovery_revision(&self) -> u64 {
        self.running
            .read()
            .as_ref()
            .map_or(0, |r| r.recovery_revision)
    }

    /// The local applied revision (0 before start).
    pub fn revision(&self) -> u64 {
        self.running
            .read()
            .as_ref()
            .map_or(0, |r| r.storage.revision())
    }

    /// The revision history is compacted to on this node (0 before start).
    pub fn compacted_revision(&self) -> u64 {
        self.running
            .read()
            .as_ref()
            .map_or(0, |r| r.storage.compacted_revision())
    }

    /// The last revision delivered to every watch on this node (0 before deploy).
    pub fn watch_revision(&self) -> u64 {
        self.running
            .read()
            .as_ref()
            .map_or(0, |r| r.processor.status().delivered)
    }

    /// This node's Raft group of the MetaStorage, while started.
    pub fn group(&self) -> Option<RaftGroup> {
        self.running
            .read()
            .as_ref()
            .map(|r| r.client.group().clone())
    }

    // ----- watches -----

    /// Registers a watch; before [`deploy_watches`](Self::deploy_watches).
    pub fn register_watch(
        &self,
        matcher: KeyMatcher,
        listener: impl WatchListener,
    ) -> Result<WatchId> {
        let mut w = self.watches.lock();
        if w.deployed.is_some() {
            return Err(Error::WatchesDeployed {
                watch: matcher.to_string(),
            });
        }
        w.next_id += 1;
        let id = WatchId(w.next_id);
        w.registered.push(Registered {
            id,
            matcher,
            listener: Arc::new(listener),
        });
        Ok(id)
    }

    /// Removes a watch (deployed or not); false if unknown.
    pub fn unregister_watch(&self, id: WatchId) -> bool {
        let mut w = self.watches.lock();
        let before = w.registered.len();
        w.registered.retain(|r| r.id != id);
        let known = w.registered.len() != before;
        let mapped = w.deployed.as_mut().and_then(|m| m.remove(&id));
        drop(w);
        if let (Some(mapped), Some(running)) = (mapped, self.running.read().as_ref()) {
            running.processor.unregister(mapped);
        }
        known
    }

    /// Starts delivery: every stored revision after the recovery revision first, then each
    /// new one, to every registered watch.
    pub fn deploy_watches(&self) -> Result<()> {
        let (_ticket, running) = self.enter()?;
        {
            let mut w = self.watches.lock();
            if w.deployed.is_some() {
                return Err(Error::AlreadyDeployed);
            }
            let mut ids = HashMap::new();
            for r in &w.registered {
                let id = running
                    .processor
                    .register(r.matcher.clone(), Forward(Arc::clone(&r.listener)))?;
                ids.insert(r.id, id);
            }
            w.deployed = Some(ids);
        }
        running.processor.deploy(
            running.recovery_revision,
            running.sm.subscribe_revisions(),
            &running.faults,
        )?;
        let cancel = self.runtime.cancel_token();
        let vault = Arc::clone(&self.vault);
        let processor = Arc::clone(&running.processor);
        let from = running.recovery_revision;
        spawn_supervised(
            self.runtime.tasks(),
            &running.faults,
            NAME,
            "watch revision",
            async move {
                persist_watch_revision(vault, processor, from, cancel)
                    .await
                    .map_err(BoxError::from)
            },
        );
        Ok(())
    }

    /// Waits up to `timeout` until every watch saw every revision up to `revision`.
    pub async fn wait_watches(&self, revision: u64, timeout: Duration) -> Result<()> {
        let (_ticket, running) = self.enter()?;
        running.processor.wait_delivered(revision, timeout).await
    }

    // ----- reads -----

    /// The latest version of `key` (a tombstone included), read linearizably.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        let (_ticket, r) = self.enter()?;
        r.client.barrier().await?;
        r.storage.get(key, None)
    }

    /// The version of `key` at `revision`, from the local copy (no round trip).
    pub fn get_at(&self, key: &[u8], revision: u64) -> Result<Option<Entry>> {
        let (_ticket, r) = self.enter()?;
        r.storage.get(key, Some(revision))
    }

    /// The latest version of each key, in the order given, read linearizably.
    pub async fn get_all(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Entry>>> {
        let (_ticket, r) = self.enter()?;
        r.client.barrier().await?;
        r.storage.get_all(keys, None)
    }

    /// The versions of each key at `revision`, from the local copy.
    pub fn get_all_at(&self, keys: &[Vec<u8>], revision: u64) -> Result<Vec<Option<Entry>>> {
        let (_ticket, r) = self.enter()?;
        r.storage.get_all(keys, Some(revision))
    }

    /// Live entries with keys in `[from, to)` (`to: None`: no bound), read linearizably.
    pub async fn range(&self, from: &[u8], to: Option<&[u8]>) -> Result<Vec<Entry>> {
        let (_ticket, r) = self.enter()?;
        r.client.barrier().await?;
        r.storage.range(from, to, None)
    }

    /// [`range`](Self::range) at `revision`, from the local copy.
    pub fn range_at(&self, from: &[u8], to: Option<&[u8]>, revision: u64) -> Result<Vec<Entry>> {
        let (_ticket, r) = self.enter()?;
        r.storage.range(from, to, Some(revision))
    }

    /// Live entries whose keys start with `prefix`, read linearizably.
    pub async fn prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>> {
        let (_ticket, r) = self.enter()?;
        r.client.barrier().await?;
        r.storage.prefix(prefix, None)
    }

    /// [`prefix`](Self::prefix) at `revision`, from the local copy.
    pub fn prefix_at(&self, prefix: &[u8], revision: u64) -> Result<Vec<Entry>> {
        let (_ticket, r) = self.enter()?;
        r.storage.prefix(prefix, Some(revision))
    }

    /// Waits until this node applied every write acknowledged before the call and returns
    /// the local revision then: reads at it are linearizable.
    pub async fn linearizable_revision(&self) -> Result<u64> {
        let (_ticket, r) = self.enter()?;
        r.client.barrier().await?;
        Ok(r.storage.revision())
    }

    // ----- writes -----

    async fn write(&self, op: CommandOp) -> Result<crate::command::Outcome> {
        let (_ticket, r) = self.enter()?;
        r.client.write(op).await
    }

    /// Sets `key` to `value`; returns the revision.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64> {
        Ok(self.write(CommandOp::put(key, value)).await?.revision)
    }

    /// Sets every key to its value in one revision; returns it.
    pub async fn put_all(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<u64> {
        Ok(self.write(CommandOp::put_all(entries)).await?.revision)
    }

    /// Removes `key`; returns the revision (unchanged if it had no live value).
    pub async fn remove(&self, key: impl Into<Vec<u8>>) -> Result<u64> {
        Ok(self.write(CommandOp::remove(key)).await?.revision)
    }

    /// Removes every key in one revision; returns it.
    pub async fn remove_all(&self, keys: Vec<Vec<u8>>) -> Result<u64> {
        Ok(self.write(CommandOp::remove_all(keys)).await?.revision)
    }

    /// Applies `success` if `condition` holds on the latest state, else `failure`; returns
    /// whether it held.
    pub async fn invoke(
        &self,
        condition: Condition,
        success: Vec<Operation>,
        failure: Vec<Operation>,
    ) -> Result<bool> {
        Ok(self
            .write(CommandOp::invoke(condition, success, failure))
            .await?
            .succeeded)
    }

    /// Compacts history up to `revision` on every node; reads below it then fail with
    /// [`Error::Compacted`]. Refuses a revision above the current one.
    pub async fn compact(&self, revision: u64) -> Result<()> {
        let current = self.linearizable_revision().await?;
        if revision > current {
            return Err(Error::RevisionAhead {
                requested: revision,
                current,
            });
        }
        self.write(CommandOp::Compact { revision }).await.map(drop)
    }

    // ----- start -----

    async fn open_storage(&self) -> Result<Arc<dyn KeyValueStorage>> {
        match self.vault.data_dir() {
            Some(dir) => {
                let path = dir.join(STORAGE_DIR);
                let storage = tokio::task::spawn_blocking(move || SledKeyValueStorage::open(path))
                    .await
                    .map_err(|e| Error::Corrupt {
                        path: dir.join(STORAGE_DIR),
                        reason: format!("opening task failed: {e}"),
                    })??;
                Ok(Arc::new(storage))
            }
            None => {
                let mut memory = self.memory_storage.lock();
                let storage = memory
                    .get_or_insert_with(|| Arc::new(MemoryKeyValueStorage::new()) as _)
                    .clone();
                Ok(storage)
            }
        }
    }

    async fn start_inner(&self, ctx: &StartContext) -> Result<()> {
        let _serial = self.lifecycle.lock().await;
        if self.running.read().is_some() {
            return Ok(());
        }
        if let Err(reason) = &self.registration {
            return Err(Error::Config(format!(
                "registering the cluster message handler: {reason}"
            )));
        }
        let lifecycle::Run { guard, cancel } = self.runtime.begin();
        let config = self.configuration()?;
        let state = self.cluster.load().await?.ok_or(Error::NotInitialized)?;
        let topology = self.network.topology();
        let local = topology
            .try_local_member()
            .ok_or_else(|| Error::NotStarted {
                node: "(network not started)".into(),
            })?
            .name;
        let storage = self.open_storage().await?;
        let sm = Arc::new(MetaStateMachine::new(Arc::clone(&storage)));
        self.network.set_cluster_id(Some(state.id));
        let members = GroupMembers {
            voters: state.metastorage_voters.clone(),
            learners: Vec::new(),
        };
        let role = if members.voters.contains(&local) {
            "voter"
        } else {
            "learner"
        };
        tracing::info!(node = %local, role, cluster_id = %state.id, "joining the metastorage group");
        let group = self
            .raft
            .start_group(
                METASTORAGE_GROUP,
                Arc::new(RaftStateMachine(Arc::clone(&sm))),
                members,
            )
            .await?;
        let client = Client::new(group.clone(), config.operation_timeout(), guard.clone());
        if let Some(listen) = &config.etcd_listen {
            let served = self
                .etcd
                .serve(
                    listen,
                    &local,
                    self.runtime.tasks(),
                    &ctx.faults,
                    cancel.clone(),
                )
                .await;
            if let Err(e) = served {
                if let Err(e) = self.raft.stop_group(METASTORAGE_GROUP).await {
                    tracing::debug!(error = %e, "stopping the metastorage group after a failed start");
                }
                return Err(e);
            }
        }

        // Pushing the state to newcomers and adding learners must work while this node
        // recovers: another node's recovery may wait for it.
        spawn_supervised(
            self.runtime.tasks(),
            &ctx.faults,
            NAME,
            "membership",
            membership_task(
                self.network.clone(),
                group.clone(),
                state.clone(),
                config.clone(),
                cancel.clone(),
            ),
        );

        let recovery = async {
            let timeout = config.recovery_timeout();
            guard.wrap(group.wait_for_leader(timeout)).await??;
            let recovery_client = Client::new(group.clone(), timeout, guard.clone());
            recovery_client.barrier().await
        };
        if let Err(e) = recovery.await {
            tracing::warn!(node = %local, error = %e, "metastorage recovery failed");
            cancel.cancel();
            self.runtime.tasks().close();
            self.runtime.tasks().wait().await;
            if let Err(e) = self.raft.stop_group(METASTORAGE_GROUP).await {
                tracing::debug!(error = %e, "stopping the metastorage group after a failed start");
            }
            return Err(e);
        }
        let caught_up = storage.revision();
        let recovery_revision = match self.vault.get(WATCH_REVISION_KEY).await? {
            Some(bytes) => match <[u8; 8]>::try_from(bytes.as_slice()) {
                Ok(b) => u64::from_be_bytes(b).min(caught_up),
                Err(_) => {
                    tracing::warn!(
                        len = bytes.len(),
                        "stored watch revision is malformed, resuming at the caught-up revision"
                    );
                    caught_up
                }
            },
            None => caught_up,
        };
        tracing::info!(node = %local, recovery_revision, caught_up, "metastorage recovered");

        let processor = Arc::new(WatchProcessor::new(Arc::clone(&storage)));
        let running = Arc::new(Running {
            local,
            state,
            storage,
            sm,
            client,
            processor,
            recovery_revision,
            faults: ctx.faults.clone(),
            config: config.clone(),
        });
        if config.compaction_retention_revisions > 0 {
            spawn_supervised(
                self.runtime.tasks(),
                &ctx.faults,
                NAME,
                "compaction",
                compaction_task(Arc::clone(&running), cancel.clone()),
            );
        }
        self.etcd.attach(Attached {
            local: running.local.clone(),
            state: running.state.clone(),
            storage: Arc::clone(&running.storage),
            revisions: running.sm.subscribe_revisions(),
            client: Client::new(group, config.operation_timeout(), guard.clone()),
            guard,
            stopping: cancel.child_token(),
            network: Arc::clone(&self.network),
            history: Default::default(),
            data_dir: self.vault.data_dir().map(|d| d.join(STORAGE_DIR)),
        });
        *self.running.write() = Some(running);
        Ok(())
    }

    async fn stop_inner(&self) -> Result<()> {
        // Blocked before taking the lifecycle lock: a start waiting in recovery gives up at
        // once and unwinds instead of keeping stop waiting. etcd watch streams end first.
        self.etcd.detach();
        self.runtime.block().await;
        let _serial = self.lifecycle.lock().await;
        self.runtime.block().await;
        self.runtime.shutdown().await;
        self.etcd.stopped();
        // a start that finished while this stop waited for the lifecycle lock attached again
        self.etcd.detach();
        let running = self.running.write().take();
        let deployed = self.watches.lock().deployed.take().is_some();
        let Some(running) = running else {
            return Ok(());
        };
        running.processor.stop().await;
        if deployed {
            let delivered = running.processor.status().delivered;
            if let Err(e) = self
                .vault
                .put(WATCH_REVISION_KEY, delivered.to_be_bytes().to_vec())
                .await
            {
                tracing::warn!(error = %e, "could not record the watch revision at stop");
            }
        }
        match self.raft.stop_group(METASTORAGE_GROUP).await {
            Ok(()) | Err(raft::Error::GroupNotFound(_)) => {}
            Err(e) => tracing::warn!(error = %e, "stopping the metastorage group"),
        }
        let storage = Arc::clone(&running.storage);
        drop(running);
        tokio::task::spawn_blocking(move || storage.flush())
            .await
            .map_err(|e| Error::Rejected(format!("flush task failed: {e}")))??;
        tracing::info!("metastorage stopped");
        Ok(())
    }

    /// The cluster state this component runs with (`None` before start).
    pub fn running_cluster_state(&self) -> Option<ClusterState> {
        self.running.read().as_ref().map(|r| r.state.clone())
    }

    /// Where the etcd v3 endpoint listens (`metastorage.etcd_listen`, the port bound when
    /// it was 0); `None` when it is not served.
    pub fn etcd_address(&self) -> Option<SocketAddr> {
        self.etcd.address()
    }

    /// Serves the etcd endpoint before [`start`](Component::start) (a node waiting for
    /// cluster init), so clients get `UNAVAILABLE` "cluster is not initialized" instead of a
    /// refused connection. `start` serves it anyway; `stop` ends it, also when `start`
    /// never ran (so a node that called this must stop the component even if it stays a
    /// zombie). Returns the bound address, `None` when `etcd_listen` is not set.
    pub async fn serve_etcd(&self, ctx: &StartContext) -> Result<Option<SocketAddr>> {
        let _serial = self.lifecycle.lock().await;
        let Some(listen) = self.configuration()?.etcd_listen else {
            return Ok(None);
        };
        let lifecycle::Run { cancel, .. } = self.runtime.begin();
        let node = self
            .network
            .topology()
            .try_local_member()
            .map(|m| m.name)
            .unwrap_or_default();
        self.etcd
            .serve(&listen, &node, self.runtime.tasks(), &ctx.faults, cancel)
            .await
            .map(Some)
    }

    /// This node's name while started.
    pub fn local_name(&self) -> Option<String> {
        self.running.read().as_ref().map(|r| r.local.clone())
    }
}

/// The longest time a delivered revision waits for its record while running: the
/// revisions delivered meanwhile go into one record, so a busy node costs the vault one
/// durable write a second, not one per revision (each is a sled flush whose `fsync` queues
/// on the disk beside the Raft log's).
const WATCH_REVISION_RECORD_GAP: Duration = Duration::from_secs(1);
/// Delivery this many revisions ahead of the record is recorded before the gap is over: it
/// bounds what a restart after a crash delivers again.
const WATCH_REVISION_RECORD_LAG: u64 = 10_000;

/// Follows the watch delivery and records the delivered revision in the vault, so a
/// restart resumes right after it. A record follows a delivery within
/// [`WATCH_REVISION_RECORD_GAP`] (sooner once [`WATCH_REVISION_RECORD_LAG`] revisions were
/// delivered) and one vault write; stop records the final revision. After a crash a
/// restart may deliver the revisions of that lag again: its components rebuild their state
/// at the recorded revision, so they see each change once relative to it.
async fn persist_watch_revision(
    vault: Arc<VaultManager>,
    processor: Arc<WatchProcessor>,
    from: u64,
    cancel: CancellationToken,
) -> Result<()> {
    let mut written = from;
    let mut recorded = Instant::now();
    loop {
        // something new delivered, then more gathers until the gap or the lag is reached
        let waits = [
            (written + 1, Duration::from_secs(3600)),
            (
                written.saturating_add(WATCH_REVISION_RECORD_LAG),
                (recorded + WATCH_REVISION_RECORD_GAP).saturating_duration_since(Instant::now()),
            ),
        ];
        for (revision, timeout) in waits {
            let outcome = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                r = processor.wait_delivered(revision, timeout) => r,
            };
            match outcome {
                // a timeout ends the gap (or, for the first wait, just goes round again)
                Ok(()) | Err(Error::RevisionAhead { .. }) => {}
                Err(Error::Stopping(_)) => return Ok(()),
                // a failed delivery is reported by the watch task itself
                Err(Error::DeliveryFailed { .. }) => {
                    cancel.cancelled().await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let delivered = processor.status().delivered;
        if delivered > written {
            match vault
                .put(WATCH_REVISION_KEY, delivered.to_be_bytes().to_vec())
                .await
            {
                Ok(()) => written = delivered,
                Err(vault::Error::Stopping(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            recorded = Instant::now();
        }
    }
}

/// Tells a node the cluster state; a node that holds another one is logged.
async fn push_state(
    network: &NetworkManager,
    node: &ClusterNode,
    state: &ClusterState,
    timeout: Duration,
) {
    let reply = network
        .messaging()
        .invoke::<_, Option<ClusterState>>(node, ClusterMessage::Init(state.clone()), timeout)
        .await;
    match reply {
        Ok(Some(held)) if held.id == state.id => {
            tracing::debug!(node = %node.name, "node holds the cluster state")
        }
        Ok(held) => {
            tracing::warn!(node = %node.name, held = ?held, cluster_id = %state.id, "node holds another cluster state")
        }
        Err(e) => {
            tracing::debug!(node = %node.name, error = %e, "could not send the cluster state")
        }
    }
}

/// Adds every topology member that is not in the group as a learner (on the leader).
async fn add_missing_learners(network: &NetworkManager, group: &RaftGroup) {
    if !group.is_leader() {
        return;
    }
    let metrics = group.metrics();
    let known: BTreeSet<String> = metrics.voters.into_iter().chain(metrics.learners).collect();
    for member in network.topology().members() {
        if known.contains(&member.name) {
            continue;
        }
        match group.add_learner(&member.name).await {
            Ok(()) => tracing::info!(node = %member.name, "added metastorage learner"),
            Err(e) => {
                tracing::info!(node = %member.name, error = %e, "adding metastorage learner did not complete")
            }
        }
    }
}

/// Sends the cluster state to every member (now and when one appears) and, on the leader,
/// adds members that are not in the group as learners.
async fn membership_task(
    network: Arc<NetworkManager>,
    group: RaftGroup,
    state: ClusterState,
    config: MetaStorageConfiguration,
    cancel: CancellationToken,
) -> std::result::Result<(), BoxError> {
    let topology = network.topology();
    let mut events = topology.subscribe();
    let local = topology.try_local_member();
    let timeout = config.init_timeout();
    for member in topology.members() {
        if local.as_ref().is_some_and(|l| l.id == member.id) {
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = push_state(&network, &member, &state, timeout) => {}
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(config.learner_check_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = add_missing_learners(&network, &group) => {}
                }
            }
            event = events.recv() => match event {
                Ok(TopologyEvent::Appeared(node)) => {
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        () = async {
                            push_state(&network, &node, &state, timeout).await;
                            add_missing_learners(&network, &group).await;
                        } => {}
                    }
                }
                Ok(TopologyEvent::Disappeared(_)) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Ok(()),
            },
        }
    }
}

/// On the leader: compacts below `revision - retention`, never past what this node's
/// watches delivered (nor, before deploy, past the recovery revision).
async fn compaction_task(
    running: Arc<Running>,
    cancel: CancellationToken,
) -> std::result::Result<(), BoxError> {
    let retention = running.config.compaction_retention_revisions;
    let mut tick =
        tokio::time::interval(Duration::from_millis(running.config.compaction_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if !running.client.group().is_leader() {
            continue;
        }
        let revision = running.storage.revision();
        let delivered = running
            .processor
            .status()
            .delivered
            .max(running.recovery_revision);
        let target = revision.saturating_sub(retention).min(delivered);
        if target <= running.storage.compacted_revision() {
            continue;
        }
        let outcome = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = running.client.write(CommandOp::Compact { revision: target }) => r,
        };
        match outcome {
            Ok(_) => tracing::info!(revision = target, retention, "metastorage compacted"),
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %e, "metastorage compaction deferred")
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[async_trait]
impl Component for MetaStorageManager {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, ctx: &StartContext) -> std::result::Result<(), BoxError> {
        self.start_inner(ctx).await.map_err(Into::into)
    }

    async fn stop(&self) -> std::result::Result<(), BoxError> {
        self.stop_inner().await.map_err(Into::into)
    }
}
