//! openraft's `RaftLogStorage` over our byte-level [`LogStorage`]: the only place that knows
//! how openraft's log entries, votes and log ids are encoded at rest (postcard).
use std::{fmt::Debug, io, ops::RangeBounds, sync::Arc};

use openraft::{
    storage::{LogFlushed, RaftLogStorage},
    AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    storage::{LogStorage, MetaKey},
    types::{Entry, LogId, StorageError, TypeConfig, Vote},
};

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AnyError> {
    postcard::to_stdvec(value).map_err(|e| AnyError::new(&e))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AnyError> {
    postcard::from_bytes(bytes).map_err(|e| AnyError::new(&e))
}

fn any(e: crate::Error) -> AnyError {
    AnyError::new(&e)
}

/// Reads a metadata slot and decodes it.
pub(crate) fn read_meta<T: DeserializeOwned>(
    storage: &dyn LogStorage,
    key: MetaKey,
) -> Result<Option<T>, AnyError> {
    match storage.get_meta(key).map_err(any)? {
        Some(bytes) => Ok(Some(decode(&bytes)?)),
        None => Ok(None),
    }
}

/// Encodes and writes a metadata slot (not yet durable).
pub(crate) fn write_meta<T: Serialize>(
    storage: &dyn LogStorage,
    key: MetaKey,
    value: &T,
) -> Result<(), AnyError> {
    storage.put_meta(key, &encode(value)?).map_err(any)
}

/// Makes everything written so far durable and waits for it.
pub(crate) async fn flush(storage: &dyn LogStorage) -> Result<(), AnyError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    storage.flush(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AnyError::new(&e)),
        Err(_) => Err(AnyError::error("raft log flush was dropped")),
    }
}

/// How far a group's log is durable on this node, as far as the log store knows: the index
/// of the last entry whose flush completed. A flush failure poisons it (nothing waits past
/// it any more); a truncation lowers it, and a flush that was asked for before the
/// truncation no longer raises it (the entries it made durable are gone).
///
/// It is what lets the leader write its own log in parallel with replicating it (Raft's
/// section 10.2.1): the leader reports its append done at once, so openraft sends the
/// entries to the followers without waiting for the leader's fsync and may count the
/// leader in the commit quorum early. Nothing a commit makes visible comes out before the
/// leader's own copy is durable, though: the state machine applies an entry (which answers
/// the client and serves reads) only up to [`Durability::wait`] of its index, and the
/// leader sends a commit index to the followers only once it is durable here. So an entry
/// is applied anywhere only when the leader and the followers openraft counted hold it on
/// disk: a true majority.
pub(crate) struct Durability {
    state: tokio::sync::watch::Sender<Durable>,
}

#[derive(Clone, Debug, Default)]
struct Durable {
    /// The last durable index.
    index: u64,
    /// Bumped by every truncation.
    epoch: u64,
    /// Why a flush failed, once one did.
    failed: Option<Arc<str>>,
}

impl Durability {
    /// Everything up to `index` is durable (what a restart found on disk).
    pub(crate) fn new(index: u64) -> Arc<Self> {
        Arc::new(Self {
            state: tokio::sync::watch::Sender::new(Durable {
                index,
                ..Durable::default()
            }),
        })
    }

    /// The current truncation epoch, to hand to [`flushed`](Self::flushed).
    pub(crate) fn epoch(&self) -> u64 {
        self.state.borrow().epoch
    }

    /// Entries from `from` on were deleted.
    fn truncated(&self, from: u64) {
        self.state.send_modify(|s| {
            s.epoch += 1;
            s.index = s.index.min(from.saturating_sub(1));
        });
    }

    /// A flush asked for at `epoch`, after the entries up to `upto` were written, ended.
    pub(crate) fn flushed(&self, epoch: u64, upto: u64, result: &io::Result<()>) {
        self.state.send_if_modified(|s| match result {
            Err(e) => {
                if s.failed.is_none() {
                    s.failed = Some(Arc::from(e.to_string()));
                }
                true
            }
            Ok(()) if s.epoch == epoch && s.index < upto => {
                s.index = upto;
                true
            }
            Ok(()) => false,
        });
    }

    /// The last durable index.
    #[cfg(test)]
    pub(crate) fn index(&self) -> u64 {
        self.state.borrow().index
    }

    /// Waits until the log is durable up to `index`; an error once a flush failed.
    pub(crate) async fn wait(&self, index: u64) -> Result<(), Arc<str>> {
        let check = |s: &Durable| match &s.failed {
            Some(e) => Some(Err(Arc::clone(e))),
            None if s.index >= index => Some(Ok(())),
            None => None,
        };
        if let Some(done) = check(&self.state.borrow()) {
            return done;
        }
        let mut rx = self.state.subscribe();
        let seen = rx
            .wait_for(|s| check(s).is_some())
            .await
            .map_err(|_| Arc::<str>::from("the raft log was closed"))?;
        check(&seen).unwrap_or(Ok(()))
    }
}

/// A group's log as openraft sees it. Cheap to clone (the reader is a clone).
#[derive(Clone)]
pub(crate) struct LogStore {
    storage: Arc<dyn LogStorage>,
    durability: Arc<Durability>,
    /// This node's id when appends it makes as the leader may be reported done before
    /// they are durable (see [`Durability`]); `None`: every append waits for its flush.
    leader_id: Option<u64>,
    /// The last saved vote, to tell the leader's own appends from a follower's.
    vote: Arc<parking_lot::Mutex<Option<Vote>>>,
}

impl LogStore {
    /// The log of a group kept in `storage`. With `early_ack` (this node's id), appends this
    /// node makes as the group's leader are reported done at once and flushed in the
    /// background: the group must then gate its applies and outgoing commit indexes on
    /// [`durability`](Self::durability), as the manager's groups do.
    pub(crate) fn new(
        storage: Arc<dyn LogStorage>,
        early_ack: Option<u64>,
    ) -> Result<Self, AnyError> {
        // what the storage holds now is on disk; entries purged behind a snapshot count too
        // (a log purged empty would otherwise hold a restarted leader's commit index back)
        let last = storage.last().map_err(any)?.map_or(0, |(index, _)| index);
        let purged: Option<LogId> = read_meta(storage.as_ref(), MetaKey::LastPurged)?;
        let durable = last.max(purged.map_or(0, |p| p.index));
        let vote = read_meta(storage.as_ref(), MetaKey::Vote)?;
        Ok(Self {
            storage,
            durability: Durability::new(durable),
            leader_id: early_ack,
            vote: Arc::new(parking_lot::Mutex::new(vote)),
        })
    }

    /// How far the log is durable.
    pub(crate) fn durability(&self) -> Arc<Durability> {
        Arc::clone(&self.durability)
    }

    /// Whether `entries` are this node's own, appended as the leader of a committed vote.
    fn leaders_own(&self, entries: &[Entry]) -> bool {
        let Some(me) = self.leader_id else {
            return false;
        };
        let vote = self.vote.lock();
        let Some(vote) = vote.as_ref() else {
            return false;
        };
        vote.is_committed()
            && vote.leader_id.node_id == me
            && entries.iter().all(|e| e.log_id.leader_id == vote.leader_id)
    }

    /// Appends `entries` and calls `done` once openraft may take them as written: when they
    /// are durable, or at once for the leader's own entries (see [`Durability`]).
    fn append_entries(
        &self,
        entries: Vec<Entry>,
        done: crate::storage::FlushCallback,
    ) -> Result<(), StorageError> {
        let Some(last) = entries.last().map(|e| e.log_id.index) else {
            done(Ok(()));
            return Ok(());
        };
        let mut raw = Vec::with_capacity(entries.len());
        for entry in &entries {
            raw.push((
                entry.log_id.index,
                encode(entry).map_err(StorageIOError::write_logs)?,
            ));
        }
        let epoch = self.durability.epoch();
        self.storage
            .append(raw)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        let durability = Arc::clone(&self.durability);
        if self.leaders_own(&entries) {
            // the leader's own entries: replicated while they are flushed (see Durability)
            done(Ok(()));
            self.storage.flush(Box::new(move |result| {
                if let Err(e) = &result {
                    tracing::error!(error = %e, "raft log flush failed after the leader's append was reported; the group applies nothing more");
                }
                durability.flushed(epoch, last, &result);
            }));
        } else {
            // reported done by the flush thread, once the append is durable
            self.storage.flush(Box::new(move |result| {
                durability.flushed(epoch, last, &result);
                done(result);
            }));
        }
        Ok(())
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    use std::ops::Bound;
    let from = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (from, to) = bounds(&range);
        let raw = self
            .storage
            .range(from, to)
            .map_err(|e| StorageIOError::read_logs(any(e)))?;
        raw.iter()
            .map(|(_, bytes)| {
                decode::<Entry>(bytes).map_err(|e| StorageIOError::read_logs(e).into())
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> =
            read_meta(self.storage.as_ref(), MetaKey::LastPurged)
                .map_err(StorageIOError::read_logs)?;
        let last = self
            .storage
            .last()
            .map_err(|e| StorageIOError::read_logs(any(e)))?;
        let last_log_id = match last {
            Some((_, bytes)) => Some(
                decode::<Entry>(&bytes)
                    .map_err(StorageIOError::read_logs)?
                    .log_id,
            ),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        write_meta(self.storage.as_ref(), MetaKey::Vote, vote)
            .map_err(StorageIOError::write_vote)?;
        // a vote counts only once it is on disk
        flush(self.storage.as_ref())
            .await
            .map_err(StorageIOError::write_vote)?;
        *self.vote.lock() = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(read_meta(self.storage.as_ref(), MetaKey::Vote).map_err(StorageIOError::read_vote)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // not flushed: a lost committed id is recomputed by the leader
        write_meta(self.storage.as_ref(), MetaKey::Committed, &committed)
            .map_err(StorageIOError::write)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> =
            read_meta(self.storage.as_ref(), MetaKey::Committed).map_err(StorageIOError::read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_entries(
            entries.into_iter().collect(),
            Box::new(move |result| callback.log_io_completed(result)),
        )
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.durability.truncated(log_id.index);
        self.storage
            .truncate_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // record the purge point first: a crash in between leaves extra entries, never a gap
        write_meta(self.storage.as_ref(), MetaKey::LastPurged, &log_id)
            .map_err(StorageIOError::write_logs)?;
        flush(self.storage.as_ref())
            .await
            .map_err(StorageIOError::write_logs)?;
        self.storage
            .purge_upto(log_id.index)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::storage::{FlushCallback, MemoryLogStorage};

    /// A memory log whose flushes complete only when the test says so.
    #[derive(Default)]
    struct HeldFlush {
        log: MemoryLogStorage,
        held: parking_lot::Mutex<Vec<FlushCallback>>,
    }

    impl HeldFlush {
        fn release(&self, result: impl Fn() -> io::Result<()>) -> usize {
            let held = std::mem::take(&mut *self.held.lock());
            let n = held.len();
            for done in held {
                done(result());
            }
            n
        }
    }

    impl LogStorage for HeldFlush {
        fn get_meta(&self, key: MetaKey) -> crate::Result<Option<Vec<u8>>> {
            self.log.get_meta(key)
        }
        fn put_meta(&self, key: MetaKey, value: &[u8]) -> crate::Result<()> {
            self.log.put_meta(key, value)
        }
        fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> crate::Result<()> {
            self.log.append(entries)
        }
        fn range(&self, from: u64, to: u64) -> crate::Result<Vec<(u64, Vec<u8>)>> {
            self.log.range(from, to)
        }
        fn last(&self) -> crate::Result<Option<(u64, Vec<u8>)>> {
            self.log.last()
        }
        fn truncate_from(&self, from: u64) -> crate::Result<()> {
            self.log.truncate_from(from)
        }
        fn purge_upto(&self, upto: u64) -> crate::Result<()> {
            self.log.purge_upto(upto)
        }
        fn flush(&self, done: FlushCallback) {
            self.held.lock().push(done);
        }
    }

    const ME: u64 = 7;
    const OTHER: u64 = 9;

    fn entries(term: u64, leader: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes
            .map(|index| Entry {
                log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
                payload: EntryPayload::Blank,
            })
            .collect()
    }

    /// Appends and reports whether `done` ran (and with what) by the time the call returned.
    fn append(store: &LogStore, batch: Vec<Entry>) -> mpsc::Receiver<io::Result<()>> {
        let (tx, rx) = mpsc::channel();
        store
            .append_entries(
                batch,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .unwrap();
        rx
    }

    fn store_with_vote(vote: Option<Vote>) -> (Arc<HeldFlush>, LogStore) {
        let storage = Arc::new(HeldFlush::default());
        if let Some(vote) = vote {
            write_meta(storage.as_ref(), MetaKey::Vote, &vote).unwrap();
        }
        let store = LogStore::new(Arc::clone(&storage) as Arc<dyn LogStorage>, Some(ME)).unwrap();
        (storage, store)
    }

    #[test]
    fn the_leaders_own_append_is_reported_at_once_and_durable_only_after_its_flush() {
        let (storage, store) = store_with_vote(Some(Vote::new_committed(3, ME)));
        let done = append(&store, entries(3, ME, 1..=4));
        assert!(
            matches!(done.try_recv(), Ok(Ok(()))),
            "reported before the flush"
        );
        assert_eq!(
            store.durability().index(),
            0,
            "not durable before the flush"
        );
        assert_eq!(storage.release(|| Ok(())), 1);
        assert_eq!(store.durability().index(), 4);
    }

    #[test]
    fn a_followers_append_and_an_uncommitted_vote_wait_for_the_flush() {
        for (vote, batch) in [
            // a follower of OTHER
            (
                Some(Vote::new_committed(3, OTHER)),
                entries(3, OTHER, 1..=2),
            ),
            // a candidate: its vote for itself is not committed
            (Some(Vote::new(3, ME)), entries(3, ME, 1..=2)),
            // the leader of term 3 given entries of its own earlier term (as a follower would be)
            (Some(Vote::new_committed(3, ME)), entries(2, ME, 1..=2)),
            (None, entries(1, ME, 1..=2)),
        ] {
            let (storage, store) = store_with_vote(vote);
            let done = append(&store, batch);
            assert!(
                done.try_recv().is_err(),
                "{vote:?}: reported before the flush"
            );
            storage.release(|| Ok(()));
            assert!(matches!(done.try_recv(), Ok(Ok(()))), "{vote:?}");
            assert_eq!(store.durability().index(), 2);
        }
        // without an id the store never reports early
        let storage = Arc::new(HeldFlush::default());
        write_meta(storage.as_ref(), MetaKey::Vote, &Vote::new_committed(3, ME)).unwrap();
        let store = LogStore::new(Arc::clone(&storage) as Arc<dyn LogStorage>, None).unwrap();
        let done = append(&store, entries(3, ME, 1..=1));
        assert!(done.try_recv().is_err());
        storage.release(|| Ok(()));
        assert!(matches!(done.try_recv(), Ok(Ok(()))));
    }

    /// Saves `vote` through `store`, completing the vote's own flush.
    async fn save_vote(storage: &HeldFlush, store: &LogStore, vote: Vote) {
        let save = tokio::spawn({
            let mut store = store.clone();
            async move { store.save_vote(&vote).await }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while storage.release(|| Ok(())) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        save.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn saving_a_vote_switches_early_reports_on_and_off() {
        let (storage, mut store) = store_with_vote(None);
        save_vote(&storage, &store, Vote::new_committed(4, ME)).await;
        let done = append(&store, entries(4, ME, 1..=1));
        assert!(
            matches!(done.try_recv(), Ok(Ok(()))),
            "the leader's own append"
        );
        storage.release(|| Ok(()));
        save_vote(&storage, &store, Vote::new_committed(5, OTHER)).await;
        let done = append(&store, entries(5, OTHER, 2..=2));
        assert!(done.try_recv().is_err(), "a follower's append waits");
        storage.release(|| Ok(()));
        assert!(matches!(done.try_recv(), Ok(Ok(()))));
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(5, OTHER))
        );
    }

    #[tokio::test]
    async fn wait_returns_once_durable_and_fails_once_a_flush_failed() {
        let (storage, store) = store_with_vote(Some(Vote::new_committed(1, ME)));
        let durability = store.durability();
        append(&store, entries(1, ME, 1..=3));
        let waiter = tokio::spawn({
            let durability = Arc::clone(&durability);
            async move { durability.wait(3).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "nothing is durable yet");
        storage.release(|| Ok(()));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // a failed flush poisons every wait past the durable index, not the ones before it
        append(&store, entries(1, ME, 4..=4));
        storage.release(|| Err(io::Error::other("disk gone")));
        let failed = durability.wait(4).await.unwrap_err();
        assert!(failed.contains("disk gone"), "{failed}");
        assert!(
            durability.wait(2).await.is_err(),
            "a failed log serves nothing more"
        );
    }

    #[tokio::test]
    async fn a_truncation_lowers_the_durable_index_and_a_flush_from_before_it_does_not_raise_it() {
        let (storage, mut store) = store_with_vote(Some(Vote::new_committed(2, ME)));
        append(&store, entries(2, ME, 1..=5));
        storage.release(|| Ok(()));
        assert_eq!(store.durability().index(), 5);
        // entries 6..=8 written, their flush still running, when a new leader replaces 4..
        append(&store, entries(2, ME, 6..=8));
        store
            .truncate(LogId::new(CommittedLeaderId::new(2, ME), 4))
            .await
            .unwrap();
        assert_eq!(store.durability().index(), 3);
        storage.release(|| Ok(()));
        assert_eq!(
            store.durability().index(),
            3,
            "the old flush's entries are gone"
        );
        let done = append(&store, entries(3, OTHER, 4..=6));
        storage.release(|| Ok(()));
        assert!(matches!(done.try_recv(), Ok(Ok(()))));
        assert_eq!(store.durability().index(), 6);
    }

    #[test]
    fn a_restart_finds_its_log_durable() {
        let storage = Arc::new(MemoryLogStorage::new());
        storage
            .append(vec![(1, encode(&entries(1, ME, 1..=1)[0]).unwrap())])
            .unwrap();
        storage
            .append(vec![(2, encode(&entries(1, ME, 2..=2)[0]).unwrap())])
            .unwrap();
        let store = LogStore::new(Arc::clone(&storage) as Arc<dyn LogStorage>, Some(ME)).unwrap();
        assert_eq!(store.durability().index(), 2);
        // a log purged empty behind a snapshot at 9: durable up to 9
        storage.purge_upto(2).unwrap();
        write_meta(
            storage.as_ref(),
            MetaKey::LastPurged,
            &LogId::new(CommittedLeaderId::new(1, ME), 9),
        )
        .unwrap();
        let store = LogStore::new(storage, Some(ME)).unwrap();
        assert_eq!(store.durability().index(), 9);
    }
}
