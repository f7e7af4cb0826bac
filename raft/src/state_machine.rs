//! The state-machine swap point: users (MetaStorage, table partitions) implement
//! [`StateMachine`] with plain bytes; [`StateMachineStore`] adapts it to openraft and keeps
//! the raft-only bits (the applied membership, snapshot metadata) in the group's log storage.
use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use lifecycle::BoxError;
use openraft::{
    storage::RaftStateMachine, AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot,
    StorageIOError,
};
use parking_lot::Mutex;

use crate::{
    log_store::{flush, read_meta, write_meta, Durability},
    snapshot_data::{SharedBytes, SnapshotData},
    storage::{LogStorage, MetaKey},
    types::{
        Command, Entry, LogId, LogPosition, Response, SnapshotMeta, StorageError, StoredMembership,
        TypeConfig,
    },
};

/// A replicated state machine: what a Raft group applies its committed commands to.
///
/// Every method is called from one group at a time; `apply` must be deterministic (every
/// replica reaches the same state from the same commands).
pub trait StateMachine: Send + Sync + 'static {
    /// Position of the last applied entry, persisted atomically with the state.
    fn last_applied(&self) -> Result<Option<LogPosition>, BoxError>;
    /// Apply one committed command, persisting its effect and `position` atomically.
    fn apply(&self, position: LogPosition, command: &[u8]) -> Result<Vec<u8>, BoxError>;
    /// Whether writes to the group may be batched: concurrent writes on the leader then
    /// share one log entry (one append and one fsync per replica) and are applied through
    /// [`apply_batch`](Self::apply_batch). Read once when the group starts. Default: no.
    fn batching(&self) -> bool {
        false
    }
    /// Apply the commands of one or more consecutive committed entries, in order, the last
    /// of them at `position`; one reply per command. Only a [`batching`](Self::batching)
    /// group is given several commands: the commands of one entry, or of every command
    /// entry openraft hands over together (one storage transaction for all of them).
    ///
    /// A crash part-way must not lose commands: either `position` is recorded only with the
    /// effect of the last command (so the whole entry is replayed, and replaying a command
    /// already applied changes nothing and gives its first reply), or the batch is applied
    /// atomically. The default applies each command with `position`, which is right only
    /// for a single command.
    fn apply_batch(
        &self,
        position: LogPosition,
        commands: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, BoxError> {
        commands.iter().map(|c| self.apply(position, c)).collect()
    }
    /// Whether applying `commands` now could wait on the disk (a write-behind storage whose
    /// backlog is full, or a command that rewrites much of the storage, say). When it says
    /// no, the group applies on its runtime worker instead of handing the apply to tokio's
    /// blocking pool; an apply that says no must then do memory work only (reads that may
    /// touch the disk are fine, writes that wait are not). Asked before every apply, with
    /// the commands it is about to apply. Default: yes.
    fn apply_would_wait(&self, commands: &[Vec<u8>]) -> bool {
        let _ = commands;
        true
    }
    /// An entry without a command (blank, membership) still advances `last_applied`.
    fn advance(&self, position: LogPosition) -> Result<(), BoxError>;
    /// The full state as of `last_applied`, for a snapshot.
    fn snapshot(&self) -> Result<Vec<u8>, BoxError>;
    /// Starts a snapshot of the state as of `last_applied` and returns the job that builds
    /// it. Called with applies held off, so what it does must be quick (a cut: which
    /// revision, which counters); the group runs the job on a blocking thread while it
    /// applies the entries after the cut, so the job must build the state *as of the cut*
    /// whatever is applied meanwhile, and what it covers must be durable when it returns
    /// (Raft may then purge the log behind it). Default: the whole
    /// [`snapshot`](Self::snapshot) at once, with applies held off until it is done.
    fn snapshot_job(&self) -> Result<SnapshotJob, BoxError> {
        let data = self.snapshot()?;
        Ok(Box::new(move || Ok(data)))
    }
    /// Starts making the state as of `last_applied` durable in the state machine's own
    /// storage and returns the job that finishes it, or `None` (the default) when the state
    /// machine is not durable by itself. Called with applies held off (so the start must be
    /// quick); the job runs on a blocking thread while the group applies on, and what it
    /// covers must be durable when it returns.
    ///
    /// A state machine that offers it gets *lazy* snapshots: when openraft's policy asks for
    /// a snapshot the group only makes the state durable (Raft may then purge its log
    /// behind it), and the bytes of a snapshot are built (through
    /// [`snapshot_job`](Self::snapshot_job)) only when a follower needs one.
    fn persist_job(&self) -> Result<Option<PersistJob>, BoxError> {
        Ok(None)
    }
    /// Replace the full state with a snapshot taken at `position`.
    fn restore(&self, position: LogPosition, data: &[u8]) -> Result<(), BoxError>;
}

/// What [`StateMachine::snapshot_job`] returns: builds the snapshot bytes as of its cut.
pub type SnapshotJob = Box<dyn FnOnce() -> Result<Vec<u8>, BoxError> + Send>;

/// What [`StateMachine::persist_job`] returns: makes the state as of its cut durable.
pub type PersistJob = Box<dyn FnOnce() -> Result<(), BoxError> + Send>;

struct Shared {
    group: String,
    sm: Arc<dyn StateMachine>,
    storage: Arc<dyn LogStorage>,
    /// Serializes the user state machine: a snapshot never interleaves with an apply.
    lock: Mutex<()>,
    /// The last snapshot whose bytes were built, or are being built (or were installed, or
    /// kept from the last run): one copy, shared by every follower it is sent to.
    current: Mutex<Option<(SnapshotMeta, SharedBytes)>>,
    /// The position of the snapshot kept for the next start: a build that ends after a
    /// newer one was kept does not replace it.
    kept_at: Mutex<Option<LogId>>,
    /// The last lazy snapshot (see [`StateMachine::persist_job`]): the state is durable
    /// up to it, its bytes are built when a follower needs them.
    cut: Mutex<Option<SnapshotMeta>>,
    /// Whether the snapshot the storage kept from the last run was looked at (on the first
    /// ask for the current snapshot).
    looked_for_kept: AtomicBool,
    seq: AtomicU64,
    /// [`StateMachine::batching`], read once.
    batching: bool,
    /// `ignite_raft_apply_seconds`, registered once.
    apply_seconds: metrics::Histogram,
    /// When set, an entry is applied only once the local log holds it durably (the leader
    /// reports its appends before they are flushed: see [`Durability`]).
    durability: Option<Arc<Durability>>,
}

/// openraft's view of a user [`StateMachine`]. Cheap to clone (the snapshot builder is one).
#[derive(Clone)]
pub(crate) struct StateMachineStore {
    shared: Arc<Shared>,
}

fn sm_err(group: &str, what: &str, e: &BoxError) -> AnyError {
    AnyError::error(format!("state machine of raft group {group}: {what}: {e}"))
}

impl StateMachineStore {
    pub(crate) fn new(
        group: &str,
        sm: Arc<dyn StateMachine>,
        storage: Arc<dyn LogStorage>,
        durability: Option<Arc<Durability>>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                group: group.to_owned(),
                batching: sm.batching(),
                sm,
                storage,
                lock: Mutex::new(()),
                current: Mutex::new(None),
                kept_at: Mutex::new(None),
                cut: Mutex::new(None),
                looked_for_kept: AtomicBool::new(false),
                seq: AtomicU64::new(0),
                apply_seconds: metrics::histogram!("ignite_raft_apply_seconds"),
                durability,
            }),
        }
    }

    /// The full log id of an applied position: the user state machine keeps (index, term);
    /// the leader's node id comes from the applied-id hint, the log, or the purge point.
    fn resolve(&self, pos: LogPosition) -> Result<LogId, AnyError> {
        let storage = self.shared.storage.as_ref();
        let matches = |id: &LogId| LogPosition::from(id) == pos;
        if let Some(id) = read_meta::<LogId>(storage, MetaKey::AppliedHint)? {
            if matches(&id) {
                return Ok(id);
            }
        }
        let next = pos.index.saturating_add(1);
        let raw = storage
            .range(pos.index, next)
            .map_err(|e| AnyError::new(&e))?;
        if let Some((_, bytes)) = raw.first() {
            let entry: Entry = crate::log_store::decode(bytes)?;
            if matches(&entry.log_id) {
                return Ok(entry.log_id);
            }
        }
        if let Some(id) = read_meta::<LogId>(storage, MetaKey::LastPurged)? {
            if matches(&id) {
                return Ok(id);
            }
        }
        Ok(LogId::new(
            openraft::CommittedLeaderId::new(pos.term, 0),
            pos.index,
        ))
    }

    fn applied(&self) -> Result<(Option<LogId>, StoredMembership), AnyError> {
        let shared = &self.shared;
        let last = shared
            .sm
            .last_applied()
            .map_err(|e| sm_err(&shared.group, "read last applied", &e))?;
        let last = match last {
            Some(pos) => Some(self.resolve(pos)?),
            None => None,
        };
        let membership: StoredMembership =
            read_meta(shared.storage.as_ref(), MetaKey::AppliedMembership)?.unwrap_or_default();
        Ok((last, membership))
    }

    /// Takes a cut on a blocking thread (a cut may write to the disk, and the lock may be
    /// held by one that does): the applied position, the membership and what `take` gets
    /// from the state machine, with applies held off for no longer than that.
    async fn cut<T: Send + 'static>(
        &self,
        take: impl FnOnce(&dyn StateMachine) -> Result<T, BoxError> + Send + 'static,
    ) -> Result<(SnapshotMeta, T), AnyError> {
        let store = self.clone();
        let (last, membership, taken) = tokio::task::spawn_blocking(move || {
            let shared = &store.shared;
            let _serial = shared.lock.lock();
            let (last, membership) = store.applied()?;
            let taken = take(shared.sm.as_ref())
                .map_err(|e| sm_err(&shared.group, "start snapshot", &e))?;
            Ok::<_, AnyError>((last, membership, taken))
        })
        .await
        .map_err(|e| task_failed(&self.shared.group, &e))??;
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last {
            Some(last) => format!("{}-{}-{seq}", last.leader_id.term, last.index),
            None => format!("empty-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id,
        };
        Ok((meta, taken))
    }

    /// Runs a snapshot `job` (taken at `meta`'s cut) on a blocking thread and returns its
    /// bytes as they will be: readers wait for them, nothing else does. Once built they are
    /// kept for the next start: with `keep_first`, before readers get them (a snapshot
    /// openraft purges the log behind must be on the disk first), else after.
    fn spawn_bytes(&self, meta: &SnapshotMeta, job: SnapshotJob, keep_first: bool) -> SharedBytes {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = Arc::clone(&self.shared);
        let kept = KeptMeta {
            meta: meta.clone(),
            cut: false,
        };
        tokio::task::spawn_blocking(move || match job() {
            Ok(bytes) => {
                tracing::info!(
                    group_id = %shared.group,
                    index = kept.meta.last_log_id.map(|l| l.index),
                    bytes = bytes.len(),
                    "built snapshot"
                );
                let bytes = Arc::new(bytes);
                if keep_first {
                    shared.keep(&kept, &bytes);
                    let _ = tx.send(Ok(bytes));
                } else {
                    let _ = tx.send(Ok(Arc::clone(&bytes)));
                    shared.keep(&kept, &bytes);
                }
            }
            Err(e) => {
                let e = sm_err(&shared.group, "build snapshot", &e);
                tracing::warn!(group_id = %shared.group, error = %e, "building a snapshot failed");
                let _ = tx.send(Err(Arc::from(e.to_string())));
            }
        });
        SharedBytes::building(async move {
            rx.await
                .unwrap_or_else(|_| Err(Arc::from("the snapshot build stopped before it ended")))
        })
    }

    /// Has the storage keep the snapshot (or, with no `data`, a lazy snapshot's cut) for the
    /// next start, off the runtime (a large snapshot's file write would hold up a worker).
    async fn keep(&self, meta: &SnapshotMeta, data: Option<Arc<Vec<u8>>>) {
        let shared = Arc::clone(&self.shared);
        let kept = KeptMeta {
            meta: meta.clone(),
            cut: data.is_none(),
        };
        let kept = tokio::task::spawn_blocking(move || {
            shared.keep(&kept, data.as_deref().map_or(&[][..], Vec::as_slice));
        });
        if let Err(e) = kept.await {
            tracing::warn!(group_id = %self.shared.group, error = %e, "keeping the snapshot failed");
        }
    }
}

/// The error for a snapshot task of `group` that did not finish (it panicked).
fn task_failed(group: &str, e: &tokio::task::JoinError) -> AnyError {
    AnyError::error(format!(
        "state machine of raft group {group}: snapshot task failed: {e}"
    ))
}

/// `commands` of one entry (or of a run of entries ending at `id`) through `apply_batch`:
/// one reply per command, or a storage error.
fn apply_commands(
    shared: &Shared,
    id: LogId,
    commands: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, StorageError> {
    let replies = shared
        .sm
        .apply_batch(LogPosition::from(&id), commands)
        .map_err(|e| StorageIOError::apply(id, sm_err(&shared.group, "apply batch", &e)))?;
    if replies.len() != commands.len() {
        let e: BoxError =
            format!("{} replies to {} commands", replies.len(), commands.len()).into();
        return Err(StorageIOError::apply(id, sm_err(&shared.group, "apply batch", &e)).into());
    }
    Ok(replies)
}

/// Runs a state-machine apply `f` of `commands` under the state machine's lock. On the
/// runtime worker the group runs on when the state machine says applying them now will not
/// wait on the disk ([`StateMachine::apply_would_wait`]) and no snapshot holds the lock:
/// that saves a hand-off to another thread and back per apply. Otherwise on tokio's
/// blocking pool: a storage write that waits on the disk would stall every other task of
/// the runtime worker.
async fn run_apply<T: Send + 'static>(
    shared: &Arc<Shared>,
    id: LogId,
    commands: Vec<Vec<u8>>,
    f: impl FnOnce(&Shared, &[Vec<u8>]) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    if !shared.sm.apply_would_wait(&commands) {
        if let Some(_serial) = shared.lock.try_lock() {
            return f(shared, &commands);
        }
    }
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || {
        let _serial = shared.lock.lock();
        f(&shared, &commands)
    })
    .await
    .map_err(|e| {
        StorageError::from(StorageIOError::apply(
            id,
            AnyError::error(format!("state machine apply task failed: {e}")),
        ))
    })?
}

/// Consecutive committed command entries of a batching group, gathered so that one
/// `apply_batch` (one storage transaction) applies all of them, recorded at the last one's
/// position; the replies are split back per entry.
#[derive(Default)]
struct CommandRun {
    commands: Vec<Vec<u8>>,
    /// Per entry: how many of `commands` it holds.
    sizes: Vec<usize>,
    last: Option<LogId>,
}

impl CommandRun {
    fn push(&mut self, id: LogId, command: Command) {
        let before = self.commands.len();
        match command {
            Command::One(c) => self.commands.push(c),
            Command::Batch(cs) => self.commands.extend(cs),
        }
        self.sizes.push(self.commands.len() - before);
        self.last = Some(id);
    }

    /// Applies the gathered entries (if any) and appends one response per entry.
    async fn apply(
        &mut self,
        shared: &Arc<Shared>,
        replies: &mut Vec<Response>,
    ) -> Result<(), StorageError> {
        let Some(id) = self.last.take() else {
            return Ok(());
        };
        let commands = std::mem::take(&mut self.commands);
        let started = std::time::Instant::now();
        let all = run_apply(shared, id, commands, move |shared, commands| {
            apply_commands(shared, id, commands)
        })
        .await?;
        shared.apply_seconds.record(started.elapsed().as_secs_f64());
        let mut all = all.into_iter();
        for size in self.sizes.drain(..) {
            replies.push(Response(all.by_ref().take(size).collect()));
        }
        Ok(())
    }
}

/// The meta of a kept snapshot: openraft's, and whether it is a lazy snapshot's cut (kept
/// without bytes: the state machine holds the state durably up to it, and the bytes are
/// built when a follower asks). A file from a build before `cut` existed does not decode
/// (its meta ends early) and is not used.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptMeta {
    meta: SnapshotMeta,
    cut: bool,
}

impl Shared {
    /// Has the storage keep `meta` and `data` for the next start; a failure only costs
    /// that start a rebuild, so it is logged, not returned.
    fn keep(&self, meta: &KeptMeta, data: &[u8]) {
        let mut kept_at = self.kept_at.lock();
        if *kept_at > meta.meta.last_log_id {
            tracing::debug!(group_id = %self.group, index = meta.meta.last_log_id.map(|l| l.index), "not keeping a snapshot older than the kept one");
            return;
        }
        let kept = crate::log_store::encode(meta)
            .map_err(|e| e.to_string())
            .and_then(|meta| {
                self.storage
                    .keep_snapshot(&meta, data)
                    .map_err(|e| e.to_string())
            });
        match kept {
            Ok(()) => *kept_at = meta.meta.last_log_id,
            Err(e) => {
                tracing::warn!(group_id = %self.group, error = %e, "could not keep the snapshot for the next start")
            }
        }
    }

    /// The snapshot the storage kept from the last run, when it is usable: whole, at or
    /// after the log's purge point (a lagging follower needs nothing the log no longer has)
    /// and at or before the state machine's applied position (it holds nothing the state
    /// does not). A cut comes with empty bytes.
    fn kept(&self) -> Option<(KeptMeta, Vec<u8>)> {
        let refuse = |why: String| {
            tracing::info!(group_id = %self.group, reason = %why, "not using the kept snapshot; building one");
            None
        };
        let (meta, data) = match self.storage.kept_snapshot() {
            Ok(Some(kept)) => kept,
            Ok(None) => return None,
            Err(e) => return refuse(e.to_string()),
        };
        let kept: KeptMeta = match crate::log_store::decode(&meta) {
            Ok(kept) => kept,
            Err(e) => return refuse(format!("its meta does not decode: {e}")),
        };
        let Some(at) = kept.meta.last_log_id else {
            return refuse("it holds no log position".into());
        };
        match read_meta::<LogId>(self.storage.as_ref(), MetaKey::LastPurged) {
            Ok(Some(purged)) if purged.index > at.index => {
                return refuse(format!(
                    "it is at index {}, the log is purged up to {}",
                    at.index, purged.index
                ))
            }
            Ok(_) => {}
            Err(e) => return refuse(format!("reading the purge point: {e}")),
        }
        match self.sm.last_applied() {
            Ok(Some(applied)) if applied.index >= at.index => {}
            Ok(applied) => {
                return refuse(format!(
                    "it is at index {}, the state machine applied {}",
                    at.index,
                    applied.map_or(0, |p| p.index)
                ))
            }
            Err(e) => return refuse(format!("reading the applied position: {e}")),
        }
        tracing::info!(group_id = %self.group, index = at.index, bytes = data.len(), cut = kept.cut, "using the snapshot kept from the last run");
        Some((kept, data))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    /// openraft's policy snapshot, in a task of its own: a state machine that persists
    /// itself (see [`StateMachine::persist_job`]) is only made durable up to the cut (its
    /// bytes are built when a follower asks: `get_current_snapshot`); any other exports its
    /// state.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        enum Job {
            Bytes(SnapshotJob),
            Persist(PersistJob),
        }
        let (meta, job) = self
            .cut(|sm| {
                Ok(match sm.persist_job()? {
                    Some(job) => Job::Persist(job),
                    None => Job::Bytes(sm.snapshot_job()?),
                })
            })
            .await
            .map_err(StorageIOError::read_state_machine)?;
        let shared = &self.shared;
        let bytes = match job {
            Job::Bytes(job) => {
                let bytes = self.spawn_bytes(&meta, job, true);
                bytes
                    .get()
                    .await
                    .map_err(|e| StorageIOError::read_state_machine(AnyError::error(e)))?;
                *shared.current.lock() = Some((meta.clone(), bytes.clone()));
                bytes
            }
            Job::Persist(job) => {
                let group = shared.group.clone();
                tokio::task::spawn_blocking(move || {
                    job().map_err(|e| sm_err(&group, "persist the state", &e))
                })
                .await
                .map_err(|e| task_failed(&shared.group, &e))
                .and_then(|persisted| persisted)
                .map_err(StorageIOError::read_state_machine)?;
                tracing::debug!(group_id = %shared.group, index = meta.last_log_id.map(|l| l.index), "state persisted for a snapshot");
                *shared.cut.lock() = Some(meta.clone());
                {
                    // bytes older than the cut are rebuilt when asked for: free them now
                    let mut current = shared.current.lock();
                    if current
                        .as_ref()
                        .is_some_and(|(m, _)| m.last_log_id < meta.last_log_id)
                    {
                        *current = None;
                    }
                }
                self.keep(&meta, None).await;
                SharedBytes::ready(Arc::default())
            }
        };
        // openraft keeps only the meta of a snapshot it asked for
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::sending(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let _serial = self.shared.lock.lock();
        Ok(self.applied().map_err(StorageIOError::read_state_machine)?)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let shared = Arc::clone(&self.shared);
        let storage = shared.storage.as_ref();
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(durability), Some(entry)) = (&shared.durability, entries.last()) {
            let id = entry.log_id;
            durability.wait(id.index).await.map_err(|e| {
                StorageIOError::apply(
                    id,
                    AnyError::error(format!(
                        "raft group {}: the log is not durable here: {e}",
                        shared.group
                    )),
                )
            })?;
        }
        let mut replies = Vec::new();
        let mut last = None;
        // consecutive command entries of a batching group: applied with one `apply_batch`
        let mut run = CommandRun::default();
        for entry in entries {
            let id = entry.log_id;
            let pos = LogPosition::from(&id);
            match entry.payload {
                EntryPayload::Normal(command) if shared.batching => {
                    run.push(id, command);
                }
                EntryPayload::Normal(Command::One(command)) => {
                    // one command: one reply
                    let reply = run_apply(&shared, id, vec![command], move |shared, one| {
                        one.iter()
                            .map(|command| {
                                shared.sm.apply(pos, command).map_err(|e| {
                                    StorageIOError::apply(id, sm_err(&shared.group, "apply", &e))
                                        .into()
                                })
                            })
                            .collect()
                    })
                    .await?;
                    replies.push(Response(reply));
                }
                EntryPayload::Normal(batch @ Command::Batch(_)) => {
                    // a run of one entry: its commands apply together at its position
                    let mut one = CommandRun::default();
                    one.push(id, batch);
                    one.apply(&shared, &mut replies).await?;
                }
                EntryPayload::Membership(membership) => {
                    run.apply(&shared, &mut replies).await?;
                    // the membership first: a crash before `advance` re-applies this entry
                    let stored = StoredMembership::new(Some(id), membership);
                    write_meta(storage, MetaKey::AppliedMembership, &stored)
                        .map_err(|e| StorageIOError::apply(id, e))?;
                    flush(storage)
                        .await
                        .map_err(|e| StorageIOError::apply(id, e))?;
                    let _serial = shared.lock.lock();
                    shared.sm.advance(pos).map_err(|e| {
                        StorageIOError::apply(id, sm_err(&shared.group, "advance", &e))
                    })?;
                    replies.push(Response(Vec::new()));
                }
                EntryPayload::Blank => {
                    run.apply(&shared, &mut replies).await?;
                    let _serial = shared.lock.lock();
                    shared.sm.advance(pos).map_err(|e| {
                        StorageIOError::apply(id, sm_err(&shared.group, "advance", &e))
                    })?;
                    replies.push(Response(Vec::new()));
                }
            }
            last = Some(id);
        }
        run.apply(&shared, &mut replies).await?;
        if let Some(id) = last {
            write_meta(storage, MetaKey::AppliedHint, &id)
                .map_err(|e| StorageIOError::apply(id, e))?;
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(SnapshotData::receiving()))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.shared);
        let storage = shared.storage.as_ref();
        let data = snapshot
            .into_bytes()
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let write_err = |e| StorageIOError::write_snapshot(Some(meta.signature()), e);
        write_meta(storage, MetaKey::AppliedMembership, &meta.last_membership)
            .map_err(write_err)?;
        if let Some(id) = meta.last_log_id {
            write_meta(storage, MetaKey::AppliedHint, &id).map_err(write_err)?;
        }
        flush(storage).await.map_err(write_err)?;
        if let Some(id) = meta.last_log_id {
            // a restore writes the whole state (a second for 100,000 MetaStorage keys): on a
            // blocking thread, so the node's other groups and its network go on meanwhile
            let (restoring, bytes) = (Arc::clone(&shared), Arc::clone(&data));
            tokio::task::spawn_blocking(move || {
                let _serial = restoring.lock.lock();
                restoring
                    .sm
                    .restore(LogPosition::from(&id), &bytes)
                    .map_err(|e| sm_err(&restoring.group, "restore snapshot", &e))
            })
            .await
            .map_err(|e| task_failed(&shared.group, &e))
            .and_then(|restored| restored)
            .map_err(write_err)?;
        }
        tracing::info!(group_id = %shared.group, snapshot_id = %meta.snapshot_id, bytes = data.len(), "installed snapshot");
        self.keep(meta, Some(Arc::clone(&data))).await;
        *shared.current.lock() = Some((meta.clone(), SharedBytes::ready(data)));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // The first ask (openraft's start) looks for the snapshot the storage kept from the
        // last run: without one, openraft rebuilds it from the state when the log was purged.
        if !self.shared.looked_for_kept.swap(true, Ordering::SeqCst) {
            let shared = Arc::clone(&self.shared);
            let kept = tokio::task::spawn_blocking(move || {
                let _serial = shared.lock.lock();
                shared.kept()
            })
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e.to_string())))?;
            if let Some((kept, data)) = kept {
                {
                    let mut kept_at = self.shared.kept_at.lock();
                    if *kept_at < kept.meta.last_log_id {
                        *kept_at = kept.meta.last_log_id;
                    }
                }
                if kept.cut {
                    // openraft's start reads only the meta; a follower's ask builds the bytes
                    self.shared.cut.lock().get_or_insert(kept.meta.clone());
                    return Ok(Some(Snapshot {
                        meta: kept.meta,
                        snapshot: Box::new(SnapshotData::sending(SharedBytes::ready(
                            Arc::default(),
                        ))),
                    }));
                }
                let data = SharedBytes::ready(Arc::new(data));
                self.shared.current.lock().get_or_insert((kept.meta, data));
            }
        }
        // A lazy snapshot's bytes are built now, at the applied position (at or after the
        // cut, so Raft's log holds everything after them), by a job on a blocking thread:
        // this runs on openraft's state machine worker, which goes on applying the group's
        // entries while the follower's replication waits for the bytes. They serve every
        // follower until the next cut; a failed build is started again at the next ask.
        let stale = {
            let cut = self.shared.cut.lock();
            let current = self.shared.current.lock();
            match (&*cut, &*current) {
                (_, Some((_, bytes))) if bytes.failed() => true,
                (Some(cut), Some((meta, _))) => cut.last_log_id > meta.last_log_id,
                (Some(_), None) => true,
                (None, _) => false,
            }
        };
        if stale {
            let (meta, job) = self
                .cut(|sm| sm.snapshot_job())
                .await
                .map_err(|e| StorageIOError::read_snapshot(None, e))?;
            // the state is durable without these bytes: followers need not wait for the file
            let bytes = self.spawn_bytes(&meta, job, false);
            *self.shared.current.lock() = Some((meta, bytes));
        }
        let current = self.shared.current.lock().clone();
        Ok(current.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::sending(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::{storage::MemoryLogStorage, testing::MemoryStateMachine};

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload,
        }
    }

    fn reply(bytes: &[u8]) -> Option<String> {
        MemoryStateMachine::decode_reply(bytes)
    }

    #[tokio::test]
    async fn batch_entries_answer_every_command_in_order() {
        let sm = Arc::new(MemoryStateMachine::new());
        let mut store = memory_store(Arc::clone(&sm) as Arc<dyn StateMachine>);
        let entries = vec![
            entry(
                1,
                EntryPayload::Normal(Command::One(MemoryStateMachine::put("a", "1"))),
            ),
            entry(2, EntryPayload::Blank),
            entry(
                3,
                EntryPayload::Normal(Command::Batch(vec![
                    MemoryStateMachine::put("a", "2"),
                    MemoryStateMachine::put("b", "1"),
                    MemoryStateMachine::put("a", "3"),
                ])),
            ),
        ];
        let responses = store.apply(entries).await.unwrap();
        let decoded: Vec<Vec<Option<String>>> = responses
            .iter()
            .map(|r| r.0.iter().map(|b| reply(b)).collect())
            .collect();
        assert_eq!(
            decoded,
            vec![
                vec![None],
                vec![],
                vec![Some("1".into()), None, Some("2".into())]
            ]
        );
        assert_eq!(sm.get("a"), Some("3".into()));
        assert_eq!(sm.commands_applied(), 4);
        assert_eq!(sm.applied_index(), 3);
        let (applied, _) = store.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
    }

    #[tokio::test]
    async fn an_entry_is_applied_only_once_the_local_log_holds_it_durably() {
        let sm = Arc::new(MemoryStateMachine::new());
        let durability = Durability::new(1);
        let mut store = StateMachineStore::new(
            "g",
            Arc::clone(&sm) as Arc<dyn StateMachine>,
            Arc::new(MemoryLogStorage::new()),
            Some(Arc::clone(&durability)),
        );
        // durable up to 1: applies at once
        store.apply(vec![put(1, "a", "1")]).await.unwrap();
        assert_eq!(sm.applied_index(), 1);
        let apply = tokio::spawn({
            let mut store = store.clone();
            async move { store.apply(vec![put(2, "a", "2"), put(3, "b", "1")]).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!apply.is_finished());
        assert_eq!(
            sm.applied_index(),
            1,
            "nothing applied past the durable index"
        );
        durability.flushed(durability.epoch(), 2, &Ok(()));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sm.applied_index(), 1, "the run waits for its last entry");
        durability.flushed(durability.epoch(), 3, &Ok(()));
        let replies = tokio::time::timeout(std::time::Duration::from_secs(5), apply)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(replies.len(), 2);
        assert_eq!(sm.get("b"), Some("1".into()));
        // a failed flush: the apply fails instead of applying what may not be on disk
        durability.flushed(
            durability.epoch(),
            9,
            &Err(std::io::Error::other("disk gone")),
        );
        let e = store.apply(vec![put(4, "c", "1")]).await.unwrap_err();
        assert!(e.to_string().contains("disk gone"), "{e}");
        assert_eq!(sm.get("c"), None);
    }

    /// A store over `sm` and `storage` as a start after the last run builds it.
    fn restarted(
        sm: &Arc<MemoryStateMachine>,
        storage: &Arc<MemoryLogStorage>,
    ) -> StateMachineStore {
        StateMachineStore::new(
            "g",
            Arc::clone(sm) as Arc<dyn StateMachine>,
            Arc::clone(storage) as Arc<dyn LogStorage>,
            None,
        )
    }

    fn put(index: u64, key: &str, value: &str) -> Entry {
        entry(
            index,
            EntryPayload::Normal(Command::One(MemoryStateMachine::put(key, value))),
        )
    }

    #[tokio::test]
    async fn a_start_uses_the_snapshot_kept_from_the_last_run_only_when_it_fits() {
        let sm = Arc::new(MemoryStateMachine::new());
        let storage = Arc::new(MemoryLogStorage::new());
        let mut store = restarted(&sm, &storage);
        store
            .apply(vec![put(1, "a", "1"), put(2, "b", "2"), put(3, "a", "3")])
            .await
            .unwrap();
        let built = store
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(3));
        // the state goes on after the snapshot
        store.apply(vec![put(4, "c", "4")]).await.unwrap();

        // a start finds it: same meta and data, no rebuild from the state (which is at 4)
        let mut again = restarted(&sm, &storage);
        let kept = current(&mut again, "the kept snapshot").await;
        assert_eq!(kept.meta, built.meta);
        assert_eq!(bytes_of(kept).await, bytes_of(built).await);

        // a log purged past it: a follower would need entries the log no longer has
        let purged = LogId::new(CommittedLeaderId::new(1, 0), 4);
        write_meta(storage.as_ref(), MetaKey::LastPurged, &purged).unwrap();
        let mut after_purge = restarted(&sm, &storage);
        assert!(after_purge.get_current_snapshot().await.unwrap().is_none());

        // a state machine behind it (its own write-out lagged): not used either
        let purged = LogId::new(CommittedLeaderId::new(1, 0), 2);
        write_meta(storage.as_ref(), MetaKey::LastPurged, &purged).unwrap();
        let behind = Arc::new(MemoryStateMachine::new());
        behind.advance(LogPosition { term: 1, index: 2 }).unwrap();
        let mut lagging = restarted(&behind, &storage);
        assert!(lagging.get_current_snapshot().await.unwrap().is_none());

        // a kept snapshot whose meta does not decode is refused, not trusted
        storage.keep_snapshot(b"\xff\xff\xff", b"data").unwrap();
        let mut damaged = restarted(&sm, &storage);
        assert!(damaged.get_current_snapshot().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_wrong_number_of_batch_replies_is_a_storage_error() {
        let short = Recording {
            short: true,
            ..Recording::default()
        };
        let mut store = StateMachineStore::new(
            "g",
            Arc::new(short),
            Arc::new(MemoryLogStorage::new()),
            None,
        );
        let batch = entry(
            1,
            EntryPayload::Normal(Command::Batch(vec![b"x".to_vec(), b"y".to_vec()])),
        );
        let err = store.apply(vec![batch]).await.unwrap_err();
        assert!(err.to_string().contains("1 replies to 2 commands"), "{err}");
    }

    /// Records each `apply_batch` call (position, command count); echoes every command, or,
    /// when `short`, answers one reply too few.
    #[derive(Default)]
    struct Recording {
        calls: Mutex<Vec<(u64, usize)>>,
        short: bool,
    }

    impl StateMachine for Recording {
        fn last_applied(&self) -> Result<Option<LogPosition>, BoxError> {
            Ok(None)
        }
        fn apply(&self, _: LogPosition, c: &[u8]) -> Result<Vec<u8>, BoxError> {
            Ok(c.to_vec())
        }
        fn batching(&self) -> bool {
            true
        }
        fn apply_batch(&self, p: LogPosition, c: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, BoxError> {
            self.calls.lock().push((p.index, c.len()));
            let n = if self.short {
                c.len().saturating_sub(1)
            } else {
                c.len()
            };
            Ok(c[..n].to_vec())
        }
        fn advance(&self, _: LogPosition) -> Result<(), BoxError> {
            Ok(())
        }
        fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
            Ok(Vec::new())
        }
        fn restore(&self, _: LogPosition, _: &[u8]) -> Result<(), BoxError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn consecutive_command_entries_of_a_batching_group_apply_together() {
        let sm = Arc::new(Recording::default());
        let mut store = memory_store(Arc::clone(&sm) as Arc<dyn StateMachine>);
        let one = |i: u64, c: &[u8]| entry(i, EntryPayload::Normal(Command::One(c.to_vec())));
        let batch = |i: u64, cs: &[&[u8]]| {
            entry(
                i,
                EntryPayload::Normal(Command::Batch(cs.iter().map(|c| c.to_vec()).collect())),
            )
        };
        let entries = vec![
            one(1, b"a"),
            batch(2, &[b"b", b"c"]),
            one(3, b"d"),
            entry(4, EntryPayload::Blank),
            batch(5, &[b"e", b"f"]),
            one(6, b"g"),
        ];
        let responses = store.apply(entries).await.unwrap();
        let got: Vec<Vec<Vec<u8>>> = responses.into_iter().map(|r| r.0).collect();
        let want: Vec<Vec<Vec<u8>>> = vec![
            vec![b"a".to_vec()],
            vec![b"b".to_vec(), b"c".to_vec()],
            vec![b"d".to_vec()],
            vec![],
            vec![b"e".to_vec(), b"f".to_vec()],
            vec![b"g".to_vec()],
        ];
        assert_eq!(
            got, want,
            "one response per entry, each with its own replies"
        );
        // entries 1-3 in one call at position 3, the blank apart, entries 5-6 at position 6
        assert_eq!(*sm.calls.lock(), vec![(3, 4), (6, 3)]);
    }

    /// A fresh [`MemoryStateMachine`] restored from `snapshot`, taken at `index` (term 1).
    async fn restored_from(snapshot: Snapshot<TypeConfig>, index: u64) -> MemoryStateMachine {
        let restored = MemoryStateMachine::new();
        restored
            .restore(LogPosition { index, term: 1 }, &bytes_of(snapshot).await)
            .unwrap();
        restored
    }

    /// The bytes of `snapshot` (waiting for their build).
    async fn bytes_of(snapshot: Snapshot<TypeConfig>) -> Arc<Vec<u8>> {
        snapshot
            .snapshot
            .into_bytes()
            .await
            .expect("snapshot bytes")
    }

    /// openraft's start on a fresh `store` (nothing kept), then `entries` applied and the
    /// policy's snapshot of them.
    async fn start_apply_and_snapshot(
        store: &mut StateMachineStore,
        entries: Vec<Entry>,
    ) -> Snapshot<TypeConfig> {
        assert!(store.get_current_snapshot().await.unwrap().is_none());
        store.apply(entries).await.unwrap();
        let mut builder = store.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap()
    }

    /// The store's current snapshot, which must be there (`what` names it).
    async fn current(store: &mut StateMachineStore, what: &str) -> Snapshot<TypeConfig> {
        store.get_current_snapshot().await.unwrap().expect(what)
    }

    /// A store over `sm` with a fresh in-memory log.
    fn memory_store(sm: Arc<dyn StateMachine>) -> StateMachineStore {
        StateMachineStore::new("g", sm, Arc::new(MemoryLogStorage::new()), None)
    }

    /// The methods a test double passes on to its `inner` [`MemoryStateMachine`]; `(but
    /// restore)` leaves `restore` to the double.
    macro_rules! delegate_to_inner {
        () => {
            delegate_to_inner!(but restore);
            fn restore(&self, position: LogPosition, data: &[u8]) -> Result<(), BoxError> {
                self.inner.restore(position, data)
            }
        };
        (but restore) => {
            fn last_applied(&self) -> Result<Option<LogPosition>, BoxError> {
                self.inner.last_applied()
            }
            fn apply(&self, position: LogPosition, command: &[u8]) -> Result<Vec<u8>, BoxError> {
                self.inner.apply(position, command)
            }
            fn advance(&self, position: LogPosition) -> Result<(), BoxError> {
                self.inner.advance(position)
            }
        };
    }

    /// [`MemoryStateMachine`] whose snapshot jobs wait for `release` once they started;
    /// `lazy` ones persist themselves (their persist jobs do nothing).
    struct GatedSnapshots {
        inner: Arc<MemoryStateMachine>,
        started: std::sync::mpsc::SyncSender<()>,
        release: Arc<parking_lot::Mutex<std::sync::mpsc::Receiver<()>>>,
        lazy: bool,
        jobs: AtomicU64,
    }

    impl GatedSnapshots {
        /// The state machine, its job-started signal and its release.
        fn new(
            inner: &Arc<MemoryStateMachine>,
            lazy: bool,
        ) -> (
            Self,
            std::sync::mpsc::Receiver<()>,
            std::sync::mpsc::SyncSender<()>,
        ) {
            let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
            let (release_tx, release_rx) = std::sync::mpsc::sync_channel(1);
            let sm = Self {
                inner: Arc::clone(inner),
                started: started_tx,
                release: Arc::new(parking_lot::Mutex::new(release_rx)),
                lazy,
                jobs: AtomicU64::new(0),
            };
            (sm, started_rx, release_tx)
        }
    }

    /// Waits (bounded) for a gated snapshot job to start.
    async fn job_started(started: std::sync::mpsc::Receiver<()>) {
        tokio::task::spawn_blocking(move || {
            started.recv_timeout(std::time::Duration::from_secs(10))
        })
        .await
        .unwrap()
        .expect("the snapshot job started");
    }

    impl StateMachine for GatedSnapshots {
        delegate_to_inner!();
        fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
            self.inner.snapshot()
        }
        fn persist_job(&self) -> Result<Option<PersistJob>, BoxError> {
            Ok(self.lazy.then(|| Box::new(|| Ok(())) as PersistJob))
        }
        fn snapshot_job(&self) -> Result<SnapshotJob, BoxError> {
            self.jobs.fetch_add(1, Ordering::SeqCst);
            let cut = self.inner.snapshot()?;
            let (started, release) = (self.started.clone(), Arc::clone(&self.release));
            Ok(Box::new(move || {
                started.send(())?;
                release.lock().recv()?;
                Ok(cut)
            }))
        }
    }

    #[tokio::test]
    async fn entries_are_applied_while_a_snapshot_job_runs() {
        use std::time::Duration;
        let inner = Arc::new(MemoryStateMachine::new());
        let (sm, started_rx, release_tx) = GatedSnapshots::new(&inner, false);
        let mut store = memory_store(Arc::new(sm));
        store
            .apply(vec![put(1, "a", "1"), put(2, "b", "1")])
            .await
            .unwrap();
        let mut builder = store.get_snapshot_builder().await;
        let building = tokio::spawn(async move { builder.build_snapshot().await });
        job_started(started_rx).await;
        // the job holds its thread; applies go on
        tokio::time::timeout(
            Duration::from_secs(10),
            store.apply(vec![put(3, "a", "2"), put(4, "c", "1")]),
        )
        .await
        .expect("applied while the snapshot job runs")
        .unwrap();
        assert_eq!(inner.applied_index(), 4);
        assert!(!building.is_finished());
        release_tx.send(()).unwrap();
        let snapshot = tokio::time::timeout(Duration::from_secs(10), building)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            snapshot.meta.last_log_id.map(|l| l.index),
            Some(2),
            "as of the cut"
        );
        let restored = restored_from(snapshot, 2).await;
        assert_eq!(restored.get("a"), Some("1".into()));
        assert_eq!(restored.get("c"), None);
    }

    /// [`MemoryStateMachine`] that persists itself: counts its persist and snapshot jobs.
    #[derive(Default)]
    struct SelfPersisting {
        inner: MemoryStateMachine,
        /// The applied index the last persist job made durable.
        persisted: Arc<AtomicU64>,
        snapshots: AtomicU64,
    }

    impl StateMachine for SelfPersisting {
        delegate_to_inner!();
        fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
            self.snapshots.fetch_add(1, Ordering::SeqCst);
            self.inner.snapshot()
        }
        fn persist_job(&self) -> Result<Option<PersistJob>, BoxError> {
            let cut = self.inner.applied_index();
            let persisted = Arc::clone(&self.persisted);
            Ok(Some(Box::new(move || {
                persisted.store(cut, Ordering::SeqCst);
                Ok(())
            })))
        }
    }

    #[tokio::test]
    async fn a_self_persisting_state_machine_builds_snapshot_bytes_only_when_asked() {
        let sm = Arc::new(SelfPersisting::default());
        let mut store = memory_store(Arc::clone(&sm) as Arc<dyn StateMachine>);
        let cut =
            start_apply_and_snapshot(&mut store, vec![put(1, "a", "1"), put(2, "b", "1")]).await;
        assert_eq!(cut.meta.last_log_id.map(|l| l.index), Some(2));
        assert_eq!(
            sm.persisted.load(Ordering::SeqCst),
            2,
            "persisted up to the cut"
        );
        assert_eq!(
            sm.snapshots.load(Ordering::SeqCst),
            0,
            "no bytes built for the cut"
        );

        // a follower needs the snapshot: the bytes are built then, at the applied position
        store.apply(vec![put(3, "a", "2")]).await.unwrap();
        let sent = current(&mut store, "a snapshot").await;
        assert_eq!(sent.meta.last_log_id.map(|l| l.index), Some(3));
        assert_eq!(sm.snapshots.load(Ordering::SeqCst), 1);
        let sent_id = sent.meta.snapshot_id.clone();
        let restored = restored_from(sent, 3).await;
        assert_eq!(restored.get("a"), Some("2".into()));
        assert_eq!(restored.get("b"), Some("1".into()));

        // the same bytes serve until the next cut
        store.apply(vec![put(4, "c", "1")]).await.unwrap();
        let again = current(&mut store, "a snapshot").await;
        assert_eq!(again.meta.snapshot_id, sent_id);
        assert_eq!(sm.snapshots.load(Ordering::SeqCst), 1);
        let mut builder = store.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        assert_eq!(sm.persisted.load(Ordering::SeqCst), 4);
        let fresh = current(&mut store, "a snapshot").await;
        assert_eq!(fresh.meta.last_log_id.map(|l| l.index), Some(4));
        assert_eq!(sm.snapshots.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_start_after_a_lazy_snapshot_uses_its_cut_without_building() {
        let sm = Arc::new(SelfPersisting::default());
        let storage = Arc::new(MemoryLogStorage::new());
        let store = |sm: &Arc<SelfPersisting>| {
            StateMachineStore::new(
                "g",
                Arc::clone(sm) as Arc<dyn StateMachine>,
                Arc::clone(&storage) as Arc<dyn LogStorage>,
                None,
            )
        };
        let mut first = store(&sm);
        assert!(first.get_current_snapshot().await.unwrap().is_none());
        first
            .apply(vec![put(1, "a", "1"), put(2, "b", "1")])
            .await
            .unwrap();
        first
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        drop(first);

        // openraft's start reads the cut's meta: no bytes, no persisting
        let mut again = store(&sm);
        sm.persisted.store(0, Ordering::SeqCst);
        let at_start = current(&mut again, "the kept cut").await;
        assert_eq!(at_start.meta.last_log_id.map(|l| l.index), Some(2));
        assert_eq!(sm.snapshots.load(Ordering::SeqCst), 0);
        assert_eq!(sm.persisted.load(Ordering::SeqCst), 0);
        // a follower's ask builds the bytes
        let sent = current(&mut again, "a snapshot").await;
        assert_eq!(sm.snapshots.load(Ordering::SeqCst), 1);
        let restored = restored_from(sent, 2).await;
        assert_eq!(restored.get("b"), Some("1".into()));
    }

    /// A follower's ask for a lazy snapshot hands it out at once; the bytes are built by a
    /// job the group's applies do not wait for, once for every follower that asks.
    #[tokio::test]
    async fn a_snapshot_a_follower_asks_for_is_built_while_the_group_applies() {
        use std::time::Duration;
        let inner = Arc::new(MemoryStateMachine::new());
        let (sm, started_rx, release_tx) = GatedSnapshots::new(&inner, true);
        let sm = Arc::new(sm);
        let mut store = memory_store(Arc::clone(&sm) as Arc<dyn StateMachine>);
        start_apply_and_snapshot(&mut store, vec![put(1, "a", "1"), put(2, "b", "1")]).await;
        assert_eq!(sm.jobs.load(Ordering::SeqCst), 0, "a cut builds no bytes");

        let asked =
            tokio::time::timeout(Duration::from_secs(10), current(&mut store, "a snapshot"))
                .await
                .expect("handed out while its bytes are being built");
        assert_eq!(asked.meta.last_log_id.map(|l| l.index), Some(2));
        job_started(started_rx).await;
        tokio::time::timeout(Duration::from_secs(10), store.apply(vec![put(3, "c", "1")]))
            .await
            .expect("applied while the bytes are being built")
            .unwrap();
        let second = current(&mut store, "a snapshot").await;
        assert_eq!(second.meta.snapshot_id, asked.meta.snapshot_id);
        assert_eq!(sm.jobs.load(Ordering::SeqCst), 1, "one build serves both");

        let mut reading = tokio::spawn(restored_from(asked, 2));
        let early = tokio::time::timeout(Duration::from_millis(20), &mut reading).await;
        assert!(early.is_err(), "a read waits for the build");
        release_tx.send(()).unwrap();
        let restored = tokio::time::timeout(Duration::from_secs(10), reading)
            .await
            .expect("read once built")
            .unwrap();
        assert_eq!(restored.get("b"), Some("1".into()));
        assert_eq!(restored.get("c"), None, "as of the cut");
        assert_eq!(
            bytes_of(second).await,
            Arc::new(restored.snapshot().unwrap()),
            "both followers get the same bytes"
        );
    }

    /// [`MemoryStateMachine`] that persists itself and whose first snapshot job fails.
    #[derive(Default)]
    struct FirstBuildFails {
        inner: MemoryStateMachine,
        jobs: AtomicU64,
    }

    impl StateMachine for FirstBuildFails {
        delegate_to_inner!();
        fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
            self.inner.snapshot()
        }
        fn persist_job(&self) -> Result<Option<PersistJob>, BoxError> {
            Ok(Some(Box::new(|| Ok(()))))
        }
        fn snapshot_job(&self) -> Result<SnapshotJob, BoxError> {
            let first = self.jobs.fetch_add(1, Ordering::SeqCst) == 0;
            let cut = self.inner.snapshot()?;
            Ok(Box::new(move || {
                if first {
                    Err("the export broke".into())
                } else {
                    Ok(cut)
                }
            }))
        }
    }

    #[tokio::test]
    async fn a_failed_snapshot_build_fails_its_send_and_the_next_ask_builds_again() {
        let sm = Arc::new(FirstBuildFails::default());
        let mut store = memory_store(Arc::clone(&sm) as Arc<dyn StateMachine>);
        start_apply_and_snapshot(&mut store, vec![put(1, "a", "1")]).await;
        let failed = current(&mut store, "a snapshot").await;
        let e = failed
            .snapshot
            .into_bytes()
            .await
            .expect_err("the build failed");
        assert!(e.to_string().contains("the export broke"), "{e}");
        let again = current(&mut store, "a snapshot").await;
        assert_eq!(sm.jobs.load(Ordering::SeqCst), 2, "built again");
        let restored = restored_from(again, 1).await;
        assert_eq!(restored.get("a"), Some("1".into()));
    }

    /// [`MemoryStateMachine`] whose restore waits (up to 10 s) for `release` once started.
    struct GatedRestore {
        inner: MemoryStateMachine,
        started: std::sync::mpsc::SyncSender<()>,
        release: parking_lot::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl StateMachine for GatedRestore {
        delegate_to_inner!(but restore);
        fn restore(&self, position: LogPosition, data: &[u8]) -> Result<(), BoxError> {
            self.started.send(())?;
            self.release
                .lock()
                .recv_timeout(std::time::Duration::from_secs(10))
                .map_err(|_| "the restore was not released")?;
            self.inner.restore(position, data)
        }
        fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
            self.inner.snapshot()
        }
    }

    /// Installing a snapshot restores it on a blocking thread: on a one-thread runtime the
    /// node's other tasks (timers here, heartbeats and the network in a node) run meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn a_snapshot_restore_leaves_the_runtime_free() {
        use std::time::Duration;
        let mut from = memory_store(Arc::new(MemoryStateMachine::new()));
        let snapshot =
            start_apply_and_snapshot(&mut from, vec![put(1, "a", "1"), put(2, "b", "2")]).await;
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let (release_tx, release_rx) = std::sync::mpsc::sync_channel(1);
        let sm = Arc::new(GatedRestore {
            inner: MemoryStateMachine::new(),
            started: started_tx,
            release: parking_lot::Mutex::new(release_rx),
        });
        let mut to = memory_store(Arc::clone(&sm) as Arc<dyn StateMachine>);
        let installing =
            tokio::spawn(
                async move { to.install_snapshot(&snapshot.meta, snapshot.snapshot).await },
            );
        job_started(started_rx).await;
        let ticked = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            ticked.elapsed() < Duration::from_secs(5),
            "a timer waited {:?} for the restore",
            ticked.elapsed()
        );
        assert!(!installing.is_finished(), "the restore is still held");
        release_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), installing)
            .await
            .expect("installed once released")
            .unwrap()
            .unwrap();
        assert_eq!(sm.inner.get("a"), Some("1".into()));
        assert_eq!(sm.inner.get("b"), Some("2".into()));
    }

    /// A snapshot build that ends after a newer snapshot (or cut) was kept does not replace
    /// it: the kept file never goes back.
    #[test]
    fn the_kept_snapshot_never_goes_back_to_an_older_one() {
        let storage = Arc::new(MemoryLogStorage::new());
        let store = StateMachineStore::new(
            "g",
            Arc::new(MemoryStateMachine::new()),
            Arc::clone(&storage) as Arc<dyn LogStorage>,
            None,
        );
        let at = |index: u64, cut: bool| KeptMeta {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 0), index)),
                last_membership: StoredMembership::default(),
                snapshot_id: format!("s{index}"),
            },
            cut,
        };
        let kept_index = || {
            let (meta, _) = storage.kept_snapshot().unwrap().expect("a kept snapshot");
            let kept: KeptMeta = crate::log_store::decode(&meta).unwrap();
            (kept.meta.last_log_id.map(|l| l.index), kept.cut)
        };
        store.shared.keep(&at(3, true), &[]);
        assert_eq!(kept_index(), (Some(3), true));
        store.shared.keep(&at(2, false), b"older bytes");
        assert_eq!(kept_index(), (Some(3), true), "an older build is not kept");
        store.shared.keep(&at(3, false), b"bytes at the cut");
        assert_eq!(
            kept_index(),
            (Some(3), false),
            "bytes at the same position are"
        );
        store.shared.keep(&at(5, true), &[]);
        assert_eq!(kept_index(), (Some(5), true));
    }
}
