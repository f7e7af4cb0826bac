//! `ignite start`: run a node until a signal or a runtime fault.
use std::path::PathBuf;

use clap::Args;

use crate::{ignite::NodeOptions, telemetry, IgniteImpl};

/// Flags override values from the file, which override the environment-free defaults.
#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// TOML configuration file (sections `[node]`, `[rest]`, ...).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Node name (`node.name`).
    #[arg(long)]
    name: Option<String>,
    /// Data directory (`node.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// REST address (`rest.listen`), e.g. 127.0.0.1:10300.
    #[arg(long)]
    rest: Option<String>,
    /// Network address for messaging and membership (`network.listen`), e.g. 127.0.0.1:3344.
    #[arg(long)]
    listen: Option<String>,
    /// Other nodes to join through (`network.seeds`), comma separated host:port.
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<String>>,
    /// Run as a one-node cluster (the embedded default) instead of waiting for `cluster init`.
    #[arg(long)]
    standalone: bool,
    /// Threads of the node's task scheduler (1: a single-threaded scheduler). Default: half
    /// the machine's cores, at least 1; the Raft log's syncs, write-outs and snapshots run
    /// on threads of their own besides.
    #[arg(long, env = "IGNITE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
}

impl StartArgs {
    /// Threads for the scheduler the node runs on: the flag's, else half the cores.
    pub(crate) fn worker_threads(&self) -> usize {
        self.worker_threads.map_or_else(
            || default_worker_threads(std::thread::available_parallelism().map_or(1, usize::from)),
            usize::from,
        )
    }

    fn options(&self) -> NodeOptions {
        let mut options = NodeOptions {
            config_file: self.config.clone(),
            use_env: true,
            overrides: Vec::new(),
            standalone: self.standalone,
        };
        if let Some(name) = &self.name {
            options = options.with("node.name", name.as_str());
        }
        if let Some(dir) = &self.data_dir {
            options = options.with("node.data_dir", dir.to_string_lossy().into_owned());
        }
        if let Some(listen) = &self.listen {
            options = options.with("network.listen", listen.as_str());
        }
        if let Some(seeds) = &self.seeds {
            options = options.with("network.seeds", seeds.clone());
        }
        if let Some(rest) = &self.rest {
            options = options.with("rest.listen", rest.as_str());
        }
        options
    }
}

/// Half of `cores`, at least one. Each wake-up of a parked scheduler thread by another
/// costs a futex and, on a virtual machine, an inter-processor interrupt: fewer threads
/// than cores leave the other cores to the node's own disk threads (log syncs, write-outs,
/// snapshot builds and restores) and to the other processes on the machine (BENCHMARKS.md,
/// "Fifteenth run").
fn default_worker_threads(cores: usize) -> usize {
    (cores / 2).max(1)
}

pub(crate) async fn run(args: StartArgs) -> anyhow::Result<i32> {
    telemetry::init_tracing();
    let _ = telemetry::prometheus();
    let worker_threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(worker_threads, "task scheduler");
    let ignite = IgniteImpl::start(args.options()).await?;
    let outcome = ignite.run_until(shutdown_signal()).await;
    if let Some(fault) = &outcome.fault {
        eprintln!("error: node stopped after a runtime fault: {fault}");
    }
    for failure in &outcome.report.failures {
        eprintln!("warning: {failure}");
    }
    Ok(outcome.exit_code())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => tracing::info!("sigint received"),
                _ = term.recv() => tracing::info!("sigterm received"),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers; stop with kill -9");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_scheduler_takes_half_the_cores_and_at_least_one() {
        assert_eq!(default_worker_threads(1), 1);
        assert_eq!(default_worker_threads(2), 1);
        assert_eq!(default_worker_threads(3), 1);
        assert_eq!(default_worker_threads(8), 4);
    }
}
