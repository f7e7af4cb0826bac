//! [`VaultManager`]: the vault component, an async facade over a [`VaultStorage`].
//!
//! Every operation enters the component's stop guard and runs its storage call on a
//! blocking thread tracked by the component, carrying its stop ticket with it: stop waits for
//! every call that was admitted, then flushes and closes the storage. Writes are serialized,
//! so subscribers see them in the order they became durable.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use async_trait::async_trait;
use lifecycle::{BoxError, Component, StartContext, StopGuard, StopTicket, Stopping};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::{
    error::{Error, Result},
    storage::{MemoryVaultStorage, SledVaultStorage, VaultEntry, VaultStorage},
};

const COMPONENT: &str = "vault";
/// The key of the node name stored at first start.
const NAME_KEY: &[u8] = b"vault.node_name";
/// The sub-directory of the data directory that holds the vault database.
const VAULT_DIR: &str = "vault";

/// Where the storage comes from at `start`.
enum Source {
    /// A sled database opened at `start` in `<data_dir>/vault`.
    Persistent(PathBuf),
    /// A storage that already exists (in memory, or handed in); kept across restarts.
    Fixed(Arc<dyn VaultStorage>),
}

struct Running {
    storage: Arc<dyn VaultStorage>,
    guard: StopGuard,
}

enum Phase {
    /// Never started, or the last start failed.
    Idle,
    /// A start (with this generation) is opening the storage.
    Starting(u64),
    Running(Running),
    Stopping,
    Stopped,
}

struct Subscriber {
    prefix: Vec<u8>,
    tx: mpsc::UnboundedSender<Vec<VaultEntry>>,
}

struct Inner {
    source: Source,
    phase: Mutex<Phase>,
    generation: Mutex<u64>,
    subscribers: Mutex<Vec<Subscriber>>,
    /// Held across "write, then notify" so notifications follow write order.
    write_order: Mutex<()>,
    tracker: TaskTracker,
    /// Serializes stops so a second `stop` returns once the first is done.
    stop_lock: tokio::sync::Mutex<()>,
}

/// The node-local durable key-value store, as a [`Component`] named `vault`.
///
/// Operations fail with [`Error::NotStarted`] before `start` and with [`Error::Stopping`]
/// once `stop` has begun. A stopped vault may be started again.
pub struct VaultManager {
    inner: Arc<Inner>,
}

impl VaultManager {
    /// The key whose presence means "bootstrapped"; configuration writes it in the SAME
    /// `put_all` as the first configuration, so bootstrap is atomic.
    pub const BOOTSTRAP_MARKER: &'static [u8] = b"vault.bootstrapped";

    /// No I/O: the sled database at `<data_dir>/vault` is opened in `start()`.
    pub fn persistent(data_dir: impl Into<PathBuf>) -> Self {
        Self::from_source(Source::Persistent(data_dir.into()))
    }

    /// A vault in memory; its contents survive a stop and start of this manager only.
    pub fn in_memory() -> Self {
        Self::with_storage(Arc::new(MemoryVaultStorage::new()))
    }

    /// Already-opened storage (tests, embedding). `stop` flushes it but does not close it.
    pub fn with_storage(storage: Arc<dyn VaultStorage>) -> Self {
        Self::from_source(Source::Fixed(storage))
    }

    fn from_source(source: Source) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                phase: Mutex::new(Phase::Idle),
                generation: Mutex::new(0),
                subscribers: Mutex::new(Vec::new()),
                write_order: Mutex::new(()),
                tracker: TaskTracker::new(),
                stop_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The data directory of a persistent vault (the database is in its `vault` folder).
    pub fn data_dir(&self) -> Option<&Path> {
        match &self.inner.source {
            Source::Persistent(dir) => Some(dir),
            Source::Fixed(_) => None,
        }
    }

    /// The directory of the database of a persistent vault: `<data_dir>/vault`.
    pub fn vault_dir(&self) -> Option<PathBuf> {
        self.data_dir().map(|d| d.join(VAULT_DIR))
    }

    /// True while the vault is started and not stopping.
    pub fn is_running(&self) -> bool {
        matches!(*self.inner.phase.lock(), Phase::Running(_))
    }

    /// The value of `key`, if present.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = key.to_vec();
        self.blocking(move |s| s.get(&key)).await
    }

    /// Set `key` to `value`; durable when it returns.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<()> {
        self.put_all(vec![VaultEntry::put(key, value)]).await
    }

    /// Remove `key` (a no-op for the data if absent; subscribers still see the removal).
    pub async fn remove(&self, key: &[u8]) -> Result<()> {
        self.put_all(vec![VaultEntry::remove(key)]).await
    }

    /// Apply `entries` atomically, in order (`None` values remove); durable when it returns.
    pub async fn put_all(&self, entries: Vec<VaultEntry>) -> Result<()> {
        if entries.is_empty() {
            // Nothing to write, but the caller still learns whether the vault is serving.
            drop(self.enter()?);
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        self.blocking(move |storage| {
            let _order = inner.write_order.lock();
            let begin = Instant::now();
            let result = storage.write_batch(&entries);
            metrics::histogram!("ignite_vault_write_seconds").record(begin.elapsed().as_secs_f64());
            result?;
            tracing::trace!(entries = entries.len(), "vault batch written");
            inner.notify(&entries);
            Ok(())
        })
        .await
    }

    /// Entries with keys in `[from, to)`, in key order.
    pub async fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (from, to) = (from.to_vec(), to.to_vec());
        self.blocking(move |s| s.range(&from, &to)).await
    }

    /// Entries whose keys start with `prefix`, in key order.
    pub async fn prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = prefix.to_vec();
        self.blocking(move |s| s.prefix(&prefix)).await
    }

    /// The node name stored at first start.
    pub async fn name(&self) -> Result<Option<String>> {
        match self.get(NAME_KEY).await? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|e| Error::InvalidValue {
                    key: String::from_utf8_lossy(NAME_KEY).into_owned(),
                    reason: format!("node name is not utf-8: {e}"),
                }),
        }
    }

    /// Store the node name.
    pub async fn set_name(&self, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidValue {
                key: String::from_utf8_lossy(NAME_KEY).into_owned(),
                reason: "node name is empty".to_owned(),
            });
        }
        self.put(NAME_KEY, name.as_bytes()).await
    }

    /// True once local configuration was bootstrapped into this vault.
    pub async fn bootstrapped(&self) -> Result<bool> {
        Ok(self.get(Self::BOOTSTRAP_MARKER).await?.is_some())
    }

    /// Local listeners: every successful write whose keys match `prefix` sends the matching
    /// entries of that write (one `Vec` per write, in write order) on the channel.
    ///
    /// Works before `start`. The channel closes when the vault stops; subscribing to a
    /// stopping or stopped vault returns a closed channel.
    pub fn subscribe(&self, prefix: &[u8]) -> mpsc::UnboundedReceiver<Vec<VaultEntry>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let phase = self.inner.phase.lock();
        if !matches!(*phase, Phase::Stopping | Phase::Stopped) {
            // Pushed under the phase lock: a concurrent stop clears it afterwards.
            self.inner.subscribers.lock().push(Subscriber {
                prefix: prefix.to_vec(),
                tx,
            });
        }
        drop(phase);
        rx
    }

    fn enter(&self) -> Result<(StopTicket, Arc<dyn VaultStorage>)> {
        match &*self.inner.phase.lock() {
            Phase::Idle | Phase::Starting(_) => Err(Error::NotStarted),
            Phase::Running(r) => Ok((r.guard.enter()?, Arc::clone(&r.storage))),
            Phase::Stopping | Phase::Stopped => Err(stopping().into()),
        }
    }

    /// Run `f` on the storage on a tracked blocking thread, inside the stop guard.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn VaultStorage) -> Result<T> + Send + 'static,
    {
        let (ticket, storage) = self.enter()?;
        let task = self.inner.tracker.spawn_blocking(move || {
            // The ticket travels with the call: stop waits for it even if the caller is gone.
            let _ticket = ticket;
            f(storage.as_ref())
        });
        task.await.map_err(join_error)?
    }

    async fn start_vault(&self) -> Result<()> {
        let generation = {
            let mut phase = self.inner.phase.lock();
            match *phase {
                Phase::Idle | Phase::Stopped => {}
                _ => return Err(Error::AlreadyStarted),
            }
            let mut generation = self.inner.generation.lock();
            *generation += 1;
            *phase = Phase::Starting(*generation);
            *generation
        };
        self.inner.tracker.reopen();
        let inner = Arc::clone(&self.inner);
        // The open installs its result itself, so an interrupted start cannot leak it.
        let task = self
            .inner
            .tracker
            .spawn_blocking(move || inner.open_and_install(generation));
        let result = task.await.map_err(join_error).and_then(|r| r);
        if result.is_err() {
            let mut phase = self.inner.phase.lock();
            if matches!(*phase, Phase::Starting(g) if g == generation) {
                *phase = Phase::Idle;
            }
        }
        result
    }

    async fn stop_vault(&self) -> Result<()> {
        let _one_stop_at_a_time = self.inner.stop_lock.lock().await;
        let running = {
            let mut phase = self.inner.phase.lock();
            match std::mem::replace(&mut *phase, Phase::Stopping) {
                Phase::Running(r) => Some(r),
                Phase::Stopped => {
                    *phase = Phase::Stopped;
                    return Ok(());
                }
                Phase::Idle | Phase::Starting(_) | Phase::Stopping => None,
            }
        };
        if let Some(r) = &running {
            r.guard.block().await;
        }
        // Dropping the senders closes every subscriber's channel.
        self.inner.subscribers.lock().clear();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        let result = match running {
            Some(r) => tokio::task::spawn_blocking(move || {
                let flushed = r.storage.flush();
                // Last reference for a persistent vault: closes sled, then releases the lock.
                drop(r);
                flushed
            })
            .await
            .map_err(join_error)
            .and_then(|r| r),
            None => Ok(()),
        };
        *self.inner.phase.lock() = Phase::Stopped;
        result
    }
}

impl Inner {
    /// Blocking: open the storage and install it unless this start was superseded by a stop.
    fn open_and_install(&self, generation: u64) -> Result<()> {
        let storage: Arc<dyn VaultStorage> = match &self.source {
            Source::Persistent(dir) => Arc::new(SledVaultStorage::open(dir.join(VAULT_DIR))?),
            Source::Fixed(storage) => Arc::clone(storage),
        };
        let mut phase = self.phase.lock();
        if matches!(*phase, Phase::Starting(g) if g == generation) {
            *phase = Phase::Running(Running {
                storage,
                guard: StopGuard::for_component(COMPONENT),
            });
            Ok(())
        } else {
            drop(phase);
            drop(storage);
            Err(stopping().into())
        }
    }

    /// Send each subscriber the entries of this write that match it; forget closed ones.
    fn notify(&self, entries: &[VaultEntry]) {
        self.subscribers.lock().retain(|sub| {
            let matching: Vec<VaultEntry> = entries
                .iter()
                .filter(|e| e.key.starts_with(&sub.prefix))
                .cloned()
                .collect();
            if matching.is_empty() {
                !sub.tx.is_closed()
            } else {
                sub.tx.send(matching).is_ok()
            }
        });
    }
}

fn stopping() -> Stopping {
    Stopping::ComponentStopping(COMPONENT.to_owned())
}

fn join_error(e: tokio::task::JoinError) -> Error {
    if e.is_panic() {
        Error::Panicked(crate::storage::panic_message(e.into_panic().as_ref()))
    } else {
        // Only happens when the runtime itself shuts down.
        Error::Stopping(stopping())
    }
}

#[async_trait]
impl Component for VaultManager {
    fn name(&self) -> &str {
        COMPONENT
    }

    async fn start(&self, _ctx: &StartContext) -> Result<(), BoxError> {
        let dir = self.vault_dir();
        let span = tracing::info_span!("vault_start", path = ?dir);
        async {
            self.start_vault().await?;
            tracing::info!(path = ?dir, "vault started");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn stop(&self) -> Result<(), BoxError> {
        let span = tracing::info_span!("vault_stop");
        async {
            self.stop_vault().await?;
            tracing::info!("vault stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }
}
