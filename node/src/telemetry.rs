//! Process-wide telemetry: the tracing subscriber (binary and test harnesses only) and the
//! Prometheus recorder behind the `metrics` facade.
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the Prometheus recorder once per process and return its handle; `None` when some
/// other recorder was installed first (an embedding application's).
pub fn prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok()?;
            metrics_process::Collector::default().describe();
            Some(handle)
        })
        .clone()
}

/// Render every metric in Prometheus text format, process metrics (RSS, CPU) refreshed.
pub fn render() -> String {
    match prometheus() {
        Some(handle) => {
            metrics_process::Collector::default().collect();
            handle.render()
        }
        None => String::new(),
    }
}

/// Install a `tracing` subscriber writing to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // An already-installed subscriber (a test harness's) is kept.
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
