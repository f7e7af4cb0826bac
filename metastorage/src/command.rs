//! Write commands, conditions and responses: what travels through the Raft log.
//!
//! Everything here is a serde type encoded with postcard behind a one-byte format version.
//! Decoding is strict (no trailing bytes) and never panics on arbitrary input: conditions
//! travel as a flat pre-order list and are rebuilt with a depth limit, so hostile nesting
//! cannot overflow the stack.
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    entry::Entry,
    error::{Error, Result},
};

/// The format version byte in front of every encoded command, response and snapshot.
pub(crate) const WIRE_VERSION: u8 = 1;

/// The deepest `and`/`or` nesting a decoded condition may have.
pub const MAX_CONDITION_DEPTH: usize = 32;

/// A comparison of an actual value (left) with an expected one (right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareOp {
    /// `actual == expected`
    Eq,
    /// `actual != expected`
    Ne,
    /// `actual < expected`
    Lt,
    /// `actual <= expected`
    Le,
    /// `actual > expected`
    Gt,
    /// `actual >= expected`
    Ge,
}

impl CompareOp {
    /// Whether `actual <op> expected` holds.
    pub fn holds<T: Ord + ?Sized>(self, actual: &T, expected: &T) -> bool {
        match self {
            CompareOp::Eq => actual == expected,
            CompareOp::Ne => actual != expected,
            CompareOp::Lt => actual < expected,
            CompareOp::Le => actual <= expected,
            CompareOp::Gt => actual > expected,
            CompareOp::Ge => actual >= expected,
        }
    }
}

/// What a [`KeyTest`] checks about a key's latest version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Check {
    /// The key is live and its value compares (bytewise) with the given one; false on an
    /// absent or removed key.
    Value(CompareOp, #[serde(with = "serde_bytes")] Vec<u8>),
    /// The revision of the key's latest version (a tombstone's included; 0 when the key has
    /// no version) compares with the given one. `Revision(Eq, 0)` means "never written (or
    /// compacted away)".
    Revision(CompareOp, u64),
    /// The key has a live value.
    Exists,
    /// The key has no live value: never written, or removed.
    NotExists,
    /// The key's latest version is a tombstone (it was removed and not written since).
    Tombstone,
}

/// One check on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyTest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The check.
    pub check: Check,
}

impl KeyTest {
    /// Evaluate against the key's latest version (`None`: no version).
    pub fn test(&self, latest: Option<&Entry>) -> bool {
        match &self.check {
            Check::Value(op, expected) => latest
                .and_then(Entry::live_value)
                .is_some_and(|actual| op.holds(actual, expected.as_slice())),
            Check::Revision(op, expected) => op.holds(&latest.map_or(0, |e| e.revision), expected),
            Check::Exists => latest.and_then(Entry::live_value).is_some(),
            Check::NotExists => latest.and_then(Entry::live_value).is_none(),
            Check::Tombstone => latest.is_some_and(|e| e.tombstone),
        }
    }
}

/// The condition of an [`CommandOp::Invoke`]: key tests combined with `and`/`or`.
///
/// `All([])` holds and `Any([])` does not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "FlatCondition", try_from = "FlatCondition")]
pub enum Condition {
    /// One key test.
    Test(KeyTest),
    /// Every condition holds.
    All(Vec<Condition>),
    /// At least one condition holds.
    Any(Vec<Condition>),
}

impl Condition {
    /// The key's value compares with `value` (false when the key has no live value).
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::test(key, Check::Value(op, value.into()))
    }

    /// The revision of the key's latest version (0 if none) compares with `revision`.
    pub fn revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: u64) -> Self {
        Self::test(key, Check::Revision(op, revision))
    }

    /// The key has a live value.
    pub fn exists(key: impl Into<Vec<u8>>) -> Self {
        Self::test(key, Check::Exists)
    }

    /// The key has no live value.
    pub fn not_exists(key: impl Into<Vec<u8>>) -> Self {
        Self::test(key, Check::NotExists)
    }

    /// The key's latest version is a tombstone.
    pub fn tombstone(key: impl Into<Vec<u8>>) -> Self {
        Self::test(key, Check::Tombstone)
    }

    fn test(key: impl Into<Vec<u8>>, check: Check) -> Self {
        Condition::Test(KeyTest {
            key: key.into(),
            check,
        })
    }

    /// `self` and `other`.
    pub fn and(self, other: Condition) -> Self {
        Condition::All(vec![self, other])
    }

    /// `self` or `other`.
    pub fn or(self, other: Condition) -> Self {
        Condition::Any(vec![self, other])
    }

    /// Every key this condition reads, in order of appearance (may repeat).
    pub fn keys(&self) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(c) = stack.pop() {
            match c {
                Condition::Test(t) => out.push(t.key.as_slice()),
                Condition::All(cs) | Condition::Any(cs) => stack.extend(cs.iter().rev()),
            }
        }
        out
    }

    /// Evaluate with `latest(key)` giving each key's latest version. `and`/`or` short-cut.
    pub fn evaluate<E>(
        &self,
        latest: &mut impl FnMut(&[u8]) -> Result<Option<Entry>, E>,
    ) -> Result<bool, E> {
        match self {
            Condition::Test(t) => Ok(t.test(latest(&t.key)?.as_ref())),
            Condition::All(cs) => {
                for c in cs {
                    if !c.evaluate(latest)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Condition::Any(cs) => {
                for c in cs {
                    if c.evaluate(latest)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    fn flatten_into(self, out: &mut Vec<FlatNode>) {
        match self {
            Condition::Test(t) => out.push(FlatNode::Test(t)),
            Condition::All(cs) => {
                out.push(FlatNode::All(cs.len() as u64));
                cs.into_iter().for_each(|c| c.flatten_into(out));
            }
            Condition::Any(cs) => {
                out.push(FlatNode::Any(cs.len() as u64));
                cs.into_iter().for_each(|c| c.flatten_into(out));
            }
        }
    }
}

/// The wire form of a [`Condition`]: its nodes in pre-order, each combinator with its child
/// count.
#[derive(Serialize, Deserialize)]
struct FlatCondition(Vec<FlatNode>);

#[derive(Clone, Serialize, Deserialize)]
enum FlatNode {
    Test(KeyTest),
    All(u64),
    Any(u64),
}

impl From<Condition> for FlatCondition {
    fn from(c: Condition) -> Self {
        let mut out = Vec::new();
        c.flatten_into(&mut out);
        FlatCondition(out)
    }
}

impl TryFrom<FlatCondition> for Condition {
    type Error = String;

    fn try_from(flat: FlatCondition) -> Result<Self, String> {
        let mut nodes = flat.0.into_iter();
        let condition = rebuild(&mut nodes, 0)?;
        if nodes.next().is_some() {
            return Err("condition has trailing nodes".into());
        }
        Ok(condition)
    }
}

fn rebuild(nodes: &mut std::vec::IntoIter<FlatNode>, depth: usize) -> Result<Condition, String> {
    if depth > MAX_CONDITION_DEPTH {
        return Err(format!(
            "condition nests deeper than {MAX_CONDITION_DEPTH} levels"
        ));
    }
    let (count, all) = match nodes.next() {
        None => return Err("condition ends early".into()),
        Some(FlatNode::Test(t)) => return Ok(Condition::Test(t)),
        Some(FlatNode::All(n)) => (n, true),
        Some(FlatNode::Any(n)) => (n, false),
    };
    if count > nodes.len() as u64 {
        return Err(format!(
            "condition combinator claims {count} children but {} nodes remain",
            nodes.len()
        ));
    }
    let mut children = Vec::new();
    for _ in 0..count {
        children.push(rebuild(nodes, depth + 1)?);
    }
    Ok(if all {
        Condition::All(children)
    } else {
        Condition::Any(children)
    })
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// Set the key's value.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove the key (a tombstone; nothing if it has no live value).
    Remove {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl Operation {
    /// Set `key` to `value`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Operation::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Remove `key`.
    pub fn remove(key: impl Into<Vec<u8>>) -> Self {
        Operation::Remove { key: key.into() }
    }

    /// The key this operation changes.
    pub fn key(&self) -> &[u8] {
        match self {
            Operation::Put { key, .. } | Operation::Remove { key } => key,
        }
    }
}

/// What a write command does.
///
/// A command that changes at least one key produces exactly one new revision holding all
/// its changes; one that changes nothing (removing absent keys, an empty branch) leaves the
/// revision as it is. Within one command a later operation on a key wins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandOp {
    /// Apply the operations (`put`, `put_all`, `remove`, `remove_all`).
    Write {
        /// The operations, in order.
        ops: Vec<Operation>,
    },
    /// Evaluate `condition` on the latest state; apply `success` if it holds, else `failure`.
    Invoke {
        /// The condition.
        condition: Condition,
        /// Applied when the condition holds.
        success: Vec<Operation>,
        /// Applied when it does not.
        failure: Vec<Operation>,
    },
    /// Compact history up to `revision` (clamped to the current revision): the latest
    /// version of every key at or below it is kept (dropped if it is a tombstone).
    Compact {
        /// The revision to compact to.
        revision: u64,
    },
}

impl CommandOp {
    /// `put(key, value)`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        CommandOp::Write {
            ops: vec![Operation::put(key, value)],
        }
    }

    /// `put_all(entries)`.
    pub fn put_all(entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Self {
        CommandOp::Write {
            ops: entries
                .into_iter()
                .map(|(k, v)| Operation::put(k, v))
                .collect(),
        }
    }

    /// `remove(key)`.
    pub fn remove(key: impl Into<Vec<u8>>) -> Self {
        CommandOp::Write {
            ops: vec![Operation::remove(key)],
        }
    }

    /// `remove_all(keys)`.
    pub fn remove_all(keys: impl IntoIterator<Item = Vec<u8>>) -> Self {
        CommandOp::Write {
            ops: keys.into_iter().map(Operation::remove).collect(),
        }
    }

    /// `invoke(condition, success, failure)`.
    pub fn invoke(condition: Condition, success: Vec<Operation>, failure: Vec<Operation>) -> Self {
        CommandOp::Invoke {
            condition,
            success,
            failure,
        }
    }
}

/// Identifies a command across client retries: a client id and the client's sequence
/// number. A retry reuses the id and gets the first response back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId {
    /// The client (a random id per client instance).
    pub client: Uuid,
    /// The client's sequence number.
    pub seq: u64,
}

impl CommandId {
    /// A command id of a client.
    pub fn new(client: Uuid, seq: u64) -> Self {
        Self { client, seq }
    }

    /// A fresh random id (a one-shot client).
    pub fn random() -> Self {
        Self::new(Uuid::new_v4(), 0)
    }

    /// 24 bytes: the client id, then the sequence number big-endian.
    pub(crate) fn to_bytes(self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..16].copy_from_slice(self.client.as_bytes());
        out[16..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let client = Uuid::from_slice(bytes.get(..16)?).ok()?;
        let seq = u64::from_be_bytes(bytes.get(16..24)?.try_into().ok()?);
        (bytes.len() == 24).then_some(Self { client, seq })
    }
}

/// A write command: what the Raft log carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MetaCommand {
    /// Identifies the command across retries.
    pub id: CommandId,
    /// What it does.
    pub op: CommandOp,
}

impl MetaCommand {
    /// A command with a fresh random id.
    pub fn new(op: CommandOp) -> Self {
        Self {
            id: CommandId::random(),
            op,
        }
    }

    /// Encode for the log.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode("command", self)
    }

    /// Decode bytes from the log; fails (never panics) on anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode("command", bytes)
    }

    /// Whether `bytes` encode a [`CommandOp::Compact`], read from the version, the id and
    /// the op's variant alone (no allocation). False for anything that does not decode that
    /// far.
    pub fn is_compaction(bytes: &[u8]) -> bool {
        /// The position of `Compact` in [`CommandOp`] (postcard encodes it as a varint).
        const COMPACT_VARIANT: u32 = 2;
        match bytes.split_first() {
            Some((&WIRE_VERSION, body)) => matches!(
                postcard::take_from_bytes::<(CommandId, u32)>(body),
                Ok(((_, COMPACT_VARIANT), _))
            ),
            _ => false,
        }
    }
}

/// The result of a write command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Outcome {
    /// The storage revision right after the command: the revision it wrote, or the
    /// unchanged one if it changed nothing.
    pub revision: u64,
    /// For `invoke`: whether the condition held. True for other commands.
    pub succeeded: bool,
}

/// What the state machine answers for one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandResponse {
    /// The command was applied (or was a retry of one applied before: the same outcome).
    Applied(Outcome),
    /// The entry was not a valid command; nothing changed. Every replica answers the same.
    Invalid {
        /// Why.
        reason: String,
    },
}

impl CommandResponse {
    /// Encode for the client.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode("response", self)
    }

    /// Decode a response; fails (never panics) on anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode("response", bytes)
    }
}

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    let mut out = vec![WIRE_VERSION];
    postcard::to_io(value, &mut out).map_err(|e| Error::encode(what, e))?;
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        None => Err(Error::decode(what, "empty input")),
        Some((&WIRE_VERSION, body)) => {
            let (value, rest) =
                postcard::take_from_bytes::<T>(body).map_err(|e| Error::decode(what, e))?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(Error::decode(
                    what,
                    format!("{} trailing bytes", rest.len()),
                ))
            }
        }
        Some((v, _)) => Err(Error::decode(
            what,
            format!("unknown format version {v} (expected {WIRE_VERSION})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compactions_are_told_from_the_encoding_alone() {
        let encoded = |op: CommandOp| MetaCommand::new(op).encode().expect("encode");
        assert!(MetaCommand::is_compaction(&encoded(CommandOp::Compact {
            revision: 7
        })));
        // a large sequence number takes the longest varint
        let late = MetaCommand {
            id: CommandId {
                client: Uuid::new_v4(),
                seq: u64::MAX,
            },
            op: CommandOp::Compact { revision: 1 },
        };
        assert!(MetaCommand::is_compaction(&late.encode().expect("encode")));
        for op in [
            CommandOp::put(b"k".to_vec(), b"v".to_vec()),
            CommandOp::Write { ops: Vec::new() },
            CommandOp::invoke(Condition::exists(b"k".to_vec()), Vec::new(), Vec::new()),
        ] {
            assert!(!MetaCommand::is_compaction(&encoded(op)));
        }
        let compact = encoded(CommandOp::Compact { revision: 7 });
        // the last byte is the revision: any shorter cut loses the variant
        for cut in 0..compact.len() - 1 {
            assert!(!MetaCommand::is_compaction(&compact[..cut]), "cut at {cut}");
        }
        assert!(!MetaCommand::is_compaction(b""));
        assert!(!MetaCommand::is_compaction(&[0xff; 40]));
    }

    fn live(v: &[u8], rev: u64) -> Entry {
        Entry::live(b"k".to_vec(), v.to_vec(), rev, rev)
    }

    #[test]
    fn key_tests_table() {
        let tomb = Entry::tombstone(b"k".to_vec(), 4, 4);
        let v = live(b"m", 3);
        // (check, on absent, on live "m"@3, on tombstone@4)
        let table: Vec<(Check, bool, bool, bool)> = vec![
            (
                Check::Value(CompareOp::Eq, b"m".to_vec()),
                false,
                true,
                false,
            ),
            (
                Check::Value(CompareOp::Ne, b"m".to_vec()),
                false,
                false,
                false,
            ),
            (
                Check::Value(CompareOp::Ne, b"x".to_vec()),
                false,
                true,
                false,
            ),
            (
                Check::Value(CompareOp::Lt, b"n".to_vec()),
                false,
                true,
                false,
            ),
            (
                Check::Value(CompareOp::Le, b"m".to_vec()),
                false,
                true,
                false,
            ),
            (
                Check::Value(CompareOp::Gt, b"l".to_vec()),
                false,
                true,
                false,
            ),
            (
                Check::Value(CompareOp::Ge, b"m\x00".to_vec()),
                false,
                false,
                false,
            ),
            (Check::Revision(CompareOp::Eq, 0), true, false, false),
            (Check::Revision(CompareOp::Eq, 3), false, true, false),
            (Check::Revision(CompareOp::Eq, 4), false, false, true),
            (Check::Revision(CompareOp::Lt, 4), true, true, false),
            (Check::Revision(CompareOp::Ge, 4), false, false, true),
            (Check::Exists, false, true, false),
            (Check::NotExists, true, false, true),
            (Check::Tombstone, false, false, true),
        ];
        for (check, absent, on_live, on_tomb) in table {
            let t = KeyTest {
                key: b"k".to_vec(),
                check: check.clone(),
            };
            assert_eq!(t.test(None), absent, "{check:?} on an absent key");
            assert_eq!(t.test(Some(&v)), on_live, "{check:?} on a live key");
            assert_eq!(t.test(Some(&tomb)), on_tomb, "{check:?} on a tombstone");
        }
    }

    #[test]
    fn and_or_short_cut_and_empty_identities() {
        let mut reads = Vec::new();
        let mut latest = |k: &[u8]| -> Result<Option<Entry>, ()> {
            reads.push(k.to_vec());
            Ok(None)
        };
        let c = Condition::exists("a").and(Condition::exists("b"));
        assert!(!c.evaluate(&mut latest).unwrap());
        let c = Condition::not_exists("c").or(Condition::exists("d"));
        assert!(c.evaluate(&mut latest).unwrap());
        assert_eq!(reads, vec![b"a".to_vec(), b"c".to_vec()], "short cut");
        let mut none = |_: &[u8]| -> Result<Option<Entry>, ()> { Ok(None) };
        assert!(Condition::All(vec![]).evaluate(&mut none).unwrap());
        assert!(!Condition::Any(vec![]).evaluate(&mut none).unwrap());
    }

    #[test]
    fn commands_round_trip() {
        let cond = Condition::value("a", CompareOp::Gt, "x")
            .and(Condition::revision("b", CompareOp::Eq, 0).or(Condition::tombstone("c")));
        let cmd = MetaCommand {
            id: CommandId::new(Uuid::from_u128(42), 7),
            op: CommandOp::invoke(
                cond.clone(),
                vec![Operation::put("a", "1"), Operation::remove("b")],
                vec![],
            ),
        };
        let bytes = cmd.encode().unwrap();
        assert_eq!(MetaCommand::decode(&bytes).unwrap(), cmd);
        assert_eq!(cond.keys(), vec![&b"a"[..], b"b", b"c"]);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(MetaCommand::decode(&trailing).is_err(), "trailing bytes");
        let mut versioned = bytes;
        versioned[0] = 99;
        let err = MetaCommand::decode(&versioned).unwrap_err().to_string();
        assert!(err.contains("format version 99"), "{err}");
    }

    #[test]
    fn deep_conditions_are_refused_not_overflowed() {
        // 100,000 nested `All(1)` nodes: a recursive decoder would overflow the stack.
        let mut flat = vec![FlatNode::All(1); 100_000];
        flat.push(FlatNode::Test(KeyTest {
            key: b"k".to_vec(),
            check: Check::Exists,
        }));
        let bytes = encode("condition", &FlatCondition(flat.clone())).unwrap();
        assert!(decode::<Condition>("condition", &bytes).is_err());
        // postcard drops custom messages; the reason is the depth limit
        let err = Condition::try_from(FlatCondition(flat)).unwrap_err();
        assert!(err.contains("nests deeper"), "{err}");

        let mut ok = Condition::exists("k");
        for _ in 0..MAX_CONDITION_DEPTH {
            ok = Condition::All(vec![ok]);
        }
        let bytes = encode("condition", &ok).unwrap();
        assert_eq!(decode::<Condition>("condition", &bytes).unwrap(), ok);
    }

    #[test]
    fn command_id_bytes_round_trip() {
        let id = CommandId::new(Uuid::from_u128(u128::MAX - 3), 99);
        assert_eq!(CommandId::from_bytes(&id.to_bytes()), Some(id));
        assert_eq!(CommandId::from_bytes(&[1; 23]), None);
    }
}
