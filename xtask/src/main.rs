//! The project's task runner: `cargo xtask ci | tidy | bench | cluster`.
//!
//! Invariants: xtask depends on no workspace crate; it drives `cargo` and the `ignite` binary
//! as child processes, from the workspace root, and exits non-zero on the first failure.
mod bench;
mod ci;
mod cluster;
mod http;
mod metadata;
mod process;
mod tidy;
mod tools;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

/// Task runner for the workspace (run it as `cargo xtask <command>`).
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What CI runs: fmt check, clippy, tests crate by crate, tidy.
    Ci,
    /// Repository hygiene: `//!` docs on every file, startup-order dependency edges.
    Tidy,
    /// Benchmarks; with no name, runs all of them.
    Bench {
        /// Which benchmark to run.
        #[arg(value_enum)]
        name: Option<BenchName>,
        /// Number of cold + warm start runs of the startup benchmark.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// Use this `ignite` binary instead of building it in release mode.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// With `metastorage`: run etcd and ignite clusters side by side through the same etcd
        /// v3 client (`cargo bench -p node --bench vs_etcd`; installs Debian's etcd-server if
        /// `etcd` is missing).
        #[arg(long)]
        vs_etcd: bool,
    },
    /// Starts and initializes a local cluster of `ignite` processes on loopback until Ctrl-C
    /// (configs, data and logs in `target/cluster/<node>/`).
    Cluster {
        /// Number of nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
        nodes: u32,
        /// Restart the nodes kept in `target/cluster/` instead of wiping it first.
        #[arg(long)]
        keep: bool,
        /// Use this `ignite` binary instead of building it in release mode.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchName {
    /// Start, stop and idle RSS of a standalone node (release build).
    Startup,
    /// `cargo bench -p network --bench throughput`.
    Network,
    /// `cargo bench -p metastorage --bench load`: puts, gets, watches, failover, restart.
    Metastorage,
    /// `cargo bench -p node --bench tables`: upserts, gets, bulk load, idle replicas.
    Tables,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Command::Ci => ci::run(&root),
        Command::Tidy => tidy::run(&root),
        Command::Bench {
            name,
            runs,
            binary,
            vs_etcd,
        } => {
            if vs_etcd && name != Some(BenchName::Metastorage) {
                anyhow::bail!("--vs-etcd goes with `cargo xtask bench metastorage`");
            }
            let names = match name {
                Some(name) => vec![name],
                None => vec![
                    BenchName::Startup,
                    BenchName::Network,
                    BenchName::Metastorage,
                    BenchName::Tables,
                ],
            };
            for name in names {
                match name {
                    BenchName::Startup => {
                        let binary = process::ignite_binary(&root, binary.as_deref())?;
                        bench::startup(&binary, runs)?;
                    }
                    BenchName::Network => bench::cargo_bench(&root, "network", "throughput")?,
                    BenchName::Metastorage if vs_etcd => bench::vs_etcd(&root)?,
                    BenchName::Metastorage => bench::cargo_bench(&root, "metastorage", "load")?,
                    BenchName::Tables => bench::cargo_bench(&root, "node", "tables")?,
                }
            }
            Ok(())
        }
        Command::Cluster {
            nodes,
            keep,
            binary,
        } => {
            let binary = process::ignite_binary(&root, binary.as_deref())?;
            cluster::run(&root, &binary, nodes, keep)
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The `cargo` that runs us (`$CARGO` under `cargo run`), else `cargo` from `PATH`.
fn cargo() -> std::process::Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    std::process::Command::new(cargo)
}
