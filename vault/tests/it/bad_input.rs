//! Bad input: a directory in use by another vault, and corrupt database files.
use std::path::Path;

use vault::{Error, SledVaultStorage, VaultManager};

use crate::support::{start, stop};

#[tokio::test]
async fn second_manager_on_the_same_dir_is_refused_while_the_first_keeps_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = VaultManager::persistent(dir.path());
    start(&first).await.expect("first starts");
    first.put(b"k".to_vec(), b"v1".to_vec()).await.expect("put");

    let second = VaultManager::persistent(dir.path());
    let err = start(&second).await.expect_err("second is refused");
    let vault_dir = dir.path().join("vault");
    match &err {
        Error::Locked { path } => assert_eq!(path, &vault_dir),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "data directory {} is in use by another node",
            vault_dir.display()
        )
    );
    assert!(matches!(second.get(b"k").await, Err(Error::NotStarted)));

    // the first one is untouched and keeps serving
    assert_eq!(first.get(b"k").await.expect("get"), Some(b"v1".to_vec()));
    first.put(b"k".to_vec(), b"v2".to_vec()).await.expect("put");
    stop(&first).await;

    // once the first has stopped, the second (after its failed start) can start
    start(&second)
        .await
        .expect("second starts after the first stopped");
    assert_eq!(second.get(b"k").await.expect("get"), Some(b"v2".to_vec()));
    stop(&second).await;
}

#[test]
fn storage_open_on_a_locked_dir_fails_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let held = SledVaultStorage::open(dir.path()).expect("open");
    let err = SledVaultStorage::open(dir.path()).expect_err("second open");
    assert!(
        matches!(err, Error::Locked { ref path } if path == dir.path()),
        "{err:?}"
    );
    drop(held);
    SledVaultStorage::open(dir.path()).expect("open after release");
}

/// Write a vault with some data, then overwrite `file` in it with `garbage`.
async fn corrupt(data_dir: &Path, file: &str, garbage: &[u8]) {
    let vault = VaultManager::persistent(data_dir);
    start(&vault).await.expect("start");
    for i in 0..100u32 {
        vault
            .put(format!("key{i}").into_bytes(), vec![7u8; 100])
            .await
            .expect("put");
    }
    stop(&vault).await;
    std::fs::write(data_dir.join("vault").join(file), garbage).expect("write garbage");
}

fn assert_names_the_path(err: &Error, data_dir: &Path) {
    let vault_dir = data_dir.join("vault");
    assert!(
        matches!(err, Error::Corrupt { path, .. } | Error::Io { path, .. } if path.starts_with(&vault_dir)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&vault_dir.display().to_string()),
        "the message names the directory: {err}"
    );
}

#[tokio::test]
async fn garbage_db_file_fails_start_with_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 31 % 256) as u8).collect();
    corrupt(dir.path(), "db", &garbage).await;
    let vault = VaultManager::persistent(dir.path());
    let err = start(&vault).await.expect_err("corrupt db");
    assert_names_the_path(&err, dir.path());
    assert!(matches!(vault.get(b"k").await, Err(Error::NotStarted)));
}

#[tokio::test]
async fn garbage_conf_file_fails_start_with_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    corrupt(dir.path(), "conf", b"this is not a sled config").await;
    let vault = VaultManager::persistent(dir.path());
    let err = start(&vault).await.expect_err("corrupt conf");
    assert_names_the_path(&err, dir.path());
}

#[tokio::test]
async fn vault_path_that_is_a_file_fails_with_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("vault"), b"not a directory").expect("write");
    let vault = VaultManager::persistent(dir.path());
    let err = start(&vault).await.expect_err("vault dir is a file");
    assert_names_the_path(&err, dir.path());
}

/// Set in the child process of [`dir_locked_by_another_process_is_refused`].
const HOLDER_ENV: &str = "VAULT_TEST_HOLD_DIR";
const HOLDER_READY: &str = "vault-holder-ready";

/// Another process holds the directory: this process is refused at once. The test runs
/// itself as the other process (with `HOLDER_ENV` set), which holds the vault open until
/// its stdin closes.
#[test]
fn dir_locked_by_another_process_is_refused() {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };

    if let Some(dir) = std::env::var_os(HOLDER_ENV) {
        let held = SledVaultStorage::open(&dir).expect("the holder opens the vault");
        println!("{HOLDER_READY}");
        let mut line = String::new();
        // returns at EOF: when the parent closes our stdin or dies
        std::io::stdin().read_line(&mut line).expect("read stdin");
        drop(held);
        return;
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let vault_dir = dir.path().join("vault");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "bad_input::dir_locked_by_another_process_is_refused",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, &vault_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the holder");
    // Read the child's output on a thread, so waiting for "ready" is bounded.
    let stdout = child.stdout.take().expect("child stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(HOLDER_READY) {
                let _ = ready_tx.send(());
            }
        }
    });
    if ready_rx.recv_timeout(crate::support::DEADLINE).is_err() {
        let _ = child.kill();
        panic!("the holder process did not open the vault in time");
    }

    let err = SledVaultStorage::open(&vault_dir).expect_err("held by another process");
    assert!(
        matches!(err, Error::Locked { ref path } if path == &vault_dir),
        "{err:?}"
    );

    drop(child.stdin.take());
    let status = child.wait().expect("wait for the holder");
    assert!(status.success(), "the holder exited cleanly: {status}");
    reader.join().expect("output reader");
    SledVaultStorage::open(&vault_dir).expect("free once the other process exited");
}
