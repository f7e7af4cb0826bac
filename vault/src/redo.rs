//! All-or-nothing multi-tree writes to a sled database without sled transactions.
//!
//! sled 0.34 commits every transaction and every `apply_batch` under ONE process-wide write
//! lock (its "concurrency control"): while it is held, every read and write of every sled
//! database in the process waits. Write-behind stores that write out often (the MetaStorage
//! and the partition storage) would stall their own applies and every user read behind it.
//!
//! [`write`] instead puts a redo record holding all the changes in the database and flushes
//! it, applies the changes as plain inserts and removes (which take that lock shared),
//! flushes them, and removes the record. After a crash the database holds either none of
//! the changes (no record, or a record whose changes [`replay`] applies) or all of them, so
//! the caller can keep state and its position together as a transaction would.
//!
//! Record format: a format byte `1`, then per tree: name, change count, per change: key,
//! and the value or a removal mark; lengths as LEB128 varints. [`Redo::decode`] refuses
//! anything else with a reason and never panics (property-tested).
use std::fmt;

/// The tree holding the record of a write in progress.
const RECORD_TREE: &[u8] = b"redo-record";
const RECORD_KEY: &[u8] = b"redo";
const FORMAT: u8 = 1;

/// A change to one key: the new value, or `None` to remove it.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// The changes of one all-or-nothing write: per tree (by name), in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Redo {
    pub trees: Vec<(String, Vec<Change>)>,
}

/// Why a redo record left by a crash could not be read or applied.
#[derive(Debug)]
pub enum RedoError {
    /// sled failed.
    Storage(sled::Error),
    /// The record does not decode.
    Corrupt(String),
}

impl fmt::Display for RedoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Storage(e) => write!(f, "{e}"),
            Self::Corrupt(reason) => write!(f, "the redo record left by a crash: {reason}"),
        }
    }
}

impl std::error::Error for RedoError {}

impl From<sled::Error> for RedoError {
    fn from(e: sled::Error) -> Self {
        Self::Storage(e)
    }
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn len(&mut self, what: &str) -> Result<usize, String> {
        let mut n: usize = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .bytes
                .split_first()
                .ok_or_else(|| format!("cut short in the length of {what}"))?;
            self.bytes = rest;
            n |= usize::from(b & 0x7f)
                .checked_shl(shift)
                .filter(|v| v >> shift == usize::from(b & 0x7f))
                .ok_or_else(|| format!("the length of {what} overflows"))?;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(format!("the length of {what} overflows"))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.len(what)?;
        if n > self.bytes.len() {
            return Err(format!(
                "{what} claims {n} bytes, {} are left",
                self.bytes.len()
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self, what: &str) -> Result<u8, String> {
        let (&b, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| format!("cut short before {what}"))?;
        self.bytes = rest;
        Ok(b)
    }
}

impl Redo {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.trees.iter().all(|(_, changes)| changes.is_empty())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        put_len(&mut out, self.trees.len());
        for (name, changes) in &self.trees {
            put_bytes(&mut out, name.as_bytes());
            put_len(&mut out, changes.len());
            for (key, value) in changes {
                put_bytes(&mut out, key);
                match value {
                    Some(value) => {
                        out.push(1);
                        put_bytes(&mut out, value);
                    }
                    None => out.push(0),
                }
            }
        }
        out
    }

    /// Decodes a record; the error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader { bytes };
        let format = r.byte("the format byte")?;
        if format != FORMAT {
            return Err(format!("unknown format {format} (expected {FORMAT})"));
        }
        let trees = r.len("the tree count")?;
        let mut redo = Redo::default();
        for _ in 0..trees {
            let name = std::str::from_utf8(r.bytes("a tree name")?)
                .map_err(|e| format!("a tree name is not UTF-8: {e}"))?
                .to_owned();
            let count = r.len("a change count")?;
            // every change takes at least two bytes: no allocation beyond the input
            let mut changes = Vec::with_capacity(count.min(r.bytes.len() / 2));
            for _ in 0..count {
                let key = r.bytes("a key")?.to_vec();
                let value = match r.byte("a value mark")? {
                    0 => None,
                    1 => Some(r.bytes("a value")?.to_vec()),
                    other => return Err(format!("value mark {other} is neither 0 nor 1")),
                };
                changes.push((key, value));
            }
            redo.trees.push((name, changes));
        }
        if !r.bytes.is_empty() {
            return Err(format!("{} bytes after the last tree", r.bytes.len()));
        }
        Ok(redo)
    }
}

fn apply(db: &sled::Db, redo: &Redo) -> sled::Result<()> {
    for (name, changes) in &redo.trees {
        let tree = db.open_tree(name)?;
        for (key, value) in changes {
            match value {
                Some(value) => tree.insert(key.as_slice(), value.as_slice())?,
                None => tree.remove(key.as_slice())?,
            };
        }
    }
    Ok(())
}

/// Writes `redo` to `db` all or nothing (see the module): record, flush, changes, flush,
/// record removed. The caller serializes writes to the trees involved. On an error the
/// record may stay; the next `write` replaces it, or opening the database replays it.
pub fn write(db: &sled::Db, redo: &Redo) -> sled::Result<()> {
    if redo.is_empty() {
        return Ok(());
    }
    let record = db.open_tree(RECORD_TREE)?;
    record.insert(RECORD_KEY, redo.encode())?;
    db.flush()?;
    apply(db, redo)?;
    db.flush()?;
    record.remove(RECORD_KEY)?;
    Ok(())
}

/// Completes the write a crash cut short, if `db` holds its record: applies its changes,
/// flushes and removes it. Returns the number of trees it touched (0: nothing to do). Call
/// it when opening the database, before reading.
pub fn replay(db: &sled::Db) -> Result<usize, RedoError> {
    let record = db.open_tree(RECORD_TREE)?;
    let Some(bytes) = record.get(RECORD_KEY)? else {
        return Ok(0);
    };
    let redo = Redo::decode(&bytes).map_err(RedoError::Corrupt)?;
    apply(db, &redo)?;
    db.flush()?;
    record.remove(RECORD_KEY)?;
    db.flush()?;
    Ok(redo.trees.len())
}

/// Leaves `redo`'s record in `db` and applies only the first `applied` changes of it, as a
/// crash in the middle of [`write`] would. For tests of recovery.
#[doc(hidden)]
pub fn write_cut_short(db: &sled::Db, redo: &Redo, applied: usize) -> sled::Result<()> {
    let record = db.open_tree(RECORD_TREE)?;
    record.insert(RECORD_KEY, redo.encode())?;
    let mut left = applied;
    for (name, changes) in &redo.trees {
        let tree = db.open_tree(name)?;
        for (key, value) in changes.iter().take(left) {
            match value {
                Some(value) => tree.insert(key.as_slice(), value.as_slice())?,
                None => tree.remove(key.as_slice())?,
            };
        }
        left = left.saturating_sub(changes.len());
    }
    db.flush()?;
    Ok(())
}

/// How much lower than the threads that serve requests a write-out thread runs (nice).
pub const WRITE_OUT_NICENESS: i32 = 10;

/// Lowers the calling thread's CPU priority, for threads that write memory-held state out in
/// the background: with few cores, a write-out that runs as long as a request's round trip
/// otherwise delays the requests it shares a core with. On Linux the thread runs under
/// `SCHED_IDLE` (it gets a core only when no ordinary thread wants it, and a waking request
/// thread preempts it at once; a nice level alone left replies waiting behind a write-out
/// for up to a few milliseconds), with [`WRITE_OUT_NICENESS`] and the lowest best-effort IO
/// priority. Its callers bound the work it may leave undone (a backlog that fills is
/// written out by the committing thread itself). Elsewhere nothing changes. Returns whether
/// the priority changed.
pub fn lower_thread_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        // setpriority(2) on a thread id changes that thread only; the arguments are plain
        // integers and the call has no other effect
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::setpriority(
                libc::PRIO_PROCESS,
                libc::gettid() as libc::id_t,
                WRITE_OUT_NICENESS,
            )
        };
        // and its disk writes queue behind the others' (ioprio_set(2): best effort, lowest)
        #[allow(unsafe_code)]
        let io = unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                1, // IOPRIO_WHO_PROCESS: a thread id
                libc::gettid(),
                (2 << 13) | 7, // IOPRIO_CLASS_BE, level 7
            )
        };
        // and it runs only when a core is otherwise idle (sched_setscheduler(2) on a thread
        // id; lowering one's own policy needs no privilege)
        let param = libc::sched_param { sched_priority: 0 };
        #[allow(unsafe_code)]
        let idle = unsafe { libc::sched_setscheduler(libc::gettid(), libc::SCHED_IDLE, &param) };
        rc == 0 && io == 0 && idle == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_out_thread_runs_at_lower_priority_and_only_it() {
        #[allow(unsafe_code)]
        fn niceness() -> i32 {
            // getpriority(2) of the calling thread; plain integers in, one integer out
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        }
        #[allow(unsafe_code)]
        fn policy() -> i32 {
            // sched_getscheduler(2) of the calling thread
            unsafe { libc::sched_getscheduler(libc::gettid()) }
        }
        let (before, policy_before) = (niceness(), policy());
        let (changed, after, policy_after) =
            std::thread::spawn(move || (lower_thread_priority(), niceness(), policy()))
                .join()
                .unwrap();
        assert!(changed);
        assert_eq!(after, (before + WRITE_OUT_NICENESS).min(19));
        assert_eq!(policy_after, libc::SCHED_IDLE);
        assert_eq!(niceness(), before, "the calling thread only");
        assert_eq!(policy(), policy_before, "the calling thread only");
    }

    fn db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::testing::raw_sled(dir.path());
        (dir, db)
    }

    fn sample() -> Redo {
        Redo {
            trees: vec![
                (
                    "t/0".into(),
                    vec![
                        (b"a".to_vec(), Some(b"1".to_vec())),
                        (b"gone".to_vec(), None),
                        (b"b".to_vec(), Some(vec![])),
                    ],
                ),
                ("meta".into(), vec![(b"pos".to_vec(), Some(b"7".to_vec()))]),
            ],
        }
    }

    fn read(db: &sled::Db, tree: &str, key: &[u8]) -> Option<Vec<u8>> {
        db.open_tree(tree)
            .unwrap()
            .get(key)
            .unwrap()
            .map(|v| v.to_vec())
    }

    #[test]
    fn a_write_lands_whole_and_leaves_no_record() {
        let (_dir, db) = db();
        db.open_tree("t/0").unwrap().insert("gone", "x").unwrap();
        write(&db, &sample()).unwrap();
        assert_eq!(read(&db, "t/0", b"a"), Some(b"1".to_vec()));
        assert_eq!(read(&db, "t/0", b"gone"), None);
        assert_eq!(read(&db, "t/0", b"b"), Some(vec![]));
        assert_eq!(read(&db, "meta", b"pos"), Some(b"7".to_vec()));
        assert_eq!(replay(&db).unwrap(), 0, "no record is left behind");
    }

    #[test]
    fn a_write_cut_short_at_any_point_is_completed_on_reopen() {
        for applied in 0..=4 {
            let dir = tempfile::tempdir().unwrap();
            {
                let db = crate::testing::raw_sled(dir.path());
                db.open_tree("t/0").unwrap().insert("gone", "x").unwrap();
                write_cut_short(&db, &sample(), applied).unwrap();
            }
            let db = crate::testing::raw_sled(dir.path());
            assert_eq!(replay(&db).unwrap(), 2, "cut after {applied} changes");
            assert_eq!(read(&db, "t/0", b"a"), Some(b"1".to_vec()));
            assert_eq!(read(&db, "t/0", b"gone"), None);
            assert_eq!(read(&db, "meta", b"pos"), Some(b"7".to_vec()));
            assert_eq!(replay(&db).unwrap(), 0, "replayed once");
        }
    }

    #[test]
    fn a_corrupt_record_is_refused_with_the_reason() {
        let (_dir, db) = db();
        let mut bytes = sample().encode();
        bytes.truncate(bytes.len() - 1);
        db.open_tree(RECORD_TREE)
            .unwrap()
            .insert(RECORD_KEY, bytes)
            .unwrap();
        let e = replay(&db).unwrap_err().to_string();
        assert!(
            e.contains("redo record") && e.contains("claims 1 bytes"),
            "{e}"
        );
        assert_eq!(read(&db, "meta", b"pos"), None, "nothing applied");
    }

    #[test]
    fn decode_names_what_is_wrong() {
        assert!(Redo::decode(&[]).unwrap_err().contains("format byte"));
        assert!(Redo::decode(&[9]).unwrap_err().contains("unknown format 9"));
        let mut extra = sample().encode();
        extra.push(0);
        assert!(Redo::decode(&extra)
            .unwrap_err()
            .contains("after the last tree"));
        let huge = [FORMAT, 1, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(Redo::decode(&huge).unwrap_err().contains("claims"));
        let overflow = [
            FORMAT, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(Redo::decode(&overflow).unwrap_err().contains("overflows"));
    }

    fn redo_strategy() -> impl Strategy<Value = Redo> {
        let change = (
            proptest::collection::vec(any::<u8>(), 0..20),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        );
        proptest::collection::vec(
            ("[a-z/0-9]{0,12}", proptest::collection::vec(change, 0..8)),
            0..5,
        )
        .prop_map(|trees| Redo { trees })
    }

    proptest! {
        #[test]
        fn records_round_trip(redo in redo_strategy()) {
            prop_assert_eq!(Redo::decode(&redo.encode()).unwrap(), redo);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Redo::decode(&bytes);
        }

        #[test]
        fn a_cut_or_flipped_record_is_refused_or_decodes_never_panics(
            redo in redo_strategy(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let bytes = redo.encode();
            let at = cut.index(bytes.len());
            prop_assert!(at == bytes.len() || Redo::decode(&bytes[..at]).is_err());
            let mut flipped = bytes.clone();
            let i = flip.index(flipped.len());
            flipped[i] ^= 0x5a;
            let _ = Redo::decode(&flipped);
        }
    }
}
