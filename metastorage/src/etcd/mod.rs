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
//!   `version == 0` "does not exist" compares are exact. The first read of a key costs one
//!   storage read per retained version; a per-key cache of the last derivation (reset when
//!   the compacted revision moves) makes later reads walk only the versions written since.
//! - `Txn` (and `Put` with `prev_kv`/`ignore_value`, `DeleteRange`) is evaluated at this
//!   node's revision R: compares, reads and the keys to delete are taken at R, then the
//!   writes of the chosen branch go to the Raft log as ONE MetaStorage `invoke` whose
//!   condition is "every key the evaluation read still has the revision it had at R". If
//!   another write touched one of those keys in between (or this node was behind), the
//!   whole evaluation is retried after a read index (up to 32 times, then `UNAVAILABLE`).
//!   An outcome without writes, and any request reading a range, is evaluated after a
//!   read index, so its answer is linearizable too. Such requests take
//!   per-key lock stripes on the node first (a range takes them all), so clients contending
//!   for a key through one node queue instead of racing; only writes through other nodes
//!   (or blind puts) make a request evaluate again. So a transaction is one revision and
//!   is atomic for the keys it names. **Deviation:** a key *created* inside a
//!   compared or deleted *range* (`range_end` set) after R and before the commit is not
//!   seen by that commit (the MetaStorage conditions test single keys, not ranges).
//! - Reads inside a `Txn` run at the state before the transaction, so a `Range` or a nested
//!   `Txn`'s compare of a key the same request already wrote (etcd shows the new version)
//!   is refused with `UNIMPLEMENTED` naming the key, never answered wrongly. Two writes to
//!   one key in the executed branch are refused with etcd's "duplicate key given in txn
//!   request"; etcd also checks the branch that is not taken. More than 128 operations in
//!   one branch are refused as by etcd's default `--max-txn-ops`.
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
//!   `dbSize` the bytes of the node's MetaStorage database directory (0 in memory),
//!   `dbSizeInUse` 0 (not tracked), `leader`, `raftIndex`, `raftAppliedIndex`, `raftTerm`
//!   and `isLearner` come from this node's Raft group.
//! - `Cluster/MemberList`: the voters and learners of the MetaStorage group, ids from their
//!   names; `peerURLs` is the node's messaging address when it is in the topology;
//!   `clientURLs` is set for this node only (its etcd address).
//! - Keys never carry leases (`lease` is 0); `ignore_lease` is accepted (the key keeps its
//!   lease, which is none).
//! - The two revision errors keep etcd's exact texts ("etcdserver: mvcc: required revision
//!   has been compacted" / "... is a future revision", `OUT_OF_RANGE`): clients match on
//!   them, so they do not name the revision.
//! - `etcdctl endpoint status` (3.4) needs its endpoints as `host:port`: given
//!   `http://host:port` it sends the whole URL as the HTTP/2 `:authority`, which the HTTP/2
//!   server (`h2`) refuses as malformed (`RST_STREAM PROTOCOL_ERROR`). Every other
//!   `etcdctl` command works with either form.
mod kv;
mod proto;
mod service;
mod watch;

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

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
    /// `(create_revision, version)` of recently read versions.
    pub(crate) history: HistoryCache,
    /// The storage's directory (`None` in memory): `Status` reports its size.
    pub(crate) data_dir: Option<std::path::PathBuf>,
}

/// The derived `create_revision` and `version` of one version of a key.
#[derive(Debug, Clone, Copy)]
struct Derived {
    /// The revision of the version they describe.
    revision: u64,
    create: u64,
    version: u64,
    /// The compacted revision they were derived at (they depend on it).
    compacted: u64,
}

/// Remembers the last derived `(create_revision, version)` per key, so reading a key
/// again walks back only through the versions written since (one storage read for an
/// unchanged key) instead of its whole history. Cleared when it grows past
/// [`HISTORY_CACHE_KEYS`] or the compacted revision moves.
#[derive(Default)]
pub(crate) struct HistoryCache(Mutex<HashMap<Vec<u8>, Derived>>);

/// Keys the history cache holds before it starts over.
const HISTORY_CACHE_KEYS: usize = 65_536;

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
        derive(self.storage.as_ref(), &self.history, entry)
    }
}

/// `(create_revision, version)` of `entry` from the history in `storage`, helped by `cache`.
fn derive(
    storage: &dyn KeyValueStorage,
    cache: &HistoryCache,
    entry: &Entry,
) -> Result<(u64, u64)> {
    if entry.tombstone {
        return Ok((0, 0));
    }
    let compacted = storage.compacted_revision();
    let known = cache
        .0
        .lock()
        .get(&entry.key)
        .copied()
        .filter(|d| d.compacted == compacted && d.revision <= entry.revision);
    let (mut create, mut version, mut at) = (entry.revision, 1u64, entry.revision);
    // versions counted below `at` so far, on top of `version` (1 for the entry itself)
    let mut extra = None;
    loop {
        if let Some(d) = known.filter(|d| d.revision == at) {
            // the rest of the walk is known: add what it found below `at`
            create = d.create;
            extra = Some(d.version - 1);
            break;
        }
        if at <= 1 {
            break;
        }
        match storage.get(&entry.key, Some(at - 1)) {
            Ok(Some(prev)) if !prev.tombstone && prev.revision < at => {
                create = prev.revision;
                version += 1;
                at = prev.revision;
            }
            Ok(_) | Err(Error::Compacted { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    let version = version + extra.unwrap_or(0);
    let mut cache = cache.0.lock();
    if cache.len() >= HISTORY_CACHE_KEYS {
        cache.clear();
    }
    let newer = cache
        .get(&entry.key)
        .is_some_and(|d| d.compacted == compacted && d.revision > entry.revision);
    if !newer {
        cache.insert(
            entry.key.clone(),
            Derived {
                revision: entry.revision,
                create,
                version,
                compacted,
            },
        );
    }
    Ok((create, version))
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
    /// The bound address and the token that ends that server.
    address: Mutex<Option<(SocketAddr, CancellationToken)>>,
    tasks: Mutex<TaskTracker>,
    /// Write requests that read keys run one at a time per stripe of keys on this node (see
    /// `kv`), so clients contending for a key here queue instead of racing.
    pub(crate) stripes: Vec<tokio::sync::Mutex<()>>,
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
        match &*self.address.lock() {
            Some((address, cancel)) if !cancel.is_cancelled() => Some(*address),
            _ => None,
        }
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
                stripes: (0..kv::STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
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
        let address = service::serve(
            Arc::clone(&self.backend),
            listen,
            tasks,
            faults,
            cancel.clone(),
        )
        .await?;
        *self.backend.address.lock() = Some((address, cancel));
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{command::CommandOp, storage::MemoryKeyValueStorage};

    /// The reference: walk the whole retained history, no cache.
    fn reference(storage: &dyn KeyValueStorage, entry: &Entry) -> (u64, u64) {
        derive(storage, &HistoryCache::default(), entry).expect("derive")
    }

    #[test]
    fn version_and_create_revision_follow_the_key_history() {
        let storage = MemoryKeyValueStorage::new();
        let cache = HistoryCache::default();
        let r1 = storage.put(b"k", b"1").unwrap();
        storage.put(b"other", b"x").unwrap();
        let r3 = storage.put(b"k", b"2").unwrap();
        let latest = storage.get(b"k", None).unwrap().unwrap();
        assert_eq!(derive(&storage, &cache, &latest).unwrap(), (r1, 2));
        let at_r1 = storage.get(b"k", Some(r1)).unwrap().unwrap();
        assert_eq!(derive(&storage, &cache, &at_r1).unwrap(), (r1, 1));
        storage.remove(b"k").unwrap();
        let r5 = storage.put(b"k", b"3").unwrap();
        let reborn = storage.get(b"k", None).unwrap().unwrap();
        assert_eq!(derive(&storage, &cache, &reborn).unwrap(), (r5, 1));
        storage.put(b"k", b"4").unwrap();
        storage.compact(r3).unwrap();
        let after = storage.get(b"k", None).unwrap().unwrap();
        assert_eq!(derive(&storage, &cache, &after).unwrap(), (r5, 2));
    }

    #[test]
    fn errors_map_to_grpc_codes() {
        let compacted = status(Error::Compacted {
            requested: 1,
            compacted: 5,
        });
        assert_eq!(
            (compacted.code(), compacted.message()),
            (tonic::Code::OutOfRange, COMPACTED)
        );
        let ahead = status(Error::RevisionAhead {
            requested: 9,
            current: 5,
        });
        assert_eq!(
            (ahead.code(), ahead.message()),
            (tonic::Code::OutOfRange, FUTURE_REVISION)
        );
        let not_started = status(Error::NotStarted { node: "n7".into() });
        assert_eq!(not_started.code(), tonic::Code::Unavailable);
        assert!(not_started.message().contains("n7"));
        assert_eq!(
            status(Error::NotInitialized).code(),
            tonic::Code::Unavailable
        );
        let timeout = status(Error::Timeout {
            what: "write".into(),
            millis: 10,
        });
        assert_eq!(timeout.code(), tonic::Code::Unavailable);
        let corrupt = status(Error::Rejected("bad command".into()));
        assert_eq!(corrupt.code(), tonic::Code::Internal);
        assert!(corrupt.message().contains("bad command"));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8),
        Remove(u8),
        Compact,
        Read(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4).prop_map(Op::Put),
            1 => (0u8..4).prop_map(Op::Remove),
            1 => Just(Op::Compact),
            3 => (0u8..4, any::<u8>()).prop_map(|(k, r)| Op::Read(k, r)),
        ]
    }

    proptest! {
        /// The cache never changes an answer: cached and uncached derivations agree for
        /// every key at every readable revision, whatever the order of reads, writes and
        /// compactions.
        #[test]
        fn the_cache_never_changes_an_answer(ops in proptest::collection::vec(op(), 1..80)) {
            let storage = MemoryKeyValueStorage::new();
            let cache = HistoryCache::default();
            for op in ops {
                match op {
                    Op::Put(k) => { storage.put(&[k], b"v").unwrap(); }
                    Op::Remove(k) => { storage.remove(&[k]).unwrap(); }
                    Op::Compact => {
                        let target = storage.revision().saturating_sub(2);
                        storage.apply(&CommandOp::Compact { revision: target }, &Default::default()).unwrap();
                    }
                    Op::Read(k, r) => {
                        let (low, high) = (storage.compacted_revision(), storage.revision());
                        let at = low + u64::from(r) % (high - low + 1);
                        if let Some(e) = storage.get(&[k], Some(at)).unwrap() {
                            prop_assert_eq!(derive(&storage, &cache, &e).unwrap(), reference(&storage, &e));
                        }
                    }
                }
            }
        }
    }
}
