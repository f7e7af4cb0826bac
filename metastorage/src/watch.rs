//! Watches (DESIGN section 6): exact, prefix and range watches, delivered per revision.
//!
//! Watches are registered before [`WatchProcessor::deploy`]. After it, one task delivers
//! every revision from the recovery revision + 1 on, reading each revision's entries from
//! the storage (so replay after a restart and live delivery are the same code path: no gap,
//! no duplicate). Each watch gets one [`WatchEvent`] per revision that touches it, with all
//! of that revision's matching entries; the listeners of one revision run concurrently and
//! all finish before the next revision starts. A failing listener stops delivery and is
//! reported as a fault: nothing is skipped silently.
use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::future::join_all;
use lifecycle::{spawn_supervised, BoxError, FaultReporter, Stopping};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    entry::Entry,
    error::{Error, Result},
    storage::KeyValueStorage,
};

/// Which keys a watch sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyMatcher {
    /// One key.
    Exact(Vec<u8>),
    /// Keys starting with the prefix.
    Prefix(Vec<u8>),
    /// Keys in `[from, to)`; `to: None` has no upper bound.
    Range {
        /// Lower bound, included.
        from: Vec<u8>,
        /// Upper bound, excluded.
        to: Option<Vec<u8>>,
    },
}

impl KeyMatcher {
    /// Whether `key` matches.
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            KeyMatcher::Exact(k) => k == key,
            KeyMatcher::Prefix(p) => key.starts_with(p),
            KeyMatcher::Range { from, to } => {
                key >= from.as_slice() && to.as_deref().is_none_or(|to| key < to)
            }
        }
    }
}

impl std::fmt::Display for KeyMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self {
            KeyMatcher::Exact(k) => write!(f, "key {}", s(k)),
            KeyMatcher::Prefix(p) => write!(f, "prefix {}", s(p)),
            KeyMatcher::Range { from, to: Some(to) } => {
                write!(f, "range [{}, {})", s(from), s(to))
            }
            KeyMatcher::Range { from, to: None } => write!(f, "range [{}, ..)", s(from)),
        }
    }
}

/// One changed key: its version before the revision and the one the revision wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryEvent {
    /// The previous version (`None`: never written, or compacted away).
    pub old: Option<Entry>,
    /// The new version (a tombstone for a removal).
    pub new: Entry,
}

/// Everything one revision changed that one watch matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The revision.
    pub revision: u64,
    /// The matching changes, in key order.
    pub entries: Vec<EntryEvent>,
}

/// Receives a watch's events, one revision at a time.
#[async_trait]
pub trait WatchListener: Send + Sync + 'static {
    /// Handle the event; the next revision waits until every listener returned. An error
    /// stops delivery and is reported as a fault.
    async fn on_update(&self, event: WatchEvent) -> Result<(), BoxError>;
}

#[async_trait]
impl<F, Fut> WatchListener for F
where
    F: Fn(WatchEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    async fn on_update(&self, event: WatchEvent) -> Result<(), BoxError> {
        self(event).await
    }
}

/// Identifies a registered watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchId(pub u64);

impl std::fmt::Display for WatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone)]
struct Watch {
    id: WatchId,
    matcher: KeyMatcher,
    listener: Arc<dyn WatchListener>,
}

#[derive(Default)]
struct Registry {
    watches: Vec<Watch>,
    next_id: u64,
    deployed: bool,
}

/// Where delivery stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryStatus {
    /// Every revision up to this one was delivered to every watch.
    pub delivered: u64,
    /// Set when delivery stopped on a failure (listener or storage).
    pub failed: Option<String>,
}

/// The watch registry and the task that delivers revisions to it.
pub struct WatchProcessor {
    storage: Arc<dyn KeyValueStorage>,
    registry: Mutex<Registry>,
    status: watch::Sender<DeliveryStatus>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for WatchProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.registry.lock();
        f.debug_struct("WatchProcessor")
            .field("watches", &r.watches.len())
            .field("deployed", &r.deployed)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl WatchProcessor {
    /// A processor over `storage`. No I/O, no tasks.
    pub fn new(storage: Arc<dyn KeyValueStorage>) -> Self {
        Self {
            storage,
            registry: Mutex::new(Registry::default()),
            status: watch::channel(DeliveryStatus::default()).0,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Register a watch; only before [`deploy`](Self::deploy).
    pub fn register(&self, matcher: KeyMatcher, listener: impl WatchListener) -> Result<WatchId> {
        let mut r = self.registry.lock();
        if r.deployed {
            return Err(Error::WatchesDeployed {
                watch: matcher.to_string(),
            });
        }
        r.next_id += 1;
        let id = WatchId(r.next_id);
        tracing::debug!(watch = %id, matcher = %matcher, "watch registered");
        r.watches.push(Watch {
            id,
            matcher,
            listener: Arc::new(listener),
        });
        Ok(id)
    }

    /// Register an exact-key watch.
    pub fn watch_exact(&self, key: &[u8], listener: impl WatchListener) -> Result<WatchId> {
        self.register(KeyMatcher::Exact(key.to_vec()), listener)
    }

    /// Register a prefix watch.
    pub fn watch_prefix(&self, prefix: &[u8], listener: impl WatchListener) -> Result<WatchId> {
        self.register(KeyMatcher::Prefix(prefix.to_vec()), listener)
    }

    /// Register a range watch over `[from, to)`.
    pub fn watch_range(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        listener: impl WatchListener,
    ) -> Result<WatchId> {
        let matcher = KeyMatcher::Range {
            from: from.to_vec(),
            to: to.map(<[u8]>::to_vec),
        };
        self.register(matcher, listener)
    }

    /// Remove a watch; it sees no revision after the one being delivered. False if unknown.
    pub fn unregister(&self, id: WatchId) -> bool {
        let mut r = self.registry.lock();
        let before = r.watches.len();
        r.watches.retain(|w| w.id != id);
        r.watches.len() != before
    }

    /// Start delivery from `recovery_revision + 1`: stored revisions are replayed first,
    /// then each new one as `revisions` (the state machine's revision channel) announces it.
    /// Spawns the delivery task; a failure in it is reported on `faults`.
    pub fn deploy(
        self: &Arc<Self>,
        recovery_revision: u64,
        revisions: watch::Receiver<u64>,
        faults: &FaultReporter,
    ) -> Result<()> {
        {
            let mut r = self.registry.lock();
            if r.deployed {
                return Err(Error::WatchesDeployed {
                    watch: "deploy".into(),
                });
            }
            if self.cancel.is_cancelled() {
                return Err(Stopping::ComponentStopping("metastorage".into()).into());
            }
            r.deployed = true;
            tracing::info!(
                recovery_revision,
                watches = r.watches.len(),
                "watches deployed"
            );
        }
        self.status.send_modify(|s| s.delivered = recovery_revision);
        let this = Arc::clone(self);
        spawn_supervised(
            &self.tasks,
            faults,
            "metastorage",
            "watch processor",
            async move {
                let outcome = this.run(recovery_revision, revisions).await;
                if let Err(e) = &outcome {
                    this.status.send_modify(|s| s.failed = Some(e.to_string()));
                }
                outcome.map_err(BoxError::from)
            },
        );
        Ok(())
    }

    /// Where delivery stands.
    pub fn status(&self) -> DeliveryStatus {
        self.status.borrow().clone()
    }

    /// Wait until every revision up to `revision` is delivered. Fails with
    /// [`Error::DeliveryFailed`] if delivery stopped on a failure, [`Error::Stopping`] once
    /// the processor stops, and [`Error::RevisionAhead`] (retry later) after `timeout`.
    pub async fn wait_delivered(&self, revision: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.status.subscribe();
        let wait = async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if let Some(reason) = &s.failed {
                        return Err(Error::DeliveryFailed {
                            revision: s.delivered + 1,
                            reason: reason.clone(),
                        });
                    }
                    if s.delivered >= revision {
                        return Ok(());
                    }
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() {
                        return Err(Stopping::ComponentStopping("metastorage".into()).into());
                    },
                    () = self.cancel.cancelled() => {
                        return Err(Stopping::ComponentStopping("metastorage".into()).into());
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::RevisionAhead {
                requested: revision,
                current: self.status.borrow().delivered,
            })?
    }

    /// Stop delivery and wait for the task. Idempotent.
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn run(&self, recovery_revision: u64, mut revisions: watch::Receiver<u64>) -> Result<()> {
        let mut next = recovery_revision + 1;
        let mut announcing = true;
        loop {
            let target = self.storage.revision();
            while next <= target {
                tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => return Ok(()),
                    delivered = self.deliver(next) => delivered?,
                }
                self.status.send_modify(|s| s.delivered = next);
                next += 1;
            }
            if announcing {
                tokio::select! {
                    () = self.cancel.cancelled() => return Ok(()),
                    changed = revisions.changed() => announcing = changed.is_ok(),
                }
            } else {
                // the state machine is gone: nothing new will come
                self.cancel.cancelled().await;
                return Ok(());
            }
        }
    }

    async fn deliver(&self, revision: u64) -> Result<()> {
        let entries = self.storage.revision_entries(revision)?;
        let watches = self.registry.lock().watches.clone();
        let mut calls = Vec::new();
        for w in watches {
            let matching: Vec<&Entry> = entries
                .iter()
                .filter(|e| w.matcher.matches(&e.key))
                .collect();
            if matching.is_empty() {
                continue;
            }
            let mut events = Vec::with_capacity(matching.len());
            for e in matching {
                let old = self.storage.get(&e.key, Some(revision - 1))?;
                events.push(EntryEvent {
                    old,
                    new: e.clone(),
                });
            }
            let event = WatchEvent {
                revision,
                entries: events,
            };
            calls.push(async move { (w.id, w.listener.on_update(event).await) });
        }
        for (id, outcome) in join_all(calls).await {
            if let Err(e) = outcome {
                return Err(Error::ListenerFailed {
                    watch: id.0,
                    revision,
                    reason: e.to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers() {
        let exact = KeyMatcher::Exact(b"a/b".to_vec());
        assert!(exact.matches(b"a/b"));
        assert!(!exact.matches(b"a/bc"));
        let prefix = KeyMatcher::Prefix(b"a/".to_vec());
        assert!(prefix.matches(b"a/"));
        assert!(prefix.matches(b"a/zz"));
        assert!(!prefix.matches(b"a"));
        let range = KeyMatcher::Range {
            from: b"b".to_vec(),
            to: Some(b"d".to_vec()),
        };
        assert!(range.matches(b"b"));
        assert!(range.matches(b"c\xff"));
        assert!(!range.matches(b"d"));
        assert!(!range.matches(b"a"));
        let open = KeyMatcher::Range {
            from: b"b".to_vec(),
            to: None,
        };
        assert!(open.matches(b"\xff\xff"));
        assert!(!open.matches(b"a"));
    }
}
