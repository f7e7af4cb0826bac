//! [`SledVaultStorage`]: the on-disk vault, a sled 0.34 database guarded by a lock file.
//!
//! sled 0.34 takes a non-blocking `flock` on its own `db` file, but its background I/O
//! threads may keep that file open for a moment after the `Db` is dropped, and its error is
//! an untyped `io::Error`. So the vault takes its own exclusive lock on `vault.lock` first:
//! failing that means another vault serves the directory ([`Error::Locked`], at once), and
//! holding it means a sled lock conflict can only be our own previous instance winding
//! down, which is waited for (bounded). sled also panics on some corrupt files: every call
//! into sled is wrapped so a panic becomes [`Error::Corrupt`] naming the directory.
//!
//! sled 0.34 treats unreadable log segments as a torn tail and silently opens an empty (or
//! shorter) database over garbage. To tell "new" from "lost its records", the vault writes a
//! format marker into a sled tree of its own, and only once that is durable creates
//! `vault.meta` beside it. A `vault.meta` without the marker means the files are damaged:
//! [`Error::Corrupt`], rather than serving an empty vault in place of the node's data.
use std::{
    collections::HashSet,
    ffi::OsString,
    fmt,
    fs::{File, OpenOptions},
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{VaultEntry, VaultStorage};
use crate::error::{Error, Result};

/// The lock file inside the vault directory.
const LOCK_FILE: &str = "vault.lock";
/// How long to wait for a previous sled instance of this process to release its files.
const SLED_RELEASE_WAIT: Duration = Duration::from_secs(10);
const SLED_RELEASE_POLL: Duration = Duration::from_millis(10);
/// sled's log file and blob folder inside its directory.
const SLED_DB_FILE: &str = "db";
const SLED_BLOBS_DIR: &str = "blobs";
/// Created once the format marker is durable in the database.
const META_FILE: &str = "vault.meta";
/// The sled tree of the vault's own records (not visible through the storage API).
const META_TREE: &[u8] = b"__vault_meta";
const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &[u8] = b"vault-sled-1";

/// The on-disk [`VaultStorage`]: a sled database in one directory, exclusively locked.
pub struct SledVaultStorage {
    // Field order matters: the database is dropped (closed) before the lock is released.
    db: sled::Db,
    path: PathBuf,
    sync: Syncer,
    _lock: File,
}

/// Makes sled's writes durable. On Linux sled 0.34 "flushes" its log with
/// `sync_file_range`, which neither syncs the file's metadata nor the device cache, and it
/// never syncs blob files (large values): after sled's flush we `fdatasync` the log and
/// `fsync` every blob file not synced yet.
struct Syncer {
    db_file: File,
    blobs_dir: PathBuf,
    /// Names of blob files already synced (pruned to the ones that still exist).
    synced_blobs: parking_lot::Mutex<HashSet<OsString>>,
}

impl Syncer {
    fn open(dir: &Path) -> Result<Self> {
        let db_path = dir.join(SLED_DB_FILE);
        let db_file = File::open(&db_path).map_err(|source| Error::Io {
            path: db_path,
            source,
        })?;
        Ok(Self {
            db_file,
            blobs_dir: dir.join(SLED_BLOBS_DIR),
            synced_blobs: parking_lot::Mutex::new(HashSet::new()),
        })
    }

    fn sync(&self, dir: &Path) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let mut synced = self.synced_blobs.lock();
        let mut present = HashSet::new();
        let mut synced_any = false;
        match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io(&self.blobs_dir))?;
                    let name = entry.file_name();
                    if !synced.contains(&name) {
                        let path = entry.path();
                        match File::open(&path).and_then(|f| f.sync_all()) {
                            Ok(()) => synced_any = true,
                            // sled removed it meanwhile (blob garbage collection)
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(source) => return Err(Error::Io { path, source }),
                        }
                    }
                    present.insert(name);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    path: self.blobs_dir.clone(),
                    source,
                })
            }
        }
        if synced_any {
            File::open(&self.blobs_dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.blobs_dir))?;
        }
        *synced = present;
        drop(synced);
        self.db_file
            .sync_data()
            .map_err(io(&dir.join(SLED_DB_FILE)))
    }
}

impl fmt::Debug for SledVaultStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledVaultStorage")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SledVaultStorage {
    /// Open (creating if needed) the vault database in directory `path`. Blocking.
    ///
    /// Fails with [`Error::Locked`] at once if another vault holds the directory, and with
    /// [`Error::Corrupt`] or [`Error::Io`] naming the directory if it cannot be read.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        std::fs::create_dir_all(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let lock = lock_dir(&path)?;
        let deadline = Instant::now() + SLED_RELEASE_WAIT;
        let db = loop {
            let config = sled::Config::new().path(&path);
            match guarded(&path, || config.open()) {
                Err(Error::Io { source, .. })
                    if is_sled_lock_error(&source) && Instant::now() < deadline =>
                {
                    // We hold the vault lock, so only our own previous instance can still
                    // hold sled's: its background threads are closing the files.
                    std::thread::sleep(SLED_RELEASE_POLL);
                }
                Err(Error::Io { source, .. }) if is_sled_lock_error(&source) => {
                    return Err(Error::Locked { path });
                }
                other => break other?,
            }
        };
        check_format(&db, &path)?;
        let sync = Syncer::open(&path)?;
        tracing::debug!(path = %path.display(), recovered = db.was_recovered(), "vault database opened");
        Ok(Self {
            db,
            path,
            sync,
            _lock: lock,
        })
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn call<T>(&self, f: impl FnOnce(&sled::Db) -> sled::Result<T>) -> Result<T> {
        guarded(&self.path, || f(&self.db))
    }
}

/// Take the exclusive lock on the directory's lock file, without waiting.
fn lock_dir(dir: &Path) -> Result<File> {
    let lock_path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| Error::Io {
            path: lock_path.clone(),
            source,
        })?;
    match fs4::fs_std::FileExt::try_lock_exclusive(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(Error::Locked {
            path: dir.to_path_buf(),
        }),
        Err(source) => Err(Error::Io {
            path: lock_path,
            source,
        }),
    }
}

/// Tell a new database from one that lost its records (see the module docs).
fn check_format(db: &sled::Db, dir: &Path) -> Result<()> {
    let meta_file = dir.join(META_FILE);
    let stored = guarded(dir, || db.open_tree(META_TREE)?.get(FORMAT_KEY))?;
    let created_before = meta_file.try_exists().map_err(|source| Error::Io {
        path: meta_file.clone(),
        source,
    })?;
    match stored {
        Some(format) if format == FORMAT => {
            if !created_before {
                write_meta_file(dir, &meta_file)?;
            }
            Ok(())
        }
        Some(format) => Err(Error::Corrupt {
            path: dir.to_path_buf(),
            reason: format!(
                "unknown vault format {:?}",
                String::from_utf8_lossy(&format)
            ),
        }),
        None if created_before => Err(Error::Corrupt {
            path: dir.to_path_buf(),
            reason: format!(
                "the database lost its records: {META_FILE} exists but the format marker is gone"
            ),
        }),
        None => {
            guarded(dir, || {
                db.open_tree(META_TREE)?.insert(FORMAT_KEY, FORMAT)?;
                db.flush()
            })?;
            write_meta_file(dir, &meta_file)
        }
    }
}

/// Create `vault.meta` durably: the file, then the directory entry.
fn write_meta_file(dir: &Path, meta_file: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut contents = FORMAT.to_vec();
    contents.push(b'\n');
    std::fs::write(meta_file, contents).map_err(io(meta_file))?;
    File::open(meta_file)
        .and_then(|f| f.sync_all())
        .map_err(io(meta_file))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// sled 0.34 reports a held `db` lock as `io::Error(Other, "could not acquire lock on ...")`.
fn is_sled_lock_error(e: &std::io::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

/// Call into sled, turning its errors and panics into vault errors naming `path`.
fn guarded<T>(path: &Path, f: impl FnOnce() -> sled::Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(map_sled_error(path, e)),
        Err(panic) => Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("sled panicked: {}", panic_message(panic.as_ref())),
        }),
    }
}

fn map_sled_error(path: &Path, e: sled::Error) -> Error {
    match e {
        sled::Error::Io(source) => Error::Io {
            path: path.to_path_buf(),
            source,
        },
        sled::Error::Corruption { at: Some(at), .. } => Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("corrupted data at {at:?}"),
        },
        sled::Error::Corruption { at: None, .. } => Error::Corrupt {
            path: path.to_path_buf(),
            reason: "corrupted data".to_owned(),
        },
        other => Error::Corrupt {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

fn to_pairs(
    iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> sled::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    iter.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect()
}

impl VaultStorage for SledVaultStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.call(|db| db.get(key).map(|v| v.map(|v| v.to_vec())))
    }

    fn write_batch(&self, batch: &[VaultEntry]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if let [entry] = batch {
            // one key is atomic without a batch, and a plain insert does not take sled
            // 0.34's process-wide lock that `apply_batch` takes exclusively (it stops every
            // sled read in the process meanwhile)
            self.call(|db| {
                match &entry.value {
                    Some(value) => db.insert(entry.key.as_slice(), value.as_slice())?,
                    None => db.remove(entry.key.as_slice())?,
                };
                db.flush()?;
                Ok(())
            })?;
            return self.sync.sync(&self.path);
        }
        let mut b = sled::Batch::default();
        for entry in batch {
            match &entry.value {
                Some(value) => b.insert(entry.key.as_slice(), value.as_slice()),
                None => b.remove(entry.key.as_slice()),
            }
        }
        self.call(|db| {
            db.apply_batch(b)?;
            db.flush()?;
            Ok(())
        })?;
        self.sync.sync(&self.path)
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.call(|db| to_pairs(db.range(from..to)))
    }

    fn prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.call(|db| to_pairs(db.scan_prefix(prefix)))
    }

    fn flush(&self) -> Result<()> {
        self.call(|db| db.flush().map(drop))?;
        self.sync.sync(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_values_go_to_blob_files_that_get_synced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = SledVaultStorage::open(dir.path()).expect("open");
        assert!(s.sync.synced_blobs.lock().is_empty());
        s.write_batch(&[VaultEntry::put(b"big".to_vec(), vec![1u8; 1 << 20])])
            .expect("write");
        let blobs = std::fs::read_dir(dir.path().join(SLED_BLOBS_DIR))
            .expect("blobs dir")
            .count();
        assert!(blobs > 0, "sled stored the value as a blob");
        assert!(
            !s.sync.synced_blobs.lock().is_empty(),
            "the blob files were synced"
        );
    }

    #[test]
    fn sled_errors_and_panics_name_the_directory() {
        let dir = Path::new("/some/vault");
        let err = guarded::<()>(dir, || panic!("boom")).expect_err("a panic");
        assert_eq!(
            err.to_string(),
            "vault database /some/vault is corrupt or unreadable: sled panicked: boom"
        );
        let err =
            guarded::<()>(dir, || Err(sled::Error::Unsupported("x".into()))).expect_err("an error");
        assert!(matches!(err, Error::Corrupt { ref path, .. } if path == dir));
        let err = guarded::<()>(dir, || {
            Err(sled::Error::Io(std::io::Error::other("disk on fire")))
        })
        .expect_err("an i/o error");
        assert_eq!(err.to_string(), "i/o error on /some/vault: disk on fire");
    }

    #[test]
    fn the_sled_lock_message_is_recognised() {
        // the exact text sled 0.34 produces in `Config::try_lock`
        let e = std::io::Error::other(
            "could not acquire lock on \"/x/vault/db\": Os { code: 11, kind: WouldBlock }",
        );
        assert!(is_sled_lock_error(&e));
        assert!(!is_sled_lock_error(&std::io::Error::other(
            "permission denied"
        )));
    }
}
