//! The MVCC rules both storages share: how a command becomes versions, idempotency by
//! command id, and read-revision checks. A [`Backend`] supplies the physical layout and an
//! atomic [`Backend::commit`]; everything deterministic lives here, once.
use std::collections::{BTreeMap, HashMap, HashSet};

use parking_lot::Mutex;

use super::{ApplyContext, CommandRecord, StorageSnapshot};
use crate::{
    command::{CommandId, CommandOp, Operation, Outcome},
    entry::{Entry, LogPosition},
    error::{Error, Result},
};

/// A storage's counters, published to readers after each commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) revision: u64,
    pub(crate) compacted: u64,
    pub(crate) update_counter: u64,
    pub(crate) last_applied: Option<LogPosition>,
    pub(crate) command_seq: u64,
}

impl Meta {
    pub(crate) fn of(s: &StorageSnapshot) -> Self {
        Self {
            revision: s.revision,
            compacted: s.compacted,
            update_counter: s.update_counter,
            last_applied: s.last_applied,
            command_seq: s.command_seq,
        }
    }
}

/// Everything one command changes, applied atomically by [`Backend::commit`].
#[derive(Debug, Default)]
pub(crate) struct WriteSet {
    /// The counters after the command.
    pub(crate) meta: Meta,
    /// New versions, all at `meta.revision`, in key order (empty: nothing written).
    pub(crate) entries: Vec<Entry>,
    /// The command id to remember.
    pub(crate) record: Option<CommandRecord>,
    /// The command id that falls out of the window.
    pub(crate) evict: Option<(u64, CommandId)>,
    /// Set when `meta.compacted` moved: prune history up to it.
    pub(crate) compact: bool,
}

/// The remembered command ids (the last `window` of them): both storages keep the whole
/// window in memory, so the idempotency check of every command is a hash lookup.
#[derive(Debug, Default, Clone)]
pub(crate) struct CommandWindow {
    by_id: HashMap<CommandId, (u64, Outcome)>,
    by_seq: BTreeMap<u64, CommandId>,
}

impl CommandWindow {
    /// A window holding `records`.
    pub(crate) fn of(records: impl IntoIterator<Item = CommandRecord>) -> Self {
        let mut window = Self::default();
        for r in records {
            window.remember(r);
        }
        window
    }

    fn remember(&mut self, r: CommandRecord) {
        self.by_id.insert(r.id, (r.seq, r.outcome));
        self.by_seq.insert(r.seq, r.id);
    }

    /// Remembers what `ws` records and forgets what it evicts.
    pub(crate) fn apply(&mut self, ws: &WriteSet) {
        if let Some(r) = ws.record {
            self.remember(r);
        }
        if let Some((seq, id)) = ws.evict {
            self.by_seq.remove(&seq);
            self.by_id.remove(&id);
        }
    }

    /// The outcome `id` got, when it is remembered.
    pub(crate) fn outcome(&self, id: &CommandId) -> Option<Outcome> {
        self.by_id.get(id).map(|(_, o)| *o)
    }

    /// The id remembered with sequence number `seq`.
    pub(crate) fn id_at(&self, seq: u64) -> Option<CommandId> {
        self.by_seq.get(&seq).copied()
    }

    /// Every remembered record, oldest first.
    pub(crate) fn records(&self) -> Vec<CommandRecord> {
        self.by_seq
            .iter()
            .filter_map(|(&seq, id)| {
                let (_, outcome) = self.by_id.get(id)?;
                Some(CommandRecord {
                    seq,
                    id: *id,
                    outcome: *outcome,
                })
            })
            .collect()
    }
}

/// The physical side of a storage.
pub(crate) trait Backend {
    /// Serialises writers (apply, snapshot, restore).
    fn writer(&self) -> &Mutex<()>;
    /// The published counters.
    fn meta(&self) -> Meta;
    /// How many command ids to remember.
    fn command_window(&self) -> u64;
    /// The latest version of `key` at or below `revision`; fails if `revision` is compacted.
    fn version_at(&self, key: &[u8], revision: u64) -> Result<Option<Entry>>;
    /// For each key in `[from, to)` (or starting with `from` when `prefix`), its latest
    /// version at or below `revision`, tombstones included; fails if `revision` is
    /// compacted.
    fn scan_at(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        prefix: bool,
        revision: u64,
    ) -> Result<Vec<Entry>>;
    /// The keys written by `revision`; fails if `revision` is compacted.
    fn keys_of_revision(&self, revision: u64) -> Result<Vec<Vec<u8>>>;
    /// The remembered outcome of a command id.
    fn command(&self, id: &CommandId) -> Result<Option<Outcome>>;
    /// The command id remembered with sequence number `seq`.
    fn command_at_seq(&self, seq: u64) -> Result<Option<CommandId>>;
    /// Apply `ws` atomically, then publish its meta.
    fn commit(&self, ws: WriteSet) -> Result<()>;
    /// Apply the write sets of consecutive commands (none compacts), in order; readers see
    /// each command whole. The default commits them one by one; a backend may commit them
    /// in one atomic step (one sled transaction instead of one per command).
    fn commit_batch(&self, sets: Vec<WriteSet>) -> Result<()> {
        sets.into_iter().try_for_each(|ws| self.commit(ws))
    }
    /// Everything, for a snapshot (called with the writer lock held).
    fn export(&self) -> Result<StorageSnapshot>;
    /// Replace everything (called with the writer lock held).
    fn import(&self, snapshot: StorageSnapshot) -> Result<()>;
}

pub(crate) fn check_compacted(requested: u64, compacted: u64) -> Result<()> {
    if requested < compacted {
        Err(Error::Compacted {
            requested,
            compacted,
        })
    } else {
        Ok(())
    }
}

/// Revisions at or below the compacted one have lost their index: they cannot be replayed.
pub(crate) fn check_replayable(revision: u64, compacted: u64) -> Result<()> {
    if compacted > 0 && revision <= compacted {
        Err(Error::Compacted {
            requested: revision,
            compacted,
        })
    } else {
        Ok(())
    }
}

/// The revision a read at `at` uses.
pub(crate) fn read_revision(b: &impl Backend, at: Option<u64>) -> Result<u64> {
    let current = b.meta().revision;
    match at {
        None => Ok(current),
        Some(r) if r > current => Err(Error::RevisionAhead {
            requested: r,
            current,
        }),
        Some(r) => Ok(r),
    }
}

pub(crate) fn get(b: &impl Backend, key: &[u8], at: Option<u64>) -> Result<Option<Entry>> {
    let rev = read_revision(b, at)?;
    b.version_at(key, rev)
}

pub(crate) fn get_all(
    b: &impl Backend,
    keys: &[Vec<u8>],
    at: Option<u64>,
) -> Result<Vec<Option<Entry>>> {
    let rev = read_revision(b, at)?;
    keys.iter().map(|k| b.version_at(k, rev)).collect()
}

pub(crate) fn range(
    b: &impl Backend,
    from: &[u8],
    to: Option<&[u8]>,
    at: Option<u64>,
) -> Result<Vec<Entry>> {
    let rev = read_revision(b, at)?;
    if to.is_some_and(|to| from >= to) {
        return Ok(Vec::new());
    }
    Ok(live(b.scan_at(from, to, false, rev)?))
}

pub(crate) fn prefix(b: &impl Backend, prefix: &[u8], at: Option<u64>) -> Result<Vec<Entry>> {
    let rev = read_revision(b, at)?;
    Ok(live(b.scan_at(prefix, None, true, rev)?))
}

fn live(entries: Vec<Entry>) -> Vec<Entry> {
    entries.into_iter().filter(|e| !e.tombstone).collect()
}

pub(crate) fn revision_entries(b: &impl Backend, revision: u64) -> Result<Vec<Entry>> {
    let rev = read_revision(b, Some(revision))?;
    let mut out = Vec::new();
    for key in b.keys_of_revision(rev)? {
        match b.version_at(&key, rev)? {
            Some(e) if e.revision == rev => out.push(e),
            _ => {
                return Err(Error::Corrupt {
                    path: Default::default(),
                    reason: format!(
                        "revision index names key {} at revision {rev} but no such version exists",
                        String::from_utf8_lossy(&key)
                    ),
                })
            }
        }
    }
    Ok(out)
}

/// What planning a command reads: the committed state, or the committed state plus the
/// earlier commands of the batch being planned.
trait View {
    fn version_at(&self, key: &[u8], revision: u64) -> Result<Option<Entry>>;
    fn command(&self, id: &CommandId) -> Result<Option<Outcome>>;
    fn command_at_seq(&self, seq: u64) -> Result<Option<CommandId>>;
}

/// The committed state of a backend.
struct Committed<'a, B>(&'a B);

impl<B: Backend> View for Committed<'_, B> {
    fn version_at(&self, key: &[u8], revision: u64) -> Result<Option<Entry>> {
        self.0.version_at(key, revision)
    }
    fn command(&self, id: &CommandId) -> Result<Option<Outcome>> {
        self.0.command(id)
    }
    fn command_at_seq(&self, seq: u64) -> Result<Option<CommandId>> {
        self.0.command_at_seq(seq)
    }
}

/// The committed state of a backend with the planned, not yet committed write sets of a
/// batch on top: each command of a batch sees the ones before it.
struct Overlay<'a, B> {
    base: &'a B,
    /// key -> the versions the batch wrote, ascending revision
    versions: HashMap<Vec<u8>, Vec<Entry>>,
    commands: HashMap<CommandId, Outcome>,
    order: HashMap<u64, CommandId>,
    /// ids and sequence numbers the batch evicted from the window
    evicted: HashSet<CommandId>,
    evicted_seqs: HashSet<u64>,
}

impl<'a, B: Backend> Overlay<'a, B> {
    fn new(base: &'a B) -> Self {
        Self {
            base,
            versions: HashMap::new(),
            commands: HashMap::new(),
            order: HashMap::new(),
            evicted: HashSet::new(),
            evicted_seqs: HashSet::new(),
        }
    }

    /// Lay a planned write set on top, in the order [`Backend::commit`] applies it.
    fn absorb(&mut self, ws: &WriteSet) {
        for e in &ws.entries {
            self.versions
                .entry(e.key.clone())
                .or_default()
                .push(e.clone());
        }
        if let Some(r) = ws.record {
            self.commands.insert(r.id, r.outcome);
            self.evicted.remove(&r.id);
            self.order.insert(r.seq, r.id);
        }
        if let Some((seq, id)) = ws.evict {
            self.order.remove(&seq);
            self.evicted_seqs.insert(seq);
            self.commands.remove(&id);
            self.evicted.insert(id);
        }
    }
}

impl<B: Backend> View for Overlay<'_, B> {
    fn version_at(&self, key: &[u8], revision: u64) -> Result<Option<Entry>> {
        if let Some(history) = self.versions.get(key) {
            let n = history.partition_point(|e| e.revision <= revision);
            if let Some(i) = n.checked_sub(1) {
                return Ok(Some(history[i].clone()));
            }
        }
        self.base.version_at(key, revision)
    }
    fn command(&self, id: &CommandId) -> Result<Option<Outcome>> {
        if let Some(outcome) = self.commands.get(id) {
            return Ok(Some(*outcome));
        }
        if self.evicted.contains(id) {
            return Ok(None);
        }
        self.base.command(id)
    }
    fn command_at_seq(&self, seq: u64) -> Result<Option<CommandId>> {
        if let Some(id) = self.order.get(&seq) {
            return Ok(Some(*id));
        }
        if self.evicted_seqs.contains(&seq) {
            return Ok(None);
        }
        self.base.command_at_seq(seq)
    }
}

/// Apply `op` with its bookkeeping: the one write path of every storage.
pub(crate) fn apply(b: &impl Backend, op: &CommandOp, ctx: &ApplyContext) -> Result<Outcome> {
    let _writer = b.writer().lock();
    let (ws, outcome) = plan(&Committed(b), b.meta(), b.command_window(), op, ctx)?;
    b.commit(ws)?;
    Ok(outcome)
}

/// Apply `items` in order, as if one by one, committing them together
/// ([`Backend::commit_batch`]): each command is planned over the committed state plus the
/// commands before it in the batch. A compaction commits what is planned before it and
/// commits on its own (it prunes committed history, which later commands must see).
pub(crate) fn apply_batch(
    b: &impl Backend,
    items: &[(CommandOp, ApplyContext)],
) -> Result<Vec<Outcome>> {
    let _writer = b.writer().lock();
    let window = b.command_window();
    let mut outcomes = Vec::with_capacity(items.len());
    let mut sets = Vec::new();
    let mut overlay = Overlay::new(b);
    let mut meta = b.meta();
    for (op, ctx) in items {
        if matches!(op, CommandOp::Compact { .. }) {
            if !sets.is_empty() {
                b.commit_batch(std::mem::take(&mut sets))?;
            }
            let (ws, outcome) = plan(&Committed(b), b.meta(), window, op, ctx)?;
            b.commit(ws)?;
            overlay = Overlay::new(b);
            meta = b.meta();
            outcomes.push(outcome);
            continue;
        }
        let (ws, outcome) = plan(&overlay, meta, window, op, ctx)?;
        overlay.absorb(&ws);
        meta = ws.meta;
        sets.push(ws);
        outcomes.push(outcome);
    }
    if !sets.is_empty() {
        b.commit_batch(sets)?;
    }
    Ok(outcomes)
}

/// What `op` changes on top of `view` (whose counters are `meta`), and its outcome.
fn plan(
    view: &impl View,
    meta: Meta,
    window: u64,
    op: &CommandOp,
    ctx: &ApplyContext,
) -> Result<(WriteSet, Outcome)> {
    let mut ws = WriteSet {
        meta,
        ..WriteSet::default()
    };
    if ctx.position.is_some() {
        ws.meta.last_applied = ctx.position;
    }
    if let Some(id) = ctx.id {
        if let Some(first) = view.command(&id)? {
            tracing::debug!(client = %id.client, seq = id.seq, revision = first.revision, "command retried: returning its first outcome");
            return Ok((ws, first));
        }
    }
    let outcome = match op {
        CommandOp::Write { ops } => {
            plan_ops(view, &mut ws, ops)?;
            Outcome {
                revision: ws.meta.revision,
                succeeded: true,
            }
        }
        CommandOp::Invoke {
            condition,
            success,
            failure,
        } => {
            let held = condition.evaluate(&mut |key| view.version_at(key, meta.revision))?;
            plan_ops(view, &mut ws, if held { success } else { failure })?;
            Outcome {
                revision: ws.meta.revision,
                succeeded: held,
            }
        }
        CommandOp::Compact { revision } => {
            let target = (*revision).min(meta.revision);
            if target > meta.compacted {
                ws.meta.compacted = target;
                ws.compact = true;
            }
            Outcome {
                revision: meta.revision,
                succeeded: true,
            }
        }
    };
    if let Some(id) = ctx.id {
        let seq = meta.command_seq + 1;
        ws.meta.command_seq = seq;
        ws.record = Some(CommandRecord { seq, id, outcome });
        let window = window.max(1);
        if seq > window {
            let old = seq - window;
            if let Some(old_id) = view.command_at_seq(old)? {
                ws.evict = Some((old, old_id));
            }
        }
    }
    Ok((ws, outcome))
}

/// Turn `ops` into the versions of one new revision (none if nothing changes).
fn plan_ops(b: &impl View, ws: &mut WriteSet, ops: &[Operation]) -> Result<()> {
    // the last operation on a key wins; BTreeMap gives key order
    let mut last: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
    for op in ops {
        match op {
            Operation::Put { key, value } => last.insert(key, Some(value)),
            Operation::Remove { key } => last.insert(key, None),
        };
    }
    let revision = ws.meta.revision + 1;
    let mut counter = ws.meta.update_counter;
    let mut entries = Vec::with_capacity(last.len());
    for (key, value) in last {
        match value {
            Some(v) => {
                counter += 1;
                entries.push(Entry::live(key.to_vec(), v.to_vec(), revision, counter));
            }
            None => {
                let current = b.version_at(key, ws.meta.revision)?;
                if current.is_some_and(|e| !e.tombstone) {
                    counter += 1;
                    entries.push(Entry::tombstone(key.to_vec(), revision, counter));
                }
            }
        }
    }
    if !entries.is_empty() {
        ws.meta.revision = revision;
        ws.meta.update_counter = counter;
        ws.entries = entries;
    }
    Ok(())
}

/// Which versions of one key's history (ascending revisions) compaction to `compacted`
/// keeps: all above it, and the latest at or below it unless that is a tombstone.
pub(crate) fn retained(history: &[Entry], compacted: u64) -> impl Iterator<Item = &Entry> {
    let at_or_below = history.partition_point(|e| e.revision <= compacted);
    let keep_from = match at_or_below.checked_sub(1).map(|i| &history[i]) {
        Some(e) if !e.tombstone => at_or_below - 1,
        _ => at_or_below,
    };
    history[keep_from..].iter()
}

pub(crate) fn snapshot(b: &impl Backend) -> Result<StorageSnapshot> {
    let _writer = b.writer().lock();
    b.export()
}

pub(crate) fn restore(b: &impl Backend, snapshot: StorageSnapshot) -> Result<()> {
    snapshot
        .validate()
        .map_err(|reason| Error::decode("snapshot", reason))?;
    let _writer = b.writer().lock();
    b.import(snapshot)
}

/// Implement [`KeyValueStorage`](super::KeyValueStorage) for a [`Backend`] with the shared
/// rules (plus the type's own `flush`).
macro_rules! impl_key_value_storage {
    ($ty:ty) => {
        impl $crate::storage::KeyValueStorage for $ty {
            fn revision(&self) -> u64 {
                $crate::storage::mvcc::Backend::meta(self).revision
            }
            fn compacted_revision(&self) -> u64 {
                $crate::storage::mvcc::Backend::meta(self).compacted
            }
            fn last_applied(&self) -> Option<$crate::entry::LogPosition> {
                $crate::storage::mvcc::Backend::meta(self).last_applied
            }
            fn get(
                &self,
                key: &[u8],
                at: Option<u64>,
            ) -> $crate::error::Result<Option<$crate::entry::Entry>> {
                $crate::storage::mvcc::get(self, key, at)
            }
            fn get_all(
                &self,
                keys: &[Vec<u8>],
                at: Option<u64>,
            ) -> $crate::error::Result<Vec<Option<$crate::entry::Entry>>> {
                $crate::storage::mvcc::get_all(self, keys, at)
            }
            fn range(
                &self,
                from: &[u8],
                to: Option<&[u8]>,
                at: Option<u64>,
            ) -> $crate::error::Result<Vec<$crate::entry::Entry>> {
                $crate::storage::mvcc::range(self, from, to, at)
            }
            fn prefix(
                &self,
                prefix: &[u8],
                at: Option<u64>,
            ) -> $crate::error::Result<Vec<$crate::entry::Entry>> {
                $crate::storage::mvcc::prefix(self, prefix, at)
            }
            fn revision_entries(
                &self,
                revision: u64,
            ) -> $crate::error::Result<Vec<$crate::entry::Entry>> {
                $crate::storage::mvcc::revision_entries(self, revision)
            }
            fn apply(
                &self,
                op: &$crate::command::CommandOp,
                ctx: &$crate::storage::ApplyContext,
            ) -> $crate::error::Result<$crate::command::Outcome> {
                $crate::storage::mvcc::apply(self, op, ctx)
            }
            fn apply_batch(
                &self,
                items: &[($crate::command::CommandOp, $crate::storage::ApplyContext)],
            ) -> $crate::error::Result<Vec<$crate::command::Outcome>> {
                $crate::storage::mvcc::apply_batch(self, items)
            }
            fn snapshot(&self) -> $crate::error::Result<$crate::storage::StorageSnapshot> {
                $crate::storage::mvcc::snapshot(self)
            }
            fn snapshot_job(
                self: std::sync::Arc<Self>,
            ) -> $crate::error::Result<$crate::storage::SnapshotJob> {
                self.snapshot_job_impl()
            }
            fn persist_job(
                self: std::sync::Arc<Self>,
            ) -> $crate::error::Result<Option<$crate::storage::PersistJob>> {
                self.persist_job_impl()
            }
            fn restore(
                &self,
                snapshot: $crate::storage::StorageSnapshot,
            ) -> $crate::error::Result<()> {
                $crate::storage::mvcc::restore(self, snapshot)
            }
            fn flush(&self) -> $crate::error::Result<()> {
                self.flush_impl()
            }
            fn apply_would_wait(&self, incoming: usize) -> bool {
                self.would_wait_impl(incoming)
            }
        }
    };
}
pub(crate) use impl_key_value_storage;

#[cfg(test)]
mod tests {
    use super::*;

    fn e(rev: u64, tombstone: bool) -> Entry {
        if tombstone {
            Entry::tombstone(b"k".to_vec(), rev, rev)
        } else {
            Entry::live(b"k".to_vec(), b"v".to_vec(), rev, rev)
        }
    }

    fn kept(history: &[Entry], compacted: u64) -> Vec<u64> {
        retained(history, compacted).map(|e| e.revision).collect()
    }

    #[test]
    fn compaction_keeps_the_latest_live_version_at_or_below() {
        let h = vec![e(1, false), e(3, false), e(5, true), e(7, false)];
        assert_eq!(kept(&h, 0), vec![1, 3, 5, 7]);
        assert_eq!(kept(&h, 1), vec![1, 3, 5, 7]);
        assert_eq!(kept(&h, 2), vec![1, 3, 5, 7]);
        assert_eq!(kept(&h, 3), vec![3, 5, 7]);
        assert_eq!(kept(&h, 4), vec![3, 5, 7]);
        assert_eq!(kept(&h, 5), vec![7], "a tombstone at or below is dropped");
        assert_eq!(kept(&h, 6), vec![7]);
        assert_eq!(kept(&h, 7), vec![7]);
        assert_eq!(kept(&h, 100), vec![7]);
        assert!(kept(&[e(2, true)], 2).is_empty());
    }
}
