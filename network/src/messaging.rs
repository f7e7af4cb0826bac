//! Typed messaging between nodes over multiplexed TCP connections.
//!
//! Each node keeps one outgoing connection per peer launch; every message group, one-way
//! messages, requests and the replies to them share it. Replies to requests a peer sent go
//! back on the connection the request came in on (the peer's own outgoing connection).
//! One-way messages are written by a single writer per peer, so they arrive in the order
//! `send` was called; the receiver runs one-way handlers one after the other, in order.
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{future::BoxFuture, FutureExt, SinkExt, StreamExt};
use lifecycle::{FaultReporter, StopGuard};
use parking_lot::{Mutex, RwLock};
use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{broadcast, mpsc, oneshot},
};
use tokio_util::{
    codec::{FramedRead, FramedWrite},
    sync::CancellationToken,
    task::TaskTracker,
};
use uuid::Uuid;

use crate::{
    config::NetworkConfiguration,
    error::{Error, Result},
    topology::{ClusterNode, TopologyService},
    wire::{self, Handshake, HandshakeReply, Kind, PROTOCOL_VERSION},
};

/// A typed message. Every type sent with [`MessagingService::send`] or
/// [`MessagingService::invoke`] belongs to a message group, the unit handlers register for.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
    /// The message group; unique per message type in a cluster.
    const GROUP: u16;
}

/// Capacity of a peer's outgoing queue: `send` waits when it is full (back-pressure).
const PEER_QUEUE: usize = 8192;
/// Frames written before a flush is forced.
const MAX_BATCH: usize = 512;

type Reply = std::result::Result<Vec<u8>, String>;
type ErasedHandler =
    Arc<dyn Fn(ClusterNode, &[u8]) -> Result<BoxFuture<'static, Reply>> + Send + Sync>;

struct Pending {
    tx: oneshot::Sender<std::result::Result<Bytes, Error>>,
    peer: ClusterNode,
}

struct PeerHandle {
    serial: u64,
    tx: mpsc::Sender<Bytes>,
}

/// What a quick connection attempt says about a peer's listening address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// Something accepts connections there.
    Listening,
    /// The address refused the connection: no process listens there (the peer's process is
    /// gone, while its host still answers).
    Refused,
    /// Neither in time, or another error: the peer may be slow, partitioned or gone.
    Unknown,
}

/// What a started messaging service knows about itself.
#[derive(Clone)]
pub(crate) struct Local {
    pub(crate) node: ClusterNode,
    pub(crate) config: NetworkConfiguration,
    pub(crate) faults: FaultReporter,
    pub(crate) tracker: TaskTracker,
    pub(crate) cancel: CancellationToken,
}

pub(crate) struct Inner {
    handlers: RwLock<HashMap<u16, ErasedHandler>>,
    started: AtomicBool,
    local: RwLock<Option<Local>>,
    cluster_id: RwLock<Option<Uuid>>,
    peers: Mutex<HashMap<Uuid, PeerHandle>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    guard: StopGuard,
    topology: TopologyService,
    /// Peers whose connection with this node broke (see [`MessagingService::connection_losses`]).
    losses: broadcast::Sender<ClusterNode>,
}

/// Sends typed messages to members and dispatches incoming ones to handlers. Cheap to clone.
#[derive(Clone)]
pub struct MessagingService {
    pub(crate) inner: Arc<Inner>,
}

impl MessagingService {
    pub(crate) fn new(topology: TopologyService, guard: StopGuard) -> Self {
        Self {
            inner: Arc::new(Inner {
                handlers: RwLock::new(HashMap::new()),
                started: AtomicBool::new(false),
                local: RwLock::new(None),
                cluster_id: RwLock::new(None),
                peers: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                guard,
                topology,
                losses: broadcast::Sender::new(64),
            }),
        }
    }

    /// Register the handler of message group `M::GROUP`, before the component starts.
    ///
    /// The handler serves both one-way messages (its reply is dropped) and requests: it
    /// responds by returning, and the reply (or its error) goes back to the caller of
    /// [`invoke`](Self::invoke) on the connection the request came in on. A handler
    /// that fails or panics fails that one request; the connection and the node go on.
    pub fn register_handler<M, R, F, Fut>(&self, handler: F) -> Result<()>
    where
        M: Message,
        R: Serialize + Send + 'static,
        F: Fn(ClusterNode, M) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, String>> + Send + 'static,
    {
        let group = M::GROUP;
        if self.inner.started.load(Ordering::SeqCst) {
            return Err(Error::RegisteredAfterStart(group));
        }
        let erased: ErasedHandler = Arc::new(move |from: ClusterNode, payload: &[u8]| {
            let msg: M = postcard::from_bytes(payload).map_err(|e| Error::Codec {
                group,
                reason: e.to_string(),
            })?;
            let fut = handler(from, msg);
            Ok(async move {
                let reply = fut.await?;
                postcard::to_stdvec(&reply).map_err(|e| format!("encode reply: {e}"))
            }
            .boxed())
        });
        let mut handlers = self.inner.handlers.write();
        if handlers.contains_key(&group) {
            return Err(Error::DuplicateHandler(group));
        }
        handlers.insert(group, erased);
        Ok(())
    }

    /// Register a one-way handler: like [`register_handler`](Self::register_handler) with no
    /// reply (an `invoke` of this group gets `()`).
    pub fn register_one_way<M, F, Fut>(&self, handler: F) -> Result<()>
    where
        M: Message,
        F: Fn(ClusterNode, M) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.register_handler::<M, (), _, _>(move |from, msg| {
            let fut = handler(from, msg);
            async move {
                fut.await;
                Ok(())
            }
        })
    }

    /// Peers whose connection with this node broke while both were running: an incoming
    /// connection that ended, or an outgoing one that failed. A hint for fast failure
    /// detection (a Raft follower losing its leader), not a verdict: check with
    /// [`probe`](Self::probe) before acting on it. A receiver that lags loses the oldest
    /// events.
    pub fn connection_losses(&self) -> broadcast::Receiver<ClusterNode> {
        self.inner.losses.subscribe()
    }

    /// Try a bare TCP connection to `node`'s address (no handshake: the peer sees a
    /// connection that closes at once and drops it silently) and say what happened within
    /// `timeout`.
    pub async fn probe(&self, node: &ClusterNode, timeout: Duration) -> Reachability {
        match tokio::time::timeout(timeout, TcpStream::connect(node.address)).await {
            Ok(Ok(_)) => Reachability::Listening,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Reachability::Refused
            }
            Ok(Err(_)) | Err(_) => Reachability::Unknown,
        }
    }

    /// Fire and forget: queue `msg` for `to`. Messages to one peer arrive in the order of the
    /// `send` calls that returned. Delivery is best effort (a connection that breaks loses
    /// what was in flight); use [`invoke`](Self::invoke) for an acknowledgement.
    pub async fn send<M: Message>(&self, to: &ClusterNode, msg: M) -> Result<()> {
        self.check_running()?;
        let payload = encode_payload(&msg, M::GROUP)?;
        if self.is_local(to) {
            let fut = self.deliver_local(M::GROUP, &payload);
            return self.inner.guard.wrap(fut).await?.map(|_| ());
        }
        let frame = wire::encode_envelope(M::GROUP, 0, Kind::OneWay, &payload)?;
        self.enqueue(to, frame).await
    }

    /// Send `msg` to `to` and wait up to `timeout` for its reply.
    pub async fn invoke<M: Message, R: DeserializeOwned>(
        &self,
        to: &ClusterNode,
        msg: M,
        timeout: Duration,
    ) -> Result<R> {
        self.check_running()?;
        let begin = Instant::now();
        let payload = encode_payload(&msg, M::GROUP)?;
        let bytes = if self.is_local(to) {
            let fut = self.deliver_local(M::GROUP, &payload);
            match self
                .inner
                .guard
                .wrap(tokio::time::timeout(timeout, fut))
                .await?
            {
                Ok(r) => Bytes::from(r?),
                Err(_) => return Err(timeout_error(to, timeout)),
            }
        } else {
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.inner.pending.lock().insert(
                id,
                Pending {
                    tx,
                    peer: to.clone(),
                },
            );
            let cleanup = RemovePending {
                inner: &self.inner,
                id,
            };
            let frame = wire::encode_envelope(M::GROUP, id, Kind::Request, &payload)?;
            self.enqueue(to, frame).await?;
            let res = self
                .inner
                .guard
                .wrap(tokio::time::timeout(timeout, rx))
                .await?;
            drop(cleanup);
            match res {
                Err(_) => return Err(timeout_error(to, timeout)),
                Ok(Err(_)) => {
                    return Err(Error::ConnectionLost {
                        peer: to.name.clone(),
                        reason: "node is stopping".into(),
                    })
                }
                Ok(Ok(r)) => r?,
            }
        };
        metrics::histogram!("ignite_network_invoke_seconds").record(begin.elapsed().as_secs_f64());
        postcard::from_bytes(&bytes).map_err(|e| Error::Codec {
            group: M::GROUP,
            reason: format!("reply: {e}"),
        })
    }

    fn check_running(&self) -> Result<()> {
        if self.inner.guard.is_blocked() {
            return Err(Error::Stopping(self.inner.guard.error()));
        }
        if self.inner.local.read().is_none() {
            return Err(Error::InvalidState("not started"));
        }
        Ok(())
    }

    fn is_local(&self, to: &ClusterNode) -> bool {
        self.inner
            .local
            .read()
            .as_ref()
            .is_some_and(|l| l.node.launch_id == to.launch_id)
    }

    async fn deliver_local(&self, group: u16, payload: &[u8]) -> Result<Vec<u8>> {
        let local = self.local()?;
        let handler = self
            .inner
            .handlers
            .read()
            .get(&group)
            .cloned()
            .ok_or_else(|| Error::Remote {
                peer: local.node.name.clone(),
                group,
                reason: format!("no handler for message group {group}"),
            })?;
        run_handler(&handler, local.node.clone(), payload)?
            .await
            .map_err(|reason| Error::Remote {
                peer: local.node.name.clone(),
                group,
                reason,
            })
    }

    fn local(&self) -> Result<Local> {
        self.inner
            .local
            .read()
            .clone()
            .ok_or(Error::InvalidState("not started"))
    }

    /// Put a frame on the peer's queue, starting its connection task if needed.
    async fn enqueue(&self, to: &ClusterNode, frame: Bytes) -> Result<()> {
        let mut frame = frame;
        for _ in 0..2 {
            let tx = self.peer_sender(to)?;
            match self.inner.guard.wrap(tx.send(frame)).await? {
                Ok(()) => return Ok(()),
                // The peer task ended (idle or gone) between lookup and send: retry once.
                Err(mpsc::error::SendError(f)) => frame = f,
            }
        }
        Err(Error::ConnectionLost {
            peer: to.name.clone(),
            reason: "connection task ended".into(),
        })
    }

    fn peer_sender(&self, to: &ClusterNode) -> Result<mpsc::Sender<Bytes>> {
        let mut peers = self.inner.peers.lock();
        if let Some(p) = peers.get(&to.launch_id) {
            if !p.tx.is_closed() {
                return Ok(p.tx.clone());
            }
        }
        let local = self.local()?;
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let serial = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        peers.insert(
            to.launch_id,
            PeerHandle {
                serial,
                tx: tx.clone(),
            },
        );
        drop(peers);
        let inner = Arc::clone(&self.inner);
        let peer = to.clone();
        let task_local = local.clone();
        lifecycle::spawn_supervised(
            &local.tracker,
            &local.faults,
            "network",
            "peer-connection",
            async move {
                peer_task(inner, task_local, peer, serial, rx).await;
                Ok(())
            },
        );
        Ok(tx)
    }

    pub(crate) fn set_cluster_id(&self, id: Option<Uuid>) {
        *self.inner.cluster_id.write() = id;
    }

    pub(crate) fn mark_started(&self, local: Local) {
        self.inner.started.store(true, Ordering::SeqCst);
        *self.inner.local.write() = Some(local);
    }

    /// Forget a peer launch that left the topology: close its queue, fail its invokes.
    pub(crate) fn forget_peer(&self, node: &ClusterNode) {
        self.inner.peers.lock().remove(&node.launch_id);
        fail_pending(
            &self.inner,
            node.launch_id,
            "node left the physical topology",
        );
    }

    /// Fail every pending invoke and close every queue (on stop).
    pub(crate) fn shutdown(&self) {
        self.inner.peers.lock().clear();
        let pending: Vec<Pending> = self.inner.pending.lock().drain().map(|(_, p)| p).collect();
        for p in pending {
            let _ = p.tx.send(Err(Error::Stopping(self.inner.guard.error())));
        }
    }

    /// Accepts connections until `stop`; returning drops the listener.
    pub(crate) async fn accept_loop(self, listener: TcpListener, stop: CancellationToken) {
        let Ok(local) = self.local() else { return };
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    let inner = Arc::clone(&self.inner);
                    let l = local.clone();
                    local.tracker.spawn(async move {
                        if let Err(e) = serve_inbound(inner, l, stream, remote).await {
                            tracing::warn!(remote = %remote, error = %e, "incoming connection dropped");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        }
    }
}

struct RemovePending<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for RemovePending<'_> {
    fn drop(&mut self) {
        self.inner.pending.lock().remove(&self.id);
    }
}

fn timeout_error(to: &ClusterNode, timeout: Duration) -> Error {
    Error::Timeout {
        peer: to.name.clone(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

fn encode_payload<M: Serialize>(msg: &M, group: u16) -> Result<Vec<u8>> {
    postcard::to_stdvec(msg).map_err(|e| Error::Codec {
        group,
        reason: e.to_string(),
    })
}

fn fail_pending(inner: &Inner, launch_id: Uuid, reason: &str) {
    let failed: Vec<Pending> = {
        let mut pending = inner.pending.lock();
        let ids: Vec<u64> = pending
            .iter()
            .filter(|(_, p)| p.peer.launch_id == launch_id)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| pending.remove(&id))
            .collect()
    };
    for p in failed {
        let _ = p.tx.send(Err(Error::ConnectionLost {
            peer: p.peer.name.clone(),
            reason: reason.to_owned(),
        }));
    }
}

/// Call a handler, turning a panic while building its future into an error.
fn run_handler(
    handler: &ErasedHandler,
    from: ClusterNode,
    payload: &[u8],
) -> Result<BoxFuture<'static, Reply>> {
    let fut = std::panic::catch_unwind(AssertUnwindSafe(|| handler(from, payload)))
        .map_err(|p| Error::Malformed(format!("handler panicked: {}", panic_text(&p))))??;
    Ok(async move {
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(r) => r,
            Err(p) => Err(format!("handler panicked: {}", panic_text(&p))),
        }
    }
    .boxed())
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// The outgoing connection to one peer launch: connect (with backoff), write the queue,
/// read replies; reconnect on failure; end when idle, when the peer left, or on stop.
async fn peer_task(
    inner: Arc<Inner>,
    local: Local,
    peer: ClusterNode,
    serial: u64,
    mut rx: mpsc::Receiver<Bytes>,
) {
    let mut backoff = Duration::from_millis(20);
    let mut failures = 0u32;
    loop {
        if local.cancel.is_cancelled() {
            break;
        }
        let connected = tokio::select! {
            () = local.cancel.cancelled() => break,
            c = dial(&inner, &local, &peer) => c,
        };
        match connected {
            Ok(stream) => {
                failures = 0;
                backoff = Duration::from_millis(20);
                match run_outbound(&inner, &local, &peer, stream, &mut rx).await {
                    Ended::Closed => break,
                    Ended::Broken(reason) => {
                        tracing::debug!(peer = %peer.name, %reason, "connection to peer lost; reconnecting");
                        fail_pending(&inner, peer.launch_id, &reason);
                        report_loss(&inner, &local, &peer);
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let gone = !inner.topology.contains(&peer);
                let fatal = matches!(e, Error::Handshake { .. } | Error::WrongPeer { .. });
                tracing::debug!(peer = %peer.name, address = %peer.address, error = %e, failures, "connect to peer failed");
                fail_pending(&inner, peer.launch_id, &e.to_string());
                if fatal || (gone && failures >= 3) {
                    if fatal {
                        tracing::warn!(peer = %peer.name, address = %peer.address, error = %e, "giving up on peer");
                    }
                    break;
                }
                tokio::select! {
                    () = local.cancel.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    // Remove our own entry only: a newer task may have replaced it.
    let mut peers = inner.peers.lock();
    if peers
        .get(&peer.launch_id)
        .is_some_and(|p| p.serial == serial)
    {
        peers.remove(&peer.launch_id);
    }
    drop(peers);
    rx.close();
    // Frames still queued are dropped (best effort); invokes waiting on them fail now rather
    // than at their timeout.
    if !rx.is_empty() {
        fail_pending(&inner, peer.launch_id, "connection closed");
    }
}

enum Ended {
    /// Queue closed, idle, or stop: do not reconnect.
    Closed,
    /// The connection broke: reconnect.
    Broken(String),
}

async fn dial(inner: &Arc<Inner>, local: &Local, peer: &ClusterNode) -> Result<TcpStream> {
    let addr = peer.address;
    let stream = tokio::time::timeout(local.config.connect_timeout(), TcpStream::connect(addr))
        .await
        .map_err(|_| Error::Io {
            addr: addr.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        })?
        .map_err(|source| Error::Io {
            addr: addr.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let hello = local_handshake(inner, local, Some(peer.launch_id));
    let mut framed =
        tokio_util::codec::Framed::new(stream, wire::frame_codec(local.config.max_frame()));
    let exchange = async {
        framed
            .send(wire::encode_frame(&hello)?)
            .await
            .map_err(|source| Error::Io {
                addr: addr.to_string(),
                source,
            })?;
        match framed.next().await {
            Some(Ok(frame)) => wire::decode_frame::<HandshakeReply>(&frame),
            Some(Err(e)) => Err(Error::Malformed(format!("handshake reply: {e}"))),
            None => Err(Error::Handshake {
                addr,
                reason: "peer closed the connection".into(),
            }),
        }
    };
    let reply = tokio::time::timeout(local.config.handshake_timeout(), exchange)
        .await
        .map_err(|_| Error::Handshake {
            addr,
            reason: "no handshake reply in time".into(),
        })??;
    match reply {
        HandshakeReply::Rejected(reason) => {
            tracing::warn!(peer = %peer.name, address = %addr, %reason, "handshake refused by peer");
            Err(Error::Handshake { addr, reason })
        }
        HandshakeReply::Accepted(theirs) => {
            if let Err(reason) = check_handshake(inner, local, &theirs) {
                tracing::warn!(peer = %peer.name, address = %addr, %reason, "refusing peer's handshake");
                return Err(Error::Handshake { addr, reason });
            }
            if theirs.node_id != peer.id || theirs.launch_id != peer.launch_id {
                return Err(Error::WrongPeer {
                    addr,
                    expected: peer.launch_id,
                    actual: format!("{} (launch {})", theirs.name, theirs.launch_id),
                });
            }
            Ok(framed.into_inner())
        }
    }
}

fn local_handshake(inner: &Inner, local: &Local, expected_launch: Option<Uuid>) -> Handshake {
    Handshake {
        version: PROTOCOL_VERSION,
        name: local.node.name.clone(),
        node_id: local.node.id,
        launch_id: local.node.launch_id,
        address: local.node.address,
        cluster_id: *inner.cluster_id.read(),
        expected_launch,
    }
}

/// Why a peer's handshake is refused, if it is.
fn check_handshake(
    inner: &Inner,
    local: &Local,
    theirs: &Handshake,
) -> std::result::Result<(), String> {
    if theirs.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version mismatch: node {} speaks {}, this node speaks {PROTOCOL_VERSION}",
            theirs.name, theirs.version
        ));
    }
    if theirs.node_id == local.node.id {
        return Err(format!(
            "node {} has this node's id {}",
            theirs.name, theirs.node_id
        ));
    }
    let ours = *inner.cluster_id.read();
    if let (Some(a), Some(b)) = (ours, theirs.cluster_id) {
        if a != b {
            return Err(format!(
                "cluster id mismatch: node {} is in cluster {b}, this node is in cluster {a}",
                theirs.name
            ));
        }
    }
    if let Some(expected) = theirs.expected_launch {
        if expected != local.node.launch_id {
            return Err(format!(
                "node {} expects launch {expected}, this node is launch {}",
                theirs.name, local.node.launch_id
            ));
        }
    }
    Ok(())
}

async fn run_outbound(
    inner: &Arc<Inner>,
    local: &Local,
    peer: &ClusterNode,
    stream: TcpStream,
    queue: &mut mpsc::Receiver<Bytes>,
) -> Ended {
    let (read, write) = stream.into_split();
    let (reply_tx, mut reply_rx) = mpsc::channel(PEER_QUEUE);
    let conn_cancel = local.cancel.child_token();
    let reader = {
        let inner = Arc::clone(inner);
        let local = local.clone();
        let peer = peer.clone();
        let cancel = conn_cancel.clone();
        local.tracker.clone().spawn(async move {
            let r = read_loop(&inner, &local, &peer, read, reply_tx, &cancel).await;
            cancel.cancel();
            r
        })
    };
    let _gauge = ConnectionGauge::new();
    tracing::debug!(peer = %peer.name, "connected to peer");
    let ended = write_loop(local, write, Some(queue), &mut reply_rx, &conn_cancel).await;
    conn_cancel.cancel();
    let read_result = reader.await;
    match ended {
        WriteEnd::QueueClosed | WriteEnd::Idle => Ended::Closed,
        _ if local.cancel.is_cancelled() => Ended::Closed,
        WriteEnd::Failed(e) => Ended::Broken(e),
        WriteEnd::Cancelled => Ended::Broken(match read_result {
            Ok(Err(e)) => e.to_string(),
            _ => "peer closed the connection".to_owned(),
        }),
    }
}

enum WriteEnd {
    QueueClosed,
    Idle,
    Cancelled,
    Failed(String),
}

async fn write_loop<W: AsyncWrite + Unpin>(
    local: &Local,
    write: W,
    mut queue: Option<&mut mpsc::Receiver<Bytes>>,
    replies: &mut mpsc::Receiver<Bytes>,
    cancel: &CancellationToken,
) -> WriteEnd {
    let mut sink = FramedWrite::new(write, wire::frame_codec(local.config.max_frame()));
    let sent = metrics::counter!("ignite_network_messages_sent_total");
    let bytes_sent = metrics::counter!("ignite_network_bytes_sent_total");
    let idle = local.config.idle_timeout();
    loop {
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => return WriteEnd::Cancelled,
            r = replies.recv() => match r {
                Some(b) => b,
                None => return WriteEnd::Cancelled,
            },
            r = async {
                match queue.as_mut() {
                    Some(q) => q.recv().await,
                    None => std::future::pending().await,
                }
            } => match r {
                Some(b) => b,
                None => return WriteEnd::QueueClosed,
            },
            () = tokio::time::sleep(idle), if queue.is_some() => return WriteEnd::Idle,
        };
        let mut n = 1u64;
        let mut bytes = first.len() as u64;
        let fed: std::io::Result<()> = sink.feed(first).await;
        if let Err(e) = fed {
            return WriteEnd::Failed(e.to_string());
        }
        while (n as usize) < MAX_BATCH {
            let next = match replies.try_recv() {
                Ok(b) => Some(b),
                Err(_) => queue.as_mut().and_then(|q| q.try_recv().ok()),
            };
            let Some(b) = next else { break };
            n += 1;
            bytes += b.len() as u64;
            let fed: std::io::Result<()> = sink.feed(b).await;
            if let Err(e) = fed {
                return WriteEnd::Failed(e.to_string());
            }
        }
        let flushed: std::io::Result<()> = SinkExt::<Bytes>::flush(&mut sink).await;
        if let Err(e) = flushed {
            return WriteEnd::Failed(e.to_string());
        }
        sent.increment(n);
        bytes_sent.increment(bytes);
    }
}

/// Read frames until the peer closes, the input is bad, or the connection is cancelled.
async fn read_loop<R: AsyncRead + Unpin>(
    inner: &Arc<Inner>,
    local: &Local,
    peer: &ClusterNode,
    read: R,
    replies: mpsc::Sender<Bytes>,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut frames = FramedRead::new(read, wire::frame_codec(local.config.max_frame()));
    let received = metrics::counter!("ignite_network_messages_received_total");
    let bytes_received = metrics::counter!("ignite_network_bytes_received_total");
    loop {
        let frame = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            f = frames.next() => f,
        };
        let frame = match frame {
            None => return Ok(()),
            Some(Err(e)) => return Err(Error::Malformed(format!("frame: {e}"))),
            Some(Ok(f)) => f.freeze(),
        };
        received.increment(1);
        bytes_received.increment(frame.len() as u64 + 4);
        let env = wire::decode_envelope(&frame)?;
        match env.kind {
            Kind::Response | Kind::Failure => {
                let pending = inner.pending.lock().remove(&env.correlation);
                if let Some(p) = pending {
                    let result = if env.kind == Kind::Response {
                        Ok(frame.slice_ref(env.payload))
                    } else {
                        Err(Error::Remote {
                            peer: peer.name.clone(),
                            group: env.group,
                            reason: String::from_utf8_lossy(env.payload).into_owned(),
                        })
                    };
                    let _ = p.tx.send(result);
                }
            }
            Kind::OneWay | Kind::Request => {
                let handler = inner.handlers.read().get(&env.group).cloned();
                let Some(handler) = handler else {
                    return Err(Error::Malformed(format!(
                        "unknown message group {}",
                        env.group
                    )));
                };
                let fut = run_handler(&handler, peer.clone(), env.payload)?;
                if env.kind == Kind::OneWay {
                    // In order: the next one-way message waits for this handler.
                    let outcome = tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        r = fut => r,
                    };
                    if let Err(reason) = outcome {
                        tracing::warn!(peer = %peer.name, group = env.group, %reason, "one-way handler failed");
                    }
                } else {
                    let replies = replies.clone();
                    let group = env.group;
                    let correlation = env.correlation;
                    let peer_name = peer.name.clone();
                    let stopping = local.cancel.clone();
                    local.tracker.spawn(async move {
                        // A handler still running at stop is abandoned: stop never waits on it.
                        let outcome = tokio::select! {
                            () = stopping.cancelled() => return,
                            r = fut => r,
                        };
                        let (kind, payload) = match outcome {
                            Ok(bytes) => (Kind::Response, bytes),
                            Err(reason) => {
                                tracing::warn!(peer = %peer_name, group, %reason, "request handler failed");
                                (Kind::Failure, reason.into_bytes())
                            }
                        };
                        if let Ok(frame) = wire::encode_envelope(group, correlation, kind, &payload) {
                            let _ = replies.send(frame).await;
                        }
                    });
                }
            }
        }
    }
}

/// Serve one incoming connection: handshake, then read requests and write replies.
async fn serve_inbound(
    inner: Arc<Inner>,
    local: Local,
    stream: TcpStream,
    remote: SocketAddr,
) -> Result<()> {
    let mut framed =
        tokio_util::codec::Framed::new(stream, wire::frame_codec(local.config.max_frame()));
    let first = tokio::select! {
        () = local.cancel.cancelled() => return Ok(()),
        r = tokio::time::timeout(local.config.handshake_timeout(), framed.next()) => r,
    };
    let frame = match first {
        Err(_) => {
            return Err(Error::Handshake {
                addr: remote,
                reason: "no handshake in time".into(),
            })
        }
        Ok(None) => return Ok(()),
        Ok(Some(Err(e))) => return Err(Error::Malformed(format!("handshake frame: {e}"))),
        Ok(Some(Ok(f))) => f,
    };
    let theirs: Handshake = wire::decode_frame(&frame)?;
    if let Err(reason) = check_handshake(&inner, &local, &theirs) {
        tracing::warn!(remote = %remote, peer = %theirs.name, %reason, "refusing connection: handshake mismatch");
        let reply = wire::encode_frame(&HandshakeReply::Rejected(reason.clone()))?;
        let _ = tokio::time::timeout(local.config.handshake_timeout(), framed.send(reply)).await;
        return Err(Error::Handshake {
            addr: remote,
            reason,
        });
    }
    let ours = local_handshake(&inner, &local, None);
    framed
        .send(wire::encode_frame(&HandshakeReply::Accepted(ours))?)
        .await
        .map_err(|source| Error::Io {
            addr: remote.to_string(),
            source,
        })?;
    let peer = inner
        .topology
        .member_by_id(theirs.node_id)
        .filter(|m| m.launch_id == theirs.launch_id)
        .unwrap_or(ClusterNode {
            name: theirs.name.clone(),
            id: theirs.node_id,
            launch_id: theirs.launch_id,
            address: theirs.address,
            metadata: Default::default(),
        });
    let parts = framed.into_parts();
    if !parts.read_buf.is_empty() {
        // The dialer waits for our reply before sending: anything buffered is a violation.
        return Err(Error::Malformed("data before the handshake reply".into()));
    }
    let (read, write) = parts.io.into_split();
    let (reply_tx, mut reply_rx) = mpsc::channel(PEER_QUEUE);
    let conn_cancel = local.cancel.child_token();
    let _gauge = ConnectionGauge::new();
    tracing::debug!(peer = %peer.name, remote = %remote, "accepted connection from peer");
    let writer = {
        let local = local.clone();
        let cancel = conn_cancel.clone();
        local.tracker.clone().spawn(async move {
            let _ = write_loop(&local, write, None, &mut reply_rx, &cancel).await;
            cancel.cancel();
        })
    };
    let result = read_loop(&inner, &local, &peer, read, reply_tx, &conn_cancel).await;
    conn_cancel.cancel();
    let _ = writer.await;
    report_loss(&inner, &local, &peer);
    result
}

/// Tell [`MessagingService::connection_losses`] subscribers that the connection with `peer`
/// ended, unless this node is stopping.
fn report_loss(inner: &Inner, local: &Local, peer: &ClusterNode) {
    if !local.cancel.is_cancelled() {
        // no subscriber is fine
        let _ = inner.losses.send(peer.clone());
    }
}

/// Counts open connections in the `ignite_network_connections` gauge.
struct ConnectionGauge;

impl ConnectionGauge {
    fn new() -> Self {
        metrics::gauge!("ignite_network_connections").increment(1.0);
        Self
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!("ignite_network_connections").decrement(1.0);
    }
}
