//! The stop guard (the design's "busy lock").
//!
//! Operations `enter()` the guard and hold a [`StopTicket`] while they run. Once
//! [`StopGuard::block`] is called, new entries fail at once with [`Stopping`], pending futures
//! wrapped with [`StopGuard::wrap`] fail with it, and `block` returns when every ticket has
//! been dropped.
use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::Stopping;

struct Inner {
    error: Stopping,
    blocked: Mutex<bool>,
    active: AtomicUsize,
    drained: Notify,
    cancel: CancellationToken,
}

/// A busy lock shared by a component's operations. Cheap to clone.
#[derive(Clone)]
pub struct StopGuard {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StopGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopGuard")
            .field("error", &self.inner.error)
            .field("blocked", &self.is_blocked())
            .field("active", &self.inner.active.load(Ordering::SeqCst))
            .finish()
    }
}

impl StopGuard {
    /// A guard for the whole node: refusals say [`Stopping::NodeStopping`].
    pub fn for_node() -> Self {
        Self::with_error(Stopping::NodeStopping)
    }

    /// A guard for one component: refusals say [`Stopping::ComponentStopping`].
    pub fn for_component(name: impl Into<String>) -> Self {
        Self::with_error(Stopping::ComponentStopping(name.into()))
    }

    fn with_error(error: Stopping) -> Self {
        Self {
            inner: Arc::new(Inner {
                error,
                blocked: Mutex::new(false),
                active: AtomicUsize::new(0),
                drained: Notify::new(),
                cancel: CancellationToken::new(),
            }),
        }
    }

    /// Enter the guard; the returned ticket must be held for the whole operation.
    pub fn enter(&self) -> Result<StopTicket, Stopping> {
        // The flag and the counter change under one lock so `block` never misses an entry.
        let blocked = self.inner.blocked.lock();
        if *blocked {
            return Err(self.inner.error.clone());
        }
        self.inner.active.fetch_add(1, Ordering::SeqCst);
        drop(blocked);
        Ok(StopTicket {
            inner: Arc::clone(&self.inner),
        })
    }

    /// Run `fut` inside the guard: refused if stopping, and it keeps stop waiting until done.
    pub async fn run<F: Future>(&self, fut: F) -> Result<F::Output, Stopping> {
        let _ticket = self.enter()?;
        Ok(fut.await)
    }

    /// A pending future (a reply, a watch) that must fail as soon as stop begins rather than
    /// keep stop waiting.
    pub async fn wrap<F: Future>(&self, fut: F) -> Result<F::Output, Stopping> {
        if self.is_blocked() {
            return Err(self.inner.error.clone());
        }
        tokio::select! {
            biased;
            () = self.inner.cancel.cancelled() => Err(self.inner.error.clone()),
            out = fut => Ok(out),
        }
    }

    /// True once `block` has been called.
    pub fn is_blocked(&self) -> bool {
        *self.inner.blocked.lock()
    }

    /// The error new operations get once blocked.
    pub fn error(&self) -> Stopping {
        self.inner.error.clone()
    }

    /// A token cancelled when the guard is blocked: loops select on it.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.inner.cancel.cancelled()
    }

    /// Refuse new entries, fail wrapped futures, and wait until every ticket is dropped.
    /// Idempotent.
    pub async fn block(&self) {
        {
            let mut blocked = self.inner.blocked.lock();
            *blocked = true;
        }
        self.inner.cancel.cancel();
        loop {
            let drained = self.inner.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.inner.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            drained.await;
        }
    }
}

/// Proof of being inside a [`StopGuard`]; stop waits until it is dropped.
#[must_use = "the operation is only protected while the ticket is held"]
pub struct StopTicket {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StopTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopTicket")
    }
}

impl Drop for StopTicket {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn in_flight_operation_completes_while_new_ones_are_refused() {
        let guard = StopGuard::for_component("vault");
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let g = guard.clone();
        let op = tokio::spawn(async move {
            g.run(async move {
                entered_tx.send(()).unwrap();
                release_rx.await.unwrap();
                42
            })
            .await
        });
        entered_rx.await.unwrap();

        let g = guard.clone();
        let blocker = tokio::spawn(async move { g.block().await });
        // wait until the guard is blocked (condition, not a sleep)
        tokio::time::timeout(Duration::from_secs(5), async {
            while !guard.is_blocked() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();

        assert_eq!(
            guard.enter().unwrap_err(),
            Stopping::ComponentStopping("vault".into()),
            "new entries are refused once stop began"
        );
        assert!(
            !blocker.is_finished(),
            "stop must wait for the operation inside"
        );
        release_tx.send(()).unwrap();
        assert_eq!(
            op.await.unwrap().unwrap(),
            42,
            "the in-flight operation completes"
        );
        tokio::time::timeout(Duration::from_secs(5), blocker)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn pending_futures_fail_when_stop_begins() {
        let guard = StopGuard::for_node();
        let g = guard.clone();
        let pending = tokio::spawn(async move { g.wrap(std::future::pending::<()>()).await });
        tokio::task::yield_now().await;
        tokio::time::timeout(Duration::from_secs(5), guard.block())
            .await
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.unwrap_err(), Stopping::NodeStopping);
        assert_eq!(
            guard.wrap(async { 1 }).await.unwrap_err(),
            Stopping::NodeStopping
        );
    }

    #[tokio::test]
    async fn block_is_idempotent_and_immediate_when_idle() {
        let guard = StopGuard::for_node();
        tokio::time::timeout(Duration::from_secs(5), guard.block())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), guard.block())
            .await
            .unwrap();
        assert!(guard.enter().is_err());
    }
}
