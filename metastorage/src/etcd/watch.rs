//! The `Watch` service: one bidirectional stream carries many watches.
//!
//! Each watch is a task that reads revision after revision from the local storage
//! (`revision_entries`), from its start revision on, and sends one response per revision
//! that has matching events. Replay and live delivery are the same loop, so a watch sees
//! every revision once, in order; it waits for the next revision on the state machine's
//! applied-revision channel. Responses of all watches of a stream go through one channel;
//! `created` is sent before the watch task starts and `canceled` after it ended.
use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::{Stream, StreamExt};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{
    kv::Keys,
    proto::{
        etcdserverpb::{
            watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch,
            WatchCreateRequest, WatchRequest, WatchResponse,
        },
        mvccpb::{event::EventType, Event, KeyValue},
    },
    to_i64, Attached, Backend,
};
use crate::error::Error;

/// How long a `progress_notify` watch stays silent before an empty progress response.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);
/// Responses buffered per stream before the watch tasks wait for the client.
const STREAM_BUFFER: usize = 256;

type Outbound = mpsc::Sender<Result<WatchResponse, Status>>;

/// The `Watch` service.
pub(crate) struct WatchService(pub(crate) Arc<Backend>);

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let attached = self.0.attached()?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let tasks = self.0.tasks();
        let stream = StreamState {
            attached,
            tx,
            watches: HashMap::new(),
            next_id: 0,
            tasks: tasks.clone(),
        };
        tasks.spawn(stream.run(inbound));
        let out = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// One running watch of a stream.
struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    /// Every revision up to this one was sent (or had no event for the watch).
    delivered: Arc<AtomicU64>,
}

/// The state of one watch stream, driven by its inbound requests.
struct StreamState {
    attached: Arc<Attached>,
    tx: Outbound,
    watches: HashMap<i64, Running>,
    next_id: i64,
    tasks: tokio_util::task::TaskTracker,
}

impl StreamState {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        let stopping = self.attached.stopping.clone();
        loop {
            let next = tokio::select! {
                () = stopping.cancelled() => {
                    let node = self.attached.local.clone();
                    self.close().await;
                    // never waits: a client that does not read must not hold the stop up
                    let _ = self.tx.try_send(Err(Status::unavailable(format!(
                        "metastorage on node {node} is stopping"
                    ))));
                    return;
                }
                () = self.tx.closed() => break,
                next = inbound.next() => next,
            };
            match next {
                Some(Ok(req)) => {
                    if let Err(e) = self.handle(req).await {
                        let _ = self.tx.try_send(Err(e));
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "etcd watch stream failed");
                    break;
                }
                None => break,
            }
        }
        self.close().await;
    }

    /// Ends every watch of the stream and waits for their tasks.
    async fn close(&mut self) {
        for (_, w) in self.watches.drain() {
            w.cancel.cancel();
            let _ = w.task.await;
        }
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Status> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if let Some(w) = self.watches.remove(&cancel.watch_id) {
                    w.cancel.cancel();
                    let _ = w.task.await;
                    self.send(WatchResponse {
                        header: Some(self.attached.header(self.attached.storage.revision())),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..WatchResponse::default()
                    })
                    .await;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let current = self.attached.storage.revision();
                let revision = self
                    .watches
                    .values()
                    .map(|w| w.delivered.load(Ordering::Acquire))
                    .min()
                    .unwrap_or(current);
                self.send(WatchResponse {
                    header: Some(self.attached.header(revision)),
                    watch_id: -1,
                    ..WatchResponse::default()
                })
                .await;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Sends a control response; gives up when the MetaStorage stops (a client that does
    /// not read must not hold the stop up).
    async fn send(&self, resp: WatchResponse) {
        tokio::select! {
            () = self.attached.stopping.cancelled() => {}
            _ = self.tx.send(Ok(resp)) => {}
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Status> {
        let current = self.attached.storage.revision();
        let header = Some(self.attached.header(current));
        let id = if create.watch_id != 0 {
            create.watch_id
        } else {
            while self.watches.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let refuse = |reason: String| WatchResponse {
            header,
            watch_id: id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..WatchResponse::default()
        };
        if id < 0 || self.watches.contains_key(&id) {
            self.send(refuse(format!(
                "etcdserver: watch id {id} is in use or invalid"
            )))
            .await;
            return Ok(());
        }
        let keys = match Keys::of(&create.key, &create.range_end) {
            Ok(k) => k,
            Err(e) => {
                self.send(refuse(e.message().to_owned())).await;
                return Ok(());
            }
        };
        if create.start_revision < 0 {
            self.send(refuse(format!(
                "start revision must not be negative: {}",
                create.start_revision
            )))
            .await;
            return Ok(());
        }
        let start = match u64::try_from(create.start_revision) {
            Ok(0) | Err(_) => current + 1,
            Ok(rev) => rev,
        };
        self.send(WatchResponse {
            header,
            watch_id: id,
            created: true,
            ..WatchResponse::default()
        })
        .await;
        let filters: Vec<FilterType> = create
            .filters
            .iter()
            .filter_map(|f| FilterType::try_from(*f).ok())
            .collect();
        let watch = WatchTask {
            attached: Arc::clone(&self.attached),
            tx: self.tx.clone(),
            id,
            keys,
            no_put: filters.contains(&FilterType::Noput),
            no_delete: filters.contains(&FilterType::Nodelete),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            delivered: Arc::new(AtomicU64::new(start.saturating_sub(1))),
        };
        let cancel = self.attached.stopping.child_token();
        let delivered = Arc::clone(&watch.delivered);
        let task = self.tasks.spawn(watch.run(start, cancel.clone()));
        self.watches.insert(
            id,
            Running {
                cancel,
                task,
                delivered,
            },
        );
        self.next_id = self.next_id.max(id.saturating_add(1));
        Ok(())
    }
}

/// One watch: delivers revisions from its start on.
struct WatchTask {
    attached: Arc<Attached>,
    tx: Outbound,
    id: i64,
    keys: Keys,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    delivered: Arc<AtomicU64>,
}

/// Why a watch ended.
enum End {
    /// Cancelled, or the client went away.
    Closed,
    /// The start revision (or the next one) is compacted: history from `.0` on is there.
    Compacted(u64),
    /// A storage failure.
    Failed(Status),
}

impl WatchTask {
    async fn run(self, start: u64, cancel: CancellationToken) {
        let end = self.deliver(start, &cancel).await;
        let current = self.attached.storage.revision();
        let resp = match end {
            End::Closed => return,
            End::Compacted(from) => WatchResponse {
                header: Some(self.attached.header(current)),
                watch_id: self.id,
                canceled: true,
                compact_revision: to_i64(from),
                cancel_reason: super::COMPACTED.to_owned(),
                ..WatchResponse::default()
            },
            End::Failed(status) => WatchResponse {
                header: Some(self.attached.header(current)),
                watch_id: self.id,
                canceled: true,
                cancel_reason: status.message().to_owned(),
                ..WatchResponse::default()
            },
        };
        tokio::select! {
            () = cancel.cancelled() => {}
            _ = self.tx.send(Ok(resp)) => {}
        }
    }

    async fn deliver(&self, start: u64, cancel: &CancellationToken) -> End {
        let storage = &self.attached.storage;
        let mut revisions = self.attached.revisions.clone();
        let mut next = start;
        loop {
            let compacted = storage.compacted_revision();
            if next <= compacted {
                return End::Compacted(compacted + 1);
            }
            let current = storage.revision();
            while next <= current {
                let events = match self.events(next) {
                    Ok(events) => events,
                    Err(Error::Compacted { compacted, .. }) => {
                        return End::Compacted(compacted.max(storage.compacted_revision()) + 1)
                    }
                    Err(e) => return End::Failed(super::status(e)),
                };
                if !events.is_empty() {
                    let resp = WatchResponse {
                        header: Some(self.attached.header(next)),
                        watch_id: self.id,
                        events,
                        ..WatchResponse::default()
                    };
                    tokio::select! {
                        () = cancel.cancelled() => return End::Closed,
                        r = self.tx.send(Ok(resp)) => if r.is_err() { return End::Closed },
                    }
                }
                self.delivered.store(next, Ordering::Release);
                next += 1;
            }
            revisions.borrow_and_update();
            if storage.revision() >= next {
                continue;
            }
            let progress = async {
                if self.progress_notify {
                    tokio::time::sleep(PROGRESS_INTERVAL).await;
                } else {
                    futures::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return End::Closed,
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return End::Closed;
                    }
                }
                () = progress => {
                    let resp = WatchResponse {
                        header: Some(self.attached.header(next - 1)),
                        watch_id: self.id,
                        ..WatchResponse::default()
                    };
                    if self.tx.send(Ok(resp)).await.is_err() {
                        return End::Closed;
                    }
                }
            }
        }
    }

    /// The events of `revision` this watch sees, in key order.
    fn events(&self, revision: u64) -> crate::error::Result<Vec<Event>> {
        let storage = &self.attached.storage;
        let mut events = Vec::new();
        for entry in storage.revision_entries(revision)? {
            if !self.keys.matches(&entry.key) {
                continue;
            }
            let delete = entry.tombstone;
            if (delete && self.no_delete) || (!delete && self.no_put) {
                continue;
            }
            let kv = if delete {
                KeyValue {
                    key: entry.key.clone(),
                    mod_revision: to_i64(revision),
                    ..KeyValue::default()
                }
            } else {
                self.attached.key_value(&entry, false)?
            };
            let prev_kv = if self.prev_kv && revision > 1 {
                match storage.get(&entry.key, Some(revision - 1)) {
                    Ok(Some(prev)) if !prev.tombstone => {
                        Some(self.attached.key_value(&prev, false)?)
                    }
                    Ok(_) | Err(Error::Compacted { .. }) => None,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            events.push(Event {
                r#type: if delete {
                    EventType::Delete as i32
                } else {
                    EventType::Put as i32
                },
                kv: Some(kv),
                prev_kv,
            });
        }
        Ok(events)
    }
}
