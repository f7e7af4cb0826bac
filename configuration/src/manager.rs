//! [`ConfigurationManager`]: typed roots over one storage per configuration type.
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use lifecycle::{spawn_supervised, BoxError, Component, StartContext, StopGuard};
use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::{
    bootstrap::BootstrapConfig,
    error::{Error, Result},
    root::{parse_root, ConfigRoot, RootKey},
    storage::{ConfigurationStorage, StorageSnapshot},
    tree::{apply_at, diff, flatten_root, get_at, root_entries, segments, unflatten},
};

/// The component's default name.
const NAME: &str = "configuration";
/// How many times a change is retried when its storage moved under it.
const MAX_ATTEMPTS: usize = 16;
/// Where values that fail validation at start came from.
const STORED: &str = "stored configuration";

/// One changed value, as a listener sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigChange {
    /// The path the listener listens to (`network`, `network.seeds`, `""` for everything).
    pub path: String,
    /// The value at `path` before the change (`null` if there was none).
    pub old: Value,
    /// The value at `path` after the change (`null` if there is none).
    pub new: Value,
}

/// Called after a change is durable; an `Err` is reported to the caller of the change.
pub type Listener = Arc<dyn Fn(&ConfigChange) -> std::result::Result<(), String> + Send + Sync>;

struct State {
    /// Root key -> the root's full value (defaults filled in).
    effective: Map<String, Value>,
    /// The last snapshot read from each storage (same index as `Inner::storages`).
    snapshots: Vec<StorageSnapshot>,
}

struct Inner {
    roots: Vec<RootKey>,
    storages: Vec<Arc<dyn ConfigurationStorage>>,
    bootstrap: Option<BootstrapConfig>,
    state: RwLock<State>,
    listeners: RwLock<Vec<(String, Listener)>>,
    /// Serializes changes, external updates and start, so listeners see changes in order.
    changes: tokio::sync::Mutex<()>,
    ignored: Mutex<Vec<String>>,
    started: AtomicBool,
    guard: Mutex<StopGuard>,
    tasks: TaskTracker,
}

/// Typed configuration over one [`ConfigurationStorage`] per [`crate::ConfigurationType`]:
/// each root goes to the storage of its type.
pub struct ConfigurationManager {
    name: String,
    inner: Arc<Inner>,
}

impl ConfigurationManager {
    /// A manager of `roots` over `storages`, bootstrapping empty storages with `bootstrap`.
    /// No I/O: until `start`, reads see the bootstrap values (or defaults).
    pub fn new(
        roots: Vec<RootKey>,
        storages: Vec<Arc<dyn ConfigurationStorage>>,
        bootstrap: Option<BootstrapConfig>,
    ) -> Self {
        let mut unique: Vec<RootKey> = Vec::with_capacity(roots.len());
        for root in roots {
            if unique.iter().any(|r| r.key() == root.key()) {
                tracing::warn!(
                    root = root.key(),
                    "configuration root registered twice, keeping the first"
                );
            } else {
                unique.push(root);
            }
        }
        for (i, storage) in storages.iter().enumerate() {
            if storages[..i]
                .iter()
                .any(|s| s.storage_type() == storage.storage_type())
            {
                tracing::warn!(storage_type = ?storage.storage_type(), "second configuration storage of one type is not used");
            }
        }
        let mut effective = Map::new();
        for root in &unique {
            let sparse = bootstrap
                .as_ref()
                .and_then(|b| b.sparse(root.key()))
                .cloned()
                .unwrap_or(Value::Null);
            let value = root
                .validate(sparse)
                .unwrap_or_else(|_| root.default_value().clone());
            effective.insert(root.key().to_owned(), value);
        }
        let snapshots = vec![StorageSnapshot::default(); storages.len()];
        Self {
            name: NAME.to_owned(),
            inner: Arc::new(Inner {
                roots: unique,
                storages,
                bootstrap,
                state: RwLock::new(State {
                    effective,
                    snapshots,
                }),
                listeners: RwLock::new(Vec::new()),
                changes: tokio::sync::Mutex::new(()),
                ignored: Mutex::new(Vec::new()),
                started: AtomicBool::new(false),
                guard: Mutex::new(StopGuard::for_component(NAME)),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// The same manager under another component name (a node with a local and a cluster
    /// configuration manager registers both).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        *self.inner.guard.lock() = StopGuard::for_component(self.name.clone());
        self
    }

    /// The typed current value of root `T`.
    pub fn root<T: ConfigRoot>(&self) -> Result<T> {
        let value = self
            .inner
            .state
            .read()
            .effective
            .get(T::KEY)
            .cloned()
            .ok_or_else(|| Error::unknown(T::KEY))?;
        parse_root::<T>(T::KEY, value)
    }

    /// The JSON at a dotted path: `""` = every root, `network`, `network.seeds`.
    pub fn get(&self, path: &str) -> Result<Value> {
        let tree = self.inner.tree();
        get_at(&tree, &segments(path))
            .cloned()
            .ok_or_else(|| Error::unknown(path))
    }

    /// Changes the value at `path`: validated (unknown keys, types, [`ConfigRoot::validate`]),
    /// made durable, then the listeners of every path whose value changed are called,
    /// deepest first (`network.seeds`, then `network`, then `""`). An object merges into the
    /// object there (JSON merge patch; `null` resets a key to its default), anything else
    /// replaces. A listener error is returned; the change itself stays applied.
    ///
    /// A change is atomic within one storage. A change of `""` that spans roots of several
    /// storages is validated as a whole first, then written storage by storage.
    pub async fn change(&self, path: &str, value: Value) -> Result<()> {
        let guard = self.inner.guard.lock().clone();
        let _ticket = guard.enter()?;
        if !self.inner.started.load(Ordering::SeqCst) {
            return Err(Error::NotStarted(self.name.clone()));
        }
        self.inner.change(path, value).await
    }

    /// Calls `listener` after every change of the value at `path` (`""` = anything).
    pub fn listen(&self, path: &str, listener: Listener) {
        self.inner
            .listeners
            .write()
            .push((path.to_owned(), listener));
    }

    /// The keys of the roots this manager holds.
    pub fn roots(&self) -> Vec<String> {
        self.inner
            .roots
            .iter()
            .map(|r| r.key().to_owned())
            .collect()
    }

    /// The bootstrap keys ignored at the last start because the storage was already
    /// bootstrapped with other values.
    pub fn ignored_bootstrap_keys(&self) -> Vec<String> {
        self.inner.ignored.lock().clone()
    }
}

impl Inner {
    fn tree(&self) -> Value {
        Value::Object(self.state.read().effective.clone())
    }

    fn root_index(&self, key: &str) -> Option<usize> {
        self.roots.iter().position(|r| r.key() == key)
    }

    /// The storage of a root: the first one of its type.
    fn storage_of(&self, root: &RootKey) -> Option<usize> {
        self.storages
            .iter()
            .position(|s| s.storage_type() == root.storage_type())
    }

    fn roots_of(&self, storage: usize) -> impl Iterator<Item = &RootKey> + '_ {
        self.roots
            .iter()
            .filter(move |r| self.storage_of(r) == Some(storage))
    }

    async fn start(self: &Arc<Self>, name: &str, ctx: &StartContext) -> Result<()> {
        let guard = {
            let mut guard = self.guard.lock();
            if guard.is_blocked() {
                *guard = StopGuard::for_component(name);
            }
            guard.clone()
        };
        let _ticket = guard.enter()?;
        let _serial = self.changes.lock().await;
        self.tasks.reopen();

        let mut ignored = Vec::new();
        let mut receivers = Vec::with_capacity(self.storages.len());
        for (idx, storage) in self.storages.iter().enumerate() {
            receivers.push(storage.subscribe());
            let was_bootstrapped = storage.bootstrapped().await?;
            let mut bootstrap_flat = BTreeMap::new();
            if let Some(bootstrap) = &self.bootstrap {
                for root in self.roots_of(idx) {
                    let sparse = bootstrap.sparse(root.key()).cloned().unwrap_or(Value::Null);
                    root.validate(sparse.clone())?;
                    bootstrap_flat.extend(flatten_root(root.key(), &sparse)?);
                }
            }
            if !was_bootstrapped {
                let snapshot = storage.read_all().await?;
                let keys = bootstrap_flat.len();
                let changes = diff(&snapshot.values, &bootstrap_flat)
                    .into_iter()
                    .filter(|(_, v)| v.is_some())
                    .collect();
                if !storage.write(changes, snapshot.version).await? {
                    return Err(Error::Conflict {
                        key: format!("{:?} bootstrap", storage.storage_type()),
                        attempts: 1,
                    });
                }
                tracing::info!(storage_type = ?storage.storage_type(), keys, "configuration bootstrapped");
            }
            let snapshot = storage.read_all().await?;
            let mut values = Vec::new();
            for root in self.roots_of(idx) {
                let sparse = unflatten(root_entries(&snapshot.values, root.key()));
                let full = root.validate(sparse).map_err(|e| e.with_origin(STORED))?;
                values.push((root.key().to_owned(), full));
            }
            if was_bootstrapped {
                let tree = Value::Object(values.iter().cloned().collect());
                for (key, value) in &bootstrap_flat {
                    if get_at(&tree, &segments(key)) != Some(value) {
                        ignored.push(key.clone());
                    }
                }
            }
            let mut state = self.state.write();
            state.effective.extend(values);
            state.snapshots[idx] = snapshot;
        }
        for root in &self.roots {
            if self.storage_of(root).is_none() {
                tracing::warn!(root = root.key(), storage_type = ?root.storage_type(), "no storage for configuration root, it keeps its bootstrap values and cannot change");
            }
        }
        if !ignored.is_empty() {
            tracing::warn!(ignored = ?ignored, "ignored: vault was bootstrapped");
        }
        *self.ignored.lock() = ignored;
        self.started.store(true, Ordering::SeqCst);

        for (idx, rx) in receivers.into_iter().enumerate() {
            let task = format!("watch-{:?}-storage", self.storages[idx].storage_type());
            let inner = Arc::clone(self);
            let guard = guard.clone();
            spawn_supervised(&self.tasks, &ctx.faults, name, &task, async move {
                inner.watch(idx, rx, guard).await;
                Ok(())
            });
        }
        Ok(())
    }

    /// Applies the snapshots a storage reports until it closes or the manager stops.
    async fn watch(
        &self,
        idx: usize,
        mut rx: mpsc::UnboundedReceiver<StorageSnapshot>,
        guard: StopGuard,
    ) {
        loop {
            let snapshot = tokio::select! {
                () = guard.cancelled() => return,
                s = rx.recv() => match s {
                    Some(s) => s,
                    None => return,
                },
            };
            let _serial = self.changes.lock().await;
            if snapshot.version <= self.state.read().snapshots[idx].version {
                continue;
            }
            let old = self.tree();
            self.install(idx, snapshot);
            let new = self.tree();
            // Listener errors are logged by notify; nobody else to report them to.
            let _ = self.notify(&old, &new);
        }
    }

    /// Makes `snapshot` the state of storage `idx`; a root whose stored values do not
    /// validate keeps its previous value.
    fn install(&self, idx: usize, snapshot: StorageSnapshot) {
        let mut values = Vec::new();
        for root in self.roots_of(idx) {
            let sparse = unflatten(root_entries(&snapshot.values, root.key()));
            match root.validate(sparse) {
                Ok(full) => values.push((root.key().to_owned(), full)),
                Err(e) => {
                    tracing::warn!(root = root.key(), error = %e, "stored configuration is invalid, keeping the previous value");
                }
            }
        }
        let mut state = self.state.write();
        state.effective.extend(values);
        state.snapshots[idx] = snapshot;
    }

    async fn refresh(&self, idx: usize) -> Result<()> {
        let snapshot = self.storages[idx].read_all().await?;
        self.install(idx, snapshot);
        Ok(())
    }

    async fn change(&self, path: &str, value: Value) -> Result<()> {
        let segs = segments(path);
        // (root index, path inside the root, value)
        let mut patches: Vec<(usize, Vec<String>, Value)> = Vec::new();
        match segs.split_first() {
            None => {
                let Value::Object(map) = value else {
                    return Err(Error::invalid(
                        "(all roots)",
                        format!("expected an object of configuration roots, got {value}"),
                    ));
                };
                for (key, v) in map {
                    let idx = self.root_index(&key).ok_or_else(|| Error::unknown(&key))?;
                    patches.push((idx, Vec::new(), v));
                }
            }
            Some((root, rest)) => {
                let idx = self.root_index(root).ok_or_else(|| Error::unknown(path))?;
                let rest = rest.iter().map(|s| (*s).to_owned()).collect();
                patches.push((idx, rest, value));
            }
        }
        let mut targets = Vec::with_capacity(patches.len());
        for (ridx, _, _) in &patches {
            let root = &self.roots[*ridx];
            let sidx = self.storage_of(root).ok_or_else(|| Error::NoStorage {
                key: if path.is_empty() {
                    root.key().to_owned()
                } else {
                    path.to_owned()
                },
                storage_type: root.storage_type(),
            })?;
            targets.push(sidx);
        }

        let _serial = self.changes.lock().await;
        let old = self.tree();
        for _attempt in 0..MAX_ATTEMPTS {
            let mut per_storage: BTreeMap<usize, (u64, BTreeMap<String, Option<Value>>)> =
                BTreeMap::new();
            {
                let state = self.state.read();
                for ((ridx, rest, v), sidx) in patches.iter().zip(&targets) {
                    let root = &self.roots[*ridx];
                    let snapshot = &state.snapshots[*sidx];
                    let old_flat: BTreeMap<String, Value> = snapshot
                        .values
                        .iter()
                        .filter(|(k, _)| in_root(k, root.key()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let mut sparse = unflatten(root_entries(&snapshot.values, root.key()));
                    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
                    apply_at(&mut sparse, &rest, v.clone());
                    let new_flat = flatten_root(root.key(), &sparse)?;
                    root.validate(sparse)?;
                    per_storage
                        .entry(*sidx)
                        .or_insert_with(|| (snapshot.version, BTreeMap::new()))
                        .1
                        .extend(diff(&old_flat, &new_flat));
                }
            }
            let mut conflict = false;
            for (sidx, (version, changes)) in per_storage {
                if changes.is_empty() {
                    continue;
                }
                let written = self.storages[sidx].write(changes, version).await?;
                self.refresh(sidx).await?;
                if !written {
                    conflict = true;
                    break;
                }
            }
            if !conflict {
                let new = self.tree();
                return self.notify(&old, &new);
            }
            tracing::debug!(path, "configuration storage moved under a change, retrying");
        }
        // Whatever other writers did is in the state now: let listeners see it.
        let new = self.tree();
        let _ = self.notify(&old, &new);
        Err(Error::Conflict {
            key: path.to_owned(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Calls the listeners of every path whose value differs between `old` and `new`,
    /// deepest path first, in registration order within a depth. Returns the first error.
    fn notify(&self, old: &Value, new: &Value) -> Result<()> {
        let listeners = self.listeners.read().clone();
        let mut calls: Vec<(usize, ConfigChange, Listener)> = Vec::new();
        for (path, listener) in listeners {
            let segs = segments(&path);
            let depth = segs.len();
            let before = get_at(old, &segs).cloned().unwrap_or(Value::Null);
            let after = get_at(new, &segs).cloned().unwrap_or(Value::Null);
            drop(segs);
            if before != after {
                let change = ConfigChange {
                    path,
                    old: before,
                    new: after,
                };
                calls.push((depth, change, listener));
            }
        }
        calls.sort_by_key(|(depth, _, _)| std::cmp::Reverse(*depth));
        let mut first = None;
        for (_, change, listener) in calls {
            if let Err(reason) = listener(&change) {
                tracing::warn!(path = %change.path, %reason, "configuration listener failed");
                first.get_or_insert(Error::ListenerFailed {
                    path: change.path.clone(),
                    reason,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// True when dotted `key` is `root` or under it.
fn in_root(key: &str, root: &str) -> bool {
    key == root
        || key
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('.'))
}

#[async_trait]
impl Component for ConfigurationManager {
    fn name(&self) -> &str {
        &self.name
    }

    async fn start(&self, ctx: &StartContext) -> Result<(), BoxError> {
        self.inner.start(&self.name, ctx).await.map_err(Into::into)
    }

    async fn stop(&self) -> Result<(), BoxError> {
        let guard = self.inner.guard.lock().clone();
        guard.block().await;
        self.inner.started.store(false, Ordering::SeqCst);
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        Ok(())
    }
}
