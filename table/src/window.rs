//! A partition's command-id window: the commands it applied lately and what they answered,
//! so that a client's retry of a command is answered, not applied twice.
//!
//! The window lives in the partition's meta keys, written in the same batch as the rows and
//! the applied position, so it survives restarts and travels in snapshots:
//! - `w<sequence / 64>` (8 bytes, big-endian) -> a block: its first sequence (8 bytes,
//!   big-endian), then one record per sequence in order: the command id (24 bytes), a kind
//!   byte, and for kind 0 the encoded response (4-byte big-endian length, then the bytes).
//!   Kind 1: the response is longer than [`INLINE_LIMIT`] and lives under `c<command id>`
//!   as (sequence, response), so that appending to a block never copies large responses.
//! - `n` -> the last sequence.
//!
//! Sequence `n` evicts `n - window`: every block whose last sequence is at or below that goes,
//! with its out-of-line responses (one block when its last sequence is evicted; more at once
//! when the window shrank since they were written). So a command writes about one meta key (its block,
//! rewritten in the write-behind layer) and a partition keeps between `window` and
//! `window + 63` ids. Every replica must use the same window.
//!
//! An in-memory [`Index`] (a 64-bit fingerprint of each id -> its sequence) answers "was
//! this id applied?" without reading storage; it is built from the blocks at the first use
//! after the partition opens or restores a snapshot (one prefix scan). A fingerprint match
//! is confirmed against the full id in the block.
//!
//! Earlier layouts are still answered and evicted, for the sequences recorded in them (the
//! ones before the first `w` block): `c<command id>` -> (sequence, response) for every id,
//! with `b<sequence / 64>` blocks of ids (the first sequence, then 24 bytes per id) or,
//! older still, `s<sequence>` -> id.
use std::{
    collections::{hash_map::Entry, HashMap},
    hash::{Hash, Hasher},
};

use crate::{
    command::{CommandId, PartitionResponse},
    error::{Error, Result},
    state_machine::Overlay,
    storage::PartitionStorage,
};

/// Sequences per block (both block layouts).
pub(crate) const SEQS_PER_BLOCK: u64 = 64;
/// Encoded responses up to this many bytes are kept in their block.
pub(crate) const INLINE_LIMIT: usize = 64;
pub(crate) const LAST_SEQ_KEY: &[u8] = b"n";
const WINDOW_BLOCK_PREFIX: u8 = b'w';
const COMMAND_PREFIX: u8 = b'c';
/// Earlier layout: one key per sequence.
const SEQ_PREFIX: u8 = b's';
/// Earlier layout: blocks of ids.
const ID_BLOCK_PREFIX: u8 = b'b';
const ID_BYTES: usize = 24;
const KIND_INLINE: u8 = 0;
const KIND_OUT_OF_LINE: u8 = 1;
const BLOCK: &str = "command window block";

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(prefix);
    key.extend_from_slice(rest);
    key
}

pub(crate) fn command_key(id: CommandId) -> Vec<u8> {
    key(COMMAND_PREFIX, &id.to_bytes())
}

pub(crate) fn window_block_key(seq: u64) -> Vec<u8> {
    key(WINDOW_BLOCK_PREFIX, &(seq / SEQS_PER_BLOCK).to_be_bytes())
}

pub(crate) fn seq_key(seq: u64) -> Vec<u8> {
    key(SEQ_PREFIX, &seq.to_be_bytes())
}

pub(crate) fn id_block_key(seq: u64) -> Vec<u8> {
    key(ID_BLOCK_PREFIX, &(seq / SEQS_PER_BLOCK).to_be_bytes())
}

/// A `c<command id>` record's response.
pub(crate) fn decode_record(raw: Option<Vec<u8>>) -> Result<Option<PartitionResponse>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let (_seq, response): (u64, Vec<u8>) =
        postcard::from_bytes(&raw).map_err(|e| Error::decode("command record", e))?;
    PartitionResponse::decode(&response).map(Some)
}

/// One record of a window block: the id and its inline response (`None`: out of line).
pub(crate) type Record<'a> = (CommandId, Option<&'a [u8]>);

/// Walks a window block, calling `each` with every record's sequence, id and inline
/// response; returns the first sequence and the record count, or why the bytes are not a
/// block. Never panics, whatever the bytes.
pub(crate) fn walk_block<'a>(
    raw: &'a [u8],
    mut each: impl FnMut(u64, Record<'a>),
) -> Result<(u64, u64)> {
    let bad = |reason: String| Error::decode(BLOCK, reason);
    let (first, mut rest) = raw.split_first_chunk::<8>().ok_or_else(|| {
        bad(format!(
            "{} bytes, fewer than its first sequence",
            raw.len()
        ))
    })?;
    let first = u64::from_be_bytes(*first);
    let room = SEQS_PER_BLOCK - first % SEQS_PER_BLOCK;
    let mut count = 0u64;
    while !rest.is_empty() {
        if count == room {
            return Err(bad(format!(
                "more than the {room} records a block from sequence {first} holds"
            )));
        }
        let (id, after) = rest
            .split_first_chunk::<ID_BYTES>()
            .ok_or_else(|| bad(format!("record {count} is cut short in its id")))?;
        let id = CommandId::from_bytes(id).ok_or_else(|| bad(format!("record {count}'s id")))?;
        let (kind, after) = after
            .split_first()
            .ok_or_else(|| bad(format!("record {count} has no kind byte")))?;
        let response = match *kind {
            KIND_INLINE => {
                let (len, after) = after
                    .split_first_chunk::<4>()
                    .ok_or_else(|| bad(format!("record {count} is cut short in its length")))?;
                let len = u32::from_be_bytes(*len) as usize;
                if after.len() < len {
                    return Err(bad(format!(
                        "record {count} claims a {len}-byte response, {} bytes are left",
                        after.len()
                    )));
                }
                let (response, after) = after.split_at(len);
                rest = after;
                Some(response)
            }
            KIND_OUT_OF_LINE => {
                rest = after;
                None
            }
            other => return Err(bad(format!("record {count} has kind {other}"))),
        };
        each(first + count, (id, response));
        count += 1;
    }
    Ok((first, count))
}

/// Appends a record to a window block.
pub(crate) fn append_record(block: &mut Vec<u8>, id: CommandId, inline: Option<&[u8]>) {
    block.extend_from_slice(&id.to_bytes());
    match inline {
        Some(response) => {
            block.push(KIND_INLINE);
            // responses over INLINE_LIMIT go out of line: the length fits
            block.extend_from_slice(&(response.len() as u32).to_be_bytes());
            block.extend_from_slice(response);
        }
        None => block.push(KIND_OUT_OF_LINE),
    }
}

/// Earlier layout: a block of ids' first sequence and its ids, or why the bytes are not one.
pub(crate) fn decode_id_block(raw: &[u8]) -> Result<(u64, &[u8])> {
    let bad = |reason: String| Error::Decode {
        what: "command id block",
        reason,
    };
    let (first, ids) = raw.split_first_chunk::<8>().ok_or_else(|| {
        bad(format!(
            "{} bytes, fewer than its first sequence",
            raw.len()
        ))
    })?;
    if ids.len() % ID_BYTES != 0 || ids.len() as u64 > SEQS_PER_BLOCK * ID_BYTES as u64 {
        return Err(bad(format!("{} bytes of ids", ids.len())));
    }
    Ok((u64::from_be_bytes(*first), ids))
}

/// Earlier layout: the id recorded for `seq` in a block of ids, if it holds it.
pub(crate) fn id_in_block(raw: &[u8], seq: u64) -> Result<Option<CommandId>> {
    let (first, ids) = decode_id_block(raw)?;
    let Some(at) = seq.checked_sub(first) else {
        return Ok(None);
    };
    let start = usize::try_from(at)
        .unwrap_or(usize::MAX)
        .saturating_mul(ID_BYTES);
    Ok(ids
        .get(start..start.saturating_add(ID_BYTES))
        .and_then(CommandId::from_bytes))
}

fn fingerprint(id: CommandId) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

/// Which sequence recorded each id of the window, in memory (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Index {
    by_fingerprint: HashMap<u64, u64>,
    /// Ids whose fingerprint was taken by another id of the window when they came.
    collided: Vec<(CommandId, u64)>,
    /// Sequences up to this one were recorded in an earlier layout.
    legacy_last: u64,
    /// The last sequence recorded.
    last: u64,
    /// The number (sequence / 64) of the oldest block that may be held.
    oldest_block: u64,
}

impl Index {
    /// The index of what `storage` holds (one prefix scan of the window blocks).
    pub(crate) fn load(storage: &dyn PartitionStorage) -> Result<Self> {
        let last = match storage.meta(LAST_SEQ_KEY)? {
            Some(raw) => {
                postcard::from_bytes(&raw).map_err(|e| Error::decode("command sequence", e))?
            }
            None => 0,
        };
        let mut index = Self {
            last,
            ..Self::default()
        };
        // blocks come in key order, so in sequence order
        let (mut oldest, mut newest_end) = (None, None);
        for (key, raw) in storage.meta_with_prefix(&[WINDOW_BLOCK_PREFIX])? {
            let mut ids = Vec::new();
            let (first, count) = walk_block(&raw, |seq, (id, _)| ids.push((id, seq)))?;
            if key != window_block_key(first) {
                return Err(Error::decode(
                    BLOCK,
                    format!("a block from sequence {first} is stored under another block's key"),
                ));
            }
            if count == 0 {
                return Err(Error::decode(
                    BLOCK,
                    format!("the block from sequence {first} holds no records"),
                ));
            }
            oldest.get_or_insert(first);
            newest_end = Some(first + count - 1);
            for (id, seq) in ids {
                index.insert(id, seq);
            }
        }
        // the next record is appended to the newest block: it must end at the last sequence
        if let Some(end) = newest_end.filter(|end| *end != last) {
            return Err(Error::decode(
                BLOCK,
                format!("the newest block ends at sequence {end}, the last sequence is {last}"),
            ));
        }
        let first = oldest;
        index.legacy_last = first.map_or(last, |first| first - 1);
        index.oldest_block = first.unwrap_or(last + 1) / SEQS_PER_BLOCK;
        Ok(index)
    }

    fn insert(&mut self, id: CommandId, seq: u64) {
        self.insert_at(fingerprint(id), id, seq);
    }

    fn insert_at(&mut self, fingerprint: u64, id: CommandId, seq: u64) {
        match self.by_fingerprint.entry(fingerprint) {
            Entry::Vacant(slot) => {
                slot.insert(seq);
            }
            Entry::Occupied(_) => self.collided.push((id, seq)),
        }
    }

    fn remove(&mut self, id: CommandId, seq: u64) {
        self.remove_at(fingerprint(id), seq);
    }

    fn remove_at(&mut self, fingerprint: u64, seq: u64) {
        if self.by_fingerprint.get(&fingerprint) == Some(&seq) {
            self.by_fingerprint.remove(&fingerprint);
        } else {
            self.collided.retain(|(_, s)| *s != seq);
        }
    }

    /// The sequences that may hold `id` (each is confirmed against its block).
    fn candidates(&self, fingerprint: u64, id: CommandId) -> impl Iterator<Item = u64> + '_ {
        self.by_fingerprint
            .get(&fingerprint)
            .copied()
            .into_iter()
            .chain(
                self.collided
                    .iter()
                    .filter(move |(i, _)| *i == id)
                    .map(|(_, s)| *s),
            )
    }

    /// The response command `id` got, if the window holds it.
    pub(crate) fn lookup(
        &self,
        overlay: &Overlay<'_>,
        id: CommandId,
        window: u64,
    ) -> Result<Option<PartitionResponse>> {
        for seq in self.candidates(fingerprint(id), id) {
            if let Some(response) = response_at(overlay, id, seq)? {
                return Ok(Some(response));
            }
        }
        // a record of an earlier layout, while some may still be in the window
        if self.legacy_last > self.last.saturating_sub(window) {
            return decode_record(overlay.meta(&command_key(id))?);
        }
        Ok(None)
    }

    /// Records `id`'s `response` as the next sequence, evicting what falls out of `window`.
    pub(crate) fn remember(
        &mut self,
        overlay: &mut Overlay<'_>,
        id: CommandId,
        response: &PartitionResponse,
        window: u64,
    ) -> Result<()> {
        let seq = self.last + 1;
        let encoded = response.encode()?;
        let inline = encoded.len() <= INLINE_LIMIT;
        let block = overlay.meta_mut(&window_block_key(seq))?;
        match block {
            // the newest block, which ends at the last sequence (checked when the index was
            // built, and only this index appends to it since)
            Some(raw) => append_record(raw, id, inline.then_some(encoded.as_slice())),
            None => {
                let mut raw = seq.to_be_bytes().to_vec();
                append_record(&mut raw, id, inline.then_some(encoded.as_slice()));
                *block = Some(raw);
            }
        }
        if !inline {
            let record = Error::postcard("command record", &(seq, encoded))?;
            overlay.put_meta(command_key(id), record);
        }
        self.insert(id, seq);
        self.last = seq;
        overlay.put_meta(
            LAST_SEQ_KEY.to_vec(),
            Error::postcard("command sequence", &seq)?,
        );
        if seq > window {
            self.evict(overlay, seq - window)?;
        }
        Ok(())
    }

    /// Sequence `evicted` leaves the window: its block goes if it was the block's last.
    fn evict(&mut self, overlay: &mut Overlay<'_>, evicted: u64) -> Result<()> {
        if evicted <= self.legacy_last {
            return evict_legacy(overlay, evicted);
        }
        // every block whose last sequence is evicted goes: one when its last one is, more
        // when the window shrank since the blocks were written
        while self.oldest_block * SEQS_PER_BLOCK + SEQS_PER_BLOCK - 1 <= evicted {
            self.drop_block(overlay, self.oldest_block * SEQS_PER_BLOCK)?;
            self.oldest_block += 1;
        }
        Ok(())
    }

    /// Removes the block holding `seq`, its ids from the index and its out-of-line responses.
    fn drop_block(&mut self, overlay: &mut Overlay<'_>, seq: u64) -> Result<()> {
        let key = window_block_key(seq);
        let Some(raw) = overlay.meta(&key)? else {
            return Ok(());
        };
        let mut gone = Vec::new();
        walk_block(&raw, |seq, (id, inline)| {
            gone.push((id, seq, inline.is_none()))
        })?;
        for (id, seq, out_of_line) in gone {
            self.remove(id, seq);
            if out_of_line {
                overlay.delete_meta(command_key(id));
            }
        }
        overlay.delete_meta(key);
        Ok(())
    }
}

/// The response recorded for `id` at `seq`, if the block there holds `id` at `seq`.
fn response_at(
    overlay: &Overlay<'_>,
    id: CommandId,
    seq: u64,
) -> Result<Option<PartitionResponse>> {
    let Some(raw) = overlay.meta(&window_block_key(seq))? else {
        return Ok(None);
    };
    let mut found = None;
    walk_block(&raw, |s, (i, inline)| {
        if s == seq && i == id {
            found = Some(inline.map(<[u8]>::to_vec));
        }
    })?;
    match found {
        None => Ok(None),
        Some(Some(inline)) => PartitionResponse::decode(&inline).map(Some),
        Some(None) => decode_record(overlay.meta(&command_key(id))?),
    }
}

/// Forgets the id an earlier layout recorded for sequence `evicted` (in its block of ids,
/// or in the key per sequence), and the block once its last sequence goes.
fn evict_legacy(overlay: &mut Overlay<'_>, evicted: u64) -> Result<()> {
    let block = id_block_key(evicted);
    if let Some(raw) = overlay.meta(&block)? {
        if let Some(old) = id_in_block(&raw, evicted)? {
            overlay.delete_meta(command_key(old));
            if evicted % SEQS_PER_BLOCK == SEQS_PER_BLOCK - 1 {
                overlay.delete_meta(block);
            }
            return Ok(());
        }
    }
    if let Some(raw) = overlay.meta(&seq_key(evicted))? {
        if let Some(old) = CommandId::from_bytes(&raw) {
            overlay.delete_meta(command_key(old));
        }
        overlay.delete_meta(seq_key(evicted));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> CommandId {
        CommandId::new(uuid::Uuid::from_u128(9), seq)
    }

    #[test]
    fn ids_sharing_a_fingerprint_are_all_found_and_each_leaves_alone() {
        let mut index = Index::default();
        index.insert_at(42, id(1), 1);
        index.insert_at(42, id(2), 2);
        index.insert_at(7, id(3), 3);
        let found = |index: &Index, id| index.candidates(42, id).collect::<Vec<_>>();
        // the first id's sequence is a candidate for both; the block there tells them apart
        assert_eq!(found(&index, id(1)), vec![1]);
        assert_eq!(found(&index, id(2)), vec![1, 2]);
        index.remove_at(42, 1);
        assert_eq!(found(&index, id(2)), vec![2]);
        assert_eq!(found(&index, id(1)), Vec::<u64>::new());
        index.remove_at(42, 2);
        assert_eq!(found(&index, id(2)), Vec::<u64>::new());
        assert!(index.collided.is_empty());
        assert_eq!(index.candidates(7, id(3)).collect::<Vec<_>>(), vec![3]);
    }
}
