//! Writes are timed in the `ignite_vault_write_seconds` histogram.
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use vault::{VaultEntry, VaultManager};

use crate::support::{start, stop};

/// Counts recorded samples of one histogram; every other metric goes nowhere.
struct CountingRecorder {
    name: &'static str,
    samples: Arc<Samples>,
}

#[derive(Default)]
struct Samples(AtomicUsize);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        assert!(value >= 0.0, "a duration is never negative");
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if key.name() == self.name {
            Histogram::from_arc(Arc::clone(&self.samples))
        } else {
            Histogram::noop()
        }
    }
}

#[tokio::test]
async fn every_write_is_timed() {
    let samples = Arc::new(Samples::default());
    metrics::set_global_recorder(CountingRecorder {
        name: "ignite_vault_write_seconds",
        samples: Arc::clone(&samples),
    })
    .expect("the only test in this binary that installs a recorder");

    let vault = VaultManager::in_memory();
    start(&vault).await.expect("start");
    let before = samples.0.load(Ordering::SeqCst);
    vault.put(b"a".to_vec(), b"1".to_vec()).await.expect("put");
    vault.remove(b"a").await.expect("remove");
    vault
        .put_all(vec![
            VaultEntry::put(b"b".to_vec(), b"2".to_vec()),
            VaultEntry::remove(b"c".to_vec()),
        ])
        .await
        .expect("put_all");
    vault
        .get(b"b")
        .await
        .expect("reads are not timed as writes");
    stop(&vault).await;
    // other tests of this binary may write concurrently, so at least our three writes
    assert!(samples.0.load(Ordering::SeqCst) - before >= 3);
}
