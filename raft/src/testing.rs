//! Test support: a small in-memory key-value [`StateMachine`] and the runner of openraft's
//! own storage conformance suite over any [`LogStorage`].
use std::{any::Any, collections::BTreeMap, sync::Arc};

use lifecycle::BoxError;
use openraft::{
    testing::{StoreBuilder, Suite},
    StorageIOError,
};
use parking_lot::Mutex;

use crate::{
    log_store::LogStore,
    state_machine::{StateMachine, StateMachineStore},
    storage::LogStorage,
    types::{LogPosition, StorageError, TypeConfig},
};

#[derive(Default, Clone)]
struct KvState {
    applied: Option<LogPosition>,
    data: BTreeMap<String, String>,
    commands: u64,
}

/// A key-value state machine in memory. Commands are [`put`](Self::put) encodings; the reply
/// to one is the previous value (postcard `Option<String>`).
#[derive(Default)]
pub struct MemoryStateMachine {
    state: Mutex<KvState>,
}

impl MemoryStateMachine {
    /// An empty state machine.
    pub fn new() -> Self {
        Self::default()
    }

    /// The command that sets `key` to `value`.
    pub fn put(key: &str, value: &str) -> Vec<u8> {
        postcard::to_stdvec(&(key, value)).unwrap_or_default()
    }

    /// Decodes the reply of a put: the previous value.
    pub fn decode_reply(reply: &[u8]) -> Option<String> {
        postcard::from_bytes(reply).ok().flatten()
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.state.lock().data.get(key).cloned()
    }

    /// Every key and value.
    pub fn data(&self) -> BTreeMap<String, String> {
        self.state.lock().data.clone()
    }

    /// How many commands were applied since the last restore.
    pub fn commands_applied(&self) -> u64 {
        self.state.lock().commands
    }

    /// The index of the last applied entry (0 when none).
    pub fn applied_index(&self) -> u64 {
        self.state.lock().applied.map_or(0, |p| p.index)
    }
}

impl StateMachine for MemoryStateMachine {
    fn last_applied(&self) -> Result<Option<LogPosition>, BoxError> {
        Ok(self.state.lock().applied)
    }

    fn apply(&self, position: LogPosition, command: &[u8]) -> Result<Vec<u8>, BoxError> {
        self.apply_batch(position, std::slice::from_ref(&command.to_vec()))?
            .pop()
            .ok_or_else(|| "no reply".into())
    }

    fn batching(&self) -> bool {
        true
    }

    /// Atomic: every command of the entry and its position under one lock.
    fn apply_batch(
        &self,
        position: LogPosition,
        commands: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, BoxError> {
        let decoded = commands
            .iter()
            .map(|c| postcard::from_bytes::<(String, String)>(c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut state = self.state.lock();
        let mut replies = Vec::with_capacity(decoded.len());
        for (key, value) in decoded {
            let previous = state.data.insert(key, value);
            state.commands += 1;
            replies.push(postcard::to_stdvec(&previous)?);
        }
        state.applied = Some(position);
        Ok(replies)
    }

    fn advance(&self, position: LogPosition) -> Result<(), BoxError> {
        self.state.lock().applied = Some(position);
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        Ok(postcard::to_stdvec(&self.state.lock().data)?)
    }

    fn restore(&self, position: LogPosition, data: &[u8]) -> Result<(), BoxError> {
        let data: BTreeMap<String, String> = postcard::from_bytes(data)?;
        let mut state = self.state.lock();
        state.data = data;
        state.applied = Some(position);
        state.commands = 0;
        Ok(())
    }
}

/// Makes a fresh, empty log storage plus whatever must live as long as it (a temp dir).
pub type MakeStorage = dyn Fn() -> (Arc<dyn LogStorage>, Box<dyn Any + Send + Sync>) + Send + Sync;

struct Builder {
    make: Box<MakeStorage>,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, Box<dyn Any + Send + Sync>> for Builder {
    async fn build(
        &self,
    ) -> Result<(Box<dyn Any + Send + Sync>, LogStore, StateMachineStore), StorageError> {
        let (storage, guard) = (self.make)();
        let sm = StateMachineStore::new(
            "suite",
            Arc::new(MemoryStateMachine::new()),
            Arc::clone(&storage),
            None,
        );
        let log = LogStore::new(storage, None).map_err(StorageIOError::read_logs)?;
        Ok((guard, log, sm))
    }
}

/// Runs openraft's storage conformance suite (`openraft::testing::Suite`) over the storage
/// `make` returns, with [`MemoryStateMachine`] behind the state-machine adapter. Panics on a
/// failed check, as the suite does; returns a storage error as text.
pub fn run_openraft_suite(
    make: impl Fn() -> (Arc<dyn LogStorage>, Box<dyn Any + Send + Sync>) + Send + Sync + 'static,
) -> Result<(), String> {
    let builder = Builder {
        make: Box::new(make),
    };
    Suite::test_all(builder).map_err(|e| e.to_string())
}
