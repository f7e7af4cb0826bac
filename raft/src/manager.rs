//! [`RaftManager`]: the `raft` component. Starts and stops the Raft groups of this node and
//! serves the raft message group for all of them.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use configuration::ConfigurationManager;
use lifecycle::{spawn_supervised, BoxError, Component, FaultReporter, StartContext, StopGuard};
use network::NetworkManager;
use openraft::{
    error::{InitializeError, RaftError},
    ChangeMembers, ServerState,
};
use parking_lot::{Mutex, RwLock};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use vault::VaultManager;

use crate::{
    batch,
    config::{GroupClass, RaftConfiguration},
    error::{Error, Result},
    failover, forward,
    group::{to_rejection, GroupGauges, GroupInner, GroupMetrics, RaftGroup, Role},
    log_store::LogStore,
    rpc::{NetworkFactory, RaftMessage, RaftReply, RaftRequest},
    state_machine::{StateMachine, StateMachineStore},
    storage::{LogStorage, LogStorageProvider, MemoryLogProvider, SledLogProvider},
    types::{basic_node, node_id, GroupMembers, LogId, Raft},
    wal::WalLogProvider,
};

const NAME: &str = "raft";

enum ConfigSource {
    Manager(Arc<ConfigurationManager>),
    Fixed(RaftConfiguration),
}

struct Entry {
    group: RaftGroup,
    cancel: CancellationToken,
}

struct Shared {
    groups: RwLock<HashMap<String, Entry>>,
    guard: StopGuard,
    /// Bumped whenever a group on this node starts or changes its role, leader or
    /// membership: components that act on roles wait on it instead of polling every group.
    role_changes: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    async fn handle(&self, msg: RaftMessage) -> std::result::Result<RaftReply, String> {
        if self.guard.is_blocked() {
            return Err(self.guard.error().to_string());
        }
        let group = self.groups.read().get(&msg.group).map(|e| e.group.clone());
        let Some(group) = group else {
            return Ok(RaftReply::NoGroup);
        };
        let raft = &group.inner.raft;
        let stopping = |e: lifecycle::Stopping| e.to_string();
        Ok(match msg.request {
            RaftRequest::AppendEntries(rpc) => RaftReply::AppendEntries(
                self.guard
                    .wrap(raft.append_entries(rpc))
                    .await
                    .map_err(stopping)?,
            ),
            RaftRequest::Vote(rpc) => {
                RaftReply::Vote(self.guard.wrap(raft.vote(rpc)).await.map_err(stopping)?)
            }
            RaftRequest::InstallSnapshot(rpc) => RaftReply::InstallSnapshot(
                self.guard
                    .wrap(raft.install_snapshot(rpc))
                    .await
                    .map_err(stopping)?,
            ),
            RaftRequest::Write(command) => RaftReply::Write(
                group
                    .local_write(command)
                    .await
                    .map_err(|e| to_rejection(&e)),
            ),
            RaftRequest::ReadIndex => {
                RaftReply::ReadIndex(group.local_read_index().await.map_err(|e| to_rejection(&e)))
            }
            RaftRequest::WriteBatch(commands) => {
                // every write enters the write path on its first poll, in order
                let writes = commands.into_iter().map(|c| group.local_write(c));
                let results = futures::future::join_all(writes).await;
                RaftReply::WriteBatch(Ok(results
                    .into_iter()
                    .map(|r| r.map_err(|e| to_rejection(&e)))
                    .collect()))
            }
        })
    }
}

struct Running {
    local: String,
    storage: Arc<dyn LogStorageProvider>,
    faults: FaultReporter,
}

/// Runs this node's Raft groups over the node's network connections.
///
/// Construction registers the raft message handler (so it must happen before the network
/// component starts) and does no I/O. `start` opens the log storage: the given provider, or
/// sled at `<vault data dir>/raft`, or memory for an in-memory vault. `stop` shuts every
/// group down, awaits their tasks and flushes and closes the storage.
pub struct RaftManager {
    network: Arc<NetworkManager>,
    vault: Arc<VaultManager>,
    config: ConfigSource,
    storage: Mutex<Option<Arc<dyn LogStorageProvider>>>,
    shared: Arc<Shared>,
    running: RwLock<Option<Running>>,
    /// Serializes starting and stopping groups.
    groups_lock: tokio::sync::Mutex<()>,
    registration: std::result::Result<(), String>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    stopped: AtomicBool,
}

impl RaftManager {
    /// A manager reading the `raft` root of `config` (which must be registered there).
    pub fn new(
        network: Arc<NetworkManager>,
        vault: Arc<VaultManager>,
        config: Arc<ConfigurationManager>,
    ) -> Self {
        Self::build(network, vault, ConfigSource::Manager(config))
    }

    /// A manager with a fixed configuration (embedding, tests).
    pub fn with_config(
        network: Arc<NetworkManager>,
        vault: Arc<VaultManager>,
        config: RaftConfiguration,
    ) -> Self {
        Self::build(network, vault, ConfigSource::Fixed(config))
    }

    /// Uses `storage` for the logs instead of the vault's data directory.
    pub fn with_storage(self, storage: Arc<dyn LogStorageProvider>) -> Self {
        *self.storage.lock() = Some(storage);
        self
    }

    fn build(network: Arc<NetworkManager>, vault: Arc<VaultManager>, config: ConfigSource) -> Self {
        let shared = Arc::new(Shared {
            groups: RwLock::new(HashMap::new()),
            guard: StopGuard::for_component(NAME),
            role_changes: tokio::sync::watch::Sender::new(0),
        });
        let handler_shared = Arc::clone(&shared);
        let registration = network
            .messaging()
            .register_handler::<RaftMessage, RaftReply, _, _>(move |_from, msg| {
                let shared = Arc::clone(&handler_shared);
                async move { shared.handle(msg).await }
            })
            .map_err(|e| e.to_string());
        Self {
            network,
            vault,
            config,
            storage: Mutex::new(None),
            shared,
            running: RwLock::new(None),
            groups_lock: tokio::sync::Mutex::new(()),
            registration,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            stopped: AtomicBool::new(false),
        }
    }

    /// The current `raft` configuration.
    pub fn configuration(&self) -> Result<RaftConfiguration> {
        match &self.config {
            ConfigSource::Fixed(c) => Ok(c.clone()),
            ConfigSource::Manager(m) => m
                .root::<RaftConfiguration>()
                .map_err(|e| Error::Config(e.to_string())),
        }
    }

    /// This node's name, once started.
    pub fn local_name(&self) -> Option<String> {
        self.running.read().as_ref().map(|r| r.local.clone())
    }

    /// The group `group_id`, if it runs on this node.
    pub fn group(&self, group_id: &str) -> Option<RaftGroup> {
        self.shared
            .groups
            .read()
            .get(group_id)
            .map(|e| e.group.clone())
    }

    /// A receiver that sees a change whenever a group on this node starts or changes its
    /// role, its leader or its membership (not on log progress). Changes that come together
    /// are seen as one.
    pub fn role_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.role_changes.subscribe()
    }

    /// Ids of the groups running on this node, sorted.
    pub fn groups(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.shared.groups.read().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Starts group `group_id` on this node with `state_machine`.
    ///
    /// `members` is the group's initial membership: one voter ([`initiator`], picked by the
    /// group id, so the groups of a node set spread their first leaders over it) initializes
    /// an empty group with the voters at once, every other voter whose log is still empty an
    /// election timeout later (so the group forms without that voter too), and the first
    /// leader adds the learners. A restarted node recovers its log, vote and membership from
    /// storage and ignores `members`. A node in neither list waits to be added.
    pub async fn start_group(
        &self,
        group_id: &str,
        state_machine: Arc<dyn StateMachine>,
        members: GroupMembers,
    ) -> Result<RaftGroup> {
        self.start_group_as(GroupClass::System, group_id, state_machine, members)
            .await
    }

    /// [`start_group`](Self::start_group) for a data group (a table partition): the same,
    /// timed by the `raft.data_*` settings (fewer heartbeats, slower failover).
    pub async fn start_data_group(
        &self,
        group_id: &str,
        state_machine: Arc<dyn StateMachine>,
        members: GroupMembers,
    ) -> Result<RaftGroup> {
        self.start_group_as(GroupClass::Data, group_id, state_machine, members)
            .await
    }

    async fn start_group_as(
        &self,
        class: GroupClass,
        group_id: &str,
        state_machine: Arc<dyn StateMachine>,
        members: GroupMembers,
    ) -> Result<RaftGroup> {
        let _ticket = self.shared.guard.enter()?;
        let _serial = self.groups_lock.lock().await;
        if self.shared.groups.read().contains_key(group_id) {
            return Err(Error::GroupExists(group_id.to_owned()));
        }
        let (local, storage, faults) = {
            let running = self.running.read();
            let Some(r) = running.as_ref() else {
                return Err(Error::InvalidState("not started"));
            };
            (r.local.clone(), Arc::clone(&r.storage), r.faults.clone())
        };
        check_ids(group_id, &members, &local)?;
        let config = self.configuration()?;
        let raft_config = Arc::new(config.to_openraft(group_id, class)?);
        let log = storage.group(group_id)?;
        // the leader's appends are replicated while they are flushed; applies and commit
        // indexes sent out wait for the local flush (see `log_store::Durability`)
        let log_store =
            LogStore::new(Arc::clone(&log), Some(node_id(&local))).map_err(|e| Error::Fatal {
                group: group_id.to_owned(),
                reason: format!("reading the raft log: {e}"),
            })?;
        let durability = log_store.durability();
        let factory = NetworkFactory {
            group: group_id.to_owned(),
            messaging: self.network.messaging(),
            topology: self.network.topology(),
            durability: Arc::clone(&durability),
        };
        let batching = state_machine.batching();
        let sm =
            StateMachineStore::new(group_id, state_machine, Arc::clone(&log), Some(durability));
        let raft = Raft::new(node_id(&local), raft_config, factory, log_store, sm)
            .await
            .map_err(|e| Error::Fatal {
                group: group_id.to_owned(),
                reason: e.to_string(),
            })?;
        let (batch_tx, batch_rx) = if batching {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let (forward_tx, forward_rx) = tokio::sync::mpsc::unbounded_channel();
        let group = RaftGroup {
            inner: Arc::new(GroupInner {
                id: group_id.to_owned(),
                local: local.clone(),
                raft: raft.clone(),
                config,
                class,
                messaging: self.network.messaging(),
                topology: self.network.topology(),
                guard: self.shared.guard.clone(),
                batcher: batch_tx,
                forwarder: forward_tx,
            }),
        };
        // One voter (picked by the group id) initializes the group at once and wins the first
        // election unopposed; the others initialize only if no leader reached them within an
        // election timeout (the first voter may be down). When every voter initialized at
        // once, all stood in term 1, split the vote and waited out an election timeout.
        let initiator = initiator(group_id, &members.voters) == Some(local.as_str());
        let voter = members.voters.contains(&local);
        let mut initialized_here = false;
        if voter
            && !raft.is_initialized().await.map_err(|e| Error::Fatal {
                group: group_id.to_owned(),
                reason: e.to_string(),
            })?
            && initiator
        {
            if let Err(e) = initialize(&raft, group_id, &local, &members.voters).await {
                let _ = raft.shutdown().await;
                return Err(e);
            }
            initialized_here = true;
        }
        // the group's token: stopping the group ends its tasks, these included
        let cancel = self.cancel.child_token();
        if initialized_here {
            // the first election fails while the other voters do not run the group yet:
            // stand again soon rather than an election timeout later
            let (group, cancel) = (group.clone(), cancel.clone());
            self.tracker
                .spawn(async move { failover::campaign(&group, None, &cancel).await });
        }
        if voter && !initiator {
            let (_, max_ms, _) = group.inner.config.timing(class);
            let (group, raft, id, local, voters, cancel) = (
                group.clone(),
                raft.clone(),
                group_id.to_owned(),
                local.clone(),
                members.voters.clone(),
                cancel.clone(),
            );
            self.tracker.spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_millis(max_ms)) => {}
                }
                if matches!(raft.is_initialized().await, Ok(false)) {
                    match initialize(&raft, &id, &local, &voters).await {
                        Ok(()) => failover::campaign(&group, None, &cancel).await,
                        Err(e) => {
                            tracing::warn!(group_id = %id, node = %local, error = %e, "initializing the group failed");
                        }
                    }
                }
            });
        }
        spawn_supervised(
            &self.tracker,
            &faults,
            NAME,
            &format!("group {group_id} forwarded writes"),
            forward::run(
                forward::Route {
                    group: Arc::from(group_id),
                    messaging: self.network.messaging(),
                    topology: self.network.topology(),
                },
                forward_rx,
                cancel.clone(),
            ),
        );
        if let Some(rx) = batch_rx {
            spawn_supervised(
                &self.tracker,
                &faults,
                NAME,
                &format!("group {group_id} write batches"),
                batch::run(Arc::from(group_id), raft.clone(), rx, cancel.clone()),
            );
        }
        spawn_supervised(
            &self.tracker,
            &faults,
            NAME,
            &format!("group {group_id} metrics"),
            watch_group(
                group.clone(),
                members.learners.clone(),
                Arc::clone(&self.shared),
                log,
                cancel.clone(),
            ),
        );
        self.shared.groups.write().insert(
            group_id.to_owned(),
            Entry {
                group: group.clone(),
                cancel,
            },
        );
        tracing::info!(group_id, node = %local, "raft group started");
        Ok(group)
    }

    /// Stops group `group_id` on this node; its log stays in storage for a later start.
    pub async fn stop_group(&self, group_id: &str) -> Result<()> {
        let _serial = self.groups_lock.lock().await;
        let entry = self.shared.groups.write().remove(group_id);
        let Some(entry) = entry else {
            return Err(Error::GroupNotFound(group_id.to_owned()));
        };
        shutdown_group(entry).await;
        Ok(())
    }

    /// Stops group `group_id` if it runs here and deletes its log, vote and metadata for
    /// good: a later start of the group on this node begins empty (a replica moved away and
    /// back must not keep a log its state machine no longer matches). Idempotent.
    pub async fn destroy_group(&self, group_id: &str) -> Result<()> {
        let _serial = self.groups_lock.lock().await;
        let entry = self.shared.groups.write().remove(group_id);
        if let Some(entry) = entry {
            shutdown_group(entry).await;
        }
        let storage = self.choose_storage();
        let id = group_id.to_owned();
        tokio::task::spawn_blocking(move || storage.destroy_group(&id))
            .await
            .map_err(|e| Error::storage(format!("group {group_id}"), e))?
    }

    fn choose_storage(&self) -> Arc<dyn LogStorageProvider> {
        if let Some(storage) = self.storage.lock().as_ref() {
            return Arc::clone(storage);
        }
        let chosen: Arc<dyn LogStorageProvider> = match self.vault.data_dir() {
            Some(dir) => disk_storage(dir),
            None => Arc::new(MemoryLogProvider::new()),
        };
        *self.storage.lock() = Some(Arc::clone(&chosen));
        chosen
    }
}

/// The write-ahead log at `<data_dir>/raft-log`; a data directory whose logs a sled
/// database at `<data_dir>/raft` holds (written before the write-ahead log) keeps it.
fn disk_storage(dir: &std::path::Path) -> Arc<dyn LogStorageProvider> {
    let (wal, sled) = (dir.join(WAL_DIR), dir.join(SLED_DIR));
    if sled.exists() && !wal.exists() {
        tracing::info!(path = %sled.display(), "raft logs stay in their sled database");
        Arc::new(SledLogProvider::new(sled))
    } else {
        Arc::new(WalLogProvider::new(wal).with_snapshot_dir(dir.join(SNAPSHOT_DIR)))
    }
}

/// The voter of a new group `group_id` that initializes it at once (see
/// [`RaftManager::start_group`]): a hash of the group id picks one of the voters in name
/// order, the same on every node. `None` without voters.
pub fn initiator<'a>(group_id: &str, voters: &'a [String]) -> Option<&'a str> {
    let mut sorted: Vec<&'a String> = voters.iter().collect();
    sorted.sort();
    sorted.dedup();
    let n = u64::try_from(sorted.len()).ok().filter(|n| *n > 0)?;
    let pick = usize::try_from(node_id(group_id) % n).ok()?;
    sorted.get(pick).map(|s| s.as_str())
}

/// Initializes `raft` with `voters`; a log that another voter's leader reached first is fine.
async fn initialize(raft: &Raft, group_id: &str, local: &str, voters: &[String]) -> Result<()> {
    let members: BTreeMap<u64, openraft::BasicNode> =
        voters.iter().map(|n| (node_id(n), basic_node(n))).collect();
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(group_id, node = %local, ?voters, "initialized raft group");
            Ok(())
        }
        // another voter's log reached us first: it is initialized
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(Error::Rejected {
            group: group_id.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Where the write-ahead log of the node's raft groups lives in the data directory.
const WAL_DIR: &str = "raft-log";
/// Where the groups' latest snapshots are kept between starts.
const SNAPSHOT_DIR: &str = "raft-snapshots";
/// Where raft logs lived in sled before the write-ahead log.
const SLED_DIR: &str = "raft";

fn check_ids(group_id: &str, members: &GroupMembers, local: &str) -> Result<()> {
    let mut seen: HashMap<u64, &str> = HashMap::new();
    for name in members
        .all()
        .map(String::as_str)
        .chain(std::iter::once(local))
    {
        if let Some(other) = seen.insert(node_id(name), name) {
            if other != name {
                return Err(Error::Rejected {
                    group: group_id.to_owned(),
                    reason: format!("node names {other} and {name} map to the same raft node id"),
                });
            }
        }
    }
    Ok(())
}

async fn shutdown_group(entry: Entry) {
    entry.cancel.cancel();
    let id = entry.group.inner.id.clone();
    if let Err(e) = entry.group.inner.raft.shutdown().await {
        tracing::warn!(group_id = %id, error = %e, "raft group did not shut down cleanly");
    }
    tracing::info!(group_id = %id, "raft group stopped");
}

/// Whether the entries `log` holds in memory pass `raft.snapshot_log_bytes` and a snapshot
/// at the applied index would let the log purge some of them.
fn too_large(group: &RaftGroup, metrics: &GroupMetrics, log: &dyn LogStorage) -> bool {
    let config = &group.inner.config;
    let Some(bytes) = log.memory_bytes() else {
        return false;
    };
    let applied = metrics.last_applied.map_or(0, |p| p.index);
    let snapshot = metrics.snapshot.map_or(0, |p| p.index);
    bytes > config.snapshot_log_bytes
        && applied.saturating_sub(snapshot) > config.max_in_snapshot_log_to_keep
}

/// The parts of openraft's metrics that [`GroupMetrics`] is built from.
struct Seen {
    state: ServerState,
    term: u64,
    leader: Option<u64>,
    last_log_index: Option<u64>,
    applied: Option<LogId>,
    snapshot: Option<LogId>,
    purged: Option<LogId>,
    membership: Option<LogId>,
    replication: Option<BTreeMap<u64, Option<LogId>>>,
}

impl Seen {
    fn of(m: &openraft::RaftMetrics<u64, openraft::BasicNode>) -> Self {
        Self {
            state: m.state,
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied: m.last_applied,
            snapshot: m.snapshot,
            purged: m.purged,
            membership: m.membership_config.log_id().as_ref().copied(),
            replication: m.replication.clone(),
        }
    }

    /// Whether `m` has the same values, without allocating.
    fn matches(&self, m: &openraft::RaftMetrics<u64, openraft::BasicNode>) -> bool {
        self.state == m.state
            && self.term == m.current_term
            && self.leader == m.current_leader
            && self.last_log_index == m.last_log_index
            && self.applied == m.last_applied
            && self.snapshot == m.snapshot
            && self.purged == m.purged
            && self.membership.as_ref() == m.membership_config.log_id().as_ref()
            && self.replication == m.replication
    }
}

/// How often at most [`watch_group`] looks at a group's metrics while they keep changing
/// (under writes they change with every entry): a change that comes sooner after the last
/// look waits for the rest of this interval, so a busy group is looked at about 50 times a
/// second, not once per entry, and an idle one at once.
const METRICS_LOOK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Publishes a group's metrics and, on the first leader of a fresh group, adds the initial
/// learners (in one membership change).
async fn watch_group(
    group: RaftGroup,
    learners: Vec<String>,
    shared: Arc<Shared>,
    log: Arc<dyn LogStorage>,
    cancel: CancellationToken,
) -> std::result::Result<(), BoxError> {
    let mut rx = group.inner.raft.metrics();
    let mut learners_pending = !learners.is_empty();
    let mut last: Option<GroupMetrics> = None;
    let mut gauges = GroupGauges::new(&group.inner.id);
    let mut seen: Option<Seen> = None;
    // the snapshot index at which a snapshot for the log's size was last asked for
    let mut asked_at: Option<Option<u64>> = None;
    let mut looked: Option<tokio::time::Instant> = None;
    loop {
        if let Some(wait) = looked.and_then(|at| METRICS_LOOK_INTERVAL.checked_sub(at.elapsed())) {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
        looked = Some(tokio::time::Instant::now());
        let built = {
            let m = rx.borrow_and_update();
            // openraft republishes its metrics on every heartbeat round (the time since the
            // last quorum ack moves): compare what ours are built from before building them
            if seen.as_ref().is_some_and(|s| s.matches(&m)) {
                None
            } else {
                seen = Some(Seen::of(&m));
                Some((
                    GroupMetrics::from_raft(&group.inner.id, &group.inner.local, &m),
                    m.membership_config.log_id().map(|l| l.index),
                    m.state,
                ))
            }
        };
        let Some((metrics, membership_index, state)) = built else {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                changed = rx.changed() => if changed.is_err() { return Ok(()) },
            }
            continue;
        };
        let snapshot_index = metrics.snapshot.map(|p| p.index);
        if asked_at != Some(snapshot_index) && too_large(&group, &metrics, log.as_ref()) {
            asked_at = Some(snapshot_index);
            tracing::debug!(group_id = %group.inner.id, bytes = ?log.memory_bytes(), "log over its memory budget: snapshot");
            if let Err(e) = group.inner.raft.trigger().snapshot().await {
                tracing::warn!(group_id = %group.inner.id, error = %e, "asking for a snapshot failed");
            }
        }
        if last.as_ref() != Some(&metrics) {
            gauges.publish(&metrics);
            let role_changed = last.as_ref().is_none_or(|l| {
                (&l.role, &l.leader, &l.voters, &l.learners)
                    != (
                        &metrics.role,
                        &metrics.leader,
                        &metrics.voters,
                        &metrics.learners,
                    )
            });
            if role_changed {
                shared.role_changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            last = Some(metrics.clone());
        }
        if state == ServerState::Shutdown {
            return Ok(());
        }
        if learners_pending && metrics.role == Role::Leader {
            if membership_index == Some(0) {
                let nodes: BTreeMap<u64, openraft::BasicNode> = learners
                    .iter()
                    .map(|n| (node_id(n), basic_node(n)))
                    .collect();
                let change = group
                    .inner
                    .raft
                    .change_membership(ChangeMembers::AddNodes(nodes), true);
                let result = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    r = tokio::time::timeout(group.inner.config.write_timeout(), change) => r,
                };
                match result {
                    Ok(Ok(_)) => {
                        tracing::info!(group_id = %group.inner.id, ?learners, "added initial learners");
                        learners_pending = false;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(group_id = %group.inner.id, error = %e, "adding initial learners failed")
                    }
                    Err(_) => {
                        tracing::warn!(group_id = %group.inner.id, "adding initial learners timed out")
                    }
                }
            } else {
                // the membership changed since initialization: somebody else manages it
                learners_pending = false;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            changed = rx.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

#[async_trait]
impl Component for RaftManager {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, ctx: &StartContext) -> std::result::Result<(), BoxError> {
        if let Err(reason) = &self.registration {
            return Err(Box::new(Error::Config(format!(
                "registering the raft message handler: {reason}"
            ))));
        }
        if self.stopped.load(Ordering::SeqCst) {
            return Err(Box::new(Error::InvalidState("stopped")));
        }
        let local = self
            .network
            .topology()
            .try_local_member()
            .ok_or(Error::InvalidState("started before the network"))?
            .name;
        // validate the configuration now rather than at the first group
        self.configuration()?
            .to_openraft("check", GroupClass::System)?;
        let storage = self.choose_storage();
        let opener = Arc::clone(&storage);
        tokio::task::spawn_blocking(move || opener.open())
            .await
            .map_err(|e| Error::storage("raft log storage", e))??;
        let shared = Arc::clone(&self.shared);
        let groups: failover::Groups = Arc::new(move || {
            shared
                .groups
                .read()
                .values()
                .map(|e| e.group.clone())
                .collect()
        });
        spawn_supervised(
            &self.tracker,
            &ctx.faults,
            NAME,
            "fast failover",
            failover::run(
                self.network.messaging().connection_losses(),
                self.network.messaging(),
                groups,
                self.tracker.clone(),
                self.cancel.clone(),
            ),
        );
        *self.running.write() = Some(Running {
            local: local.clone(),
            storage,
            faults: ctx.faults.clone(),
        });
        tracing::info!(node = %local, "raft manager started");
        Ok(())
    }

    async fn stop(&self) -> std::result::Result<(), BoxError> {
        self.stopped.store(true, Ordering::SeqCst);
        self.shared.guard.block().await;
        let _serial = self.groups_lock.lock().await;
        let entries: Vec<Entry> = self.shared.groups.write().drain().map(|(_, e)| e).collect();
        for entry in entries {
            shutdown_group(entry).await;
        }
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let running = self.running.write().take();
        if let Some(running) = running {
            tokio::task::spawn_blocking(move || running.storage.close())
                .await
                .map_err(|e| Error::storage("raft log storage", e))??;
            tracing::info!(node = %running.local, "raft manager stopped");
        }
        Ok(())
    }
}

#[cfg(test)]
mod initiator_tests {
    use super::initiator;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_initiator_is_one_voter_whatever_the_order_and_groups_spread_over_voters() {
        assert_eq!(initiator("g", &[]), None);
        assert_eq!(initiator("g", &names(&["solo"])), Some("solo"));
        let abc = names(&["a", "b", "c"]);
        let cba = names(&["c", "b", "a"]);
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..3_000 {
            let group = format!("table-{i}-part-{}", i % 8);
            let pick = initiator(&group, &abc).expect("an initiator");
            assert_eq!(Some(pick), initiator(&group, &cba), "order must not matter");
            assert!(abc.iter().any(|v| v == pick));
            *counts.entry(pick.to_owned()).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        for (voter, n) in &counts {
            assert!(
                (800..=1_200).contains(n),
                "{voter} initiates {n} of 3,000 groups"
            );
        }
    }
}
