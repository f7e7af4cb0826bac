//! Table load generator (`cargo xtask bench tables`, or `cargo bench -p node --bench tables`;
//! never a test): three in-process `IgniteImpl` nodes on 127.0.0.1 (the product's defaults,
//! sled storage in temp dirs), driven through `IgniteImpl::tables()`, the path an embedding
//! user takes.
//!
//! One table of 8 partitions x 3 replicas (`id int64` key, a 100-character `payload`):
//! upserts/s and linearizable gets/s at 64 operations in flight with p50/p99 (a fixed time per
//! cell, the clients spread over the three nodes), bulk load rows/s (`upsert_all` in batches of
//! 1,000, one loader per node); then 99 more such tables (100 tables x 8 partitions x 3
//! replicas: 800 replicas per node; the creates stop at the first table that does not appear
//! on every node within a minute) and, once every replica runs, the resident memory and the
//! CPU time of the idle process; last, the first node stops and the time until every
//! partition of the loaded table accepts a write again is taken. The three nodes share this process: memory and CPU per node
//! are the process's totals divided by 3. Prints one table with the goals and measured/goal
//! ratios.
//!
//! Environment: `TABLES_BENCH_CELL_SECS` (seconds per throughput cell, default 5),
//! `TABLES_BENCH_TABLES` (tables of the idle phase, default 100).
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use lifecycle::NodeState;
use node::{IgniteImpl, InitRequest, NodeOptions};
use schema::{Column, ColumnType, TableSchema};
use serde_json::{json, Value as Json};
use table::Table;
use tokio::task::JoinSet;

/// The allocator the `ignite` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NODES: usize = 3;
const PARTITIONS: u32 = 8;
const REPLICAS: u32 = 3;
/// Operations in flight of the throughput cells.
const IN_FLIGHT: usize = 64;
/// Rows loaded by the bulk cell (and read by the get cell).
const BULK_ROWS: usize = 90_000;
const BATCH: usize = 1_000;
const PAYLOAD: usize = 100;
/// How long the idle process is watched for CPU time.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Measurement, not synchronization: the pause between the last replica starting and the
/// idle window, so elections and the first heartbeats are over.
const SETTLE: Duration = Duration::from_secs(5);
/// Bound of anything the bench waits for.
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

const MIB: f64 = 1024.0 * 1024.0;
const UPSERT_GOAL: f64 = 12_000.0;
const GET_GOAL: f64 = 20_000.0;
const CPU_GOAL_PERCENT: f64 = 5.0;
const MEMORY_GOAL_MIB: f64 = 500.0;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn schema(name: &str) -> Result<TableSchema> {
    Ok(TableSchema::new(
        name,
        vec![Column::new("id", ColumnType::Int64)],
        vec![Column::new("payload", ColumnType::String)],
    )?)
}

fn row(id: u64) -> Json {
    json!({"id": id, "payload": format!("{id:0width$}", width = PAYLOAD)})
}

/// A small deterministic generator of key ids (xorshift64*), one per client.
struct Keys(u64);

impl Keys {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Three nodes, initialized, STARTED, with all three in the baseline.
struct Cluster {
    nodes: Vec<IgniteImpl>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start() -> Result<Self> {
        let mut nodes: Vec<IgniteImpl> = Vec::new();
        let mut dirs = Vec::new();
        for i in 1..=NODES {
            let dir = tempfile::Builder::new()
                .prefix("ignite-bench-tables-")
                .tempdir()
                .context("creating a temp dir")?;
            let seeds: Vec<String> = nodes
                .iter()
                .filter_map(|n| n.info().network_address.map(|a| a.to_string()))
                .collect();
            let mut options =
                NodeOptions::standalone(&format!("n{i}"), dir.path()).with("network.seeds", seeds);
            options.standalone = false;
            let node = IgniteImpl::start(options)
                .await
                .map_err(|e| anyhow!("starting n{i}: {e}"))?;
            nodes.push(node);
            dirs.push(dir);
        }
        wait("every node sees the others", || {
            nodes.iter().all(|n| n.topology().members().len() == NODES)
        })
        .await?;
        nodes[0]
            .init_cluster(InitRequest {
                name: "bench".into(),
                metastorage: vec![],
            })
            .await
            .map_err(|e| anyhow!("cluster init: {e}"))?;
        for node in &nodes {
            let state = node.wait_for_state(WAIT, |s| s == NodeState::Started).await;
            if state != Some(NodeState::Started) {
                bail!("{} did not reach STARTED: {state:?}", node.name());
            }
        }
        wait("the baseline holds the three nodes", || {
            nodes.iter().all(|n| n.baseline().nodes.len() == NODES)
        })
        .await?;
        Ok(Self { nodes, _dirs: dirs })
    }

    /// Creates `name` on node `on` and returns its record view on every node, once every
    /// node knows it.
    async fn create(&self, on: usize, name: &str) -> Result<Vec<Table>> {
        let creator = &self.nodes[on % NODES];
        let deadline = Instant::now() + WAIT;
        loop {
            match creator
                .tables()
                .create_table(schema(name)?, PARTITIONS, REPLICAS)
                .await
            {
                // a retry of a create that went through
                Ok(_) | Err(table::Error::TableExists { .. }) => break,
                // under load MetaStorage may miss a quorum for a moment: retry any error
                Err(e) if Instant::now() < deadline => {
                    eprintln!("retrying the create of {name}: {e}");
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => bail!("creating {name}: {e}"),
            }
        }
        let mut views = Vec::new();
        for node in &self.nodes {
            // the table manager applies watch events on its own task: poll its catalog
            let view = tokio::time::timeout(WAIT, async {
                loop {
                    if let Some(view) = node.tables().table(name) {
                        return view;
                    }
                    tokio::time::sleep(POLL).await;
                }
            })
            .await
            .map_err(|_| anyhow!("{} does not know table {name}", node.name()))?;
            views.push(view);
        }
        Ok(views)
    }

    async fn stop(self) {
        for node in self.nodes.iter().rev() {
            let report = node.stop().await;
            if !report.is_clean() {
                eprintln!("warning: {} stopped with {report:?}", node.name());
            }
        }
    }
}

/// Polls `ok` until it holds, for at most [`WAIT`].
async fn wait(what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    tokio::time::timeout(WAIT, async {
        while !ok() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .map_err(|_| anyhow!("timed out waiting until {what}"))
}

/// What a throughput cell measured.
struct Throughput {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Throughput {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Clone, Copy)]
enum Op {
    Upsert,
    Get,
}

/// `IN_FLIGHT` clients, client `i` on node `i % 3`, each running `op` on random keys below
/// `keys` back to back for `cell`.
async fn throughput(views: &[Table], op: Op, keys: u64, cell: Duration) -> Result<Throughput> {
    let start = Instant::now();
    let until = start + cell;
    let mut clients = JoinSet::new();
    for i in 0..IN_FLIGHT {
        let table = views[i % views.len()].clone();
        clients.spawn(async move {
            let mut ids = Keys::new(i as u64 + 1);
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let id = ids.next_below(keys);
                let began = Instant::now();
                match op {
                    Op::Upsert => table.upsert(&row(id)).await?,
                    Op::Get => {
                        if table.get(&json!(id)).await?.is_none() {
                            bail!("row {id} is missing");
                        }
                    }
                }
                latencies.push(began.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = clients.join_next().await {
        latencies.extend(done.context("client task")??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(Throughput {
        ops: latencies.len(),
        elapsed,
        latencies,
    })
}

/// One loader per node, each writing its share of `0..BULK_ROWS` in `upsert_all` batches of
/// `BATCH`, one batch at a time; returns rows/s.
async fn bulk_load(views: &[Table]) -> Result<f64> {
    let start = Instant::now();
    let mut loaders = JoinSet::new();
    let batches: Vec<u64> = (0..(BULK_ROWS / BATCH) as u64).collect();
    for (i, table) in views.iter().enumerate() {
        let table = table.clone();
        let mine: Vec<u64> = batches
            .iter()
            .copied()
            .filter(|b| *b as usize % views.len() == i)
            .collect();
        loaders.spawn(async move {
            for b in mine {
                let first = b * BATCH as u64;
                let rows: Vec<Json> = (first..first + BATCH as u64).map(row).collect();
                table.upsert_all(&rows).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = loaders.join_next().await {
        done.context("loader task")??;
    }
    Ok(BULK_ROWS as f64 / start.elapsed().as_secs_f64())
}

/// Resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/self/status"))?;
    Ok(kib * 1024)
}

/// User + system CPU time of this process so far, from `/proc/self/stat`.
fn cpu_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("/proc/self/stat")?;
    // the fields after the command name, which is in parentheses and may hold spaces
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("malformed /proc/self/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no field {} in /proc/self/stat", i + 3))
    };
    let hz = clock_ticks_per_second();
    Ok(Duration::from_secs_f64(
        (ticks(11)? + ticks(12)?) as f64 / hz as f64,
    ))
}

/// The unit of the times in `/proc/self/stat` (`getconf CLK_TCK`; 100 on Linux when that
/// fails).
fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|hz| *hz > 0)
        .unwrap_or(100)
}

/// Nearest-rank percentile (`q` in 0..=1) of sorted samples.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A goal: at least or at most `value`.
#[derive(Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

struct Line {
    metric: String,
    result: String,
    p50: String,
    p99: String,
    goal: String,
    ratio: String,
}

impl Line {
    fn new(metric: &str, value: f64, unit: &str, goal: Option<Goal>) -> Self {
        let (goal, ratio) = match goal {
            None => (String::new(), String::new()),
            Some(Goal::AtLeast(g)) => (
                format!(">= {} {unit}", thousands(g)),
                verdict(value / g, value >= g),
            ),
            Some(Goal::AtMost(g)) => (format!("< {g} {unit}"), verdict(value / g, value < g)),
        };
        let result = if value >= 100.0 {
            format!("{} {unit}", thousands(value))
        } else {
            format!("{value:.2} {unit}")
        };
        Self {
            metric: metric.to_owned(),
            result,
            p50: String::new(),
            p99: String::new(),
            goal,
            ratio,
        }
    }

    fn throughput(metric: &str, t: &Throughput, goal: f64) -> Self {
        let mut line = Self::new(metric, t.per_second(), "/s", Some(Goal::AtLeast(goal)));
        line.p50 = ms(percentile(&t.latencies, 0.5));
        line.p99 = ms(percentile(&t.latencies, 0.99));
        line
    }
}

fn verdict(ratio: f64, met: bool) -> String {
    format!("{ratio:.2}x {}", if met { "ok" } else { "MISS" })
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn table(lines: &[Line]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<52} {:>14} {:>10} {:>10} {:>16} {:>12}",
        "metric", "result", "p50", "p99", "goal", "ratio"
    );
    for l in lines {
        let _ = writeln!(
            out,
            "{:<52} {:>14} {:>10} {:>10} {:>16} {:>12}",
            l.metric, l.result, l.p50, l.p99, l.goal, l.ratio
        );
    }
    out
}

async fn run() -> Result<()> {
    let cell = Duration::from_secs(env_or("TABLES_BENCH_CELL_SECS", 5).max(1));
    let tables = usize::try_from(env_or("TABLES_BENCH_TABLES", 100).max(1))?;
    println!(
        "bench tables: {NODES} in-process nodes, {PARTITIONS} partitions x {REPLICAS} replicas, \
         {IN_FLIGHT} in flight, {} s per cell",
        cell.as_secs()
    );
    let started = Instant::now();
    let mut cluster = Cluster::start().await?;
    println!(
        "cluster started and initialized in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let views = cluster.create(0, "bench").await?;
    // the first write through each node waits out the partitions' elections
    for (i, view) in views.iter().enumerate() {
        let rows: Vec<Json> = (0..BATCH as u64).map(|id| row(id + i as u64)).collect();
        view.upsert_all(&rows).await.context("warm-up")?;
    }

    let mut lines = Vec::new();
    let upserts = throughput(&views, Op::Upsert, BULK_ROWS as u64, cell).await?;
    println!(
        "upserts: {:.0}/s ({} in {:.1} s)",
        upserts.per_second(),
        upserts.ops,
        upserts.elapsed.as_secs_f64()
    );
    lines.push(Line::throughput(
        "upsert, 64 in flight",
        &upserts,
        UPSERT_GOAL,
    ));

    let bulk = bulk_load(&views).await?;
    println!("bulk load: {bulk:.0} rows/s ({BULK_ROWS} rows)");
    lines.push(Line::new(
        "bulk load (upsert_all of 1,000, 1 loader per node)",
        bulk,
        "rows/s",
        None,
    ));

    let gets = throughput(&views, Op::Get, BULK_ROWS as u64, cell).await?;
    println!(
        "gets: {:.0}/s ({} in {:.1} s)",
        gets.per_second(),
        gets.ops,
        gets.elapsed.as_secs_f64()
    );
    lines.push(Line::throughput(
        "linearizable get, 64 in flight",
        &gets,
        GET_GOAL,
    ));
    // the idle phase starts from the loaded table
    let kv = views[1].kv_view();
    if kv.get(&json!(7)).await?.is_none() {
        bail!("row 7 is missing through the key-value view");
    }

    let creating = Instant::now();
    // one create at a time, through the nodes in turn; when a table does not appear, the
    // creates stop there and the idle figures are taken with the tables that run
    let mut created = 1;
    for t in 1..tables {
        match cluster.create(t, &format!("idle_{t:03}")).await {
            Ok(_) => created += 1,
            Err(e) => {
                eprintln!("warning: {e:#}; no more tables are created");
                break;
            }
        }
    }
    let want = created * PARTITIONS as usize * REPLICAS as usize / NODES;
    let mut running = Vec::new();
    for node in &cluster.nodes {
        let reached = tokio::time::timeout(WAIT, async {
            while node.tables().local_partitions().await.len() < want {
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        if reached.is_err() {
            eprintln!(
                "warning: {} did not start {want} replicas in time",
                node.name()
            );
        }
        running.push(node.tables().local_partitions().await.len());
    }
    println!(
        "{created} of {tables} tables created; replicas per node {running:?} after {:.1} s",
        creating.elapsed().as_secs_f64()
    );
    let want = running.iter().sum::<usize>() / NODES;
    tokio::time::sleep(SETTLE).await;
    let rss = rss_bytes()? as f64 / MIB / NODES as f64;
    let cpu_before = cpu_time()?;
    let window = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let cpu = (cpu_time()? - cpu_before).as_secs_f64() / window.elapsed().as_secs_f64();
    let cpu_percent = cpu * 100.0 / NODES as f64;
    let rss_after = rss_bytes()? as f64 / MIB / NODES as f64;
    lines.push(Line::new(
        &format!("idle cpu per node, {want} replicas (process / 3)"),
        cpu_percent,
        "% core",
        Some(Goal::AtMost(CPU_GOAL_PERCENT)),
    ));
    lines.push(Line::new(
        &format!("rss per node, {want} replicas (process / 3)"),
        rss.max(rss_after),
        "MiB",
        Some(Goal::AtMost(MEMORY_GOAL_MIB)),
    ));

    let (window, stopping) = failover(&mut cluster, &views[1]).await?;
    println!(
        "failover: n1 stopped ({:.0} ms to stop), every partition of the loaded table accepted a write after {:.0} ms",
        stopping.as_secs_f64() * 1e3,
        window.as_secs_f64() * 1e3
    );
    lines.push(Line::new(
        &format!("node stop -> every partition writable ({want} replicas/node)"),
        window.as_secs_f64() * 1e3,
        "ms",
        None,
    ));

    print!("{}", table(&lines));
    cluster.stop().await;
    Ok(())
}

/// Rows written to time a failover: with a fixed hash, ids 0..256 cover the 8 partitions.
const FAILOVER_ROWS: u64 = 256;

/// Stops the first node (gracefully, with every replica it holds: its peers see its
/// connections close and its port refuse) while upserting [`FAILOVER_ROWS`] rows through
/// `survivor`, each retried until accepted. Returns the time from the start of the stop to
/// the last row accepted, and how long the stop took.
async fn failover(cluster: &mut Cluster, survivor: &Table) -> Result<(Duration, Duration)> {
    let victim = cluster.nodes.remove(0);
    let began = Instant::now();
    let stop = tokio::spawn(async move {
        let report = victim.stop().await;
        (began.elapsed(), report.is_clean())
    });
    let mut writes = JoinSet::new();
    for id in 0..FAILOVER_ROWS {
        let view = survivor.clone();
        writes.spawn(async move {
            let deadline = Instant::now() + WAIT;
            loop {
                match view.upsert(&row(id)).await {
                    Ok(()) => return Ok(Instant::now()),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(anyhow!("row {id} not accepted within {WAIT:?}: {e}"))
                    }
                    Err(_) => tokio::time::sleep(POLL).await,
                }
            }
        });
    }
    let mut last = began;
    while let Some(done) = writes.join_next().await {
        last = last.max(done.context("failover writer")??);
    }
    let (stopping, clean) = stop.await.context("stopping n1")?;
    if !clean {
        eprintln!("warning: n1 did not stop cleanly");
    }
    Ok((last.saturating_duration_since(began), stopping))
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let outcome = runtime.block_on(run());
    // stragglers of stopped components do not hold the bench up
    runtime.shutdown_timeout(Duration::from_secs(5));
    outcome
}
