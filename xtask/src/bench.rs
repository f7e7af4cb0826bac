//! `cargo xtask bench`: process-level benchmarks of the release `ignite` binary (start, stop,
//! idle memory of a standalone node), and the crates' own benches (`network`, `metastorage`)
//! run through `cargo bench` (with `PROTOC` set), and `metastorage --vs-etcd`, the side-by-side
//! run against etcd (`node/benches/vs_etcd.rs`).
use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{
    process::{self, Node, PROCESS_DEADLINE},
    tools,
};

/// How long the node sits idle before its RSS is read.
const IDLE_BEFORE_RSS: Duration = Duration::from_secs(1);

const MIB: f64 = 1024.0 * 1024.0;

/// What one start/stop cycle of a node measured.
struct Cycle {
    start: Duration,
    stop: Duration,
    rss_bytes: u64,
    clean_exit: bool,
}

/// The addresses of one run's node: the same for its cold and its warm start, because after the
/// first start the vault, not the command line, is the source of the node's configuration.
#[derive(Clone, Copy)]
struct Addresses {
    rest: SocketAddr,
    /// `None` while `ignite start` has no `--listen` flag.
    listen: Option<SocketAddr>,
}

impl Addresses {
    fn free(with_listen: bool) -> anyhow::Result<Self> {
        let ports = process::free_ports(2)?;
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Ok(Self {
            rest: loopback(ports[0]),
            listen: with_listen.then(|| loopback(ports[1])),
        })
    }
}

/// Starts a standalone node on `data_dir`, waits until it is STARTED, idles, reads its RSS,
/// then SIGTERMs it and waits for it to exit.
fn cycle(
    binary: &Path,
    data_dir: &Path,
    log: &Path,
    addresses: Addresses,
) -> anyhow::Result<Cycle> {
    let Addresses { rest, listen } = addresses;
    let mut args: Vec<String> = vec![
        "start".into(),
        "--standalone".into(),
        "--name".into(),
        "bench".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--rest".into(),
        rest.to_string(),
    ];
    if let Some(listen) = listen {
        // a free port too, so bench nodes never collide with other nodes on the default port
        args.extend(["--listen".into(), listen.to_string()]);
    }
    let spawned = Instant::now();
    let mut node = Node::spawn(binary, "bench", rest, &args, log)?;
    node.wait_ready(true, PROCESS_DEADLINE)?;
    let start = spawned.elapsed();

    // measurement, not synchronization: the idle footprint after start-up settles
    thread::sleep(IDLE_BEFORE_RSS);
    let rss_bytes = node.rss_bytes()?;

    let stopping = Instant::now();
    let status = node.terminate(PROCESS_DEADLINE)?;
    let stop = stopping.elapsed();
    if !status.success() {
        eprintln!(
            "warning: node exited with {status} after SIGTERM\n{}",
            node.log_tail()
        );
    }
    Ok(Cycle {
        start,
        stop,
        rss_bytes,
        clean_exit: status.success(),
    })
}

/// `cargo xtask bench startup`: `runs` cold + warm start cycles of a standalone node.
pub(crate) fn startup(binary: &Path, runs: u32) -> anyhow::Result<()> {
    let with_listen = process::start_accepts(binary, "--listen")?;
    println!(
        "bench startup: {runs} runs of a cold start (fresh data dir) and a warm start (same dir)"
    );
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut stop = Vec::new();
    let mut rss = Vec::new();
    let mut unclean = 0;
    for run in 1..=runs {
        let dir = tempfile::Builder::new()
            .prefix("ignite-bench-")
            .tempdir()
            .context("failed to create a temp dir")?;
        let data_dir = dir.path().join("data");
        fs::create_dir_all(&data_dir)
            .with_context(|| format!("failed to create {}", data_dir.display()))?;
        let addresses = Addresses::free(with_listen)?;
        let first = cycle(binary, &data_dir, &dir.path().join("cold.log"), addresses)
            .with_context(|| format!("run {run}: cold start"))?;
        let second = cycle(binary, &data_dir, &dir.path().join("warm.log"), addresses)
            .with_context(|| format!("run {run}: warm start"))?;
        println!(
            "run {run:>3}/{runs}: cold start {}, warm start {}, stop {} / {}, idle rss {:.1} MiB / {:.1} MiB",
            ms(first.start),
            ms(second.start),
            ms(first.stop),
            ms(second.stop),
            first.rss_bytes as f64 / MIB,
            second.rss_bytes as f64 / MIB,
        );
        for c in [&first, &second] {
            stop.push(millis(c.stop));
            rss.push(c.rss_bytes as f64 / MIB);
            unclean += usize::from(!c.clean_exit);
        }
        cold.push(millis(first.start));
        warm.push(millis(second.start));
    }

    let rows = [
        Row::new("cold start", "ms", 50.0, cold),
        Row::new("warm start", "ms", 50.0, warm),
        Row::new("stop", "ms", 50.0, stop),
        Row::new("idle rss", "MiB", 30.0, rss),
    ];
    print!("{}", table(&rows));
    if unclean > 0 {
        bail!("{unclean} node exit(s) after SIGTERM were not clean (see warnings above)");
    }
    Ok(())
}

/// `cargo bench -p <package> --bench <bench>`, output passed through: `cargo xtask bench
/// network` (the network throughput bench), `metastorage` (its load generator) and `tables`
/// (`node`'s bench: three in-process nodes under table load).
pub(crate) fn cargo_bench(root: &Path, package: &str, bench: &str) -> anyhow::Result<()> {
    cargo_bench_with(root, package, bench, &[])
}

/// `cargo xtask bench metastorage --vs-etcd`: finds `etcd` on `PATH` (else installs Debian's
/// `etcd-server`), then runs `cargo bench -p node --bench vs_etcd` with `ETCD_BIN` set: etcd and
/// ignite clusters side by side, driven by the same etcd v3 client, one table.
pub(crate) fn vs_etcd(root: &Path) -> anyhow::Result<()> {
    let etcd = tools::require_debian("etcd", "etcd-server")?;
    println!("bench metastorage --vs-etcd: etcd at {}", etcd.display());
    cargo_bench_with(
        root,
        "node",
        "vs_etcd",
        &[("ETCD_BIN", etcd.display().to_string())],
    )
}

/// [`cargo_bench`] with extra environment variables for the bench.
fn cargo_bench_with(
    root: &Path,
    package: &str,
    bench: &str,
    envs: &[(&str, String)],
) -> anyhow::Result<()> {
    let command = format!("cargo bench -p {package} --bench {bench}");
    println!("bench {package}: {command}");
    let mut cargo = crate::cargo();
    cargo
        .args(["bench", "-p", package, "--bench", bench])
        .current_dir(root);
    tools::with_protoc(&mut cargo)?;
    for (key, value) in envs {
        cargo.env(key, value);
    }
    let status = cargo
        .status()
        .with_context(|| format!("failed to run {command}"))?;
    if !status.success() {
        bail!("{command} exited with {status}");
    }
    Ok(())
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", millis(duration))
}

/// One metric's samples and its goal (an upper bound, in the same unit).
struct Row {
    name: &'static str,
    unit: &'static str,
    goal: f64,
    samples: Vec<f64>,
}

impl Row {
    fn new(name: &'static str, unit: &'static str, goal: f64, mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        Self {
            name,
            unit,
            goal,
            samples,
        }
    }

    /// Nearest-rank percentile of the sorted samples (`q` in 0..=1).
    fn percentile(&self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return f64::NAN;
        }
        let rank = (q * self.samples.len() as f64).ceil() as usize;
        self.samples[rank.clamp(1, self.samples.len()) - 1]
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<12} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "metric", "n", "median", "p90", "min", "max", "goal", "median/goal", "p90/goal"
    );
    for row in rows {
        let median = row.percentile(0.5);
        let p90 = row.percentile(0.9);
        let min = row.samples.first().copied().unwrap_or(f64::NAN);
        let max = row.samples.last().copied().unwrap_or(f64::NAN);
        let value = |v: f64| format!("{v:.1} {}", row.unit);
        let _ = writeln!(
            out,
            "{:<12} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}",
            row.name,
            row.samples.len(),
            value(median),
            value(p90),
            value(min),
            value(max),
            format!("< {:.0} {}", row.goal, row.unit),
            format!("{:.2}x", median / row.goal),
            format!("{:.2}x", p90 / row.goal),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let row = Row::new(
            "x",
            "ms",
            50.0,
            vec![10.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0],
        );
        assert_eq!(row.samples.first(), Some(&1.0));
        assert_eq!(row.percentile(0.5), 5.0);
        assert_eq!(row.percentile(0.9), 9.0);
        assert_eq!(row.percentile(1.0), 10.0);
        assert_eq!(row.percentile(0.0), 1.0);
        let one = Row::new("y", "ms", 50.0, vec![42.0]);
        assert_eq!((one.percentile(0.5), one.percentile(0.9)), (42.0, 42.0));
    }

    #[test]
    fn table_shows_stats_and_ratio_to_goal() {
        let rows = [Row::new("stop", "ms", 50.0, vec![25.0, 100.0, 25.0])];
        let text = table(&rows);
        let line = text
            .lines()
            .find(|line| line.starts_with("stop"))
            .expect("a stop row");
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "stop", "3", "25.0", "ms", "100.0", "ms", "25.0", "ms", "100.0", "ms", "<", "50",
                "ms", "0.50x", "2.00x"
            ]
        );
    }
}
