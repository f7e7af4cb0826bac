//! The storage swap point: the [`KeyValueStorage`] trait, its snapshot format and its two
//! implementations (sled on disk, memory for tests and embedding).
//!
//! Both implementations share the MVCC rules in `mvcc` (how a command turns into versions,
//! idempotency, compaction); each owns its physical layout and its atomicity.
mod disk;
mod memory;
pub(crate) mod mvcc;

use serde::{Deserialize, Serialize};

pub use self::{disk::SledKeyValueStorage, memory::MemoryKeyValueStorage};
use crate::{
    command::{self, CommandId, CommandOp, Condition, Operation, Outcome},
    entry::{Entry, LogPosition},
    error::{Error, Result},
};

/// What [`KeyValueStorage::snapshot_job`] returns: builds the snapshot as of its cut.
pub type SnapshotJob = Box<dyn FnOnce() -> Result<StorageSnapshot> + Send>;

/// What [`KeyValueStorage::persist_job`] returns: makes the state as of its cut durable.
pub type PersistJob = Box<dyn FnOnce() -> Result<()> + Send>;

/// How many command ids a storage remembers for idempotent retries, unless told otherwise.
/// Every replica must use the same window (it is part of the replicated state machine).
pub const DEFAULT_COMMAND_WINDOW: u64 = 10_000;

/// The bookkeeping that travels with one applied command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyContext {
    /// The command's id: a command whose id was applied before is not applied again, and
    /// its first outcome is returned.
    pub id: Option<CommandId>,
    /// The Raft log position of the command, persisted atomically with its effects.
    pub position: Option<LogPosition>,
}

/// A remembered command id and the outcome it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// The order in which it was applied (1, 2, ...): the window evicts the oldest.
    pub seq: u64,
    /// The command's id.
    pub id: CommandId,
    /// Its outcome.
    pub outcome: Outcome,
}

/// A full copy of a storage's state: what a Raft snapshot carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageSnapshot {
    /// The storage revision.
    pub revision: u64,
    /// The revision the history is compacted to.
    pub compacted: u64,
    /// The global update counter.
    pub update_counter: u64,
    /// The last applied log position.
    pub last_applied: Option<LogPosition>,
    /// How many commands with ids were applied so far.
    pub command_seq: u64,
    /// Every retained version, in key order and then revision order.
    pub entries: Vec<Entry>,
    /// The remembered command ids, oldest first.
    pub commands: Vec<CommandRecord>,
}

impl StorageSnapshot {
    /// Encode (format version byte + postcard).
    pub fn encode(&self) -> Result<Vec<u8>> {
        command::encode("snapshot", self)
    }

    /// Decode and check the invariants a storage relies on; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let s: Self = command::decode("snapshot", bytes)?;
        s.validate()
            .map_err(|reason| Error::decode("snapshot", reason))?;
        Ok(s)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.compacted > self.revision {
            return Err(format!(
                "compacted revision {} is above revision {}",
                self.compacted, self.revision
            ));
        }
        let mut prev: Option<&Entry> = None;
        for e in &self.entries {
            if e.revision == 0 || e.revision > self.revision {
                return Err(format!(
                    "entry revision {} outside 1..={}",
                    e.revision, self.revision
                ));
            }
            if e.update_counter == 0 || e.update_counter > self.update_counter {
                return Err(format!(
                    "entry update counter {} outside 1..={}",
                    e.update_counter, self.update_counter
                ));
            }
            if e.tombstone != e.value.is_none() {
                return Err("a tombstone must have no value and a live entry one".into());
            }
            if let Some(p) = prev {
                if (&p.key, p.revision) >= (&e.key, e.revision) {
                    return Err("entries are not sorted by key and revision".into());
                }
            }
            prev = Some(e);
        }
        let mut last_seq = 0;
        for c in &self.commands {
            if c.seq <= last_seq || c.seq > self.command_seq {
                return Err(format!("command record seq {} out of order", c.seq));
            }
            last_seq = c.seq;
        }
        Ok(())
    }
}

/// A revisioned (MVCC) key-value store: the state of the MetaStorage state machine.
///
/// One global revision, bumped by every write command that changes something; every
/// version keeps its revision, a global update counter and a tombstone flag. Reads take an
/// optional revision (`None`: the latest); reading below the compacted revision fails with
/// [`Error::Compacted`], above the current one with [`Error::RevisionAhead`]. `range` and
/// `prefix` return live entries only; `get` returns the latest version, a tombstone included.
///
/// All writes go through [`apply`](Self::apply), which applies the command, its command-id
/// record and its log position in one atomic step. Writes are atomic but not necessarily
/// durable when `apply` returns (the Raft log is): [`flush`](Self::flush) makes them so.
pub trait KeyValueStorage: Send + Sync + 'static {
    /// The current revision (0 for an empty storage).
    fn revision(&self) -> u64;
    /// The revision the history is compacted to (0: never compacted).
    fn compacted_revision(&self) -> u64;
    /// The last applied log position, if any.
    fn last_applied(&self) -> Option<LogPosition>;
    /// The latest version of `key` at revision `at` (a tombstone included).
    fn get(&self, key: &[u8], at: Option<u64>) -> Result<Option<Entry>>;
    /// [`get`](Self::get) for each key, in the order given, all at the same revision.
    fn get_all(&self, keys: &[Vec<u8>], at: Option<u64>) -> Result<Vec<Option<Entry>>>;
    /// Live entries with keys in `[from, to)` (`to: None`: no upper bound), in key order.
    fn range(&self, from: &[u8], to: Option<&[u8]>, at: Option<u64>) -> Result<Vec<Entry>>;
    /// Live entries whose keys start with `prefix`, in key order.
    fn prefix(&self, prefix: &[u8], at: Option<u64>) -> Result<Vec<Entry>>;
    /// The versions written by `revision`, in key order (what a watch replays).
    fn revision_entries(&self, revision: u64) -> Result<Vec<Entry>>;
    /// Apply one write command atomically with its bookkeeping (see [`ApplyContext`]).
    fn apply(&self, op: &CommandOp, ctx: &ApplyContext) -> Result<Outcome>;
    /// Apply several commands in order with the same outcomes and final state as applying
    /// them one by one (each sees the ones before it; command ids and their window
    /// included). Readers see each command whole. The default applies them one by one; the
    /// sled storage commits the whole batch in one transaction (one log write instead of
    /// one per command), so a crash keeps all of it or none.
    fn apply_batch(&self, items: &[(CommandOp, ApplyContext)]) -> Result<Vec<Outcome>> {
        items.iter().map(|(op, ctx)| self.apply(op, ctx)).collect()
    }
    /// A full copy of the state.
    fn snapshot(&self) -> Result<StorageSnapshot>;
    /// Starts a full copy of the state as of now and returns the job that builds it; the
    /// job may run while more commands are applied and still builds the state as of the
    /// start (the cut), durable when it returns. Only the cut waits for applies, so a
    /// large state does not hold them up while it is read. Default: flush, and the whole
    /// [`snapshot`](Self::snapshot) at once.
    fn snapshot_job(self: std::sync::Arc<Self>) -> Result<SnapshotJob> {
        self.flush()?;
        let snapshot = self.snapshot()?;
        Ok(Box::new(move || Ok(snapshot)))
    }
    /// Starts making everything applied so far durable and returns the job that finishes
    /// it, which may run while more commands are applied; `None` when the storage is not
    /// durable by itself (memory). Only the start waits for applies. Raft then purges its
    /// log behind the cut without a snapshot's bytes. Default: `None`.
    fn persist_job(self: std::sync::Arc<Self>) -> Result<Option<PersistJob>> {
        Ok(None)
    }
    /// Replace the whole state with `snapshot`.
    fn restore(&self, snapshot: StorageSnapshot) -> Result<()>;
    /// Make everything applied so far durable.
    fn flush(&self) -> Result<()>;
    /// Whether applying `incoming` more write commands now could wait on the disk: a
    /// write-behind storage whose backlog would be full writes out first. Compactions always
    /// may (they prune history in place) and are not counted here. Default: yes.
    fn apply_would_wait(&self, incoming: usize) -> bool {
        let _ = incoming;
        true
    }

    /// Record that the log reached `position` without changing data (a blank or membership
    /// entry).
    fn advance(&self, position: LogPosition) -> Result<()> {
        let ctx = ApplyContext {
            id: None,
            position: Some(position),
        };
        self.apply(&CommandOp::Write { ops: Vec::new() }, &ctx)
            .map(drop)
    }

    /// Set `key` to `value`; returns the new revision.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        let op = CommandOp::put(key, value);
        Ok(self.apply(&op, &ApplyContext::default())?.revision)
    }

    /// Set every key to its value in one revision; returns the revision.
    fn put_all(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<u64> {
        let op = CommandOp::put_all(entries.iter().cloned());
        Ok(self.apply(&op, &ApplyContext::default())?.revision)
    }

    /// Remove `key`; returns the revision (unchanged if the key had no live value).
    fn remove(&self, key: &[u8]) -> Result<u64> {
        let op = CommandOp::remove(key);
        Ok(self.apply(&op, &ApplyContext::default())?.revision)
    }

    /// Remove every key in one revision; returns the revision.
    fn remove_all(&self, keys: &[Vec<u8>]) -> Result<u64> {
        let op = CommandOp::remove_all(keys.iter().cloned());
        Ok(self.apply(&op, &ApplyContext::default())?.revision)
    }

    /// Apply `success` if `condition` holds on the latest state, else `failure`; returns
    /// whether it held.
    fn invoke(
        &self,
        condition: &Condition,
        success: &[Operation],
        failure: &[Operation],
    ) -> Result<bool> {
        let op = CommandOp::invoke(condition.clone(), success.to_vec(), failure.to_vec());
        Ok(self.apply(&op, &ApplyContext::default())?.succeeded)
    }

    /// Compact history up to `revision`; refuses a revision above the current one.
    fn compact(&self, revision: u64) -> Result<()> {
        let current = self.revision();
        if revision > current {
            return Err(Error::RevisionAhead {
                requested: revision,
                current,
            });
        }
        self.apply(&CommandOp::Compact { revision }, &ApplyContext::default())
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::command::{CompareOp, Condition};

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::sample::select(vec![
            b"".to_vec(),
            b"\x00".to_vec(),
            b"a".to_vec(),
            b"a\x00".to_vec(),
            b"b".to_vec(),
        ])
    }

    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(vec![0u8, b'a', b'b']), 0..3)
    }

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            3 => (key(), value()).prop_map(|(k, v)| Operation::put(k, v)),
            2 => key().prop_map(Operation::remove),
        ]
    }

    fn condition() -> impl Strategy<Value = Condition> {
        let leaf = prop_oneof![
            (key(), value()).prop_map(|(k, v)| Condition::value(k, CompareOp::Eq, v)),
            (key(), 0u64..10).prop_map(|(k, r)| Condition::revision(k, CompareOp::Le, r)),
            key().prop_map(Condition::exists),
            key().prop_map(Condition::not_exists),
            key().prop_map(Condition::tombstone),
        ];
        leaf.prop_recursive(2, 6, 2, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Condition::All),
                prop::collection::vec(inner, 0..3).prop_map(Condition::Any),
            ]
        })
    }

    fn op() -> impl Strategy<Value = CommandOp> {
        prop_oneof![
            6 => prop::collection::vec(operation(), 0..3).prop_map(|ops| CommandOp::Write { ops }),
            3 => (condition(), prop::collection::vec(operation(), 0..3), prop::collection::vec(operation(), 0..2))
                .prop_map(|(c, s, f)| CommandOp::invoke(c, s, f)),
            1 => (0u64..12).prop_map(|revision| CommandOp::Compact { revision }),
        ]
    }

    /// Commands with ids from a small pool (retries, and ids evicted from a window of 3
    /// then reused), some without an id.
    fn item() -> impl Strategy<Value = (CommandOp, Option<u64>)> {
        (op(), prop::option::weighted(0.9, 0u64..8))
    }

    /// Batches as Raft entries: the last command of each records the entry's position.
    fn batches() -> impl Strategy<Value = Vec<Vec<(CommandOp, Option<u64>)>>> {
        prop::collection::vec(prop::collection::vec(item(), 1..8), 1..6)
    }

    const WINDOW: u64 = 3;

    #[test]
    fn memory_never_waits_and_sled_waits_when_its_backlog_would_fill() {
        let memory = MemoryKeyValueStorage::with_command_window(WINDOW);
        assert!(!memory.apply_would_wait(usize::MAX));

        let dir = tempfile::tempdir().expect("temp dir");
        // a backlog nothing writes out (write-outs start at usize::MAX pending sets)
        let sled = SledKeyValueStorage::open_with(dir.path().join("kv"), WINDOW, usize::MAX)
            .expect("open");
        assert!(!sled.apply_would_wait(usize::MAX - 1));
        assert!(sled.apply_would_wait(usize::MAX));
        for i in 0..5u8 {
            sled.put(&[i], &[i]).expect("put");
        }
        // five pending sets count against the limit
        assert!(!sled.apply_would_wait(usize::MAX - 6));
        assert!(sled.apply_would_wait(usize::MAX - 5));
    }

    fn contexts(batches: &[Vec<(CommandOp, Option<u64>)>]) -> Vec<Vec<(CommandOp, ApplyContext)>> {
        batches
            .iter()
            .enumerate()
            .map(|(b, batch)| {
                let last = batch.len() - 1;
                batch
                    .iter()
                    .enumerate()
                    .map(|(i, (op, id))| {
                        let ctx = ApplyContext {
                            id: id.map(|seq| CommandId::new(uuid::Uuid::from_u128(1), seq)),
                            position: (i == last).then(|| LogPosition::new(b as u64 + 1, 1)),
                        };
                        (op.clone(), ctx)
                    })
                    .collect()
            })
            .collect()
    }

    fn one_by_one(
        s: &dyn KeyValueStorage,
        batches: &[Vec<(CommandOp, ApplyContext)>],
    ) -> Vec<Outcome> {
        batches
            .iter()
            .flatten()
            .map(|(op, ctx)| s.apply(op, ctx).expect("apply"))
            .collect()
    }

    fn batched(
        s: &dyn KeyValueStorage,
        batches: &[Vec<(CommandOp, ApplyContext)>],
    ) -> Vec<Outcome> {
        batches
            .iter()
            .flat_map(|batch| s.apply_batch(batch).expect("apply batch"))
            .collect()
    }

    /// Every read a storage answers about the keys `batches` touch: each key at every
    /// revision, whole-range and prefix scans at every revision, every revision's entries
    /// (errors, such as "compacted", compared by their text).
    fn reads(s: &dyn KeyValueStorage, batches: &[Vec<(CommandOp, ApplyContext)>]) -> Vec<String> {
        let mut keys: Vec<Vec<u8>> = batches
            .iter()
            .flatten()
            .filter_map(|(op, _)| match op {
                CommandOp::Write { ops } => Some(ops.iter().map(|o| o.key().to_vec())),
                _ => None,
            })
            .flatten()
            .collect();
        keys.sort();
        keys.dedup();
        let mut out = vec![format!("revision {}", s.revision())];
        for rev in 0..=s.revision() {
            let at = Some(rev);
            for key in &keys {
                out.push(format!("get {key:?}@{rev}: {:?}", s.get(key, at)));
            }
            out.push(format!("range@{rev}: {:?}", s.range(b"", None, at)));
            if let Some(key) = keys.first() {
                out.push(format!(
                    "range from {key:?}@{rev}: {:?}",
                    s.range(key, keys.last().map(Vec::as_slice), at)
                ));
                out.push(format!(
                    "prefix {:?}@{rev}: {:?}",
                    &key[..key.len().min(1)],
                    s.prefix(&key[..key.len().min(1)], at)
                ));
            }
            out.push(format!("revision {rev}: {:?}", s.revision_entries(rev)));
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// A batch gives the outcomes and state of its commands applied one by one, on
        /// memory and on sled (also after reopening).
        #[test]
        fn apply_batch_equals_one_by_one(batches in batches()) {
            let batches = contexts(&batches);
            let reference = MemoryKeyValueStorage::with_command_window(WINDOW);
            let expected = one_by_one(&reference, &batches);
            let expected_state = reference.snapshot().expect("snapshot");

            let memory = MemoryKeyValueStorage::with_command_window(WINDOW);
            prop_assert_eq!(&batched(&memory, &batches), &expected);
            prop_assert_eq!(&memory.snapshot().expect("snapshot"), &expected_state);

            let dir = tempfile::tempdir().expect("temp dir");
            let single = SledKeyValueStorage::open_with_command_window(dir.path().join("single"), WINDOW)
                .expect("open");
            prop_assert_eq!(&one_by_one(&single, &batches), &expected);
            prop_assert_eq!(&single.snapshot().expect("snapshot"), &expected_state);

            // write-behind: everything pending, then write-outs every two batches
            for (name, write_behind) in [("pending", usize::MAX), ("mixed", 2)] {
                let path = dir.path().join(name);
                let sled = SledKeyValueStorage::open_with(&path, WINDOW, write_behind).expect("open");
                prop_assert_eq!(&batched(&sled, &batches), &expected);
                prop_assert_eq!(reads(&sled, &batches), reads(&reference, &batches));
                prop_assert_eq!(&sled.snapshot().expect("snapshot"), &expected_state);
                drop(sled);
                let reopened = SledKeyValueStorage::open_with(&path, WINDOW, write_behind).expect("reopen");
                prop_assert_eq!(&reopened.snapshot().expect("snapshot"), &expected_state);
                prop_assert_eq!(reopened.last_applied(), Some(LogPosition::new(batches.len() as u64, 1)));
                prop_assert_eq!(reads(&reopened, &batches), reads(&reference, &batches));
            }
        }
    }
}
