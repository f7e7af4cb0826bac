//! The vault manager: lifecycle, durability, subscriptions, the stop guard.
use std::sync::{mpsc as std_mpsc, Arc};

use lifecycle::{Component, LifecycleConfig, LifecycleManager, RunLevel, Stopping};
use parking_lot::Mutex;
use vault::{Error, MemoryVaultStorage, VaultEntry, VaultManager, VaultStorage};

use crate::support::{bounded, start, stop};

fn is_vault_stopping(e: &Error) -> bool {
    matches!(e, Error::Stopping(Stopping::ComponentStopping(name)) if name == "vault")
}

#[tokio::test]
async fn operations_before_start_fail_with_not_started() {
    let vault = VaultManager::in_memory();
    assert!(matches!(vault.get(b"k").await, Err(Error::NotStarted)));
    assert!(matches!(
        vault.put(b"k".to_vec(), b"v".to_vec()).await,
        Err(Error::NotStarted)
    ));
    assert!(matches!(
        vault.put_all(Vec::new()).await,
        Err(Error::NotStarted)
    ));
    assert!(matches!(vault.name().await, Err(Error::NotStarted)));
    assert!(!vault.is_running());
    assert_eq!(Component::name(&vault), "vault");
}

#[tokio::test]
async fn new_does_no_io() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("node1");
    let vault = VaultManager::persistent(&data_dir);
    assert_eq!(vault.data_dir(), Some(data_dir.as_path()));
    assert_eq!(vault.vault_dir(), Some(data_dir.join("vault")));
    assert!(!data_dir.exists(), "nothing is created before start");
    start(&vault).await.expect("start");
    assert!(data_dir.join("vault").is_dir());
    stop(&vault).await;
    assert_eq!(VaultManager::in_memory().data_dir(), None);
}

#[tokio::test]
async fn operations_after_stop_fail_with_stopping() {
    let vault = VaultManager::in_memory();
    start(&vault).await.expect("start");
    vault.put(b"k".to_vec(), b"v".to_vec()).await.expect("put");
    stop(&vault).await;
    let err = vault.get(b"k").await.expect_err("get after stop");
    assert!(is_vault_stopping(&err), "{err:?}");
    assert!(err.is_stopping());
    let err = vault
        .put(b"k".to_vec(), b"w".to_vec())
        .await
        .expect_err("put after stop");
    assert!(is_vault_stopping(&err), "{err:?}");
    assert_eq!(err.to_string(), "component vault is stopping");
    let err = vault.prefix(b"").await.expect_err("prefix after stop");
    assert!(is_vault_stopping(&err), "{err:?}");
}

#[tokio::test]
async fn stop_before_start_refuses_later_operations() {
    let vault = VaultManager::in_memory();
    stop(&vault).await;
    let err = vault.get(b"k").await.expect_err("get after stop");
    assert!(is_vault_stopping(&err), "{err:?}");
}

#[tokio::test]
async fn stop_is_idempotent_and_concurrent_stops_agree() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vault = Arc::new(VaultManager::persistent(dir.path()));
    start(&vault).await.expect("start");
    vault.put(b"k".to_vec(), b"v".to_vec()).await.expect("put");
    let (a, b) = tokio::join!(bounded(vault.stop()), bounded(vault.stop()));
    a.expect("first stop");
    b.expect("second stop");
    stop(&vault).await;
    // both stops finished only after the database was closed: the directory reopens
    let again = VaultManager::persistent(dir.path());
    start(&again).await.expect("reopen after stop");
    assert_eq!(again.get(b"k").await.expect("get"), Some(b"v".to_vec()));
    stop(&again).await;
}

#[tokio::test]
async fn second_start_is_refused() {
    let vault = VaultManager::in_memory();
    start(&vault).await.expect("start");
    assert!(matches!(start(&vault).await, Err(Error::AlreadyStarted)));
    vault
        .put(b"k".to_vec(), b"v".to_vec())
        .await
        .expect("still serving");
    stop(&vault).await;
}

#[tokio::test]
async fn persistent_vault_is_durable_across_stop_and_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vault = VaultManager::persistent(dir.path());
    start(&vault).await.expect("start");
    assert_eq!(vault.name().await.expect("name"), None);
    assert!(!vault.bootstrapped().await.expect("bootstrapped"));
    vault.set_name("node-1").await.expect("set name");
    vault
        .put_all(vec![
            VaultEntry::put(b"cfg.port".to_vec(), b"3344".to_vec()),
            VaultEntry::put(VaultManager::BOOTSTRAP_MARKER.to_vec(), Vec::new()),
        ])
        .await
        .expect("bootstrap");
    vault
        .put(b"gone".to_vec(), b"x".to_vec())
        .await
        .expect("put");
    vault.remove(b"gone").await.expect("remove");
    stop(&vault).await;

    // the same manager starts again (a run-level change) and sees everything
    start(&vault).await.expect("restart the same manager");
    assert_eq!(vault.name().await.expect("name").as_deref(), Some("node-1"));
    assert!(vault.bootstrapped().await.expect("bootstrapped"));
    stop(&vault).await;

    // and so does a new manager on the same directory (a node restart)
    let vault = VaultManager::persistent(dir.path());
    start(&vault).await.expect("start a new manager");
    assert_eq!(vault.name().await.expect("name").as_deref(), Some("node-1"));
    assert!(vault.bootstrapped().await.expect("bootstrapped"));
    assert_eq!(
        vault.get(b"cfg.port").await.expect("get"),
        Some(b"3344".to_vec())
    );
    assert_eq!(vault.get(b"gone").await.expect("get"), None);
    assert_eq!(
        vault.range(b"cfg.", b"cfg/").await.expect("range"),
        vec![(b"cfg.port".to_vec(), b"3344".to_vec())]
    );
    assert_eq!(vault.prefix(b"vault.").await.expect("prefix").len(), 2);
    stop(&vault).await;
}

#[tokio::test]
async fn in_memory_vault_keeps_data_across_its_own_restart() {
    let vault = VaultManager::in_memory();
    start(&vault).await.expect("start");
    vault.put(b"k".to_vec(), b"v".to_vec()).await.expect("put");
    stop(&vault).await;
    start(&vault).await.expect("restart");
    assert_eq!(vault.get(b"k").await.expect("get"), Some(b"v".to_vec()));
    stop(&vault).await;
}

#[tokio::test]
async fn names_are_validated() {
    let vault = VaultManager::in_memory();
    start(&vault).await.expect("start");
    let err = vault.set_name("").await.expect_err("empty name");
    assert!(matches!(err, Error::InvalidValue { .. }), "{err:?}");
    vault
        .put(b"vault.node_name".to_vec(), vec![0xff, 0xfe])
        .await
        .expect("put");
    let err = vault.name().await.expect_err("a name that is not utf-8");
    assert!(err.to_string().contains("vault.node_name"), "{err}");
    stop(&vault).await;
}

#[tokio::test]
async fn subscribers_see_exactly_the_matching_changes_in_order() {
    let vault = VaultManager::in_memory();
    // subscribing before start is allowed
    let mut cfg = vault.subscribe(b"cfg.");
    start(&vault).await.expect("start");
    let mut all = vault.subscribe(b"");
    let dropped = vault.subscribe(b"cfg.");
    drop(dropped);

    vault
        .put(b"cfg.a".to_vec(), b"1".to_vec())
        .await
        .expect("put");
    vault
        .put(b"other".to_vec(), b"x".to_vec())
        .await
        .expect("put");
    vault
        .put_all(vec![
            VaultEntry::put(b"cfg.b".to_vec(), b"2".to_vec()),
            VaultEntry::put(b"cfg".to_vec(), b"not under cfg.".to_vec()),
            VaultEntry::remove(b"cfg.a".to_vec()),
        ])
        .await
        .expect("put_all");
    vault.remove(b"cfg.zzz").await.expect("remove");
    vault.put_all(Vec::new()).await.expect("empty batch");
    stop(&vault).await;

    // the channel closes at stop, so collecting until `None` shows there was nothing more
    let mut seen = Vec::new();
    while let Some(change) = bounded(cfg.recv()).await {
        seen.push(change);
    }
    assert_eq!(
        seen,
        vec![
            vec![VaultEntry::put(b"cfg.a".to_vec(), b"1".to_vec())],
            vec![
                VaultEntry::put(b"cfg.b".to_vec(), b"2".to_vec()),
                VaultEntry::remove(b"cfg.a".to_vec()),
            ],
            vec![VaultEntry::remove(b"cfg.zzz".to_vec())],
        ]
    );
    let mut writes = 0;
    while let Some(change) = bounded(all.recv()).await {
        assert!(!change.is_empty());
        writes += 1;
    }
    assert_eq!(writes, 4, "the empty prefix sees every non-empty write");

    let mut late = vault.subscribe(b"");
    assert_eq!(
        bounded(late.recv()).await,
        None,
        "a stopped vault gives a closed channel"
    );
}

#[tokio::test]
async fn concurrent_writers_are_seen_in_write_order() {
    let vault = Arc::new(VaultManager::in_memory());
    start(&vault).await.expect("start");
    let mut rx = vault.subscribe(b"k");
    let mut tasks = Vec::new();
    for w in 0..4u8 {
        let vault = Arc::clone(&vault);
        tasks.push(tokio::spawn(async move {
            for i in 0..25u8 {
                vault.put(vec![b'k', w], vec![i]).await.expect("put");
            }
        }));
    }
    for t in tasks {
        bounded(t).await.expect("writer task");
    }
    stop(&vault).await;
    let mut last = [None::<u8>; 4];
    let mut count = 0;
    while let Some(change) = bounded(rx.recv()).await {
        let [entry] = change.as_slice() else {
            panic!("one entry per put: {change:?}")
        };
        let w = usize::from(entry.key[1]);
        let i = entry.value.as_ref().expect("a put")[0];
        assert_eq!(last[w].map_or(0, |l| l + 1), i, "writer {w} seen in order");
        last[w] = Some(i);
        count += 1;
    }
    assert_eq!(count, 100);
}

/// A storage whose writes wait for a release, to hold an operation in flight.
struct GatedStorage {
    inner: MemoryVaultStorage,
    entered: Mutex<Option<std_mpsc::Sender<()>>>,
    release: Mutex<std_mpsc::Receiver<()>>,
}

impl VaultStorage for GatedStorage {
    fn get(&self, key: &[u8]) -> vault::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn write_batch(&self, batch: &[VaultEntry]) -> vault::Result<()> {
        if let Some(tx) = self.entered.lock().take() {
            tx.send(()).expect("test waits for the write");
            self.release
                .lock()
                .recv_timeout(crate::support::DEADLINE)
                .expect("test releases the write");
        }
        self.inner.write_batch(batch)
    }
    fn range(&self, from: &[u8], to: &[u8]) -> vault::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.range(from, to)
    }
    fn prefix(&self, prefix: &[u8]) -> vault::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.prefix(prefix)
    }
    fn flush(&self) -> vault::Result<()> {
        self.inner.flush()
    }
}

#[tokio::test]
async fn stop_waits_for_writes_in_flight_and_refuses_new_ones() {
    let (entered_tx, entered_rx) = std_mpsc::channel();
    let (release_tx, release_rx) = std_mpsc::channel();
    let storage = Arc::new(GatedStorage {
        inner: MemoryVaultStorage::new(),
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(release_rx),
    });
    let vault = Arc::new(VaultManager::with_storage(storage.clone()));
    start(&vault).await.expect("start");
    let mut rx = vault.subscribe(b"");

    let writer = {
        let vault = Arc::clone(&vault);
        tokio::spawn(async move { vault.put(b"k".to_vec(), b"v".to_vec()).await })
    };
    bounded(tokio::task::spawn_blocking(move || {
        entered_rx
            .recv_timeout(crate::support::DEADLINE)
            .expect("the write reaches the storage")
    }))
    .await
    .expect("join");

    let stopper = {
        let vault = Arc::clone(&vault);
        tokio::spawn(async move { vault.stop().await.map_err(|e| e.to_string()) })
    };
    // wait (bounded) until stop has begun: new operations are refused
    bounded(async {
        while vault.is_running() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let err = vault.get(b"k").await.expect_err("refused while stopping");
    assert!(is_vault_stopping(&err), "{err:?}");
    assert!(!stopper.is_finished(), "stop waits for the write in flight");

    release_tx.send(()).expect("release the write");
    bounded(writer)
        .await
        .expect("join")
        .expect("the write in flight completes");
    bounded(stopper)
        .await
        .expect("join")
        .expect("stop completes");
    assert_eq!(storage.get(b"k").expect("get"), Some(b"v".to_vec()));
    assert_eq!(
        bounded(rx.recv()).await,
        Some(vec![VaultEntry::put(b"k".to_vec(), b"v".to_vec())]),
        "the write that completed during stop was still notified"
    );
    assert_eq!(bounded(rx.recv()).await, None);
}

#[tokio::test]
async fn runs_under_the_lifecycle_manager() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vault = Arc::new(VaultManager::persistent(dir.path()));
    let node = LifecycleManager::new(LifecycleConfig::default());
    node.register(RunLevel::Zombie, vault.clone() as Arc<dyn Component>)
        .expect("register");
    bounded(node.start()).await.expect("node starts");
    vault.set_name("n1").await.expect("set name");
    let report = bounded(node.stop()).await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.stopped, vec!["vault".to_owned()]);
    assert!(vault.name().await.expect_err("stopped").is_stopping());
}
