//! Every decoder of bytes from disk or the wire: arbitrary input never panics, valid input
//! round-trips, and the state machine answers any log entry deterministically.
use metastorage::{
    CommandResponse, LogPosition, MemoryKeyValueStorage, MetaCommand, MetaStateMachine,
    StorageSnapshot,
};
use proptest::prelude::*;

use crate::strategies::meta_command;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = MetaCommand::decode(&bytes);
        let _ = CommandResponse::decode(&bytes);
        let _ = StorageSnapshot::decode(&bytes);
        let mut versioned = vec![1u8];
        versioned.extend_from_slice(&bytes);
        let _ = MetaCommand::decode(&versioned);
        let _ = CommandResponse::decode(&versioned);
        let _ = StorageSnapshot::decode(&versioned);
    }

    #[test]
    fn commands_round_trip_and_mutations_never_panic(
        cmd in meta_command(),
        flip in any::<prop::sample::Index>(),
        xor in 1u8..,
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = cmd.encode().expect("encode");
        prop_assert_eq!(MetaCommand::decode(&bytes).expect("decode"), cmd);
        let mut mutated = bytes.clone();
        let i = flip.index(mutated.len());
        mutated[i] ^= xor;
        let _ = MetaCommand::decode(&mutated);
        let truncated = &bytes[..cut.index(bytes.len())];
        prop_assert!(MetaCommand::decode(truncated).is_err(), "a strict prefix never decodes");
    }

    #[test]
    fn the_state_machine_answers_any_entry(entries in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..8)) {
        let a = MetaStateMachine::new(std::sync::Arc::new(MemoryKeyValueStorage::new()));
        let b = MetaStateMachine::new(std::sync::Arc::new(MemoryKeyValueStorage::new()));
        for (i, entry) in entries.iter().enumerate() {
            let position = LogPosition::new(i as u64 + 1, 1);
            let ra = a.apply(position, entry).expect("apply");
            let rb = b.apply(position, entry).expect("apply");
            prop_assert_eq!(&ra, &rb);
            prop_assert!(CommandResponse::decode(&ra).is_ok());
        }
        prop_assert_eq!(a.snapshot().expect("snapshot"), b.snapshot().expect("snapshot"));
    }
}
