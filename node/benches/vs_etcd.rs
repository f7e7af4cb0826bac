//! etcd and ignite side by side through the same etcd v3 client (`cargo xtask bench metastorage
//! --vs-etcd`, or `cargo bench -p node --bench vs_etcd`).
//!
//! On loopback, with every data directory in one temp dir (same disk), it starts a 1-node and a
//! 3-node etcd cluster and a 1-node (standalone) and a 3-node `ignite` cluster (with the
//! MetaStorage etcd endpoint, `metastorage.etcd_listen`, initialized over REST), and drives
//! each with the same `etcd-client` load generator: 16-byte keys, 100-byte values, 1 and 64
//! requests in flight for a fixed time per cell. It measures puts/s, linearizable and
//! serializable gets/s with p50/p99, watch latency (put through one member, event on a watch
//! on another), start-to-ready (spawn until every member accepted a put), restart-to-serving of one node
//! holding 100,000 keys (kill -9, respawn, first successful get) and failover (kill -9 of the
//! leader, found by Maintenance Status, to the next accepted write). It prints one table:
//! metric, etcd, ignite, and the ratio (ignite/etcd for throughput, etcd/ignite for latency
//! and time: 2.0 or more meets the goal).
//!
//! Environment: `ETCD_BIN` (else `etcd` from `PATH`), `VS_ETCD_CELL_SECS` (seconds per load
//! cell, default 3), `VS_ETCD_ONLY` (`etcd` or `ignite` to run one column).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, WatchOptions};
use futures::stream::{FuturesUnordered, StreamExt};

const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 100;
/// Keys the get cells read (written before them).
const READ_KEYS: usize = 10_000;
/// Keys held by the node that is restarted.
const RESTART_KEYS: usize = 100_000;
/// Puts per transaction while loading keys (etcd's default limit is 128 operations).
const LOAD_BATCH: usize = 100;
const LOAD_IN_FLIGHT: usize = 8;
const IN_FLIGHT: [usize; 2] = [1, 64];
/// Bound of a single request; of a start, restart or failover.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Etcd,
    Ignite,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::Ignite => "ignite",
        }
    }
}

/// Whether bigger is better (throughput) or smaller (latency, time).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// One row of the table: its name, unit and direction.
struct Metric {
    name: String,
    unit: &'static str,
    better: Better,
}

/// Every row, in table order.
fn metrics() -> Vec<Metric> {
    let mut rows = Vec::new();
    let mut row = |name: String, unit, better| rows.push(Metric { name, unit, better });
    for nodes in [1, 3] {
        for op in [Op::Put, Op::LinearizableGet, Op::SerializableGet] {
            for in_flight in IN_FLIGHT {
                let cell = cell_name(nodes, op, in_flight);
                row(format!("{cell} ops/s"), "/s", Better::Higher);
                row(format!("{cell} p50"), "ms", Better::Lower);
                row(format!("{cell} p99"), "ms", Better::Lower);
            }
        }
    }
    row("3n watch latency p50".into(), "ms", Better::Lower);
    row("3n watch latency p99".into(), "ms", Better::Lower);
    row("1n start-to-ready".into(), "ms", Better::Lower);
    row("3n start-to-ready".into(), "ms", Better::Lower);
    row(
        format!("1n restart-to-serving, {}k keys", RESTART_KEYS / 1000),
        "ms",
        Better::Lower,
    );
    row("3n failover (kill -9 leader)".into(), "ms", Better::Lower);
    rows
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Put,
    LinearizableGet,
    SerializableGet,
}

fn cell_name(nodes: usize, op: Op, in_flight: usize) -> String {
    let op = match op {
        Op::Put => "put",
        Op::LinearizableGet => "get lin",
        Op::SerializableGet => "get ser",
    };
    format!("{nodes}n {op} x{in_flight}")
}

/// What one system measured, by metric name.
type Results = BTreeMap<String, f64>;

struct Bench {
    etcd: PathBuf,
    ignite: PathBuf,
    dir: PathBuf,
    cell: Duration,
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing: run only then
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("vs_etcd: run it with `cargo bench -p node --bench vs_etcd`");
        return Ok(());
    }
    let etcd = match std::env::var_os("ETCD_BIN") {
        Some(path) => PathBuf::from(path),
        None => which("etcd").context(
            "etcd not found: install Debian's etcd-server or run `cargo xtask bench metastorage --vs-etcd`",
        )?,
    };
    let cell = std::env::var("VS_ETCD_CELL_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(Duration::from_secs(3), Duration::from_secs_f64);
    let only = std::env::var("VS_ETCD_ONLY").ok();
    let temp = tempfile::Builder::new()
        .prefix("vs-etcd-")
        .tempdir()
        .context("failed to create a temp dir")?;
    let bench = Arc::new(Bench {
        etcd,
        ignite: PathBuf::from(env!("CARGO_BIN_EXE_ignite")),
        dir: temp.path().to_path_buf(),
        cell,
    });
    let version = Command::new(&bench.etcd)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    println!(
        "vs_etcd: {} ({version}) vs {}; data in {}; {:?} per cell",
        bench.etcd.display(),
        bench.ignite.display(),
        bench.dir.display(),
        bench.cell
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to build a tokio runtime")?;
    let begin = Instant::now();
    let mut columns = Vec::new();
    for system in [System::Etcd, System::Ignite] {
        if only.as_deref().is_some_and(|o| o != system.name()) {
            columns.push((Results::new(), Some("skipped (VS_ETCD_ONLY)".to_owned())));
            continue;
        }
        let mut results = Results::new();
        let outcome = runtime.block_on(run_system(&bench, system, &mut results));
        let error = outcome.err().map(|e| format!("{e:#}"));
        if let Some(error) = &error {
            eprintln!("vs_etcd: {} failed: {error}", system.name());
        }
        columns.push((results, error));
    }
    let (etcd, etcd_error) = &columns[0];
    let (ignite, ignite_error) = &columns[1];
    print!("{}", table(&metrics(), etcd, ignite));
    for (system, error) in [("etcd", etcd_error), ("ignite", ignite_error)] {
        if let Some(error) = error {
            println!("{system}: {error}");
        }
    }
    println!(
        "latencies are per request as the client sees it; watch latency is put start to event \
         arrival on another member; total {:.0} s",
        begin.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every measurement of one system, filling `results` as it goes (so a failure keeps what
/// was measured before it).
async fn run_system(bench: &Bench, system: System, results: &mut Results) -> anyhow::Result<()> {
    println!("== {}: 1 node", system.name());
    {
        let (mut cluster, ready) = Cluster::start(bench, system, 1).await?;
        results.insert("1n start-to-ready".into(), millis(ready));
        let client = cluster.client().await?;
        load_keys(&client, "r", READ_KEYS).await?;
        load_cells(bench, &client, 1, results).await?;
        load_keys(&client, "s", RESTART_KEYS).await?;
        let restart = cluster.restart_to_serving(0).await?;
        results.insert(
            format!("1n restart-to-serving, {}k keys", RESTART_KEYS / 1000),
            millis(restart),
        );
        cluster.stop();
    }
    println!("== {}: 3 nodes", system.name());
    let (mut cluster, ready) = Cluster::start(bench, system, 3).await?;
    results.insert("3n start-to-ready".into(), millis(ready));
    let client = cluster.client().await?;
    load_keys(&client, "r", READ_KEYS).await?;
    load_cells(bench, &client, 3, results).await?;
    let mut watch = watch_latency(&cluster, bench.cell).await?;
    results.insert("3n watch latency p50".into(), percentile(&mut watch, 0.5));
    results.insert("3n watch latency p99".into(), percentile(&mut watch, 0.99));
    let failover = cluster.failover().await?;
    results.insert("3n failover (kill -9 leader)".into(), millis(failover));
    cluster.stop();
    Ok(())
}

async fn load_cells(
    bench: &Bench,
    client: &Client,
    nodes: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    for op in [Op::Put, Op::LinearizableGet, Op::SerializableGet] {
        for in_flight in IN_FLIGHT {
            let cell = cell_name(nodes, op, in_flight);
            let (rate, mut latencies) = run_cell(client, op, in_flight, bench.cell)
                .await
                .with_context(|| format!("cell {cell}"))?;
            let p50 = percentile(&mut latencies, 0.5);
            let p99 = percentile(&mut latencies, 0.99);
            println!("  {cell:<22} {rate:>9.0} ops/s  p50 {p50:.2} ms  p99 {p99:.2} ms");
            results.insert(format!("{cell} ops/s"), rate);
            results.insert(format!("{cell} p50"), p50);
            results.insert(format!("{cell} p99"), p99);
        }
    }
    Ok(())
}

/// A 16-byte key: `prefix` then `index` zero-padded.
fn key(prefix: &str, index: usize) -> Vec<u8> {
    let width = KEY_LEN - prefix.len();
    let key = format!("{prefix}{index:0width$}");
    debug_assert_eq!(key.len(), KEY_LEN);
    key.into_bytes()
}

fn value(seed: usize) -> Vec<u8> {
    let mut value = vec![b'v'; VALUE_LEN];
    let digits = seed.to_string();
    value[..digits.len()].copy_from_slice(digits.as_bytes());
    value
}

/// Writes `count` keys under `prefix` (transactions of [`LOAD_BATCH`] puts, a few in flight).
async fn load_keys(client: &Client, prefix: &str, count: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let batches: Vec<(usize, usize)> = (0..count)
        .step_by(LOAD_BATCH)
        .map(|start| (start, (start + LOAD_BATCH).min(count)))
        .collect();
    let batches = Arc::new(parking_lot::Mutex::new(batches.into_iter()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..LOAD_IN_FLIGHT {
        let mut kv = client.kv_client();
        let batches = Arc::clone(&batches);
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            loop {
                let Some((start, end)) = batches.lock().next() else {
                    return anyhow::Ok(());
                };
                let ops: Vec<TxnOp> = (start..end)
                    .map(|i| TxnOp::put(key(&prefix, i), value(i), None))
                    .collect();
                let response = tokio::time::timeout(OP_TIMEOUT, kv.txn(Txn::new().and_then(ops)))
                    .await
                    .context("load transaction timed out")?
                    .context("load transaction failed")?;
                if !response.succeeded() {
                    bail!("load transaction without compares did not succeed");
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("load task panicked")??;
    }
    println!(
        "  loaded {count} keys under {prefix:?} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `op` with `in_flight` concurrent requests for `duration`: (ops/s, latencies in ms).
async fn run_cell(
    client: &Client,
    op: Op,
    in_flight: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..in_flight {
        let kv = client.kv_client();
        tasks.spawn(cell_worker(kv, op, task, until));
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.context("load task panicked")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((latencies.len() as f64 / elapsed, latencies))
}

async fn cell_worker(
    mut kv: KvClient,
    op: Op,
    task: usize,
    until: Instant,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::new();
    // a cheap deterministic spread over the key space, different per task
    let mut index = task.wrapping_mul(7919) % READ_KEYS;
    while Instant::now() < until {
        index = (index + 4099) % READ_KEYS;
        let began = Instant::now();
        match op {
            Op::Put => {
                tokio::time::timeout(OP_TIMEOUT, kv.put(key("p", index), value(index), None))
                    .await
                    .context("put timed out")?
                    .context("put failed")?;
            }
            Op::LinearizableGet | Op::SerializableGet => {
                let options =
                    (op == Op::SerializableGet).then(|| GetOptions::new().with_serializable());
                let response = tokio::time::timeout(OP_TIMEOUT, kv.get(key("r", index), options))
                    .await
                    .context("get timed out")?
                    .context("get failed")?;
                if response.kvs().len() != 1 {
                    bail!("get of a loaded key found {} keys", response.kvs().len());
                }
            }
        }
        latencies.push(millis(began.elapsed()));
    }
    Ok(latencies)
}

/// Puts through member 0 while member 1 watches the prefix: put start to event arrival, in ms.
async fn watch_latency(cluster: &Cluster, duration: Duration) -> anyhow::Result<Vec<f64>> {
    let writer = cluster.member_client(0).await?;
    let mut watcher = cluster.member_client(1).await?;
    let mut stream = watcher
        .watch("w", Some(WatchOptions::new().with_prefix()))
        .await
        .context("watch on member 1")?;
    // the created response confirms the watch is registered before the first put
    let created = tokio::time::timeout(OP_TIMEOUT, stream.message())
        .await
        .context("watch create timed out")?
        .context("watch create failed")?
        .context("watch stream ended")?;
    if !created.created() {
        bail!("first watch response is not the created response");
    }
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(Some(response)) = stream.message().await {
            let arrived = Instant::now();
            for event in response.events() {
                if let Some(kv) = event.kv() {
                    if events_tx.send((kv.key().to_vec(), arrived)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut kv = writer.kv_client();
    let mut latencies = Vec::new();
    let until = Instant::now() + duration;
    let mut index = 0;
    while Instant::now() < until {
        let k = key("w", index);
        index += 1;
        let began = Instant::now();
        tokio::time::timeout(OP_TIMEOUT, kv.put(k.clone(), value(index), None))
            .await
            .context("watched put timed out")?
            .context("watched put failed")?;
        loop {
            let (seen, arrived) = tokio::time::timeout(OP_TIMEOUT, events_rx.recv())
                .await
                .context("no watch event within the timeout")?
                .context("watch stream ended")?;
            if seen == k {
                latencies.push(millis(arrived.saturating_duration_since(began)));
                break;
            }
        }
    }
    reader.abort();
    println!(
        "  watch latency over {} puts: p50 {:.2} ms p99 {:.2} ms",
        latencies.len(),
        percentile(&mut latencies.clone(), 0.5),
        percentile(&mut latencies.clone(), 0.99)
    );
    Ok(latencies)
}

/// One member process and how to start it again.
struct Member {
    name: String,
    client: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    rest: Option<SocketAddr>,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self, binary: &Path) -> anyhow::Result<()> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("failed to open {}", self.log.display()))?;
        let err = out
            .try_clone()
            .context("failed to clone a log file handle")?;
        let child = Command::new(binary)
            .args(&self.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("failed to spawn {} for {}", binary.display(), self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // best effort: the process may have exited already
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ---\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    system: System,
    binary: PathBuf,
    members: Vec<Member>,
}

fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("failed to bind 127.0.0.1:0"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| {
            Ok(l.local_addr()
                .context("failed to read a bound port")?
                .port())
        })
        .collect()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Cluster {
    /// Starts `size` members and waits until each accepts a put: (cluster, spawn-to-ready).
    async fn start(bench: &Bench, system: System, size: usize) -> anyhow::Result<(Self, Duration)> {
        let root = bench.dir.join(format!("{}-{size}", system.name()));
        fs::create_dir_all(&root)
            .with_context(|| format!("failed to create {}", root.display()))?;
        let ports = free_ports(3 * size)?;
        let (clients, rest) = ports.split_at(size);
        let (peers, rests) = rest.split_at(size);
        let names: Vec<String> = (1..=size).map(|i| format!("n{i}")).collect();
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            let name = &names[i];
            let dir = root.join(name);
            fs::create_dir_all(&dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            let data = dir.join("data");
            let (args, rest) = match system {
                System::Etcd => {
                    let cluster: Vec<String> = names
                        .iter()
                        .zip(peers)
                        .map(|(n, p)| format!("{n}=http://{}", loopback(*p)))
                        .collect();
                    let args = vec![
                        "--name".into(),
                        name.clone(),
                        "--data-dir".into(),
                        data.display().to_string(),
                        "--listen-client-urls".into(),
                        format!("http://{}", loopback(clients[i])),
                        "--advertise-client-urls".into(),
                        format!("http://{}", loopback(clients[i])),
                        "--listen-peer-urls".into(),
                        format!("http://{}", loopback(peers[i])),
                        "--initial-advertise-peer-urls".into(),
                        format!("http://{}", loopback(peers[i])),
                        "--initial-cluster".into(),
                        cluster.join(","),
                        "--initial-cluster-token".into(),
                        format!("vs-etcd-{size}"),
                        "--initial-cluster-state".into(),
                        "new".into(),
                    ];
                    (args, None)
                }
                System::Ignite => {
                    let seeds: Vec<String> = peers
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, p)| format!("\"{}\"", loopback(*p)))
                        .collect();
                    let config = format!(
                        "[node]\nname = \"{name}\"\ndata_dir = \"{}\"\n\n[network]\nlisten = \"{}\"\nseeds = [{}]\n\n[rest]\nlisten = \"{}\"\n\n[metastorage]\netcd_listen = \"{}\"\n",
                        data.display(),
                        loopback(peers[i]),
                        seeds.join(", "),
                        loopback(rests[i]),
                        loopback(clients[i]),
                    );
                    let path = dir.join("ignite.toml");
                    fs::write(&path, config)
                        .with_context(|| format!("failed to write {}", path.display()))?;
                    let mut args = vec![
                        "start".into(),
                        "--config".into(),
                        path.display().to_string(),
                    ];
                    if size == 1 {
                        args.push("--standalone".into());
                    }
                    (args, Some(loopback(rests[i])))
                }
            };
            members.push(Member {
                name: name.clone(),
                client: loopback(clients[i]),
                args,
                log: dir.join(format!("{}.log", system.name())),
                rest,
                child: None,
            });
        }
        let binary = match system {
            System::Etcd => bench.etcd.clone(),
            System::Ignite => bench.ignite.clone(),
        };
        let mut cluster = Self {
            system,
            binary,
            members,
        };
        let began = Instant::now();
        for member in &mut cluster.members {
            member.spawn(&cluster.binary)?;
        }
        if system == System::Ignite && size > 1 {
            cluster.init_ignite().await?;
        }
        // ready: EVERY member accepts a put through a client of its own (a client of all
        // endpoints may reach a member that serves while another still starts)
        for endpoint in cluster.endpoints() {
            cluster
                .until_ready(std::slice::from_ref(&endpoint), |mut client| async move {
                    client.put(key("x", 0), value(0), None).await.map(|_| ())
                })
                .await
                .with_context(|| format!("first put on {endpoint}"))?;
        }
        let ready = began.elapsed();
        println!(
            "  {} {size}-node ready in {:.0} ms",
            system.name(),
            millis(ready)
        );
        Ok((cluster, ready))
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(Member::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls `attempt` with a fresh client on `endpoints` until it succeeds; fails if a member
    /// exits or the deadline passes.
    async fn until_ready<F, Fut>(&mut self, endpoints: &[String], attempt: F) -> anyhow::Result<()>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<(), etcd_client::Error>>,
    {
        let until = Instant::now() + READY_TIMEOUT;
        loop {
            let tried = tokio::time::timeout(Duration::from_secs(2), async {
                let client = Client::connect(endpoints, Some(connect_options())).await?;
                attempt(client).await
            })
            .await;
            let last = match tried {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(err)) => err.to_string(),
                Err(_) => "attempt timed out".to_owned(),
            };
            for member in &mut self.members {
                if let Some(child) = &mut member.child {
                    if let Ok(Some(status)) = child.try_wait() {
                        bail!(
                            "{} exited with {status}\n{}",
                            member.name,
                            member.log_tail()
                        );
                    }
                }
            }
            if Instant::now() >= until {
                bail!(
                    "{} not serving after {READY_TIMEOUT:?}: {last}\n{}",
                    self.system.name(),
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every ignite member sees all the others, then `POST cluster/init`.
    async fn init_ignite(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("failed to build an http client")?;
        let size = self.members.len();
        let until = Instant::now() + READY_TIMEOUT;
        for member in &self.members {
            let rest = member.rest.context("ignite member has a REST address")?;
            loop {
                let url = format!("http://{rest}/management/v1/cluster/topology/physical");
                let seen = match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v.as_array().map(Vec::len))
                        .unwrap_or(0),
                    _ => 0,
                };
                if seen >= size {
                    break;
                }
                if Instant::now() >= until {
                    bail!(
                        "{} saw {seen} of {size} members\n{}",
                        member.name,
                        member.log_tail()
                    );
                }
                tokio::time::sleep(POLL).await;
            }
        }
        let rest = self.members[0]
            .rest
            .context("ignite member has a REST address")?;
        let response = http
            .post(format!("http://{rest}/management/v1/cluster/init"))
            .json(&serde_json::json!({ "name": "vs-etcd" }))
            .send()
            .await
            .context("cluster init")?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("cluster init answered {status}: {body}");
        }
        Ok(())
    }

    /// A client balanced over every member.
    async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(self.endpoints(), Some(connect_options()))
            .await
            .context("connect to the cluster")
    }

    /// A client of member `index` only.
    async fn member_client(&self, index: usize) -> anyhow::Result<Client> {
        Client::connect([self.members[index].endpoint()], Some(connect_options()))
            .await
            .with_context(|| format!("connect to member {index}"))
    }

    /// kill -9 member `index`, spawn it again, and time spawn to the first get that finds a
    /// key written before the kill.
    async fn restart_to_serving(&mut self, index: usize) -> anyhow::Result<Duration> {
        self.members[index].kill();
        let began = Instant::now();
        let binary = self.binary.clone();
        self.members[index].spawn(&binary)?;
        let probe = key("s", RESTART_KEYS - 1);
        let expected = value(RESTART_KEYS - 1);
        let endpoints = [self.members[index].endpoint()];
        self.until_ready(&endpoints, |mut client| {
            let (probe, expected) = (probe.clone(), expected.clone());
            async move {
                let response = client.get(probe, None).await?;
                match response.kvs().first() {
                    Some(kv) if kv.value() == expected.as_slice() => Ok(()),
                    _ => Err(etcd_client::Error::InvalidArgs("key not there yet".into())),
                }
            }
        })
        .await
        .context("first get after restart")?;
        let elapsed = began.elapsed();
        println!("  restart-to-serving: {:.0} ms", millis(elapsed));
        Ok(elapsed)
    }

    /// Finds the leader through Maintenance Status, kill -9s it, and times the kill to the
    /// first write accepted by a survivor (a put attempt to each survivor every 10 ms).
    async fn failover(&mut self) -> anyhow::Result<Duration> {
        let mut leader = None;
        for index in 0..self.members.len() {
            let mut client = self.member_client(index).await?;
            let status = tokio::time::timeout(OP_TIMEOUT, client.status())
                .await
                .context("status timed out")?
                .with_context(|| format!("status of member {index}"))?;
            let me = status.header().map(|h| h.member_id());
            if me == Some(status.leader()) {
                leader = Some(index);
                break;
            }
        }
        let leader =
            leader.context("no member reports itself as the leader in Maintenance Status")?;
        let mut survivors = Vec::new();
        for index in (0..self.members.len()).filter(|i| *i != leader) {
            survivors.push(self.member_client(index).await?.kv_client());
        }
        self.members[leader].kill();
        let began = Instant::now();
        let until = began + READY_TIMEOUT;
        let mut attempts = FuturesUnordered::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut last = String::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if Instant::now() >= until {
                        bail!("no write accepted {READY_TIMEOUT:?} after the leader was killed: {last}\n{}", self.logs());
                    }
                    for kv in &survivors {
                        let mut kv = kv.clone();
                        attempts.push(async move {
                            tokio::time::timeout(OP_TIMEOUT, kv.put(key("f", 0), value(0), None)).await
                        });
                    }
                }
                Some(outcome) = attempts.next() => match outcome {
                    Ok(Ok(_)) => break,
                    Ok(Err(err)) => last = err.to_string(),
                    Err(_) => last = "put timed out".into(),
                },
            }
        }
        let elapsed = began.elapsed();
        println!(
            "  failover: leader {} killed, write accepted after {:.0} ms",
            self.members[leader].name,
            millis(elapsed)
        );
        Ok(elapsed)
    }

    fn stop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(OP_TIMEOUT)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile (`q` in 0..=1) of `samples`, sorted in place.
fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = (q * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn which(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

fn format_value(value: f64, unit: &str) -> String {
    if unit == "/s" {
        format!("{value:.0}/s")
    } else if value >= 100.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.2} {unit}")
    }
}

/// The table: metric | etcd | ignite | ratio | goal (the ratio is ignite/etcd for throughput
/// and etcd/ignite for latency and time, so 2.0 or more meets the goal in every row).
fn table(metrics: &[Metric], etcd: &Results, ignite: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n| {:<36} | {:>10} | {:>10} | {:>6} | {:<26} |",
        "metric", "etcd", "ignite", "ratio", "goal: ratio >= 2.0"
    );
    let _ = writeln!(
        out,
        "|{:-<38}|{:->12}|{:->12}|{:->8}|{:-<28}|",
        "", "", "", "", ""
    );
    for metric in metrics {
        let e = etcd.get(&metric.name).copied();
        let i = ignite.get(&metric.name).copied();
        let ratio = match (e, i, metric.better) {
            (Some(e), Some(i), Better::Higher) if e > 0.0 => Some(i / e),
            (Some(e), Some(i), Better::Lower) if i > 0.0 => Some(e / i),
            _ => None,
        };
        let cell =
            |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format_value(v, metric.unit));
        let direction = match metric.better {
            Better::Higher => "ignite/etcd",
            Better::Lower => "etcd/ignite",
        };
        let goal = match ratio {
            Some(r) if r >= 2.0 => format!("{direction}: met"),
            Some(_) => format!("{direction}: not met"),
            None => direction.to_owned(),
        };
        let _ = writeln!(
            out,
            "| {:<36} | {:>10} | {:>10} | {:>6} | {goal:<26} |",
            metric.name,
            cell(e),
            cell(i),
            ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}x")),
        );
    }
    out
}
