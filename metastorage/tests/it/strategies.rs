//! Proptest strategies for commands over a small key space (so operations collide).
use metastorage::{CommandId, CommandOp, CompareOp, Condition, MetaCommand, Operation};
use proptest::prelude::*;

/// Keys from a small alphabet, including empty, zero and high bytes.
pub(crate) fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        b"".to_vec(),
        b"\x00".to_vec(),
        b"a".to_vec(),
        b"a\x00".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        b"\xff".to_vec(),
    ])
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, b'a', b'b', 0xff]), 0..3)
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        3 => (key(), value()).prop_map(|(k, v)| Operation::put(k, v)),
        2 => key().prop_map(Operation::remove),
    ]
}

fn compare() -> impl Strategy<Value = CompareOp> {
    prop::sample::select(vec![
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Lt,
        CompareOp::Le,
        CompareOp::Gt,
        CompareOp::Ge,
    ])
}

/// Conditions of every kind, nested up to three levels.
pub(crate) fn condition() -> impl Strategy<Value = Condition> {
    let leaf = prop_oneof![
        (key(), compare(), value()).prop_map(|(k, op, v)| Condition::value(k, op, v)),
        (key(), compare(), 0u64..8).prop_map(|(k, op, r)| Condition::revision(k, op, r)),
        key().prop_map(Condition::exists),
        key().prop_map(Condition::not_exists),
        key().prop_map(Condition::tombstone),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Condition::All),
            prop::collection::vec(inner, 0..3).prop_map(Condition::Any),
        ]
    })
}

/// Any write command; compaction targets may be ahead of the revision (clamped).
pub(crate) fn command_op() -> impl Strategy<Value = CommandOp> {
    prop_oneof![
        6 => prop::collection::vec(operation(), 0..4).prop_map(|ops| CommandOp::Write { ops }),
        3 => (condition(), prop::collection::vec(operation(), 0..3), prop::collection::vec(operation(), 0..3))
            .prop_map(|(c, s, f)| CommandOp::invoke(c, s, f)),
        1 => (0u64..12).prop_map(|revision| CommandOp::Compact { revision }),
    ]
}

/// A whole command with an id.
pub(crate) fn meta_command() -> impl Strategy<Value = MetaCommand> {
    (any::<u128>(), any::<u64>(), command_op()).prop_map(|(client, seq, op)| MetaCommand {
        id: CommandId::new(uuid::Uuid::from_u128(client), seq),
        op,
    })
}
