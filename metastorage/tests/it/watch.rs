//! Watches: matching, one event per revision with all its entries, strict order across
//! watches, failures reported, and replay across a restart with no gap and no duplicate.
use std::{sync::Arc, time::Duration};

use lifecycle::{BoxError, FaultReporter};
use metastorage::{
    CommandOp, Error, KeyMatcher, KeyValueStorage, LogPosition, MetaCommand, MetaStateMachine,
    SledKeyValueStorage, WatchEvent, WatchProcessor,
};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::support::memory;

const DEADLINE: Duration = Duration::from_secs(10);

/// Records every event it gets, tagged with the watch's name.
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<(&'static str, WatchEvent)>>>,
    changed: Arc<Notify>,
}

impl Recorder {
    fn listener(
        &self,
        name: &'static str,
    ) -> impl Fn(WatchEvent) -> futures::future::Ready<Result<(), BoxError>> + Send + Sync + 'static
    {
        let this = self.clone();
        move |event| {
            this.events.lock().push((name, event));
            this.changed.notify_waiters();
            futures::future::ready(Ok(()))
        }
    }

    fn of(&self, name: &str) -> Vec<WatchEvent> {
        self.events
            .lock()
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn revisions(&self, name: &str) -> Vec<u64> {
        self.of(name).iter().map(|e| e.revision).collect()
    }

    async fn wait_for(&self, name: &str, revision: u64) {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.revisions(name).contains(&revision) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("event within the deadline");
    }
}

struct Node {
    sm: MetaStateMachine,
    next_index: u64,
}

impl Node {
    fn new(storage: Arc<dyn KeyValueStorage>) -> Self {
        let next_index = storage.last_applied().map_or(1, |p| p.index + 1);
        Self {
            sm: MetaStateMachine::new(storage),
            next_index,
        }
    }

    fn write(&mut self, op: CommandOp) -> u64 {
        let bytes = MetaCommand::new(op).encode().expect("encode");
        self.sm
            .apply(LogPosition::new(self.next_index, 1), &bytes)
            .expect("apply");
        self.next_index += 1;
        self.sm.storage().revision()
    }
}

fn processor(node: &Node) -> Arc<WatchProcessor> {
    Arc::new(WatchProcessor::new(Arc::clone(node.sm.storage())))
}

fn keys(event: &WatchEvent) -> Vec<Vec<u8>> {
    event.entries.iter().map(|e| e.new.key.clone()).collect()
}

#[tokio::test]
async fn exact_prefix_and_range_watches_see_matching_entries_once_per_revision() {
    let mut node = Node::new(memory());
    let watches = processor(&node);
    let rec = Recorder::default();
    watches
        .watch_exact(b"a/x", rec.listener("exact"))
        .expect("register");
    watches
        .watch_prefix(b"a/", rec.listener("prefix"))
        .expect("register");
    watches
        .watch_range(b"b", Some(b"d"), rec.listener("range"))
        .expect("register");
    watches
        .register(
            KeyMatcher::Range {
                from: b"c".to_vec(),
                to: None,
            },
            rec.listener("open"),
        )
        .expect("register");
    watches
        .deploy(0, node.sm.subscribe_revisions(), &FaultReporter::detached())
        .expect("deploy");

    let r1 = node.write(CommandOp::put_all(vec![
        (b"a/x".to_vec(), b"1".to_vec()),
        (b"a/y".to_vec(), b"1".to_vec()),
        (b"b".to_vec(), b"1".to_vec()),
        (b"d".to_vec(), b"1".to_vec()),
    ]));
    let r2 = node.write(CommandOp::put("a/y", "2"));
    let r3 = node.write(CommandOp::remove("a/x"));
    let r4 = node.write(CommandOp::put("zzz", "1"));
    watches
        .wait_delivered(r4, DEADLINE)
        .await
        .expect("delivered");

    assert_eq!(rec.revisions("exact"), vec![r1, r3]);
    assert_eq!(rec.revisions("prefix"), vec![r1, r2, r3]);
    assert_eq!(rec.revisions("range"), vec![r1]);
    assert_eq!(rec.revisions("open"), vec![r1, r4]);
    let prefix = rec.of("prefix");
    assert_eq!(
        keys(&prefix[0]),
        vec![b"a/x".to_vec(), b"a/y".to_vec()],
        "one event, all entries"
    );
    assert_eq!(
        keys(&rec.of("range")[0]),
        vec![b"b".to_vec()],
        "[b, d) excludes d"
    );
    assert_eq!(keys(&rec.of("open")[0]), vec![b"d".to_vec()]);

    let update = &prefix[1].entries[0];
    assert_eq!(
        update.old.as_ref().and_then(|e| e.value.clone()),
        Some(b"1".to_vec())
    );
    assert_eq!(update.new.value, Some(b"2".to_vec()));
    let removal = &rec.of("exact")[1].entries[0];
    assert!(removal.new.tombstone, "a removal arrives as a tombstone");
    assert_eq!(removal.old.as_ref().map(|e| e.revision), Some(r1));
    assert!(
        rec.of("exact")[0].entries[0].old.is_none(),
        "a new key has no old version"
    );
    watches.stop().await;
}

#[tokio::test]
async fn no_watch_sees_the_next_revision_before_every_listener_finished() {
    let mut node = Node::new(memory());
    let watches = processor(&node);
    let rec = Recorder::default();
    let gate = Arc::new(Notify::new());
    let slow_started = Arc::new(Notify::new());
    let (g, s) = (Arc::clone(&gate), Arc::clone(&slow_started));
    let slow_rec = rec.clone();
    watches
        .watch_prefix(b"", move |event: WatchEvent| {
            let (g, s, slow_rec) = (Arc::clone(&g), Arc::clone(&s), slow_rec.clone());
            async move {
                if event.revision == 1 {
                    let released = g.notified();
                    s.notify_one();
                    released.await;
                }
                slow_rec.events.lock().push(("slow", event));
                Ok::<(), BoxError>(())
            }
        })
        .expect("register");
    watches
        .watch_prefix(b"", rec.listener("fast"))
        .expect("register");
    let started = slow_started.notified();
    watches
        .deploy(0, node.sm.subscribe_revisions(), &FaultReporter::detached())
        .expect("deploy");
    node.write(CommandOp::put("k", "1"));
    node.write(CommandOp::put("k", "2"));
    tokio::time::timeout(DEADLINE, started)
        .await
        .expect("slow listener started");
    rec.wait_for("fast", 1).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        rec.revisions("fast"),
        vec![1],
        "revision 2 waits for the slow listener"
    );
    assert_eq!(watches.status().delivered, 0);
    gate.notify_one();
    watches
        .wait_delivered(2, DEADLINE)
        .await
        .expect("delivered");
    assert_eq!(rec.revisions("fast"), vec![1, 2]);
    assert_eq!(rec.revisions("slow"), vec![1, 2]);
    watches.stop().await;
}

#[tokio::test]
async fn watches_register_only_before_deploy() {
    let node = Node::new(memory());
    let watches = processor(&node);
    let rec = Recorder::default();
    let id = watches
        .watch_exact(b"k", rec.listener("a"))
        .expect("register");
    watches
        .deploy(0, node.sm.subscribe_revisions(), &FaultReporter::detached())
        .expect("deploy");
    let err = watches
        .watch_prefix(b"p", rec.listener("late"))
        .expect_err("after deploy");
    assert!(matches!(err, Error::WatchesDeployed { .. }));
    assert!(err.to_string().contains("prefix p"), "{err}");
    assert!(watches
        .deploy(0, node.sm.subscribe_revisions(), &FaultReporter::detached())
        .is_err());
    assert!(watches.unregister(id));
    assert!(!watches.unregister(id));
    watches.stop().await;
    watches.stop().await;
    let err = watches
        .wait_delivered(1, DEADLINE)
        .await
        .expect_err("stopped");
    assert!(matches!(err, Error::Stopping(_)), "{err}");
}

#[tokio::test]
async fn a_failing_listener_stops_delivery_and_is_reported() {
    let mut node = Node::new(memory());
    let watches = processor(&node);
    let rec = Recorder::default();
    watches
        .watch_exact(b"bad", |event: WatchEvent| async move {
            if event.revision == 2 {
                Err::<(), BoxError>("cannot handle revision 2".into())
            } else {
                Ok(())
            }
        })
        .expect("register");
    watches
        .watch_prefix(b"", rec.listener("all"))
        .expect("register");
    watches
        .deploy(0, node.sm.subscribe_revisions(), &FaultReporter::detached())
        .expect("deploy");
    node.write(CommandOp::put("bad", "1"));
    node.write(CommandOp::put("bad", "2"));
    node.write(CommandOp::put("bad", "3"));
    let err = watches
        .wait_delivered(3, DEADLINE)
        .await
        .expect_err("delivery failed");
    assert!(
        matches!(err, Error::DeliveryFailed { revision: 2, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("cannot handle revision 2"), "{msg}");
    assert!(msg.contains("revision 2"), "{msg}");
    let status = watches.status();
    assert_eq!(status.delivered, 1, "revision 2 was not completed");
    assert!(status.failed.is_some());
    assert!(
        !rec.revisions("all").contains(&3),
        "nothing after the failure"
    );
    watches.stop().await;
}

#[tokio::test]
async fn restart_replays_exactly_the_missed_revisions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let open = || -> Arc<dyn KeyValueStorage> {
        Arc::new(SledKeyValueStorage::open(dir.path()).expect("open"))
    };
    let rec = Recorder::default();
    // first life: deliver 1..=3, the component records 3 as its applied revision
    let recovery = {
        let mut node = Node::new(open());
        let watches = processor(&node);
        watches
            .watch_prefix(b"k", rec.listener("first"))
            .expect("register");
        watches
            .deploy(0, node.sm.subscribe_revisions(), &FaultReporter::detached())
            .expect("deploy");
        for i in 1..=3 {
            node.write(CommandOp::put(format!("k{i}"), "v"));
        }
        watches
            .wait_delivered(3, DEADLINE)
            .await
            .expect("delivered");
        watches.stop().await;
        // the node is down for the watches while the log goes on (a learner catching up)
        for i in 4..=6 {
            node.write(CommandOp::put_all(vec![
                (format!("k{i}").into_bytes(), b"v".to_vec()),
                (format!("k{i}b").into_bytes(), b"v".to_vec()),
            ]));
        }
        node.sm.storage().flush().expect("flush");
        3
    };
    // second life: recover, deploy from the recovery revision + 1
    let mut node = Node::new(open());
    assert_eq!(node.sm.storage().revision(), 6);
    let watches = processor(&node);
    watches
        .watch_prefix(b"k", rec.listener("second"))
        .expect("register");
    watches
        .deploy(
            recovery,
            node.sm.subscribe_revisions(),
            &FaultReporter::detached(),
        )
        .expect("deploy");
    let r7 = node.write(CommandOp::put("k7", "live"));
    watches
        .wait_delivered(r7, DEADLINE)
        .await
        .expect("delivered");
    assert_eq!(rec.revisions("first"), vec![1, 2, 3]);
    assert_eq!(
        rec.revisions("second"),
        vec![4, 5, 6, 7],
        "no gap, no duplicate"
    );
    for e in &rec.of("second")[..3] {
        assert_eq!(
            e.entries.len(),
            2,
            "a replayed revision keeps all its entries"
        );
    }
    watches.stop().await;
}

#[tokio::test]
async fn deploying_below_the_compacted_revision_is_reported() {
    let mut node = Node::new(memory());
    for i in 0..3 {
        node.write(CommandOp::put("k", format!("{i}")));
    }
    node.write(CommandOp::Compact { revision: 2 });
    let watches = processor(&node);
    let rec = Recorder::default();
    watches
        .watch_prefix(b"", rec.listener("w"))
        .expect("register");
    watches
        .deploy(0, node.sm.subscribe_revisions(), &FaultReporter::detached())
        .expect("deploy");
    let err = watches
        .wait_delivered(3, DEADLINE)
        .await
        .expect_err("history is gone");
    assert!(err.to_string().contains("compacted"), "{err}");
    assert!(rec.revisions("w").is_empty());
    watches.stop().await;
}
