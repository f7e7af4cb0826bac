//! The `KV` service: `Range`, `Put`, `DeleteRange`, `Txn` and `Compact` on the MetaStorage.
//!
//! Reads run at one revision of the local copy (after a read index unless serializable).
//! Every write request is evaluated at a linearizable revision R and committed as ONE
//! MetaStorage command guarded by the revisions of every key the evaluation read (see the
//! module doc of `etcd`): one request, one revision.
use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use tonic::{Request, Response, Status};

use super::{
    proto::{
        etcdserverpb::{
            compare::{CompareResult, CompareTarget, TargetUnion},
            kv_server::Kv,
            range_request::{SortOrder, SortTarget},
            request_op, response_op, CompactionRequest, CompactionResponse, Compare,
            DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
            RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
        },
        mvccpb::KeyValue,
    },
    status, to_i64, Attached, Backend, COMPACTED, FUTURE_REVISION,
};
use crate::{
    command::{CommandOp, Condition, Operation},
    entry::Entry,
};

/// How often a write is evaluated again when a key it read changed before its commit.
const MAX_ATTEMPTS: usize = 32;
/// The deepest nesting of `Txn` inside `Txn` the endpoint accepts.
const MAX_TXN_DEPTH: usize = 32;
/// The most operations one branch of a `Txn` may have (etcd's default `--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;
/// Lock stripes of the keys of read-then-write requests.
pub(crate) const STRIPES: usize = 64;

/// The keys a request may read or write, known before it runs (both branches of a `Txn`,
/// nested ones too): which lock stripes it takes.
#[derive(Default)]
struct Footprint {
    stripes: BTreeSet<usize>,
    /// A range is read or deleted: evaluate after a read index only.
    ranged: bool,
}

impl Footprint {
    fn add(&mut self, key: &[u8], range_end: &[u8]) {
        if range_end.is_empty() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(key, &mut h);
            self.stripes
                .insert((std::hash::Hasher::finish(&h) % STRIPES as u64) as usize);
        } else {
            // a range may hold any key
            self.stripes.extend(0..STRIPES);
            self.ranged = true;
        }
    }

    fn txn(&mut self, req: &TxnRequest, depth: usize) {
        if depth > MAX_TXN_DEPTH {
            return;
        }
        for c in &req.compare {
            self.add(&c.key, &c.range_end);
        }
        for op in req.success.iter().chain(&req.failure) {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => self.add(&r.key, &r.range_end),
                Some(request_op::Request::RequestPut(r)) => self.add(&r.key, &[]),
                Some(request_op::Request::RequestDeleteRange(r)) => self.add(&r.key, &r.range_end),
                Some(request_op::Request::RequestTxn(t)) => self.txn(t, depth + 1),
                None => {}
            }
        }
    }
}

type Res<T> = std::result::Result<T, Status>;

/// The `KV` service.
pub(crate) struct KvService(pub(crate) Arc<Backend>);

/// Which keys a request names: one key, a range, or everything from a key on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Keys {
    /// `range_end` empty: the key alone.
    One(Vec<u8>),
    /// `[from, to)`; `to: None` is "from the key on" (`range_end` = `\0`).
    Range(Vec<u8>, Option<Vec<u8>>),
}

impl Keys {
    /// etcd's interpretation of `key` and `range_end`.
    pub(crate) fn of(key: &[u8], range_end: &[u8]) -> Res<Self> {
        if key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        Ok(match range_end {
            [] => Keys::One(key.to_vec()),
            [0] => Keys::Range(key.to_vec(), None),
            end => Keys::Range(key.to_vec(), Some(end.to_vec())),
        })
    }

    /// Whether `key` is one of these keys.
    pub(crate) fn matches(&self, key: &[u8]) -> bool {
        match self {
            Keys::One(k) => k == key,
            Keys::Range(from, to) => {
                key >= from.as_slice() && to.as_deref().is_none_or(|to| key < to)
            }
        }
    }
}

/// A consistent view at one revision with the keys read recorded (the commit guard).
struct View<'a> {
    attached: &'a Attached,
    revision: u64,
    /// Key -> revision of its latest version at `revision` (0: none).
    read: BTreeMap<Vec<u8>, u64>,
}

impl View<'_> {
    /// The live entries of `keys` at the view's revision; records what it read.
    fn entries(&mut self, keys: &Keys) -> Res<Vec<Entry>> {
        let storage = &self.attached.storage;
        match keys {
            Keys::One(key) => {
                let latest = storage.get(key, Some(self.revision)).map_err(status)?;
                self.read
                    .insert(key.clone(), latest.as_ref().map_or(0, |e| e.revision));
                Ok(latest.filter(|e| !e.tombstone).into_iter().collect())
            }
            Keys::Range(from, to) => {
                let entries = if to.as_deref().is_some_and(|to| to <= from.as_slice()) {
                    Vec::new()
                } else {
                    storage
                        .range(from, to.as_deref(), Some(self.revision))
                        .map_err(status)?
                };
                for e in &entries {
                    self.read.insert(e.key.clone(), e.revision);
                }
                Ok(entries)
            }
        }
    }

    /// The live version of one key; recorded.
    fn one(&mut self, key: &[u8]) -> Res<Option<Entry>> {
        Ok(self.entries(&Keys::One(key.to_vec()))?.pop())
    }

    fn key_value(&self, entry: &Entry, keys_only: bool) -> Res<KeyValue> {
        self.attached.key_value(entry, keys_only).map_err(status)
    }
}

/// What evaluating a request at a view produced: the writes to commit, in order.
#[derive(Default)]
struct Writes {
    ops: Vec<Operation>,
    put: BTreeSet<Vec<u8>>,
    removed: BTreeSet<Vec<u8>>,
}

impl Writes {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Res<()> {
        if self.removed.contains(&key) || !self.put.insert(key.clone()) {
            return Err(duplicate());
        }
        self.ops.push(Operation::Put { key, value });
        Ok(())
    }

    fn remove(&mut self, key: Vec<u8>) -> Res<()> {
        if self.put.contains(&key) || !self.removed.insert(key.clone()) {
            return Err(duplicate());
        }
        self.ops.push(Operation::Remove { key });
        Ok(())
    }
}

/// Refuses a read of a key this request already wrote: etcd would show the new version,
/// this endpoint evaluates every read at the state before the request.
fn unwritten(writes: &Writes, keys: &Keys) -> Res<()> {
    if let Some(key) = writes
        .put
        .iter()
        .chain(&writes.removed)
        .find(|k| keys.matches(k))
    {
        return Err(Status::unimplemented(format!(
            "txn reads key {} after writing it in the same request: not supported by this MetaStorage",
            String::from_utf8_lossy(key)
        )));
    }
    Ok(())
}

fn duplicate() -> Status {
    Status::invalid_argument("etcdserver: duplicate key given in txn request")
}

fn revision_arg(revision: i64, what: &str) -> Res<u64> {
    u64::try_from(revision)
        .map_err(|_| Status::invalid_argument(format!("{what} must not be negative: {revision}")))
}

/// `Range` at the view.
fn range(view: &mut View<'_>, req: &RangeRequest) -> Res<RangeResponse> {
    let keys = Keys::of(&req.key, &req.range_end)?;
    if req.limit < 0 {
        return Err(Status::invalid_argument(format!(
            "range limit must not be negative: {}",
            req.limit
        )));
    }
    let mut entries = view.entries(&keys)?;
    let count = entries.len();
    let (min_mod, max_mod) = (req.min_mod_revision, req.max_mod_revision);
    let (min_create, max_create) = (req.min_create_revision, req.max_create_revision);
    entries.retain(|e| {
        let rev = to_i64(e.revision);
        (min_mod == 0 || rev >= min_mod) && (max_mod == 0 || rev <= max_mod)
    });
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    let needs_history = min_create != 0
        || max_create != 0
        || (order != SortOrder::None && matches!(target, SortTarget::Version | SortTarget::Create));
    let mut kvs: Vec<KeyValue>;
    if req.count_only {
        // counted before the filters, as etcd does
        kvs = Vec::new();
    } else if needs_history || order != SortOrder::None {
        kvs = entries
            .iter()
            .map(|e| view.key_value(e, req.keys_only))
            .collect::<Res<_>>()?;
        kvs.retain(|kv| {
            (min_create == 0 || kv.create_revision >= min_create)
                && (max_create == 0 || kv.create_revision <= max_create)
        });
        sort(&mut kvs, target, order);
    } else {
        let take = if req.limit > 0 {
            entries
                .len()
                .min(usize::try_from(req.limit).unwrap_or(usize::MAX))
        } else {
            entries.len()
        };
        kvs = entries[..take]
            .iter()
            .map(|e| view.key_value(e, req.keys_only))
            .collect::<Res<_>>()?;
        // `more` below looks at the untruncated length
        let more = take < entries.len();
        return Ok(RangeResponse {
            header: Some(view.attached.header(view.revision)),
            kvs,
            more,
            count: to_i64(count as u64),
        });
    }
    let mut more = false;
    if req.limit > 0 {
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        if kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
    }
    Ok(RangeResponse {
        header: Some(view.attached.header(view.revision)),
        kvs,
        more,
        count: to_i64(count as u64),
    })
}

fn sort(kvs: &mut [KeyValue], target: SortTarget, order: SortOrder) {
    let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(cmp),
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
    }
}

/// `Put` at the view: records the write, answers with the previous version if asked.
fn put(view: &mut View<'_>, writes: &mut Writes, req: &PutRequest) -> Res<PutResponse> {
    if req.key.is_empty() {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    if req.lease != 0 {
        return Err(Status::unimplemented(format!(
            "leases are not supported by this MetaStorage: put of key {} with lease {}",
            String::from_utf8_lossy(&req.key),
            req.lease
        )));
    }
    let needs_prev = req.prev_kv || req.ignore_value || req.ignore_lease;
    let prev = if needs_prev {
        view.one(&req.key)?
    } else {
        None
    };
    if (req.ignore_value || req.ignore_lease) && prev.is_none() {
        return Err(Status::invalid_argument(format!(
            "etcdserver: key not found: {}",
            String::from_utf8_lossy(&req.key)
        )));
    }
    let value = match (&prev, req.ignore_value) {
        (Some(p), true) => p.live_value().unwrap_or_default().to_vec(),
        _ => req.value.clone(),
    };
    writes.put(req.key.clone(), value)?;
    let prev_kv = match (&prev, req.prev_kv) {
        (Some(p), true) => Some(view.key_value(p, false)?),
        _ => None,
    };
    Ok(PutResponse {
        header: None,
        prev_kv,
    })
}

/// `DeleteRange` at the view: removes every live key of the range.
fn delete(
    view: &mut View<'_>,
    writes: &mut Writes,
    req: &DeleteRangeRequest,
) -> Res<DeleteRangeResponse> {
    let keys = Keys::of(&req.key, &req.range_end)?;
    let entries = view.entries(&keys)?;
    let mut prev_kvs = Vec::new();
    for e in &entries {
        writes.remove(e.key.clone())?;
        if req.prev_kv {
            prev_kvs.push(view.key_value(e, false)?);
        }
    }
    Ok(DeleteRangeResponse {
        header: None,
        deleted: to_i64(entries.len() as u64),
        prev_kvs,
    })
}

/// One etcd compare at the view (etcd's `applyCompare`).
fn compare(view: &mut View<'_>, c: &Compare) -> Res<bool> {
    let keys = Keys::of(&c.key, &c.range_end)?;
    let target = CompareTarget::try_from(c.target)
        .map_err(|_| Status::invalid_argument(format!("unknown compare target {}", c.target)))?;
    let result = CompareResult::try_from(c.result)
        .map_err(|_| Status::invalid_argument(format!("unknown compare result {}", c.result)))?;
    let entries = view.entries(&keys)?;
    if entries.is_empty() {
        if target == CompareTarget::Value {
            // a missing key has no value to compare: always false, as in etcd
            return Ok(false);
        }
        return Ok(compare_kv(c, target, result, &KeyValue::default()));
    }
    for e in &entries {
        let kv = match target {
            CompareTarget::Mod => KeyValue {
                mod_revision: to_i64(e.revision),
                ..KeyValue::default()
            },
            CompareTarget::Value => KeyValue {
                value: e.live_value().unwrap_or_default().to_vec(),
                ..KeyValue::default()
            },
            CompareTarget::Lease => KeyValue::default(),
            CompareTarget::Version | CompareTarget::Create => view.key_value(e, true)?,
        };
        if !compare_kv(c, target, result, &kv) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn compare_kv(c: &Compare, target: CompareTarget, result: CompareResult, kv: &KeyValue) -> bool {
    let int = |want: i64, have: i64| have.cmp(&want);
    let ord = match (target, &c.target_union) {
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => kv.value.as_slice().cmp(v),
        (CompareTarget::Value, _) => kv.value.as_slice().cmp(&[]),
        (CompareTarget::Version, Some(TargetUnion::Version(v))) => int(*v, kv.version),
        (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => {
            int(*v, kv.create_revision)
        }
        (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => int(*v, kv.mod_revision),
        (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => int(*v, kv.lease),
        (CompareTarget::Version, _) => int(0, kv.version),
        (CompareTarget::Create, _) => int(0, kv.create_revision),
        (CompareTarget::Mod, _) => int(0, kv.mod_revision),
        (CompareTarget::Lease, _) => int(0, kv.lease),
    };
    match result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// `Txn` at the view (nested ones recursively); reads see the state at the view.
fn txn(
    view: &mut View<'_>,
    writes: &mut Writes,
    req: &TxnRequest,
    depth: usize,
) -> Res<TxnResponse> {
    if depth > MAX_TXN_DEPTH {
        return Err(Status::invalid_argument(format!(
            "txn nests deeper than {MAX_TXN_DEPTH} levels"
        )));
    }
    if [req.success.len(), req.failure.len(), req.compare.len()]
        .iter()
        .any(|n| *n > MAX_TXN_OPS)
    {
        return Err(Status::invalid_argument(
            "etcdserver: too many operations in txn request",
        ));
    }
    let mut succeeded = true;
    for c in &req.compare {
        unwritten(writes, &Keys::of(&c.key, &c.range_end)?)?;
        if !compare(view, c)? {
            succeeded = false;
            break;
        }
    }
    let branch = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    let mut responses = Vec::with_capacity(branch.len());
    for op in branch {
        responses.push(request_op(view, writes, op, depth)?);
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

fn request_op(
    view: &mut View<'_>,
    writes: &mut Writes,
    op: &RequestOp,
    depth: usize,
) -> Res<ResponseOp> {
    use request_op::Request as Rq;
    use response_op::Response as Rs;
    let response = match &op.request {
        Some(Rq::RequestRange(r)) => {
            unwritten(writes, &Keys::of(&r.key, &r.range_end)?)?;
            Rs::ResponseRange(range(view, r)?)
        }
        Some(Rq::RequestPut(r)) => Rs::ResponsePut(put(view, writes, r)?),
        Some(Rq::RequestDeleteRange(r)) => Rs::ResponseDeleteRange(delete(view, writes, r)?),
        Some(Rq::RequestTxn(r)) => Rs::ResponseTxn(txn(view, writes, r, depth + 1)?),
        None => return Err(Status::invalid_argument("txn operation has no request")),
    };
    Ok(ResponseOp {
        response: Some(response),
    })
}

/// Sets the header of every response inside `resp` (etcd fills nested headers too).
fn fill_headers(responses: &mut [ResponseOp], header: &super::proto::etcdserverpb::ResponseHeader) {
    use response_op::Response as Rs;
    for r in responses {
        match &mut r.response {
            Some(Rs::ResponseRange(x)) => x.header = Some(*header),
            Some(Rs::ResponsePut(x)) => x.header = Some(*header),
            Some(Rs::ResponseDeleteRange(x)) => x.header = Some(*header),
            Some(Rs::ResponseTxn(x)) => {
                x.header = Some(*header);
                fill_headers(&mut x.responses, header);
            }
            None => {}
        }
    }
}

impl KvService {
    /// Evaluates `eval` at the local revision and commits its writes as one command guarded
    /// by the revisions of the keys it read, again from the start (after a read index) when
    /// one changed meanwhile. Returns the result and the revision it is at.
    async fn write<T>(
        &self,
        footprint: Footprint,
        eval: impl Fn(&mut View<'_>, &mut Writes) -> Res<T>,
    ) -> Res<(T, Arc<Attached>, u64)> {
        let (_ticket, attached) = self.0.enter()?;
        // in stripe order: no deadlock between requests
        let mut _locks = Vec::with_capacity(footprint.stripes.len());
        for stripe in footprint.stripes {
            _locks.push(self.0.stripes[stripe].lock().await);
        }
        // Writes need no read index: the guard fails at commit if the local copy was
        // behind for a key read. Answers without a commit (read-only outcomes) and ranges
        // (whose new keys the guard does not see) are evaluated after one.
        let mut need_barrier = footprint.ranged;
        for attempt in 1..=MAX_ATTEMPTS {
            let fresh = need_barrier;
            if need_barrier {
                attached.client.barrier().await.map_err(status)?;
            }
            let revision = attached.storage.revision();
            let mut view = View {
                attached: &attached,
                revision,
                read: BTreeMap::new(),
            };
            let mut writes = Writes::default();
            let out = eval(&mut view, &mut writes)?;
            if writes.ops.is_empty() {
                if fresh {
                    return Ok((out, Arc::clone(&attached), revision));
                }
                need_barrier = true;
                continue;
            }
            let op = if view.read.is_empty() {
                CommandOp::Write { ops: writes.ops }
            } else {
                let guard = view
                    .read
                    .into_iter()
                    .map(|(key, rev)| Condition::revision(key, crate::CompareOp::Eq, rev))
                    .collect();
                CommandOp::invoke(Condition::All(guard), writes.ops, Vec::new())
            };
            let outcome = attached.client.write(op).await.map_err(status)?;
            if outcome.succeeded {
                return Ok((out, Arc::clone(&attached), outcome.revision));
            }
            need_barrier = true;
            tracing::debug!(
                attempt,
                revision,
                "etcd write raced with another write, evaluating again"
            );
        }
        Err(Status::unavailable(format!(
            "the keys of this request kept changing: no commit after {MAX_ATTEMPTS} attempts"
        )))
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Res<Response<RangeResponse>> {
        let req = request.into_inner();
        let requested = revision_arg(req.revision, "range revision")?;
        let (_ticket, attached) = self.0.enter()?;
        if !req.serializable {
            attached.client.barrier().await.map_err(status)?;
        }
        let current = attached.storage.revision();
        let revision = if requested == 0 {
            current
        } else if requested > current {
            return Err(Status::out_of_range(FUTURE_REVISION));
        } else if requested < attached.storage.compacted_revision() {
            return Err(Status::out_of_range(COMPACTED));
        } else {
            requested
        };
        let mut view = View {
            attached: &attached,
            revision,
            read: BTreeMap::new(),
        };
        range(&mut view, &req).map(Response::new)
    }

    async fn put(&self, request: Request<PutRequest>) -> Res<Response<PutResponse>> {
        let req = request.into_inner();
        if !(req.prev_kv || req.ignore_value || req.ignore_lease) {
            // a blind write reads nothing: no read index, no guard
            let (_ticket, attached) = self.0.enter()?;
            let mut view = View {
                attached: &attached,
                revision: attached.storage.revision(),
                read: BTreeMap::new(),
            };
            let mut writes = Writes::default();
            let mut resp = put(&mut view, &mut writes, &req)?;
            let outcome = attached
                .client
                .write(CommandOp::Write { ops: writes.ops })
                .await
                .map_err(status)?;
            resp.header = Some(attached.header(outcome.revision));
            return Ok(Response::new(resp));
        }
        let mut footprint = Footprint::default();
        footprint.add(&req.key, &[]);
        let (mut resp, attached, revision) = self
            .write(footprint, |view, writes| put(view, writes, &req))
            .await?;
        resp.header = Some(attached.header(revision));
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Res<Response<DeleteRangeResponse>> {
        let req = request.into_inner();
        let mut footprint = Footprint::default();
        footprint.add(&req.key, &req.range_end);
        let (mut resp, attached, revision) = self
            .write(footprint, |view, writes| delete(view, writes, &req))
            .await?;
        resp.header = Some(attached.header(revision));
        Ok(Response::new(resp))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Res<Response<TxnResponse>> {
        let req = request.into_inner();
        let mut footprint = Footprint::default();
        footprint.txn(&req, 0);
        let (mut resp, attached, revision) = self
            .write(footprint, |view, writes| txn(view, writes, &req, 0))
            .await?;
        let header = attached.header(revision);
        fill_headers(&mut resp.responses, &header);
        resp.header = Some(header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Res<Response<CompactionResponse>> {
        let req = request.into_inner();
        let revision = revision_arg(req.revision, "compaction revision")?;
        let (_ticket, attached) = self.0.enter()?;
        attached.client.barrier().await.map_err(status)?;
        let current = attached.storage.revision();
        if revision > current {
            return Err(Status::out_of_range(FUTURE_REVISION));
        }
        if revision <= attached.storage.compacted_revision() {
            return Err(Status::out_of_range(COMPACTED));
        }
        let outcome = attached
            .client
            .write(CommandOp::Compact { revision })
            .await
            .map_err(status)?;
        tracing::info!(revision, "metastorage compacted through the etcd endpoint");
        Ok(Response::new(CompactionResponse {
            header: Some(attached.header(outcome.revision)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_etcd_range_end_forms() {
        assert_eq!(Keys::of(b"a", b"").unwrap(), Keys::One(b"a".to_vec()));
        assert_eq!(
            Keys::of(b"a", b"\0").unwrap(),
            Keys::Range(b"a".to_vec(), None)
        );
        let r = Keys::of(b"a/", b"a0").unwrap();
        assert!(r.matches(b"a/x") && !r.matches(b"a0") && !r.matches(b"a"));
        assert!(Keys::of(b"", b"").is_err());
    }

    #[test]
    fn compares_follow_etcd() {
        let c = |target: CompareTarget, result: CompareResult, union| Compare {
            result: result as i32,
            target: target as i32,
            key: b"k".to_vec(),
            range_end: Vec::new(),
            target_union: Some(union),
        };
        let kv = KeyValue {
            version: 3,
            create_revision: 5,
            mod_revision: 9,
            value: b"m".to_vec(),
            ..KeyValue::default()
        };
        let cases = [
            (
                CompareTarget::Version,
                CompareResult::Equal,
                TargetUnion::Version(3),
                true,
            ),
            (
                CompareTarget::Version,
                CompareResult::Greater,
                TargetUnion::Version(2),
                true,
            ),
            (
                CompareTarget::Version,
                CompareResult::Less,
                TargetUnion::Version(3),
                false,
            ),
            (
                CompareTarget::Create,
                CompareResult::NotEqual,
                TargetUnion::CreateRevision(5),
                false,
            ),
            (
                CompareTarget::Mod,
                CompareResult::Less,
                TargetUnion::ModRevision(10),
                true,
            ),
            (
                CompareTarget::Value,
                CompareResult::Greater,
                TargetUnion::Value(b"a".to_vec()),
                true,
            ),
            (
                CompareTarget::Value,
                CompareResult::Equal,
                TargetUnion::Value(b"m".to_vec()),
                true,
            ),
            (
                CompareTarget::Lease,
                CompareResult::Equal,
                TargetUnion::Lease(0),
                true,
            ),
        ];
        for (target, result, union, expected) in cases {
            let compare = c(target, result, union);
            assert_eq!(
                compare_kv(&compare, target, result, &kv),
                expected,
                "{compare:?}"
            );
        }
    }

    #[test]
    fn a_key_is_written_once_per_request() {
        let mut w = Writes::default();
        w.put(b"a".to_vec(), b"1".to_vec()).unwrap();
        assert!(w.put(b"a".to_vec(), b"2".to_vec()).is_err());
        assert!(w.remove(b"a".to_vec()).is_err());
        w.remove(b"b".to_vec()).unwrap();
        assert!(w.put(b"b".to_vec(), b"1".to_vec()).is_err());
    }
}
