//! The etcd v3 gRPC endpoint of the MetaStorage: etcd clients (`etcdctl`, the `etcd-client`
//! crate, Go's `clientv3`) talk to a node unchanged.
//!
//! Started by [`MetaStorageManager`](crate::MetaStorageManager) when
//! `metastorage.etcd_listen` is set (see
//! [`etcd_address`](crate::MetaStorageManager::etcd_address) for the bound address). The
//! protocol definitions in `proto/` are our own, wire-compatible with etcd's `etcdserverpb`
//! and `mvccpb` (package, service, method and message names, field numbers and types);
//! `build.rs` compiles them with `protox`, so no system `protoc` is needed.
//!
//! Served: `KV` (`Range`, `Put`, `DeleteRange`, `Txn`, `Compact`), `Watch` (bidirectional:
//! create, cancel, progress), `Maintenance/Status`, `Cluster/MemberList`. Everything else
//! (leases, auth, the other maintenance and membership RPCs, v3election, v3lock) answers
//! `UNIMPLEMENTED` with a message naming the method, never a wrong answer; a `Put` with a
//! lease is refused the same way. A node that is not initialized, not started or stopping
//! answers `UNAVAILABLE` naming the node. Requests above 2 MiB are refused with
//! tonic's `OUT_OF_RANGE` "decoded message length too large" (etcd answers
//! `RESOURCE_EXHAUSTED` above its 1.5 MiB); client deadlines (`grpc-timeout`) are honoured
//! by tonic.
//!
//! Every response header carries `cluster_id` (a hash of the cluster id), `member_id` (the
//! Raft node id of this node's name), `revision` (the MetaStorage revision the answer is
//! at) and `raft_term`.
//!
//! # How the etcd model maps onto the MetaStorage
//! - Revisions are the MetaStorage revisions (one global revision, one per write command);
//!   `mod_revision` is the revision of the version read.
//! - `version` and `create_revision` are derived from the key's history: the MetaStorage
//!   stores neither, so the endpoint walks back from the version read through the earlier
//!   versions of the key until a tombstone, the beginning, or the compacted revision.
//!   `version` is the number of live versions since the last removal and
//!   `create_revision` the revision of the first of them. Exact while the history is there;
//!   **after compaction they count only the versions still kept** (a key written 5 times
//!   before compaction and once after reports version 2 and the create revision of the
//!   kept version). Existence is always exact, so the usual `create_revision == 0` and
//!   `version == 0` "does not exist" compares are exact. Reading them costs one storage
//!   read per retained version of each returned key.
//! - `Txn` (and `Put` with `prev_kv`/`ignore_value`, `DeleteRange`) is evaluated at a
//!   linearizable revision R on this node: compares, reads and the keys to delete are taken
//!   at R, then the writes of the chosen branch go to the Raft log as ONE MetaStorage
//!   `invoke` whose condition is "every key the evaluation read still has the revision it
//!   had at R". If another write touched one of those keys in between, the whole
//!   evaluation is retried (up to 32 times, then `UNAVAILABLE`). So a transaction is one
//!   revision and is atomic for the keys it names. **Deviation:** a key *created* inside a
//!   compared or deleted *range* (`range_end` set) after R and before the commit is not
//!   seen by that commit (the MetaStorage conditions test single keys, not ranges).
//! - Reads inside a `Txn` see the state before the transaction (etcd lets a `Range` after
//!   a `Put` in the same transaction see the put). Two writes to one key in the executed
//!   branch are refused with etcd's "duplicate key given in txn request"; etcd also checks
//!   the branch that is not taken.
//! - `Range` with `serializable` reads this node's local copy (a learner included);
//!   otherwise a read index (Raft barrier) makes it linearizable. `count` is the number of
//!   keys in the range before the min/max revision filters, as in etcd.
//! - `Compact(rev)`: revisions below `rev` become unreadable; `physical` changes nothing
//!   (compaction is applied with the command).
//! - `Watch`: one response per revision, in revision order, with every matching event of
//!   that revision (no fragmentation: a huge revision is one message). Live events and
//!   replay from `start_revision` both read each revision from the local storage, so a
//!   watch never skips or repeats a revision, also across leader changes. A start revision
//!   at or below the compacted revision C gets the `created` response and then one with
//!   `compact_revision = C + 1` and `canceled = true` (etcd sends C: compaction here drops
//!   the tombstones of revision C, so C + 1 is the oldest revision replayed completely).
//!   `progress_notify` watches get an empty response every 10 minutes without events; a
//!   progress request is answered with the revision every watch of the stream delivered.
//!   A `DELETE` event's `kv` has the key and `mod_revision` only, as in etcd.
//! - `Maintenance/Status`: `version` is the etcd API level implemented ("3.5.0"),
//!   `dbSize` is 0 (not tracked), `leader`, `raftIndex`, `raftAppliedIndex`, `raftTerm`
//!   and `isLearner` come from this node's Raft group.
//! - `Cluster/MemberList`: the voters and learners of the MetaStorage group, ids from their
//!   names; `peerURLs` is the node's messaging address when it is in the topology;
//!   `clientURLs` is set for this node only (its etcd address).
//! - Keys never carry leases (`lease` is 0); `ignore_lease` is accepted (the key keeps its
//!   lease, which is none).
mod kv;
mod proto;
mod service;
mod watch;

use std::{net::SocketAddr, sync::Arc};

use lifecycle::{FaultReporter, StopGuard, StopTicket};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch as watch_channel;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::Status;

use crate::{
    cluster::ClusterState,
    entry::Entry,
    error::{Error, Result},
    replicated::Client,
    storage::KeyValueStorage,
};
use proto::{etcdserverpb::ResponseHeader, mvccpb::KeyValue};

/// etcd's message for a read below the compacted revision (clients match on it).
pub(crate) const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// etcd's message for a read above the current revision.
pub(crate) const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
/// The largest request the endpoint decodes (etcd's default is 1.5 MiB).
pub(crate) const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// What the endpoint needs from a started MetaStorage.
pub(crate) struct Attached {
    /// This node's name.
    pub(crate) local: String,
    /// The cluster state.
    pub(crate) state: ClusterState,
    /// The local storage.
    pub(crate) storage: Arc<dyn KeyValueStorage>,
    /// The applied revision, published after every apply.
    pub(crate) revisions: watch_channel::Receiver<u64>,
    /// Writes and read index through the group.
    pub(crate) client: Client,
    /// The component's stop guard.
    pub(crate) guard: StopGuard,
    /// Cancelled when the MetaStorage stops: watch streams end.
    pub(crate) stopping: CancellationToken,
    /// The network (peer addresses for `MemberList`).
    pub(crate) network: Arc<network::NetworkManager>,
}

impl Attached {
    /// The response header at `revision`.
    pub(crate) fn header(&self, revision: u64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: cluster_hash(&self.state),
            member_id: raft::node_id(&self.local),
            revision: to_i64(revision),
            raft_term: self.client.group().metrics().term,
        }
    }

    /// The etcd form of a live version, `create_revision` and `version` derived from the
    /// key's history (see the module doc).
    pub(crate) fn key_value(&self, entry: &Entry, keys_only: bool) -> Result<KeyValue> {
        let (create, version) = self.history(entry)?;
        Ok(KeyValue {
            key: entry.key.clone(),
            create_revision: to_i64(create),
            mod_revision: to_i64(entry.revision),
            version: to_i64(version),
            value: if keys_only {
                Vec::new()
            } else {
                entry.live_value().unwrap_or_default().to_vec()
            },
            lease: 0,
        })
    }

    /// `(create_revision, version)` of a live version: walks back through the key's
    /// retained versions until a removal, the first version or the compacted revision.
    pub(crate) fn history(&self, entry: &Entry) -> Result<(u64, u64)> {
        if entry.tombstone {
            return Ok((0, 0));
        }
        let (mut create, mut version, mut at) = (entry.revision, 1u64, entry.revision);
        while at > 1 {
            match self.storage.get(&entry.key, Some(at - 1)) {
                Ok(Some(prev)) if !prev.tombstone && prev.revision < at => {
                    create = prev.revision;
                    version += 1;
                    at = prev.revision;
                }
                Ok(_) | Err(Error::Compacted { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        Ok((create, version))
    }
}

/// The cluster id as etcd's 64-bit cluster id: both halves of the uuid xor-ed.
pub(crate) fn cluster_hash(state: &ClusterState) -> u64 {
    let (hi, lo) = state.id.as_u64_pair();
    hi ^ lo
}

/// A revision or count as etcd's `int64`.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The shared state of the endpoint: the attached MetaStorage (while started) and the
/// cluster state (to tell "not initialized" from "not started").
pub(crate) struct Backend {
    attached: RwLock<Option<Arc<Attached>>>,
    cluster: watch_channel::Receiver<Option<ClusterState>>,
    node: Mutex<String>,
    address: Mutex<Option<SocketAddr>>,
    tasks: Mutex<TaskTracker>,
}

impl Backend {
    /// The attached MetaStorage and a ticket that keeps `stop` waiting for this request.
    pub(crate) fn enter(&self) -> std::result::Result<(StopTicket, Arc<Attached>), Status> {
        let attached = self.attached()?;
        let ticket = attached.guard.enter().map_err(|e| {
            Status::unavailable(format!(
                "metastorage on node {} is stopping: {e}",
                attached.local
            ))
        })?;
        Ok((ticket, attached))
    }

    /// The attached MetaStorage, or `UNAVAILABLE` saying why there is none.
    pub(crate) fn attached(&self) -> std::result::Result<Arc<Attached>, Status> {
        if let Some(a) = self.attached.read().as_ref() {
            return Ok(Arc::clone(a));
        }
        let node = self.node.lock().clone();
        if self.cluster.borrow().is_none() {
            return Err(Status::unavailable(format!(
                "node {node}: cluster is not initialized: run `ignite cluster init`"
            )));
        }
        Err(Status::unavailable(format!(
            "metastorage is not started on node {node} (starting, stopping or stopped)"
        )))
    }

    /// Where the endpoint listens.
    pub(crate) fn address(&self) -> Option<SocketAddr> {
        *self.address.lock()
    }

    /// The tracker the endpoint's tasks run on.
    pub(crate) fn tasks(&self) -> TaskTracker {
        self.tasks.lock().clone()
    }
}

/// The endpoint as the manager sees it: bind and serve, attach the started MetaStorage,
/// detach it at stop.
pub(crate) struct Endpoint {
    backend: Arc<Backend>,
}

impl Endpoint {
    /// No I/O: `cluster` tells whether the cluster is initialized.
    pub(crate) fn new(cluster: watch_channel::Receiver<Option<ClusterState>>) -> Self {
        Self {
            backend: Arc::new(Backend {
                attached: RwLock::new(None),
                cluster,
                node: Mutex::new(String::new()),
                address: Mutex::new(None),
                tasks: Mutex::new(TaskTracker::new()),
            }),
        }
    }

    /// The bound address while serving.
    pub(crate) fn address(&self) -> Option<SocketAddr> {
        self.backend.address()
    }

    /// Binds `listen` (unless already serving) and serves on `tasks` until `cancel`.
    /// Returns the bound address.
    pub(crate) async fn serve(
        &self,
        listen: &str,
        node: &str,
        tasks: &TaskTracker,
        faults: &FaultReporter,
        cancel: CancellationToken,
    ) -> Result<SocketAddr> {
        *self.backend.node.lock() = node.to_owned();
        if let Some(address) = self.address() {
            return Ok(address);
        }
        *self.backend.tasks.lock() = tasks.clone();
        let address =
            service::serve(Arc::clone(&self.backend), listen, tasks, faults, cancel).await?;
        *self.backend.address.lock() = Some(address);
        tracing::info!(node, address = %address, "etcd endpoint listening");
        Ok(address)
    }

    /// The MetaStorage started: requests are served from now on.
    pub(crate) fn attach(&self, attached: Attached) {
        *self.backend.attached.write() = Some(Arc::new(attached));
    }

    /// The MetaStorage is stopping: new requests get `UNAVAILABLE`, watch streams end.
    pub(crate) fn detach(&self) {
        if let Some(a) = self.backend.attached.write().take() {
            a.stopping.cancel();
        }
    }

    /// The serving task ended (the manager awaited it): the next start binds again.
    pub(crate) fn stopped(&self) {
        *self.backend.address.lock() = None;
    }
}

/// The gRPC status of a MetaStorage error.
pub(crate) fn status(e: Error) -> Status {
    match e {
        Error::Compacted { .. } => Status::out_of_range(COMPACTED),
        Error::RevisionAhead { .. } => Status::out_of_range(FUTURE_REVISION),
        Error::Stopping(_) | Error::NotStarted { .. } | Error::NotInitialized => {
            Status::unavailable(e.to_string())
        }
        Error::Timeout { .. } => Status::unavailable(e.to_string()),
        e if e.is_retryable() => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}
